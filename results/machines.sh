#!/usr/bin/env bash
# Measures boots under each machine type and store cache mode, interleaved, with the
# launcher as users run it (docs/machines.md has the results and how they were read).
#   results/machines.sh ROUNDS CONFIG...     CONFIG = KIND:MACHINE:CACHE
#   KIND: probe (host start -> the probe's report in stage 2) or systemd (host start ->
#   the report unit after multi-user.target of qemu_tests::nixos_closure's scripted
#   closure, and the guest's uptime then); MACHINE: pc|q35|microvm; CACHE: the store
#   share's virtiofsd --cache (never|auto|always|metadata).
# NIXBOOT_MACHINES_CPUS: vCPUs per guest (default 1).
# Needs: . ~/.cache/nixboot/env, `cargo static`, `cargo build --release -p nixboot-launcher
# -p mkinitrd`, and the NixOS-shaped store built once by the real_systemd tests.
set -euo pipefail
rounds=$1
shift
root=$(cd "$(dirname "$0")/.." && pwd)
t=${CARGO_TARGET_DIR:-$root/target}
launcher=$t/release/nixboot-qemu mkinitrd=$t/release/mkinitrd
init=$t/x86_64-unknown-linux-musl/release/init probe=$t/x86_64-unknown-linux-musl/release/probe-init
work=$(mktemp -d /tmp/nixboot-machines.XXXXXX)
trap 'rm -rf "$work"' EXIT
logs=${NIXBOOT_MACHINES_LOGS:-$work/logs}  # each boot's console, kept when set
mkdir -p "$logs"
cache=${NIXBOOT_CACHE:-$HOME/.cache/nixboot}
nixos_store=$(ls -d "$cache"/nixos-store/*/store | head -1)
scripted=$(ls -d "$nixos_store"/*-nixos-system-test-scripted)

# The probe's closure: a store holding one path, the probe as its init.
probe_store=$work/probe-store
probe_sys=$probe_store/00000000000000000000000000000000-probe-system
mkdir -p "$probe_sys" && cp "$probe" "$probe_sys/init"

# Each machine's initrd: virtio_pci or virtio_mmio under virtiofs.
for transport in virtio_pci virtio_mmio; do
  "$mkinitrd" --kernel-modules "$NIXBOOT_MODULES" --module "$transport" --module virtiofs \
    --init "$init" -o "$work/initrd-$transport" 2>/dev/null
done

# The store share's cache mode, swapped in for the launcher's choice.
cat >"$work/virtiofsd" <<WRAP
#!/bin/sh
case "\$*" in *"--shared-dir=\$NB_STORE_DIR "*) cache=\$NB_STORE_CACHE ;; *) cache= ;; esac
args=
for a in "\$@"; do
  case \$a in --cache=*) [ -n "\$cache" ] && a=--cache=\$cache ;; esac
  set -- "\$@" "\$a"; shift
done
exec "$NIXBOOT_VIRTIOFSD" "\$@"
WRAP
chmod +x "$work/virtiofsd"

one() { # KIND MACHINE CACHE: prints one result line
  local kind=$1 machine=$2 mode=$3 transport=virtio_pci store closure params marker
  [ "$machine" = microvm ] && transport=virtio_mmio
  case $kind in
    probe) store=$probe_store closure=$probe_sys params= marker="PROBE-RESULT " ;;
    systemd) store=$nixos_store closure=$scripted marker="nixboot-real-systemd:"
      params="systemd.show_status=error systemd.log_target=kmsg systemd.unit=multi-user.target" ;;
  esac
  local t0=$EPOCHREALTIME at=- up=- warn=0 line log=$logs/$kind-$machine-$mode-$r.console
  while IFS= read -r line; do
    printf '%s\n' "$line" >>"$log"
    case $line in
      *"WARNING:"*) warn=$((warn + 1)) ;;
      *"$marker"*)
        [ "$at" = - ] && at=$(echo "$EPOCHREALTIME - $t0" | bc)
        [[ $line =~ multi_user_uptime=([0-9.]+) ]] && up=${BASH_REMATCH[1]} ;;
    esac
  done < <(NB_STORE_DIR=$store NB_STORE_CACHE=$mode nice "$launcher" --closure "$closure" \
    --store "$store" --kernel "$NIXBOOT_KERNEL" --initrd "$work/initrd-$transport" \
    --modules "$NIXBOOT_MODULES" --virtiofsd "$work/virtiofsd" --accel tcg \
    --machine "$machine" --cpus "${NIXBOOT_MACHINES_CPUS:-1}" --timeout "${NIXBOOT_MACHINES_TIMEOUT:-300}" --append "$params" 2>>"$log")
  echo "$kind $machine $mode host_to_marker=$at multi_user_uptime=$up warnings=$warn"
}

for ((r = 1; r <= rounds; r++)); do
  for c in "$@"; do
    IFS=: read -r kind machine mode <<<"$c"
    echo "round $r $(one "$kind" "$machine" "$mode")"
  done
done
