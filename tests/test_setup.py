"""The README's set-up commands: what `make serve` and `make test` run, the Debian packages
`make test` installs where it can (.ci/system-packages.sh, with apt-get, sudo and id stubbed),
the line that ends a test run with skipped suites, and what git ignores."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "system-packages.sh"
PACKAGES = ["nginx-light", "prometheus", "chromium", "chromium-driver", "redis-server", "curl"]
BASH = shutil.which("bash") or "/bin/bash"


def stub(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text(f"#!{BASH}\n{body}\n")
    path.chmod(0o755)


def run_installer(tmp_path: Path, *, uid: int, sudo: bool, apt_status: int = 0,
                  present: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Runs the script with PATH holding only stubs: `id -u` says ``uid``, apt-get logs its
    arguments (and whether sudo ran it) and exits ``apt_status``; ``present`` programs exist."""
    bin_dir, tools = tmp_path / "bin", tmp_path / "tools"
    bin_dir.mkdir()
    tools.mkdir()
    log = tmp_path / "calls.log"
    os.symlink(shutil.which("env") or "/usr/bin/env", bin_dir / "env")
    stub(bin_dir, "id", f'[ "$1" = -u ] && echo {uid}')
    stub(bin_dir, "apt-get", f'echo "apt-get sudo=${{VIA_SUDO:-0}} $*" >> {log}; exit {apt_status}')
    if sudo:
        stub(bin_dir, "sudo", f'echo "sudo $*" >> {log}; [ "$1" = -n ] && shift; VIA_SUDO=1 exec "$@"')
    for name in present:
        stub(tools, name, "exit 0")
    env = {"PATH": str(bin_dir), "TOOLS_PATH": str(tools), "HOME": str(tmp_path)}
    result = subprocess.run([BASH, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=30)
    calls = log.read_text().splitlines() if log.exists() else []
    return result, calls


def test_installer_uses_sudo_without_a_prompt_when_not_root(tmp_path: Path) -> None:
    result, calls = run_installer(tmp_path, uid=1000, sudo=True)
    assert result.returncode == 0, result.stderr
    assert calls[0].startswith("sudo -n env DEBIAN_FRONTEND=noninteractive apt-get")
    installs = [c for c in calls if c.startswith("apt-get") and " install " in c]
    assert len(installs) == 1 and installs[0].startswith("apt-get sudo=1 ")
    assert installs[0].split()[-len(PACKAGES):] == PACKAGES
    assert any(c.startswith("apt-get") and c.endswith(" update") for c in calls)


def test_installer_as_root_runs_apt_directly_and_only_for_what_is_missing(tmp_path: Path) -> None:
    result, calls = run_installer(tmp_path, uid=0, sudo=True, present=("nginx", "chromium", "chromedriver"))
    assert result.returncode == 0, result.stderr
    assert not any(c.startswith("sudo") for c in calls)
    install = next(c for c in calls if " install " in c)
    assert install.startswith("apt-get sudo=0 ") and install.split()[-3:] == ["prometheus", "redis-server", "curl"]
    assert "nginx-light" not in install and "chromium" not in install


def test_installer_does_nothing_when_everything_is_there(tmp_path: Path) -> None:
    present = ("nginx", "prometheus", "promtool", "chromium", "chromedriver", "redis-server", "curl")
    result, calls = run_installer(tmp_path, uid=1000, sudo=True, present=present)
    assert result.returncode == 0 and calls == [] and result.stderr == ""


@pytest.mark.parametrize(("uid", "sudo", "apt_status", "why"), [
    (1000, True, 100, "apt-get failed"),  # no network, no password-less sudo, a held lock...
    (1000, False, 0, "not root and no sudo"),
])
def test_a_failed_install_does_not_fail_the_tests(tmp_path: Path, uid: int, sudo: bool, apt_status: int,
                                                  why: str) -> None:
    result, _ = run_installer(tmp_path, uid=uid, sudo=sudo, apt_status=apt_status)
    assert result.returncode == 0
    assert why in result.stderr and "will skip" in result.stderr and "redis-server" in result.stderr


def make_dry_run(*args: str) -> list[str]:
    make = shutil.which("make")
    if make is None:
        pytest.skip("no make here (apt-get install make)")
    out = subprocess.run([make, "-n", "--no-print-directory", "-C", str(ROOT), "VENV=/nonexistent-venv", *args],
                         capture_output=True, text=True, timeout=30, check=True).stdout
    return [line.rstrip() for line in out.splitlines()]


def test_make_test_installs_system_packages_then_runs_the_suite() -> None:
    lines = make_dry_run("test")
    install = lines.index("bash .ci/system-packages.sh")
    suite = next(i for i, line in enumerate(lines) if line.endswith("-m pytest -q"))
    assert install < suite
    assert "bash .ci/system-packages.sh" not in make_dry_run("test", "SYSTEM_PACKAGES=0")
    # CI runs the README's command, and leaves the installing to it.
    ci = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert ci[-1] == "make test" and not any("apt-get" in line for line in ci)


def test_make_serve_takes_a_port() -> None:
    assert make_dry_run("serve")[-1] == "/nonexistent-venv/bin/ddpm serve"
    assert make_dry_run("serve", "PORT=8123")[-1] == "/nonexistent-venv/bin/ddpm serve --port 8123"


def test_a_test_run_ends_naming_the_skipped_suites_and_how_to_enable_them(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    (tmp_path / "test_page.py").write_text(textwrap.dedent("""
        import pytest
        pytestmark = pytest.mark.skipif(True, reason="no browser: missing chromium (apt-get install chromium), "
                                                     "chromedriver (apt-get install chromium-driver)")
        def test_one(): pass
        def test_two(): pass
    """))
    (tmp_path / "test_proxy.py").write_text(textwrap.dedent("""
        import pytest
        def test_nginx():
            pytest.skip("nginx is not installed (Debian: apt-get install nginx-light; .ci/run does it)")
        def test_runs(): pass
        @pytest.mark.xfail(reason="known")
        def test_expected(): assert False
    """))
    (tmp_path / "test_gpu.py").write_text(textwrap.dedent("""
        import pytest
        @pytest.mark.skipif(True, reason="needs CUDA")
        def test_cuda(): pass
        def test_cpu(): pass
    """))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "tests.skipsummary", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), "-c", str(tmp_path / "pytest.ini"), str(tmp_path)],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0, result.stdout
    assert lines[-1].startswith("2 passed, 4 skipped, 1 xfailed"), lines[-3:]
    assert lines[-2] == (
        "skipped suites: test_gpu.py (1): run on a machine with a CUDA GPU; test_page.py (2), test_proxy.py (1):"
        " apt-get install chromium chromium-driver nginx-light (with sudo unless root; make test tries it)")


