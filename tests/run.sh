#!/usr/bin/env bash
# Install everything the test suite needs, then run all of it.
#   Debian chromium (apt) for the real-browser tests, Python packages in .venv.
# Extra arguments go to pytest (for example: bash tests/run.sh -m "not browser").
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x /usr/bin/chromium ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null
fi
# nginx is optional: with it, tests/test_two_servers.py also puts the README's proxy config in front
# of the two servers; without it that step is skipped.
if ! command -v nginx >/dev/null && [ -z "${GLASSBOX_NO_NGINX:-}" ]; then
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nginx >/dev/null; } \
    || echo "nginx could not be installed; the proxy step of the two-server test will be skipped"
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -r requirements-dev.txt

exec .venv/bin/python -m pytest "$@"
