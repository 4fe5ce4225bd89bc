//! Appends sections to a PE image (systemd-stub), laid out as systemd's ukify does: each
//! new section's data starts at the next FileAlignment boundary after the file's end, its
//! virtual address is the next SectionAlignment boundary after the previous section's end
//! (the stub's last one first), SizeOfImage covers the last section, CheckSum is 0.
//!
//! goblin reads PE files but has no writer, so the few header fields a new section
//! changes are patched here by hand at the offsets the PE/COFF specification gives; goblin
//! parses (and so validates) the input and gives the values that are patched.

use goblin::pe::PE;

/// One section to append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section<'a> {
    /// At most 8 bytes (`.linux`, `.initrd`, ...).
    pub name: &'a str,
    pub data: &'a [u8],
    /// The size in memory (VirtualSize): at least `data.len()`; more is zero-filled by the
    /// loader (the kernel's SizeOfImage for `.linux`, so it can run in place).
    pub virtual_size: u32,
    /// Code rather than initialized data (`.linux`: old kernels run in place through the
    /// EFI handover protocol).
    pub code: bool,
}

impl<'a> Section<'a> {
    /// A data section whose size in memory is its size on disk.
    pub fn data(name: &'a str, data: &'a [u8]) -> Section<'a> {
        Section {
            name,
            data,
            // Checked when laid out: a section beyond 4 GiB is refused there.
            virtual_size: u32::try_from(data.len()).unwrap_or(u32::MAX),
            code: false,
        }
    }
}

/// Why sections cannot be added to an image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeError {
    #[error("not a PE image: {0}")]
    NotPe(String),
    #[error("it is signed (it has a certificate table); a stub is used unsigned and the UKI signed as a whole")]
    Signed,
    #[error("two {0} sections")]
    Duplicate(String),
    #[error("section {name}: raw data at {offset:#x}+{size:#x} is not aligned to FileAlignment {align:#x}")]
    Unaligned {
        name: String,
        offset: u32,
        size: u32,
        align: u32,
    },
    #[error("no room for {0} more section headers before the first section's data")]
    NoHeaderRoom(usize),
    #[error("section name {0:?} is longer than 8 bytes")]
    LongName(String),
    #[error("the image would exceed the 4 GiB a PE file can address")]
    TooLarge,
}

/// Bytes of one section header.
const SECTION_HEADER: usize = 40;
/// COFF characteristics: the symbol table was removed.
const LOCAL_SYMS_STRIPPED: u16 = 0x0008;
/// Section characteristics.
const SCN_CNT_CODE: u32 = 0x0000_0020;
const SCN_CNT_INITIALIZED_DATA: u32 = 0x0000_0040;
const SCN_MEM_READ: u32 = 0x4000_0000;

/// Offsets in the COFF header (from the "PE\0\0" signature) and the optional header (the
/// same for PE32 and PE32+ up to CheckSum).
const COFF_NUMBER_OF_SECTIONS: usize = 6;
const COFF_POINTER_TO_SYMBOL_TABLE: usize = 12;
const COFF_NUMBER_OF_SYMBOLS: usize = 16;
const COFF_CHARACTERISTICS: usize = 22;
const OPT: usize = 24;
const OPT_SIZE_OF_INITIALIZED_DATA: usize = OPT + 8;
const OPT_SIZE_OF_IMAGE: usize = OPT + 56;
const OPT_SIZE_OF_HEADERS: usize = OPT + 60;
const OPT_CHECKSUM: usize = OPT + 64;

/// What of the input image the layout needs, read by goblin.
#[derive(Debug)]
struct Layout {
    /// Offset of the "PE\0\0" signature.
    pe: usize,
    /// Where the section table ends: the first new header goes there.
    table_end: usize,
    /// The end of the space the headers may use (SizeOfHeaders rounded up to
    /// FileAlignment, never past the first section's data).
    headers_room: usize,
    file_align: u32,
    section_align: u32,
    sections: u16,
    /// The end, in memory, of the last section.
    next_va: u32,
    initialized_data: u32,
    /// The symbol table (and its string table) at the end of the file: (offset, bytes).
    symbols: Option<(usize, usize)>,
    names: Vec<String>,
}

