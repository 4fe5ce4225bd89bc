//! Any bytes given to `mkinitrd inspect`: the reader (every segment, every compression) and
//! the rule checks must never panic, hang or allocate without bound; what they accept must
//! be self-consistent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mkinitrd::compress::Compression;

/// Far above any input libFuzzer makes, far below its memory limit.
const LIMIT: usize = 16 << 20;

fuzz_target!(|data: &[u8]| {
    let Ok(report) = mkinitrd::inspect::inspect_limited(data, LIMIT) else {
        return;
    };
    // The listing renders every entry.
    let text = report.to_string();
    assert_eq!(
        text.lines().filter(|l| l.starts_with("segment ")).count(),
        report.segments.len()
    );
    for seg in &report.segments {
        assert!(seg.offset < data.len());
        assert!(seg.stored_len <= data.len() - seg.offset);
        if seg.compression == Compression::None {
            assert_eq!(seg.offset % 4, 0);
        }
    }
    // The rules are a pure function of the segments.
    assert_eq!(
        mkinitrd::inspect::check_rules(&report.segments),
        report.violations
    );
    // Safe names never leave the extraction directory.
    for e in report.segments.iter().flat_map(|s| &s.entries) {
        if let Some(rel) = mkinitrd::extract::safe_relative(&e.name) {
            assert!(rel.is_relative());
            assert!(rel
                .components()
                .all(|c| matches!(c, std::path::Component::Normal(_))));
        }
    }
});
