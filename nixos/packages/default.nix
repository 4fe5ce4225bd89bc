# The packages built from this repository's Rust workspace (Cargo.toml + Cargo.lock at the
# repository root). Used by flake.nix (`packages`, `overlays.default`) and, when the overlay
# is not applied, as the defaults of the `nixboot.packages.*` options.
#
#   init          the PID 1 of the initramfs: static, linked against musl (pkgsStatic)
#   mkinitrd      the packer; its default `--init` is `${init}/bin/init`
#   nixboot-qemu  the QEMU + virtiofsd launcher (crate nixboot-launcher)
#
# The workspace and its locked dependencies need Rust >= 1.85 (edition 2024 crates): nixpkgs
# 25.05 or newer. The flake builds these with its own nixpkgs and hands them to the modules,
# whatever nixpkgs the machine itself uses.
{ pkgs, lib ? pkgs.lib }:
let
  minRust = "1.85";
  rustTooOld = lib.versionOlder pkgs.rustc.version minRust;
  src = import ./source.nix { inherit lib; };
  version = (lib.importTOML ../../Cargo.toml).workspace.package.version;
  lockFile = ../../Cargo.lock;

  # One crate of the workspace. The crates' own tests need kernels, QEMU and root; they run
  # in the repository's CI (`cargo test`), not inside the Nix sandbox.
  workspaceCrate = rustPlatform: { pname, package, meta, ... }@args:
    rustPlatform.buildRustPackage (builtins.removeAttrs args [ "package" ] // {
      inherit version src;
      cargoLock = { inherit lockFile; };
      cargoBuildFlags = [ "-p" package ] ++ (args.cargoBuildFlags or [ ]);
      doCheck = false;
      meta = {
        homepage = "https://example.invalid/nixboot";
        license = lib.licenses.mit;
        platforms = lib.platforms.linux;
      } // meta;
    });

  init = workspaceCrate pkgs.pkgsStatic.rustPlatform {
    pname = "nixboot-init";
    package = "init";
    meta = {
      description = "Static PID 1 for the initramfs: modules, bounded waits, virtiofs/tmpfs/block roots, switch_root";
      mainProgram = "init";
    };
  };

  mkinitrd = workspaceCrate pkgs.rustPlatform {
    pname = "nixboot-mkinitrd";
    package = "mkinitrd";
    # Baked into the binary: what `--init` defaults to.
    NIXBOOT_DEFAULT_INIT = "${init}/bin/init";
    passthru = { inherit init; };
    meta = {
      description = "Packs the nixboot init, its configuration and kernel modules into a reproducible initramfs";
      mainProgram = "mkinitrd";
    };
  };

  nixboot-qemu = workspaceCrate pkgs.rustPlatform {
    pname = "nixboot-qemu";
    package = "nixboot-launcher";
    cargoBuildFlags = [ "--bin" "nixboot-qemu" ];
    nativeBuildInputs = [ pkgs.makeWrapper ];
    # QEMU and virtiofsd are found on PATH / through NIXBOOT_VIRTIOFSD; the caller's own
    # settings win.
    postInstall = ''
      wrapProgram $out/bin/nixboot-qemu \
        --suffix PATH : ${lib.makeBinPath [ pkgs.qemu_kvm ]} \
        --set-default NIXBOOT_VIRTIOFSD ${pkgs.virtiofsd}/bin/virtiofsd
    '';
    meta = {
      description = "Boots a NixOS closure (result/boot.json) in QEMU with /nix/store over virtiofs";
      mainProgram = "nixboot-qemu";
    };
  };
  warn = lib.warnIf rustTooOld
    "nixboot: this nixpkgs has rustc ${pkgs.rustc.version}; building nixboot needs >= ${minRust} (nixpkgs 25.05 or newer)";
in
warn {
  inherit init mkinitrd nixboot-qemu;
}
