#!/usr/bin/env bash
# The main job on a built-in default: build an initrd with mkinitrd for Debian's cloud
# kernel, make a small demo closure in a store directory (busybox plus an `init` script),
# boot it in QEMU with /nix/store and /lib/modules over virtiofs, and show the console.
#
#   bash qemu-tests/demo.sh            # boots, prints what stage 2 sees, powers off
#   bash qemu-tests/demo.sh --shell    # same, then an interactive busybox shell (exit to stop)
set -euo pipefail
cd "$(dirname "$0")/.."

shell=0
[ "${1:-}" = "--shell" ] && shell=1

eval "$(bash .ci/setup)"
cargo build --quiet --release --target x86_64-unknown-linux-musl -p init -p probe-init
cargo build --quiet --release -p mkinitrd -p nixboot-launcher

work=${NIXBOOT_DEMO_DIR:-$HOME/.cache/nixboot/demo}
store=$work/store
rm -rf "$store" && mkdir -p "$store"

# Store path names follow Nix's shape: 32 characters of Nix's base32, a dash, a name.
bb=/nix/store/b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0-busybox-static
sys=/nix/store/d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1d1-nixboot-demo-system
mkdir -p "$store/${bb#/nix/store/}/bin" "$store/${sys#/nix/store/}"
cp /bin/busybox "$store/${bb#/nix/store/}/bin/busybox"
for applet in $(/bin/busybox --list); do
  [ "$applet" = busybox ] || ln -s busybox "$store/${bb#/nix/store/}/bin/$applet"
done
cat > "$store/${sys#/nix/store/}/init" <<SCRIPT
#!$bb/bin/sh
# Stage 2 of the demo system: show what the initrd handed over, then power off.
export PATH=$bb/bin
echo
echo "=== nixboot demo: stage 2 is running as PID \$\$"
echo "kernel:   \$(uname -r)"
echo "cmdline:  \$(cat /proc/cmdline)"
echo "argv:     \$0 \$*"
echo "--- what the initrd mounted"
grep -E ' / | /nix/store | /lib/modules | /proc | /sys | /dev | /run ' /proc/self/mountinfo | awk '{print \$5, \$9, \$6}'
echo "--- modules loaded by the initrd"
cut -d' ' -f1 /proc/modules | sort | tr '\n' ' '; echo
echo "--- /run/nixboot/timings.json"
cat /run/nixboot/timings.json 2>/dev/null || echo "(none)"
echo "--- uptime: \$(cut -d' ' -f1 /proc/uptime) s"
if grep -q nixboot.demo_shell /proc/cmdline; then
  echo "=== interactive shell: type exit (or Ctrl-D) to power off"
  setsid cttyhack sh
fi
echo "=== demo done, powering off"
poweroff -f
SCRIPT
chmod 755 "$store/${sys#/nix/store/}/init"

target/release/mkinitrd --closure "$store/${sys#/nix/store/}" -o "$work/initrd" \
  --kernel-modules "$NIXBOOT_MODULES"

append=()
[ "$shell" = 1 ] && append=(--append nixboot.demo_shell)
exec target/release/nixboot-qemu --kernel "$NIXBOOT_KERNEL" --initrd "$work/initrd" \
  --closure "$store/${sys#/nix/store/}" --store "$store" --modules "$NIXBOOT_MODULES" \
  --timeout "${NIXBOOT_DEMO_TIMEOUT:-300}" "${append[@]}"
