"""Sample grids per label for a model card: ``python -m training.gallery --out docs/images``.

Writes label_<k>.png (``--per-label`` images of class k) and all_labels.png (one row per class),
all at the model's default sampler, steps and guidance, with fixed seeds.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from model import load_checkpoint

from .grids import label_grid_labels, save_grid


def write_gallery(checkpoint: str | None, out: Path, per_label: int = 64, seed: int = 0,
                  device: str = "auto") -> list[Path]:
    model = load_checkpoint(checkpoint, device=device)
    classes = model.config.num_classes
    paths = []
    if not classes:
        images = model.sample(per_label, seed=seed, progress=True)
        return [save_grid(out / "samples.png", images, None)]
    names = model.config.class_names or tuple(str(k) for k in range(classes))
    for k in range(classes):
        images = model.sample(per_label, seed=seed + k * per_label, label=k, progress=True)
        paths.append(save_grid(out / f"label_{names[k]}.png", images, None))
    labels, ncols = label_grid_labels(classes * 10, classes)
    images = model.sample(len(labels), seed=seed, label=labels, progress=True)
    paths.append(save_grid(out / "all_labels.png", images, ncols))
    return paths


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.gallery", description=__doc__)
    p.add_argument("--checkpoint", default=None, help="default: the embedded model")
    p.add_argument("--out", default="docs/images")
    p.add_argument("--per-label", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    for path in write_gallery(args.checkpoint, Path(args.out), args.per_label, args.seed, args.device):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
