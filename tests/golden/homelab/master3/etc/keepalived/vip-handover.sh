#!/bin/bash
# keepalived's ExecStop (keepalived.service.d/10-slipway.conf): a planned stop of the VIP's
# holder (shutdown, reboot, `systemctl stop`) hands the VIP over without failing a request.
# New connections to the VIP are dropped (not refused) and the ones in flight through this
# node's HAProxy get up to 1 s to finish; only then does keepalived send priority 0 and
# the next node take the VIP. A client whose SYN was dropped sends it again 1 s later
# (TCP's initial retransmission timeout), and that one reaches the new holder: the client
# waits, it does not fail. Long-lived connections (watches) through this node still end
# when the VIP moves; their clients reconnect. keepalived's ExecStopPost removes the table.
set -u
vip=192.168.1.100
port=6443
# Not the holder, or HAProxy's unit no longer active (it died or is stopping: its
# ExecStopPost stops keepalived): nothing to hand over, the VIP goes at once. (The unit's
# state, not a process name: any other HAProxy on the node would match that.)
ip -o addr show to "$vip" | grep -q . || exit 0
systemctl is-active --quiet haproxy.service || exit 0
rules="table ip slipway-handover {
	chain input {
		type filter hook input priority -10; policy accept;
		ip daddr $vip tcp dport $port ct state new drop
	}
}"
if ! nft -f - <<<"$rules"; then
	echo "vip-handover: nft failed; the VIP goes now" >&2
	exit 0
fi
# Up to 1 s of wall time (bash's clock in microseconds: no process per look at it; a
# count of rounds would stretch on a loaded node, and every moment here is one in which
# new connections wait).
deadline=$((${EPOCHREALTIME//[!0-9]/} + 1000000))
left=
while :; do
	left=$(ss -Htn state established src "$vip:$port" | wc -l)
	[ "$left" = 0 ] && break
	[ "${EPOCHREALTIME//[!0-9]/}" -ge "$deadline" ] && break
	sleep 0.05
done
echo "vip-handover: new connections to $vip:$port held back; $left still open as the VIP goes"
exit 0
