#!/usr/bin/env bash
# Instructions per plain HTTP request (callgrind's Ir, every thread of
# shunt), for each binary at each RUST_LOG level: a count that the other
# processes of a busy machine do not disturb, where requests/s and CPU time
# do. Each binary runs under valgrind; one Python client sends 100
# keep-alive GETs to warm up, zeroes callgrind's counters
# (callgrind_control), sends N more and dumps them: that count divided by
# N is the per-request figure (start-up, which scans /proc and varies with
# the machine, and shutdown are not in it).
#
#   examples/ir_http.sh OLD/shunt target/release/shunt     # info and warn
#   LEVELS="info warn off" N=5000 examples/ir_http.sh BIN
#
# Starts a one-worker nginx origin on 127.0.0.1:19301 and shunt
# (`--workers 1`) on 19302 (PORT=n: n and n+1 instead); stops both by PID. Needs nginx, valgrind, python3.
set -u
[ $# -ge 1 ] || { echo "usage: $0 BIN [BIN ...]" >&2; exit 2; }
LEVELS=${LEVELS:-info warn}; N=${N:-2000}
P_ORIGIN=${PORT:-19301}; P_SHUNT=$((P_ORIGIN + 1))  # PORT=n: another pair of ports
D=$(mktemp -d "${TMPDIR:-/tmp}/shunt-ir.XXXXXX")
cat > $D/origin.conf <<C
daemon off; worker_processes 1; pid $D/origin.pid; error_log $D/error.log warn;
events { worker_connections 1024; }
http { access_log off; client_body_temp_path $D/b; proxy_temp_path $D/p; fastcgi_temp_path $D/f; uwsgi_temp_path $D/u; scgi_temp_path $D/s;
  server { listen 127.0.0.1:$P_ORIGIN; location / { return 200 "hello from the origin\n"; } } }
C
"${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}" -p $D -c $D/origin.conf & OP=$!
# Total Ir of one run of BIN at LEVEL serving N requests.
ir() {
  local out=$D/cg.$RANDOM
  RUST_LOG=$2 valgrind --tool=callgrind --callgrind-out-file=$out "$1" --listen 127.0.0.1:$P_SHUNT \
    --admin off --workers 1 --direct http://127.0.0.1:$P_ORIGIN 2>>$D/shunt.log & local sp=$!
  python3 - "$3" "$P_SHUNT" "$sp" <<'P' >&2
import http.client, subprocess, sys, time
n = int(sys.argv[1])
for _ in range(600):  # up to 60 s for valgrind to start shunt
    try:
        c = http.client.HTTPConnection("127.0.0.1", int(sys.argv[2]), timeout=30)
        c.request("GET", "/page?x=1"); c.getresponse().read(); break
    except OSError:
        time.sleep(0.1)
def get(i):
    c.request("GET", "/page?x=%d" % i); r = c.getresponse(); r.read()
    assert r.status == 200, r.status
for i in range(100):
    get(i)
subprocess.run(["callgrind_control", "--zero", sys.argv[3]], check=True, capture_output=True)
for i in range(n):
    get(i)
subprocess.run(["callgrind_control", "--dump", sys.argv[3]], check=True, capture_output=True)
P
  kill -TERM $sp; wait $sp
  # The dump taken right after the measured loop (counted from the zero before it).
  awk '/^summary:/{s+=$2} END{print s}' $out.1
  rm -f $out*
}
for bin in "$@"; do
  for level in $LEVELS; do
    a=$(ir "$bin" $level $N)
    awk -v bin="$bin" -v l=$level -v a=$a -v n=$N \
      'BEGIN{printf "%s RUST_LOG=%s: %.0f instructions per request\n", bin, l, a/n}'
  done
done
kill -TERM $OP; wait $OP 2>/dev/null
rm -rf "$D"
