"""What the main process records while training: metrics lines, sample grids, held-out checks."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm import tqdm

from model import DiffusionModel
from model.images import encode_png, make_grid, upscale

from .evaluate import heldout_loss, make_referee, quality_row
from .quality import DigitsReferee

if TYPE_CHECKING:
    from .trainer import Trainer

METRICS_FILE = "metrics.jsonl"


def label_grid_labels(n: int, num_classes: int | None) -> tuple[list[int | None], int | None]:
    """Labels for a grid of about ``n`` images with one row per class, and its column count."""
    if not num_classes:
        return [None] * n, None
    per_class = max(1, n // num_classes)
    return [k for k in range(num_classes) for _ in range(per_class)], per_class


def save_grid(path: Path, images: np.ndarray, ncols: int | None) -> Path:
    """A PNG grid, enlarged so that small images stay visible."""
    factor = max(1, 32 // images.shape[1])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(upscale(make_grid(images, ncols=ncols), factor), compress_level=6))
    return path


class Monitor:
    def __init__(self, trainer: Trainer) -> None:
        self.trainer = trainer
        self.path = trainer.run_dir / METRICS_FILE
        self._referee: DigitsReferee | None = None

    def log(self, record: dict[str, Any]) -> None:
        """One JSON line, flushed at once so a kill loses nothing already logged."""
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def ema_model(self) -> DiffusionModel:
        tr = self.trainer
        return DiffusionModel(tr.model_cfg, tr.ema.module, device=tr.device)

    @torch.no_grad()
    def sample_grid(self, step: int) -> Path:
        """EMA samples at the model's default sampler, one row per class, fixed seeds across the run."""
        tr = self.trainer
        labels, ncols = label_grid_labels(tr.run_cfg.log.num_samples, tr.model_cfg.num_classes)
        images = self.ema_model().sample(len(labels), seed=0, label=labels)
        return save_grid(tr.run_dir / "samples" / f"step_{step:07d}.png", images, ncols)

    def referee(self) -> DigitsReferee:
        if self._referee is None:
            tr = self.trainer
            self._referee = make_referee(tr.data, tr.train_idx, tr.held_idx)
        return self._referee

    @torch.no_grad()
    def evaluate(self, step: int) -> dict[str, Any]:
        """Held-out L_simple and bound estimate with the EMA weights; for digits, a quick quality row."""
        tr = self.trainer
        start = time.perf_counter()
        record: dict[str, Any] = {"kind": "eval", "step": step}
        if len(tr.held_idx):
            idx = torch.from_numpy(tr.held_idx[:512])
            labels = tr.data.labels[idx] if tr.conditional and tr.data.labels is not None else None
            record.update(heldout_loss(tr.ema.module, tr.model_cfg, tr.data.images[idx], labels,
                                       tr.data.levels, tr.device, seed=tr.run_cfg.train.seed))
        n = tr.run_cfg.log.eval_samples
        if tr.run_cfg.data.dataset == "digits" and n > 0 and len(tr.held_idx):
            row = quality_row(self.ema_model(), self.referee(), n, progress=False)
            record.update({k: row[k] for k in ("sampler", "steps", "guidance", "fd", "floor", "fd_ratio",
                                                "accuracy", "confident")})
        record["eval_s"] = time.perf_counter() - start
        self.log(record)
        shown = {k: v for k, v in record.items() if isinstance(v, float) and math.isfinite(v) and k != "eval_s"}
        tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
        return record
