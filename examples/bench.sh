#!/usr/bin/env bash
# shunt vs nginx vs HAProxy vs direct, one command, one run, interleaved.
#
#   examples/bench.sh                 # full sizes (about 6 minutes on 2 cores)
#   QUICK=1 examples/bench.sh         # reduced sizes (about 2 minutes)
#   ROUNDS=3 examples/bench.sh        # repeat every mode 3 times (interleaved); the table shows medians
#   BACKEND=path/to/echo_backend examples/bench.sh   # another WebSocket echo backend (takes ADDR as $1)
#   MODES="flood handshakes" examples/bench.sh        # only these modes (idle rtt100 rtt1000 flood handshakes http storm)
#   SHUNT=/tmp/shunt-old examples/bench.sh          # another shunt build against the same clients (old/new in one session)
#   STORM_CALLS=1000 examples/bench.sh # calls in the reconnect storm (QUICK: 200)
#   TLS_KEY=ec examples/bench.sh      # ECDSA P-256 certificates for the TLS rows instead of RSA 2048
#   FRAMES_OFF=0 examples/bench.sh    # skip the shunt --frames off targets (the call layer's cost baseline)
#   CLIENTS=loadgen examples/bench.sh # only shunt's own client (default "loadgen node": the independent
#                                     # Node client examples/wsbench.js cross-checks handshakes, rtt100, tls-handshakes)
#   NODE_PROCS=2 examples/bench.sh    # processes of the Node client (default: one per CPU)
#
# Starts a WebSocket echo backend, shunt, nginx (generated config:
# worker_processes auto, proxy_http_version 1.1, Upgrade/Connection headers,
# access_log off) and HAProxy (Debian's haproxy: mode http, one thread per
# CPU, no log), runs every loadgen mode against direct, nginx, HAProxy and
# shunt, reads each proxy's CPU time and RSS from /proc, and prints a
# markdown table with shunt/nginx and shunt/HAProxy ratios. The handshakes,
# rtt100 and tls-handshakes modes run a second, independent client too
# (examples/wsbench.js: Node.js and the `ws` package, no code shared with
# loadgen), and the table shows both clients' figures and ratios side by
# side. The tls-handshakes mode measures full handshakes (no session offered)
# and resumed ones (each loop offers its last session) separately, both
# proxies on TLS 1.3, and records the full/resumed counts shunt saw (/status).
# The http mode
# runs wrk (64 keep-alive connections, 2 threads) for a small response from
# an nginx origin, directly and through each proxy (shunt twice: with its
# default info access log, and with RUST_LOG=warn); the raw results go to $OUT/results.jsonl and the
# table to $OUT/table.md. TLS rows run when shunt has --tls-cert/--tls-key;
# otherwise they print "n/a (TLS not available)".
#
# The storm mode (examples/storm.rs) holds STORM_CALLS wss calls at audio
# cadence through shunt (route direct first, nginx as the fallback, each in
# front of its own echo backend), SIGKILLs the direct backend so every call
# gets Close 1014, and lets every call reconnect at once; then the same storm
# through nginx alone in front of the two backends (the second one `backup`),
# where the calls see 1006. It reports the time until 50/99/100 % of the
# calls carry audio again, failed reconnects, full and resumed TLS
# handshakes, when 50/99 % of the calls had their new 101 (a slow handshake
# or a slow first echo), and the CPU during the storm of the proxy, of the
# fallback nginx behind shunt (not counted as shunt's), and of the client.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-$(mktemp -d /tmp/shunt-bench.XXXXXX)}
mkdir -p "$OUT"
TARGET_DIR=${CARGO_TARGET_DIR:-target}
if [[ -n "${QUICK:-}" ]]; then
  IDLE_N=${IDLE_N:-2000}; HOLD=${HOLD:-2}; SECS=${SECS:-4}; RTT_BIG=${RTT_BIG:-1000}; HS_C=${HS_C:-32}
  STORM_CALLS=${STORM_CALLS:-200}
else
  STORM_CALLS=${STORM_CALLS:-1000}
  # 9,000, not 10,000: shunt holds 2 descriptors per tunnel and the hard limit here is 20,000.
  IDLE_N=${IDLE_N:-9000}; HOLD=${HOLD:-3}; SECS=${SECS:-10}; RTT_BIG=${RTT_BIG:-1000}; HS_C=${HS_C:-32}
fi
ROUNDS=${ROUNDS:-1}
P_BACKEND=${P_BACKEND:-19100}; P_NGINX=19101; P_SHUNT=19102; P_ADMIN=19103; P_NGINX_TLS=19111; P_SHUNT_TLS=19112
P_HAPROXY=19105; P_ORIGIN=19120; P_NGINX_HTTP=19121; P_HAPROXY_HTTP=19122; P_SHUNT_HTTP=19123; P_SHUNT_HTTP_WARN=19124
# The same shunt with the call layer off (--frames off): today's pure byte relay, measured in the same run.
P_SHUNT_OFF=19104; P_SHUNT_TLS_OFF=19114; FRAMES_OFF=${FRAMES_OFF:-1}
P_SHUNT_TLS_ADMIN=19113  # shunt-tls's /status: the full and resumed handshakes it counted
# The reconnect storm: backend A (direct, killed), backend B behind nginx, shunt, nginx alone.
P_STORM_A=19130; P_STORM_B=19131; P_STORM_FALLBACK=19132; P_STORM_SHUNT=19133; P_STORM_NGINX=19134

# The system tools needed; installed on a fresh Debian machine.
export PATH="$PATH:/usr/sbin:/sbin"
for tool in nginx haproxy wrk openssl python3; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      echo "# installing $tool" >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$tool" >/dev/null
    else
      echo "bench.sh needs $tool (e.g. sudo apt-get install -y $tool)" >&2; exit 1
    fi
  fi
done

