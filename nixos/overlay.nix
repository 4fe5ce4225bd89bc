# `overlays.default` of the flake: `pkgs.nixboot.{init,mkinitrd,nixboot-qemu}`.
# The NixOS modules use these when the overlay is applied, and build the same expressions
# themselves otherwise.
final: prev: {
  nixboot = import ./packages { pkgs = final; };
}
