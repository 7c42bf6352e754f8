"""Does a faster precision lose quality? The eval of `ddpm eval`, in fp32 and bf16, over seeds.

    python -m bench.quality --seeds 0 1 2 --samples 500 --out bench/results/quality.json

For each precision and each sample seed, every row (sampler, steps) of the quality report is
measured on the same checkpoint; the table gives mean and standard deviation over seeds, so the
fp32-vs-bf16 difference can be read against the seed-to-seed noise measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.common import machine, write_json
from training.evaluate import DEFAULT_ROWS, EvalOptions, evaluate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="default: the embedded model")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    def options(dtype: str, seed: int) -> EvalOptions:
        return EvalOptions(checkpoint=args.checkpoint, out=Path("/tmp/ddpm-bench-quality"), dtype=dtype,
                           samples=args.samples, bpd_images=0, seed=seed * 1_000_003, rows=DEFAULT_ROWS)

    runs = eval_runs(args.dtypes, args.seeds, options)
    table = summarize(runs, args.dtypes)
    print(markdown(table, args.dtypes, len(args.seeds), args.samples))
    write_json(args.out, {"machine": machine(), "samples": args.samples, "seeds": args.seeds,
                          "runs": runs, "table": table})


def eval_runs(columns: list[str], seeds: list[int],
                options: Callable[[str, int], EvalOptions]) -> list[dict[str, Any]]:
    """Every column's eval for each seed in turn, so load drifts hit every column alike; one run
    per (column, seed, row), the column under the key "dtype" that ``summarize`` groups by."""
    runs: list[dict[str, Any]] = []
    for seed in seeds:
        for column in columns:
            report = evaluate(options(column, seed))
            for row in report["rows"]:
                runs.append({"dtype": column, "seed": seed, **{k: row[k] for k in (
                    "sampler", "steps", "guidance", "fd", "floor", "fd_ratio", "accuracy", "confident",
                    "images_per_s")}})
            print(f"seed {seed} {column}: done", flush=True)
    return runs


def summarize(runs: list[dict[str, Any]], dtypes: list[str]) -> list[dict[str, Any]]:
    keys = sorted({(r["sampler"], r["steps"]) for r in runs}, key=lambda k: (k[0], -k[1]))
    table = []
    for sampler, steps in keys:
        entry: dict[str, Any] = {"sampler": sampler, "steps": steps}
        for dtype in dtypes:
            sel = [r for r in runs if (r["sampler"], r["steps"], r["dtype"]) == (sampler, steps, dtype)]
            for metric in ("fd_ratio", "accuracy", "images_per_s"):
                values = [r[metric] for r in sel]
                entry[f"{dtype}_{metric}"] = statistics.mean(values)
                entry[f"{dtype}_{metric}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        table.append(entry)
    return table


def markdown(table: list[dict[str, Any]], dtypes: list[str], seeds: int, samples: int) -> str:
    head = " | ".join(f"{d} FD/floor | {d} accuracy | {d} images/s" for d in dtypes)
    lines = [f"mean +- std over {seeds} seeds, {samples} samples per row", "",
             f"| sampler | steps | {head} |", "| --- | --- |" + " --- |" * (3 * len(dtypes))]
    for e in table:
        cells = " | ".join(
            f"{e[f'{d}_fd_ratio']:.2f} +- {e[f'{d}_fd_ratio_std']:.2f} | "
            f"{e[f'{d}_accuracy']:.3f} +- {e[f'{d}_accuracy_std']:.3f} | {e[f'{d}_images_per_s']:.0f}"
            for d in dtypes)
        lines.append(f"| {e['sampler']} | {e['steps']} | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
