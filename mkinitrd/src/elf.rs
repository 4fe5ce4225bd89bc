//! ELF checks: the init must run with nothing else in the initramfs, so it must be static;
//! other programs packed with `--include` bring their program interpreter and libraries.

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

/// What a dynamically linked ELF file needs at run time.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DynamicInfo {
    /// `PT_INTERP`: the program interpreter (`/lib64/ld-linux-x86-64.so.2`).
    pub interpreter: Option<String>,
    /// `DT_NEEDED`: library names, in order.
    pub needed: Vec<String>,
    /// `DT_RPATH` directories (ignored by the loader when `DT_RUNPATH` is present).
    pub rpath: Vec<String>,
    /// `DT_RUNPATH` directories.
    pub runpath: Vec<String>,
    /// ELFCLASS64.
    pub is_64: bool,
    /// `e_machine`.
    pub machine: u16,
}

impl DynamicInfo {
    /// Where the loader looks for `DT_NEEDED` libraries, before its default directories:
    /// `DT_RPATH` only when there is no `DT_RUNPATH` (ld.so(8)).
    pub fn search_path(&self) -> &[String] {
        if self.runpath.is_empty() {
            &self.rpath
        } else {
            &self.runpath
        }
    }
}

/// Whether `bytes` start like an ELF file.
pub fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(b"\x7fELF")
}

/// The run-time needs of an ELF file, or None when it is not an ELF file. Relocatable
/// objects and static executables give an empty interpreter and library list.
pub fn dynamic_info(bytes: &[u8]) -> Result<Option<DynamicInfo>, ElfError> {
    if !is_elf(bytes) {
        return Ok(None);
    }
    let elf = Elf::parse(bytes).map_err(|e| ElfError::NotElf(e.to_string()))?;
    let split = |v: &[&str]| -> Vec<String> {
        v.iter()
            .flat_map(|s| s.split(':'))
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    };
    Ok(Some(DynamicInfo {
        interpreter: elf.interpreter.map(str::to_owned),
        needed: elf.libraries.iter().map(|s| (*s).to_owned()).collect(),
        rpath: split(&elf.rpaths),
        runpath: split(&elf.runpaths),
        is_64: elf.is_64,
        machine: elf.header.e_machine,
    }))
}

/// Class and machine of an ELF file from its header alone (cheap), or None.
pub fn class_and_machine(bytes: &[u8]) -> Option<(bool, u16)> {
    if !is_elf(bytes) || bytes.len() < 64 {
        return None;
    }
    let header = Elf::parse_header(bytes).ok()?;
    Some((header.container().ok()?.is_big(), header.e_machine))
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
    fn dynamic_info_of_synthetic_files() {
        assert_eq!(dynamic_info(b"#!/bin/sh\n").unwrap(), None);
        let info = dynamic_info(&testutil::elf_with_interp("/lib/ld.so"))
            .unwrap()
            .unwrap();
        assert_eq!(info.interpreter.as_deref(), Some("/lib/ld.so"));
        assert!(info.needed.is_empty() && info.is_64 && info.machine == 62);
        let info = dynamic_info(&testutil::static_elf()).unwrap().unwrap();
        assert_eq!(info.interpreter, None);
        assert_eq!(class_and_machine(&testutil::static_elf()), Some((true, 62)));
        let both = DynamicInfo {
            rpath: vec!["/r".into()],
            runpath: vec!["/u".into()],
            ..DynamicInfo::default()
        };
        assert_eq!(both.search_path(), ["/u"]);
    }

    #[test]
    fn dynamic_info_of_host_binaries() {
        let Ok(bytes) = std::fs::read("/bin/ls") else {
            eprintln!("SKIP: /bin/ls unreadable");
            return;
        };
        let info = dynamic_info(&bytes).unwrap().unwrap();
        assert!(
            info.interpreter
                .as_deref()
                .is_some_and(|i| i.contains("ld-")),
            "{info:?}"
        );
        assert!(
            info.needed.iter().any(|n| n.starts_with("libc.so")),
            "{info:?}"
        );
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