/// The image with `sections` appended, in order; `image` must be an unsigned PE file
/// whose sections' raw data is FileAlignment-aligned (as a stub is).
pub fn add_sections(image: &[u8], sections: &[Section]) -> Result<Vec<u8>, PeError> {
    let layout = read_layout(image)?;
    for (i, s) in sections.iter().enumerate() {
        if s.name.len() > 8 {
            return Err(PeError::LongName(s.name.to_owned()));
        }
        if layout.names.iter().any(|n| n == s.name)
            || sections[..i].iter().any(|t| t.name == s.name)
        {
            return Err(PeError::Duplicate(s.name.to_owned()));
        }
    }
    // The new headers go where the table ends: that space must exist and be unused.
    let table = layout.table_end..layout.table_end + SECTION_HEADER * sections.len();
    if table.end > layout.headers_room || image[table].iter().any(|b| *b != 0) {
        return Err(PeError::NoHeaderRoom(sections.len()));
    }
    // Old stubs (systemd 252's) still carry a COFF symbol table at the end; an image file
    // should have none, and sections appended after it would strand it. ukify drops it too.
    let keep = layout.symbols.map_or(image.len(), |(offset, _)| offset);
    let mut out = image[..keep].to_vec();
    let mut va = layout.next_va;
    let mut initialized = layout.initialized_data;
    for (i, s) in sections.iter().enumerate() {
        let header = append_section(&mut out, &layout, s, &mut va)?;
        let at = layout.table_end + SECTION_HEADER * i;
        out[at..at + SECTION_HEADER].copy_from_slice(&header);
        initialized = initialized
            .checked_add(s.virtual_size)
            .ok_or(PeError::TooLarge)?;
    }
    let pe = layout.pe;
    let count = u16::try_from(sections.len())
        .ok()
        .and_then(|n| n.checked_add(layout.sections))
        .ok_or(PeError::TooLarge)?;
    put_u16(&mut out, pe + COFF_NUMBER_OF_SECTIONS, count);
    if layout.symbols.is_some() {
        put_u32(&mut out, pe + COFF_POINTER_TO_SYMBOL_TABLE, 0);
        put_u32(&mut out, pe + COFF_NUMBER_OF_SYMBOLS, 0);
        let c = get_u16(&out, pe + COFF_CHARACTERISTICS) | LOCAL_SYMS_STRIPPED;
        put_u16(&mut out, pe + COFF_CHARACTERISTICS, c);
    }
    put_u32(&mut out, pe + OPT_SIZE_OF_INITIALIZED_DATA, initialized);
    put_u32(
        &mut out,
        pe + OPT_SIZE_OF_IMAGE,
        round_up(va, layout.section_align)?,
    );
    put_u32(
        &mut out,
        pe + OPT_SIZE_OF_HEADERS,
        layout.headers_room as u32,
    );
    // Firmware does not check it and signing replaces it; ukify writes 0 as well.
    put_u32(&mut out, pe + OPT_CHECKSUM, 0);
    Ok(out)
}

/// Appends `s`'s data (FileAlignment-padded) to `out`; returns its section header and
/// moves `va` to the end of the section in memory.
fn append_section(
    out: &mut Vec<u8>,
    layout: &Layout,
    s: &Section,
    va: &mut u32,
) -> Result<[u8; SECTION_HEADER], PeError> {
    let fa = layout.file_align;
    let len = u32::try_from(s.data.len()).map_err(|_| PeError::TooLarge)?;
    let offset = u32::try_from(out.len()).map_err(|_| PeError::TooLarge)?;
    let offset = round_up(offset, fa)?;
    let raw_size = round_up(len, fa)?;
    offset.checked_add(raw_size).ok_or(PeError::TooLarge)?;
    let address = round_up(*va, layout.section_align)?;
    let virtual_size = s.virtual_size.max(len);
    *va = address.checked_add(virtual_size).ok_or(PeError::TooLarge)?;
    out.resize(offset as usize, 0);
    out.extend_from_slice(s.data);
    out.resize((offset + raw_size) as usize, 0);

    let mut h = [0u8; SECTION_HEADER];
    h[..s.name.len()].copy_from_slice(s.name.as_bytes());
    h[8..12].copy_from_slice(&virtual_size.to_le_bytes());
    h[12..16].copy_from_slice(&address.to_le_bytes());
    h[16..20].copy_from_slice(&raw_size.to_le_bytes());
    h[20..24].copy_from_slice(&offset.to_le_bytes());
    let kind = if s.code {
        SCN_CNT_CODE
    } else {
        SCN_CNT_INITIALIZED_DATA
    };
    h[36..40].copy_from_slice(&(SCN_MEM_READ | kind).to_le_bytes());
    Ok(h)
}

