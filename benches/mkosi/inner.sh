#!/bin/sh
# Runs inside a private mount namespace: systemd-nspawn (used by mkosi 14) refuses to
# work with /run/systemd/nspawn on a disk file system; give it a tmpfs there.
set -e
mkdir -p /run/systemd/nspawn
mount -t tmpfs -o mode=0755 tmpfs /run/systemd/nspawn
exec "$@"
