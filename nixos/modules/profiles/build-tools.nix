# Build tools on a test guest: what builds test suites and kernel-style code in place
# (autotools, compiler, headers), as the seed's profiles.build-tools.
{ config, lib, pkgs, ... }:
let
  cfg = config.nixboot.profiles.build-tools;
in
{
  imports = [ ../core.nix ];

  options.nixboot.profiles.build-tools.enable =
    lib.mkEnableOption "build tools: autotools, compiler, make, flex, bison, bc, openssl, elfutils";

  config = lib.mkIf cfg.enable {
    environment.systemPackages = with pkgs; [
      autoconf automake libtool pkg-config gnumake gcc binutils
      flex bison bc openssl elfutils perl
    ];
  };
}
