#!/usr/bin/env bash
# ensure-deps.sh CMD:PACKAGE ... - make sure each command is installed,
# installing its Debian package when run as root, and saying what is
# missing otherwise. Exit 1 if anything is still missing.
set -u
missing=()
for pair in "$@"; do
	cmd=${pair%%:*} pkg=${pair#*:}
	if ! command -v "$cmd" >/dev/null 2>&1 && [[ ! -x /sbin/$cmd && ! -x /usr/sbin/$cmd ]]; then
		missing+=("$pkg")
	fi
done
((${#missing[@]} == 0)) && exit 0
# de-duplicate
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
if ((EUID != 0)); then
	echo "missing packages: ${missing[*]}" >&2
	echo "install them with: sudo apt-get install -y ${missing[*]}" >&2
	exit 1
fi
if ! command -v apt-get >/dev/null; then
	echo "missing packages: ${missing[*]} (and no apt-get to install them)" >&2
	exit 1
fi
echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
if ! apt-get install -y -qq "${missing[@]}" >/dev/null; then
	echo "apt-get install ${missing[*]} failed" >&2
	exit 1
fi