# The independent WebSocket client: Node.js with the `ws` package (tests/browser's).
CLIENTS=${CLIENTS:-loadgen node}
NODE_PROCS=${NODE_PROCS:-$(nproc)}
if [[ " $CLIENTS " == *" node "* ]]; then
  if ! command -v node >/dev/null 2>&1; then
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
      echo "# installing nodejs" >&2
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    else
      echo "bench.sh needs node for CLIENTS=node (e.g. sudo apt-get install -y nodejs npm), or CLIENTS=loadgen" >&2; exit 1
    fi
  fi
  if [[ ! -d tests/browser/node_modules/ws ]]; then
    echo "# npm ci in tests/browser (the ws package)" >&2
    (cd tests/browser && npm ci --silent >/dev/null)
  fi
fi

ulimit -n "$(ulimit -Hn)"
echo "# building (release)" >&2
cargo build --release --quiet --bin shunt --example loadgen --example bench_backend --example storm
SHUNT=${SHUNT:-$TARGET_DIR/release/shunt}   # SHUNT=path: another build of shunt, same clients
LOADGEN=$TARGET_DIR/release/examples/loadgen
STORM=$TARGET_DIR/release/examples/storm
BACKEND=${BACKEND:-$TARGET_DIR/release/examples/bench_backend}
CLK_TCK=$(getconf CLK_TCK)

PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  if [[ -f "$OUT/nginx/nginx.pid" ]]; then kill "$(cat "$OUT/nginx/nginx.pid")" 2>/dev/null || true; fi
  if [[ -f "$OUT/origin/nginx.pid" ]]; then kill "$(cat "$OUT/origin/nginx.pid")" 2>/dev/null || true; fi
  if [[ -f "$OUT/storm/nginx.pid" ]]; then kill "$(cat "$OUT/storm/nginx.pid")" 2>/dev/null || true; fi
  if [[ -n ${STORM_B:-} ]]; then kill "$STORM_B" 2>/dev/null || true; fi  # a storm cut short
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

wait_port() { # port
  for _ in $(seq 1 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.05
  done
  echo "port $1 never opened" >&2; exit 1
}

# Every port must be free: with another bench.sh running, its processes would
# answer in place of ours (its backend, nginx or shunt on the same port).
for var in $(compgen -v P_); do
  if (exec 3<>"/dev/tcp/127.0.0.1/${!var}") 2>/dev/null; then
    echo "port ${!var} ($var) is in use: is another bench.sh running? Stop it first." >&2; exit 1
  fi
done

# ---- TLS material (only used when shunt can terminate TLS) ----
TLS=0
if "$SHUNT" --help | grep -q -- '--tls-cert'; then TLS=1; fi
if [[ $TLS == 1 ]]; then
  KEYOPT=(-newkey rsa:2048)
  [[ ${TLS_KEY:-rsa} == ec ]] && KEYOPT=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1)
  openssl req -x509 "${KEYOPT[@]}" -nodes -days 2 -subj /CN=bench-ca -keyout "$OUT/ca.key" -out "$OUT/ca.pem" 2>/dev/null
  openssl req "${KEYOPT[@]}" -nodes -subj /CN=127.0.0.1 -keyout "$OUT/key.pem" -out "$OUT/leaf.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$OUT/leaf.ext"
  openssl x509 -req -in "$OUT/leaf.csr" -CA "$OUT/ca.pem" -CAkey "$OUT/ca.key" -CAcreateserial -days 2 -extfile "$OUT/leaf.ext" -out "$OUT/cert.pem" 2>/dev/null
fi

# The start of a generated nginx configuration in DIR: foreground, no access
# log, pid, error log and temporary files in DIR, and an open `http {` block
# the caller fills in and closes.
nginx_prelude() { # dir worker_processes worker_connections
  cat <<EOF
daemon off;
user root;
worker_processes $2;
worker_rlimit_nofile 20000;
pid $1/nginx.pid;
error_log $1/logs/error.log warn;
events { worker_connections $3; }
http {
  access_log off;
  client_body_temp_path $1/body;
  proxy_temp_path $1/proxy;
  fastcgi_temp_path $1/fastcgi;
  uwsgi_temp_path $1/uwsgi;
  scgi_temp_path $1/scgi;
EOF
}

# ---- backend, nginx, shunt ----
"$BACKEND" "127.0.0.1:$P_BACKEND" 2>"$OUT/backend.log" & PIDS+=($!)
wait_port "$P_BACKEND"

mkdir -p "$OUT/nginx/logs"
NGINX_TLS_SERVER=""
if [[ $TLS == 1 ]]; then
  # TLS 1.3 like shunt: nginx 1.22's default ssl_protocols stop at TLSv1.2, whose
  # resumption skips the key exchange that TLS 1.3's (psk_dhe_ke) still makes.
  NGINX_TLS_SERVER="server { listen 127.0.0.1:$P_NGINX_TLS ssl; ssl_protocols TLSv1.2 TLSv1.3; ssl_certificate $OUT/cert.pem; ssl_certificate_key $OUT/key.pem; location / { include $OUT/nginx/ws.conf; } }"
fi
cat > "$OUT/nginx/ws.conf" <<EOF
proxy_pass http://backend;
proxy_http_version 1.1;
proxy_set_header Upgrade \$http_upgrade;
proxy_set_header Connection "upgrade";
proxy_set_header Host \$host;
proxy_read_timeout 3600s;
proxy_send_timeout 3600s;
EOF
cat > "$OUT/nginx/nginx.conf" <<EOF
$(nginx_prelude "$OUT/nginx" auto 19000)
  upstream backend { server 127.0.0.1:$P_BACKEND; }
  server { listen 127.0.0.1:$P_NGINX; location / { include $OUT/nginx/ws.conf; } }
  upstream origin { server 127.0.0.1:$P_ORIGIN; keepalive 64; }
  server { listen 127.0.0.1:$P_NGINX_HTTP; location / { proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection ""; } }
  $NGINX_TLS_SERVER
}
EOF
/usr/sbin/nginx -p "$OUT/nginx" -c "$OUT/nginx/nginx.conf" 2>"$OUT/nginx/stderr.log" & PIDS+=($!)
NGINX_MASTER=$!
wait_port "$P_NGINX"

