"""Does another runtime move quality? The eval of `ddpm eval` with torch and ONNX Runtime, over seeds.

    python -m bench.runtime_quality --seeds 0 1 2 --samples 500 --out bench/results/runtime-quality.json

bench/quality.py's measurement (the digits referee's FD/floor and label accuracy per sampler
and step count, mean and standard deviation over seeds), with the runtime in place of the
precision: the difference between runtimes is read against the seed-to-seed noise measured
in the same run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.common import machine, write_json
from bench.quality import eval_runs, markdown, summarize
from training.evaluate import EvalOptions

ROWS = (("ddim", 50), ("ddim", 20), ("ddim", 10), ("dpmpp_2m", 20), ("dpmpp_2m", 10))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtimes", nargs="+", default=["torch", "onnxruntime"],
                        help="RUNTIME or RUNTIME:DTYPE (e.g. openvino:bfloat16); the dtype defaults to float32")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    def options(spec: str, seed: int) -> EvalOptions:
        runtime, _, dtype = spec.partition(":")
        return EvalOptions(out=Path("/tmp/ddpm-bench-runtime-quality"), device="cpu", dtype=dtype or "float32",
                           runtime=runtime, samples=args.samples, bpd_images=0, seed=seed * 1_000_003, rows=ROWS)

    runs = eval_runs(args.runtimes, args.seeds, options)
    table = summarize(runs, args.runtimes)
    print(markdown(table, args.runtimes, len(args.seeds), args.samples))
    write_json(args.out, {"machine": machine(), "samples": args.samples, "seeds": args.seeds,
                          "runs": runs, "table": table})


if __name__ == "__main__":
    main()
