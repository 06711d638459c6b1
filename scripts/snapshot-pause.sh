#!/bin/bash
# snapshot-pause.sh BIN [SECONDS]: how long a busy origin pauses while it
# is snapshotted. fio writes 4 KiB blocks at random over NBD (iodepth 16)
# to a 1 GiB volume for SECONDS (default 15), once alone and once while
# `thinblock snapshot` runs in a loop through the control socket; it
# prints fio's completion latencies (p50, p99, p99.9, max) for both and
# how long each snapshot command took. Needs fio with its nbd engine.
set -euo pipefail
bin=$(realpath "${1:?usage: snapshot-pause.sh BIN [SECONDS]}")
secs=${2:-15}
dir=$(mktemp -d)
srv=
cleanup() { [ -n "$srv" ] && kill "$srv" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
"$bin" pool create --pool "$dir/pool" --size 8G >/dev/null
"$bin" create --pool "$dir/pool" 1 --size 1G
"$bin" serve nbd --pool "$dir/pool" --daemon --pid-file "$dir/pid"
srv=$(cat "$dir/pid")
uri="nbd+unix:///1?socket=$dir/pool/nbd.sock"
# Every block written once first, so both runs overwrite (and the
# snapshot run copies on write).
fio --name=fill --ioengine=nbd --uri="$uri" --rw=write --bs=1M --iodepth=4 --size=1G >/dev/null

run() { # NAME: fio randwrite, its latency summary as one line
	fio --name="$1" --ioengine=nbd --uri="$uri" --rw=randwrite --bs=4k --iodepth=16 --size=1G \
		--time_based --runtime="$secs" --output-format=json --randrepeat=0 >"$dir/$1.json"
	python3 - "$dir/$1.json" "$1" <<'PY'
import json, sys
t = open(sys.argv[1]).read()
j = json.loads(t[t.index("{"):])["jobs"][0]["write"]
c = j["clat_ns"]; p = c["percentile"]
ms = lambda ns: "%.2f ms" % (ns / 1e6)
print("%-10s %7.0f IOPS  clat p50 %s  p99 %s  p99.9 %s  max %s" % (sys.argv[2], j["iops"],
      ms(p["50.000000"]), ms(p["99.000000"]), ms(p["99.900000"]), ms(c["max"])))
PY
}
run alone
(
	i=100
	end=$((SECONDS + secs))
	while [ $SECONDS -lt $end ]; do
		s=$(date +%s%N)
		"$bin" snapshot --pool "$dir/pool" $i 1
		e=$(date +%s%N)
		echo $(((e - s) / 1000))
		i=$((i + 1))
		sleep 0.2
	done >"$dir/snap-us"
) &
snapper=$!
run snapshots
wait $snapper
python3 - "$dir/snap-us" <<'PY'
import sys
v = sorted(int(x) for x in open(sys.argv[1]))
if v:
    print("snapshot command: %d taken, median %.1f ms, max %.1f ms (process start included)" % (len(v), v[len(v)//2]/1000, v[-1]/1000))
PY
"$bin" ls --pool "$dir/pool" | tail -3
