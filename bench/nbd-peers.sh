#!/usr/bin/env bash
# nbd-peers.sh THINBLOCK_BINARY - measure thinblock's NBD server against
# qemu-nbd (qcow2, 64 KiB clusters, --cache=none), a qcow2 overlay over a
# full backing image, nbdkit's file plugin, and fio on a raw file, in one
# run, through fio's nbd engine. Prints IOPS / MiB/s per workload and
# target, and the ratios the NBD issue sets as targets.
#
# Needs root-free tools only: fio (with the nbd engine), qemu-img,
# qemu-nbd, nbdkit. SIZE (default 1G) sets the image size; RUNTIME (s)
# caps each fio run.
set -eu
bin=$(readlink -f "$1")
size=${SIZE:-1G}
runtime=${RUNTIME:-8}
work=$(mktemp -d /tmp/nbd-peers.XXXXXX)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
for t in fio qemu-img qemu-nbd nbdkit; do
	command -v $t >/dev/null || { echo "nbd-peers: needs $t" >&2; exit 2; }
done

# fio_run URI_OR_FILE RW BS DEPTH [extra fio args] -> prints "iops bw_mib"
fio_run() {
	local target=$1 rw=$2 bs=$3 depth=$4
	shift 4
	local io=(--ioengine=nbd "--uri=$target")
	[[ $target == /* ]] && io=(--ioengine=libaio --direct=1 "--filename=$target")
	fio --name=w "${io[@]}" --rw="$rw" --bs="$bs" --iodepth="$depth" --size="$size" \
		--runtime="$runtime" --time_based=0 --output-format=json "$@" 2>/dev/null |
		python3 -c 'import json,sys
s=sys.stdin.read()  # the nbd engine prints a line before the JSON
j=json.loads(s[s.index("{"):])["jobs"][0]
d=j["write"] if j["write"]["io_bytes"]>0 else j["read"]
print("%.0f %.1f" % (d["iops"], d["bw"]/1024))'
}

wait_sock() { for _ in $(seq 100); do [[ -S $1 ]] && return; sleep 0.05; done; echo "no socket $1" >&2; exit 1; }

# --- targets ------------------------------------------------------------
start_thin() { # fresh pool with volume 1; snapshot 2 of 1 if $1=snap
	rm -rf "$work/pool"
	"$bin" pool create --pool "$work/pool" --size 4G >/dev/null
	"$bin" create --pool "$work/pool" 1 --size "$size"
}
serve_thin() {
	"$bin" serve nbd --pool "$work/pool" --writable-snapshots 2>/dev/null &
	pids+=($!)
	wait_sock "$work/pool/nbd.sock"
}
stop_last() { kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'; }
serve_qemu() { # image format socket
	rm -f "$3"
	qemu-nbd --cache=none --format="$2" --socket="$3" --persistent --shared=8 "$1" &
	pids+=($!)
	wait_sock "$3"
}
serve_nbdkit() {
	rm -f "$2"
	nbdkit --foreground --unix "$2" file "file=$1" &
	pids+=($!)
	wait_sock "$2"
}

declare -A R
measure() { # key target rw bs depth extra...
	local key=$1
	shift
	R[$key]=$(fio_run "$@")
	printf '%-28s %10s IOPS %9s MiB/s\n' "$key" ${R[$key]}
}
ts="nbd+unix:///1?socket=$work/pool/nbd.sock"

# write:60k: every 4 KiB write starts a fresh 64 KiB block.
echo "== first 4 KiB writes into fresh 64 KiB blocks, iodepth 16"
start_thin; serve_thin
measure thin.fresh "$ts" write:60k 4k 16
stop_last
qemu-img create -q -f qcow2 -o cluster_size=64k "$work/q.qcow2" "$size"
serve_qemu "$work/q.qcow2" qcow2 "$work/q.sock"
measure qcow2.fresh "nbd+unix:///?socket=$work/q.sock" write:60k 4k 16
stop_last

echo "== first 4 KiB write after a snapshot (copy-on-write), iodepth 16"
start_thin; serve_thin
fio_run "$ts" write 1M 4 >/dev/null
stop_last
"$bin" snapshot --pool "$work/pool" 2 1
serve_thin
measure thin.cow "$ts" write:60k 4k 16
stop_last
qemu-img create -q -f qcow2 -o cluster_size=64k "$work/base.qcow2" "$size"
serve_qemu "$work/base.qcow2" qcow2 "$work/b.sock"
fio_run "nbd+unix:///?socket=$work/b.sock" write 1M 4 >/dev/null
stop_last
qemu-img create -q -f qcow2 -o cluster_size=64k -b "$work/base.qcow2" -F qcow2 "$work/over.qcow2"
serve_qemu "$work/over.qcow2" qcow2 "$work/o.sock"
measure overlay.cow "nbd+unix:///?socket=$work/o.sock" write:60k 4k 16
stop_last

echo "== provisioned blocks: 4 KiB random read and overwrite, iodepth 16"
start_thin; serve_thin
fio_run "$ts" write 1M 4 >/dev/null
measure thin.randread "$ts" randread 4k 16
measure thin.randwrite "$ts" randwrite 4k 16
echo "== 1 MiB sequential, iodepth 4"
measure thin.seqread "$ts" read 1M 4
measure thin.seqwrite "$ts" write 1M 4
stop_last
serve_qemu "$work/q.qcow2" qcow2 "$work/q.sock"
fio_run "nbd+unix:///?socket=$work/q.sock" write 1M 4 >/dev/null
measure qcow2.randread "nbd+unix:///?socket=$work/q.sock" randread 4k 16
measure qcow2.randwrite "nbd+unix:///?socket=$work/q.sock" randwrite 4k 16
stop_last
truncate -s "$size" "$work/raw.img"
fio_run "$work/raw.img" write 1M 4 >/dev/null
measure raw.seqread "$work/raw.img" read 1M 4
measure raw.seqwrite "$work/raw.img" write 1M 4
serve_nbdkit "$work/raw.img" "$work/k.sock"
measure nbdkit.randread "nbd+unix:///?socket=$work/k.sock" randread 4k 16
measure nbdkit.seqread "nbd+unix:///?socket=$work/k.sock" read 1M 4
stop_last

ratio() { python3 -c "print('%.2fx' % (float('$1'.split()[$3])/float('$2'.split()[$3])))"; }
echo
echo "== ratios (target in brackets)"
echo "fresh 4K writes vs qcow2:         $(ratio "${R[thin.fresh]}" "${R[qcow2.fresh]}" 0)  [>= 3x]"
echo "first write after snapshot vs overlay: $(ratio "${R[thin.cow]}" "${R[overlay.cow]}" 0)  [>= 2x]"
echo "4K random read vs qcow2:          $(ratio "${R[thin.randread]}" "${R[qcow2.randread]}" 0)  [>= 1.5x]"
echo "4K random overwrite vs qcow2:     $(ratio "${R[thin.randwrite]}" "${R[qcow2.randwrite]}" 0)  [>= 1.5x]"
echo "1M sequential read vs raw file:   $(ratio "${R[thin.seqread]}" "${R[raw.seqread]}" 1)  [>= 0.8x]"
echo "1M sequential write vs raw file:  $(ratio "${R[thin.seqwrite]}" "${R[raw.seqwrite]}" 1)  [>= 0.8x]"
