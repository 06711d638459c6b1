#!/usr/bin/env bash
# build-passthrough-hp.sh [OUTDIR] - build libfuse's example daemon
# passthrough_hp from libfuse 3.18.x with FUSE-over-io_uring support, as
# the "floor a FUSE daemon can reach" for unionbench. Bookworm's libfuse
# (3.14) has no io_uring, so the source comes from Debian sid.
#
# libfuse is linked statically, so the binary never touches the system's
# libfuse3.so; it needs only liburing2 and libnuma1 (from bookworm) at run
# time. Run as root it mounts directly (no fusermount3 involved):
#   OUTDIR/passthrough_hp -o io_uring SRC MNT    # io_uring if the kernel
#                                                # has enable_uring=Y
# Idempotent: if OUTDIR/passthrough_hp exists and runs, print its path
# and exit 0. Output goes to a temp dir first and is moved into place only
# once it is complete.
set -euo pipefail

FUSE_VERSION=${FUSE_VERSION:-3.18.3}
OUTDIR=${1:-/var/cache/unionmount-tests/passthrough_hp-$FUSE_VERSION}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ORIG=fuse3_${FUSE_VERSION}.orig.tar.gz
# sha256 of the 3.18.3 orig tarball as listed in sid's Sources.xz; used
# only if sid has moved on and no longer lists this file.
PINNED_SHA256_3_18_3=bcd19582c5e30f7fe45dd86a5540e998590aa01903afc7ebcbeea6c8ac5421ee

die() { echo "build-passthrough-hp: error: $*" >&2; exit 1; }
log() { echo "build-passthrough-hp: $*" >&2; }

# Already built and working: nothing to do.
if [[ -x $OUTDIR/passthrough_hp ]] && "$OUTDIR/passthrough_hp" --help >/dev/null 2>&1; then
	echo "$OUTDIR/passthrough_hp"
	exit 0
fi

# Build tools, plus liburing/libnuma headers: without both, libfuse's
# meson silently builds without io_uring. Bookworm's liburing-dev 2.3 is
# new enough (libfuse only needs IORING_SETUP_SQE128, in liburing >= 2.2).
need_pkgs=(meson ninja-build gcc g++ pkg-config liburing-dev libnuma-dev curl xz-utils ca-certificates)
missing=()
for p in "${need_pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
	((EUID == 0)) || die "missing packages: ${missing[*]} (run as root, or: apt-get install -y ${missing[*]})"
	log "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# Wait for the dpkg lock rather than fail if someone else is using apt.
	apt-get -o DPkg::Lock::Timeout=600 update -qq >/dev/null ||
		log "warning: apt-get update failed, trying install anyway"
	apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
		die "apt-get install ${missing[*]} failed"
fi

work=$(mktemp -d /tmp/build-passthrough-hp.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$(dirname "$OUTDIR")" || die "cannot create $(dirname "$OUTDIR")"
# Stage next to OUTDIR so the final mv is a rename on one filesystem.
stage=$(mktemp -d "$(dirname "$OUTDIR")/.passthrough_hp.XXXXXX")
trap 'rm -rf "$work" "$stage"' EXIT

# The expected checksum comes from sid's Sources.xz (plain HTTP, not
# checked against the signed InRelease).
log "fetching sid Sources.xz"
curl -fsSL --retry 3 -o "$work/Sources.xz" "$MIRROR/dists/sid/main/source/Sources.xz" ||
	die "cannot download $MIRROR/dists/sid/main/source/Sources.xz"
# Decompress to a file: an early-exiting awk would SIGPIPE xz under pipefail.
xz -dc "$work/Sources.xz" >"$work/Sources" || die "cannot decompress Sources.xz"
sha=$(awk -v f="$ORIG" '
	/^Package: / { pkg = $2 }
	/^Checksums-Sha256:/ { in_sums = (pkg == "fuse3"); next }
	/^[^ ]/ { in_sums = 0 }
	in_sums && $3 == f { print $1; exit }' "$work/Sources")
if [[ -z $sha ]]; then
	sid_ver=$(awk '/^Package: fuse3$/ { p = 1 } p && /^Version: / { print $2; exit }' "$work/Sources")
	[[ $FUSE_VERSION == 3.18.3 ]] || die "$ORIG is not listed in sid's Sources.xz (sid has fuse3 ${sid_ver:-?}; set FUSE_VERSION to its upstream version)"
	log "warning: $ORIG no longer in sid's Sources.xz, using the pinned sha256"
	sha=$PINNED_SHA256_3_18_3
fi

log "downloading $ORIG"
curl -fsSL --retry 3 -o "$work/$ORIG" "$MIRROR/pool/main/f/fuse3/$ORIG" ||
	die "cannot download $MIRROR/pool/main/f/fuse3/$ORIG (gone from the pool?)"
echo "$sha  $work/$ORIG" | sha256sum -c --quiet - >&2 || die "sha256 mismatch for $ORIG (expected $sha)"

tar -xzf "$work/$ORIG" -C "$work"
src=$work/fuse-$FUSE_VERSION
[[ -f $src/meson.build ]] || die "unexpected tarball layout: no $src/meson.build"

# Static libfuse so the binary is independent of the system's libfuse3;
# no utils (fusermount3/udev rules) and no tests: only the example is needed.
log "configuring libfuse $FUSE_VERSION"
meson setup "$work/build" "$src" \
	--buildtype=release \
	-Ddefault_library=static \
	-Denable-io-uring=true \
	-Dexamples=true \
	-Dutils=false \
	-Dtests=false \
	-Duseroot=false \
	-Dinitscriptdir= \
	>"$work/meson.log" 2>&1 || { cat "$work/meson.log" >&2; die "meson setup failed"; }

# meson drops io_uring silently when a dependency check fails; insist on it.
grep -q '^#define HAVE_URING' "$work/build/fuse_config.h" || {
	grep -iE 'uring|numa' "$work/meson.log" >&2 || true
	die "libfuse was configured without io_uring (liburing/libnuma check failed; see above)"
}

log "building passthrough_hp"
ninja -C "$work/build" example/passthrough_hp >"$work/ninja.log" 2>&1 ||
	{ tail -n 50 "$work/ninja.log" >&2; die "build failed"; }

install -m 0755 "$work/build/example/passthrough_hp" "$stage/passthrough_hp"
"$stage/passthrough_hp" --help >/dev/null 2>&1 || die "built passthrough_hp does not run"
cat >"$stage/BUILD-INFO" <<EOF
passthrough_hp from libfuse $FUSE_VERSION ($ORIG, sha256 $sha)
libfuse linked statically, io_uring enabled (HAVE_URING); built $(date -u +%FT%TZ) on $(uname -r)
mount with io_uring (needs /sys/module/fuse/parameters/enable_uring = Y):
  passthrough_hp -o io_uring SRC MNT
EOF
chmod 0755 "$stage"

# Replace any broken previous output only now that the new one is complete.
rm -rf "$OUTDIR"
mv -T "$stage" "$OUTDIR"
trap 'rm -rf "$work"' EXIT
echo "$OUTDIR/passthrough_hp"
