"""Does another runtime move quality? The eval of `ddpm eval` with torch and ONNX Runtime, over seeds.

    python -m bench.runtime_quality --seeds 0 1 2 --samples 500 --out bench/results/runtime-quality.json

bench/quality.py's measurement (the digits referee's FD/floor and label accuracy per sampler
and step count, mean and standard deviation over seeds), with the runtime in place of the
precision: the difference between runtimes is read against the seed-to-seed noise measured
in the same run. The eval builds its model with ``load_checkpoint``; here that call gets the
``runtime`` argument (the eval itself has no runtime option yet).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path
from typing import Any

from bench.common import machine, write_json
from bench.quality import markdown, summarize

ROWS = (("ddim", 50), ("ddim", 20), ("ddim", 10), ("dpmpp_2m", 20), ("dpmpp_2m", 10))


def main() -> None:
    import training.evaluate as evaluate_module
    from model import load_checkpoint
    from training.evaluate import EvalOptions, evaluate

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime"],
                        help="RUNTIME or RUNTIME:DTYPE (e.g. openvino:bfloat16); the dtype defaults to float32")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        for spec in args.runtimes:  # interleaved, as bench/quality.py does its precisions
            runtime, _, dtype = spec.partition(":")
            evaluate_module.load_checkpoint = functools.partial(load_checkpoint, runtime=runtime)  # type: ignore[assignment]
            report = evaluate(EvalOptions(out=Path("/tmp/ddpm-bench-runtime-quality"), device="cpu",
                                          dtype=dtype or "float32", samples=args.samples, bpd_images=0,
                                          seed=seed * 1_000_003, rows=ROWS))
            for row in report["rows"]:
                # "dtype" is the column summarize() groups by; here it holds the runtime
                runs.append({"dtype": spec, "seed": seed, **{k: row[k] for k in (
                    "sampler", "steps", "guidance", "fd", "floor", "fd_ratio", "accuracy", "confident",
                    "images_per_s")}})
            print(f"seed {seed} {spec}: done", flush=True)
    table = summarize(runs, args.runtimes)
    print(markdown(table, args.runtimes, len(args.seeds), args.samples))
    write_json(args.out, {"machine": machine(), "samples": args.samples, "seeds": args.seeds,
                          "runs": runs, "table": table})


if __name__ == "__main__":
    main()
