"""Writing an evaluation: report.json, report.md (a markdown table) and one sample grid per row."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .grids import save_grid


def row_name(row: dict[str, Any]) -> str:
    w = row.get("guidance")
    return f"{row['sampler']}_{row['steps']}" + ("" if w is None else f"_w{w:g}")


def _fmt(value: Any, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def markdown(report: dict[str, Any]) -> str:
    lines = [f"# Evaluation of {report['model']} ({report['checkpoint']})", ""]
    data = report["data"]
    lines.append(f"Held-out data: {data['dataset']}, {data['heldout_images']} images (split seed "
                 f"{data['split_seed']}, holdout {data['holdout']}); trained steps: {report.get('trained_steps')}; "
                 f"device: {report['device']}, {report.get('dtype', 'float32')}"
                 f"{'; QUICK (smoke check, not a measurement)' if report['quick'] else ''}.")
    lines += ["", "## Negative log-likelihood bound (bits/dim, eq. 5)", "",
              "| model | bits/dim | +- stderr | prior L_T | decoder L_0 | images |",
              "| --- | --- | --- | --- | --- | --- |"]
    for kind, b in report["bpd"].items():
        label = "p(x) (null label)" if kind == "unconditional" else "p(x \\| y) (true label)"
        lines.append(f"| {label} | {b['bpd']:.4f} | {b['bpd_stderr']:.4f} | {b['prior_bpd']:.2e} | "
                     f"{b['decoder_bpd']:.2e} | {b['images']} |")
    if report.get("rows"):
        real = report["real_heldout"]
        lines += ["", f"## Sample quality ({real['n']} samples per row, labels 0-9 in turn)", "",
                  "FD: Frechet distance in the judge's hidden-layer features to the held-out digits; floor: the "
                  f"same for {real['n']} real training digits (mean of 5 draws, std {real['floor_std']:.3f}). "
                  f"The judge on the held-out real digits: accuracy {real['accuracy']:.3f}, "
                  f"confident {real['confident']:.3f}.", "",
                  "| sampler | steps | guidance | FD | floor | FD/floor | accuracy | confident | seconds | images/s |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in report["rows"]:
            mark = " (default)" if r.get("default") else ""
            lines.append(f"| {r['sampler']}{mark} | {r['steps']} | {_fmt(r['guidance'], 'g')} | {r['fd']:.3f} | "
                         f"{r['floor']:.3f} | {r['fd_ratio']:.2f} | {_fmt(r['accuracy'], '.3f')} | "
                         f"{r['confident']:.3f} | {r['seconds']:.1f} | {r['images_per_s']:.1f} |")
    return "\n".join(lines) + "\n"


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    """report.json, report.md and grid_<row>.png for each row; returns the paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for row in report.get("rows", []):
        images = row.pop("images", None)
        if images is not None:
            ncols = report.get("num_classes") or None  # labels run 0..C-1 in turn: one column per class
            paths.append(save_grid(out / f"grid_{row_name(row)}.png", images[:100], ncols))
            row["grid"] = paths[-1].name
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    return [out / "report.json", out / "report.md", *paths]
