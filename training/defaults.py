"""Set a checkpoint's sampling defaults (sampler, steps, guidance) after evaluation chose them.

    python -m training.defaults CHECKPOINT --sampler dpmpp_2m --steps 20 --guidance 0 --reason "..."

The weights are copied unchanged; the new ``sampling`` section is validated like any config and
the change (old values, new values, reason) is appended to ``provenance.sampling_changes``. The
file is rewritten atomically.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model import ModelConfig, read_checkpoint, save_checkpoint
from model.config import SAMPLERS, ConfigError, SamplingConfig

from .provenance import now_utc


def set_sampling_defaults(path: Path, reason: str, **values: Any) -> ModelConfig:
    config, tensors = read_checkpoint(path)
    changes = {k: v for k, v in values.items() if v is not None}
    sampling = SamplingConfig(**{**dataclasses.asdict(config.sampling), **changes})
    log = list(config.provenance.get("sampling_changes", []))
    log.append({"from": dataclasses.asdict(config.sampling), "to": dataclasses.asdict(sampling),
                "reason": reason, "date": now_utc()})
    new = ModelConfig.from_dict({**config.to_dict(), "sampling": dataclasses.asdict(sampling),
                                 "provenance": {**config.provenance, "sampling_changes": log}})
    save_checkpoint(path, tensors, new)
    return new


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.defaults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--sampler", choices=SAMPLERS)
    p.add_argument("--steps", type=int)
    p.add_argument("--guidance", type=float)
    p.add_argument("--eta", type=float)
    p.add_argument("--reason", required=True, help="why, e.g. the eval report that chose these values")
    args = p.parse_args(argv)
    try:
        config = set_sampling_defaults(args.checkpoint, args.reason, sampler=args.sampler, steps=args.steps,
                                       guidance=args.guidance, eta=args.eta)
    except (ConfigError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.checkpoint}: sampling defaults now {dataclasses.asdict(config.sampling)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
