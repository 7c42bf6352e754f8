"""``ddpm eval``: the bound in bits/dim on held-out data and, for digits, the sample-quality table.

The held-out data is the split the trainer held out (``training.data.split_data`` with the
data config recorded in the checkpoint's provenance), so nothing here is judged on data the
model was trained on.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model import DiffusionModel, ModelConfig, UNet, load_checkpoint
from model.config import ConfigError
from model.schedule import NoiseSchedule
from model.validation import parse
from model.vlb import prior_bpd, timestep_bpd, variational_bound

from .config import DataConfig
from .data import ImageData, load_data, split_data, to_model_range
from .quality import DigitsReferee, balanced_labels, to_levels
from .step import diffusion_loss, draw_step, step_generator

# One row per sampler and step count (the model's default is added when it is not among them).
DEFAULT_ROWS: tuple[tuple[str, int], ...] = (
    ("ddpm", 1000), ("ddim", 50), ("ddim", 20), ("ddim", 10), ("dpmpp_2m", 20), ("dpmpp_2m", 10),
)


def make_referee(data: ImageData, train_idx: np.ndarray, held_idx: np.ndarray,
                 labels: torch.Tensor | None = None) -> DigitsReferee:
    """The digits judge trained on the training split, comparing against the held-out split.

    ``labels`` are the digits' own labels when ``data`` was loaded without them (a model
    trained with data.labels=false): the judge is an instrument of evaluation, not part of the
    model, so it may learn the classes the model never saw.
    """
    labels = data.labels if labels is None else labels
    if labels is None:
        raise ConfigError("the digits quality check needs the digits' labels to train its classifier")
    x = data.images.reshape(len(data), -1).numpy().astype(np.int64)
    y = labels.numpy()
    return DigitsReferee(x[train_idx], y[train_idx], x[held_idx], y[held_idx], levels=data.levels)


class HeldOut:
    """The held-out split of a run's data: what the trainer's periodic checks and ``ddpm eval``
    judge on, with the digits judge for digits (built on first use: it fits a classifier)."""

    def __init__(self, data_cfg: DataConfig, data: ImageData, train_idx: np.ndarray, held_idx: np.ndarray) -> None:
        self.data_cfg, self.data = data_cfg, data
        self.train_idx, self.held_idx = train_idx, held_idx
        self._referee: DigitsReferee | None = None

    def __len__(self) -> int:
        return len(self.held_idx)

    @property
    def judged(self) -> bool:
        """Whether there is a sample-quality judge for this data (digits only)."""
        return self.data_cfg.dataset == "digits" and len(self.held_idx) > 0

    def batch(self, n: int, conditional: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The first ``n`` held-out images, with their labels when the model takes labels."""
        idx = torch.from_numpy(self.held_idx[:n])
        labels = self.data.labels[idx] if conditional and self.data.labels is not None else None
        return self.data.images[idx], labels

    def referee(self) -> DigitsReferee:
        if self._referee is None:
            labels = self.data.labels
            if labels is None:  # trained without labels: the judge still learns the digits' classes
                labels = load_data(dataclasses.replace(self.data_cfg, labels=True)).labels
            self._referee = make_referee(self.data, self.train_idx, self.held_idx, labels)
        return self._referee


@torch.no_grad()
def periodic_check(model: DiffusionModel, heldout: HeldOut, samples: int, seed: int = 0) -> dict[str, Any]:
    """The trainer's check of its EMA weights: held-out L_simple and bound estimate on up to 512
    images and, for digits, one quality row at the model's defaults (``samples`` images)."""
    record: dict[str, Any] = {}
    if len(heldout):
        images, labels = heldout.batch(512, model.config.num_classes is not None)
        record.update(heldout_loss(model.unet, model.config, images, labels, heldout.data.levels, model.device,
                                   seed=seed))
    if heldout.judged and samples > 0:
        row = quality_row(model, heldout.referee(), samples, progress=False)
        record.update({k: row[k] for k in ("sampler", "steps", "guidance", "fd", "floor", "fd_ratio", "accuracy",
                                           "confident")})
    return record


