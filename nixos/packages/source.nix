# The Rust workspace of this repository, filtered to what cargo needs, so that editing the
# NixOS modules or the docs does not rebuild the binaries (and `target/` is never copied).
{ lib }:
let
  root = ../..;
  # Top-level entries cargo needs: the workspace manifest, its lock file, the cargo config
  # and every workspace member (see Cargo.toml `members`).
  keep = [ "Cargo.toml" "Cargo.lock" ".cargo" "protocol" "init" "mkinitrd" "launcher" "bench" "qemu-tests" "tests" ];
in
lib.cleanSourceWith {
  name = "nixboot-source";
  src = root;
  filter = path: type:
    let
      rel = lib.removePrefix (toString root + "/") (toString path);
      top = builtins.head (lib.splitString "/" rel);
    in
    builtins.elem top keep
    && !(lib.hasSuffix ".swp" rel)
    && !(type == "directory" && builtins.baseNameOf rel == "target");
}
