#!@BUSYBOX@ sh
# nixboot-bench's stage 2: run by stamp.c (the /sbin/init of the shared root, or the `init`
# of a store path for the imageless guests of the scale run), or itself that init when no C
# compiler was found. Every initrd under test hands over to it.
#
# "Stage 2 reached" is a line written to the kernel log first thing (by stamp.c, else
# here), whose timestamp is on the same clock as the kernel's "Run /init as init process"
# (the kernel log's clock, in microseconds). /proc/uptime is read next (CLOCK_BOOTTIME, the
# clock of the init's own timings, in centiseconds); then, at the moment /proc/uptime
# ticks, a second kernel-log line measures the offset between the two clocks to about a
# millisecond.
# It prints one `PROBE-RESULT {json}` line on the console and powers off.
#   bench.dmesg on the command line: also print the whole kernel log (for digging).
#   bench.trace: also print the ftrace buffer (with ftrace=... on the command line).
#   bench.conscost: also time writing 20 log lines like the init's (1.4 kB) to the serial
#                console, against the same loop writing to /dev/null.
#   bench.hold:  do not power off (the scale run samples host memory, then kills QEMU).
[ "$1" = nixboot-bench-stamped ] || echo "nixboot-bench: stage 2" > /dev/kmsg
if [ -r /proc/uptime ]; then
  read -r up _ < /proc/uptime
else
  @BUSYBOX@ mount -t proc proc /proc
  read -r up _ < /proc/uptime
fi
bb=@BUSYBOX@
if [ ! -e /dev/console ]; then
  $bb mount -t devtmpfs devtmpfs /dev
  echo "nixboot-bench: stage 2 (no /dev/kmsg before)" > /dev/kmsg
fi
n=0
while [ $n -lt 1000 ]; do
  read -r tick _ < /proc/uptime
  [ "$tick" != "$up" ] && break
  n=$((n + 1))
done
echo "nixboot-bench: uptime ticked to $tick" > /dev/kmsg
# systemd (dracut) leaves stdio on /dev/null: write to the serial port ourselves (also
# when an experiment moved /dev/console elsewhere with console=tty0).
out=/dev/console
[ -c /dev/ttyS0 ] && out=/dev/ttyS0
exec < $out > $out 2>&1
read -r cmdline < /proc/cmdline
case " $cmdline " in
  *" bench.conscost "*)
    for out in /dev/null /dev/console /dev/null /dev/console; do
      echo "nixboot-bench: lines to $out" > /dev/kmsg
      i=0
      while [ $i -lt 20 ]; do
        echo "nixboot: [  2.123456] load-module: virtio_pci_modern_dev loaded (4.7 ms)"
        i=$((i + 1))
      done > $out
      echo "nixboot-bench: lines done" > /dev/kmsg
    done ;;
esac
klog=$($bb dmesg)
stamp() {
  echo "$klog" | $bb sed -n "s/^\[ *\([0-9.]*\)\] $1.*/\1/p" | $bb head -n 1
}
run_init=$(stamp 'Run \/init as init process')
mark=$(stamp 'nixboot-bench: stage 2')
tick_at=$(stamp 'nixboot-bench: uptime ticked')
timings=null
[ -r /run/nixboot/timings.json ] && timings=$($bb tr -d '\n' < /run/nixboot/timings.json)
case " $cmdline " in
  *" bench.conscost "*) echo "$klog" | $bb grep -E 'nixboot-bench: lines' ;;
esac
case " $cmdline " in
  *" bench.dmesg "*) echo "BENCH-DMESG-BEGIN"; echo "$klog"; echo "BENCH-DMESG-END" ;;
esac
case " $cmdline " in
  *" bench.trace "*)
    [ -r /sys/kernel/tracing/trace ] || $bb mount -t tracefs tracefs /sys/kernel/tracing
    echo "BENCH-TRACE-BEGIN"; $bb cat /sys/kernel/tracing/trace; echo "BENCH-TRACE-END" ;;
esac
# Loglevel 1: no kernel message lands in the middle of the report line (see probe-init).
echo 1 > /proc/sys/kernel/printk
echo "PROBE-RESULT {\"stage2\":${mark:-null},\"run_init\":${run_init:-null},\"uptime\":$up,\"tick_uptime\":${tick:-null},\"tick_klog\":${tick_at:-null},\"timings\":$timings}"
case " $cmdline " in
  *" bench.hold "*) $bb sleep 3600 ;;
esac
$bb poweroff -f
