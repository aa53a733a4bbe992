#!/bin/bash
# Runs before kubelet starts etcd's static pod. A control-plane node whose etcd data is
# gone (reimaged with its state wiped, or a new disk) cannot take its old place in a
# running cluster: etcd would start as a fresh member under an identity the others have
# already seen. So, when a peer answers: remove this node's stale member through it, add
# the node afresh, and have the static pod join the running cluster
# (--initial-cluster-state=existing). When no peer answers, the cluster is being formed
# (every member starts empty at once) and the manifest's `new` stands.
# docs/reimage.md describes the procedure around it.
set -euo pipefail
name=master2
self=https://192.168.1.12:2380
manifest=/etc/kubernetes/manifests/etcd.yaml
# How long peers get to answer: long enough for a slow network start, short enough not
# to hold up a new cluster, whose members all find nobody.
wait_s=${ETCD_REJOIN_WAIT:-15}

if [ -d /var/lib/etcd/member ]; then
	echo "etcd data present in /var/lib/etcd: nothing to do"
	exit 0
fi

ctl() {
	local endpoint=$1
	shift
	ETCDCTL_API=3 etcdctl \
		--endpoints="$endpoint" \
		--cacert=/etc/kubernetes/pki/etcd/ca.crt \
		--cert=/etc/kubernetes/pki/etcd/healthcheck-client.crt \
		--key=/etc/kubernetes/pki/etcd/healthcheck-client.key \
		--dial-timeout=2s --command-timeout=5s "$@"
}

# Every control-plane node's client URL (this node's own is skipped below).
peers=(https://192.168.1.11:2379 https://192.168.1.12:2379 https://192.168.1.13:2379 )
peer=
deadline=$((SECONDS + wait_s))
while [ -z "$peer" ]; do
	for p in "${peers[@]}"; do
		if [ "$p" != "https://192.168.1.12:2379" ] && ctl "$p" endpoint health >/dev/null 2>&1; then
			peer=$p
			break
		fi
	done
	if [ -z "$peer" ]; then
		if [ "$SECONDS" -ge "$deadline" ]; then
			echo "no etcd peer answered in ${wait_s} s: the cluster is being formed; starting as a new member"
			exit 0
		fi
		sleep 1
	fi
done
echo "etcd peer $peer is healthy and this node has no etcd data: rejoining"

# member list -w simple: "ID, STATUS, NAME, PEER ADDRS, CLIENT ADDRS, IS LEARNER"
line=$(ctl "$peer" member list | grep -F ", $self, " || true)
id=${line%%,*}
if [ -n "$line" ] && [[ "$line" == *", started, "* ]]; then
	echo "removing stale member $id ($name, $self)"
	ctl "$peer" member remove "$id"
	line=
fi
if [ -z "$line" ]; then
	echo "adding member $name ($self)"
	ctl "$peer" member add "$name" --peer-urls="$self"
else
	echo "member $id ($self) is already added and has not started: joining as it"
fi
# The manifest is this node's own copy (/etc is writable); with data present, etcd
# ignores the flag from then on.
sed -i -e 's/--initial-cluster-state=new$/--initial-cluster-state=existing/' "$manifest"
grep -q -- '--initial-cluster-state=existing$' "$manifest"
echo "etcd will join the running cluster"
