# Development profile of a test guest: storage, NVMe/SCSI, I/O load, NFS, tracing and
# everyday tools, as the seed's profiles.devel (its packages missing from nixpkgs 24.05:
# xnvme, nfstest, pynfs, libbpf-tools, damo, cpupower as a package of its own).
{ config, lib, pkgs, ... }:
let
  cfg = config.nixboot.profiles.devel;
in
{
  imports = [ ../core.nix ];

  options.nixboot.profiles.devel.enable =
    lib.mkEnableOption "the development profile: storage, NVMe, I/O, NFS, tracing and debugging tools";

  config = lib.mkIf cfg.enable {
    programs.bash.enableCompletion = true;
    environment.systemPackages = with pkgs; [
      # storage and filesystems
      btrfs-progs e2fsprogs f2fs-tools lvm2 mdadm parted xfsdump xfsprogs
      # NVMe and SCSI
      libnvme nvme-cli sg3_utils
      # I/O load
      fio libaio liburing stress-ng
      # NFS
      nfs-utils
      # tracing
      bcc blktrace bpftrace trace-cmd config.boot.kernelPackages.perf strace ltrace gdb
      # monitoring
      htop iotop lsof numactl sysstat dmidecode
      # fstests/blktests/selftests runtime needs
      acl attr keyutils libcap libseccomp quota
      # everyday
      bc ethtool file gawk git iproute2 jq kmod pciutils tmux usbutils util-linux vim python3
    ];
  };
}
