#!/usr/bin/env bash
# Installs what umd's tests, demo and benchmarks need on a Debian machine
# (run as root). Safe to run again: it installs only what is missing.
set -euo pipefail
need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v mdadm >/dev/null 2>&1 || need+=(mdadm)
command -v xz >/dev/null 2>&1 || need+=(xz-utils)
command -v fio >/dev/null 2>&1 || need+=(fio)
# ISA-L, the baseline of `umd bench array` (loaded at run time with dlopen).
dpkg -s libisal2 >/dev/null 2>&1 || need+=(libisal2)
if [ ${#need[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup: need root to install: ${need[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # mdadm's package scripts try to start services; a container has none.
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
[ -e /dev/fuse ] || { echo "setup: /dev/fuse is missing (modprobe fuse?)" >&2; exit 1; }
command -v cargo >/dev/null 2>&1 || { echo "setup: cargo (Rust toolchain) is missing" >&2; exit 1; }
echo "setup: fuse3, mdadm, xz, fio, libisal2 present"