# The plain-HTTP origin: its own nginx, one worker, a small fixed response.
mkdir -p "$OUT/origin/logs"
cat > "$OUT/origin/nginx.conf" <<EOF
$(nginx_prelude "$OUT/origin" 1 4096)
  keepalive_requests 1000000;
  server { listen 127.0.0.1:$P_ORIGIN; location / { return 200 "hello from the origin\n"; } }
}
EOF
/usr/sbin/nginx -p "$OUT/origin" -c "$OUT/origin/nginx.conf" 2>"$OUT/origin/stderr.log" & PIDS+=($!)
wait_port "$P_ORIGIN"

# HAProxy, configured like nginx: HTTP mode, one thread per CPU, no log.
cat > "$OUT/haproxy.cfg" <<EOF
global
  maxconn 9900
  nbthread $(nproc)
defaults
  mode http
  timeout connect 5s
  timeout client 3600s
  timeout server 3600s
  timeout tunnel 3600s
frontend ws
  bind 127.0.0.1:$P_HAPROXY
  default_backend ws
backend ws
  server backend 127.0.0.1:$P_BACKEND
frontend http
  bind 127.0.0.1:$P_HAPROXY_HTTP
  default_backend origin
backend origin
  http-reuse always
  server origin 127.0.0.1:$P_ORIGIN
EOF
haproxy -db -f "$OUT/haproxy.cfg" 2>"$OUT/haproxy.log" & PIDS+=($!)
HAPROXY_PID=$!
wait_port "$P_HAPROXY"

SHUNT_ARGS=(--listen "127.0.0.1:$P_SHUNT" --admin "127.0.0.1:$P_ADMIN" --direct "http://127.0.0.1:$P_BACKEND")
RUST_LOG=warn "$SHUNT" "${SHUNT_ARGS[@]}" 2>"$OUT/shunt.log" & PIDS+=($!)
SHUNT_PID=$!
wait_port "$P_SHUNT"
if [[ $TLS == 1 ]]; then
  RUST_LOG=warn "$SHUNT" --listen "127.0.0.1:$P_SHUNT_TLS" --admin "127.0.0.1:$P_SHUNT_TLS_ADMIN" --direct "http://127.0.0.1:$P_BACKEND" \
    --tls-cert "$OUT/cert.pem" --tls-key "$OUT/key.pem" 2>"$OUT/shunt-tls.log" & PIDS+=($!)
  SHUNT_TLS_PID=$!
  wait_port "$P_SHUNT_TLS"
fi
# The plain-HTTP pair: the default info access log (to a file), and warn only.
"$SHUNT" --listen "127.0.0.1:$P_SHUNT_HTTP" --admin off --direct "http://127.0.0.1:$P_ORIGIN" 2>"$OUT/shunt-http.log" & PIDS+=($!)
RUST_LOG=warn "$SHUNT" --listen "127.0.0.1:$P_SHUNT_HTTP_WARN" --admin off --direct "http://127.0.0.1:$P_ORIGIN" 2>"$OUT/shunt-http-warn.log" & PIDS+=($!)
wait_port "$P_SHUNT_HTTP"; wait_port "$P_SHUNT_HTTP_WARN"
if [[ $FRAMES_OFF == 1 ]]; then
  RUST_LOG=warn "$SHUNT" --listen "127.0.0.1:$P_SHUNT_OFF" --admin off --direct "http://127.0.0.1:$P_BACKEND" \
    --frames off 2>"$OUT/shunt-off.log" & PIDS+=($!)
  SHUNT_OFF_PID=$!
  wait_port "$P_SHUNT_OFF"
  if [[ $TLS == 1 ]]; then
    RUST_LOG=warn "$SHUNT" --listen "127.0.0.1:$P_SHUNT_TLS_OFF" --admin off --direct "http://127.0.0.1:$P_BACKEND" \
      --tls-cert "$OUT/cert.pem" --tls-key "$OUT/key.pem" --frames off 2>"$OUT/shunt-tls-off.log" & PIDS+=($!)
    SHUNT_TLS_OFF_PID=$!
    wait_port "$P_SHUNT_TLS_OFF"
  fi
fi

# ---- /proc readings ----
pids_of() { # name -> the processes whose CPU and memory count
  case $1 in
    nginx|nginx-tls) echo "$NGINX_MASTER $(pgrep -P "$NGINX_MASTER" | tr '\n' ' ')" ;;
    shunt) echo "$SHUNT_PID" ;;
    haproxy) echo "$HAPROXY_PID" ;;
    shunt-tls) echo "${SHUNT_TLS_PID:-}" ;;
    shunt-off) echo "${SHUNT_OFF_PID:-}" ;;
    shunt-tls-off) echo "${SHUNT_TLS_OFF_PID:-}" ;;
    *) echo "" ;;
  esac
}
cpu_us() { # pids... -> user+sys CPU µs, summed
  local total=0 pid
  for pid in "$@"; do
    # Fields 14 and 15 (utime, stime) counted after the ')' of the command name.
    local s; s=$(sed 's/.*) //' "/proc/$pid/stat")
    read -r -a f <<<"$s"
    total=$(( total + (f[11] + f[12]) * 1000000 / CLK_TCK ))
  done
  echo "$total"
}
rss_kb() { # pids... -> VmRSS KiB, summed
  local total=0 pid
  for pid in "$@"; do
    total=$(( total + $(awk '/^VmRSS/ {print $2}' "/proc/$pid/status") ))
  done
  echo "$total"
}
url_of() { # name
  case $1 in
    direct) echo "ws://127.0.0.1:$P_BACKEND/bench" ;;
    nginx) echo "ws://127.0.0.1:$P_NGINX/bench" ;;
    haproxy) echo "ws://127.0.0.1:$P_HAPROXY/bench" ;;
    shunt) echo "ws://127.0.0.1:$P_SHUNT/bench" ;;
    nginx-tls) echo "wss://127.0.0.1:$P_NGINX_TLS/bench" ;;
    shunt-tls) echo "wss://127.0.0.1:$P_SHUNT_TLS/bench" ;;
    shunt-off) echo "ws://127.0.0.1:$P_SHUNT_OFF/bench" ;;
    shunt-tls-off) echo "wss://127.0.0.1:$P_SHUNT_TLS_OFF/bench" ;;
  esac
}

RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
tls_counts() { # target -> '{"full": N, "resumed": M}' from shunt-tls's /status, or null
  if [[ $1 == shunt-tls ]]; then
    python3 -c "import json,urllib.request as u; print(json.dumps(json.load(u.urlopen('http://127.0.0.1:$P_SHUNT_TLS_ADMIN/status', timeout=2))['tls']['handshakes']))" 2>/dev/null || echo null
  else
    echo null
  fi
}
run() { # case target client-args... (CLIENT=loadgen|node; node cases get "@node")
  local case=$1 target=$2; shift 2
  local client=${CLIENT:-loadgen}
  local pids; pids=$(pids_of "$target")
  local extra=()
  [[ $target == *-tls* ]] && extra=(--ca "$OUT/ca.pem")
  local tls0; tls0=$(tls_counts "$target")
  local cpu0=0; [[ -n $pids ]] && cpu0=$(cpu_us $pids)
  # The client's own CPU (user + sys, its worker processes included) from bash's `time`.
  local TIMEFORMAT='%3U %3S' times=() line
  if [[ $client == node ]]; then
    case="$case@node"
    { time timeout 300 node examples/wsbench.js --url "$(url_of "$target")" "${extra[@]}" --label "$case" \
      --procs "$NODE_PROCS" "$@" > "$OUT/client.out" 2>>"$OUT/wsbench.log" || true; } 2> "$OUT/client.time"
  else
    { time timeout 300 "$LOADGEN" --url "$(url_of "$target")" "${extra[@]}" --label "$case" "$@" \
      > "$OUT/client.out" 2>>"$OUT/loadgen.log" || true; } 2> "$OUT/client.time"
  fi
  local cpu=0; [[ -n $pids ]] && cpu=$(( $(cpu_us $pids) - cpu0 ))
  line=$(tail -n 1 "$OUT/client.out")
  read -r -a times < "$OUT/client.time"
  local client_cpu; client_cpu=$(python3 -c "print(round((${times[0]} + ${times[1]}) * 1e6))")
  local tls1; tls1=$(tls_counts "$target")
  [[ -z $line ]] && line="{\"error\": \"$client gave no result (see $OUT/*.log)\"}"
  echo "$line" | python3 -c "
import json,sys
d=json.loads(sys.stdin.read())
d.update(case='$case', target='$target', client='$client', round=$ROUND, proxy_cpu_us=$cpu if '$pids' else None, client_cpu_us=$client_cpu)
a, b = json.loads('$tls0'), json.loads('$tls1')
if a and b: d.update(server_full=b['full'] - a['full'], server_resumed=b['resumed'] - a['resumed'])
print(json.dumps(d))" >> "$RESULTS"
  echo "  $case $target: $(tail -n 1 "$RESULTS")" >&2
}
with_clients() { # run-args...: run with each client of CLIENTS
  local c
  for c in $CLIENTS; do CLIENT=$c run "$@"; done
}
# RSS per idle tunnel is a slope: a first loadgen opens and holds half the
# connections, RSS is read (A), a second loadgen opens the other half, RSS
# is read again (B), and the figure is (B - A) / (second half). Start-up
# memory the allocator frees and returns to the OS later (shunt's /proc scan,
# the config) then falls in the first half, not in the figure: a plain
# "before and after" difference came out negative on some runs.
wait_ready() { # log: wait until a loadgen says "ready" (up to 120 s)
  for _ in $(seq 1 1200); do
    grep -q '"ready"' "$1" && return 0
    sleep 0.1
  done
  return 1
}
run_idle() { # case target
  local case=$1 target=$2
  local pids; pids=$(pids_of "$target")
  local extra=()
  [[ $target == *-tls* ]] && extra=(--ca "$OUT/ca.pem")
  local half=$((IDLE_N / 2))
  local first_log="$OUT/idle-$target.first.out" log="$OUT/idle-$target.out"
  timeout 300 "$LOADGEN" --url "$(url_of "$target")" "${extra[@]}" --label "$case" --mode idle \
    --conns "$half" --hold 240 > "$first_log" 2>>"$OUT/loadgen.log" &
  local first=$!
  local before=0 after=0
  if wait_ready "$first_log"; then
    sleep 1 # let the last tunnels settle
    [[ -n $pids ]] && before=$(rss_kb $pids)
  fi
  timeout 300 "$LOADGEN" --url "$(url_of "$target")" "${extra[@]}" --label "$case" --mode idle \
    --conns "$half" --hold "$HOLD" > "$log" 2>>"$OUT/loadgen.log" &
  local lg=$!
  after=$before
  if wait_ready "$log"; then
    sleep 1
    [[ -n $pids ]] && after=$(rss_kb $pids)
  fi
  wait "$lg" || true
  kill "$first" 2>/dev/null || true; wait "$first" 2>/dev/null || true
  tail -n 1 "$log" | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d.update(case='$case', target='$target', round=$ROUND, rss_before_kb=$before, rss_after_kb=$after); print(json.dumps(d))" >> "$RESULTS"
  echo "  $case $target: $(tail -n 1 "$RESULTS")" >&2
  sleep 1 # let the proxies close the held tunnels
}

http_port() { # name -> the port of the plain-HTTP path through it
  case $1 in
    direct) echo "$P_ORIGIN" ;; nginx) echo "$P_NGINX_HTTP" ;; haproxy) echo "$P_HAPROXY_HTTP" ;;
    shunt) echo "$P_SHUNT_HTTP" ;; shunt-warn) echo "$P_SHUNT_HTTP_WARN" ;;
  esac
}
run_http() { # target: wrk, 64 keep-alive connections, small response
  local target=$1 log="$OUT/wrk-$1-$ROUND.out"
  timeout 120 wrk -t2 -c64 -d"${SECS}s" --latency "http://127.0.0.1:$(http_port "$target")/" > "$log" 2>&1 || true
  python3 - "$target" "$ROUND" "$log" >> "$RESULTS" <<'PY'
import json, re, sys
out = open(sys.argv[3]).read()
def us(v):
    n, u = float(re.match(r"[0-9.]+", v).group()), re.sub(r"[0-9.]+", "", v)
    return n * {"us": 1, "ms": 1e3, "s": 1e6}[u]
rps = re.search(r"Requests/sec:\s+([0-9.]+)", out)
p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
errs = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
print(json.dumps(dict(case="http", target=sys.argv[1], round=int(sys.argv[2]),
    per_s=float(rps.group(1)) if rps else None, p99_us=us(p99.group(1)) if p99 else None,
    failures=int(errs.group(1)) if errs else 0)))
PY
  echo "  http $target: $(tail -n 1 "$RESULTS")" >&2
}

