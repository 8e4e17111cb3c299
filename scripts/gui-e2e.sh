#!/usr/bin/env bash
# End-to-end tests of the web GUI against the real stack, in headless Debian Chromium.
#
# Builds the GUI (the api serves gui/dist), starts `onnx-web run` on a free port with a throwaway
# data directory, waits until GET /api/settings/params answers and runs the playwright suite.
# Then it starts the same stack again in keys mode (ONNX_WEB_AUTH=keys), makes two keys of two
# owners with `onnx-web keys create`, and runs the keys-mode specs with them. It stops the stack
# and exits with the first failing status. Screenshots land in gui/test-results/.
#   E2E_DATA_DIR=dir   reuse a data directory (keeps the demo models between runs)
#   E2E_KEEP_LOG=1     keep the stack's log after a passing run
#   E2E_KEYS=0|1       skip or force the keys-mode run (default: run it unless arguments are given)
#   extra arguments    go to `playwright test` (e.g. e2e/txt2img.spec.ts, -g cancel)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
STARTUP_TIMEOUT_S="${STARTUP_TIMEOUT_S:-300}"

if [[ ! -x $CHROMIUM ]]; then
  echo "gui-e2e: no Chromium at $CHROMIUM (apt-get install -y chromium, or set CHROMIUM)" >&2
  exit 2
fi

"$root/scripts/gui-build.sh"

port="$("$root/.venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
data="${E2E_DATA_DIR:-$(mktemp -d -t onnx-web-e2e.XXXXXX)}"
log="$data/stack.log"
mkdir -p "$data"

stack=""

# SIGINT is the launcher's Ctrl-C: it stops the worker and api, then S3 and Postgres (which run in
# sessions of their own, out of reach of a group kill). The group kill is only the last resort.
stop() {
  if kill -0 "$stack" 2>/dev/null; then
    kill -INT "$stack" 2>/dev/null || true
    for _ in $(seq 1 180); do
      kill -0 "$stack" 2>/dev/null || break
      sleep 0.5
    done
    if kill -0 "$stack" 2>/dev/null; then
      echo "gui-e2e: the stack ignored SIGINT for 90 s; killing its process group" >&2
      kill -KILL -- "-$stack" 2>/dev/null || true
    fi
  fi
  reap_leftovers
}

# Postgres and S3 run in sessions of their own; if the launcher failed to stop them, stop the ones
# serving this run's data directory (found by their pid file and command line, never by name alone).
reap_leftovers() {
  local pids=() pid
  if [[ -f $data/postgres/postmaster.pid ]]; then
    pids+=("$(head -n 1 "$data/postgres/postmaster.pid")")
  fi
  for pid in $(pgrep -f -- "-dir=$data/s3" || true); do
    pids+=("$pid")
  done
  for pid in "${pids[@]}"; do
    if kill -0 "$pid" 2>/dev/null; then
      echo "gui-e2e: stopping leftover process $pid of this run ($(tr '\0' ' ' </proc/"$pid"/cmdline | cut -c1-80))" >&2
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 40); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.5
    done
    kill -KILL "$pid" 2>/dev/null || true
  done
}
trap stop EXIT

url="http://127.0.0.1:$port"
# The admin routes' token, known to the stack and to the specs (e2e/models.spec.ts).
export ONNX_WEB_ADMIN_TOKEN="${ONNX_WEB_ADMIN_TOKEN:-e2e-admin-$port}"
answers() {
  "$root/.venv/bin/python" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null
}

# Start the stack with extra environment ("NAME=value" arguments) and wait until it answers.
start_stack() {
  echo "gui-e2e: starting the stack at $url ${*:-} (log: $log)"
  # Job control on: the stack gets its own process group, and does not inherit the SIGINT-ignore
  # that a script's background jobs otherwise get, so Ctrl-C (SIGINT) can stop it properly.
  set -m
  env "$@" "$root/.venv/bin/onnx-web" run --port "$port" --data-dir "$data" >>"$log" 2>&1 &
  stack=$!
  set +m
  local started=$SECONDS deadline=$((SECONDS + STARTUP_TIMEOUT_S))
  until answers "$url/api/settings/params"; do
    if ! kill -0 "$stack" 2>/dev/null; then
      echo "gui-e2e: the stack exited before answering; its log:" >&2
      tail -n 50 "$log" >&2
      exit 1
    fi
    if ((SECONDS > deadline)); then
      echo "gui-e2e: no answer from $url within ${STARTUP_TIMEOUT_S}s; its log:" >&2
      tail -n 50 "$log" >&2
      exit 1
    fi
    sleep 1
  done
  echo "gui-e2e: stack up after $((SECONDS - started))s"
}

# A new key for OWNER: `keys create` prints it alone on its last line.
new_key() {
  "$root/.venv/bin/onnx-web" keys --data-dir "$data" create "$1" | tail -n 1
}

start_stack
status=0
(cd "$root/gui" && E2E_BASE_URL="$url/" npx playwright test "$@") || status=$?

keys_run=${E2E_KEYS:-$(($# == 0))}
if ((status == 0 && keys_run == 1)); then
  stop
  start_stack ONNX_WEB_AUTH=keys
  key="$(new_key e2e-user)"
  other="$(new_key e2e-other)"
  (cd "$root/gui" && E2E_BASE_URL="$url/" E2E_API_KEY="$key" E2E_OTHER_KEY="$other" \
    npx playwright test e2e/keys.spec.ts e2e/docs.spec.ts) || status=$?
fi

if ((status != 0)); then
  echo "gui-e2e: suite failed; last lines of the stack log ($log):" >&2
  tail -n 40 "$log" >&2
elif [[ -z ${E2E_DATA_DIR:-} && -z ${E2E_KEEP_LOG:-} ]]; then
  stop
  rm -rf "$data"
fi
exit "$status"
