#!/usr/bin/env bash
# Installs the Debian packages Hearth's build, tests and guest kit need
# (the network tests use ip, the API tests curl, the disk tests losetup), and
# checks the machine has what no package provides (a Rust toolchain, KVM).
# Idempotent: installs only what is missing. Run as root on Debian 12.
set -euo pipefail

PKGS=(build-essential binutils iproute2 curl util-linux e2fsprogs)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null | grep -qx installed || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup-host: installing ${missing[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "setup-host: cargo not found: Hearth needs a Rust toolchain (1.85 or later) on PATH" >&2; exit 1; }
[ -c /dev/kvm ] || { echo "setup-host: /dev/kvm is missing: Hearth needs KVM" >&2; exit 1; }
