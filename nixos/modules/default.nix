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
    ./user.nix
    ./mounts/shares.nix
    ./mounts/storage.nix
  ];
}