@torch.no_grad()
def heldout_loss(net: UNet, cfg: ModelConfig, images: torch.Tensor, labels: torch.Tensor | None, levels: int,
                 device: torch.device, seed: int = 0) -> dict[str, float]:
    """L_simple on held-out images with fixed draws, and an unbiased one-sample estimate of the
    bound in bits/dim: L_T + T * E_t[L_t] with t uniform (eq. 5), cheap enough to track."""
    schedule = NoiseSchedule.from_config(cfg.diffusion, device)
    x0 = to_model_range(images.to(device), levels)
    y = labels.to(device) if labels is not None else None
    draws = draw_step(seed, 0, len(x0), tuple(x0.shape[1:]), schedule.num_timesteps,  # type: ignore[arg-type]
                      flips=False, label_dropout=0.0)
    draws.t = torch.randint(0, schedule.num_timesteps, (len(x0),), generator=step_generator(seed, 0, stream=1))
    draws = draws.to(device)
    net.eval()
    loss = diffusion_loss(net, schedule, cfg.diffusion.prediction, x0, y, draws)
    terms = timestep_bpd(lambda xt, t: net(xt, t, y), schedule, x0, draws.t, draws.noise,
                         prediction=cfg.diffusion.prediction, variance=cfg.diffusion.variance,
                         clip_denoised=cfg.diffusion.clip_denoised, levels=cfg.data_levels)
    bpd = prior_bpd(schedule, x0) + schedule.num_timesteps * terms
    return {"heldout_loss": float(loss), "bpd_estimate": float(bpd.mean())}


@torch.no_grad()
def bits_per_dim(model: DiffusionModel, images: torch.Tensor, labels: torch.Tensor | None, levels: int,
                 *, batch_size: int = 256, seed: int = 0, desc: str = "bound") -> dict[str, float]:
    """The full variational bound (eq. 5) in bits/dim over ``images``: every timestep, every image."""
    cfg = model.config
    gen = torch.Generator().manual_seed(seed)
    totals, priors, decoders = [], [], []
    chunks = list(range(0, len(images), batch_size))
    bar = tqdm(total=len(chunks) * cfg.diffusion.num_timesteps, desc=desc, unit="call", leave=False)
    with bar:
        for start in chunks:
            x0 = to_model_range(images[start:start + batch_size].to(model.device), levels)
            y = None if labels is None else labels[start:start + batch_size].to(model.device)

            def model_fn(xt: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = y) -> torch.Tensor:
                return model.denoiser(xt, t, y)

            terms = variational_bound(
                model_fn, model.schedule, x0,
                prediction=cfg.diffusion.prediction, variance=cfg.diffusion.variance,
                clip_denoised=cfg.diffusion.clip_denoised, levels=cfg.data_levels, generator=gen,
                progress=bar.update,
            )
            totals.append(terms.total.cpu())
            priors.append(terms.prior.cpu())
            decoders.append(terms.terms[:, 0].cpu())
    total = torch.cat(totals).double()
    return {
        "bpd": float(total.mean()),
        "bpd_stderr": float(total.std() / math.sqrt(len(total))) if len(total) > 1 else 0.0,
        "prior_bpd": float(torch.cat(priors).double().mean()),
        "decoder_bpd": float(torch.cat(decoders).double().mean()),
        "images": len(total),
    }


def quality_row(model: DiffusionModel, referee: DigitsReferee, n: int, *, sampler: str | None = None,
                steps: int | None = None, guidance: float | None = None, seed: int = 0, batch_size: int = 256,
                progress: bool = True) -> dict[str, Any]:
    """Generate ``n`` digits (labels 0..9 in turn) and judge them against the held-out digits."""
    cfg = model.config
    sampler = sampler or cfg.sampling.sampler
    steps = min(steps or cfg.sampling.steps, cfg.diffusion.num_timesteps)
    guidance = cfg.sampling.guidance if guidance is None else guidance
    asked = balanced_labels(n, cfg.num_classes) if cfg.num_classes else None
    start = time.perf_counter()
    images = model.sample(n, sampler=sampler, steps=steps, seed=seed, guidance=guidance if asked is not None else 0.0,
                          label=None if asked is None else [int(a) for a in asked], batch_size=batch_size,
                          progress=progress)
    seconds = time.perf_counter() - start
    verdict = referee.judge_samples(to_levels(images, referee.judge.levels), asked)
    floor, floor_std = referee.floor(n)
    return {"sampler": sampler, "steps": steps, "guidance": guidance if asked is not None else None, "n": n,
            "fd": verdict.fd, "floor": floor, "floor_std": floor_std, "fd_ratio": verdict.fd / floor,
            "accuracy": verdict.accuracy, "confident": verdict.confident, "seconds": seconds,
            "images_per_s": n / seconds, "images": images}


@dataclass
class EvalOptions:
    checkpoint: str | None = None
    out: Path = Path("eval")
    quick: bool = False
    device: str = "auto"
    dtype: str = "float32"  # the network's precision; "bfloat16" for the precision-vs-quality table
    runtime: str = "torch"  # what runs the network (model.runtimes); torch is the reference
    samples: int | None = None  # generated per row; default 1000 (quick: 50)
    bpd_images: int | None = None  # held-out images for the bound; default all (quick: 20)
    guidance: Sequence[float] = field(default_factory=tuple)  # extra rows at the default sampler
    rows: Sequence[tuple[str, int]] = DEFAULT_ROWS
    batch_size: int = 256
    seed: int = 0
    data: dict[str, Any] = field(default_factory=dict)  # overrides of the recorded data config


