#!/usr/bin/env bash
# with-fuse-uring.sh CMD... - run CMD with FUSE over io_uring turned on
# (the fuse module's enable_uring), then put the setting back. Where it
# cannot be turned on (not root, a kernel without CONFIG_FUSE_IO_URING)
# CMD is not run: the reason is printed and the exit status is 0, as a
# skipped test's.
set -u
param=/sys/module/fuse/parameters/enable_uring
if [ ! -e "$param" ]; then
	echo "with-fuse-uring: skipped: $param is missing (FUSE over io_uring needs kernel 6.14+ with CONFIG_FUSE_IO_URING)" >&2
	exit 0
fi
old=$(cat "$param")
if ! echo Y 2>/dev/null >"$param"; then
	echo "with-fuse-uring: skipped: cannot write $param (needs root)" >&2
	exit 0
fi
trap 'echo "$old" >"$param"' EXIT
"$@"
