//! Hard-linked files of an embedded store (as `nix-store --optimise` leaves identical
//! files) are packed once, as a newc link group written the way GNU cpio writes it: every
//! member has the group's inode number and nlink, the last one carries the data. Read back
//! by mkinitrd's reader, extracted by GNU cpio and by `mkinitrd inspect --extract` (which
//! follows the kernel's rules) as hard links with the right contents.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use mkinitrd::cpio::{self, Entry};

const SHARED: &str = "shared library contents\n";

/// A store where `lib.so` is one inode under three names in two store paths, plus a file
/// whose second link is outside the store (so it is no group in the archive). `linked`
/// false: the same tree with independent copies.
fn store(root: &Path, linked: bool) -> PathBuf {
    let store = root.join("store");
    for dir in ["aaaa-a/lib", "bbbb-b/lib", "bbbb-b/share"] {
        fs::create_dir_all(store.join(dir)).unwrap();
    }
    let first = store.join("aaaa-a/lib/lib.so");
    fs::write(&first, SHARED.repeat(4000)).unwrap();
    for other in ["bbbb-b/lib/lib.so", "bbbb-b/share/copy"] {
        if linked {
            fs::hard_link(&first, store.join(other)).unwrap();
        } else {
            fs::copy(&first, store.join(other)).unwrap();
        }
    }
    let lonely = store.join("aaaa-a/lonely");
    fs::write(&lonely, b"one name in the store").unwrap();
    fs::hard_link(&lonely, root.join("outside-link")).unwrap();
    store
}

fn build(root: &Path, store: &Path) -> (PathBuf, String) {
    let out = root.join("initrd.cpio");
    let (ok, _, err) = run(mkinitrd()
        .arg("--init")
        .arg(static_init(root))
        .arg("--embed-store")
        .arg("--store-dir")
        .arg(store)
        .args(["--compress", "none", "-o"])
        .arg(&out));
    assert!(ok, "{err}");
    (out, err)
}

fn entry<'a>(entries: &'a [Entry], name: &str) -> &'a Entry {
    entries
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("{name} missing"))
}

#[test]
fn hard_links_are_one_group_with_the_data_on_the_last() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, stderr) = build(tmp.path(), &store(tmp.path(), true));
    let entries = cpio::read_archive(&fs::read(&out).unwrap()).unwrap();
    // Archive order is byte order of the names.
    let group = [
        "nix/store/aaaa-a/lib/lib.so",
        "nix/store/bbbb-b/lib/lib.so",
        "nix/store/bbbb-b/share/copy",
    ];
    let ino = entry(&entries, group[0]).ino;
    for (i, name) in group.iter().enumerate() {
        let e = entry(&entries, name);
        assert_eq!((e.ino, e.nlink), (ino, 3), "{name}");
        let last = i == group.len() - 1;
        assert_eq!(
            e.data.len(),
            if last { SHARED.len() * 4000 } else { 0 },
            "{name}"
        );
    }
    // No other entry has that inode number; the file linked outside the store is plain.
    assert_eq!(entries.iter().filter(|e| e.ino == ino).count(), 3);
    let lonely = entry(&entries, "nix/store/aaaa-a/lonely");
    assert_eq!(
        (lonely.nlink, lonely.data.as_slice()),
        (1, &b"one name in the store"[..])
    );
    let saved = (SHARED.len() * 4000 * 2).to_string();
    assert!(
        stderr.contains(&format!("{saved} bytes saved by hard links")),
        "{stderr}"
    );

    // The same tree without links: bigger by the two copies' data.
    let plain_dir = tmp.path().join("plain");
    fs::create_dir(&plain_dir).unwrap();
    let (plain, _) = build(&plain_dir, &store(&plain_dir, false));
    let (a, b) = (
        fs::metadata(&out).unwrap().len(),
        fs::metadata(&plain).unwrap().len(),
    );
    assert_eq!(b - a, 2 * SHARED.len() as u64 * 4000, "{a} vs {b}");
}

/// Checks an extracted tree: the group is one inode with the contents.
fn assert_extracted(dir: &Path, who: &str) {
    let names = [
        "aaaa-a/lib/lib.so",
        "bbbb-b/lib/lib.so",
        "bbbb-b/share/copy",
    ];
    let inodes: Vec<u64> = names
        .iter()
        .map(|n| {
            let p = dir.join("nix/store").join(n);
            assert_eq!(
                fs::read_to_string(&p).unwrap(),
                SHARED.repeat(4000),
                "{who}: {n}"
            );
            fs::metadata(&p).unwrap().ino()
        })
        .collect();
    assert!(inodes.iter().all(|i| *i == inodes[0]), "{who}: {inodes:?}");
    assert_eq!(
        fs::metadata(dir.join("nix/store").join(names[0]))
            .unwrap()
            .nlink(),
        3,
        "{who}"
    );
}

#[test]
fn gnu_cpio_and_the_kernel_rules_extract_links() {
    let tmp = tempfile::tempdir().unwrap();
    let (out, _) = build(tmp.path(), &store(tmp.path(), true));

    let ours = tmp.path().join("ours");
    let (ok, _, err) = run(mkinitrd()
        .arg("inspect")
        .arg("--extract")
        .arg(&ours)
        .arg(&out));
    assert!(ok, "{err}");
    assert_extracted(&ours, "mkinitrd inspect --extract");

    if !have("cpio", "--version") {
        return;
    }
    let gnu = tmp.path().join("gnu");
    fs::create_dir(&gnu).unwrap();
    let status = Command::new("cpio")
        .args(["-idm", "--quiet", "-H", "newc", "-F"])
        .arg(&out)
        .current_dir(&gnu)
        .status()
        .unwrap();
    assert!(status.success());
    assert_extracted(&gnu, "GNU cpio");
}
