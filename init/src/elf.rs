//! The one thing the init wants from an ELF file: its program interpreter (pure over
//! [`ReadAt`]; [`File`] is the one positioned-read source).
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

/// Where the ELF bytes come from: a buffer (tests, fuzzing) or a file read with positioned
/// reads (check-init), so that program headers and the interpreter string are found
/// wherever they lie (patchelf puts a longer PT_INTERP at the end of the file).
pub trait ReadAt {
    /// Fills `buf` from offset `off`; `false` when the bytes are not there.
    fn read_exact_at(&self, off: u64, buf: &mut [u8]) -> bool;
}

impl ReadAt for [u8] {
    fn read_exact_at(&self, off: u64, buf: &mut [u8]) -> bool {
        let Ok(off) = usize::try_from(off) else {
            return false;
        };
        match off
            .checked_add(buf.len())
            .and_then(|end| self.get(off..end))
        {
            Some(src) => {
                buf.copy_from_slice(src);
                true
            }
            None => false,
        }
    }
}

/// A file, read with pread(2) (the file position is not used).
pub struct File<Fd: rustix::fd::AsFd>(pub Fd);

impl<Fd: rustix::fd::AsFd> ReadAt for File<Fd> {
    fn read_exact_at(&self, off: u64, buf: &mut [u8]) -> bool {
        let mut got = 0;
        while got < buf.len() {
            let Some(at) = off.checked_add(got as u64) else {
                return false;
            };
            match rustix::io::pread(&self.0, &mut buf[got..], at) {
                Ok(0) => return false,
                Ok(n) => got += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(_) => return false,
            }
        }
        true
    }
}

/// A file whose first bytes were already read: reads inside them are served from memory,
/// the rest with pread(2) (over virtiofs every read is a round trip to the host).
pub struct Prefixed<'a, Fd: rustix::fd::AsFd> {
    pub head: &'a [u8],
    pub file: File<Fd>,
}

impl<Fd: rustix::fd::AsFd> ReadAt for Prefixed<'_, Fd> {
    fn read_exact_at(&self, off: u64, buf: &mut [u8]) -> bool {
        self.head.read_exact_at(off, buf) || self.file.read_exact_at(off, buf)
    }
}

/// The interpreter of the ELF file in `b`.
pub fn interpreter(b: &[u8]) -> Interp {
    interpreter_at(b)
}

/// The interpreter of the ELF file `r`, read at the offsets its header gives.
pub fn interpreter_at<R: ReadAt + ?Sized>(r: &R) -> Interp {
    parse(r).unwrap_or(Interp::Unknown)
}

/// Longest interpreter path read (PATH_MAX).
const MAX_INTERP: usize = 4096;

fn parse<R: ReadAt + ?Sized>(r: &R) -> Option<Interp> {
    let mut ehdr = [0u8; 64];
    // A 32-bit header is 52 bytes; read what is there.
    if !r.read_exact_at(0, &mut ehdr) && !r.read_exact_at(0, &mut ehdr[..52]) {
        return None;
    }
    let b = &ehdr[..];
    if !b.starts_with(b"\x7fELF") {
        return None;
    }
    let class64 = match b[4] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let little = match b[5] {
        1 => true,
        2 => false,
        _ => return None,
    };
    let num = Num { little };
    let (phoff, phentsize, phnum) = if class64 {
        (num.u64(b, 0x20)?, num.u16(b, 0x36)?, num.u16(b, 0x38)?)
    } else {
        (num.u32(b, 0x1c)?, num.u16(b, 0x2a)?, num.u16(b, 0x2c)?)
    };
    let phentsize = usize::try_from(phentsize).ok()?;
    if phentsize < if class64 { 56 } else { 32 } {
        return if phnum == 0 { Some(Interp::None) } else { None };
    }
    let phnum = usize::try_from(phnum).ok()?.min(MAX_PHDRS);
    let mut table = vec![0u8; phnum.checked_mul(phentsize)?];
    if !r.read_exact_at(phoff, &mut table) {
        return None;
    }
    for ph in table.chunks_exact(phentsize) {
        if num.u32(ph, 0)? != u64::from(PT_INTERP) {
            continue;
        }
        let (off, size) = if class64 {
            (num.u64(ph, 8)?, num.u64(ph, 32)?)
        } else {
            (num.u32(ph, 4)?, num.u32(ph, 16)?)
        };
        let size = usize::try_from(size).ok()?;
        if size == 0 || size > MAX_INTERP {
            return None;
        }
        let mut raw = vec![0u8; size];
        if !r.read_exact_at(off, &mut raw) {
            return None;
        }
        let raw = raw.split(|c| *c == 0).next().unwrap_or(&raw);
        let path = std::str::from_utf8(raw).ok()?;
        return Some(if path.is_empty() {
            Interp::Unknown
        } else {
            Interp::Path(path.to_string())
        });
    }
    Some(Interp::None)
}

