"""The layering is a checked contract (pyproject's [tool.importlinter]), not a convention."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold() -> None:
    tool = shutil.which("lint-imports", path=os.path.dirname(sys.executable)) or shutil.which("lint-imports")
    assert tool, "import-linter is a test dependency"
    result = subprocess.run([tool, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "3 kept, 0 broken" in result.stdout


def test_the_command_imports_the_packages_only_inside_its_subcommands() -> None:
    """cli.py sits above model/, training/ and app/; importing it must not load any of them, so
    that `ddpm serve` never imports the trainer and `ddpm train` never imports the server."""
    tree = ast.parse((ROOT / "cli.py").read_text())
    top = [node for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)]
    names = {alias.name.split(".")[0] for node in top if isinstance(node, ast.Import) for alias in node.names}
    names |= {(node.module or "").split(".")[0] for node in top if isinstance(node, ast.ImportFrom)}
    assert not names & {"model", "training", "app"}, names
