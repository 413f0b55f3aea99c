#!/usr/bin/env bash
# Instructions per WebSocket call setup (callgrind's Ir, every thread of
# shunt): connect, upgrade, one 640 B message each way, Close, through
# shunt to the bench echo backend. A count that the other processes of a
# busy machine do not disturb, where handshakes/s and CPU time do; it is
# shunt's user-space work only (the kernel's TCP work is not counted).
# Each binary runs under valgrind; a Python client makes 50 calls to warm
# up, zeroes callgrind's counters (callgrind_control), makes N calls one
# after another and dumps them: that count divided by N is the per-call
# figure (start-up, which scans /proc and varies with the machine, and
# shutdown are not in it).
#
#   examples/ir_handshake.sh OLD/shunt target/release/shunt
#   N=2000 examples/ir_handshake.sh BIN
#
# Starts the echo backend (target/release/examples/bench_backend) on
# 127.0.0.1:19311 and shunt (`--workers 1`, RUST_LOG=warn) on 19312
# (PORT=n: n and n+1 instead);
# stops both by PID. Needs valgrind and python3.
set -u
[ $# -ge 1 ] || { echo "usage: $0 BIN [BIN ...]" >&2; exit 2; }
N=${N:-1000}; LEVEL=${LEVEL:-warn}
P_BACKEND=${PORT:-19311}; P_SHUNT=$((P_BACKEND + 1))  # PORT=n: another pair of ports
cd "$(dirname "$0")/.."
cargo build --release --quiet --example bench_backend || exit 1
D=$(mktemp -d "${TMPDIR:-/tmp}/shunt-irhs.XXXXXX")
"${CARGO_TARGET_DIR:-target}/release/examples/bench_backend" 127.0.0.1:$P_BACKEND 2>$D/backend.log & BP=$!
# Total Ir of one run of BIN serving N calls.
ir() {
  local out=$D/cg.$RANDOM
  RUST_LOG=$LEVEL valgrind --tool=callgrind --callgrind-out-file=$out "$1" --listen 127.0.0.1:$P_SHUNT \
    --admin off --workers 1 --direct http://127.0.0.1:$P_BACKEND 2>>$D/shunt.log & local sp=$!
  python3 - "$2" "$P_SHUNT" "$sp" <<'P' >&2
import base64, os, socket, struct, subprocess, sys, time
n, WARM = int(sys.argv[1]), 50
MASK = b"\x11\x22\x33\x44"
def frame(opcode, payload):
    head = bytes([0x80 | opcode])
    head += bytes([0x80 | len(payload)]) if len(payload) < 126 else bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))
MESSAGE = frame(0x2, bytes(range(256)) * 2 + bytes(128))  # 640 B
CLOSE = frame(0x8, struct.pack("!H", 1000))
def read_until(s, buf, done):
    while not done(buf):
        chunk = s.recv(65536)
        if not chunk:
            raise SystemExit("connection closed early: %r" % buf[:80])
        buf += chunk
    return buf
def frames(b):
    """The opcodes of the complete server frames in b (unmasked)."""
    ops, i = [], 0
    while i + 2 <= len(b):
        n, j = b[i + 1] & 0x7F, i + 2
        if n == 126:
            if j + 2 > len(b): break
            n, j = struct.unpack("!H", b[j:j + 2])[0], j + 2
        if j + n > len(b): break
        ops.append(b[i] & 0x0F); i = j + n
    return ops
def call():
    s = socket.create_connection(("127.0.0.1", int(sys.argv[2])), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(("GET /audio HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
               "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n" % key).encode())
    buf = read_until(s, b"", lambda b: b"\r\n\r\n" in b)
    head, rest = buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    s.sendall(MESSAGE)
    rest = read_until(s, rest, lambda b: 0x2 in frames(b))
    s.sendall(CLOSE)
    read_until(s, rest, lambda b: 0x8 in frames(b))
    s.close()
for _ in range(600):  # up to 60 s for valgrind to start shunt
    try:
        call(); break
    except (OSError, AssertionError):
        time.sleep(0.1)
for _ in range(WARM):
    call()
subprocess.run(["callgrind_control", "--zero", sys.argv[3]], check=True, capture_output=True)
for _ in range(n):
    call()
subprocess.run(["callgrind_control", "--dump", sys.argv[3]], check=True, capture_output=True)
P
  local client=$?
  kill -TERM $sp; wait $sp
  [ $client = 0 ] || { echo "the client failed against $1" >&2; echo NaN; return; }
  # The dump taken right after the measured loop (counted from the zero before it).
  awk '/^summary:/{s+=$2} END{print s}' $out.1
  rm -f $out*
}
for bin in "$@"; do
  a=$(ir "$bin" $N)
  awk -v bin="$bin" -v a=$a -v n=$N 'BEGIN{printf "%s: %.0f instructions per call setup\n", bin, a/n}'
done
kill -TERM $BP; wait $BP 2>/dev/null
rm -rf "$D"