# ---- the reconnect storm ----
STORM_SCHEME=ws; STORM_TLS_ARGS=(); STORM_CA=(); STORM_SSL=""
if [[ $TLS == 1 ]]; then
  STORM_SCHEME=wss; STORM_TLS_ARGS=(--tls-cert "$OUT/cert.pem" --tls-key "$OUT/key.pem"); STORM_CA=(--ca "$OUT/ca.pem")
  STORM_SSL="ssl; ssl_certificate $OUT/cert.pem; ssl_certificate_key $OUT/key.pem; ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:storm:10m"
fi
# Fresh for every storm: an nginx that saw A refuse in an earlier storm would
# still hold it failed (fail_timeout) and set the next storm's calls up on B.
storm_setup() { # backend B and the storm's nginx: shunt's fallback (plain, to B) and nginx alone (A, then B as backup)
  "$BACKEND" "127.0.0.1:$P_STORM_B" 2>>"$OUT/storm-b.log" &
  STORM_B=$!
  mkdir -p "$OUT/storm/logs"
  cat > "$OUT/storm/nginx.conf" <<EOF
$(nginx_prelude "$OUT/storm" auto 19000)
  map \$http_upgrade \$connection_upgrade { default upgrade; '' close; }
  upstream fallback { server 127.0.0.1:$P_STORM_B; }
  upstream alone { server 127.0.0.1:$P_STORM_A; server 127.0.0.1:$P_STORM_B backup; }
  server { listen 127.0.0.1:$P_STORM_FALLBACK; location / { proxy_pass http://fallback; proxy_http_version 1.1;
    proxy_set_header Upgrade \$http_upgrade; proxy_set_header Connection \$connection_upgrade; proxy_read_timeout 3600s; } }
  server { listen 127.0.0.1:$P_STORM_NGINX $STORM_SSL; location / { proxy_pass http://alone; proxy_http_version 1.1;
    proxy_set_header Upgrade \$http_upgrade; proxy_set_header Connection \$connection_upgrade; proxy_read_timeout 3600s; } }
}
EOF
  /usr/sbin/nginx -p "$OUT/storm" -c "$OUT/storm/nginx.conf" 2>>"$OUT/storm/stderr.log" &
  STORM_NGINX_MASTER=$!
  wait_port "$P_STORM_B"; wait_port "$P_STORM_FALLBACK"; wait_port "$P_STORM_NGINX"
}
run_storm() { # target: shunt-storm or nginx-storm
  local target=$1 url pids shunt_pid="" fallback=()
  storm_setup
  "$BACKEND" "127.0.0.1:$P_STORM_A" 2>>"$OUT/storm-a.log" &
  local a_pid=$!
  wait_port "$P_STORM_A"
  if [[ $target == shunt-storm ]]; then
    RUST_LOG=warn "$SHUNT" --listen "127.0.0.1:$P_STORM_SHUNT" --admin off --direct "http://127.0.0.1:$P_STORM_A" \
      --nginx "http://127.0.0.1:$P_STORM_FALLBACK" --route /bench=direct,nginx "${STORM_TLS_ARGS[@]}" 2>>"$OUT/shunt-storm.log" &
    shunt_pid=$!
    wait_port "$P_STORM_SHUNT"
    url="$STORM_SCHEME://127.0.0.1:$P_STORM_SHUNT/bench"; pids=$shunt_pid
    fallback=(--fallback-pid "$(pgrep -P "$STORM_NGINX_MASTER" | paste -sd, -)")
  else
    url="$STORM_SCHEME://127.0.0.1:$P_STORM_NGINX/bench"
    pids="$STORM_NGINX_MASTER,$(pgrep -P "$STORM_NGINX_MASTER" | paste -sd, -)"
  fi
  local line
  line=$(timeout 300 "$STORM" --url "$url" "${STORM_CA[@]}" --calls "$STORM_CALLS" --kill "$a_pid" \
    --proxy-pid "$pids" "${fallback[@]}" --clk-tck "$CLK_TCK" --label "$target" 2>>"$OUT/storm.log" | tail -n 1) || true
  wait "$a_pid" 2>/dev/null || true
  if [[ -n $shunt_pid ]]; then kill "$shunt_pid" 2>/dev/null || true; wait "$shunt_pid" 2>/dev/null || true; fi
  kill "$STORM_NGINX_MASTER" "$STORM_B" 2>/dev/null || true; wait "$STORM_NGINX_MASTER" "$STORM_B" 2>/dev/null || true
  [[ -z $line ]] && line='{"error": "the storm client gave no result (see storm.log)"}'
  echo "$line" | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); d.update(case='storm', target='$target', round=$ROUND); print(json.dumps(d))" >> "$RESULTS"
  echo "  storm $target: $(tail -n 1 "$RESULTS")" >&2
}

PLAIN=(direct nginx haproxy shunt)
[[ $FRAMES_OFF == 1 ]] && PLAIN+=(shunt-off)
TLS_TARGETS=()
[[ $TLS == 1 ]] && TLS_TARGETS=(nginx-tls shunt-tls)
[[ $TLS == 1 && $FRAMES_OFF == 1 ]] && TLS_TARGETS+=(shunt-tls-off)

