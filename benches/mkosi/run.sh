#!/bin/sh
# The baseline of `make bench`'s build comparison: Debian 12's mkosi (14) building the
# equivalent of Slipway's control-plane disk (Debian 13, the same package list, GPT with
# ESP + squashfs root (zstd 3, 128 KiB blocks) + dm-verity, UKI).
# Usage: run.sh MIRROR_URL CACHE_DIR OUTPUT_DIR   (the bench passes the host's mirror)
# Needs root, loop devices, and: mkosi systemd-container debootstrap squashfs-tools
# cryptsetup-bin dosfstools mtools fdisk zstd binutils (`scripts/install-deps.sh --bench`).
#
# Workarounds for hosts like this one (a VM kernel without vfat, the GPT partition
# parser and a systemd/dbus), none of which changes what mkosi builds:
#   SYSTEMD_SECCOMP=0: nspawn 252's seccomp filter returns ENOSYS for fchmodat2, which
#     trixie's coreutils uses;
#   shim/: ESP emulation for kernels without vfat (mtools), SYSTEMD_RELAX_ESP_CHECKS;
#   inner.sh: a tmpfs on /run/systemd/nspawn in a private mount namespace;
#   mkosi14-wrapper.py: BLKRRPART skipped (kernels without a GPT parser);
#   mkosi.skeleton: empty updates/security source lists, so apt uses the one suite
#     Slipway uses.
set -eu
[ $# -eq 3 ] || { echo "usage: $0 MIRROR_URL CACHE_DIR OUTPUT_DIR" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
mirror=$1
mkdir -p "$2" "$3"
cache=$(cd "$2" && pwd); out=$(cd "$3" && pwd)
cd "$here/config"
SYSTEMD_SECCOMP=0 PATH="$here/shim:$PATH" \
  unshare -m --propagation private "$here/inner.sh" \
  /usr/bin/python3 "$here/mkosi14-wrapper.py" \
    --mirror="$mirror" --cache="$cache" --output-dir="$out" --force build
