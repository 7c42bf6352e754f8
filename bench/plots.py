"""The plots of docs/benchmarks.md, drawn with matplotlib from the benchmarks' JSON results.

    python -m bench.plots --server bench/results/server.json --quality bench/results/quality.json

latency_vs_concurrency.png   p50/p90/p99 latency and images/s of the server against clients
images_per_s_vs_batch.png    the offline sampler's images/s against its batch size
quality_vs_steps.png         Frechet distance / real floor and label accuracy against steps, per sampler
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

OUT = Path(__file__).resolve().parents[1] / "docs" / "images"


def latency(server: dict, out: Path) -> Path:
    sweep = server["concurrency_sweep"]
    clients = [r["clients"] for r in sweep]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, style in (("p50", "o-"), ("p90", "s--"), ("p99", "^:")):
        ax.plot(clients, [r[key] * 1e3 for r in sweep], style, label=f"{key} latency")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"concurrent clients (1 image, {server['body']['steps']} steps each)")
    ax.set_ylabel("latency (ms)")
    ax2 = ax.twinx()
    ax2.plot(clients, [r["images_per_s"] for r in sweep], "k.-", alpha=0.5, label="images/s")
    ax2.set_ylabel("images/s")
    fig.legend(loc="upper left", bbox_to_anchor=(0.12, 0.88), fontsize=8)
    ax.set_title("Server latency and throughput against concurrency")
    return save(fig, out / "latency_vs_concurrency.png")


def throughput(server: dict, out: Path) -> Path:
    sweep = server["batch_sweep"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([r["batch"] for r in sweep], [r["images_per_s"] for r in sweep], "o-")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("batch size (rows per network call)")
    ax.set_ylabel(f"images/s ({server['body']['steps']}-step {server['body']['sampler']})")
    ax.set_title("Offline sampler throughput against batch size")
    return save(fig, out / "images_per_s_vs_batch.png")


def quality(report: dict, out: Path) -> Path:
    rows = [r for r in report["rows"] if r.get("guidance") == report.get("default_guidance", r.get("guidance"))]
    samplers = sorted({r["sampler"] for r in rows})
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for sampler in samplers:
        pts = sorted((r["steps"], r["fd_ratio"], r["accuracy"]) for r in rows if r["sampler"] == sampler)
        ax1.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=sampler)
        ax2.plot([p[0] for p in pts], [p[2] for p in pts], "o-", label=sampler)
    ax1.axhline(1.0, color="grey", lw=0.8)
    ax1.axhline(1.5, color="grey", lw=0.8, ls="--")
    ax1.set_ylabel("Frechet distance / real-vs-real floor")
    ax2.set_ylabel("label accuracy")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("steps")
        ax.legend(fontsize=8)
    fig.suptitle("Sample quality against steps, per sampler")
    return save(fig, out / "quality_vs_steps.png")


def save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", type=Path, help="bench.server --out JSON")
    parser.add_argument("--quality", type=Path, help="`ddpm eval` report.json with steps per sampler")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    written = []
    if args.server:
        server = json.loads(args.server.read_text())
        written += [latency(server, args.out), throughput(server, args.out)]
    if args.quality:
        written.append(quality(json.loads(args.quality.read_text()), args.out))
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