/// Integers of the file's byte order.
struct Num {
    little: bool,
}

impl Num {
    fn u16(&self, b: &[u8], at: usize) -> Option<u64> {
        let x: [u8; 2] = b.get(at..at.checked_add(2)?)?.try_into().ok()?;
        Some(u64::from(if self.little {
            u16::from_le_bytes(x)
        } else {
            u16::from_be_bytes(x)
        }))
    }
    fn u32(&self, b: &[u8], at: usize) -> Option<u64> {
        let x: [u8; 4] = b.get(at..at.checked_add(4)?)?.try_into().ok()?;
        Some(u64::from(if self.little {
            u32::from_le_bytes(x)
        } else {
            u32::from_be_bytes(x)
        }))
    }
    fn u64(&self, b: &[u8], at: usize) -> Option<u64> {
        let x: [u8; 8] = b.get(at..at.checked_add(8)?)?.try_into().ok()?;
        Some(if self.little {
            u64::from_le_bytes(x)
        } else {
            u64::from_be_bytes(x)
        })
    }
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

    /// patchelf's layout: the program headers and the (longer) interpreter string moved
    /// past the first page, at the end of the file.
    fn elf64_interp_far(p: &str) -> Vec<u8> {
        let mut b = elf64(None);
        b.resize(20_000, 0);
        let phoff = 16_384usize;
        b[0x20..0x28].copy_from_slice(&(phoff as u64).to_le_bytes());
        b[phoff..phoff + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        let ph = phoff + 56;
        let at = 19_000usize;
        b[ph..ph + 4].copy_from_slice(&PT_INTERP.to_le_bytes());
        b[ph + 8..ph + 16].copy_from_slice(&(at as u64).to_le_bytes());
        b[ph + 32..ph + 40].copy_from_slice(&(p.len() as u64 + 1).to_le_bytes());
        b[at..at + p.len()].copy_from_slice(p.as_bytes());
        b
    }

    #[test]
    fn interpreter_past_the_first_page() {
        let p =
            "/nix/store/0123456789abcdef0123456789abcdef-glibc-2.40-66/lib/ld-linux-x86-64.so.2";
        let b = elf64_interp_far(p);
        assert_eq!(interpreter(&b), Interp::Path(p.into()));
        // The first page alone does not hold it: the old 4 KiB read could not find it.
        assert_eq!(interpreter(&b[..4096]), Interp::Unknown);
        // The same from a file, with positioned reads.
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("systemd");
        std::fs::write(&f, &b).unwrap();
        let fd = std::fs::File::open(&f).unwrap();
        assert_eq!(interpreter_at(&File(&fd)), Interp::Path(p.into()));
        // The first page from memory, the rest from the file.
        let prefixed = Prefixed {
            head: &b[..4096],
            file: File(&fd),
        };
        assert_eq!(interpreter_at(&prefixed), Interp::Path(p.into()));
        // A head that lies (not the file's bytes) is believed where it covers the read.
        let lying = Prefixed {
            head: &[0u8; 64],
            file: File(&fd),
        };
        assert_eq!(interpreter_at(&lying), Interp::Unknown);
    }

    /// A real patchelf'd binary, when patchelf is installed: the interpreter set to a long
    /// store path lands past the first page.
    #[test]
    fn patchelf_moved_interpreter() {
        let Ok(out) = std::process::Command::new("patchelf")
            .arg("--version")
            .output()
        else {
            panic!("patchelf is not installed (apt-get install patchelf); this test needs it");
        };
        assert!(out.status.success());
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("sh");
        std::fs::copy("/bin/sh", &f).unwrap();
        let p = format!(
            "/nix/store/{}-glibc-2.40-66/lib/ld-linux-x86-64.so.2",
            "a".repeat(200)
        );
        let st = std::process::Command::new("patchelf")
            .args(["--set-interpreter", &p])
            .arg(&f)
            .status()
            .unwrap();
        assert!(st.success());
        let b = std::fs::read(&f).unwrap();
        let fd = std::fs::File::open(&f).unwrap();
        assert_eq!(interpreter_at(&File(fd)), Interp::Path(p.clone()));
        assert_ne!(
            interpreter(&b[..4096]),
            Interp::Path(p.clone()),
            "not past 4 KiB"
        );
        assert_eq!(interpreter(&b), Interp::Path(p));
    }

    #[test]
    fn the_real_thing() {
        // Whatever this test binary is linked as, parsing it must give an answer.
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let head = &me[..me.len().min(64 * 1024)];
        assert_ne!(interpreter(head), Interp::Unknown);
    }
}
