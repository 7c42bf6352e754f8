"""Print the requirements that pyproject.toml declares, one a line, for ``pip install -r``.

The image installs these in a layer of their own, before the source is copied, so that editing
the code does not reinstall the dependencies. Build requirements come first (the source is then
installed with ``--no-build-isolation``, without another download), then the runtime
dependencies, then those of each extra named on the command line (e.g. ``train``).

Usage: python requirements.py PYPROJECT [EXTRA[,EXTRA...]]
"""

from __future__ import annotations

import sys

if sys.version_info >= (3, 11):  # the images run 3.12
    import tomllib
else:
    import tomli as tomllib


def requirements(pyproject: dict, extras: list[str]) -> list[str]:
    project = pyproject["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"unknown extra(s) {', '.join(unknown)}; pyproject.toml has {', '.join(optional)}")
    lines = list(pyproject.get("build-system", {}).get("requires", []))
    lines += project.get("dependencies", [])
    for extra in extras:
        lines += optional[extra]
    return list(dict.fromkeys(lines))  # keep the order, drop repeats


def main(argv: list[str]) -> int:
    if not 1 <= len(argv) <= 2:
        raise SystemExit(__doc__)
    with open(argv[0], "rb") as f:
        pyproject = tomllib.load(f)
    extras = [e.strip() for e in (argv[1] if len(argv) > 1 else "").split(",") if e.strip()]
    print("\n".join(requirements(pyproject, extras)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
