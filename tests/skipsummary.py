"""One line at the end of a test run: which suites skipped, and the command that enables them.

A suite that needs a program the machine lacks (Chromium, nginx, Prometheus, redis-server, a
GPU) skips and says why in its reason; pytest's own summary lists every skipped test, which a
reader skims past. This plugin folds the skips into one line, grouped by what would enable
them: the reasons name their remedy as ``apt-get install PKG...`` or ``pip install PKG``, and
the line gathers those into one command. tests/conftest.py registers the hook.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Generator, Iterable

import pytest

APT = re.compile(r"apt-get install ((?:[a-z0-9][a-z0-9.+-]*)(?: [a-z0-9][a-z0-9.+-]*)*)")
PIP = re.compile(r"pip install ('[^']+'|\S+)")
CUDA = re.compile(r"\bCUDA\b|\bGPU\b", re.IGNORECASE)


def remedy(reason: str) -> tuple[str, tuple[str, ...]]:
    """(kind, items) of what enables a test skipped for ``reason``: apt packages, pip
    requirements, a GPU, or (other) the reason itself."""
    apt = tuple(pkg for match in APT.findall(reason) for pkg in match.split())
    if apt:
        return "apt", apt
    pip = tuple(m.rstrip(").;,") for m in PIP.findall(reason))
    if pip:
        return "pip", pip
    if CUDA.search(reason):
        return "gpu", ()
    return "other", (reason.removeprefix("Skipped: ").strip(),)


def summary_line(skips: Iterable[tuple[str, str]]) -> str:
    """``skips``: (test file, reason) per skipped test. The line names each file with its count,
    grouped by the command that would enable it."""
    counts: Counter[str] = Counter()
    groups: dict[tuple[str, tuple[str, ...]], list[str]] = defaultdict(list)
    apt: list[str] = []
    for path, reason in skips:
        counts[path] += 1
        kind, items = remedy(reason)
        key = ("apt", ()) if kind == "apt" else (kind, items)
        if kind == "apt":
            apt.extend(p for p in items if p not in apt)
        if path not in groups[key]:
            groups[key].append(path)
    if not counts:
        return "skipped suites: none"
    parts = []
    for (kind, items), paths in groups.items():
        named = ", ".join(f"{p} ({counts[p]})" for p in paths)
        if kind == "apt":
            how = f"apt-get install {' '.join(apt)} (with sudo unless root; make test tries it)"
        elif kind == "pip":
            how = f".venv/bin/pip install {' '.join(items)}"
        elif kind == "gpu":
            how = "run on a machine with a CUDA GPU"
        else:
            how = items[0]
        parts.append(f"{named}: {how}")
    return "skipped suites: " + "; ".join(parts)


def skipped(reporter: pytest.TerminalReporter) -> list[tuple[str, str]]:
    out = []
    for report in reporter.stats.get("skipped", []):
        if getattr(report, "wasxfail", None) is not None:
            continue  # an expected failure is not a skipped suite
        path = report.nodeid.split("::")[0] or str(report.location[0] if hasattr(report, "location") else "?")
        longrepr = report.longrepr
        reason = longrepr[2] if isinstance(longrepr, tuple) and len(longrepr) == 3 else str(longrepr)
        out.append((path, reason))
    return out


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> Generator[None, object, object]:
    # Outermost wrapper: after pytest's own "short test summary info", right before the final
    # "N passed, M skipped" line, which stays the last line (CI reads it).
    result = yield
    terminalreporter.write_line(summary_line(skipped(terminalreporter)))
    return result