MODES=${MODES:-idle rtt100 rtt1000 flood handshakes tls-handshakes http storm}
want() { [[ " $MODES " == *" $1 "* ]]; }
for ROUND in $(seq 1 "$ROUNDS"); do
  echo "# round $ROUND of $ROUNDS" >&2
  echo "# idle: $IDLE_N held connections (two halves; RSS per tunnel is the second half's slope)" >&2
  want idle && for t in "${PLAIN[@]}" "${TLS_TARGETS[@]}"; do run_idle idle "$t"; done
  echo "# rtt: 100 connections, 640 B every 20 ms, ${SECS}s" >&2
  want rtt100 && for t in "${PLAIN[@]}" "${TLS_TARGETS[@]}"; do with_clients rtt100 "$t" --mode rtt --conns 100 --size 640 --interval-ms 20 --duration "$SECS"; done
  echo "# rtt: $RTT_BIG connections, 640 B every 20 ms, ${SECS}s" >&2
  want rtt1000 && for t in "${PLAIN[@]}" "${TLS_TARGETS[@]}"; do run rtt1000 "$t" --mode rtt --conns "$RTT_BIG" --size 640 --interval-ms 20 --duration "$SECS"; done
  echo "# flood: 8 connections x 16 KiB, 16 in flight, ${SECS}s" >&2
  want flood && for t in "${PLAIN[@]}" "${TLS_TARGETS[@]}"; do run flood "$t" --mode flood --conns 8 --size 16384 --inflight 16 --duration "$SECS"; done
  echo "# handshakes: $HS_C concurrent loops, ${SECS}s" >&2
  want handshakes && for t in "${PLAIN[@]}" "${TLS_TARGETS[@]}"; do with_clients handshakes "$t" --mode handshakes --conns "$HS_C" --size 640 --duration "$SECS"; done
  echo "# tls-handshakes: $HS_C concurrent wss loops, full (no session offered), then resumed (each loop offers its last session), ${SECS}s each" >&2
  want tls-handshakes && for t in "${TLS_TARGETS[@]}"; do
    CLIENT=loadgen run tls-full "$t" --mode handshakes --conns "$HS_C" --size 640 --duration "$SECS"
    CLIENT=loadgen run tls-resumed "$t" --mode handshakes --conns "$HS_C" --size 640 --duration "$SECS" --tls-resume
    if [[ " $CLIENTS " == *" node "* ]]; then
      CLIENT=node run tls-full "$t" --mode handshakes --conns "$HS_C" --size 640 --duration "$SECS"
      CLIENT=node run tls-resumed "$t" --mode handshakes --conns "$HS_C" --size 640 --duration "$SECS" --resume
    fi
  done
  echo "# http: wrk, 64 keep-alive connections, small response from an nginx origin, ${SECS}s" >&2
  want http && for t in direct nginx haproxy shunt shunt-warn; do run_http "$t"; done
  echo "# storm: $STORM_CALLS $STORM_SCHEME calls, 640 B every 20 ms; the direct backend killed, every call reconnects at once" >&2
  want storm && for t in shunt-storm nginx-storm; do run_storm "$t"; done
done

python3 - "$RESULTS" "$TLS" "$OUT/summary.json" > "$OUT/table.md" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
tls = sys.argv[2] == "1"
r = {}
for x in rows:
    r.setdefault((x["case"], x["target"]), []).append(x)
def get(case, target, f):
    """The median over rounds of metric f."""
    def safe(x):
        try: return f(x)
        except (KeyError, TypeError, ZeroDivisionError): return None  # a run that gave no result
    xs = [v for v in (safe(x) for x in r.get((case, target), [])) if v is not None]
    return statistics.median(xs) if xs else None
def round_ratios(case, f, num, den):
    """shunt/nginx within each round, in round order."""
    out = []
    for x in r.get((case, num), []):
        y = [y for y in r.get((case, den), []) if y.get("round") == x.get("round")]
        a, b = f(x), (f(y[0]) if y else None)
        if a is not None and b: out.append(a / b)
    return out
def fmt(v, unit=""):
    if v is None: return "n/a"
    if isinstance(v, float) and v < 100: return f"{v:.2f}{unit}"
    return f"{v:,.0f}{unit}"
def ratio(a, b):
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.2f}x"
# RSS growth only means something in a fresh process: later rounds reuse
# memory the allocators kept from the earlier ones, so idle uses round 1.
def idle_kib(x):
    # A slope that is not positive is unreadable, not a negative cost: the
    # allocator reused memory the first half's handshakes had freed (with
    # QUICK's 1,000-connection halves that can be all of the second half).
    if x.get("round", 1) != 1 or not x["rss_after_kb"]:
        return None
    kib = (x["rss_after_kb"] - x["rss_before_kb"]) / max(x["conns"], 1)
    if kib <= 0:
        unreadable_idle.append(x["target"])
        return None
    return kib
