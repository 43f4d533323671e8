#!/usr/bin/env bash
# Make sure a Docker engine answers on the host's socket before `make run` starts the daemon.
# On a fresh Debian machine, as root, install Debian's docker.io and start dockerd.
set -euo pipefail

socket=/var/run/docker.sock
ping() { python3 - "$socket" <<'PY'
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(2)
try:
    s.connect(sys.argv[1])
    s.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
    sys.exit(0 if b" 200 " in s.recv(64) else 1)
except OSError:
    sys.exit(1)
PY
}

ping && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "No Docker engine answers on $socket; start one (or run make run as root to have it installed)." >&2
    exit 1
fi
if ! command -v dockerd >/dev/null; then
    echo "installing Debian's docker.io"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io
fi
if [ -d /run/systemd/system ]; then
    systemctl start docker
else
    echo "starting dockerd (log: /var/log/dockerd.log)"
    nohup dockerd >>/var/log/dockerd.log 2>&1 &
fi
for _ in $(seq 100); do
    ping && exit 0
    sleep 0.3
done
echo "dockerd did not answer on $socket within 30 s; see /var/log/dockerd.log" >&2
exit 1
