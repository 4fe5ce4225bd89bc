# Every nixboot module: the whole `nixboot.*` option tree, nothing enabled.
# (flake output `nixosModules.default`)
{
  imports = [
    ./core.nix
    ./backends/imageless.nix
    ./backends/libvirt.nix
    ./baremetal
    ./profiles/controller.nix
    ./user.nix
    ./verified.nix
    ./mounts/shares.nix
    ./mounts/storage.nix
  ];
}
