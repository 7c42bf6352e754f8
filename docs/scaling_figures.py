"""The plots of docs/scaling.md, drawn from bench/results/capacity.json (bench/capacity_run.py).

    python docs/scaling_figures.py

capacity_validation.png    the model against the real server: images/s, p50 and p99 by clients
capacity_replicas.png      replicas needed against arrival rate at the p99 target (CPU here, GPU assumed)
capacity_p99_vs_rate.png   one replica's p99 against arrival rate, Poisson and bursts of 8
capacity_cold_start.png    scaling from zero: p50/p99 of the first minute's requests by cold-start time
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "images"
NOTE = "shared 2-core machine (other agents' load)"


def save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def validation(results: dict[str, Any], out: Path) -> Path:
    rows = results["validation"]
    clients = [r["clients"] for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    ax = axes[0]
    ax.plot(clients, [r["measured"]["images_per_s"] for r in rows], "ko-", label="server, measured")
    ax.plot(clients, [r["model"]["images_per_s"] for r in rows], "C0s--", label="model")
    ax.set_ylabel("images/s")
    ax = axes[1]
    for key, color in (("p50", "C1"), ("p99", "C3")):
        ax.plot(clients, [r["measured"][key] for r in rows], "o-", color=color, label=f"{key} measured")
        ax.plot(clients, [r["model"][key] for r in rows], "s--", color=color, alpha=0.7, label=f"{key} model")
    ax.set_ylabel("latency (s)")
    for ax in axes:
        ax.set_xscale("log", base=2)
        ax.set_xlabel("closed-loop clients (1 image, 50 DDIM steps)")
        ax.legend(fontsize=8)
    fig.suptitle(f"Capacity model against ddpm serve, embedded model, one run ({NOTE})", fontsize=9)
    return save(fig, out / "capacity_validation.png")


def replicas(results: dict[str, Any], out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, kind in zip(axes, ("cpu", "gpu"), strict=True):
        use = results["use"][kind]
        p99 = results["hardware"][kind]["p99_s"]
        # Simulated at these rates only: between them the need lies between the neighbours' values.
        ax.plot([r["rate"] for r in use["replicas"]], [r["replicas"] for r in use["replicas"]], "o:")
        for r in use["replicas"]:
            ax.annotate(str(r["replicas"]), (r["rate"], r["replicas"]), textcoords="offset points", xytext=(4, 4),
                        fontsize=8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("arrival rate (requests/s, interactive mix)")
        ax.set_ylabel(f"replicas for p99 <= {p99:g} s")
        title = "embedded model, CPU replica (measured curve)" if kind == "cpu" else \
            "CIFAR-10 network, one GPU each (ASSUMED curve)"
        ax.set_title(title, fontsize=9)
    return save(fig, out / "capacity_replicas.png")


def p99_vs_rate(results: dict[str, Any], out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, kind in zip(axes, ("cpu", "gpu"), strict=True):
        rows = results["use"][kind]["p99_vs_rate"]
        sat = results["use"][kind]["saturation_rate"]
        for key, style in (("burst1", "o-"), ("burst8", "s--")):
            ax.plot([r["rate"] / sat for r in rows], [r[key] for r in rows], style,
                    label="Poisson" if key == "burst1" else "bursts of 8")
        ax.axhline(results["hardware"][kind]["p99_s"], color="gray", lw=0.8, ls=":", label="p99 target")
        ax.set_xlabel("arrival rate / saturation rate, one replica")
        ax.set_ylabel("p99 latency (s)")
        ax.set_yscale("log")
        ax.set_title("CPU (measured)" if kind == "cpu" else "GPU (ASSUMED)", fontsize=9)
        ax.legend(fontsize=8)
    return save(fig, out / "capacity_p99_vs_rate.png")


def cold_start(results: dict[str, Any], out: Path) -> Path:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    for ax, kind in zip(axes, ("cpu", "gpu"), strict=True):
        rows = results["use"][kind]["cold_start"]
        x = [r["cold_start_s"] for r in rows]
        ax.plot(x, [r["p50"] for r in rows], "o-", label="p50, first minute")
        ax.plot(x, [r["p99"] for r in rows], "s--", label="p99, first minute")
        ax.axvline(results["hardware"][kind]["cold_start_s"], color="gray", lw=0.8, ls=":",
                   label="this replica's cold start" + (" (measured)" if kind == "cpu" else " (ASSUMED)"))
        ax.set_xlabel("cold start (s): load, warm-up, compile")
        ax.set_ylabel("latency (s)")
        ax.set_title(("CPU" if kind == "cpu" else "GPU") + ": from zero replicas at half a replica's rate",
                     fontsize=9)
        ax.legend(fontsize=8)
    return save(fig, out / "capacity_cold_start.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", type=Path, default=ROOT / "bench" / "results" / "capacity.json")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    results = json.loads(args.results.read_text())
    for draw in (validation, replicas, p99_vs_rate, cold_start):
        print(draw(results, args.out))


if __name__ == "__main__":
    main()
