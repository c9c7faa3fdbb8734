#!/usr/bin/env bash
# The profile store's PostgreSQL tests (tests/test_profile_store.py, tests/test_replicas.py) start a throwaway
# PostgreSQL server from Debian's binaries; they skip, saying why, where there are none. `make test` runs this first:
# as root with apt-get (CI, a fresh container) it installs Debian's postgresql; anywhere else it only says how. It
# never fails the test run.
set -uo pipefail
command -v initdb >/dev/null 2>&1 && exit 0
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "Installing PostgreSQL for the profile store's tests (apt-get, log: /tmp/p2p-postgres-install.log) ..."
  if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; } \
      >/tmp/p2p-postgres-install.log 2>&1; then
    exit 0
  fi
  echo "warning: apt-get could not install postgresql (see the log); the PostgreSQL tests will be skipped" >&2
else
  echo "note: no PostgreSQL here; the profile store's PostgreSQL tests will be skipped (apt-get install postgresql)" >&2
fi
exit 0
