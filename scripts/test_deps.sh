#!/usr/bin/env bash
# The system programs some tests drive, from Debian: Chromium (the playground's and the dashboards' browser tests)
# and PostgreSQL (the profile store's tests and the two-replica test start a throwaway server). Each such test skips,
# saying why, where its program is missing. `make test` runs this first: as root with apt-get (CI, a fresh
# container) it installs what is missing, in one apt-get call; anywhere else it only says how. It never fails the
# test run.
set -uo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
  || command -v google-chrome >/dev/null 2>&1 || missing+=(chromium)
command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing ${missing[*]} for the tests that drive them (apt-get, log: /tmp/p2p-test-deps.log) ..."
  if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"; } \
      >/tmp/p2p-test-deps.log 2>&1; then
    exit 0
  fi
  echo "warning: apt-get could not install ${missing[*]} (see the log); their tests will be skipped" >&2
else
  echo "note: no ${missing[*]} here; the tests that drive them will be skipped (apt-get install ${missing[*]})" >&2
fi
exit 0
