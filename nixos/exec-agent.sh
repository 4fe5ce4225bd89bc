# nixboot's command agent for systemd guests (`nixboot-qemu --exec CMD`), run by bash as
# the nixboot-exec unit after multi-user.target (nixos/modules/backends/imageless.nix).
# Reads the command from `nixboot.exec=BASE64` on the kernel command line, runs it as root
# with a login shell (`bash -l -c`), its stdout and stderr on the virtio-serial ports
# nixboot.exec.stdout/.stderr, writes `started` and `exit=N` on nixboot.exec.status, then
# powers the guest off. The formats are protocol/src/exec.rs's (the launcher writes them).
# With `nixboot.tty=ROWS,COLS,TERM` (`nixboot-qemu --shell`) the command runs on a
# pseudo-terminal made by util-linux's `script`, whose other side is the stdout port, read
# and written (the user's keys come in on it).
# Needs: bash, coreutils (base64, sleep), systemctl; util-linux (script) for --shell.
set -u
# Test hooks (qemu-tests/tests/exec.rs runs this script on the host against plain files).
cmdline=${NIXBOOT_EXEC_CMDLINE:-/proc/cmdline}
ports_dir=${NIXBOOT_EXEC_PORTS:-/sys/class/virtio-ports}
dev_dir=${NIXBOOT_EXEC_DEV:-/dev}
poweroff() { ${NIXBOOT_EXEC_POWEROFF:-systemctl poweroff --no-block}; }

# Its own lines go to the console (the unit's stderr), with the uptime.
# Builtins only where it can: every program started is slow in an emulated guest.
say() {
  local up _
  read -r up _ </proc/uptime
  echo "nixboot-exec-agent: [$up] $*" >&2
}

encoded= cwd= tty=
read -r -a words <"$cmdline"
for w in "${words[@]}"; do
  case $w in
    nixboot.exec=*) encoded=${w#nixboot.exec=} ;;
    # --share-cwd: nixboot's init mounted the host's directory there.
    nixboot.cwd=*) cwd=$(printf '%s' "${w#nixboot.cwd=}" | base64 -d) || cwd= ;;
    nixboot.tty=*) tty=${w#nixboot.tty=} ;;
  esac
done
if [ -z "$encoded" ]; then
  say "no nixboot.exec= on the kernel command line; nothing to run"
  exit 0
fi
if ! command=$(printf '%s' "$encoded" | base64 -d); then
  say "nixboot.exec= is not base64: $encoded"
  exit 1
fi

# The port's device, found by name in sysfs (what udev's /dev/virtio-ports/NAME links
# point to), waited for up to 30 s: virtio_console may still be loading.
port() {
  local d name
  for d in "$ports_dir"/*; do
    name=
    read -r name <"$d/name" 2>/dev/null
    if [ "$name" = "$1" ]; then
      echo "$dev_dir/${d##*/}"
      return 0
    fi
  done
  return 1
}
for ((i = 0; i < 300; i++)); do
  out=$(port nixboot.exec.stdout) && err=$(port nixboot.exec.stderr) &&
    status=$(port nixboot.exec.status) && break
  sleep 0.1
done
if [ -z "${status:-}" ] || [ -z "${err:-}" ] || [ -z "${out:-}" ]; then
  say "the virtio-serial ports nixboot.exec.* are not there (is virtio_console loaded, and did QEMU get the ports?)"
  poweroff
  exit 1
fi

say "ports $out $err $status; running the command"
exec 3>"$status"
echo started >&3
if [ -n "$cwd" ] && cd "$cwd"; then :; else cd /root 2>/dev/null || cd /; fi
env_root() {
  env -i HOME=/root USER=root LOGNAME=root SHELL="$(command -v bash)" TERM="$1" \
    PATH=/run/wrappers/bin:/run/current-system/sw/bin:/usr/bin:/bin:/usr/sbin:/sbin "${@:2}"
}
if [ -n "$tty" ]; then
  IFS=, read -r rows cols term <<<"$tty"
  # One open of the port for both directions: a virtio port has one opener at a time.
  # script: -e its status is the command's; -c runs through $SHELL -c, here bash.
  exec 4<>"$out"
  # shellcheck disable=SC2016 # expanded by the shell that script starts
  env_root "${term:-dumb}" NIXBOOT_TTY="rows ${rows:-24} cols ${cols:-80}" NIXBOOT_COMMAND="$command" \
    script -q -e -f -c 'stty $NIXBOOT_TTY; c=$NIXBOOT_COMMAND; unset NIXBOOT_TTY NIXBOOT_COMMAND; exec bash -l -c "$c"' \
    /dev/null <&4 >&4 2>"$err"
  rc=$?
  exec 4>&-
else
  env_root dumb bash -l -c "$command" </dev/null >"$out" 2>"$err"
  rc=$?
fi
echo "exit=$rc" >&3
exec 3>&-
say "the command exited with status $rc; powering off"
poweroff
