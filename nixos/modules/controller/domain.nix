# Libvirt domain XML of one declarative guest (nixboot.controller.guests.<name>).
#
#   imageless: <kernel>, <initrd> (nixboot's) and <cmdline> from the guest's NixOS
#              configuration; /nix/store (and, with an external kernel, the modules) as
#              virtiofs filesystems, which need shared memory: a memfd memory backing.
#   libvirt:   the per-VM qcow2 overlay whose read-only backing file is the guest's image
#              in the store; grub on the disk boots it. The optional configuration
#              directory is attached as a read-only FAT disk with serial `nixos-config`.
#
# Pure function of its arguments, so that tests can render and validate it.
{ lib, name, guest, controller, virtiofsd }:
let
  inherit (lib) escapeXML concatStrings optionalString mapAttrsToList;

  sys = guest.system.config;
  attr = v: escapeXML (toString v);

  # Deterministic UUID, so that redefining the domain keeps its identity.
  h = builtins.hashString "sha256" "nixboot-guest-${name}";
  uuid = "${builtins.substring 0 8 h}-${builtins.substring 8 4 h}-4${builtins.substring 13 3 h}-a${builtins.substring 17 3 h}-${builtins.substring 20 12 h}";

  kernel =
    if guest.kernel != null then guest.kernel
    else if sys.boot.kernel.enable then "${sys.system.build.kernel}/${sys.system.boot.loader.kernelFile}"
    else sys.nixboot.kernel.externalImage;
  initrd = "${sys.system.build.nixbootInitrd}/${sys.system.boot.loader.initrdFile}";
  cmdline = lib.concatStringsSep " " ([ "init=${sys.system.build.toplevel}/init" ] ++ sys.boot.kernelParams ++ guest.extraKernelParams);

  imageless = guest.mode == "imageless";
  storeTag = sys.nixboot.backends.imageless.storeTag or "store";
  modulesTag = sys.nixboot.backends.imageless.modulesTag or "modules";

  # tag -> { source; readOnly; }
  filesystems =
    lib.optionalAttrs imageless ({ ${storeTag} = { source = "/nix/store"; readOnly = true; }; }
      // lib.optionalAttrs (guest.modulesDir != null) { ${modulesTag} = { source = guest.modulesDir; readOnly = true; }; })
    // lib.mapAttrs (_: s: { inherit (s) source readOnly; }) guest.shares;

  filesystemXml = tag: fs: ''
        <filesystem type='mount' accessmode='passthrough'>
          <driver type='virtiofs' queue='1024'/>
          <binary path='${attr "${virtiofsd}/bin/virtiofsd"}'/>
          <source dir='${attr fs.source}'/>
          <target dir='${attr tag}'/>${optionalString fs.readOnly "\n      <readonly/>"}
        </filesystem>
  '';

  overlay = "${controller.imageDir}/${name}.qcow2";
  backing = "${sys.system.build.nixbootImage}/nixos.qcow2";
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
  ${if imageless then ''
        <kernel>${attr kernel}</kernel>
        <initrd>${attr initrd}</initrd>
        <cmdline>${attr cmdline}</cmdline>
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
          <source file='${attr backing}'/>
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
  ''}${concatStrings (mapAttrsToList filesystemXml filesystems)}    <interface type='network'>
        <source network='${attr controller.network}'/>
        <model type='virtio'/>
      </interface>
      <serial type='pty'>
        <target port='0'/>
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
