#!/usr/bin/env bash
# I/O syscalls per streamed request on the proxy's side (issue 20), with `strace -c -f`
# attached to the proxy only: 2,000 streamed chat completions (8 content events each, from
# the mock) over 8 keep-alive connections, after a warm-up.
#
#   cargo build --release --features mock --bin k2proxy --bin k2mock
#   scripts/bench/syscalls.sh [path/to/k2proxy] [requests]
#
# The access log is on and goes to a file in the config's directory (the case where the
# config watcher used to pay for every line).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
proxy=${1:-$root/target/release/k2proxy}
n=${2:-2000}
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
mp=$(free_port); pp=$(free_port)
cat > "$dir/k2proxy.yaml" <<YAML
server:
  listen: ["127.0.0.1:$pp"]
upstream:
  base_url: "http://127.0.0.1:$mp"
pool:
  tokens: ["bench-a", "bench-b", "bench-c"]
metrics:
  listen: null
models:
  - {id: "MBZUAI-IFM/K2-Think-v2", upstream: "MBZUAI-IFM/K2-Think-v2"}
YAML
"$root/target/release/k2mock" --listen "127.0.0.1:$mp" --no-record --personality k2think >/dev/null 2>&1 &
"$proxy" -c "$dir/k2proxy.yaml" >"$dir/access.log" 2>"$dir/stderr.log" &
pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$pp) 2>/dev/null && break; sleep 0.1; done
python3 "$here/syscalls_load.py" "$pp" 200 8
strace -c -f -p "$pid" -o "$dir/strace.txt" &
st=$!
sleep 1
python3 "$here/syscalls_load.py" "$pp" "$n" 8
sleep 0.3
kill -INT $st; wait $st 2>/dev/null || true
awk -v n="$n" '
  $NF ~ /^(read|recvfrom|write|sendto|writev|readv|recvmsg|sendmsg|epoll_wait|futex)$/ {
    calls = ($5 ~ /^[0-9]+$/) ? $4 : $4; c[$NF] = calls
  }
  END {
    io = 0
    for (k in c) if (k !~ /^(epoll_wait|futex)$/) io += c[k]
    printf "requests %d\n", n
    for (k in c) printf "  %-10s %6.2f per request\n", k, c[k] / n
    printf "I/O syscalls (read, recvfrom, write, sendto, writev, readv, recvmsg, sendmsg): %.2f per request\n", io / n
  }' "$dir/strace.txt"
