//! Whatever the writer accepts, the reader gives back exactly, in every compression: the
//! input is cut into (path, contents) pairs at NUL bytes, the first byte picks the
//! compression and the mtime comes from the next four.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mkinitrd::compress::{self, Compression};
use mkinitrd::cpio::{self, ArchiveBuilder, Node};

fuzz_target!(|data: &[u8]| {
    if data.len() < 5 {
        return;
    }
    let c = Compression::ALL[data[0] as usize % Compression::ALL.len()];
    let mtime = u32::from_le_bytes([data[1], data[2], data[3], data[4]]);
    let mut b = ArchiveBuilder::new();
    let mut parts = data[5..].split(|x| *x == 0);
    while let (Some(path), Some(body)) = (parts.next(), parts.next()) {
        let Ok(path) = std::str::from_utf8(path) else {
            continue;
        };
        let node = match body.first() {
            Some(b'l') => Node::Symlink {
                target: String::from_utf8_lossy(&body[1..]).into_owned(),
            },
            Some(b'd') => Node::Dir { perm: 0o755 },
            _ => Node::File {
                perm: 0o644,
                data: body.to_vec(),
            },
        };
        // Refusals (bad paths, conflicts) are fine; panics are not.
        let _ = b.add(path, node);
    }
    let plain = b.write(mtime);
    assert_eq!(plain.len() % 4, 0);
    let bytes = compress::compress(c, &plain).unwrap();
    let segs = cpio::read_segments(&bytes).unwrap();
    assert_eq!(segs.len(), 1);
    assert!(segs[0].terminated);
    assert!(segs[0].problems.is_empty());
    // The only rule our own archives may break: early microcode placed by a caller in a
    // compressed archive, where the kernel's early loader does not look.
    let microcode = b
        .iter()
        .any(|(p, n)| p.starts_with("kernel/x86/microcode/") && !matches!(n, Node::Dir { .. }));
    let violations = mkinitrd::inspect::check_rules(&segs);
    assert!(
        violations.is_empty() || (microcode && c != Compression::None),
        "{violations:?}"
    );
    let got: Vec<(String, Node)> = segs[0]
        .entries
        .iter()
        .map(|e| {
            let node = match e.file_type() {
                cpio::S_IFDIR => Node::Dir {
                    perm: e.mode & 0o7777,
                },
                cpio::S_IFLNK => Node::Symlink {
                    target: String::from_utf8(e.data.clone()).unwrap(),
                },
                _ => Node::File {
                    perm: e.mode & 0o7777,
                    data: e.data.clone(),
                },
            };
            assert_eq!(e.mtime, mtime);
            (e.name.clone(), node)
        })
        .collect();
    let want: Vec<(String, Node)> = b.iter().map(|(p, n)| (p.to_owned(), n.clone())).collect();
    assert_eq!(got, want);
});
