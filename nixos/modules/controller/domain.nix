# Libvirt domain XML of one declarative guest (nixboot.controller.guests.<name>).
#
#   imageless: <kernel>, <initrd> (nixboot's) and <cmdline> from the guest's NixOS
#              configuration; /nix/store (and, with an external kernel, the modules) as
#              virtiofs filesystems, which need shared memory: a memfd memory backing.
#   libvirt:   the per-VM qcow2 overlay whose read-only backing file is the guest's image
#              in the store; grub on the disk boots it, or (directBoot) the same kernel,
#              nixboot initrd and command line as imageless. The optional configuration
#              directory is attached as a read-only FAT disk with serial `nixos-config`.
#
# Read-only virtiofs: libvirt >= 11 gets `<readonly/>`; older libvirt cannot make virtiofs
# read-only, so the share is attached by the socket of a virtiofsd the controller runs with
# `--readonly` (controller/virtiofsd.nix).
#
# Pure function of plain values (paths as strings), so that tests can render it without
# building anything:
#   guest:      { mode memory vcpus domainType mac consoleLog shares disks configDir }
#               (shares: tag -> { source readOnly }; disks: name -> { serial size
#               logicalBlockSize physicalBlockSize })
#   controller: { imageDir virtiofsdSocketDir interface = { type ("network"|"bridge") source; }; }
#   boot:       { kernel initrd cmdline (null with grub) backing storeTag modulesTag
#               modulesDir virtiofsd (libvirt's virtiofsd binary) }
#   libvirtVersion: of the libvirt that will run the domain ("10.0.0").
{ lib, name, guest, controller, boot, libvirtVersion }:
let
  inherit (lib) escapeXML concatStrings optionalString mapAttrsToList;

  attr = v: escapeXML (toString v);
  vfs = import ./virtiofsd.nix { inherit lib; };
  nativeReadOnly = vfs.nativeReadOnly libvirtVersion;

  # Deterministic UUID, so that redefining the domain keeps its identity.
  h = builtins.hashString "sha256" "nixboot-guest-${name}";
  uuid = "${builtins.substring 0 8 h}-${builtins.substring 8 4 h}-4${builtins.substring 13 3 h}-a${builtins.substring 17 3 h}-${builtins.substring 20 12 h}";

  imageless = guest.mode == "imageless";

  # tag -> { source; readOnly; }
  filesystems = vfs.filesystems {
    inherit imageless; inherit (boot) storeTag modulesTag modulesDir; inherit (guest) shares;
  };

  filesystemXml = tag: fs:
    if fs.readOnly && !nativeReadOnly then ''
          <filesystem type='mount'>
            <driver type='virtiofs' queue='1024'/>
            <source socket='${attr (vfs.socket { socketDir = controller.virtiofsdSocketDir; guest = name; inherit tag; })}'/>
            <target dir='${attr tag}'/>
          </filesystem>
    '' else ''
          <filesystem type='mount' accessmode='passthrough'>
            <driver type='virtiofs' queue='1024'/>
            <binary path='${attr boot.virtiofsd}'/>
            <source dir='${attr fs.source}'/>
            <target dir='${attr tag}'/>${optionalString fs.readOnly "\n      <readonly/>"}
          </filesystem>
    '';

  overlay = "${controller.imageDir}/${name}.qcow2";

  # Block devices in order: the root overlay, the configuration disk, the extra disks.
  letters = lib.stringToCharacters "abcdefghijklmnopqrstuvwxyz";
  fixedDisks = (if imageless then 0 else 1) + (if !imageless && guest.configDir != null then 1 else 0);
  diskNames = lib.sort (a: b: a < b) (lib.attrNames guest.disks);
  diskXml = i: dname:
    let d = guest.disks.${dname}; in ''
          <disk type='file' device='disk'>
            <driver name='qemu' type='qcow2' discard='unmap'/>
            <source file='${attr (diskFile dname)}'/>
            <target dev='vd${builtins.elemAt letters (fixedDisks + i)}' bus='virtio'/>
            <blockio logical_block_size='${toString d.logicalBlockSize}' physical_block_size='${toString d.physicalBlockSize}'/>
            <serial>${attr d.serial}</serial>
          </disk>
    '';
  diskFile = disk: (import ./disks.nix { inherit lib; }).file { inherit (controller) imageDir; guest = name; inherit disk; };

  direct = boot.cmdline != null;
  iface = controller.interface;
in
''
  <domain type='${attr guest.domainType}'>
    <name>${attr name}</name>
    <uuid>${uuid}</uuid>
    <description>nixboot ${attr guest.mode} guest ${attr name}, defined by the controller's NixOS configuration</description>
    <memory unit='MiB'>${toString guest.memory}</memory>
    <currentMemory unit='MiB'>${toString guest.memory}</currentMemory>
    <vcpu placement='static'>${toString guest.vcpus}</vcpu>
  ${optionalString (filesystems != { }) ''
    <memoryBacking>
      <source type='memfd'/>
      <access mode='shared'/>
    </memoryBacking>
  ''}  <os>
      <type arch='x86_64' machine='q35'>hvm</type>
  ${if direct then ''
        <kernel>${attr boot.kernel}</kernel>
        <initrd>${attr boot.initrd}</initrd>
        <cmdline>${attr boot.cmdline}</cmdline>
  '' else ''
        <boot dev='hd'/>
  ''}  </os>
    <features>
      <acpi/>
      <apic/>
    </features>
  ${optionalString (guest.domainType == "kvm") ''
    <cpu mode='host-passthrough'/>
  ''}    <on_poweroff>destroy</on_poweroff>
    <on_reboot>restart</on_reboot>
    <on_crash>destroy</on_crash>
    <devices>
  ${optionalString (!imageless) ''
      <disk type='file' device='disk'>
        <driver name='qemu' type='qcow2' discard='unmap'/>
        <source file='${attr overlay}'/>
        <backingStore type='file'>
          <format type='qcow2'/>
          <source file='${attr boot.backing}'/>
          <backingStore/>
        </backingStore>
        <target dev='vda' bus='virtio'/>
      </disk>
  ''}${optionalString (!imageless && guest.configDir != null) ''
      <disk type='dir' device='disk'>
        <driver name='qemu' type='fat'/>
        <source dir='${attr guest.configDir}'/>
        <target dev='vdb' bus='virtio'/>
        <serial>nixos-config</serial>
        <readonly/>
      </disk>
  ''}${concatStrings (lib.imap0 diskXml diskNames)}${concatStrings (mapAttrsToList filesystemXml filesystems)}    <interface type='${attr iface.type}'>
        <mac address='${attr guest.mac}'/>
        <source ${if iface.type == "bridge" then "bridge" else "network"}='${attr iface.source}'/>
        <model type='virtio'/>
      </interface>
      <serial type='pty'>
        <target port='0'/>${optionalString (guest.consoleLog != null) "\n      <log file='${attr guest.consoleLog}' append='off'/>"}
      </serial>
      <console type='pty'>
        <target type='serial' port='0'/>
      </console>
      <channel type='unix'>
        <target type='virtio' name='org.qemu.guest_agent.0'/>
      </channel>
      <rng model='virtio'>
        <backend model='random'>/dev/urandom</backend>
      </rng>
    </devices>
  </domain>
''
