#!/usr/bin/env bash
# Hearth's whole test suite, from a fresh Debian 12 machine (as root):
# packages, the guest kit (built once, cached in /var/cache/hearth/kit),
# formatting, lints, then every unit and integration test on /dev/kvm.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-host.sh
resources/linux/build-kit.sh
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo test --no-fail-fast
cargo bench --no-run
