//! `mkinitrd verity` and `mkinitrd verity-check`: reproducible images, veritysetup (the
//! oracle, cryptsetup-bin) agrees with our tree, a changed image is reported clearly.

mod common;

use std::fs;
use std::path::Path;

use common::*;

/// A small store: two store paths, a file spanning several blocks, a symlink.
fn store(parent: &Path) -> std::path::PathBuf {
    let store = parent.join("store");
    let a = store.join("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-data");
    fs::create_dir_all(a.join("share")).unwrap();
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    fs::write(a.join("share/big"), big).unwrap();
    fs::write(a.join("small"), "small\n").unwrap();
    let b = store.join("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-system");
    fs::create_dir_all(&b).unwrap();
    std::os::unix::fs::symlink(
        "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-data",
        b.join("data"),
    )
    .unwrap();
    store
}

fn build(store: &Path, out: &Path, extra: &[&str]) -> (String, String) {
    let (ok, stdout, stderr) = run(mkinitrd()
        .arg("verity")
        .arg("--store-dir")
        .arg(store)
        .arg("-o")
        .arg(out)
        .args(extra));
    assert!(ok, "{stderr}");
    (stdout.trim().to_string(), stderr)
}

/// `hash offset N` from the summary line.
fn hash_offset(stderr: &str) -> u64 {
    let at = stderr.find("hash offset ").expect(stderr) + "hash offset ".len();
    stderr[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn verity_images_are_reproducible_and_veritysetup_agrees() {
    if !have("mkfs.erofs", "--help") || !have("veritysetup", "--version") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path());
    let (one, two) = (tmp.path().join("one.img"), tmp.path().join("two.img"));
    let (root, stderr) = build(&store, &one, &[]);
    let (root2, _) = build(&store, &two, &[]);
    assert_eq!(root.len(), 64, "{root}");
    assert_eq!(root, root2);
    assert!(
        fs::read(&one).unwrap() == fs::read(&two).unwrap(),
        "not byte-identical"
    );
    let offset = hash_offset(&stderr);
    assert!(
        stderr.contains(&format!(
            "nixboot.verity.roothash={root} nixboot.verity.hashoffset={offset}"
        )),
        "{stderr}"
    );

    // veritysetup reads our superblock and tree and checks them against the root hash.
    let (ok, out, err) = run(std::process::Command::new("veritysetup")
        .arg("verify")
        .arg(&one)
        .arg(&one)
        .arg(&root)
        .arg(format!("--hash-offset={offset}")));
    assert!(ok, "veritysetup verify: {out}{err}");
    // And computes the same root from the data alone, with the salt we chose.
    let (ok, out, err) = run(std::process::Command::new("veritysetup")
        .arg("dump")
        .arg(&one)
        .arg(format!("--hash-offset={offset}")));
    assert!(ok, "{err}");
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_string())
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    let (salt, blocks) = (field("Salt:"), field("Data blocks:"));
    let data = tmp.path().join("data");
    let bytes = fs::read(&one).unwrap();
    fs::write(&data, &bytes[..offset as usize]).unwrap();
    let (ok, out, err) = run(std::process::Command::new("veritysetup")
        .arg("format")
        .arg(&data)
        .arg(tmp.path().join("theirs.hash"))
        .arg(format!("--salt={salt}"))
        .arg(format!("--data-blocks={blocks}")));
    assert!(ok, "{err}");
    assert!(out.contains(&root), "veritysetup format: {out}");

    let (ok, _, err) = run(mkinitrd()
        .arg("verity-check")
        .arg("--root-hash")
        .arg(&root)
        .arg(&one));
    assert!(ok, "{err}");
    assert!(err.contains("matches its root hash"), "{err}");
}

#[test]
fn verity_check_names_what_does_not_match() {
    if !have("mkfs.erofs", "--help") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let store = store(tmp.path());
    let img = tmp.path().join("store.img");
    let (root, stderr) = build(&store, &img, &["--salt", "00ff"]);
    assert!(stderr.contains("salt 00ff"), "{stderr}");
    let offset = hash_offset(&stderr) as usize;
    let good = fs::read(&img).unwrap();
    let check = |bytes: &[u8], root: &str| {
        let p = tmp.path().join("changed.img");
        fs::write(&p, bytes).unwrap();
        run(mkinitrd()
            .arg("verity-check")
            .arg("--root-hash")
            .arg(root)
            .arg(&p))
    };
    // One flipped byte in the data: the tree no longer matches it.
    let mut changed = good.clone();
    changed[offset / 2] ^= 1;
    let (ok, _, err) = check(&changed, &root);
    assert!(!ok);
    assert!(
        err.contains("the hash tree does not match the data: hash block"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    // Another root hash than the image's.
    let mut other = root.clone().into_bytes();
    other[0] = if other[0] == b'0' { b'1' } else { b'0' };
    let other = String::from_utf8(other).unwrap();
    let (ok, _, err) = check(&good, &other);
    assert!(!ok);
    assert!(
        err.contains(&format!(
            "root hash {other} does not match the image's {root}"
        )),
        "{err}"
    );
    // A cut-off tree, and no superblock at all.
    let (ok, _, err) = check(&good[..good.len() - 4096], &root);
    assert!(!ok && err.contains("cut short"), "{err}");
    let (ok, _, err) = check(&good[..offset], &root);
    assert!(!ok && err.contains("no verity superblock"), "{err}");
    // Bad input to the command itself: exit 1 with one line, or a usage error (2).
    let (ok, _, err) = check(&good, "xyz");
    assert!(!ok && err.contains("not 64 hex digits"), "{err}");
    let out = mkinitrd()
        .args(["verity", "--store-dir", "/nonexistent", "-o"])
        .arg(tmp.path().join("never.img"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!tmp.path().join("never.img").exists());
    let out = mkinitrd()
        .args(["verity", "--salt", "abc", "-o", "x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
