"""OpenMP's wait policy on a shared CPU: the measurement behind `ddpm`'s OMP_WAIT_POLICY=PASSIVE.

    python -m bench.omp --out bench/results/omp.json

The embedded model samples (batch 1 and 16, 20 DDIM steps) in fresh subprocesses, with OpenMP
threads that spin (ACTIVE) or sleep (PASSIVE) when idle, alone and next to one busy process
(a pure-Python loop holding one core, as a neighbour container or another replica would).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from bench.common import machine, write_json

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


@contextmanager
def neighbour(busy: bool) -> Iterator[None]:
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        time.sleep(0.2 if busy else 0)
        yield
    finally:
        if proc is not None:
            proc.kill()
            proc.wait()


def probe(policy: str) -> dict:
    env = {**os.environ, "OMP_WAIT_POLICY": policy}
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=900,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    results = []
    for _ in range(args.repeats):
        for busy in (False, True):
            for policy in ("PASSIVE", "ACTIVE"):
                with neighbour(busy):
                    r = probe(policy)
                results.append({"policy": policy, "neighbour": busy, **r})
                print(f"{policy:8s} neighbour={busy!s:5s} threads={r['threads']} ms/step: "
                      f"batch 1 {r['ms_per_step']['1']:.2f}, batch 16 {r['ms_per_step']['16']:.2f}", flush=True)
    write_json(args.out, {"machine": machine(), "runs": results})


if __name__ == "__main__":
    main()
