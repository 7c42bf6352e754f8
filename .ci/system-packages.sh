#!/usr/bin/env bash
# Installs the Debian packages that some test suites drive, where this machine allows it:
#   nginx-light, prometheus           tests/test_deploy.py (nginx and Prometheus in front of replicas)
#   chromium, chromium-driver         tests/test_browser.py (the page and /docs in a real browser)
#   redis-server                      the job queue's tests
#   curl                              tests/test_readme.py (the README's shell examples)
# Run by `make test` (and so by .ci/run). Only what is missing is installed; as root directly,
# otherwise through `sudo -n` (never a password prompt). Nothing here fails the caller: without
# apt-get, sudo or a network the suites that need these programs skip, and the test run's last
# lines name them and this command.
set -uo pipefail

# Debian puts nginx in /usr/sbin, which is not on every user's PATH. TOOLS_PATH: for the tests.
tools_path="${TOOLS_PATH:-$PATH:/usr/sbin:/sbin}"
have() { PATH="$tools_path" command -v "$1" >/dev/null; }

missing=()
have nginx || missing+=(nginx-light)
{ have prometheus && have promtool; } || missing+=(prometheus)
{ have chromium && have chromedriver; } || missing+=(chromium chromium-driver)
have redis-server || missing+=(redis-server)
have curl || missing+=(curl)
[ ${#missing[@]} -eq 0 ] && exit 0

skip() { echo "system packages: $1; not installing ${missing[*]} (the tests that need them will skip)" >&2; exit 0; }
command -v apt-get >/dev/null || skip "no apt-get here"
if [ "$(id -u)" = 0 ]; then
    as_root=()
elif command -v sudo >/dev/null; then
    as_root=(sudo -n)
else
    skip "not root and no sudo"
fi

echo "system packages: installing ${missing[*]}" >&2
apt=("${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=120 -qq)
if ! { "${apt[@]}" update && "${apt[@]}" install -y --no-install-recommends "${missing[@]}" >/dev/null; }; then
    skip "apt-get failed"
fi
exit 0
