#!/usr/bin/env bash
# A verified disk: a GPT image with an ESP holding one UKI (EFI/BOOT/BOOTX64.EFI, signed when
# keys are given) and two store slots A and B, the active one holding the closure as a
# dm-verity image (`mkinitrd verity`), the UKI's .cmdline naming it by PARTUUID with its
# root hash and hash offset.
#
#   make-verified-disk.sh --closure RESULT --kernel BZIMAGE --output DISK [options]
#
#   --closure RESULT       the system (a NixOS toplevel, or a directory with an `init`)
#   --store-paths FILE     the closure's store paths, one a line (closureInfo's store-paths)
#   --store-dir DIR        where they are [default: /nix/store; without --store-paths every
#                          entry of DIR is packed]
#   --kernel BZIMAGE       the kernel (an x86 bzImage with an EFI stub)
#   --init PATH            the static init to pack [default: mkinitrd's own]
#   --kernel-modules DIR   one kernel's lib/modules/<version>; --module NAME (repeatable)
#                          [default modules: virtio_pci virtio_blk dm-verity erofs]
#   --cmdline TEXT         the kernel command line before the verity parameters [default:
#                          what `mkinitrd --print-cmdline --closure RESULT` prints]
#   --stub FILE            systemd-stub [default: mkinitrd's, Debian's systemd-boot-efi path]
#   --key KEY --cert CERT  sign the UKI with osslsigncode (both or neither; they must match)
#   --slot A|B             the slot that gets the image and that the UKI boots [default: A]
#   --disk-id TEXT         the seed of the disk's and partitions' GUIDs [default: nixboot]
#   --esp-size MIB         [default: 256]   --slot-size MIB  each store slot [default: the
#                          image's size + 25 %, at least 64]
#   --output DISK          the disk image (a regular file or a new path; replaced atomically)
#
# Environment: MKINITRD (default: mkinitrd on PATH), SOURCE_DATE_EPOCH (default 0: every
# timestamp in the image; the FAT's too, not before 1980-01-01).
#
# Prints `key=value` lines on standard output (root_hash, hash_offset, cmdline, store
# PARTUUIDs, uki_sha256); progress on standard error.
#
# Same inputs give the same bytes: the GUIDs derive from --disk-id, the verity salt from the
# image, the FAT is made with --invariant and a volume id from --disk-id, every file mtime is
# SOURCE_DATE_EPOCH, and with --key the signature's signing time too (osslsigncode -time:
# sbsign takes the clock's, so two disks it signed would differ there; an RSA PKCS#1 v1.5
# signature over the same bytes is the same).
#
# Exit status: 0 on success; 1 when a step fails (one line `make-verified-disk: error: ...`);
# 2 for usage errors. On failure nothing is written: the disk is built in a temporary file
# beside DISK and renamed over it only at the end.
set -euo pipefail

me=make-verified-disk
die() { echo "$me: error: $*" >&2; exit 1; }
usage() { echo "$me: $*" >&2; echo "usage: $me --closure RESULT --kernel BZIMAGE --output DISK [options] (see the script's header)" >&2; exit 2; }
note() { echo "$me: $*" >&2; }

closure= store_paths= store_dir= kernel= init= kmods= cmdline= stub= key= cert= slot=A
disk_id=nixboot esp_mib=256 slot_mib= output= modules=()
while [ $# -gt 0 ]; do
  [ $# -ge 2 ] || usage "$1 needs a value"
  case $1 in
    --closure) closure=$2 ;;
    --store-paths) store_paths=$2 ;;
    --store-dir) store_dir=$2 ;;
    --kernel) kernel=$2 ;;
    --init) init=$2 ;;
    --kernel-modules) kmods=$2 ;;
    --module) modules+=("$2") ;;
    --cmdline) cmdline=$2 ;;
    --stub) stub=$2 ;;
    --key) key=$2 ;;
    --cert) cert=$2 ;;
    --slot) slot=$2 ;;
    --disk-id) disk_id=$2 ;;
    --esp-size) esp_mib=$2 ;;
    --slot-size) slot_mib=$2 ;;
    --output) output=$2 ;;
    *) usage "unknown option $1" ;;
  esac
  shift 2
