"""The training loop (Ho et al. 2020, algorithm 1) with everything a long run needs.

AdamW with linear warm-up (and optional cosine decay), gradient clipping, an EMA of the
weights, mixed precision on CUDA, optional torch.compile, label dropout for classifier-free
guidance, DDP under torchrun, a progress bar, metrics as JSON lines, periodic sample grids
and evaluation, and atomic checkpoints: ``ema.safetensors`` (the served file) and
``state.safetensors`` (the resume state) every ``log.checkpoint_every`` steps.

A run directory holds config.json, metrics.jsonl, ema.safetensors, state.safetensors and
samples/step_NNNNNNN.png.
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from model import ModelConfig, UNet, save_checkpoint
from model.config import ConfigError
from model.schedule import NoiseSchedule
from model.unet import count_parameters

from .config import RunConfig, resolve_model
from .data import BatchOrder, load_data, split_data, to_model_range
from .distributed import Dist, setup
from .ema import EMA, ema_decay
from .evaluate import HeldOut
from .monitor import METRICS_FILE, Monitor
from .provenance import base_provenance, now_utc
from .state import capture_rng, load_state, save_state
from .step import diffusion_loss, draw_step, prepare_batch

CONFIG_FILE = "config.json"
EMA_FILE, STATE_FILE = "ema.safetensors", "state.safetensors"


def lr_at(step: int, cfg: Any) -> float:
    """Linear warm-up over ``warmup_steps``, then constant or cosine down to lr * final_lr_scale."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_schedule == "constant":
        return float(cfg.lr)
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    scale = cfg.final_lr_scale + (1.0 - cfg.final_lr_scale) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return float(cfg.lr * scale)


def stored_config(run: RunConfig, model: ModelConfig) -> dict[str, Any]:
    """The config that was used, as written to config.json: the model section complete, so a
    resume rebuilds exactly this network; provenance, which changes per checkpoint, left out."""
    out = run.to_dict()
    model_dict = model.to_dict()
    model_dict["provenance"] = run.model.get("provenance", {})
    out["model"] = model_dict
    return out


class StopRequested:
    """SIGTERM or SIGINT asks the loop to checkpoint and stop at the end of the current step."""

    def __init__(self) -> None:
        self.flag = False

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        def handler(signum: int, frame: Any) -> None:
            self.flag = True

        old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in old.items():
                signal.signal(s, h)


class Window:
    """Loss, gradient norm and time of the steps since the last metrics line."""

    def __init__(self) -> None:
        self.clear()

    def add(self, loss: float, norm: float, seconds: float) -> None:
        self.losses.append(loss)
        self.norms.append(norm)
        self.seconds += seconds

    def clear(self) -> None:
        self.losses: list[float] = []
        self.norms: list[float] = []
        self.seconds = 0.0