def skip_reasons() -> list[tuple[str, str]]:
    """(file, reason) of every literal skip reason in tests/: pytest.skip("...") and reason="..."
    (the constant parts of an f-string, with its holes as "...")."""
    found = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            text: ast.expr | None = None
            if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "skip" and node.args:
                text = node.args[0]
            elif isinstance(node, ast.keyword) and node.arg == "reason":
                text = node.value
            if isinstance(text, ast.Constant) and isinstance(text.value, str):
                found.append((path.name, text.value))
            elif isinstance(text, ast.JoinedStr):
                found.append((path.name, "".join(v.value if isinstance(v, ast.Constant) else "..."
                                                 for v in text.values)))
    return found


def test_every_skip_reason_in_the_suite_names_its_remedy() -> None:
    """So that the closing line can say how to enable each skipped suite: a reason names the
    Debian package (apt-get install PKG) or pip requirement (pip install PKG), or needs a GPU."""
    from .skipsummary import remedy

    reasons = skip_reasons()
    assert any(name == "test_browser.py" for name, _ in reasons)  # the scan finds them
    vague = [(name, reason) for name, reason in reasons if remedy(reason)[0] == "other"
             and not reason.startswith("not a git checkout")]
    assert vague == [], "write '(apt-get install PKG)' or '(pip install PKG)' into these skip reasons"
    browser = {remedy(r) for n, r in reasons if n == "test_browser.py"}
    assert browser == {("apt", ("chromium", "chromium-driver"))}, browser


def test_git_ignores_what_make_sample_and_the_readme_examples_write() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    for path in ("samples/0000_seed1.png", "samples/grid.png", "seven.png", "five-1.png"):
        check = subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", path], timeout=30)
        assert check.returncode == 0, f"{path} is not ignored"
    for path in ("README.md", "docs/images/page.png"):
        assert subprocess.run(["git", "-C", str(ROOT), "check-ignore", "-q", path], timeout=30).returncode == 1
