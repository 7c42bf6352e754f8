"""The resume state: everything ``--resume`` needs to continue a run as if it never stopped.

One ``state.safetensors`` file: the raw weights, the EMA weights, AdamW's moments and the
torch RNG state of every process as tensors; the step, optimizer hyperparameters, grad-scaler
state and the numpy/python RNG states as JSON in the file's metadata. Nothing is pickled, so
a state file is as safe to open as a checkpoint. It is written atomically
(``model.checkpoint.atomic_write``): a kill mid-write leaves the previous state in place.

The data order needs no state of its own: it is a function of (seed, step) (see
``training.data.BatchOrder`` and ``training.step``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from model.checkpoint import atomic_write

from .ema import EMA

META_KEY = "ddpm_serve.train_state"
STATE_VERSION = 1


class StateError(ValueError):
    """A resume state that is missing, unreadable, or does not fit the run."""


def capture_rng(device: torch.device) -> dict[str, Any]:
    """This process's RNG states: torch CPU and CUDA as byte lists, numpy and python as JSON."""
    np_state = np.random.get_state(legacy=False)
    py_version, py_internal, py_gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state().tolist(),
        "numpy": {**np_state, "state": {"key": np_state["state"]["key"].tolist(), "pos": np_state["state"]["pos"]}},
        "python": [py_version, list(py_internal), py_gauss],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device).tolist()
    return state


def restore_rng(state: Mapping[str, Any], device: torch.device) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(torch.tensor(state["cuda"], dtype=torch.uint8), device)
    np_state = dict(state["numpy"])
    np_state["state"] = {"key": np.asarray(np_state["state"]["key"], dtype=np.uint32), "pos": np_state["state"]["pos"]}
    np.random.set_state(np_state)
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _split_optimizer(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[key] = value
    groups = json.loads(json.dumps(sd["param_groups"]))
    return tensors, {"param_groups": groups, "scalars": scalars}


def _join_optimizer(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, idx, key = name.split(".", 2)
            state.setdefault(int(idx), {})[key] = value
    for idx, entry in meta["scalars"].items():
        state.setdefault(int(idx), {}).update(entry)
    groups = []
    for group in meta["param_groups"]:
        groups.append({k: tuple(v) if k == "betas" else v for k, v in group.items()})
    return {"state": state, "param_groups": groups}


def save_state(
    path: Path,
    *,
    net: nn.Module,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    rng: list[dict[str, Any]],
    info: Mapping[str, Any],
) -> Path:
    """Write the resume state; ``rng`` holds every process's RNG state, in rank order; ``info``
    (step, elapsed time, ...) goes into the metadata as is."""
    tensors: dict[str, torch.Tensor] = {}
    for name, value in net.state_dict().items():
        tensors[f"model.{name}"] = value.detach().cpu().contiguous()
    for name, value in ema.module.state_dict().items():
        tensors[f"ema.{name}"] = value.detach().cpu().contiguous()
    opt_tensors, opt_meta = _split_optimizer(optimizer)
    tensors.update(opt_tensors)
    rng_json = []
    for rank, state in enumerate(rng):
        tensors[f"rng.{rank}.torch"] = torch.tensor(state["torch"], dtype=torch.uint8)
        if "cuda" in state:
            tensors[f"rng.{rank}.cuda"] = torch.tensor(state["cuda"], dtype=torch.uint8)
        rng_json.append({"numpy": state["numpy"], "python": state["python"]})
    meta = {
        "version": STATE_VERSION,
        **info,
        "ema_updates": ema.updates,
        "optimizer": opt_meta,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": rng_json,
    }
    metadata = {META_KEY: json.dumps(meta), "format": "pt"}
    return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))


def read_state(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    if not path.is_file():
        raise StateError(f"{path}: no resume state (was the run started, and has it reached a checkpoint?)")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - not a dict
        meta = json.loads(metadata[META_KEY])
    except (SafetensorError, OSError, KeyError, json.JSONDecodeError) as exc:
        raise StateError(f"{path}: not a readable resume state: {exc}") from exc
    if meta.get("version") != STATE_VERSION:
        raise StateError(f"{path}: state version {meta.get('version')} is not {STATE_VERSION}")
    return meta, tensors


def load_state(
    path: Path,
    *,
    net: nn.Module,
    ema: EMA,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    rank: int,
    device: torch.device,
) -> tuple[dict[str, Any], bool]:
    """Restore everything into the given objects; returns (metadata, whether this process's RNG
    state was in the file: it is not when the number of processes changed)."""
    meta, tensors = read_state(path)

    def part(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

    try:
        net.load_state_dict(part("model."))
        ema.module.load_state_dict(part("ema."))
        optimizer.load_state_dict(_join_optimizer(tensors, meta["optimizer"]))
    except (RuntimeError, ValueError, KeyError) as exc:
        raise StateError(f"{path}: does not fit this run's network or optimizer: {exc}") from exc
    ema.updates = int(meta["ema_updates"])
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    restored = False
    if rank < len(meta["rng"]) and f"rng.{rank}.torch" in tensors:
        state: dict[str, Any] = {"torch": tensors[f"rng.{rank}.torch"].tolist(), **meta["rng"][rank]}
        if f"rng.{rank}.cuda" in tensors:
            state["cuda"] = tensors[f"rng.{rank}.cuda"].tolist()
        restore_rng(state, device)
        restored = True
    return meta, restored
