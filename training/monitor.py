"""What the main process records while training: metrics lines, sample grids, held-out checks.

The monitor is given what it needs (run folder, logging config, model config, held-out data,
device, seed) and the EMA network at each call; it knows nothing of the trainer. The checks
themselves are ``training.evaluate``'s, shared with ``ddpm eval``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from model import DiffusionModel, ModelConfig, UNet

from .config import LogConfig
from .evaluate import HeldOut, periodic_check
from .grids import label_grid_labels, save_grid

METRICS_FILE = "metrics.jsonl"


class Monitor:
    def __init__(self, run_dir: Path, log: LogConfig, model_cfg: ModelConfig, heldout: HeldOut,
                 device: torch.device, seed: int = 0) -> None:
        self.run_dir, self.log_cfg, self.model_cfg = run_dir, log, model_cfg
        self.heldout, self.device, self.seed = heldout, device, seed
        self.path = run_dir / METRICS_FILE

    def log(self, record: dict[str, Any]) -> None:
        """One JSON line, flushed at once so a kill loses nothing already logged."""
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")

    def model(self, net: UNet) -> DiffusionModel:
        return DiffusionModel(self.model_cfg, net, device=self.device)

    @torch.no_grad()
    def sample_grid(self, step: int, net: UNet) -> Path:
        """Samples of ``net`` at the model's default sampler, one row per class, fixed seeds across the run."""
        labels, ncols = label_grid_labels(self.log_cfg.num_samples, self.model_cfg.num_classes)
        images = self.model(net).sample(len(labels), seed=0, label=labels)
        return save_grid(self.run_dir / "samples" / f"step_{step:07d}.png", images, ncols)

    @torch.no_grad()
    def evaluate(self, step: int, net: UNet) -> dict[str, Any]:
        """Held-out L_simple and bound estimate of ``net``; for digits, a quick quality row."""
        start = time.perf_counter()
        record: dict[str, Any] = {"kind": "eval", "step": step}
        record.update(periodic_check(self.model(net), self.heldout, self.log_cfg.eval_samples, seed=self.seed))
        record["eval_s"] = time.perf_counter() - start
        self.log(record)
        shown = {k: v for k, v in record.items() if isinstance(v, float) and math.isfinite(v) and k != "eval_s"}
        tqdm.write(f"step {step}: " + ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))
        return record