unreadable_idle = []
# Per message *traversal*: an echoed message crosses the proxy twice.
cpu_msg = lambda x: x["proxy_cpu_us"] / max(2 * x["messages"], 1) if x.get("proxy_cpu_us") is not None else None
cpu_hs = lambda x: x["proxy_cpu_us"] / max(x["handshakes"], 1) if x.get("proxy_cpu_us") is not None else None
metrics = [
    ("idle", "RSS per idle tunnel (KiB)", idle_kib, "lower"),
    ("rtt100", "rtt 100 conns p50 (µs)", lambda x: x["p50_us"], "lower"),
    ("rtt100", "rtt 100 conns p99 (µs)", lambda x: x["p99_us"], "lower"),
    ("rtt100", "rtt 100 conns p99.9 (µs)", lambda x: x["p999_us"], "lower"),
    ("rtt1000", "rtt 1000 conns p50 (µs)", lambda x: x["p50_us"], "lower"),
    ("rtt1000", "rtt 1000 conns p99 (µs)", lambda x: x["p99_us"], "lower"),
    ("rtt1000", "rtt 1000 conns p99.9 (µs)", lambda x: x["p999_us"], "lower"),
    ("flood", "flood throughput (MB/s)", lambda x: x["mb_per_s"], "higher"),
    ("flood", "flood messages/s", lambda x: x["msgs_per_s"], "higher"),
    ("flood", "flood proxy CPU per 16 KiB message (µs)", cpu_msg, "lower"),
    ("handshakes", "handshakes/s", lambda x: x["per_s"], "higher"),
    ("handshakes", "handshake loop p99 (µs)", lambda x: x["p99_us"], "lower"),
    ("handshakes", "proxy CPU per handshake (µs)", cpu_hs, "lower"),
    ("http", "plain HTTP requests/s (wrk, 64 conns)", lambda x: x["per_s"], "higher"),
    ("http", "plain HTTP p99 (µs)", lambda x: x["p99_us"], "lower"),
]
rounds = max((x.get("round", 1) for x in rows), default=1)
print(f"Medians of {rounds} interleaved round(s); RSS per idle tunnel from round 1 (fresh processes).")
print()
print("| metric | direct | nginx | HAProxy | shunt | shunt/nginx | shunt/HAProxy | per round (nginx; HAProxy) | shunt --frames off | frames on/off | per round |")
print("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---|")
summary = {"rounds": rounds, "plain": {}, "tls": {}}
for case, name, f, _ in metrics:
    d, n, h, s = (get(case, t, f) for t in ("direct", "nginx", "haproxy", "shunt"))
    if case == "idle" or "CPU" in name: d = None
    summary["plain"][name] = {"direct": d, "nginx": n, "haproxy": h, "shunt": s,
        "ratio": None if not n or s is None else s / n, "ratio_haproxy": None if not h or s is None else s / h}
    per = " ".join(f"{v:.2f}" for v in round_ratios(case, f, "shunt", "nginx"))
    per_h = " ".join(f"{v:.2f}" for v in round_ratios(case, f, "shunt", "haproxy"))
    o = get(case, "shunt-off", f)
    summary["plain"][name].update(frames_off=o, frames_ratio=None if not o or s is None else s / o)
    per_off = " ".join(f"{v:.2f}" for v in round_ratios(case, f, "shunt", "shunt-off"))
    print(f"| {name} | {fmt(d)} | {fmt(n)} | {fmt(h)} | {fmt(s)} | {ratio(s, n)} | {ratio(s, h)} | {per}; {per_h} | {fmt(o)} | {ratio(s, o)} | {per_off} |")
w, s = get("http", "shunt-warn", lambda x: x["per_s"]), get("http", "shunt", lambda x: x["per_s"])
if w and s:
    summary["plain"]["http info log / RUST_LOG=warn"] = s / w
    print()
    print(f"Plain HTTP requests/s with shunt's default info access log / with RUST_LOG=warn: {s:,.0f} / {w:,.0f} = {s / w:.2f}x")
if unreadable_idle:
    print()
    print(f"RSS per idle tunnel is n/a for {', '.join(sorted(set(unreadable_idle)))}: RSS did not grow over the second half"
          " (the allocator reused memory freed after the first half's handshakes); read it with more connections"
          " (MODES=idle without QUICK, 9,000).")
print()
print("| TLS metric | nginx | shunt | shunt/nginx | shunt --frames off | frames on/off |")
print("|---|---:|---:|---:|---:|---:|")
for case, name, f, _ in metrics:
    if case == "http":
        continue  # plain HTTP runs without TLS
    if not tls:
        print(f"| {name} | n/a (TLS not available) | n/a (TLS not available) | n/a | n/a | n/a |")
        continue
    n, s = get(case, "nginx-tls", f), get(case, "shunt-tls", f)
    o = get(case, "shunt-tls-off", f)
    summary["tls"][name] = {"nginx": n, "shunt": s, "ratio": None if not n or s is None else s / n,
                            "frames_off": o, "frames_ratio": None if not o or s is None else s / o}
    print(f"| {name} | {fmt(n)} | {fmt(s)} | {ratio(s, n)} | {fmt(o)} | {ratio(s, o)} |")
# The cross-check: the same figures from shunt's own client (loadgen) and the
# independent one (Node ws, examples/wsbench.js), each with its ratios, and
# the client's own CPU as a share of one core (a client near its cores'
# worth is the bottleneck, and the handshakes/s ratios shrink towards 1).
secs_of = lambda x: x.get("seconds") or (x["handshakes"] / x["per_s"] if x.get("per_s") else None)
cross = [
    ("handshakes", "handshakes/s", lambda x: x["per_s"]),
    ("handshakes", "handshake loop p99 (µs)", lambda x: x["p99_us"]),
    ("handshakes", "proxy CPU per handshake (µs)", cpu_hs),
    ("rtt100", "rtt 100 conns p50 (µs)", lambda x: x["p50_us"]),
    ("rtt100", "rtt 100 conns p99 (µs)", lambda x: x["p99_us"]),
]
clients = [c for c in ("loadgen", "node") if any(x.get("client", "loadgen") == c and x["case"].split("@")[0] in ("handshakes", "rtt100") for x in rows)]
def cc(case, c):
    return case if c == "loadgen" else case + "@node"
if len(clients) > 1:
    summary["cross_check"] = {}
    print()
    print("Cross-check with an independent client: loadgen (shunt's Rust client) and node (examples/wsbench.js, Node.js + ws).")
    print()
    print("| metric | client | direct | nginx | HAProxy | shunt | shunt/nginx | shunt/HAProxy | per round (nginx; HAProxy) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|")
    for case, name, f in cross:
        for c in clients:
            k = cc(case, c)
            d, n, h, s = (get(k, t, f) for t in ("direct", "nginx", "haproxy", "shunt"))
            if (d, n, h, s) == (None,) * 4: continue  # a mode not run
            if "CPU" in name: d = None
            per = " ".join(f"{v:.2f}" for v in round_ratios(k, f, "shunt", "nginx"))
            per_h = " ".join(f"{v:.2f}" for v in round_ratios(k, f, "shunt", "haproxy"))
            summary["cross_check"][f"{name} ({c})"] = {"direct": d, "nginx": n, "haproxy": h, "shunt": s,
                "ratio": None if not n or s is None else s / n, "ratio_haproxy": None if not h or s is None else s / h}
            print(f"| {name} | {c} | {fmt(d)} | {fmt(n)} | {fmt(h)} | {fmt(s)} | {ratio(s, n)} | {ratio(s, h)} | {per}; {per_h} |")
        for c in clients if tls else []:
            # The same over wss:// (full TLS handshakes): nginx-tls and shunt-tls.
            k = cc(case, c)
            n, s = get(k, "nginx-tls", f), get(k, "shunt-tls", f)
            if n is None and s is None: continue
            per = " ".join(f"{v:.2f}" for v in round_ratios(k, f, "shunt-tls", "nginx-tls"))
            summary["cross_check"][f"TLS {name} ({c})"] = {"nginx": n, "shunt": s, "ratio": None if not n or s is None else s / n}
            print(f"| TLS {name} | {c} | | {fmt(n)} | | {fmt(s)} | {ratio(s, n)} | | {per} |")
    print()
    print("Client CPU in the handshakes mode, % of one core (median): " + "; ".join(
        f"{c} " + ", ".join(f"{t} {fmt(get(cc('handshakes', c), t, lambda x: x['client_cpu_us'] / 1e4 / secs_of(x) if x.get('client_cpu_us') is not None and secs_of(x) else None))}"
                          for t in ("direct", "nginx", "haproxy", "shunt")) for c in clients))
