#!/usr/bin/env bash
# Measures mkinitrd --embed-store on a synthetic store (>= 1 GiB, generated under $DIR,
# outside the repository) against `find | cpio -o -H newc | zstd` over the same files:
# peak RSS (/usr/bin/time -v) and wall time. Figures go to results/mkinitrd-streaming.md.
#
#   cargo build --release -p mkinitrd && cargo static
#   bash mkinitrd/examples/streaming-bench.sh [DIR]
set -euo pipefail
DIR=${1:-/tmp/mkinitrd-streaming-bench}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
MKINITRD=$TARGET/release/mkinitrd
INIT=$TARGET/x86_64-unknown-linux-musl/release/init
mkdir -p "$DIR"
cat > "$DIR/gen.py" <<'PY'
# Synthetic store: 240 store paths of many small files (text-like and binary-like),
# 12 large files, ~10% of small files duplicated across paths (hard-linked when
# --optimise, like nix-store --optimise).
import os, random, sys
root = sys.argv[1]
rnd = random.Random(42)
words = [ "".join(rnd.choice("abcdefghijklmnopqrstuvwxyz_") for _ in range(rnd.randint(2,12))) for _ in range(5000)]
def text(n):
    out=[]; size=0
    while size<n:
        w=rnd.choice(words); out.append(w); size+=len(w)+1
    return (" ".join(out))[:n].encode()
def binary(n):
    # half random, half structured: compresses somewhat, like ELF code
    r = os.urandom(n//2)
    return r + bytes((i*7 ^ (i>>5)) & 0xff for i in range(n - n//2))
os.makedirs(root, exist_ok=True)
dups=[]
total=0
for p in range(240):
    sp=os.path.join(root, "%032x-pkg-%d" % (rnd.getrandbits(128), p))
    for d in ("bin","lib","share/doc"):
        os.makedirs(os.path.join(sp,d), exist_ok=True)
    for f in range(250):
        n = int(rnd.lognormvariate(8.5, 1.2))
        n = min(n, 400_000)
        d = rnd.choice(("bin","lib","share/doc"))
        path=os.path.join(sp,d,"f%d" % f)
        if dups and rnd.random() < 0.1:
            src, data = rnd.choice(dups)
            open(path,"wb").write(data)
        else:
            data = text(n) if d=="share/doc" else binary(n)
            open(path,"wb").write(data)
            if len(dups) < 500 and rnd.random() < 0.05: dups.append((path,data))
        total += len(data)
    if p % 20 == 0:
        big = os.path.join(sp,"lib","big.bin")
        n = 70<<20
        with open(big,"wb") as fh:
            for i in range(n // (1<<20)):
                fh.write(binary(1<<20) if i%2 else text(1<<20))
        total += n
print(total)
PY
cat > "$DIR/optimise.py" <<'PY'
# Hard-links identical regular files under a tree, as `nix-store --optimise` does
# (content hash -> one inode). Prints files linked and bytes that became shared.
import hashlib, os, sys
seen = {}
linked = 0; shared = 0
for dirpath, dirs, files in os.walk(sys.argv[1]):
    dirs.sort()
    for f in sorted(files):
        p = os.path.join(dirpath, f)
        st = os.lstat(p)
        if not os.path.isfile(p) or os.path.islink(p) or st.st_size == 0:
            continue
        h = hashlib.sha256(open(p, "rb").read()).hexdigest() + oct(st.st_mode & 0o7777)
        if h in seen:
            first = seen[h]
            if os.stat(first).st_ino != st.st_ino:
                tmp = p + ".optimise-tmp"
                os.link(first, tmp); os.replace(tmp, p)
                linked += 1; shared += st.st_size
        else:
            seen[h] = p
print(f"linked {linked} files, {shared} bytes shared")
PY
[ -d "$DIR/store" ] || python3 "$DIR/gen.py" "$DIR/store"
echo "store: $(du -s --apparent-size --block-size=1 "$DIR/store" | cut -f1) bytes, $(find "$DIR/store" -type f | wc -l) files, largest $(find "$DIR/store" -type f -printf '%s\n' | sort -n | tail -1) bytes"
# Warm the page cache so both sides read from memory.
find "$DIR/store" -type f -print0 | xargs -0 cat > /dev/null

measure() { # label, command...
  local label=$1; shift
  /usr/bin/time -v "$@" 2> "$DIR/time.txt" > /dev/null || { cat "$DIR/time.txt"; exit 1; }
  printf '%s: wall %s, max RSS %s KiB\n' "$label" \
    "$(grep 'Elapsed (wall' "$DIR/time.txt" | awk '{print $NF}')" \
    "$(grep 'Maximum resident' "$DIR/time.txt" | awk '{print $NF}')"
}
run_all() {
  measure "mkinitrd --embed-store (zstd -8, 1 thread)" \
    "$MKINITRD" --init "$INIT" --embed-store --store-dir "$DIR/store" -o "$DIR/mk.img"
  measure "find | cpio -o -H newc | zstd -8 -T1" bash -c \
    "cd '$DIR' && find store | LC_ALL=C sort | cpio -o -H newc --quiet | zstd -8 -T1 -q > '$DIR/cpio.img'"
  echo "sizes: mkinitrd $(stat -c %s "$DIR/mk.img"), cpio+zstd $(stat -c %s "$DIR/cpio.img")"
}
echo "## without hard links"; run_all
python3 "$DIR/optimise.py" "$DIR/store"
echo "## after optimise (hard links)"; run_all
"$MKINITRD" --init "$INIT" --embed-store --store-dir "$DIR/store" --compress none -o "$DIR/mk.cpio" 2>&1 | tail -1
