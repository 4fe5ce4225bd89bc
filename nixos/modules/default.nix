# Every nixboot module: the whole `nixboot.*` option tree, nothing enabled.
# (flake output `nixosModules.default`)
{
  imports = [
    ./core.nix
    ./backends/imageless.nix
    ./backends/libvirt.nix
    ./baremetal
    ./generations
    ./profiles/controller.nix
    ./profiles/devel.nix
    ./profiles/build-tools.nix
    ./profiles/monitoring.nix
    ./controller/guest-state.nix
    ./guest
    ./testSuites
    ./user.nix
    ./verified.nix
    ./mounts/shares.nix
    ./mounts/storage.nix
  ];
}
