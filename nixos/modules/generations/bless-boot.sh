# nixboot-bless-boot: marks the booted entry good once nixboot-boot-health.target is
# reached, as systemd-bless-boot does (NixOS 24.05 ships neither it nor its generator):
# systemd-boot told us in LoaderBootCountPath which counted entry it booted
# (`\loader\entries\ID+LEFT[-DONE].conf`); renaming it to `ID.conf` ends its counting.
#
# Environment: ESP (its mount point), EFIVARS (default /sys/firmware/efi/efivars).
# Exit 0: blessed, or nothing to do (no counter: booted without counting, or already
# blessed). Exit 1 with one message: the entry is not where the variable says.
set -euo pipefail

var=${EFIVARS:-/sys/firmware/efi/efivars}/LoaderBootCountPath-4a67b082-0a4c-41cf-b6c7-440b29bb8c4f
[ -f "$var" ] || { echo "nixboot-bless-boot: no LoaderBootCountPath: nothing to bless"; exit 0; }
# 4 bytes of attributes, then UTF-16LE, NUL-terminated; the path is ASCII.
path=$(tail -c +5 "$var" | tr -d '\000' | tr '\\' /)
name=${path##*/}
dir=$ESP/${path%/*}; dir=${dir//\/\//\/}
good=$(printf '%s\n' "$name" | sed -n 's/^\(.*\)+[0-9][0-9]*\(-[0-9][0-9]*\)\{0,1\}\.conf$/\1.conf/p')
[ -n "$good" ] || { echo "nixboot-bless-boot: $name carries no counter: nothing to bless"; exit 0; }
if [ ! -f "$dir/$name" ]; then
  [ -f "$dir/$good" ] && { echo "nixboot-bless-boot: $good already blessed"; exit 0; }
  echo "nixboot-bless-boot: $dir/$name (from LoaderBootCountPath) does not exist" >&2
  exit 1
fi
mv "$dir/$name" "$dir/$good"
sync "$dir" 2>/dev/null || sync
echo "nixboot-bless-boot: $name -> $good"
