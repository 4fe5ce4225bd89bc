//! Any bytes as the start of a disk (superblocks, GPT/MBR, a dm-verity superblock) and of a
//! binary (ELF loader):
//! never a panic, never an allocation the input can make huge. Run with -max_len=70000 so
//! inputs reach btrfs's superblock at 64 KiB.
#![no_main]

use init::block::probe::{self as blockdev, slice_reader};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(fs) = blockdev::probe_fs(&mut slice_reader(data)) {
        let c = blockdev::Candidate {
            fs: Some(fs),
            ..Default::default()
        };
        let _ = blockdev::describe(&c);
    }
    let _ = blockdev::probe_table(&mut slice_reader(data));
    let _ = init::elf::interpreter(data);
    // What the init reads at nixboot.verity.hashoffset: what parses encodes back the same.
    if let Ok(sb) = nixboot_protocol::verity::Superblock::parse(data) {
        let again = nixboot_protocol::verity::Superblock::parse(&sb.encode());
        assert_eq!(again.as_ref(), Ok(&sb));
    }
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = blockdev::uevent_devname(text);
        let _ = blockdev::parse_dev(text);
    }
});
