#!/usr/bin/env bash
# Runs every ```sh and ```bash block of README.md, in order, each in a fresh
# `bash -euo pipefail` from the repository root, so the README cannot drift from the code.
# Called by tests/run.sh; `bash tests/readme.sh --list` shows the blocks and what is done
# with each. A block is run as written; the runner reads HTML comments on the line before
# it (blank lines allowed in between):
#   <!-- readme-test: skip REASON -->   not run; "README.md:LINE: REASON" goes to the skip
#                                       list (NIXBOOT_SKIP_LEDGER) that tests/run.sh prints
#   <!-- readme-test: closure -->       run with CLOSURE and STORE naming a tiny closure
#                                       made here: a store directory holding a system whose
#                                       init is the static probe (qemu-tests/probe), with a
#                                       boot.json (bootspec v1); the block's output (the
#                                       guest's whole console: no loglevel= is given) must
#                                       not hold a kernel `WARNING:`
# The blocks see none of .ci/setup's variables: a block that needs them gets them itself,
# as a reader would. Each block is bounded by NIXBOOT_README_TIMEOUT seconds (default 900).
# Exit status: 0 every block that ran passed, 1 one failed (named with its line).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
list_only=0
[ "${1:-}" = --list ] && list_only=1

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# Splits README.md into $tmp/block-N.sh; one "N LINE DIRECTIVE" line per block on stdout.
awk -v dir="$tmp" '
  /^<!-- readme-test: / { d = $0; sub(/^<!-- readme-test: /, "", d); sub(/ *-->.*$/, "", d); next }
  !inblock && /^```(sh|bash)[[:space:]]*$/ { inblock = 1; n++; f = dir "/block-" n ".sh";
      printf "" > f; print n, NR + 1, (d == "" ? "run" : d); d = ""; next }
  inblock && /^```/ { inblock = 0; close(f); next }
  inblock { print > f; next }
  /[^[:space:]]/ { d = "" }
' README.md > "$tmp/index"

# The tiny closure of the `closure` directive: the probe as init, a boot.json naming it,
# busybox as its sw/bin/sh.
make_closure() {
  local probe="${CARGO_TARGET_DIR:-$root/target}/x86_64-unknown-linux-musl/release/probe-init"
  [ -x "$probe" ] || cargo build --release --target x86_64-unknown-linux-musl -p probe-init >&2
  local name=r3adm3r3adm3r3adm3r3adm3r3adm3rr-readme-system
  mkdir -p "$tmp/store/$name"
  cp "$probe" "$tmp/store/$name/init"
  # A shell for the command-mode block (the init runs `sw/bin/sh -l -c CMD` of a closure
  # without an agent): Debian's static busybox.
  mkdir -p "$tmp/store/$name/sw/bin"
  cp "$(command -v busybox)" "$tmp/store/$name/sw/bin/busybox"
  for t in sh uname echo cat; do ln -sf busybox "$tmp/store/$name/sw/bin/$t"; done
  cat > "$tmp/store/$name/boot.json" <<JSON
{"org.nixos.bootspec.v1": {"init": "/nix/store/$name/init", "kernelParams": [],
 "label": "readme test", "system": "x86_64-linux", "toplevel": "/nix/store/$name"}}
JSON
  echo "$tmp/store/$name"
}

failed=0 ran=0 skipped=0
# Files the blocks write into the repository root (`-o initrd`) are removed afterwards.
leftovers=()
[ -e initrd ] || leftovers+=(initrd)
trap 'rm -rf "$tmp" ${leftovers[@]+"${leftovers[@]}"}' EXIT
while read -r n line directive; do
  what="README.md:$line"
  case $directive in
    skip\ *|skip)
      reason=${directive#skip}; reason=${reason# }
      echo "readme: $what: skip (${reason:-no reason given})"
      skipped=$((skipped + 1))
      if [ "$list_only" = 0 ] && [ -n "${NIXBOOT_SKIP_LEDGER:-}" ]; then
        echo "readme $what: ${reason:-no reason given}" >> "$NIXBOOT_SKIP_LEDGER"
      fi
      continue ;;
    run|closure) ;;
    *) echo "readme: $what: unknown readme-test directive '$directive'"; failed=1; continue ;;
  esac
  echo "readme: $what: $directive: $(head -c 200 "$tmp/block-$n.sh" | grep -v '^#' | head -n1)"
  [ "$list_only" = 0 ] || continue
  extra=()
  if [ "$directive" = closure ]; then
    c=$(make_closure)
    extra=(CLOSURE="$c" STORE="$tmp/store")
  fi
  start=$SECONDS
  # A clean environment but for what a shell has (PATH, HOME, ...): not .ci/setup's
  # variables, which the block must get itself.
  if env -u NIXBOOT_KERNEL -u NIXBOOT_MODULES -u NIXBOOT_VIRTIOFSD ${extra[@]+"${extra[@]}"} \
      timeout "${NIXBOOT_README_TIMEOUT:-900}" bash -euo pipefail "$tmp/block-$n.sh" </dev/null \
      2>&1 | tee "$tmp/out-$n"; then
    if [ "$directive" = closure ] && grep -n 'WARNING:' "$tmp/out-$n"; then
      echo "readme: $what: FAILED: the kernel printed a WARNING (above) during a normal boot"
      failed=1
      continue
    fi
    echo "readme: $what: ok ($((SECONDS - start)) s)"
    ran=$((ran + 1))
  else
    rc=$?
    echo "readme: $what: FAILED (exit $rc after $((SECONDS - start)) s): the block starting at README.md line $line"
    failed=1
  fi
done < "$tmp/index"
echo "readme: $ran block(s) ran, $skipped skipped, $([ "$failed" = 0 ] && echo "no failure" || echo "FAILURES above")"
exit "$failed"
