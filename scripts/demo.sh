#!/usr/bin/env bash
# The Hearth demo, from a fresh Debian 12 machine (as root): builds the guest
# kit if it is missing and Hearth itself, then boots the minimal Linux with
# its console on this terminal (Ctrl-A x quits).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup-host.sh
resources/linux/build-kit.sh
cargo build --release
exec target/release/hearth run --config resources/examples/linux.json
