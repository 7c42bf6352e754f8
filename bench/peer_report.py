"""The markdown tables of docs/benchmarks.md's serving-peer section, from bench.peer's JSON.

    python -m bench.peer_report bench/results/peer.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

NAMES = {"ours": "ours (`ddpm serve`, runtime auto)", "ours_torch": "ours, DDPM_RUNTIME=torch",
         "peer": "peer, 20 ms window", "peer_wide": "peer, 100 ms window"}


def render(results: dict) -> str:
    summary, ratios = results["summary"], results["ratios"]
    servers = list(summary["uniform"])
    classes = list(summary["mixed"][servers[0]]["classes"])
    head = ["server", "uniform images/s", "uniform p50 / p99 (s)", "mixed images/s",
            *(f"mixed {c}-step p50 / p99 (s)" for c in classes)]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name in servers:
        uni, mix = summary["uniform"][name], summary["mixed"][name]
        (u,) = uni["classes"].values()
        runs = lambda row: ", ".join(f"{v:.1f}" for v in row["images_per_s_runs"])  # noqa: E731
        cells = [NAMES.get(name, name), f"{uni['images_per_s']:.2f} ({runs(uni)})",
                 f"{u['p50_s']:.2f} / {u['p99_s']:.2f}", f"{mix['images_per_s']:.2f} ({runs(mix)})",
                 *(f"{mix['classes'][c]['p50_s']:.2f} / {mix['classes'][c]['p99_s']:.2f}" for c in classes)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| ratio to the best peer on each measure | uniform images/s (aim >= 2x) "
              "| mixed images/s (aim >= 3x) | "
              f"mixed {classes[0]}-step p50, peer / ours (aim >= 15x) |", "| --- | --- | --- | --- |"]
    for name, r in ratios.items():
        met = results["aims_met"][name]
        cells = [f"{r[k]:.2f}x ({'met' if met[k] else 'not met'})"
                 for k in ("uniform_images_per_s", "mixed_images_per_s", "mixed_short_p50_sooner")]
        lines.append(f"| {NAMES.get(name, name)} | " + " | ".join(cells) + " |")
    lines += ["", "Per round (the servers of one round ran within minutes of each other), images/s ratios:"]
    for peer in results["ratios_by_peer"]:
        for name in ratios:
            for load in ("uniform", "mixed"):
                per = [r[name][load]["images_per_s"] / r[peer][load]["images_per_s"] for r in results["rounds"]]
                lines.append(f"- {name} / {peer}, {load}: " + ", ".join(f"{v:.2f}x" for v in per))
    lines += ["", "Peer batch sizes (images per pipeline call, per load, all rounds; warm-up calls included):"]
    for peer in results["ratios_by_peer"]:
        for load in ("uniform", "mixed"):
            calls = [c for r in results["rounds"] for c in r[peer][load]["peer_calls"]["calls"]]
            sizes = sorted(n for n, _ in calls)
            lines.append(f"- {peer}, {load}: {len(calls)} calls, mean {sum(sizes) / len(sizes):.1f} images, "
                         f"median {sizes[len(sizes) // 2]}, max {sizes[-1]}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(json.loads(Path(sys.argv[1]).read_text())))
