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


def quality(result: dict, out: Path) -> Path:
    """From ``bench.quality``'s table: each sampler's mean over seeds, with the seed-to-seed
    standard deviation as error bars, fp32 solid and bf16 dashed, so that the precision
    difference can be read against the run-to-run noise."""
    table = result["table"]
    dtypes = [k.removesuffix("_fd_ratio") for k in table[0] if k.endswith("_fd_ratio")]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for i, sampler in enumerate(sorted({e["sampler"] for e in table})):
        rows = sorted((e for e in table if e["sampler"] == sampler), key=lambda e: e["steps"])
        steps = [e["steps"] for e in rows]
        for j, (dtype, style) in enumerate(zip(dtypes, ("o-", "s--"), strict=False)):
            shifted = [s * 1.06**j for s in steps]  # side by side, not on top of each other
            for ax, metric in ((ax1, "fd_ratio"), (ax2, "accuracy")):
                ax.errorbar(shifted, [e[f"{dtype}_{metric}"] for e in rows],
                            yerr=[e[f"{dtype}_{metric}_std"] for e in rows], fmt=style, color=f"C{i}",
                            capsize=3, label=f"{sampler} {dtype}")
    ax1.axhline(1.0, color="grey", lw=0.8)
    ax1.axhline(1.5, color="grey", lw=0.8, ls="--")
    ax1.set_ylabel("Frechet distance / real-vs-real floor")
    ax2.set_ylabel("label accuracy")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("steps")
    ax2.legend(fontsize=7)
    fig.suptitle(f"Sample quality against steps (mean +- std over {len(result['seeds'])} seeds, "
                 f"{result['samples']} samples each)")
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
    parser.add_argument("--quality", type=Path, help="bench.quality --out JSON")
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
