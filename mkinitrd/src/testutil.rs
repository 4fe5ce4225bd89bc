//! Tiny hand-made ELF files for tests (here and in other crates' tests), so that tests do
//! not depend on a C toolchain or on host binaries. Not part of the supported API.

/// Appends little-endian integers.
struct W(Vec<u8>);

impl W {
    fn u16(&mut self, v: u16) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
}

const EHDR: usize = 64;
const PHDR: usize = 56;
const SHDR: usize = 64;

fn ehdr(w: &mut W, e_type: u16, entry: u64, phnum: u16, shoff: u64, shnum: u16, shstrndx: u16) {
    w.0.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    w.0.extend_from_slice(&[0; 8]);
    w.u16(e_type);
    w.u16(62); // EM_X86_64
    w.u32(1);
    w.u64(entry);
    w.u64(if phnum > 0 { EHDR as u64 } else { 0 });
    w.u64(shoff);
    w.u32(0);
    w.u16(EHDR as u16);
    w.u16(PHDR as u16);
    w.u16(phnum);
    w.u16(SHDR as u16);
    w.u16(shnum);
    w.u16(shstrndx);
}

/// An ELF64 relocatable object (`ET_REL`, like a `.ko`) holding the given sections.
pub fn elf_object(sections: &[(&str, &[u8])]) -> Vec<u8> {
    let mut shstrtab = vec![0u8];
    let mut name_offsets = Vec::new();
    for (name, _) in sections.iter().copied().chain([(".shstrtab", &[][..])]) {
        name_offsets.push(shstrtab.len() as u32);
        shstrtab.extend_from_slice(name.as_bytes());
        shstrtab.push(0);
    }
    // Layout: header, section contents, shstrtab, section header table.
    let mut body = Vec::new();
    let mut placed = Vec::new();
    for (_, data) in sections {
        placed.push(((EHDR + body.len()) as u64, data.len() as u64));
        body.extend_from_slice(data);
    }
    placed.push(((EHDR + body.len()) as u64, shstrtab.len() as u64));
    body.extend_from_slice(&shstrtab);
    while body.len() % 8 != 0 {
        body.push(0);
    }
    let shoff = (EHDR + body.len()) as u64;
    let shnum = sections.len() as u16 + 2;
    let mut w = W(Vec::new());
    ehdr(&mut w, 1, 0, 0, shoff, shnum, shnum - 1);
    w.0.extend_from_slice(&body);
    w.0.extend_from_slice(&[0; SHDR]); // SHN_UNDEF
    for (i, (offset, size)) in placed.iter().enumerate() {
        let is_strtab = i == sections.len();
        w.u32(name_offsets[i]);
        w.u32(if is_strtab { 3 } else { 1 }); // SHT_STRTAB / SHT_PROGBITS
        w.u64(if is_strtab { 0 } else { 2 }); // SHF_ALLOC
        w.u64(0);
        w.u64(*offset);
        w.u64(*size);
        w.u32(0);
        w.u32(0);
        w.u64(1);
        w.u64(0);
    }
    w.0
}

/// A fake kernel module: an ELF object whose `.modinfo` holds the given `key=value` fields.
pub fn fake_module(fields: &[&str]) -> Vec<u8> {
    let mut modinfo = Vec::new();
    for f in fields {
        modinfo.extend_from_slice(f.as_bytes());
        modinfo.push(0);
    }
    elf_object(&[(".text", &[0xc3]), (".modinfo", &modinfo)])
}

fn executable(interp: Option<&str>) -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    // mov eax, 60 (exit); xor edi, edi; syscall
    const CODE: &[u8] = &[0xb8, 0x3c, 0, 0, 0, 0x31, 0xff, 0x0f, 0x05];
    let phnum: u16 = if interp.is_some() { 2 } else { 1 };
    let headers = EHDR + PHDR * phnum as usize;
    let interp_bytes = interp.map(|s| {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    });
    let interp_len = interp_bytes.as_ref().map_or(0, Vec::len);
    let code_off = headers + interp_len;
    let total = (code_off + CODE.len()) as u64;
    let mut w = W(Vec::new());
    ehdr(&mut w, 2, BASE + code_off as u64, phnum, 0, 0, 0);
    if interp.is_some() {
        w.u32(3); // PT_INTERP
        w.u32(4);
        w.u64(headers as u64);
        w.u64(BASE + headers as u64);
        w.u64(BASE + headers as u64);
        w.u64(interp_len as u64);
        w.u64(interp_len as u64);
        w.u64(1);
    }
    w.u32(1); // PT_LOAD
    w.u32(5); // R+X
    w.u64(0);
    w.u64(BASE);
    w.u64(BASE);
    w.u64(total);
    w.u64(total);
    w.u64(0x1000);
    if let Some(b) = interp_bytes {
        w.0.extend_from_slice(&b);
    }
    w.0.extend_from_slice(CODE);
    w.0
}

/// A minimal static x86-64 executable that exits with status 0.
pub fn static_elf() -> Vec<u8> {
    executable(None)
}

/// The same executable, but asking for a program interpreter (as dynamic programs do).
pub fn elf_with_interp(interp: &str) -> Vec<u8> {
    executable(Some(interp))
}
