#!/usr/bin/env bash
# The README's worked example, end to end:
#
#   backend   echo_backend --port 5006 --name backend     (the "direct" upstream)
#   via-nginx echo_backend --port 5007 --name via-nginx   (behind nginx)
#   nginx     examples/nginx.conf on 127.0.0.1:8081 -> 5007
#   shunt     127.0.0.1:8080, /frontend-audio = direct,nginx; admin 127.0.0.1:9901
#
# 1. a call goes direct (x-shunt-route: direct, backend "backend");
# 2. the direct backend is killed: the next call falls back through nginx
#    (x-shunt-route: nginx, backend "via-nginx");
# 3. the backend is restarted: once its health probe passes, calls go direct again.
#
# Usage: examples/demo.sh            (builds in release mode first; needs nginx)
# Environment:
#   DIRECT_PORT=5006 NGINX_BACKEND_PORT=5007 NGINX_PORT=8081 SHUNT_PORT=8080 ADMIN_PORT=9901
#   CALL_SECONDS=2   how long each audio_client run streams
#   BIN_DIR=DIR      use prebuilt binaries (DIR/shunt, DIR/examples/{echo_backend,audio_client})
#                    instead of running `cargo build --release`
#   NGINX=PATH       the nginx binary (default: nginx on PATH, else /usr/sbin/nginx)
#
# Every process it starts is stopped by PID on exit (also on failure or
# Ctrl-C). Exits non-zero, naming the step, when a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."

DIRECT_PORT=${DIRECT_PORT:-5006}
NGINX_BACKEND_PORT=${NGINX_BACKEND_PORT:-5007}
NGINX_PORT=${NGINX_PORT:-8081}
SHUNT_PORT=${SHUNT_PORT:-8080}
ADMIN_PORT=${ADMIN_PORT:-9901}
CALL_SECONDS=${CALL_SECONDS:-2}
NGINX=${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}

SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/shunt-demo.XXXXXX")
PIDS=()
BACKEND_PID=

