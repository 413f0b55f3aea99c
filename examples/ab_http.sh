#!/usr/bin/env bash
# Plain HTTP through two (or more) shunt binaries, A, B, C, ..., alternating
# in one session: requests/s, and shunt's CPU time and context switches per
# request (from /proc), which stay readable on a busy machine where
# requests/s do not.
#
#   examples/ab_http.sh OLD/shunt target/release/shunt [ROUNDS=3] [SECS=5]
#   ENV_A=RUST_LOG=info ENV_B=RUST_LOG=warn examples/ab_http.sh BIN BIN   # the log's cost
#   ENV_B=RUST_LOG=warn ENV_D=RUST_LOG=warn examples/ab_http.sh OLD OLD NEW NEW   # both builds' log cost
#
# The arguments are the binaries, one per side (up to 8), then ROUNDS and
# SECS; ENV_A, ENV_B, ... set one environment variable for that side. A side
# named `nginx` is nginx as the proxy instead (one worker, upstream
# keep-alive, no access log), for shunt's user and system CPU per request
# beside nginx's:
#   examples/ab_http.sh nginx target/release/shunt 3 4
# Starts a one-worker nginx origin (a small fixed response) on 127.0.0.1:19201
# and the shunts on 19202 (A), 19203 (B), ..., runs `wrk -t2 -c64` against
# each in turn, and stops them all by PID. Needs nginx and wrk.
set -u
BINS=(); while [ $# -gt 0 ] && ! [[ $1 =~ ^[0-9]+$ ]]; do BINS+=("$1"); shift; done
ROUNDS=${1:-3}; SECS=${2:-5}
[ ${#BINS[@]} -ge 2 ] && [ ${#BINS[@]} -le 8 ] || { echo "usage: $0 BIN_A BIN_B [BIN_C ...] [ROUNDS] [SECS]" >&2; exit 2; }
SIDES=(A B C D E F G H)
D=$(mktemp -d "${TMPDIR:-/tmp}/shunt-ab.XXXXXX"); mkdir -p $D/logs
cat > $D/origin.conf <<C
daemon off; worker_processes 1; pid $D/origin.pid; error_log $D/logs/error.log warn;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $D/b; proxy_temp_path $D/p; fastcgi_temp_path $D/f; uwsgi_temp_path $D/u; scgi_temp_path $D/s;
  server { listen 127.0.0.1:19201; location / { return 200 "hello from the origin\n"; } } }
C
"${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}" -p $D -c $D/origin.conf & OP=$!
PIDS=()
for i in "${!BINS[@]}"; do
  s=${SIDES[$i]}; envvar=ENV_$s
  if [ "${BINS[$i]}" = nginx ]; then
    cat > $D/$s.conf <<C
daemon off; master_process off; worker_processes 1; pid $D/$s.pid; error_log $D/logs/$s.log warn;
events { worker_connections 4096; }
http { access_log off; client_body_temp_path $D/b$s; proxy_temp_path $D/p$s; fastcgi_temp_path $D/f$s; uwsgi_temp_path $D/u$s; scgi_temp_path $D/s$s;
  upstream origin { server 127.0.0.1:19201; keepalive 64; }
  server { listen 127.0.0.1:$((19202 + i)); location / { proxy_pass http://origin; proxy_http_version 1.1;
    proxy_set_header Connection ""; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; } } }
C
    "${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}" -p $D -c $D/$s.conf & PIDS+=($!)
    continue
  fi
  env ${!envvar:-X=1} "${BINS[$i]}" --listen 127.0.0.1:$((19202 + i)) --admin off --direct http://127.0.0.1:19201 2>$D/$s.log & PIDS+=($!)
done
sleep 1.5
TCK=$(getconf CLK_TCK)
cpu() { awk '{print $14, $15}' /proc/$1/stat; }  # user, system ticks
cs() { cat /proc/$1/task/*/status | awk '/ctxt_switches/{s+=$2} END{print s}'; }
for r in $(seq $ROUNDS); do
  for i in "${!BINS[@]}"; do
    side=${SIDES[$i]}; pid=${PIDS[$i]}; port=$((19202 + i))
    read u0 k0 < <(cpu $pid); s0=$(cs $pid)
    out=$(timeout 60 wrk -t2 -c64 -d${SECS}s http://127.0.0.1:$port/)
    read u1 k1 < <(cpu $pid); s1=$(cs $pid)
    reqs=$(echo "$out" | awk '/requests in/{print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/{print $2}')
    awk -v s=$side -v r=$r -v n=$reqs -v rps=$rps -v u=$((u1-u0)) -v k=$((k1-k0)) -v x=$((s1-s0)) -v t=$TCK \
      'BEGIN{printf "round %d %s req/s %8.0f  cpu/req %6.2f us (user %5.2f, system %5.2f)  ctxsw/req %5.3f\n", r, s, rps, (u+k)/t*1e6/n, u/t*1e6/n, k/t*1e6/n, x/n}'
  done
done
kill "${PIDS[@]}"; kill -TERM $OP; wait "${PIDS[@]}" $OP 2>/dev/null
rm -rf "$D"
