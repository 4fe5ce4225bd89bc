//! Arbitrary sets of paths give archives that obey the kernel's unpacking rules.

use std::collections::{BTreeMap, BTreeSet};

use mkinitrd::compress::{self, Compression};
use mkinitrd::cpio::{self, ArchiveBuilder};
use proptest::prelude::*;

/// Paths of 1-4 components from a small alphabet, so that prefixes and shared parents
/// (`a`, `a-b`, `a/b`) happen often.
fn path() -> impl Strategy<Value = String> {
    prop::collection::vec("[ab.\\-_]{1,3}", 1..5)
        .prop_map(|parts| parts.join("/"))
        .prop_filter("no . or .. components", |p| {
            p.split('/').all(|c| c != "." && c != "..")
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn archives_obey_kernel_rules(
        files in prop::collection::btree_map(path(), prop::collection::vec(any::<u8>(), 0..9), 0..24),
        mtime in any::<u32>(),
        zstd in any::<bool>(),
    ) {
        let mut b = ArchiveBuilder::new();
        // Only paths not used as a parent of another path can be files.
        let mut added = BTreeMap::new();
        for (p, data) in &files {
            if b.file(p, 0o644, data.clone()).is_ok() {
                added.insert(p.clone(), data.clone());
            }
        }
        let plain = b.write(mtime);
        prop_assert_eq!(plain.len() % 4, 0);
        let bytes = if zstd { compress::compress(Compression::Zstd, &plain).unwrap() } else { plain };
        let segments = cpio::read_segments(&bytes).unwrap();
        prop_assert_eq!(segments.len(), 1);
        prop_assert!(segments[0].terminated);
        prop_assert!(mkinitrd::inspect::check_rules(&segments).is_empty());
        let entries = &segments[0].entries;

        let mut seen_dirs = BTreeSet::new();
        let mut inos = BTreeSet::new();
        let mut prev: Option<&str> = None;
        for e in entries {
            // Parents first, and only directories as parents.
            if let Some((parent, _)) = e.name.rsplit_once('/') {
                prop_assert!(seen_dirs.contains(parent), "{} before {}", e.name, parent);
            }
            if e.is_dir() {
                seen_dirs.insert(e.name.clone());
                prop_assert_eq!(e.nlink, 2);
            } else {
                // nlink 1: the kernel must not treat two files as hard links.
                prop_assert_eq!(e.nlink, 1);
            }
            prop_assert!(e.ino != 0 && inos.insert(e.ino), "inode {} reused or zero", e.ino);
            prop_assert_eq!(e.mtime, mtime);
            prop_assert_eq!((e.uid, e.gid, e.dev_major, e.dev_minor), (0, 0, 0, 0));
            if let Some(p) = prev {
                prop_assert!(p < e.name.as_str(), "not sorted: {} then {}", p, e.name);
            }
            prev = Some(&e.name);
        }
        // Every added file is there with its data; nothing else but directories.
        let got: BTreeMap<String, Vec<u8>> = entries
            .iter()
            .filter(|e| !e.is_dir())
            .map(|e| (e.name.clone(), e.data.clone()))
            .collect();
        prop_assert_eq!(got, added);
    }
}
