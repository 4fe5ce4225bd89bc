//! The one thing the init wants from an ELF file: its program interpreter (pure; no I/O).
//!
//! A dynamically linked next init (NixOS's systemd) whose loader is missing from the new
//! root fails at execve with ENOENT, after the initramfs is gone; checking PT_INTERP
//! beforehand turns that into a failure that can still name the file.

const PT_INTERP: u32 = 3;
/// Program headers beyond this are not looked at (real files have a handful).
const MAX_PHDRS: usize = 256;

/// What the header says about the interpreter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Interp {
    /// Statically linked (or no PT_INTERP).
    None,
    Path(String),
    /// The header could not be read from the bytes given (truncated, odd, not ELF).
    Unknown,
}

/// Finds PT_INTERP in the first bytes of a file (the interpreter string sits in the first
/// page in practice; when it does not, the answer is [`Interp::Unknown`]).
pub fn interpreter(b: &[u8]) -> Interp {
    parse(b).unwrap_or(Interp::Unknown)
}

fn parse(b: &[u8]) -> Option<Interp> {
    if !b.starts_with(b"\x7fELF") {
        return None;
    }
    let class64 = match b.get(4)? {
        1 => false,
        2 => true,
        _ => return None,
    };
    let little = match b.get(5)? {
        1 => true,
        2 => false,
        _ => return None,
    };
    let u16_at = |at: usize| -> Option<u64> {
        let x: [u8; 2] = b.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(u64::from(if little {
            u16::from_le_bytes(x)
        } else {
            u16::from_be_bytes(x)
        }))
    };
    let u32_at = |at: usize| -> Option<u64> {
        let x: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u64::from(if little {
            u32::from_le_bytes(x)
        } else {
            u32::from_be_bytes(x)
        }))
    };
    let u64_at = |at: usize| -> Option<u64> {
        let x: [u8; 8] = b.get(at..at.checked_add(8)?)?.try_into().ok()?;
        Some(if little {
            u64::from_le_bytes(x)
        } else {
            u64::from_be_bytes(x)
        })
    };
    let word = |at: usize| if class64 { u64_at(at) } else { u32_at(at) };
    let (phoff, phentsize, phnum) = if class64 {
        (u64_at(0x20)?, u16_at(0x36)?, u16_at(0x38)?)
    } else {
        (u32_at(0x1c)?, u16_at(0x2a)?, u16_at(0x2c)?)
    };
    let phoff = usize::try_from(phoff).ok()?;
    let phentsize = usize::try_from(phentsize).ok()?;
    if phentsize < if class64 { 56 } else { 32 } {
        return if phnum == 0 { Some(Interp::None) } else { None };
    }
    for i in 0..usize::try_from(phnum).ok()?.min(MAX_PHDRS) {
        let ph = phoff.checked_add(i.checked_mul(phentsize)?)?;
        if u32_at(ph)? != u64::from(PT_INTERP) {
            continue;
        }
        let (off, size) = if class64 {
            (word(ph.checked_add(8)?)?, word(ph.checked_add(32)?)?)
        } else {
            (word(ph.checked_add(4)?)?, word(ph.checked_add(16)?)?)
        };
        let off = usize::try_from(off).ok()?;
        let end = off.checked_add(usize::try_from(size).ok()?)?;
        let raw = b.get(off..end)?;
        let raw = raw.split(|c| *c == 0).next().unwrap_or(raw);
        let path = std::str::from_utf8(raw).ok()?;
        return Some(if path.is_empty() {
            Interp::Unknown
        } else {
            Interp::Path(path.to_string())
        });
    }
    Some(Interp::None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 64-bit little-endian header with one PT_LOAD and, optionally, a PT_INTERP.
    fn elf64(interp: Option<&str>) -> Vec<u8> {
        let mut b = vec![0u8; 512];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&2u16.to_le_bytes());
        b[64..68].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        if let Some(p) = interp {
            let ph = 64 + 56;
            b[ph..ph + 4].copy_from_slice(&PT_INTERP.to_le_bytes());
            b[ph + 8..ph + 16].copy_from_slice(&300u64.to_le_bytes());
            b[ph + 32..ph + 40].copy_from_slice(&(p.len() as u64 + 1).to_le_bytes());
            b[300..300 + p.len()].copy_from_slice(p.as_bytes());
        }
        b
    }

    #[test]
    fn finds_the_interpreter() {
        let p = "/nix/store/abc-glibc-2.39/lib/ld-linux-x86-64.so.2";
        assert_eq!(interpreter(&elf64(Some(p))), Interp::Path(p.into()));
        assert_eq!(interpreter(&elf64(None)), Interp::None);
    }

    #[test]
    fn odd_input_is_unknown_not_a_panic() {
        assert_eq!(interpreter(b""), Interp::Unknown);
        assert_eq!(interpreter(b"#!/bin/sh"), Interp::Unknown);
        assert_eq!(interpreter(b"\x7fELF"), Interp::Unknown);
        let mut b = elf64(Some("/lib/ld.so"));
        b.truncate(310);
        assert_eq!(interpreter(&b), Interp::Unknown);
        let mut b = elf64(None);
        b[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(interpreter(&b), Interp::Unknown);
    }

    #[test]
    fn the_real_thing() {
        // Whatever this test binary is linked as, parsing it must give an answer.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let head = &me[..me.len().min(64 * 1024)];
        assert_ne!(interpreter(head), Interp::Unknown);
    }
}
