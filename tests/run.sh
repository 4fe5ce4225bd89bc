#!/usr/bin/env bash
# The test command (README): installs what the tests need (cached outside the clone), then
# runs every test of the workspace, QEMU boots included.
# Set NIXBOOT_REQUIRE_QEMU=1 (CI does) to make a missing QEMU prerequisite a failure
# instead of a loud skip.
set -euo pipefail
cd "$(dirname "$0")/.."

eval "$(bash .ci/setup)"
echo "kernel:    $NIXBOOT_KERNEL"
echo "modules:   $NIXBOOT_MODULES"
echo "virtiofsd: $NIXBOOT_VIRTIOFSD"

# The guest binaries are static musl executables; the tests boot them.
cargo build --release --target x86_64-unknown-linux-musl -p init -p probe-init
cargo test --workspace "$@"
