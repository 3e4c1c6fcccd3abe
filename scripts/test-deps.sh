#!/usr/bin/env bash
# System packages the test suite needs, installed only when missing (idempotent): `apt-get update`
# runs only when something must be installed. Each entry is "command-or-path package".
#
#   /usr/bin/chromium  chromium    the console and offline-docs tests drive Debian's Chromium
#   promtool           prometheus  `promtool check rules|metrics` on deploy/prometheus and /metrics
#   /usr/sbin/logrotate logrotate  deploy/logrotate's rules run on a live log directory
#   /usr/lib/postgresql/*/bin/initdb postgresql  the store tiers run again on a real PostgreSQL
#                                                 (tests/pg_server.py starts its own server)
#
# Run as root (CI and the development machines are); elsewhere it says what to install.
set -euo pipefail

REQUIREMENTS=(
  "/usr/bin/chromium chromium"
  "promtool prometheus"
  "/usr/sbin/logrotate logrotate"
  "/usr/lib/postgresql/*/bin/initdb postgresql"
)

missing=()
for requirement in "${REQUIREMENTS[@]}"; do
  read -r probe package <<<"$requirement"
  if [[ "$probe" == /* ]]; then
    # A path may be a glob (any installed version); unquoted, so that it expands.
    for candidate in $probe; do
      [[ -x "$candidate" ]] && continue 2
    done
  else
    command -v "$probe" >/dev/null 2>&1 && continue
  fi
  missing+=("$package")
done

if [[ ${#missing[@]} -eq 0 ]]; then
  exit 0
fi

if [[ "$(id -u)" -ne 0 ]]; then
  echo "test-deps: missing ${missing[*]}; install them: sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi

echo "test-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
