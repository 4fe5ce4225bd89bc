//! check-init: refuse to switch unless the next init can be exec'd in the new root.

use super::resolve::{open_exec_in_root, open_in_root, open_root, Unusable};
use crate::failure::Failure;
use rustix::io::Errno;

/// Checks that the next init exists in the new root and is an executable regular file,
/// and that its interpreter (`#!` line, or an ELF's PT_INTERP loader) exists too. Done
/// before the switch: after it there is no initramfs left to fall back to.
pub fn check_init(step: &'static str, new_root: &str, path: &str) -> Result<Vec<String>, Failure> {
    let mut notes = Vec::new();
    let root = open_root(step, new_root)?;
    let check = "is the closure in the store (the store share's directory on the host, the \
                 disk, or the initrd's embedded store)? is init= the closure's init \
                 (result/boot.json has it)?";
    let (file, header) = match open_exec_in_root(&root, path) {
        Ok(opened) => opened,
        Err(Unusable::Sys(Errno::NOSYS)) => {
            notes.push(format!("cannot check {path} (no openat2 on this kernel)"));
            return Ok(notes);
        }
        Err(e) => {
            return Err(Failure::new(
                step,
                format!("next init {path} is not usable in the new root: {e}"),
            )
            .tried(format!(
                "openat2({new_root}, {path}, RESOLVE_IN_ROOT), fstat"
            ))
            .check(check))
        }
    };
    // The kernel runs ELF files and #! scripts; anything else would fail at execve, after
    // the initramfs is gone.
    let interp = if header.starts_with(b"\x7fELF") {
        // PT_INTERP may lie past `header` (patchelf): what `header` lacks is read from the
        // file itself.
        let elf = crate::elf::Prefixed {
            head: &header,
            file: crate::elf::File(&file),
        };
        match crate::elf::interpreter_at(&elf) {
            crate::elf::Interp::Path(p) => Some(("loader", p)),
            crate::elf::Interp::None => None,
            crate::elf::Interp::Unknown => {
                notes.push(format!(
                    "could not read {path}'s ELF header to check its loader"
                ));
                None
            }
        }
    } else if header.starts_with(b"#!") {
        shebang(&header).map(|p| ("interpreter", p))
    } else {
        return Err(Failure::new(
            step,
            format!("next init {path} is neither an ELF executable nor a #! script"),
        )
        .tried(format!("read the first {} bytes of {path}", header.len()))
        .check(check));
    };
    if let Some((what, interp)) = interp {
        match open_in_root(&root, &interp) {
            Ok(_) | Err(Unusable::Sys(Errno::NOSYS)) => {}
            Err(e) => {
                return Err(Failure::new(
                    step,
                    format!("next init {path} needs the {what} {interp}, which is not usable: {e}"),
                )
                .tried(format!(
                    "read {path}'s {}, then openat2({new_root}, {interp}, RESOLVE_IN_ROOT)",
                    if what == "loader" {
                        "PT_INTERP"
                    } else {
                        "#! line"
                    }
                ))
                .check(check))
            }
        }
    }
    Ok(notes)
}

/// The interpreter of a `#!` line.
fn shebang(header: &[u8]) -> Option<String> {
    let rest = header.strip_prefix(b"#!")?;
    let line = rest.split(|b| *b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    line.split_whitespace().next().map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shebang_lines() {
        assert_eq!(
            shebang(b"#!/nix/store/b-busybox/bin/busybox sh\nexec x\n").as_deref(),
            Some("/nix/store/b-busybox/bin/busybox")
        );
        assert_eq!(shebang(b"#! /bin/sh").as_deref(), Some("/bin/sh"));
        assert_eq!(shebang(b"\x7fELF..."), None);
        assert_eq!(shebang(b"#!\n"), None);
    }
}
