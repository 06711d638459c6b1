#!/usr/bin/env bash
# demo.sh BINARY - mount a union of the sample layers in testdata/, show a
# read from a lower layer, a copy-up and a whiteout landing in the upper,
# then unmount. Nothing in testdata/ is changed.
set -eu
bin=$(readlink -f "$1")
top=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/unionmount-demo.XXXXXX)
cleanup() {
	mountpoint -q "$work/merged" && fusermount3 -u "$work/merged"
	rm -rf "$work"
}
trap cleanup EXIT
cp -a "$top/testdata/layers/base" "$work/base"
cp -a "$top/testdata/layers/app" "$work/app"
mkdir "$work/upper" "$work/work" "$work/merged"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "mount: app over base, changes go to upper"
run "$bin" -o "lowerdir=$work/app:$work/base,upperdir=$work/upper,workdir=$work/work" "$work/merged"
grep " $work/merged " /proc/mounts
run ls -l "$work/merged/etc"

step "read from a lower layer (app's motd hides base's)"
run cat "$work/merged/etc/motd" "$work/merged/etc/os-release"
echo "upper is still empty:"; run ls -A "$work/upper"

step "copy-up: append to a file of the base layer"
run sh -c "echo 'VARIANT=demo' >> '$work/merged/etc/os-release'"
run cat "$work/merged/etc/os-release"
echo "the changed copy landed in upper; base is untouched:"
run ls -l "$work/upper/etc"
run cat "$work/base/etc/os-release"

step "whiteout: delete a lower file"
run rm "$work/merged/var/log/boot.log"
run ls -A "$work/merged/var/log"
echo "upper holds a whiteout (character device 0/0) in its place:"
run ls -l "$work/upper/var/log"

step "unmount"
run fusermount3 -u "$work/merged"
echo "demo done"
