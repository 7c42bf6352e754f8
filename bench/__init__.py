"""Benchmarks: python -m bench.unet, python -m bench.server, bench/gpu.sh (see docs/benchmarks.md)."""

import os

# As `ddpm` does (cli.py), before any benchmark imports torch and its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
