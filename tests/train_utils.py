"""Helpers for the trainer's tests: tiny runs through the real command line."""

from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors.torch import load_file

import cli

REPO = Path(__file__).resolve().parent.parent

# Few, cheap steps; one thread, so that a test does not fight itself (or a neighbour) for cores.
TINY_ARGS = ["--config", "tiny", "--train.threads=1", "--log.every=2", "--log.sample_every=0", "--log.eval_every=0"]


def ddpm(*args: str) -> tuple[int, str]:
    """Run the ``ddpm`` command in this process; (exit status, stderr)."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, err.getvalue()


def train_tiny(run_dir: Path, *extra: str, resume: bool = False) -> str:
    """A tiny run (or its resumption); returns what it printed to stderr."""
    args = ["--resume", *extra] if resume else [*TINY_ARGS, *extra]
    with one_thread():
        code, err = ddpm("train", *args, "--run-dir", str(run_dir))
    assert code == 0, err
    return err


def state_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run_dir / "state.safetensors"))


def subprocess_env() -> dict[str, str]:
    """The environment for a child ``python``: this repo importable, one passive OpenMP thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="PASSIVE")
    return env


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


PYTHON = sys.executable
