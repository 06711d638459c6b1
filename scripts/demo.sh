#!/usr/bin/env bash
# demo.sh BINDIR - a walk through the whole stack on the sample layers in
# testdata/: the union (copy-up, whiteout, opaque dir, a program run from
# the mount, status), aufs branches and the layer tools (convert, apply),
# then a thin pool (a volume with ext4 through the FUSE export and a loop
# device, a snapshot, NBD with nbdinfo --map, space given back by discard).
# Nothing in testdata/ is changed; everything lives in a temporary dir.
set -euo pipefail
bindir=$(readlink -f "$1")
export PATH=$bindir:$PATH # the demo's own builds come first
um=unionmount
tb=thinblock
top=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/unionmount-demo.XXXXXX)
pids=()
loop=
cleanup() {
	set +e
	for m in "$work"/merged "$work"/aufs "$work"/applied "$work"/ext4; do
		mountpoint -q "$m" 2>/dev/null && umount "$m" 2>/dev/null
	done
	[[ -n $loop ]] && losetup -d "$loop" 2>/dev/null
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; wait "$p" 2>/dev/null; done
	rm -rf "$work"
}
trap cleanup EXIT

bold=$'\033[1m' plain=$'\033[0m'
[[ -t 1 ]] || bold='' plain=''
step() { printf '\n%s== %s%s\n' "$bold" "$*" "$plain"; }
run() { printf '$ %s\n' "$*"; "$@"; }
# wait_for CMD...: poll until CMD succeeds (a server coming up), 10 s at most.
wait_for() {
	for _ in $(seq 100); do "$@" 2>/dev/null && return 0; sleep 0.1; done
	echo "gave up waiting for: $*" >&2
	return 1
}

cp -a "$top/testdata/layers/base" "$work/base"
cp -a "$top/testdata/layers/app" "$work/app"
mkdir "$work/upper" "$work/work" "$work/merged"

cd "$work" # the commands below name paths relative to it

step "1. the union: app over base, changes go to upper"
run "$um" -o "lowerdir=app:base,upperdir=upper,workdir=work" "merged"
run "$um" status
run ls -l "merged/etc"

step "a program from the app layer runs from the merged view"
run "merged/usr/local/bin/greet"

step "copy-up: append to a file of the base layer"
run sh -c "echo 'VARIANT=demo' >> 'merged/etc/os-release'"
run cat "merged/etc/os-release"
echo "the changed copy landed in upper; base is untouched:"
run ls -l "upper/etc"
run cat "base/etc/os-release"

step "whiteout: delete a lower file"
run rm "merged/var/log/boot.log"
run ls -A "merged/var/log"
echo "upper holds a whiteout (character device 0/0) in its place:"
run ls -l "upper/var/log"

step "opaque dir: remove a lower dir and make it again"
run rm -r "merged/usr/share/doc"
run mkdir "merged/usr/share/doc"
run ls -A "merged/usr/share/doc"
echo "the new dir in upper is marked opaque, so base's files stay hidden:"
run getfattr -n trusted.overlay.opaque "upper/usr/share/doc"
run fusermount3 -u "merged"

step "2. aufs branches: the same layers, aufs's syntax and whiteouts"
mkdir "rw" "aufs"
run "$um" -o "br=rw=rw:app=ro:base=ro" "aufs"
run rm "aufs/etc/app.conf"
run ls -A "aufs/etc"
echo "aufs marks the deletion with a .wh. file in the writable branch:"
run ls -A "rw/etc"
run fusermount3 -u "aufs"

step "layer tools: convert the overlay upper to an aufs layer, tar it, apply it"
cp -a "upper" "layer"
run "$um" convert --to aufs "layer"
run find "layer" -name '.wh.*'
run tar -C "layer" -cf "layer.tar" .
mkdir "applied-upper" "applied"
run "$um" apply "layer.tar" "applied-upper"
run "$um" -o "lowerdir=applied-upper:app:base" "applied"
echo "a read-only union of the applied layer shows the same changes:"
run ls -A "applied/var/log" "applied/usr/share/doc"
run fusermount3 -u "applied"

step "3. a thin pool: 1 GiB of space, given out as volumes are written"
pool=pool
run "$tb" pool create --pool "$pool" --size 1G
run "$tb" create --pool "$pool" 1 --size 256M
mkdir "volumes" "ext4"
"$tb" serve fuse --pool "$pool" "volumes" &
pids+=($!)
wait_for test -e "volumes/1"
run ls -l "volumes"
loop=$(losetup --find --show "volumes/1")
echo "volume 1 on $loop"
run mkfs.ext4 -q "$loop"
run mount "$loop" "ext4"
run cp -a "base/." "ext4/"
run sh -c "head -c 32M /dev/urandom > 'ext4/big'"
run umount "ext4"
run losetup -d "$loop"
loop=
kill "${pids[-1]}"; wait "${pids[-1]}" || true
unset 'pids[-1]'
run "$tb" pool status --pool "$pool"

step "a snapshot of volume 1, served over NBD"
run "$tb" snapshot --pool "$pool" 2 1
run "$tb" ls --pool "$pool"
sock=nbd.sock
"$tb" serve nbd --pool "$pool" --listen "unix://$sock" &
pids+=($!)
wait_for test -S "$sock"
echo "the snapshot shares every block with its origin; nbdinfo maps what is allocated:"
run nbdinfo --map "nbd+unix:///2?socket=$sock" | head -n 8
kill "${pids[-1]}"; wait "${pids[-1]}" || true
unset 'pids[-1]'

step "space given back: delete the snapshot, then remove a file and discard in volume 1"
run "$tb" delete --pool "$pool" 2
"$tb" serve fuse --pool "$pool" "volumes" &
pids+=($!)
wait_for test -e "volumes/1"
loop=$(losetup --find --show "volumes/1")
run mount "$loop" "ext4"
run rm "ext4/big"
run sync # ext4 frees the blocks when its journal commits; fstrim skips them before
run fstrim -v "ext4"
run umount "ext4"
run losetup -d "$loop"
loop=
kill "${pids[-1]}"; wait "${pids[-1]}" || true
unset 'pids[-1]'
run "$tb" pool status --pool "$pool"
run "$tb" check --pool "$pool"
echo
echo "demo done"
