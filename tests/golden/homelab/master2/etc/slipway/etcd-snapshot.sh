#!/bin/bash
# Snapshot of the local etcd member; keeps the newest 28.
# Snapshots hold every Secret in the cluster: the directory and files are root-only.
set -euo pipefail
umask 077
dir=/var/lib/etcd-snapshots
keep=28
mkdir -p "$dir"
name="etcd-master2-$(date -u +%Y%m%dT%H%M%SZ).db"
ETCDCTL_API=3 etcdctl \
	--endpoints=https://127.0.0.1:2379 \
	--cacert=/etc/kubernetes/pki/etcd/ca.crt \
	--cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt \
	--key=/etc/kubernetes/pki/etcd/healthcheck-client.key \
	snapshot save "$dir/$name"
# Names sort by time; drop all but the newest $keep.
find "$dir" -maxdepth 1 -name 'etcd-*.db' -printf '%f\n' | sort -r | tail -n +"$((keep + 1))" |
	while read -r old; do rm -f -- "$dir/$old"; done