step() { printf '\n==> %s\n' "$*"; }
fail() {
  printf '\ndemo: FAILED: %s\n' "$*" >&2
  for log in "$SCRATCH"/*.log; do
    [ -s "$log" ] || continue
    printf -- '--- %s (last lines)\n' "${log##*/}" >&2
    tail -n 15 "$log" >&2
  done
  exit 1
}
cleanup() {
  local pid
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$SCRATCH"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Whether something accepts connections on 127.0.0.1:$1.
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Wait (at most ~15 s) until 127.0.0.1:$1 accepts; $2 names what for the
# error; gives up at once if the process that should listen ($LAST_PID) exited.
wait_port() {
  local i
  for i in $(seq 150); do
    listening "$1" && return 0
    kill -0 "$LAST_PID" 2>/dev/null || fail "$2 exited before listening on 127.0.0.1:$1"
    sleep 0.1
  done
  fail "$2 did not listen on 127.0.0.1:$1 within 15 s"
}

# GET $2 from 127.0.0.1:$1 (plain HTTP/1.0, no curl needed); prints the response
# (the admin API's JSON is pretty-printed: callers strip blanks before grep).
http_get() {
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$2" >&3
  timeout 5 cat <&3
  exec 3<&-
}

# Start a background process with its output in $SCRATCH/$1.log; sets LAST_PID.
start() {
  local name=$1
  shift
  "$@" >"$SCRATCH/$name.log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

# Run audio_client once; succeeds iff it exits 0 and every call went via upstream $1.
call() {
  local want=$1 out
  out="$SCRATCH/call-$want-$RANDOM.out"
  if ! "$AUDIO_CLIENT" --url "ws://127.0.0.1:$SHUNT_PORT/frontend-audio" \
      --connections 2 --seconds "$CALL_SECONDS" >"$out" 2>&1; then
    cat "$out"
    fail "audio_client (expected upstream $want) exited non-zero"
  fi
  cat "$out"
  grep -q "upstream: $want " "$out" || fail "calls did not go via $want"
}

for port in "$DIRECT_PORT" "$NGINX_BACKEND_PORT" "$NGINX_PORT" "$SHUNT_PORT" "$ADMIN_PORT"; do
  if listening "$port"; then
    fail "port $port is already in use; pick others (DIRECT_PORT, NGINX_BACKEND_PORT, NGINX_PORT, SHUNT_PORT, ADMIN_PORT)"
  fi
done
[ -x "$NGINX" ] || fail "nginx not found (apt-get install nginx-light, or set NGINX=PATH)"

if [ -z "${BIN_DIR:-}" ]; then
  step "cargo build --release (shunt, echo_backend, audio_client)"
  # The examples build with the dev-dependencies' features (tokio's test-util,
  # fastwebsockets' unstable-split), so after a plain `cargo run --release`
  # cargo compiles about 30 crates a second time, once. BIN_DIR skips this.
  echo "(after \`cargo run --release\`, cargo rebuilds about 30 crates once: the examples enable dev-dependency features; set BIN_DIR to reuse binaries)"
  cargo build --release --bin shunt --example echo_backend --example audio_client \
    || fail "cargo build"
  BIN_DIR=target/release
fi
SHUNT=$BIN_DIR/shunt
ECHO_BACKEND=$BIN_DIR/examples/echo_backend
AUDIO_CLIENT=$BIN_DIR/examples/audio_client
for bin in "$SHUNT" "$ECHO_BACKEND" "$AUDIO_CLIENT"; do
  [ -x "$bin" ] || fail "$bin is missing"
done

step "backend on 127.0.0.1:$DIRECT_PORT (the direct upstream)"
start backend "$ECHO_BACKEND" --port "$DIRECT_PORT" --name backend
BACKEND_PID=$LAST_PID
wait_port "$DIRECT_PORT" "the backend"

step "second backend on 127.0.0.1:$NGINX_BACKEND_PORT (behind nginx)"
start via-nginx "$ECHO_BACKEND" --port "$NGINX_BACKEND_PORT" --name via-nginx
wait_port "$NGINX_BACKEND_PORT" "the second backend"

step "nginx on 127.0.0.1:$NGINX_PORT (examples/nginx.conf)"
sed -e "s/127\.0\.0\.1:8081/127.0.0.1:$NGINX_PORT/" \
    -e "s/127\.0\.0\.1:5007/127.0.0.1:$NGINX_BACKEND_PORT/" \
    examples/nginx.conf >"$SCRATCH/nginx.conf"
start nginx "$NGINX" -p "$SCRATCH" -e "$SCRATCH/nginx-error.log" -c "$SCRATCH/nginx.conf"
wait_port "$NGINX_PORT" "nginx"

step "shunt on 127.0.0.1:$SHUNT_PORT: /frontend-audio = direct, then nginx"
start shunt "$SHUNT" --listen "127.0.0.1:$SHUNT_PORT" --admin "127.0.0.1:$ADMIN_PORT" \
  --direct "http://127.0.0.1:$DIRECT_PORT" --nginx "http://127.0.0.1:$NGINX_PORT" \
  --health-check ws:/frontend-audio --health-interval 1s
wait_port "$SHUNT_PORT" "shunt"
for i in $(seq 100); do
  "$SHUNT" healthcheck --admin "127.0.0.1:$ADMIN_PORT" >/dev/null 2>&1 && break
  [ "$i" = 100 ] && fail "shunt's /readyz did not turn 200 within 10 s"
  sleep 0.1
done

step "1. calls go direct"
call direct

step "2. kill the direct backend (PID $BACKEND_PID): calls fall back through nginx"
kill "$BACKEND_PID"
wait "$BACKEND_PID" 2>/dev/null || true
call nginx

step "3. restart the backend: calls return to direct once its probe passes"
start backend "$ECHO_BACKEND" --port "$DIRECT_PORT" --name backend
wait_port "$DIRECT_PORT" "the restarted backend"
for i in $(seq 100); do
  http_get "$ADMIN_PORT" /status 2>/dev/null | tr -d ' \n' \
    | grep -q '"path":"/frontend-audio","selected":"direct"' && break
  [ "$i" = 100 ] && fail "shunt did not select direct again within 10 s"
  sleep 0.1
done
call direct

step "/status: the route's upstream now"
http_get "$ADMIN_PORT" /status | tr -d ' \n' | grep -o '"path":"/frontend-audio","selected":"[a-z]*"'

printf '\ndemo: OK (direct -> nginx fallback -> direct)\n'