def data_config_of(cfg: ModelConfig, overrides: dict[str, Any]) -> DataConfig:
    """The data config recorded at training time (plus overrides), to rebuild the same split."""
    recorded = dict(cfg.provenance.get("data") or {})
    recorded.update({k: v for k, v in overrides.items() if v is not None})
    if "dataset" not in recorded:
        raise ConfigError("this checkpoint does not record the data set it was trained on (provenance.data); "
                          "pass --dataset (and --data-path) to name the held-out data")
    keys = ("dataset", "path", "holdout", "split_seed", "labels", "image_size", "channels")
    return parse(DataConfig, {k: recorded[k] for k in keys if k in recorded}, prefix="data")


def evaluate(opts: EvalOptions) -> dict[str, Any]:
    """Run the whole evaluation; returns the report (images of the rows included, for the grids)."""
    model = load_checkpoint(opts.checkpoint, device=opts.device, dtype=opts.dtype, runtime=opts.runtime)
    cfg = model.config
    data_cfg = data_config_of(cfg, opts.data)
    data = load_data(data_cfg)
    if tuple(data.images.shape[1:]) != model.image_shape:
        raise ConfigError(f"the data set's images are {tuple(data.images.shape[1:])}, the model's {model.image_shape}")
    heldout = HeldOut(data_cfg, data, *split_data(data, data_cfg))
    if not len(heldout):
        raise ConfigError(f"data.holdout={data_cfg.holdout}: no held-out images to evaluate on")
    report: dict[str, Any] = {
        "checkpoint": str(opts.checkpoint or "embedded"), "model": cfg.name, "quick": opts.quick,
        "num_classes": cfg.num_classes,
        "device": str(model.device), "dtype": str(model.dtype).removeprefix("torch."),
        "data": {**dataclasses.asdict(data_cfg), "heldout_images": len(heldout)},
        "trained_steps": cfg.provenance.get("steps"),
    }
    n_bpd = opts.bpd_images if opts.bpd_images is not None else (20 if opts.quick else len(heldout))
    report["bpd"] = bound_section(model, heldout, n_bpd, opts.batch_size)
    report["rows"] = []
    if heldout.judged:
        report.update(quality_section(model, heldout, opts))
    return report


def bound_section(model: DiffusionModel, heldout: HeldOut, n: int, batch_size: int) -> dict[str, Any]:
    """The full bound on the first ``n`` held-out images: p(x) with the null label and, for a
    conditional model, p(x|y) with the true labels."""
    images, labels = heldout.batch(n, model.config.num_classes is not None)
    out: dict[str, Any] = {}
    if n > 0:
        out["unconditional"] = bits_per_dim(model, images, None, heldout.data.levels, batch_size=batch_size,
                                            desc="bound p(x)")
    if labels is not None and n > 0:
        out["conditional"] = bits_per_dim(model, images, labels, heldout.data.levels, batch_size=batch_size,
                                          desc="bound p(x|y)")
    return out


def quality_section(model: DiffusionModel, heldout: HeldOut, opts: EvalOptions) -> dict[str, Any]:
    """One quality row per sampler and step count (plus the model's default and extra guidance
    weights), each judged against the held-out digits; accuracy is n/a for an unconditional model."""
    cfg, referee = model.config, heldout.referee()
    n = opts.samples or (50 if opts.quick else 1000)
    real = referee.real_heldout()
    floor, floor_std = referee.floor(n)
    s = cfg.sampling
    rows = list(dict.fromkeys([(name, min(steps, cfg.diffusion.num_timesteps)) for name, steps in opts.rows]))
    plan: list[tuple[str, int, float]] = [(name, steps, s.guidance) for name, steps in rows]
    extra = [(s.sampler, s.steps, s.guidance)] + [(s.sampler, s.steps, float(w)) for w in opts.guidance]
    plan += [p for p in extra if p not in plan]
    out: list[dict[str, Any]] = []
    for name, steps, w in plan:
        row = quality_row(model, referee, n, sampler=name, steps=steps, guidance=w, seed=opts.seed,
                          batch_size=opts.batch_size)
        row["default"] = (name, steps, w) == (s.sampler, s.steps, s.guidance)
        out.append(row)
        tqdm.write(f"{name} {steps} steps, w={w}: FD {row['fd']:.3f} (floor {floor:.3f}, x{row['fd_ratio']:.2f}), "
                   f"accuracy {row['accuracy']}, confident {row['confident']:.3f}, {row['seconds']:.0f}s")
    return {"real_heldout": {"accuracy": real.accuracy, "confident": real.confident, "floor": floor,
                             "floor_std": floor_std, "n": n}, "rows": out}
