#!/usr/bin/env bash
# Plot shunt's RSS and open descriptors from a soak log (examples/soak.rs output)
# into docs/soak-rss.png and docs/soak-fds.png. Needs gnuplot (apt-get install gnuplot-nox).
#   examples/soak_plot.sh soak.log [docs]
set -euo pipefail
log=${1:?usage: soak_plot.sh SOAK_LOG [OUT_DIR]}
out=${2:-docs}
mkdir -p "$out"
data=$(mktemp)
trap 'rm -f "$data"' EXIT
# Rows of the sample table: "| t | rss | fds |" with numbers only.
awk -F'|' 'NF==5 && $2 ~ /^ *[0-9]+ *$/ && $3 ~ /^ *[0-9]+ *$/ { print $2, $3/1024, $4 }' "$log" >"$data"
[ -s "$data" ] || { echo "no samples in $log" >&2; exit 1; }
gnuplot <<GP
set terminal png size 800,400
set grid
set xlabel "time (s)"
set key off
set output "$out/soak-rss.png"
set title "shunt RSS during the chaos soak"
set ylabel "RSS (MiB)"
set yrange [0:*]
plot "$data" using 1:2 with linespoints lw 2
set output "$out/soak-fds.png"
set title "shunt open file descriptors during the chaos soak"
set ylabel "open fds"
plot "$data" using 1:3 with linespoints lw 2
GP
echo "wrote $out/soak-rss.png $out/soak-fds.png"