done
[ -n "$closure" ] || usage "--closure is required"
[ -n "$kernel" ] || usage "--kernel is required"
[ -n "$output" ] || usage "--output is required"
case $slot in A | B) ;; *) usage "--slot is A or B, not '$slot'" ;; esac
[[ $esp_mib =~ ^[1-9][0-9]*$ ]] || usage "--esp-size is a number of MiB, not '$esp_mib'"
[ -z "$slot_mib" ] || [[ $slot_mib =~ ^[1-9][0-9]*$ ]] || usage "--slot-size is a number of MiB, not '$slot_mib'"
{ [ -n "$key" ] && [ -z "$cert" ]; } && usage "--key needs --cert"
{ [ -z "$key" ] && [ -n "$cert" ]; } && usage "--cert needs --key"
[ ${#modules[@]} -eq 0 ] || [ -n "$kmods" ] || usage "--module needs --kernel-modules"

# ---- checks before anything is written ----------------------------------------------------
[ -e "$closure" ] || die "closure $closure does not exist (build the system first: nix build ...toplevel)"
[ -x "$closure/init" ] || die "closure $closure has no executable init"
[ -f "$kernel" ] || die "kernel $kernel is not a file"
[ -z "$store_paths" ] || [ -f "$store_paths" ] || die "store paths file $store_paths does not exist"
if [ -e "$output" ] || [ -L "$output" ]; then
  [ -f "$output" ] && [ ! -L "$output" ] || die "$output exists and is not a regular file: refusing to replace it"
fi
mkinitrd=${MKINITRD:-mkinitrd}
need=("$mkinitrd" sfdisk mkfs.vfat mmd mcopy sha256sum)
[ -z "$key" ] || need+=(osslsigncode sbverify openssl)
for t in "${need[@]}"; do
  command -v "$t" >/dev/null || die "$t not found (install: mkinitrd from nixboot, fdisk, dosfstools, mtools, osslsigncode, sbsigntool, openssl)"
done
if [ -n "$key" ]; then
  # Read whole, not piped to grep -q: with pipefail, grep quitting early fails the pipe.
  signer_help=$(osslsigncode --help 2>&1 || true)
  [[ $signer_help == *'-time <unix-time>'* ]] \
    || die "this osslsigncode cannot set the signing time (no -time option): a newer one can"
  [ -r "$key" ] || die "cannot read key $key"
  [ -r "$cert" ] || die "cannot read certificate $cert"
  kpub=$(openssl pkey -in "$key" -pubout 2>/dev/null) || die "$key is not a private key openssl reads"
  cpub=$(openssl x509 -in "$cert" -noout -pubkey 2>/dev/null) || die "$cert is not an X.509 certificate openssl reads"
  [ "$kpub" = "$cpub" ] || die "key $key does not match certificate $cert (their public keys differ)"
fi
epoch=${SOURCE_DATE_EPOCH:-0}
[[ $epoch =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH=$epoch is not a number of seconds"
export SOURCE_DATE_EPOCH=$epoch

# A GUID from the disk id and a name: the first 16 bytes of a SHA-256, as a version 4
# (random-looking) GUID, so that the same --disk-id always names the same partitions.
guid() {
  local h
  h=$(printf '%s' "nixboot-verified-disk:$disk_id:$1" | sha256sum | cut -c1-32)
  printf '%s-%s-4%s-%x%s-%s' "${h:0:8}" "${h:8:4}" "${h:13:3}" $(( (0x${h:16:1} & 3) | 8 )) "${h:17:3}" "${h:20:12}"
}
disk_guid=$(guid disk)
esp_guid=$(guid esp)
a_guid=$(guid store-a)
b_guid=$(guid store-b)
if [ "$slot" = A ]; then active_guid=$a_guid; else active_guid=$b_guid; fi

# ---- temporaries: beside the output (same file system for the rename), removed on exit -----
outdir=$(dirname -- "$output")
[ -d "$outdir" ] || die "directory $outdir does not exist"
work=$(mktemp -d "$outdir/.$me.XXXXXX") || die "cannot create a temporary directory in $outdir"
trap 'rm -rf -- "$work"' EXIT
trap 'exit 1' INT TERM HUP

# ---- the verity image -------------------------------------------------------------------
vargs=(verity --closure "$closure" --output "$work/store.verity")
[ -z "$store_paths" ] || vargs+=(--store-paths "$store_paths")
[ -z "$store_dir" ] || vargs+=(--store-dir "$store_dir")
note "mkinitrd ${vargs[*]}"
root_hash=$("$mkinitrd" "${vargs[@]}" 2>"$work/verity.log") || die "mkinitrd verity failed: $(cat "$work/verity.log")"
cat "$work/verity.log" >&2
[[ $root_hash =~ ^[0-9a-f]{64}$ ]] || die "mkinitrd verity printed '$root_hash', not a root hash"
hash_offset=$(sed -n 's/.*hash offset \([0-9]*\),.*/\1/p' "$work/verity.log")
[ -n "$hash_offset" ] || die "mkinitrd verity did not say its hash offset"
"$mkinitrd" verity-check --root-hash "$root_hash" --hash-offset "$hash_offset" "$work/store.verity" >&2 \
  || die "the verity image does not check against its own root hash"
image_bytes=$(stat -c %s "$work/store.verity")

# ---- the UKI ------------------------------------------------------------------------------
if [ -z "$cmdline" ]; then
  cmdline=$("$mkinitrd" --closure "$closure" --print-cmdline) || die "mkinitrd --print-cmdline failed"
fi
cmdline="$cmdline nixboot.verity.store=PARTUUID=$active_guid nixboot.verity.roothash=$root_hash nixboot.verity.hashoffset=$hash_offset"
[ ${#modules[@]} -gt 0 ] || modules=(virtio_pci virtio_blk dm-verity erofs)
uargs=(--closure "$closure" --uki "$work/uki.efi" --linux "$kernel" --cmdline "$cmdline")
[ -z "$init" ] || uargs+=(--init "$init")
[ -z "$stub" ] || uargs+=(--stub "$stub")
if [ -n "$kmods" ]; then
  uargs+=(--kernel-modules "$kmods")
  for m in "${modules[@]}"; do uargs+=(--module "$m"); done
fi
note "mkinitrd ${uargs[*]}"
"$mkinitrd" "${uargs[@]}" >&2 || die "mkinitrd --uki failed"
if [ -n "$key" ]; then
  # Authenticode as sbsign makes it, with the signing time SOURCE_DATE_EPOCH; sbverify (the
  # Secure Boot tools' own checker) then checks it against the certificate.
  osslsigncode sign -key "$key" -certs "$cert" -h sha256 -time "$epoch" \
    -in "$work/uki.efi" -out "$work/uki.signed" >"$work/sign.log" 2>&1 \
    || die "osslsigncode failed: $(cat "$work/sign.log")"
  sbverify --cert "$cert" "$work/uki.signed" >/dev/null 2>&1 || die "sbverify does not accept the signed UKI"
  mv "$work/uki.signed" "$work/uki.efi"
fi
uki_bytes=$(stat -c %s "$work/uki.efi")

# ---- the ESP: FAT, fixed volume id, every timestamp SOURCE_DATE_EPOCH ------------------
esp_kib=$((esp_mib * 1024))
# FAT, directories and the file's own clusters: refuse before mcopy does with a vaguer error.
if [ $((uki_bytes / 1024 + 512)) -gt "$esp_kib" ]; then
  die "no room in the ESP: the UKI is $uki_bytes bytes, the ESP $esp_mib MiB (--esp-size)"
fi
volid=$(printf '%s' "$disk_id" | sha256sum | cut -c1-8)
mkfs.vfat --invariant -i "$volid" -n ESP -C "$work/esp.img" "$esp_kib" >"$work/mkfs.log" 2>&1 \
  || die "mkfs.vfat failed: $(cat "$work/mkfs.log")"
# FAT cannot say a time before 1980 (nixpkgs' stdenv uses 315532800, that very second).
fat_epoch=$epoch
[ "$fat_epoch" -ge 315532800 ] || fat_epoch=315532800
touch -d "@$fat_epoch" "$work/uki.efi"
export MTOOLS_SKIP_CHECK=1
SOURCE_DATE_EPOCH=$fat_epoch mmd -i "$work/esp.img" ::/EFI ::/EFI/BOOT 2>"$work/mtools.log" || die "mmd failed: $(cat "$work/mtools.log")"
# -m: the file's mtime (SOURCE_DATE_EPOCH); mtools 4.0.32 stamps directories with it too.
SOURCE_DATE_EPOCH=$fat_epoch mcopy -m -i "$work/esp.img" "$work/uki.efi" ::/EFI/BOOT/BOOTX64.EFI 2>"$work/mtools.log" \
  || die "no room in the ESP? mcopy failed: $(cat "$work/mtools.log")"

# ---- the disk: GPT, ESP at 1 MiB, then A and B of one size --------------------------------
if [ -z "$slot_mib" ]; then
  slot_mib=$(( (image_bytes * 5 / 4 + (1 << 20) - 1) >> 20 ))
  [ "$slot_mib" -ge 64 ] || slot_mib=64
fi
[ $((slot_mib << 20)) -ge "$image_bytes" ] || die "the store image ($image_bytes bytes) does not fit a slot of $slot_mib MiB (--slot-size)"
total_mib=$((1 + esp_mib + 2 * slot_mib + 1))
truncate -s "${total_mib}M" "$work/disk.img"
sfdisk --quiet --no-reread --no-tell-kernel "$work/disk.img" >"$work/sfdisk.log" 2>&1 <<EOF || die "sfdisk failed: $(cat "$work/sfdisk.log")"
label: gpt
label-id: $disk_guid
first-lba: 2048
start=2048, size=$((esp_mib * 2048)), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$esp_guid, name="ESP"
size=$((slot_mib * 2048)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=$a_guid, name="nixboot-store-a"
size=$((slot_mib * 2048)), type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=$b_guid, name="nixboot-store-b"
EOF
dd if="$work/esp.img" of="$work/disk.img" bs=1M seek=1 conv=notrunc status=none
if [ "$slot" = A ]; then seek=$((1 + esp_mib)); else seek=$((1 + esp_mib + slot_mib)); fi
dd if="$work/store.verity" of="$work/disk.img" bs=1M seek="$seek" conv=notrunc status=none

# ---- in place, atomically ------------------------------------------------------------------
if [ -e "$output" ] && [ ! -f "$output" ]; then die "$output became something other than a regular file"; fi
mv -f -- "$work/disk.img" "$output"
note "wrote $output ($total_mib MiB: ESP $esp_mib MiB with a ${key:+signed }UKI of $uki_bytes bytes, slots A and B of $slot_mib MiB each, slot $slot holds the store image of $image_bytes bytes)"
cat <<EOF
root_hash=$root_hash
hash_offset=$hash_offset
slot=$slot
store_a=PARTUUID=$a_guid
store_b=PARTUUID=$b_guid
cmdline=$cmdline
uki_sha256=$(sha256sum "$work/uki.efi" | cut -c1-64)
EOF
