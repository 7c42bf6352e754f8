"""The README's pictures, made from the embedded model (or any checkpoint) by code, not by hand.

    python docs/figures.py                      # writes docs/images/samples.png and chain.png

samples.png: one row per class, 10 samples each, at the model's default sampler and steps.
chain.png:   the reverse Markov chain, as in the paper's figure 6: for a few seeds, x_t (top of
             each pair) and the network's prediction of x_0 (bottom) as t runs from T to 0
             under ancestral DDPM sampling, at t = T and then geometrically spaced down to 0.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import RowSpec, load_checkpoint
from model.images import encode_png, make_grid, upscale

OUT = Path(__file__).resolve().parent / "images"


def samples(model, per_class: int, scale: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    classes = model.config.num_classes or 1
    labels = [c if model.config.num_classes else None for c in range(classes) for _ in range(per_class)]
    images = model.sample(len(labels), seed=0, label=labels)
    return upscale(make_grid(images, ncols=per_class, pad=1, pad_value=255), scale)


def chain(model, seeds: list[int], columns: int, scale: int) -> np.ndarray:  # type: ignore[no-untyped-def]
    """x_t and predicted x_0 at ``columns`` points of a full-length DDPM run, one row pair per seed."""
    steps = model.config.diffusion.num_timesteps
    plan = model.plan("ddpm", steps)
    batch = model.row_batch(len(seeds))
    labels = [i % model.config.num_classes if model.config.num_classes else None for i in range(len(seeds))]
    rows = [batch.add(RowSpec(plan=plan, seed=s, label=lab, guidance=model.config.sampling.guidance))
            for s, lab in zip(seeds, labels, strict=True)]
    # Columns at timesteps spaced geometrically towards 0, where the digit takes shape.
    remaining = np.unique(np.round(np.geomspace(steps - 1, 1, columns - 2)).astype(int))
    marks = {steps - int(t) for t in remaining}
    noisy: list[np.ndarray] = [batch.noisy(rows)]  # x_T: pure noise
    x0: list[np.ndarray] = [np.full_like(noisy[0], 128)]  # nothing predicted yet
    for done in range(1, steps + 1):
        finished = batch.step()
        if done in marks or finished:
            if finished:
                final = np.stack([r.image for r in rows])  # type: ignore[misc]
                noisy.append(final)
                x0.append(final)
                break
            # after `done` of T steps; the x_t of the next step and the x_0 it implies now
            noisy.append(batch.noisy(rows))
            x0.append(batch.preview(rows))
    tiles = []
    for i in range(len(seeds)):
        tiles += [frame[i] for frame in noisy]
        tiles += [frame[i] for frame in x0]
    return upscale(make_grid(np.stack(tiles), ncols=len(noisy), pad=1, pad_value=255), scale)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="default: the embedded model")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--scale", type=int, default=6)
    args = parser.parse_args()
    model = load_checkpoint(args.checkpoint, device="cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "samples.png").write_bytes(encode_png(samples(model, 10, args.scale), compress_level=9))
    (args.out / "chain.png").write_bytes(encode_png(chain(model, [1, 2, 3, 4], 9, args.scale), compress_level=9))
    print(f"wrote {args.out / 'samples.png'} and {args.out / 'chain.png'}")


if __name__ == "__main__":
    main()
