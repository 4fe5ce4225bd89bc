//! What the QEMU boot tests and the benchmark need besides the launcher
//! (`nixboot-launcher`): the prerequisites (kernel, modules, virtiofsd, QEMU) and the static
//! guest binaries. The boot tests' one harness (VM slots, timeout, fixtures, assertions) is
//! `tests/common`, which builds initrds with the mkinitrd library (a dev-dependency, so the
//! benchmark does not link mkinitrd).
//!
//! - [`artifacts`]: prerequisites, static guest binaries, fake store names.
//! - [`nixos_closure`]: a NixOS-shaped closure of real parts (Debian's systemd) for real stage-2 boots.

pub mod artifacts;
pub mod nixos_closure;

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// tests/run.sh boots the files whose line says `every` again on the second kernel
    /// (6.12); a file that says nothing would silently run on one kernel only.
    #[test]
    fn every_boot_test_file_says_which_guest_kernels_it_runs_on() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests");
        let mut seen = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let says: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("//! Guest kernels: "))
                .collect();
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            assert_eq!(
                says.len(),
                1,
                "{name}: one `//! Guest kernels:` line: {says:?}"
            );
            let every = says[0].starts_with("every (");
            assert!(
                every || says[0].starts_with("6.1 only ("),
                "{name}: {}",
                says[0]
            );
            seen.push(every);
        }
        assert!(seen.contains(&true) && seen.contains(&false), "{seen:?}");
    }
}
