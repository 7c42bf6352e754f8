"""How long OpenMP's idle threads should spin: the measurement behind `ddpm`'s default.

    python -m bench.omp --out bench/results/omp.json

The embedded model samples (batch 1 and 16, 20 DDIM steps) in fresh subprocesses under each
OpenMP wait configuration (libgomp: spin GOMP_SPINCOUNT iterations, then sleep; PASSIVE is 0,
ACTIVE is forever, unset is 300,000), alone and next to one busy process (a pure-Python loop
holding one core, as a neighbour container or another replica would).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from bench.common import machine, neighbour, write_json

PROBE = """
import json, time, torch
from model import load_checkpoint
m = load_checkpoint(None, device="cpu")
out = {}
for b in (1, 16):
    m.sample(b, steps=3, sampler="ddim", batch_size=b)
    start = time.perf_counter()
    m.sample(b, steps=20, sampler="ddim", seed=1, batch_size=b)
    out[b] = (time.perf_counter() - start) / 20 * 1e3
print(json.dumps({"threads": torch.get_num_threads(), "ms_per_step": out}))
"""



CONFIGS: dict[str, dict[str, str]] = {
    "PASSIVE (spin 0)": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin 10k": {"GOMP_SPINCOUNT": "10000"},
    "spin 100k": {"GOMP_SPINCOUNT": "100000"},
    "unset (spin 300k)": {},
    "ACTIVE (spin forever)": {"OMP_WAIT_POLICY": "ACTIVE"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
}


def probe(config: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**env, **config}, capture_output=True, text=True,
                         timeout=900, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    results = []
    for _ in range(args.repeats):
        for busy in (False, True):
            for name, config in CONFIGS.items():
                with neighbour(busy):
                    r = probe(config)
                results.append({"config": name, "env": config, "neighbour": busy, **r})
                print(f"{name:22s} neighbour={busy!s:5s} threads={r['threads']} ms/step: "
                      f"batch 1 {r['ms_per_step']['1']:.2f}, batch 16 {r['ms_per_step']['16']:.2f}", flush=True)
    write_json(args.out, {"machine": machine(), "runs": results})


if __name__ == "__main__":
    main()