class Trainer:
    def __init__(self, run: RunConfig, run_dir: Path, *, resume: bool, command: str) -> None:
        self.run_cfg, self.run_dir = run, run_dir
        tc = run.train
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.dist: Dist = setup(tc.device)
        try:
            self._build(run, run_dir, resume=resume, command=command)
        except BaseException:
            self.dist.close()
            raise

    def _build(self, run: RunConfig, run_dir: Path, *, resume: bool, command: str) -> None:
        """Each step in the order it must happen; see the step's docstring for why."""
        tc, d = run.train, self.dist
        if tc.batch_size % d.world_size:
            raise ConfigError(f"train.batch_size={tc.batch_size} must be divisible by the {d.world_size} processes")
        if not resume and (run_dir / STATE_FILE).exists():
            raise ConfigError(f"--run-dir {run_dir} already holds a run ({STATE_FILE}); "
                              "pass --resume to continue it, or choose another --run-dir")
        self.device = d.device
        self.precision = self._precision(tc.precision)
        data_info = self._load_data(run)
        self.model_cfg = resolve_model(run.model, self.data.shape, {})
        self.conditional = self.model_cfg.num_classes is not None
        self._make_network(run)
        self.commands = [command]
        if resume:
            self._restore(run_dir / STATE_FILE, command)
        self.provenance_base = base_provenance(data_info, self.commands, d.world_size, str(self.device))
        self._place_data()
        self._wrap_network()
        self.monitor = self._open_run_dir() if d.main else None

    def _load_data(self, run: RunConfig) -> dict[str, Any]:
        """The data set and its held-out split; returns what provenance records of them."""
        self.data = load_data(run.data)
        self.train_idx, self.held_idx = split_data(self.data, run.data)
        info = {"dataset": run.data.dataset, "path": run.data.path, "holdout": run.data.holdout,
                "split_seed": run.data.split_seed, "labels": run.data.labels,
                "train_images": len(self.train_idx), "heldout_images": len(self.held_idx)}
        if run.data.dataset == "folder":
            info.update(image_size=run.data.image_size, channels=run.data.channels)
        return info

    def _make_network(self, run: RunConfig) -> None:
        """Network, EMA, optimizer and grad scaler, from the same seed on every process (DDP
        also broadcasts rank 0's weights at wrap time); then per-process streams for dropout."""
        tc, d = run.train, self.dist
        torch.manual_seed(tc.seed)
        self.net = UNet(self.model_cfg.unet).to(self.device)
        self.ema = EMA(self.net, run.ema.decay, run.ema.warmup)
        self.optimizer = torch.optim.AdamW(self.net.parameters(), lr=tc.lr, betas=tc.adam_betas, eps=tc.adam_eps,
                                           weight_decay=tc.weight_decay)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.precision == "fp16")
        self.step, self.elapsed = 0, 0.0
        # Dropout draws from the global generator: a different stream per process.
        torch.manual_seed(tc.seed * 1000 + d.rank + 1)
        np.random.seed((tc.seed * 1000 + d.rank) % 2**32)

    def _restore(self, state_path: Path, command: str) -> None:
        """Weights, EMA, optimizer, scaler, step and RNG states from the resume state."""
        d = self.dist
        meta, restored = load_state(state_path, net=self.net, ema=self.ema, optimizer=self.optimizer,
                                    scaler=self.scaler, rank=d.rank, device=self.device)
        self.step, self.elapsed = int(meta["step"]), float(meta.get("elapsed_s", 0.0))
        self.commands = [*meta.get("commands", []), command]
        if not restored and d.main:
            print(f"note: the state has RNG states for {len(meta['rng'])} process(es), not {d.world_size}; "
                  "dropout draws are reseeded (data order and noise are unaffected)", file=sys.stderr)

    def _place_data(self) -> None:
        """The schedule, the batch order and the training split on the training device."""
        tc = self.run_cfg.train
        self.schedule = NoiseSchedule.from_config(self.model_cfg.diffusion, self.device)
        self.order = BatchOrder(len(self.train_idx), tc.batch_size, tc.seed)
        self.images = self.data.images[torch.from_numpy(self.train_idx)].to(self.device)
        self.labels = None
        if self.conditional:
            assert self.data.labels is not None
            self.labels = self.data.labels[torch.from_numpy(self.train_idx)].to(self.device)

    def _wrap_network(self) -> None:
        """DDP across processes, then torch.compile when asked: what the training step calls."""
        d = self.dist
        self.model: torch.nn.Module = self.net
        if d.active:
            self.model = DistributedDataParallel(self.net, device_ids=[self.device] if self.device.type == "cuda"
                                                 else None)
        if self.run_cfg.train.compile:
            self.model = torch.compile(self.model)  # type: ignore[assignment]

    def _open_run_dir(self) -> Monitor:
        """Main process only: the run folder, cleared of partial writes, with config.json and a
        metrics file that reads as one uninterrupted run; the monitor that writes into it."""
        run, run_dir = self.run_cfg, self.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in run_dir.glob(".*.tmp"):  # left by a kill mid-write; the real files are whole
            stale.unlink(missing_ok=True)
        (run_dir / CONFIG_FILE).write_text(json.dumps(stored_config(run, self.model_cfg), indent=2) + "\n")
        self._trim_metrics()
        heldout = HeldOut(run.data, self.data, self.train_idx, self.held_idx)
        return Monitor(run_dir, run.log, self.model_cfg, heldout, self.device, seed=run.train.seed)

    def _precision(self, asked: str) -> str:
        cuda = self.device.type == "cuda"
        if asked == "auto":
            return "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
        if asked == "fp16" and not cuda:
            raise ConfigError("train.precision='fp16' needs CUDA (it uses a gradient scaler); allowed on the CPU: "
                              "auto, fp32, bf16")
        return asked

    def _autocast(self) -> torch.autocast | None:
        if self.precision == "fp32":
            return None
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def _trim_metrics(self) -> None:
        """After a kill, metrics.jsonl may run past the state we resume from (or end mid-line):
        keep the lines up to this step so the file reads as one uninterrupted run."""
        path = self.run_dir / METRICS_FILE
        if not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                if int(json.loads(line)["step"]) <= self.step:
                    kept.append(line)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                continue
        path.write_text("".join(k + "\n" for k in kept))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        c, h, w = self.data.images.shape[1:]
        return (int(c), int(h), int(w))

    @property
    def null_label(self) -> int | None:
        return self.net.null_label if self.conditional else None

    def model_config(self, step: int) -> ModelConfig:
        """The config saved with a checkpoint: the model plus where it came from."""
        provenance = {**self.run_cfg.model.get("provenance", {}), **self.provenance_base,
                      "steps": step, "date": now_utc(), "train_wall_s": round(self.elapsed, 1)}
        return ModelConfig.from_dict({**self.model_cfg.to_dict(), "provenance": provenance})

    def train_step(self, step: int) -> tuple[float, float]:
        """One optimisation step on this process's shard of the global batch; (loss, grad norm)."""
        tc, d = self.run_cfg.train, self.dist
        draws = draw_step(tc.seed, step, tc.batch_size, self.image_shape, self.schedule.num_timesteps,
                          flips=self.run_cfg.data.flips, label_dropout=tc.label_dropout if self.conditional else 0.0)
        draws = draws.shard(d.rank, d.world_size).to(self.device)
        idx = self.order.global_batch(step).chunk(d.world_size)[d.rank].to(self.device)
        x0 = to_model_range(self.images[idx], self.data.levels)
        labels = self.labels[idx] if self.labels is not None else None
        x0, labels = prepare_batch(x0, labels, draws, self.null_label)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(step, tc)
        self.model.train()
        loss = diffusion_loss(self.model, self.schedule, self.model_cfg.diffusion.prediction, x0, labels, draws,
                              self._autocast())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), tc.grad_clip if tc.grad_clip > 0 else math.inf)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.ema.update(self.net)
        return float(loss.detach()), float(norm)

    def save(self) -> None:
        """The EMA checkpoint, then the resume state; both atomic (rank 0 writes, all gather RNG)."""
        rng = self.dist.gather(capture_rng(self.device))
        if not self.dist.main:
            return
        save_checkpoint(self.run_dir / EMA_FILE, self.ema.module, self.model_config(self.step))
        info = {"step": self.step, "elapsed_s": self.elapsed, "commands": self.commands,
                "world_size": self.dist.world_size, "seed": self.run_cfg.train.seed,
                "images_seen": self.step * self.run_cfg.train.batch_size}
        save_state(self.run_dir / STATE_FILE, net=self.net, ema=self.ema, optimizer=self.optimizer,
                   scaler=self.scaler, rng=rng, info=info)

    def fit(self) -> int:
        """Train to ``train.steps``; returns the process exit code."""
        tc, lc, d = self.run_cfg.train, self.run_cfg.log, self.dist
        if d.main:
            print(f"training {self.model_cfg.name}: {count_parameters(self.net) / 1e6:.2f}M parameters, "
                  f"{len(self.train_idx)} training / {len(self.held_idx)} held-out images, "
                  f"{d.world_size} process(es) on {self.device} ({self.precision}), "
                  f"steps {self.step} -> {tc.steps}, run dir {self.run_dir}", file=sys.stderr)
        stop = StopRequested()
        bar = tqdm(total=tc.steps, initial=self.step, disable=not d.main, unit="step", dynamic_ncols=True,
                   mininterval=1.0, desc="train")
        window = Window()
        last_saved = self.step
        loop_start, elapsed_before = time.perf_counter(), self.elapsed
        with stop.installed(), bar:
            while self.step < tc.steps:
                t0 = time.perf_counter()
                loss, norm = self.train_step(self.step)
                self.step += 1
                window.add(loss, norm, time.perf_counter() - t0)
                self.elapsed = elapsed_before + time.perf_counter() - loop_start
                bar.update(1)
                done = self.step == tc.steps
                if (self.step % lc.every == 0 or done) and not self._report(window, bar):
                    self._close()
                    return 1
                stopping = d.any(stop.flag)
                if self.step % lc.checkpoint_every == 0 or done or stopping:
                    self.save()
                    last_saved = self.step
                self._check(done)
                if stopping:
                    break
        if d.main:
            verb = "stopped" if self.step < tc.steps else "finished"
            print(f"{verb} at step {self.step} after {self.elapsed / 60:.1f} min of training; "
                  f"checkpoint {self.run_dir / EMA_FILE} (step {last_saved})"
                  + ("; continue with --resume" if self.step < tc.steps else ""), file=sys.stderr)
        d.barrier()
        self._close()
        return 0

    def _close(self) -> None:
        """Drop the DDP wrapper, which holds a reference to the process group, before destroying
        the group, so that the group is released here rather than during interpreter exit. (A
        gloo rank was seen to abort at exit with "terminate called without an active exception",
        once in several runs; this is the suspected cause, not a proven one.)"""
        self.model = self.net
        gc.collect()
        self.dist.close()

    def _report(self, window: Window, bar: tqdm) -> bool:
        """A metrics line for the steps since the last one (averaged over processes); False when
        the loss is no longer finite, so the run stops rather than writing a broken checkpoint."""
        tc = self.run_cfg.train
        mean_loss, mean_norm = self.dist.all_reduce_mean([float(np.mean(window.losses)),
                                                          float(np.mean(window.norms))])
        ips = len(window.losses) * tc.batch_size / window.seconds
        if not math.isfinite(mean_loss):
            print(f"\nerror: the loss is {mean_loss} at step {self.step}; lower train.lr or use "
                  "train.precision=fp32", file=sys.stderr)
            return False
        if self.monitor is not None:
            bar.set_postfix(loss=f"{mean_loss:.4f}", img_s=f"{ips:.0f}")
            self.monitor.log({"kind": "train", "step": self.step, "loss": mean_loss, "grad_norm": mean_norm,
                              "lr": lr_at(self.step - 1, tc), "ema_decay": self.ema_decay(), "images_per_s": ips,
                              "epoch": self.order.epoch_of(self.step), "wall_s": self.elapsed})
        window.clear()
        return True

    def _check(self, done: bool) -> None:
        """The periodic sample grid and held-out check of the EMA weights (main process)."""
        lc = self.run_cfg.log
        if self.monitor is None:
            return
        if (lc.sample_every and self.step % lc.sample_every == 0) or done:
            self.monitor.sample_grid(self.step, self.ema.module)
        if (lc.eval_every and self.step % lc.eval_every == 0) or done:
            self.monitor.evaluate(self.step, self.ema.module)

    def ema_decay(self) -> float:
        """The decay of the last EMA update."""
        return ema_decay(self.ema.decay, self.ema.warmup, self.ema.updates - 1)
