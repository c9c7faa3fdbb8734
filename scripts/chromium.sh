#!/usr/bin/env bash
# The playground's browser test (tests/test_playground.py) drives a headless Chromium; it skips, saying why, where
# there is none. `make test` runs this first: as root with apt-get (CI, a fresh container) it installs Debian's
# chromium; anywhere else it only says how. It never fails the test run.
set -uo pipefail
for name in chromium chromium-browser google-chrome google-chrome-stable; do
  command -v "$name" >/dev/null 2>&1 && exit 0
done
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing Chromium for the playground's browser test (apt-get, log: /tmp/p2p-chromium-install.log) ..."
  if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
      >/tmp/p2p-chromium-install.log 2>&1; then
    exit 0
  fi
  echo "warning: apt-get could not install chromium (see the log); the browser test will be skipped" >&2
else
  echo "note: no Chromium here; the playground's browser test will be skipped (apt-get install chromium)" >&2
fi
exit 0
