//! The binaries that run inside the guest must be static: the initramfs has no dynamic
//! loader and no libc. Read their ELF headers and dynamic sections with goblin, independently
//! of mkinitrd's own check, and report their sizes.

use goblin::elf::{program_header::PT_INTERP, Elf};
use qemu_tests::artifacts;

fn assert_static(name: &str, path: &std::path::Path) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let elf = Elf::parse(&bytes).unwrap_or_else(|e| panic!("{name} is not ELF: {e}"));
    assert!(
        !elf.program_headers.iter().any(|ph| ph.p_type == PT_INTERP),
        "{name} has a PT_INTERP ({:?}): it needs a dynamic loader",
        elf.interpreter
    );
    assert!(
        elf.libraries.is_empty(),
        "{name} has DT_NEEDED entries: {:?}",
        elf.libraries
    );
    assert_eq!(
        elf.header.e_machine,
        goblin::elf::header::EM_X86_64,
        "{name}: not x86_64"
    );
    // Also through mkinitrd's check, which is what refuses a non-static --init.
    mkinitrd::elf::check_static(&bytes).unwrap_or_else(|e| panic!("mkinitrd refuses {name}: {e}"));
    eprintln!("size: {name} {} bytes ({})", bytes.len(), path.display());
}

#[test]
fn init_and_probe_are_static_executables() {
    // Building needs only cargo and the musl target (installed by .ci/setup).
    let bins = match artifacts::static_binaries() {
        Ok(b) => b,
        Err(reason) => {
            if std::env::var_os(artifacts::REQUIRE_ENV).is_some() {
                panic!("cannot build the static guest binaries: {reason}");
            }
            artifacts::skip("init_and_probe_are_static_executables", &reason);
            return;
        }
    };
    assert_static("init", &bins.init);
    assert_static("probe-init", &bins.probe);
}

#[test]
fn a_dynamic_executable_is_told_apart() {
    // The check above must be able to fail: the test binary itself is dynamic (host target).
    let me = std::env::current_exe().expect("current_exe");
    let bytes = std::fs::read(&me).expect("read self");
    let elf = Elf::parse(&bytes).expect("self is ELF");
    assert!(
        elf.interpreter.is_some() || !elf.libraries.is_empty(),
        "the host test binary was expected to be dynamic"
    );
    assert!(mkinitrd::elf::check_static(&bytes).is_err());
}
