#!/bin/bash
# How often the event loop's thread calls malloc: N spinning test guests
# of 64 MiB in one `hearth run` with a statistics file, everything on CPU
# 0; after 4 s, a uprobe on glibc's malloc counts the calls of the
# monitor's main thread (the loop) for 3 s. Needs root and perf
# (Debian: linux-perf) and a release build.
#
#   benches/loop_mallocs.sh [N] [BINARY]     # default 50, target/release/hearth
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-50}
bin=$(realpath "${2:-target/release/hearth}")
elf=$(realpath "$(ls -t target/release/build/hearth-*/out/hearth-guest.elf | head -1)")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 - "$n" "$elf" > "$tmp/m.json" <<'PY'
import json, sys
n, elf = int(sys.argv[1]), sys.argv[2]
print(json.dumps({"host": {"cpu": {"cpus": [0]}},
                  "vms": [{"name": f"vm{i}", "memory": {"size_mib": 64},
                           "kernel": {"path": elf, "cmdline": "hearth.scenario=spin"}}
                          for i in range(n)]}))
PY
libc=$(ldd "$bin" | awk '/libc.so.6/ {print $3}')
perf probe -q -x "$libc" malloc 2>/dev/null || true
taskset -c 0 "$bin" run --config "$tmp/m.json" --stats-file "$tmp/s.json" > /dev/null 2>&1 &
pid=$!
sleep 4
perf record -q -e probe_libc:malloc -t "$pid" -o "$tmp/p.data" -- sleep 3 2> /dev/null
kill -TERM "$pid"
wait "$pid" || true
echo "$bin: N=$n: the loop called malloc $(perf script -i "$tmp/p.data" -F tid 2> /dev/null | wc -l) times in 3 s"
