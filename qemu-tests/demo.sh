#!/usr/bin/env bash
# The main job on a built-in default: build an initrd with mkinitrd for Debian's cloud
# kernel, make a small demo closure in a store directory (busybox plus an `init` script),
# boot it in QEMU with /nix/store and /lib/modules over virtiofs, and show the console.
#
#   bash qemu-tests/demo.sh            # boots, prints what stage 2 sees, powers off
#   bash qemu-tests/demo.sh --shell    # same, then an interactive busybox shell (exit to stop)
#   bash qemu-tests/demo.sh --verbose  # the kernel's whole log too (about 530 lines)
#
# By default the kernel prints only errors (loglevel=4 on its command line): what shows is
# nixboot's own lines, stage 2's output and the launcher's summary.
set -euo pipefail
cd "$(dirname "$0")/.."

shell=0 verbose=0
for arg in "$@"; do
  case $arg in
    --shell) shell=1 ;;
    --verbose) verbose=1 ;;
    -h|--help) sed -n '2,12s/^# \{0,1\}//p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown argument '$arg' (expected --shell, --verbose, --help)" >&2; exit 2 ;;
  esac
done

say() { printf '\n=== demo: %s\n' "$*" >&2; }

say "1/4 prerequisites (.ci/setup: QEMU, virtiofsd, Debian's cloud kernel; cached after the first run)"
setup_env=$(bash .ci/setup) || { echo "demo.sh: stopped: .ci/setup failed (the line above names the step)" >&2; exit 1; }
eval "$setup_env"
say "2/4 building the init, the probe, mkinitrd and nixboot-qemu (cargo; minutes on a first run)"
cargo build --release --target x86_64-unknown-linux-musl -p init -p probe-init
cargo build --release -p mkinitrd -p nixboot-launcher

work=${NIXBOOT_DEMO_DIR:-${NIXBOOT_CACHE:-$HOME/.cache/nixboot}/demo}
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

say "3/4 the initrd (mkinitrd) and a demo closure in $store"
target/release/mkinitrd --closure "$store/${sys#/nix/store/}" -o "$work/initrd" \
  --kernel-modules "$NIXBOOT_MODULES"

append=()
[ "$verbose" = 1 ] || append+=(loglevel=4)
[ "$shell" = 1 ] && append+=(nixboot.demo_shell)
say "4/4 booting in QEMU; leave the console any time with Ctrl-A then x"
exec target/release/nixboot-qemu --kernel "$NIXBOOT_KERNEL" --initrd "$work/initrd" \
  --closure "$store/${sys#/nix/store/}" --store "$store" --modules "$NIXBOOT_MODULES" \
  --timeout "${NIXBOOT_DEMO_TIMEOUT:-300}" ${append[@]+--append "${append[*]}"}
