"""Where a checkpoint came from: data set, command, steps, date, code version."""

from __future__ import annotations

import datetime as dt
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parent.parent


def command_line(args: Sequence[str]) -> str:
    """``ddpm`` and its arguments, shell-quoted, as they would be typed again."""
    return shlex.join(["ddpm", *args])


def git_commit() -> str | None:
    """The commit of the code that trains, with "-dirty" when tracked files differ; None outside git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def now_utc() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def base_provenance(data: dict[str, Any], commands: list[str], world_size: int, device: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "data": data,
        "command": commands[0],
        "trainer": "ddpm-serve training/",
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "world_size": world_size,
        "device": device,
    }
    if len(commands) > 1:
        out["resumed_with"] = commands[1:]
    return out