tls_cases = [c for c in ("tls-full", "tls-resumed", "tls-full@node", "tls-resumed@node") if any(x["case"] == c for x in rows)]
if tls_cases:
    summary["tls_handshakes"] = {}
    print()
    print("TLS handshakes, full (no session offered) and resumed (each loop offers its last session), both proxies on TLS 1.3.")
    print("Resumed as seen: by the client (node: isSessionReused) and by shunt (/status tls.handshakes).")
    print()
    print("| TLS handshakes | client | nginx /s | shunt /s | shunt/nginx | nginx CPU/hs (µs) | shunt CPU/hs (µs) | shunt/nginx CPU | shunt --frames off /s | resumed seen by client (nginx; shunt) | shunt counted full/resumed |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for k in tls_cases:
        kind, c = (k.split("@") + ["loadgen"])[:2]
        ps = lambda x: x.get("per_s")
        n, s, o = (get(k, t, ps) for t in ("nginx-tls", "shunt-tls", "shunt-tls-off"))
        nc, sc = get(k, "nginx-tls", cpu_hs), get(k, "shunt-tls", cpu_hs)
        seen = lambda t: get(k, t, lambda x: x.get("resumed_seen") / max(x["handshakes"], 1) if x.get("resumed_seen") is not None else None)
        sf, sr = get(k, "shunt-tls", lambda x: x.get("server_full")), get(k, "shunt-tls", lambda x: x.get("server_resumed"))
        summary["tls_handshakes"][k] = {"nginx": n, "shunt": s, "ratio": None if not n or s is None else s / n,
            "nginx_cpu_us": nc, "shunt_cpu_us": sc, "frames_off": o, "shunt_server_full": sf, "shunt_server_resumed": sr}
        seen_s = "n/a" if seen("shunt-tls") is None else f"{fmt(seen('nginx-tls'))}; {fmt(seen('shunt-tls'))}"
        print(f"| {kind[4:]} | {c} | {fmt(n)} | {fmt(s)} | {ratio(s, n)} | {fmt(nc)} | {fmt(sc)} | {ratio(sc, nc)} | {fmt(o)} | {seen_s} | {fmt(sf)}/{fmt(sr)} |")
    for c in ("", "@node"):
        f_, r_ = get("tls-full" + c, "shunt-tls", lambda x: x.get("per_s")), get("tls-resumed" + c, "shunt-tls", lambda x: x.get("per_s"))
        if f_ and r_:
            print(f"shunt resumed/full handshakes/s ({'node' if c else 'loadgen'}): {r_ / f_:.2f}x")
storms = [x for x in rows if x["case"] == "storm"]
if storms:
    def sget(target, key):
        return get("storm", target, lambda x: x.get(key))
    print()
    print("| reconnect storm | nginx alone | shunt | shunt/nginx |")
    print("|---|---:|---:|---:|")
    summary["storm"] = {}
    for key, name in [("calls", "calls"), ("back", "calls back"), ("cut_first_ms", "first call cut (ms)"),
                      ("cut_all_ms", "every call cut (ms)"), ("upgraded_p50_ms", "50 % upgraded again (ms)"),
                      ("upgraded_p99_ms", "99 % upgraded again (ms)"), ("back_first_ms", "first call back (ms)"), ("back_p50_ms", "50 % back (ms)"),
                      ("back_p99_ms", "99 % back (ms)"), ("back_all_ms", "100 % back (ms)"),
                      ("failed", "failed reconnects"), ("tls_full", "full TLS handshakes"),
                      ("tls_resumed", "resumed TLS handshakes"), ("proxy_cpu_us", "proxy CPU during the storm (µs)"),
                      ("fallback_cpu_us", "fallback nginx CPU during the storm (µs)"),
                      ("client_cpu_us", "client CPU during the storm (µs)")]:
        n, s = sget("nginx-storm", key), sget("shunt-storm", key)
        summary["storm"][key] = {"nginx": n, "shunt": s}
        ratio_ok = key not in ("calls", "back", "failed", "tls_full", "tls_resumed", "fallback_cpu_us")
        print(f"| {name} | {fmt(n)} | {fmt(s)} | {ratio(s, n) if ratio_ok else ''} |")
    for x in storms:
        print(f"Storm {x['target']} round {x['round']}: closes {x.get('closes')}, failed {x.get('failed_by')}" + (f", error: {x['error']}" if x.get("error") else ""))
json.dump(summary, open(sys.argv[3], "w"), indent=1)
errs = [x for x in rows if x.get("connect_errors") or x.get("failures") or x.get("dead_after_hold")]
if errs:
    print()
    print("Errors: " + "; ".join(f"{x['case']}/{x['target']}: connect_errors={x.get('connect_errors')} failures={x.get('failures')} dead={x.get('dead_after_hold')}" for x in errs))
PY
cat "$OUT/table.md"
echo "results: $RESULTS (raw), $OUT/summary.json (medians and ratios), $OUT/table.md" >&2
