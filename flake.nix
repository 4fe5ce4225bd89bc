{
  description = "nixboot: a static Rust PID 1 for the initramfs, its packer mkinitrd, and NixOS modules for imageless, libvirt, baremetal and controller machines";

  # No flake.lock is committed: `nix` resolves nixpkgs by this URL (and writes a lock file
  # in your checkout the first time). The Rust workspace needs rustc >= 1.85, hence 25.05;
  # the modules are evaluated offline against 24.05 by nixos/tests/eval and use nothing
  # that changed in between.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-25.05";

  outputs = { self, nixpkgs }:
    let
      lib = nixpkgs.lib;
      # The init is x86_64-only so far (and so are the tests).
      systems = [ "x86_64-linux" ];
      forAllSystems = lib.genAttrs systems;
      nixbootFor = system: import ./nixos/packages { pkgs = nixpkgs.legacyPackages.${system}; };

      # Every exported module also brings this flake's binaries (built with its nixpkgs, whose
      # Rust is new enough) as the defaults of nixboot.packages, whichever nixpkgs the machine
      # uses. Keyed, so that importing several of the modules defines them once.
      flakePackages = {
        key = "nixboot-flake#packages";
        imports = [
          ({ lib, pkgs, ... }:
            let p = self.packages.${pkgs.stdenv.hostPlatform.system} or null; in {
              config = lib.mkIf (p != null) {
                nixboot.packages = lib.mkDefault {
                  inherit (p) init mkinitrd;
                  launcher = p.nixboot-qemu;
                };
              };
            })
        ];
      };
      withFlakePackages = module: {
        key = "nixboot-flake#${toString module}";
        imports = [ module flakePackages ];
      };
    in
    {
      # pkgs.nixboot.{init,mkinitrd,nixboot-qemu}
      overlays.default = import ./nixos/overlay.nix;

      packages = forAllSystems (system:
        let p = nixbootFor system; in {
          inherit (p) init mkinitrd nixboot-qemu;
          default = p.mkinitrd;
        });

      apps = forAllSystems (system: {
        nixboot-qemu = {
          type = "app";
          program = "${self.packages.${system}.nixboot-qemu}/bin/nixboot-qemu";
        };
        mkinitrd = {
          type = "app";
          program = "${self.packages.${system}.mkinitrd}/bin/mkinitrd";
        };
      });

      # backends.imageless, backends.libvirt, baremetal, generations, profiles.controller, user,
      # mounts.shares, mounts.storage, default (all of them; nothing enabled)
      nixosModules = lib.mapAttrsRecursive (_: withFlakePackages) (import ./nixos/modules/module-list.nix);

      templates = {
        imageless = {
          path = ./nixos/templates/imageless;
          description = "Imageless NixOS guest: tmpfs root, /nix/store over virtiofs, nixboot's initrd";
        };
        libvirt = {
          path = ./nixos/templates/libvirt;
          description = "Libvirt NixOS guest: qcow2 image, ext4 root, grub, first-boot specialisation";
        };
        default = self.templates.imageless;
      };

      # One example machine per mode (see nixos/examples); the docs build and boot them.
      nixosConfigurations = import ./nixos/examples {
        inherit (nixpkgs.lib) nixosSystem;
        modules = self.nixosModules;
      };

      # `nix flake check` evaluates every mode (the properties of nixos/tests/eval.nix),
      # validates the controller's domain XML with virt-xml-validate, and builds the
      # binaries. The example systems themselves are evaluated, not built.
      checks = forAllSystems (system:
        let
          pkgs = nixpkgs.legacyPackages.${system};
          results = import ./nixos/tests/eval.nix {
            inherit lib;
            examples = self.nixosConfigurations;
            inherit (nixpkgs.lib) nixosSystem;
            modules = self.nixosModules;
            flake = self;
            # Pure evaluation cannot read .drv files; nixos/tests/eval does.
            readDrvs = false;
          };
          report = mode: r: pkgs.runCommandLocal "nixboot-eval-${mode}"
            { facts = builtins.unsafeDiscardStringContext (lib.concatMapStrings (f: "ok ${mode}: ${f}\n") r.facts); }
            ''printf '%s' "$facts" | tee $out'';
        in
        lib.mapAttrs report results // {
          controller-xml = pkgs.runCommandLocal "nixboot-controller-xml"
            {
              nativeBuildInputs = [ pkgs.libvirt ];
              passAsFile = [ "guests" ];
              guests = lib.concatStrings (lib.mapAttrsToList (n: x: "${n}\n${builtins.replaceStrings [ "\n" ] [ " " ] x}\n") results.controller.xml);
            } ''
            while read -r name && read -r xml; do
              printf '%s\n' "$xml" > "$name.xml"
              virt-xml-validate "$name.xml" domain
            done < "$guestsPath"
            touch $out
          '';
          inherit (self.packages.${system}) init mkinitrd nixboot-qemu;
        });
    };
}
