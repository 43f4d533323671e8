#!/usr/bin/env bash
# Install the Debian packages that the test rig needs (tests/support/rig.py): a Docker engine to run
# privately, a registry, debootstrap and busybox for the test images. Skips apt when all are
# present, so a second run costs nothing. Prometheus and promtool (package prometheus) scrape
# and lint the daemon's metrics (tests/support/prometheus.py).
# tini: its tini-static is the docker-stacks-style image's init (tests/support/matrix_images.py).
set -euo pipefail

packages=(docker.io docker-registry apache2-utils debootstrap busybox-static tini iproute2 iptables ca-certificates gcc libc6-dev libcjson-dev openssh-client sshpass chromium systemd prometheus)

if [ "$(id -u)" -ne 0 ]; then
    echo "make test needs root: the test rig starts a private dockerd, a bridge and a registry." >&2
    echo "Run it as root (sudo make test)." >&2
    exit 1
fi

missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" \
        || missing+=("$package")
done
# Debian's python3 needs python3-venv for the virtual environment.
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)

if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
    # Debian's prometheus package enables a system-wide Prometheus on :9090 and, under systemd,
    # starts it. The tests run their own on a free loopback port, so switch off the one that
    # was just installed (one that was there before is left alone).
    if [[ " ${missing[*]} " == *" prometheus "* ]]; then
        if [ -d /run/systemd/system ]; then
            systemctl disable --now --quiet prometheus.service || true
        else
            /etc/init.d/prometheus stop >/dev/null 2>&1 || true
            systemctl disable --quiet prometheus.service 2>/dev/null \
                || update-rc.d prometheus disable >/dev/null 2>&1 || true
        fi
    fi
fi
