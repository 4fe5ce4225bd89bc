#!/usr/bin/env bash
# The test command (README): installs what the tests need (cached outside the clone), then
# runs every test of the workspace, QEMU boots included, then the README's own commands.
# Set NIXBOOT_REQUIRE_QEMU=1 (CI does) to make a missing QEMU prerequisite a failure
# instead of a skip.
# A test that cannot run on this machine adds a line to the skip list (the file
# NIXBOOT_SKIP_LEDGER; default target/nixboot-skips.txt); the list is printed at the end,
# whatever the result, so a skip is never mistaken for a pass.
set -euo pipefail
cd "$(dirname "$0")/.."

own_ledger=0
if [ -z "${NIXBOOT_SKIP_LEDGER:-}" ]; then
  export NIXBOOT_SKIP_LEDGER="${CARGO_TARGET_DIR:-$PWD/target}/nixboot-skips.txt"
  own_ledger=1
  mkdir -p "$(dirname "$NIXBOOT_SKIP_LEDGER")"
  : > "$NIXBOOT_SKIP_LEDGER"
fi
[ "$own_ledger" = 0 ] || trap 'bash .ci/skips "$NIXBOOT_SKIP_LEDGER"' EXIT

step() { printf '\n=== tests/run.sh: %s\n' "$*" >&2; }

step "prerequisites (.ci/setup)"
setup_env=$(bash .ci/setup) || { echo "tests/run.sh: stopped: .ci/setup failed (the line above names the step)" >&2; exit 1; }
eval "$setup_env"
echo "kernel:    $NIXBOOT_KERNEL"
echo "modules:   $NIXBOOT_MODULES"
echo "virtiofsd: $NIXBOOT_VIRTIOFSD"

# The guest binaries are static musl executables; the tests boot them.
step "static guest binaries (cargo build --target x86_64-unknown-linux-musl)"
cargo build --release --target x86_64-unknown-linux-musl -p init -p probe-init
step "cargo test --workspace $*"
cargo test --workspace "$@"
# The boot path again on Debian 13's 6.12 kernel (what current NixOS runs: sysfs virtiofs
# tags, overlay data-only layers, virtio/fuse/virtiofs built in): the tests whose outcome
# depends on the guest kernel. Tests that need what one kernel lacks say so in the skip list;
# the ones about the host side (launcher, --exec, libvirt, firmware: UKI, systemd-boot's
# boot counting, the verified disk) run once, on 6.1 (README, "Two kernels"). Each test file
# says which in its `//! Guest kernels:` line (a unit test of qemu-tests makes every file say).
kernel_tests=()
for f in qemu-tests/tests/*.rs; do
  if grep -q '^//! Guest kernels: every ' "$f"; then kernel_tests+=("$(basename "$f" .rs)"); fi
done
if [ ${#kernel_tests[@]} = 0 ]; then
  echo "tests/run.sh: no test file says '//! Guest kernels: every'" >&2
  exit 1
fi
step "cargo test -p qemu-tests on Debian 13's 6.12 kernel: ${kernel_tests[*]}"
NIXBOOT_KERNEL=$NIXBOOT_KERNEL_612 NIXBOOT_MODULES=$NIXBOOT_MODULES_612 \
  cargo test -p qemu-tests "${kernel_tests[@]/#/--test=}" "$@"
step "the README's shell blocks (tests/readme.sh)"
bash tests/readme.sh
