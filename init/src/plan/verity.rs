//! The dm-verity store (`nixboot.verity.*`): one step, after the root, in place of any store
//! share or embedded-store copy. Incomplete options are refused here, before anything is
//! done: a boot asked to be verified never goes on unverified.

use super::{PlanError, Step, NEW_ROOT};
use crate::cmdline::{BlockSpec, Options};
use crate::verity::options::Source;
use nixboot_protocol::verity::BLOCK;

const CHECK: &str = "give all three: nixboot.verity.store=DEVICE|/path/in/initrd \
                     nixboot.verity.roothash=HEX nixboot.verity.hashoffset=BYTES, as \
                     `mkinitrd verity` printed them";

pub fn plan(opts: &Options) -> Result<Option<Step>, PlanError> {
    let v = &opts.verity;
    if !v.asked() {
        return Ok(None);
    }
    let refuse = |error: String| PlanError {
        error,
        check: CHECK.into(),
    };
    let Some(source) = v.store.clone() else {
        return Err(refuse(
            "nixboot.verity.roothash= or hashoffset= without nixboot.verity.store=: \
             no image to verify"
                .into(),
        ));
    };
    let Some(root_hash) = v.root_hash else {
        return Err(refuse(format!(
            "nixboot.verity.store={source} without a valid nixboot.verity.roothash= \
             (64 hex digits): the store would not be verified"
        )));
    };
    let Some(hash_offset) = v.hash_offset else {
        return Err(refuse(format!(
            "nixboot.verity.store={source} without nixboot.verity.hashoffset=: \
             where the hash tree is is not known"
        )));
    };
    if hash_offset == 0 || hash_offset & (u64::from(BLOCK) - 1) != 0 {
        return Err(refuse(format!(
            "nixboot.verity.hashoffset={hash_offset} is not a positive multiple of {BLOCK} \
             (the image's data is whole {BLOCK}-byte blocks)"
        )));
    }
    if let Source::Block(BlockSpec::Other(o)) = &source {
        return Err(refuse(format!(
            "nixboot.verity.store={o}: this form of device name is not supported \
             (LABEL=, UUID=, PARTUUID=, PARTLABEL=, /dev/NAME, MAJ:MIN are)"
        )));
    }
    Ok(Some(Step::MountVerity {
        source,
        root_hash,
        hash_offset,
        check: v.check,
        timeout: opts.timeout,
        target: format!("{NEW_ROOT}/nix/store"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmdline::parse;
    use crate::verity::options::Check;
    use std::time::Duration;

    fn hash() -> String {
        "0f".repeat(32)
    }

    #[test]
    fn a_complete_set_is_one_step() {
        let o = parse(&format!(
            "nixboot.verity.store=LABEL=store nixboot.verity.roothash={} \
             nixboot.verity.hashoffset=40960 rd.timeout=5",
            hash()
        ));
        let step = plan(&o).unwrap().unwrap();
        assert_eq!(
            step,
            Step::MountVerity {
                source: Source::Block(BlockSpec::Label("store".into())),
                root_hash: [0x0f; 32],
                hash_offset: 40960,
                check: Check::First,
                timeout: Duration::from_secs(5),
                target: "/sysroot/nix/store".into(),
            }
        );
        let names: Vec<_> = step.phases().iter().map(|p| p.0).collect();
        assert_eq!(names, ["wait-store", "verity", "mount-store"]);
    }

    #[test]
    fn nothing_asked_nothing_planned() {
        assert_eq!(plan(&parse("root=tmpfs")).unwrap(), None);
    }

    #[test]
    fn incomplete_or_bad_sets_are_refused() {
        let h = hash();
        for line in [
            format!("nixboot.verity.roothash={h} nixboot.verity.hashoffset=4096"),
            "nixboot.verity.store=/dev/vdb nixboot.verity.hashoffset=4096".to_string(),
            // A malformed hash is a warning at parse time, then missing here.
            "nixboot.verity.store=/dev/vdb nixboot.verity.roothash=xyz \
             nixboot.verity.hashoffset=4096"
                .to_string(),
            format!("nixboot.verity.store=/dev/vdb nixboot.verity.roothash={h}"),
            format!(
                "nixboot.verity.store=/dev/vdb nixboot.verity.roothash={h} \
                 nixboot.verity.hashoffset=4000"
            ),
            format!(
                "nixboot.verity.store=/dev/mapper/x nixboot.verity.roothash={h} \
                 nixboot.verity.hashoffset=4096"
            ),
        ] {
            let e = plan(&parse(&line)).expect_err(&line);
            assert!(e.check.contains("nixboot.verity.roothash=HEX"), "{line}");
        }
    }

    #[test]
    fn the_verity_store_replaces_shares_and_the_embedded_copy() {
        let line = format!(
            "init=/nix/store/x/init nixboot.verity.store=/nix/store/y-store.img \
             nixboot.verity.roothash={} nixboot.verity.hashoffset=4096",
            hash()
        );
        let config = nixboot_protocol::InitrdConfig {
            embedded_store: Some("/nix/store".into()),
            ..nixboot_protocol::InitrdConfig::new()
        };
        let p = crate::plan::build(&parse(&line), &config).unwrap();
        let names: Vec<_> = p.steps.iter().flat_map(Step::phases).map(|x| x.0).collect();
        assert_eq!(
            names[..4],
            ["mount-root", "loop-store", "verity", "mount-store"]
        );
        assert!(!names.contains(&"copy-store"), "{names:?}");
        assert!(!names.contains(&"mount-modules"), "{names:?}");
        assert!(
            p.notes.iter().any(|n| n.contains("verity image")),
            "{:?}",
            p.notes
        );
        // Without an embedded store, a tmpfs root still gets its modules share, not a store.
        let p = crate::plan::build(&parse(&line), &nixboot_protocol::InitrdConfig::new()).unwrap();
        let names: Vec<_> = p.steps.iter().flat_map(Step::phases).map(|x| x.0).collect();
        assert_eq!(names.iter().filter(|n| **n == "mount-store").count(), 1);
        assert!(names.contains(&"mount-modules"), "{names:?}");
    }
}
