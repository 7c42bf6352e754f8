"""``ddpm train`` and ``ddpm eval``: the logic behind the top-level parser in cli.py.

Errors a user can fix (a bad config value, an unknown key, missing data, a run directory in
the way) print one line naming the key or path and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from model import CheckpointError
from model.config import ConfigError
from model.device import resolve_device

from .config import RunConfig
from .presets import PRESETS
from .sources import load_run_config, parse_overrides
from .state import StateError

# Changing these under a resumed run would change the network or the held-out split.
FROZEN_ON_RESUME = ("data.", "model.unet.", "model.diffusion.")


def _error(command: str, exc: Exception) -> int:
    print(f"ddpm {command}: error: {exc}", file=sys.stderr)
    return 2


def train_main(args: argparse.Namespace, overrides: list[str]) -> int:
    from .provenance import command_line
    from .trainer import CONFIG_FILE, Trainer

    try:
        if args.resume:
            if not args.run_dir:
                raise ConfigError("--resume needs --run-dir, the directory of the run to continue")
            if args.config:
                raise ConfigError("--config does not apply with --resume: the run's own config.json is used "
                                  "(change train.*, ema.* or log.* values with overrides)")
            run_dir = Path(args.run_dir)
            source = run_dir / CONFIG_FILE
            if not source.is_file():
                raise ConfigError(f"--run-dir {run_dir}: no {CONFIG_FILE}; nothing to resume")
            for key, _ in parse_overrides(overrides):
                if key.startswith(FROZEN_ON_RESUME):
                    raise ConfigError(f"--{key} cannot change when resuming (it would change the network or the "
                                      f"held-out split); start a new run instead")
            run = load_run_config(str(source), overrides)
        else:
            run = load_run_config(args.config or "digits", overrides)
            run_dir = Path(args.run_dir or f"runs/{run.model_name()}")
            run = name_from_run(run, run_dir, preset=(args.config or "digits") in PRESETS, overrides=overrides)
        typed = ["train"] + (["--config", args.config] if args.config else []) + (["--resume"] if args.resume else [])
        typed += ["--run-dir", str(args.run_dir)] if args.run_dir else []
        trainer = Trainer(run, run_dir, resume=args.resume, command=command_line([*typed, *overrides]))
    except (ConfigError, CheckpointError, StateError) as exc:
        return _error("train", exc)
    return trainer.fit()


def name_from_run(run: RunConfig, run_dir: Path, *, preset: bool, overrides: list[str]) -> RunConfig:
    """The served name of what this run trains: the run folder's name, unless --model.name or
    the user's own config file names it. A preset's name only picks the default run folder, so
    two runs of one preset are not both served as, say, "ddpm-digits"."""
    if any(key == "model.name" for key, _ in parse_overrides(overrides)) or not preset:
        return run
    return dataclasses.replace(run, model={**run.model, "name": run_dir.resolve().name})


def _floats(text: str | None) -> list[float]:
    if not text:
        return []
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise ConfigError(f"--guidance={text!r} must be comma-separated numbers, e.g. 0,1,2") from exc


def _rows(text: str | None) -> list[tuple[str, int]] | None:
    if not text:
        return None
    from model.config import SAMPLERS

    rows = []
    for item in text.split(","):
        name, _, steps = item.strip().partition(":")
        if name not in SAMPLERS or not steps.isdigit() or int(steps) < 1:
            raise ConfigError(f"--rows entry {item!r} must be SAMPLER:STEPS with SAMPLER one of {', '.join(SAMPLERS)}")
        rows.append((name, int(steps)))
    return rows


def eval_main(args: argparse.Namespace) -> int:
    from .evaluate import EvalOptions, evaluate
    from .report import markdown, write_report

    try:
        resolve_device(args.device, "--device")
        opts = EvalOptions(
            checkpoint=args.checkpoint, out=Path(args.out), quick=args.quick, device=args.device, dtype=args.dtype,
            runtime=args.runtime,
            samples=args.samples, bpd_images=args.bpd_images, guidance=_floats(args.guidance),
            batch_size=args.batch_size, seed=args.seed,
            data={"dataset": args.dataset, "path": args.data_path},
        )
        rows = _rows(args.rows)
        if rows is not None:
            opts.rows = rows
        report = evaluate(opts)
    except (ConfigError, CheckpointError) as exc:
        return _error("eval", exc)
    paths = write_report(report, opts.out)
    print(markdown(report))
    print(f"wrote {', '.join(str(p) for p in paths[:2])} and {len(paths) - 2} grid(s)")
    return 0
