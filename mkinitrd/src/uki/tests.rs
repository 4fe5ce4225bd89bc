//! The layout on a hand-made PE image (no stub needed): ukify's rules, and every refusal.

use super::pe::{add_sections, PeError, Section};
use super::*;

const PE_AT: usize = 0x40;
const OPT_SIZE: usize = 240;
const FA: u32 = 0x200;
const SA: u32 = 0x1000;

/// A minimal PE32+ EFI application: one `.text` section of 0x200 bytes at 0x1000, its
/// data right after headers of 0x400 bytes.
fn tiny_pe() -> Vec<u8> {
    tiny_pe_with_headers(0x400)
}

fn tiny_pe_with_headers(headers: u32) -> Vec<u8> {
    let mut b = vec![0u8; headers as usize + 0x200];
    b[0..2].copy_from_slice(b"MZ");
    b[0x3c..0x40].copy_from_slice(&(PE_AT as u32).to_le_bytes());
    b[PE_AT..PE_AT + 4].copy_from_slice(b"PE\0\0");
    let coff = PE_AT + 4;
    b[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
    b[coff + 2..coff + 4].copy_from_slice(&1u16.to_le_bytes());
    b[coff + 16..coff + 18].copy_from_slice(&(OPT_SIZE as u16).to_le_bytes());
    b[coff + 18..coff + 20].copy_from_slice(&0x0206u16.to_le_bytes());
    let opt = PE_AT + 24;
    let put = |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    b[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
    put(&mut b, opt + 4, 0x200); // SizeOfCode
    put(&mut b, opt + 16, 0x1000); // AddressOfEntryPoint
    put(&mut b, opt + 32, SA);
    put(&mut b, opt + 36, FA);
    put(&mut b, opt + 56, 0x2000); // SizeOfImage
    put(&mut b, opt + 60, headers); // SizeOfHeaders
    put(&mut b, opt + 64, 0x1234); // CheckSum
    b[opt + 68..opt + 70].copy_from_slice(&10u16.to_le_bytes()); // EFI application
    put(&mut b, opt + 108, 16); // NumberOfRvaAndSizes
    let sh = opt + OPT_SIZE;
    b[sh..sh + 5].copy_from_slice(b".text");
    put(&mut b, sh + 8, 0x200);
    put(&mut b, sh + 12, 0x1000);
    put(&mut b, sh + 16, 0x200);
    put(&mut b, sh + 20, headers);
    put(&mut b, sh + 36, 0x6000_0020);
    b[headers as usize] = 0xc3;
    b
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// (name, VirtualSize, VirtualAddress, SizeOfRawData, PointerToRawData) as goblin reads them.
fn sections(image: &[u8]) -> Vec<(String, u32, u32, u32, u32)> {
    let pe = goblin::pe::PE::parse(image).unwrap();
    pe.sections
        .iter()
        .map(|s| {
            let name = String::from_utf8_lossy(&s.name)
                .trim_end_matches('\0')
                .to_owned();
            (
                name,
                s.virtual_size,
                s.virtual_address,
                s.size_of_raw_data,
                s.pointer_to_raw_data,
            )
        })
        .collect()
}

#[test]
fn sections_follow_ukify_layout() {
    let stub = tiny_pe();
    let kernel = vec![7u8; 0x345];
    let out = add_sections(
        &stub,
        &[
            Section::data(".osrel", b"ID=x\n"),
            Section::data(".cmdline", b"console=ttyS0"),
            Section {
                name: ".linux",
                data: &kernel,
                virtual_size: 0x5000,
                code: true,
            },
        ],
    )
    .unwrap();
    let got = sections(&out);
    assert_eq!(
        got,
        [
            (".text".into(), 0x200, 0x1000, 0x200, 0x400),
            (".osrel".into(), 5, 0x2000, 0x200, 0x600),
            (".cmdline".into(), 13, 0x3000, 0x200, 0x800),
            (".linux".into(), 0x5000, 0x4000, 0x400, 0xa00),
        ]
    );
    assert_eq!(&out[0x600..0x605], b"ID=x\n");
    assert_eq!(&out[0xa00..0xa00 + 0x345], &kernel[..]);
    assert_eq!(out.len(), 0xe00, "the last section padded to FileAlignment");
    let opt = PE_AT + 24;
    assert_eq!(
        u32_at(&out, opt + 56),
        0x9000,
        "SizeOfImage ends after .linux"
    );
    assert_eq!(u32_at(&out, opt + 64), 0, "CheckSum");
    assert_eq!(
        u32_at(&out, opt + 8),
        5 + 13 + 0x5000,
        "SizeOfInitializedData"
    );
    let pe = goblin::pe::PE::parse(&out).unwrap();
    let flags = |i: usize| pe.sections[i].characteristics;
    assert_eq!(flags(1), 0x4000_0040);
    assert_eq!(flags(3), 0x4000_0020);
    let mapped = super::pe::sections_in_memory(&out).unwrap();
    assert_eq!(mapped[1], (".osrel".to_owned(), b"ID=x\n".to_vec()));
    assert_eq!(mapped[3].1.len(), 0x5000);
    assert_eq!(&mapped[3].1[..0x345], &kernel[..]);
    assert!(mapped[3].1[0x345..].iter().all(|b| *b == 0));
    // The input is untouched where nothing had to change.
    assert_eq!(&out[0x400..0x600], &stub[0x400..0x600]);
}

#[test]
fn same_inputs_same_bytes() {
    let stub = tiny_pe();
    let s = [Section::data(".initrd", b"abc")];
    assert_eq!(
        add_sections(&stub, &s).unwrap(),
        add_sections(&stub, &s).unwrap()
    );
}

#[test]
fn trailing_symbol_table_is_dropped() {
    let mut stub = tiny_pe();
    let at = stub.len() as u32;
    // Two symbols, then a string table of 4 + 6 bytes.
    stub.extend([0u8; 36]);
    stub.extend(10u32.to_le_bytes());
    stub.extend(b"sym_a\0");
    let coff = PE_AT + 4;
    stub[coff + 8..coff + 12].copy_from_slice(&at.to_le_bytes());
    stub[coff + 12..coff + 16].copy_from_slice(&2u32.to_le_bytes());
    let out = add_sections(&stub, &[Section::data(".osrel", b"x")]).unwrap();
    assert_eq!(u32_at(&out, coff + 8), 0);
    assert_eq!(u32_at(&out, coff + 12), 0);
    assert_eq!(sections(&out)[1].4, 0x600, ".osrel where the symbols were");
    assert_eq!(out.len(), 0x800);
    let chars = u16::from_le_bytes([out[coff + 18], out[coff + 19]]);
    assert_eq!(chars & 0x0008, 0x0008);
}

#[test]
fn refusals() {
    let stub = tiny_pe();
    let one = [Section::data(".x", b"1")];
    assert!(matches!(
        add_sections(b"MZ not a pe", &one),
        Err(PeError::NotPe(_))
    ));
    assert!(matches!(
        add_sections(&[0u8; 4096], &one),
        Err(PeError::NotPe(_))
    ));
    assert_eq!(
        add_sections(&stub, &[Section::data(".text", b"1")]),
        Err(PeError::Duplicate(".text".into()))
    );
    assert_eq!(
        add_sections(&stub, &[Section::data(".toolong9", b"1")]),
        Err(PeError::LongName(".toolong9".into()))
    );
    assert_eq!(
        add_sections(
            &stub,
            &[Section::data(".y", b"1"), Section::data(".y", b"2")]
        ),
        Err(PeError::Duplicate(".y".into()))
    );
    // Headers of 0x200 bytes: the table ends at 0x170, room for 3 more headers.
    let small = tiny_pe_with_headers(0x200);
    let names = [".a", ".b", ".c", ".d"];
    let many: Vec<Section> = names.iter().map(|n| Section::data(n, b"1")).collect();
    assert_eq!(add_sections(&small, &many[..3]).map(|_| ()), Ok(()));
    assert_eq!(add_sections(&small, &many), Err(PeError::NoHeaderRoom(4)));
    let mut signed = stub.clone();
    let cert_dir = PE_AT + 24 + 112 + 4 * 8;
    signed[cert_dir..cert_dir + 4].copy_from_slice(&0x400u32.to_le_bytes());
    signed[cert_dir + 4..cert_dir + 8].copy_from_slice(&0x10u32.to_le_bytes());
    assert_eq!(add_sections(&signed, &one), Err(PeError::Signed));
    let mut unaligned = stub.clone();
    let sh = PE_AT + 24 + OPT_SIZE;
    unaligned[sh + 16..sh + 20].copy_from_slice(&0x1f0u32.to_le_bytes());
    assert!(matches!(
        add_sections(&unaligned, &one),
        Err(PeError::Unaligned { .. })
    ));
    let mut used = stub.clone();
    used[0x170] = 1;
    assert_eq!(add_sections(&used, &one), Err(PeError::NoHeaderRoom(1)));
}

/// `tiny_pe` with the x86 boot protocol's marks: what `check_bzimage` wants of a kernel.
fn tiny_bzimage() -> Vec<u8> {
    let mut k = tiny_pe();
    k[0x1fe..0x200].copy_from_slice(&[0x55, 0xaa]);
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k
}

#[test]
fn kernel_must_be_a_pe_bzimage() {
    assert_eq!(check_bzimage(&tiny_bzimage()), Ok(0x2000));
    let e = check_bzimage(&tiny_pe()).unwrap_err();
    assert!(e.contains("HdrS"), "{e}");
    assert!(check_bzimage(b"\x7fELF a vmlinux").is_err());
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn options(dir: &Path) -> UkiOptions {
    UkiOptions {
        output: dir.join("uki.efi"),
        stub: write(dir, "stub", &tiny_pe()),
        linux: write(dir, "vmlinuz", &tiny_bzimage()),
        initrd: Some(write(dir, "initrd", b"07070100")),
        cmdline: Some("console=ttyS0 x=1".parse().unwrap()),
        os_release: None,
        ucode: None,
    }
}

#[test]
fn build_writes_the_sections_in_ukify_order() {
    let tmp = tempfile::tempdir().unwrap();
    let opts = options(tmp.path());
    let report = build(&crate::BuildOptions::default(), &opts).unwrap();
    let out = std::fs::read(&opts.output).unwrap();
    assert_eq!(report.size, out.len() as u64);
    let names: Vec<String> = sections(&out).into_iter().map(|s| s.0).collect();
    assert_eq!(names, [".text", ".osrel", ".cmdline", ".initrd", ".linux"]);
    let pe = goblin::pe::PE::parse(&out).unwrap();
    let data = |i: usize| {
        let s = &pe.sections[i];
        &out[s.pointer_to_raw_data as usize..][..s.virtual_size.min(s.size_of_raw_data) as usize]
    };
    assert_eq!(
        data(1),
        b"NAME=nixboot\nID=nixboot\nPRETTY_NAME=\"nixboot\"\n"
    );
    assert_eq!(data(2), b"console=ttyS0 x=1");
    assert_eq!(data(3), b"07070100");
    assert_eq!(
        pe.sections[4].virtual_size, 0x2000,
        "the kernel's SizeOfImage"
    );
    assert_eq!(pe.sections[4].size_of_raw_data, 0x600, "the kernel's file");
}

#[test]
fn bad_inputs_write_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let base = options(d);
    std::fs::write(&base.output, b"old").unwrap();
    let cases = [
        (
            "stub",
            UkiOptions {
                stub: write(d, "elf", b"\x7fELF"),
                ..base.clone()
            },
        ),
        (
            "kernel",
            UkiOptions {
                linux: write(d, "vmlinux", &tiny_pe()),
                ..base.clone()
            },
        ),
        (
            "kernel",
            UkiOptions {
                linux: d.join("missing"),
                ..base.clone()
            },
        ),
        (
            "initrd",
            UkiOptions {
                initrd: Some(d.join("missing")),
                ..base.clone()
            },
        ),
    ];
    let before: Vec<_> = std::fs::read_dir(d).unwrap().count().to_string().into();
    for (what, opts) in cases {
        let e = build(&crate::BuildOptions::default(), &opts)
            .unwrap_err()
            .to_string();
        assert!(e.contains(what), "{e}");
        assert_eq!(std::fs::read(&base.output).unwrap(), b"old");
    }
    let after: String = std::fs::read_dir(d).unwrap().count().to_string();
    assert_eq!(
        String::from_utf8(before).unwrap(),
        after,
        "no temporary file left"
    );
}

#[test]
fn text_and_versions() {
    assert_eq!("@/x".parse::<Text>().unwrap(), Text::File("/x".into()));
    assert_eq!("a b".parse::<Text>().unwrap(), Text::Inline("a b".into()));
    let stub = b"xx#### LoaderInfo: systemd-stub 252.39-1~deb12u2 ####\0";
    assert_eq!(stub_version(stub).as_deref(), Some("252.39-1~deb12u2"));
    assert_eq!(major("252.39-1~deb12u2"), Some(252));
    assert_eq!(stub_version(b"none"), None);
}