/// Each section's name and its bytes as a loader maps them: the raw data cut or
/// zero-filled to VirtualSize. What systemd-stub measures and hands over.
pub fn sections_in_memory(image: &[u8]) -> Result<Vec<(String, Vec<u8>)>, PeError> {
    let mut opts = goblin::pe::options::ParseOptions::default();
    opts.parse_attribute_certificates = false;
    let pe = PE::parse_with_opts(image, &opts).map_err(|e| PeError::NotPe(e.to_string()))?;
    let mut out = Vec::new();
    for s in &pe.sections {
        let name = String::from_utf8_lossy(&s.name)
            .trim_end_matches('\0')
            .to_owned();
        let start = (s.pointer_to_raw_data as usize).min(image.len());
        let end = start
            .saturating_add(s.size_of_raw_data as usize)
            .min(image.len());
        let mut data = image[start..end].to_vec();
        data.resize(s.virtual_size as usize, 0);
        out.push((name, data));
    }
    Ok(out)
}

/// Parses `image` with goblin and checks it can take new sections.
fn read_layout(image: &[u8]) -> Result<Layout, PeError> {
    // Certificates are only looked for, not parsed: a signed stub is refused either way.
    let mut opts = goblin::pe::options::ParseOptions::default();
    opts.parse_attribute_certificates = false;
    let pe = PE::parse_with_opts(image, &opts).map_err(|e| PeError::NotPe(e.to_string()))?;
    let opt = pe
        .header
        .optional_header
        .ok_or_else(|| PeError::NotPe("no optional header (an object file?)".into()))?;
    if opt.data_directories.get_certificate_table().is_some() {
        return Err(PeError::Signed);
    }
    let w = opt.windows_fields;
    let (fa, sa) = (w.file_alignment, w.section_alignment);
    if !fa.is_power_of_two() || !sa.is_power_of_two() {
        return Err(PeError::NotPe(format!(
            "FileAlignment {fa:#x} / SectionAlignment {sa:#x} not powers of two"
        )));
    }
    let coff = pe.header.coff_header;
    let pe_offset = pe.header.dos_header.pe_pointer as usize;
    let table_end = pe_offset
        + OPT
        + coff.size_of_optional_header as usize
        + SECTION_HEADER * coff.number_of_sections as usize;
    let mut headers_room = round_up(w.size_of_headers, fa)? as usize;
    let mut next_va = 0;
    let mut names = Vec::new();
    for s in &pe.sections {
        let name = String::from_utf8_lossy(&s.name)
            .trim_end_matches('\0')
            .to_owned();
        if s.pointer_to_raw_data % fa != 0 || s.size_of_raw_data % fa != 0 {
            return Err(PeError::Unaligned {
                name,
                offset: s.pointer_to_raw_data,
                size: s.size_of_raw_data,
                align: fa,
            });
        }
        if s.size_of_raw_data > 0 {
            headers_room = headers_room.min(s.pointer_to_raw_data as usize);
        }
        next_va = next_va.max(s.virtual_address.saturating_add(s.virtual_size));
        names.push(name);
    }
    Ok(Layout {
        pe: pe_offset,
        table_end,
        headers_room,
        file_align: fa,
        section_align: sa,
        sections: coff.number_of_sections,
        next_va,
        // PE32+ widens the field in goblin's type only; it is 32 bits in the file.
        initialized_data: opt.standard_fields.size_of_initialized_data as u32,
        symbols: trailing_symbols(image, &coff),
        names,
    })
}

/// The COFF symbol table and its string table when they end the file (only then are they
/// dropped, as ukify does).
fn trailing_symbols(image: &[u8], coff: &goblin::pe::header::CoffHeader) -> Option<(usize, usize)> {
    let start = coff.pointer_to_symbol_table as usize;
    if start == 0 {
        return None;
    }
    let symbols_end = start.checked_add(18 * coff.number_of_symbol_table as usize)?;
    let strings = image
        .get(symbols_end..symbols_end + 4)
        .map_or(0, |b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize);
    let end = symbols_end.checked_add(strings)?;
    (end == image.len()).then_some((start, end - start))
}

fn round_up(value: u32, align: u32) -> Result<u32, PeError> {
    value
        .checked_next_multiple_of(align)
        .ok_or(PeError::TooLarge)
}

fn get_u16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn put_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_le_bytes());
}

fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
