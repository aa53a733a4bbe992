#!/bin/bash
# keepalived's health check: succeeds while the local HAProxy answers its monitor URI.
set -eu
exec 3<>/dev/tcp/127.0.0.1/8404
printf 'GET /healthz HTTP/1.0\r\n\r\n' >&3
read -r -t 2 _ status _ <&3
[ "$status" = 200 ]
