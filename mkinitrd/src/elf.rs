//! ELF checks: the init must run with nothing else in the initramfs, so it must be static.

use goblin::elf::{header, program_header, Elf};

/// Why a file is not a static executable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF file: {0}")]
    NotElf(String),
    #[error("ELF type ET_{0} is not an executable")]
    NotExecutable(&'static str),
    #[error("PT_INTERP {0}")]
    Interpreter(String),
    #[error("DT_NEEDED {}", .0.join(", "))]
    Needed(Vec<String>),
}

/// Accepts an ELF executable (`ET_EXEC`, or `ET_DYN` for static-pie) that asks for no
/// program interpreter and no shared libraries.
pub fn check_static(bytes: &[u8]) -> Result<(), ElfError> {
    let elf = Elf::parse(bytes).map_err(|e| ElfError::NotElf(e.to_string()))?;
    match elf.header.e_type {
        header::ET_EXEC | header::ET_DYN => {}
        other => return Err(ElfError::NotExecutable(header::et_to_str(other))),
    }
    // goblin only reads the interpreter string when it is valid; the header alone decides.
    if elf
        .program_headers
        .iter()
        .any(|ph| ph.p_type == program_header::PT_INTERP)
    {
        let interp = elf.interpreter.unwrap_or("<unreadable>").to_owned();
        return Err(ElfError::Interpreter(interp));
    }
    if !elf.libraries.is_empty() {
        return Err(ElfError::Needed(
            elf.libraries.iter().map(|s| (*s).to_owned()).collect(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil;

    #[test]
    fn synthetic_static_executable_passes() {
        check_static(&testutil::static_elf()).unwrap();
    }

    #[test]
    fn interpreter_is_named() {
        let e =
            check_static(&testutil::elf_with_interp("/lib64/ld-linux-x86-64.so.2")).unwrap_err();
        assert_eq!(
            e,
            ElfError::Interpreter("/lib64/ld-linux-x86-64.so.2".into())
        );
        assert_eq!(e.to_string(), "PT_INTERP /lib64/ld-linux-x86-64.so.2");
    }

    #[test]
    fn non_elf_and_objects_are_refused() {
        assert!(matches!(
            check_static(b"#!/bin/sh\n"),
            Err(ElfError::NotElf(_))
        ));
        let module = testutil::fake_module(&["vermagic=1.0 SMP"]);
        let e = check_static(&module);
        assert!(matches!(e, Err(ElfError::NotExecutable("REL"))), "{e:?}");
    }

    #[test]
    fn host_binaries() {
        // /bin/true is dynamically linked on every mainstream distribution.
        match std::fs::read("/bin/true") {
            Ok(b) => assert!(
                matches!(check_static(&b), Err(ElfError::Interpreter(_))),
                "/bin/true passed as static"
            ),
            Err(e) => eprintln!("SKIP: /bin/true unreadable: {e}"),
        }
        match std::fs::read("/bin/busybox") {
            Ok(b) if check_static(&b).is_ok() => {}
            Ok(_) => eprintln!("SKIP: /bin/busybox is not the static build"),
            Err(e) => eprintln!("SKIP: /bin/busybox unreadable: {e}"),
        }
    }
}
