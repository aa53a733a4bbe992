#!/usr/bin/env bash
# Installs what building and testing Slipway needs on Debian, and nothing when it is all
# there already. Safe to run again. Needs root (or sudo) only when something is missing.
set -euo pipefail

# The independent judges the tests run (see README "Tests"):
#   ignition-validate (ignition), haproxy, keepalived, nft (nftables), openssl,
#   systemd-analyze (systemd), unshare (util-linux), ip (iproute2); for the root
#   filesystem: the Debian archive keyring, gpg and dpkg-deb for the test repository,
#   mmdebstrap as the reference builder, chroot and tar; veritysetup (cryptsetup-bin)
#   for the dm-verity writer; sgdisk, sfdisk, fsck.fat and mtools for the disk writers;
#   QEMU, OVMF and a static busybox for the firmware boot test; OpenSSH's client, arping
#   and ping for the multi-node test, which probes its private segment; docker-registry
#   (run on 127.0.0.1 by the tests only) and skopeo to push test images for the OCI client;
#   dnsmasq (DHCP and TFTP, run only inside the PXE test's network namespace) and
#   Debian's iPXE builds (ipxe.efi, chainloaded over TFTP) for the network-install test;
#   xorriso, which writes `slipway iso`'s install media; shellcheck, which judges the
#   rendered shell scripts; xfsprogs, for a loop-mounted XFS on which node disks are
#   made as clones of their role disk (FICLONE). For `slipway build`:
#   depmod (kmod) for the module indexes, systemd-hwdb (udev) for the hardware database,
#   qemu-img (qemu-utils) for qcow2, and
#   libclang + libdevmapper headers, which the devicemapper crate of slipway-init
#   generates its ioctl bindings from at build time.
APT_PACKAGES=(
    ca-certificates gcc pkg-config make
    ignition haproxy keepalived nftables openssl systemd util-linux iproute2
    debian-archive-keyring gnupg dpkg mmdebstrap coreutils tar
    cryptsetup-bin gdisk fdisk dosfstools mtools squashfs-tools cpio binutils kmod
    qemu-system-x86 qemu-utils ovmf busybox-static libclang-dev libdevmapper-dev
    openssh-client iputils-arping iputils-ping docker-registry skopeo
    dnsmasq-base ipxe xorriso shellcheck xfsprogs udev
)
# `--bench`: the baselines `make bench` measures against (mkosi and what its Debian
# 12 version needs to build a verity disk, benches/mkosi/run.sh).
if [ "${1:-}" = "--bench" ]; then
    APT_PACKAGES=(mkosi systemd-container debootstrap squashfs-tools cryptsetup-bin
        dosfstools mtools fdisk zstd binutils xfsprogs)
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    echo "install-deps: installing ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    # Services in these packages are configured per node by Slipway, not on this host.
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Rust: the toolchain comes from rustup (Debian's rustc is too old for edition 2024).
if ! command -v cargo >/dev/null 2>&1; then
    if [ -x "$HOME/.cargo/bin/cargo" ]; then
        echo "install-deps: add \$HOME/.cargo/bin to PATH" >&2
    else
        echo "install-deps: no Rust toolchain; install rustup (https://rustup.rs) and run again" >&2
    fi
    exit 1
fi
if command -v rustup >/dev/null 2>&1; then
    for c in clippy rustfmt; do
        rustup component list --installed 2>/dev/null | grep -q "^$c" || rustup component add "$c"
    done
fi

# Building Debian 13 images from a Debian 12 host needs the trixie archive keys, which
# came to bookworm's keyring in a point release: upgrade it if they are not there.
if ! gpg --show-keys /usr/share/keyrings/debian-archive-keyring.gpg 2>/dev/null | grep -q "13/trixie"; then
    echo "install-deps: upgrading debian-archive-keyring for the Debian 13 signing keys"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --only-upgrade debian-archive-keyring >/dev/null
fi
