//! The bytes of one fixed image are pinned: a refactoring of the writer (the streaming
//! writer among them) must keep images byte for byte identical for the same inputs.
//!
//! The hashes were computed with the in-memory writer (before streaming) and must not be
//! updated unless the image format is changed on purpose.

mod common;

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::process::Command;

use common::*;

/// Compressible but not trivial, `n` bytes long, the same on every host.
fn pattern(n: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..n)
        .map(|i| {
            // A xorshift, mixed with a slow ramp so that the data compresses.
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            if i % 7 == 0 {
                (x >> 24) as u8
            } else {
                (i / 1000) as u8
            }
        })
        .collect()
}

/// The fixed input: a static init, the fake modules, a small store (files, an executable,
/// an empty file, a file larger than one lz4 block, symlinks, nested directories) and an
/// include at a fixed destination. Nothing of the temporary directory's path is packed.
fn fixed_input(tmp: &Path) -> Command {
    let store = tmp.join("store");
    let a = store.join("aaaa-hello-1.0");
    fs::create_dir_all(a.join("bin")).unwrap();
    fs::create_dir_all(a.join("share/doc/hello")).unwrap();
    fs::write(a.join("bin/hello"), pattern(70_000, 1)).unwrap();
    fs::set_permissions(a.join("bin/hello"), fs::Permissions::from_mode(0o555)).unwrap();
    fs::write(a.join("share/doc/hello/README"), b"hello, world\n").unwrap();
    fs::write(a.join("share/doc/hello/empty"), b"").unwrap();
    symlink("hello", a.join("bin/hi")).unwrap();
    let b = store.join("bbbb-data-2");
    fs::create_dir_all(&b).unwrap();
    fs::write(b.join("big.bin"), pattern(9 << 20, 2)).unwrap();
    fs::write(b.join("odd"), pattern(4099, 3)).unwrap();
    symlink(
        "/nix/store/aaaa-hello-1.0/bin/hello",
        store.join("cccc-link"),
    )
    .unwrap();
    let extra = tmp.join("extra.conf");
    fs::write(&extra, b"key = value\n").unwrap();

    let mut c = mkinitrd();
    c.arg("--init")
        .arg(static_init(tmp))
        .arg("--kernel-modules")
        .arg(fake_modules(tmp, "6.1.0-99-test"))
        .arg("--include")
        .arg(format!("{}:/etc/extra.conf", extra.display()))
        .arg("--embed-store")
        .arg("--store-dir")
        .arg(&store);
    c
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum (coreutils) must be installed");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned()
}

#[test]
fn image_bytes_are_pinned() {
    let tmp = tempfile::tempdir().unwrap();
    let pinned: &[(&str, &str)] = &[
        (
            "zstd",
            "7a29d1eb3a594d072c4e2400d3c9cb90f672cde80cfe37bce13865166454d135",
        ),
        (
            "gzip",
            "049027cc933c022bc5d3a3be08c678c246b098aa1370fa06fc5bdc74c127bbee",
        ),
        (
            "xz",
            "bb8b2fa9e511272b39cf927b653d0cc65a340e09ddaaac63b6351b7a0ee7664c",
        ),
        (
            "lz4",
            "2d7e75e3fa95becc5973376a432934a38f2a78aaa4936c934e6c6043e678fda6",
        ),
        (
            "none",
            "5138529f6848a65b276527127e4c83f4ceabd98fa2d1becb891973b1517bc877",
        ),
    ];
    let mut got = Vec::new();
    for (method, _) in pinned {
        let out = tmp.path().join(format!("initrd.{method}"));
        let (ok, _, err) = run(fixed_input(&tmp.path().join(method))
            .args(["--compress", method, "-o"])
            .arg(&out));
        assert!(ok, "{err}");
        got.push((*method, sha256(&out)));
    }
    let expected: Vec<(&str, String)> = pinned.iter().map(|(m, h)| (*m, (*h).to_owned())).collect();
    assert_eq!(got, expected);
}
