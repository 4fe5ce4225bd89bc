# The flake's `nixosModules`. Each module can be imported alone (each imports core.nix, which
# the module system imports only once); `default` imports them all.
{
  backends = {
    imageless = ./backends/imageless.nix;
    libvirt = ./backends/libvirt.nix;
  };
  baremetal = ./baremetal;
  generations = ./generations;
  profiles = {
    controller = ./profiles/controller.nix;
    devel = ./profiles/devel.nix;
    build-tools = ./profiles/build-tools.nix;
    monitoring = ./profiles/monitoring.nix;
  };
  # The controller's per-guest state (ssh host keys, results), with the controller profile.
  controller.guestState = ./controller/guest-state.nix;
  # kdevops-style guests: ssh for the controller, extra disks by serial, loop.
  guest = ./guest;
  # nixboot.testSuites.<name> (each with the options they share, testSuites/common.nix); `default`: all.
  testSuites = {
    default = ./testSuites;
    fstests = ./testSuites/fstests.nix;
    blktests = ./testSuites/blktests.nix;
    ltp = ./testSuites/ltp.nix;
    selftests = ./testSuites/selftests.nix;
    mmtests = ./testSuites/mmtests.nix;
    pynfs = ./testSuites/pynfs.nix;
    sysbench = ./testSuites/sysbench.nix;
    gitr = ./testSuites/gitr.nix;
  };
  user = ./user.nix;
  verified = ./verified.nix;
  mounts = {
    shares = ./mounts/shares.nix;
    storage = ./mounts/storage.nix;
  };
  default = ./default.nix;
}
