"""What each exact graph rewrite (model/runtimes/rewrites.py) buys ONNX Runtime, per call.

    python -m bench.rewrites --out bench/results/rewrites.json

The embedded network exported without rewrites, then with each rewrite added in turn, every
variant in its own session (the served one: one thread, no spinning, ORT_ENABLE_ALL), timed in
a fresh random order every round (``bench.runtime.shuffled``). Every variant's outputs are
checked to equal the unrewritten graph's bit for bit first.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable
from typing import Any

import numpy as np

from bench.common import machine, median, write_json
from bench.runtime import print_row, ratios, shuffled
from model import load_checkpoint
from model.runtimes import export as export_module
from model.runtimes import rewrites


def variants() -> dict[str, Any]:
    """The raw export, then the rewrites of ``rewrites.optimise`` applied cumulatively, in its order."""
    import onnx

    model = load_checkpoint(None, device="cpu", dtype="float32", channels_last=False)
    real = export_module.optimise
    export_module.optimise = lambda proto: {}
    try:
        raw = onnx.load_from_string(export_module.export_onnx(model.unet, model.config))
    finally:
        export_module.optimise = real
    steps = (rewrites.affine_as_depthwise_conv, rewrites.static_reshapes, rewrites.swap_last_axes)
    out, current = {"raw": raw}, raw
    for step in steps:
        nxt = onnx.ModelProto()
        nxt.CopyFrom(current)
        step(nxt)
        out[f"+{step.__name__}"] = current = nxt
    return out


def main() -> None:
    import onnxruntime as ort

    from model.runtimes.ort_runner import session_options

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    graphs = variants()
    sessions = {name: ort.InferenceSession(g.SerializeToString(), session_options(1, False),
                                           providers=["CPUExecutionProvider"]) for name, g in graphs.items()}
    results: dict[str, object] = {"machine": machine(), "args": vars(args),
                                  "nodes": {name: len(g.graph.node) for name, g in graphs.items()}, "rows": []}
    print(f"machine: {results['machine']}\nnodes: {results['nodes']}", flush=True)
    rng = np.random.default_rng(0)
    for b in args.batches:
        feeds = {"x": rng.standard_normal((b, 1, 8, 8), dtype=np.float32),
                 "t": rng.integers(0, 1000, b), "labels": rng.integers(0, 11, b)}
        reference = sessions["raw"].run(None, feeds)[0]
        assert all(np.array_equal(s.run(None, feeds)[0], reference) for s in sessions.values()), b
        calls: dict[str, Callable[[], object]] = {
            name: (lambda s=s, f=feeds: s.run(None, f)) for name, s in sessions.items()}
        times = shuffled(calls, repeats=args.repeats if b < 64 else max(5, args.repeats // 3))
        row = ratios({k: median(v) for k, v in times.items()}, "raw")
        results["rows"].append({"batch": b, **row})  # type: ignore[attr-defined]
        print_row(f"batch {b}", row)
        write_json(args.out, results)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
