//! Compression of the initramfs and recognition of the formats the kernel accepts.
//!
//! Written: zstd (default), gzip, xz, lz4 and none, each in the form the kernel's own
//! decompressors read (lib/decompress_*.c):
//! - zstd: one frame with a content checksum.
//! - gzip: one member with a plain 10-byte header (the kernel skips a file name but no
//!   other optional header field), mtime 0.
//! - xz: one stream, LZMA2 only, CRC32 check (the kernel's xz decoder supports no CRC64 or
//!   SHA-256), 1 MiB dictionary (what the kernel documentation and dracut use).
//! - lz4: the legacy frame (magic `0x184C2102`, then blocks of `[u32 LE size][lz4 block]`,
//!   each of at most 8 MiB uncompressed): the only lz4 format `unlz4` reads. It has no end
//!   marker: the kernel reads blocks until the buffer ends or a zero size (NUL padding), so an
//!   lz4 stream must be the last segment of an initramfs.
//!
//! Every writer is single-threaded and deterministic: the same input gives the same bytes on
//! every host (the xz encoder is built from liblzma's bundled sources, not the host's).
//!
//! Read back: the same five, each returning how many compressed bytes the stream took, so
//! that a buffer of several segments can be walked as the kernel walks it.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

/// zstd level used for the initramfs. Measured on the imageless set (the Debian 6.1 cloud
/// kernel's virtio/virtiofs modules plus the static musl init: 1.41 MB uncompressed, the
/// init 709 KB of it), single-threaded, 2-CPU host, compression alone: level 6 gives
/// 506.7 KiB in 19 ms, 7: 504.2 KiB / 23 ms, 8: 500.1 KiB / 25 ms, 9: 499.9 KiB / 36 ms,
/// 10: 499.0 KiB / 43 ms, 12: 498.5 KiB / 57 ms, 19: ~456 KiB / ~540 ms. Level 8 is the
/// knee: 6 ms more than level 6 buys 6.6 KiB of margin under the 512 KiB budget (the init
/// grows), while higher levels buy almost nothing for much more time. Decompression speed
/// in the kernel is about the same for all of them.
pub const ZSTD_LEVEL: i32 = 8;
/// gzip level: 9, as initramfs-tools and dracut use (`gzip -9`); miniz is deterministic.
pub const GZIP_LEVEL: u32 = 9;
/// xz preset (the LZMA2 parameters other than the dictionary).
pub const XZ_PRESET: u32 = 6;
/// xz dictionary: 1 MiB, as `Documentation/.../ramfs-rootfs-initramfs.rst` and dracut use;
/// the kernel allocates it while unpacking.
pub const XZ_DICT: u32 = 1 << 20;
/// Magic of the lz4 legacy frame, little-endian on disk (`02 21 4c 18`).
pub const LZ4_LEGACY_MAGIC: u32 = 0x184C_2102;
/// Uncompressed size of every lz4 legacy block but the last (the kernel's
/// `LZ4_DEFAULT_UNCOMPRESSED_CHUNK_SIZE`).
pub const LZ4_LEGACY_BLOCK: usize = 8 << 20;
/// The largest compressed size of one legacy block (`LZ4_COMPRESSBOUND(8 MiB)`).
pub const LZ4_LEGACY_MAX_COMPRESSED: usize = LZ4_LEGACY_BLOCK + LZ4_LEGACY_BLOCK / 255 + 16;
/// Default bound on what one compressed stream may decompress to when reading.
pub const DEFAULT_DECOMPRESS_LIMIT: usize = 4 << 30;

/// How the archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Compression {
    /// A plain newc archive.
    None,
    /// One zstd frame with a content checksum, single-threaded for deterministic output.
    #[default]
    Zstd,
    /// One gzip member, level 9.
    Gzip,
    /// One xz stream, LZMA2, CRC32 check.
    Xz,
    /// The lz4 legacy frame.
    Lz4,
}

impl Compression {
    /// Every variant, in the order `--help` lists them.
    pub const ALL: &'static [Compression] = &[
        Compression::Zstd,
        Compression::Gzip,
        Compression::Xz,
        Compression::Lz4,
        Compression::None,
    ];

    /// The name used on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Lz4 => "lz4",
        }
    }

    /// The stream format this compression writes.
    pub fn format(self) -> Format {
        match self {
            Compression::None => Format::Cpio,
            Compression::Zstd => Format::Zstd,
            Compression::Gzip => Format::Gzip,
            Compression::Xz => Format::Xz,
            Compression::Lz4 => Format::Lz4Legacy,
        }
    }

    /// The compression that writes `format`, if mkinitrd has one.
    pub fn from_format(format: Format) -> Option<Compression> {
        Compression::ALL
            .iter()
            .copied()
            .find(|c| c.format() == format)
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown compression name.
#[derive(Debug, thiserror::Error)]
#[error("unknown compression {given:?} (supported: {})", supported())]
pub struct UnknownCompression {
    pub given: String,
}

fn supported() -> String {
    Compression::ALL
        .iter()
        .map(|c| c.name())
        .collect::<Vec<_>>()
        .join(", ")
}

impl FromStr for Compression {
    type Err = UnknownCompression;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Compression::ALL
            .iter()
            .copied()
            .find(|c| c.name() == s)
            .ok_or_else(|| UnknownCompression {
                given: s.to_owned(),
            })
    }
}

/// Why compressing failed.
#[derive(Debug, thiserror::Error)]
#[error("{compression} compression failed: {source}")]
pub struct CompressError {
    pub compression: Compression,
    pub source: io::Error,
}

/// Compresses one whole archive into one stream (the in-memory form of [`Encoder`]).
pub fn compress(compression: Compression, data: &[u8]) -> Result<Vec<u8>, CompressError> {
    let fail = |source| CompressError {
        compression,
        source,
    };
    let out = Vec::with_capacity(data.len() / 2 + 64);
    let mut enc = Encoder::new(compression, out, data.len() as u64).map_err(fail)?;
    enc.write_all(data).map_err(fail)?;
    enc.finish().map_err(fail)
}

/// Archives up to this size are zstd-compressed in one shot from memory, larger ones as a
/// stream. zstd 1.5.7's pre-block splitter chooses block boundaries from all the input it
/// sees at once, so streaming (128 KiB at a time) gives other bytes than one-shot
/// compression of the same data. One-shot up to 32 MiB keeps every image of that size
/// byte-identical to what mkinitrd wrote before it streamed (tests/pinned.rs) at a bounded
/// cost (the archive and its compressed copy: at most 64 MiB); beyond it memory stays flat.
/// Both are deterministic: the choice depends on the archive's size alone.
pub const ZSTD_ONE_SHOT_MAX: u64 = 32 << 20;

/// Compresses one stream while it is written: what goes in is compressed into `W` as it
/// comes, so an archive never has to be in memory (see [`ZSTD_ONE_SHOT_MAX`] for the one
/// exception). The bytes are the same however the input is cut into writes (pinned by
/// tests/pinned.rs and tested below): each codec buffers its own blocks. `total_len` must
/// be the exact number of bytes that will be written: zstd records it in the frame header
/// (as one-shot compression does), and a different amount is an error at
/// [`Encoder::finish`].
pub struct Encoder<W: Write> {
    inner: Inner<W>,
}

enum Inner<W: Write> {
    None(W),
    Zstd(zstd::stream::write::Encoder<'static, W>),
    ZstdOneShot { out: W, data: Vec<u8>, len: u64 },
    Gzip(flate2::write::GzEncoder<W>),
    Xz(liblzma::write::XzEncoder<W>),
    Lz4(Lz4LegacyWriter<W>),
}

impl<W: Write> Encoder<W> {
    pub fn new(compression: Compression, out: W, total_len: u64) -> io::Result<Self> {
        let inner = match compression {
            Compression::None => Inner::None(out),
            Compression::Zstd if total_len <= ZSTD_ONE_SHOT_MAX => Inner::ZstdOneShot {
                out,
                data: Vec::with_capacity(total_len as usize),
                len: total_len,
            },
            Compression::Zstd => Inner::Zstd(zstd_encoder(out, ZSTD_LEVEL, total_len)?),
            Compression::Gzip => Inner::Gzip(
                flate2::GzBuilder::new()
                    .mtime(0)
                    .operating_system(255)
                    .write(out, flate2::Compression::new(GZIP_LEVEL)),
            ),
            Compression::Xz => Inner::Xz(liblzma::write::XzEncoder::new_stream(out, xz_stream()?)),
            Compression::Lz4 => Inner::Lz4(Lz4LegacyWriter::new(out)?),
        };
        Ok(Encoder { inner })
    }

    /// Ends the stream and returns the writer.
    pub fn finish(self) -> io::Result<W> {
        match self.inner {
            Inner::None(w) => Ok(w),
            Inner::Zstd(e) => e.finish(),
            Inner::ZstdOneShot { mut out, data, len } => {
                if data.len() as u64 != len {
                    return Err(io::Error::other(format!(
                        "{} bytes written where {len} were announced",
                        data.len()
                    )));
                }
                out.write_all(&zstd_compress(&data, ZSTD_LEVEL)?)?;
                Ok(out)
            }
            Inner::Gzip(e) => e.finish(),
            Inner::Xz(e) => e.finish(),
            Inner::Lz4(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            Inner::None(w) => w.write(buf),
            Inner::Zstd(e) => e.write(buf),
            Inner::ZstdOneShot { data, .. } => {
                data.extend_from_slice(buf);
                Ok(buf.len())
            }
            Inner::Gzip(e) => e.write(buf),
            Inner::Xz(e) => e.write(buf),
            Inner::Lz4(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        // Flushing a compressor would end a block early and change the bytes: only the
        // plain writer is flushed; the others are complete after `finish`.
        match &mut self.inner {
            Inner::None(w) => w.flush(),
            _ => Ok(()),
        }
    }
}

/// zstd at `level` with the settings the initramfs needs, for a stream of exactly `len`
/// bytes.
fn zstd_encoder<W: Write>(
    out: W,
    level: i32,
    len: u64,
) -> io::Result<zstd::stream::write::Encoder<'static, W>> {
    use zstd::zstd_safe::CParameter;
    let mut e = zstd::stream::write::Encoder::new(out, level)?;
    // The kernel checks the checksum when present: a corrupted initrd fails loudly.
    e.include_checksum(true)?;
    // Multithreading (only with the zstdmt feature, which we do not enable) would make the
    // output depend on the machine; keep it explicit.
    e.set_parameter(CParameter::NbWorkers(0))?;
    // The content size in the frame header, and the parameters zstd derives from the size,
    // as one-shot compression of the same bytes gives.
    e.include_contentsize(true)?;
    e.set_pledged_src_size(Some(len))?;
    Ok(e)
}

/// zstd at a given level with the settings the initramfs needs, in one shot. Exposed for
/// measuring.
pub fn zstd_compress(data: &[u8], level: i32) -> io::Result<Vec<u8>> {
    use zstd::zstd_safe::CParameter;
    let mut c = zstd::bulk::Compressor::new(level)?;
    // The kernel checks the checksum when present: a corrupted initrd fails loudly.
    c.set_parameter(CParameter::ChecksumFlag(true))?;
    c.set_parameter(CParameter::NbWorkers(0))?;
    // bulk compression records the content size in the frame header.
    c.compress(data)
}

/// One gzip member: no file name, mtime 0, OS "unknown" (255), so nothing of the host leaks.
pub fn gzip_compress(data: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .operating_system(255)
        .write(
            Vec::with_capacity(data.len() / 2),
            flate2::Compression::new(level),
        );
    enc.write_all(data)?;
    enc.finish()
}

/// The xz encoder: LZMA2 (preset [`XZ_PRESET`], dictionary [`XZ_DICT`]), CRC32 check.
fn xz_stream() -> io::Result<liblzma::stream::Stream> {
    use liblzma::stream::{Check, Filters, LzmaOptions, Stream};
    let mut opts = LzmaOptions::new_preset(XZ_PRESET).map_err(io::Error::other)?;
    opts.dict_size(XZ_DICT);
    let mut filters = Filters::new();
    filters.lzma2(&opts);
    Stream::new_stream_encoder(&filters, Check::Crc32).map_err(io::Error::other)
}

/// One xz stream: LZMA2 (preset [`XZ_PRESET`], dictionary [`XZ_DICT`]), CRC32 check.
pub fn xz_compress(data: &[u8]) -> io::Result<Vec<u8>> {
    let mut e = liblzma::write::XzEncoder::new_stream(Vec::new(), xz_stream()?);
    e.write_all(data)?;
    e.finish()
}

/// The lz4 legacy frame: the magic, then one `[u32 LE compressed size][block]` per 8 MiB of
/// input. Empty input gives the magic alone.
pub fn lz4_legacy_compress(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() / 2 + 16);
    out.extend_from_slice(&LZ4_LEGACY_MAGIC.to_le_bytes());
    for chunk in data.chunks(LZ4_LEGACY_BLOCK) {
        lz4_legacy_block(&mut out, chunk);
    }
    out
}

fn lz4_legacy_block(out: &mut Vec<u8>, chunk: &[u8]) {
    let block = lz4_flex::block::compress(chunk);
    // A block of at most 8 MiB compresses to less than 4 GiB.
    out.extend_from_slice(&(block.len() as u32).to_le_bytes());
    out.extend_from_slice(&block);
}

/// [`lz4_legacy_compress`] as a writer: buffers one 8 MiB block at a time.
struct Lz4LegacyWriter<W: Write> {
    out: W,
    block: Vec<u8>,
    scratch: Vec<u8>,
}

impl<W: Write> Lz4LegacyWriter<W> {
    fn new(mut out: W) -> io::Result<Self> {
        out.write_all(&LZ4_LEGACY_MAGIC.to_le_bytes())?;
        Ok(Lz4LegacyWriter {
            out,
            block: Vec::new(),
            scratch: Vec::new(),
        })
    }

    fn emit(&mut self) -> io::Result<()> {
        self.scratch.clear();
        lz4_legacy_block(&mut self.scratch, &self.block);
        self.block.clear();
        self.out.write_all(&self.scratch)
    }

    fn finish(mut self) -> io::Result<W> {
        if !self.block.is_empty() {
            self.emit()?;
        }
        Ok(self.out)
    }
}

impl<W: Write> Write for Lz4LegacyWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(LZ4_LEGACY_BLOCK - self.block.len());
        self.block.extend_from_slice(&buf[..n]);
        if self.block.len() == LZ4_LEGACY_BLOCK {
            self.emit()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// One compressed stream read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decompressed {
    pub data: Vec<u8>,
    /// Compressed bytes the stream took (trailing NUL padding not included).
    pub consumed: usize,
    /// Something the kernel would trip over (only lz4: data after the stream that unlz4
    /// would read as another block).
    pub problem: Option<String>,
}

fn too_big(limit: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("decompresses to more than {limit} bytes"),
    )
}

/// Reads `r` to its end, failing beyond `limit` bytes.
fn read_limited(r: impl Read, limit: usize, size_hint: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(size_hint.min(limit).min(64 << 20));
    r.take((limit as u64).saturating_add(1))
        .read_to_end(&mut out)?;
    if out.len() > limit {
        return Err(too_big(limit));
    }
    Ok(out)
}

/// Decompresses the one stream of `compression` at the start of `bytes`, as the kernel
/// would (one zstd frame, one gzip member, one xz stream, one lz4 legacy frame). `limit`
/// bounds the output (a small input may claim gigabytes).
pub fn decompress_stream(
    compression: Compression,
    bytes: &[u8],
    limit: usize,
) -> io::Result<Decompressed> {
    let plain = |data: Vec<u8>, consumed: usize| Decompressed {
        data,
        consumed,
        problem: None,
    };
    match compression {
        Compression::None => {
            if bytes.len() > limit {
                return Err(too_big(limit));
            }
            Ok(plain(bytes.to_vec(), bytes.len()))
        }
        Compression::Zstd => {
            let len = zstd::zstd_safe::find_frame_compressed_size(bytes).map_err(|code| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    zstd::zstd_safe::get_error_name(code),
                )
            })?;
            let decoder = zstd::stream::read::Decoder::with_buffer(&bytes[..len])?.single_frame();
            Ok(plain(read_limited(decoder, limit, len * 4)?, len))
        }
        Compression::Gzip => {
            let mut rest: &[u8] = bytes;
            let data = {
                let decoder = flate2::bufread::GzDecoder::new(&mut rest);
                read_limited(decoder, limit, bytes.len() * 3)?
            };
            Ok(plain(data, bytes.len() - rest.len()))
        }
        Compression::Xz => xz_decompress(bytes, limit).map(|(d, n)| plain(d, n)),
        Compression::Lz4 => lz4_legacy_decompress(bytes, limit),
    }
}

/// Decompresses the single zstd frame at the start of `bytes`; returns the data and the
/// number of compressed bytes the frame took.
pub fn decompress_zstd_frame(bytes: &[u8]) -> io::Result<(Vec<u8>, usize)> {
    decompress_stream(Compression::Zstd, bytes, DEFAULT_DECOMPRESS_LIMIT)
        .map(|d| (d.data, d.consumed))
}

/// One xz stream (not concatenated ones: the kernel reads one per segment).
fn xz_decompress(bytes: &[u8], limit: usize) -> io::Result<(Vec<u8>, usize)> {
    let mut rest: &[u8] = bytes;
    let data = {
        // Without LZMA_CONCATENATED the decoder stops right after the stream footer.
        let decoder = liblzma::bufread::XzDecoder::new(&mut rest);
        read_limited(decoder, limit, bytes.len() * 4)?
    };
    Ok((data, bytes.len() - rest.len()))
}

/// The lz4 legacy frame, read as the kernel's `unlz4` reads it: blocks until the buffer ends
/// or a zero size; a repeated magic is skipped. Anything else after at least one block is
/// reported as a [`Decompressed::problem`] (the kernel would fail there) and ends the stream.
pub fn lz4_legacy_decompress(bytes: &[u8], limit: usize) -> io::Result<Decompressed> {
    let invalid = |m: String| io::Error::new(io::ErrorKind::InvalidData, m);
    let le32 = |at: usize| -> Option<u32> {
        bytes
            .get(at..at + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    if le32(0) != Some(LZ4_LEGACY_MAGIC) {
        return Err(invalid("not an lz4 legacy frame".into()));
    }
    let mut pos = 4;
    let mut out = Vec::new();
    let mut blocks = 0usize;
    let mut block = vec![0u8; 0];
    loop {
        let Some(size) = le32(pos) else {
            // Fewer than 4 bytes left: the end (the kernel stops the same way).
            return Ok(Decompressed {
                data: out,
                consumed: pos,
                problem: None,
            });
        };
        if size == LZ4_LEGACY_MAGIC {
            pos += 4;
            continue;
        }
        if size == 0 {
            return Ok(Decompressed {
                data: out,
                consumed: pos,
                problem: None,
            });
        }
        let size = size as usize;
        let fail = |what: String| -> io::Result<Decompressed> {
            Err(invalid(format!("lz4 block at offset {pos}: {what}")))
        };
        let data = match bytes.get(pos + 4..pos + 4 + size) {
            Some(d) if size <= LZ4_LEGACY_MAX_COMPRESSED => d,
            _ if blocks > 0 => {
                return Ok(Decompressed {
                    data: out,
                    consumed: pos,
                    problem: Some(format!(
                        "data follows the lz4 stream at offset {pos}; the kernel's unlz4 reads it as another block and fails: an lz4 segment must be the last one"
                    )),
                })
            }
            _ => return fail(format!("size {size} does not fit")),
        };
        if block.is_empty() {
            block = vec![0u8; LZ4_LEGACY_BLOCK];
        }
        match lz4_flex::block::decompress_into(data, &mut block) {
            Ok(n) => {
                if out.len() + n > limit {
                    return Err(too_big(limit));
                }
                out.extend_from_slice(&block[..n]);
            }
            Err(e) if blocks > 0 => {
                return Ok(Decompressed {
                    data: out,
                    consumed: pos,
                    problem: Some(format!(
                        "data follows the lz4 stream at offset {pos} ({e} when read as a block); the kernel's unlz4 fails there: an lz4 segment must be the last one"
                    )),
                })
            }
            Err(e) => return fail(e.to_string()),
        }
        blocks += 1;
        pos += 4 + size;
    }
}

/// Decompresses a whole file compressed with xz, zstd or gzip (kernel modules, firmware):
/// every stream of it, concatenated, as the command-line tools do.
pub fn decompress_file(bytes: &[u8], limit: usize) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        // Stream padding (xz) and zero tails.
        if bytes[pos] == 0 {
            pos += 1;
            continue;
        }
        let format = sniff(&bytes[pos..]);
        let compression = format
            .and_then(Compression::from_format)
            .filter(|c| *c != Compression::None);
        let Some(c) = compression else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "unrecognised data at offset {pos} ({})",
                    format.map_or("unknown format", Format::name)
                ),
            ));
        };
        let d = decompress_stream(c, &bytes[pos..], limit.saturating_sub(out.len()))?;
        out.extend_from_slice(&d.data);
        if d.consumed == 0 {
            break;
        }
        pos += d.consumed;
    }
    Ok(out)
}

/// What a stream in an initramfs buffer starts with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Cpio,
    Zstd,
    Gzip,
    Bzip2,
    Lzma,
    Xz,
    Lzo,
    Lz4Legacy,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Cpio => "cpio",
            Format::Zstd => "zstd",
            Format::Gzip => "gzip",
            Format::Bzip2 => "bzip2",
            Format::Lzma => "lzma",
            Format::Xz => "xz",
            Format::Lzo => "lzo",
            Format::Lz4Legacy => "lz4",
        }
    }
}

/// Recognises a stream by its magic, as the kernel's `decompress_method` does.
pub fn sniff(bytes: &[u8]) -> Option<Format> {
    const MAGICS: &[(&[u8], Format)] = &[
        (b"07070", Format::Cpio),
        (&[0x28, 0xb5, 0x2f, 0xfd], Format::Zstd),
        (&[0x1f, 0x8b], Format::Gzip),
        (&[0x1f, 0x9e], Format::Gzip),
        (b"BZh", Format::Bzip2),
        (&[0x5d, 0x00, 0x00], Format::Lzma),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0x00], Format::Xz),
        (&[0x89, b'L', b'Z', b'O'], Format::Lzo),
        (&[0x02, 0x21, 0x4c, 0x18], Format::Lz4Legacy),
    ];
    MAGICS
        .iter()
        .find(|(magic, _)| bytes.starts_with(magic))
        .map(|(_, f)| *f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<u8> {
        // Compressible but not trivial: a counter mixed with a slow pattern.
        (0..n as u32)
            .map(|i| ((i % 251) ^ (i / 4093)) as u8)
            .collect()
    }

    #[test]
    fn names_round_trip_and_unknown_is_listed() {
        for c in Compression::ALL {
            assert_eq!(c.name().parse::<Compression>().unwrap(), *c);
            assert_eq!(Compression::from_format(c.format()), Some(*c));
        }
        let e = "bzip2".parse::<Compression>().unwrap_err().to_string();
        for name in ["bzip2", "zstd", "gzip", "xz", "lz4", "none"] {
            assert!(e.contains(name), "{e}");
        }
        assert_eq!(Compression::from_format(Format::Lzo), None);
    }

    #[test]
    fn every_compression_round_trips_deterministically() {
        let data = sample(300_000);
        assert_eq!(compress(Compression::None, &data).unwrap(), data);
        for c in &Compression::ALL[..4] {
            let a = compress(*c, &data).unwrap();
            assert_eq!(a, compress(*c, &data).unwrap(), "{c} is not deterministic");
            assert_eq!(sniff(&a), Some(c.format()), "{c}");
            // Trailing padding and a following stream must not be taken as part of it.
            let mut buf = a.clone();
            buf.extend_from_slice(&[0; 7]);
            let d = decompress_stream(*c, &buf, usize::MAX).unwrap();
            assert_eq!(d.data, data, "{c}");
            assert_eq!(d.consumed, a.len(), "{c}");
            assert!(a.len() < data.len() / 4, "{c}: {} bytes", a.len());
            assert_eq!(d.problem, None);
        }
    }

    #[test]
    fn streaming_gives_the_same_bytes_however_the_input_is_cut() {
        // Larger than one lz4 block and many zstd blocks.
        let data = sample(LZ4_LEGACY_BLOCK + 300_001);
        for c in Compression::ALL {
            let whole = compress(*c, &data).unwrap();
            for chunk in [1, 4096, 65_537, 1 << 20] {
                // Chunks of 1 byte only over a prefix: the rest in big writes.
                let mut e = Encoder::new(*c, Vec::new(), data.len() as u64).unwrap();
                let (head, tail) = data.split_at(if chunk == 1 { 5000 } else { 0 });
                for piece in head.chunks(1).chain(tail.chunks(chunk.max(4096))) {
                    e.write_all(piece).unwrap();
                }
                assert!(e.finish().unwrap() == whole, "{c}, writes of {chunk}");
            }
        }
    }

    #[test]
    fn large_zstd_archives_stream_deterministically() {
        // Above the one-shot bound: a stream, the same bytes however it is written, a
        // checksummed frame with the content size, read back whole.
        let len = ZSTD_ONE_SHOT_MAX as usize + 4099;
        let data = sample(len);
        let write = |chunk: usize| {
            let mut e = Encoder::new(Compression::Zstd, Vec::new(), len as u64).unwrap();
            assert!(matches!(e.inner, Inner::Zstd(_)));
            for piece in data.chunks(chunk) {
                e.write_all(piece).unwrap();
            }
            e.finish().unwrap()
        };
        let a = write(1 << 20);
        assert!(a == write(65_537));
        assert_ne!(a[4] & 0b100, 0, "no content checksum");
        assert_eq!(
            zstd::zstd_safe::get_frame_content_size(&a).ok(),
            Some(Some(len as u64))
        );
        let d = decompress_stream(Compression::Zstd, &a, usize::MAX).unwrap();
        assert!(d.data == data);
        assert_eq!(d.consumed, a.len());
    }

    #[test]
    fn zstd_stream_shorter_than_announced_is_an_error() {
        for announced in [100, ZSTD_ONE_SHOT_MAX + 1] {
            let mut e = Encoder::new(Compression::Zstd, Vec::new(), announced).unwrap();
            e.write_all(&[1; 50]).unwrap();
            assert!(e.finish().is_err(), "{announced}");
        }
    }

    #[test]
    fn zstd_is_checksummed_and_sized() {
        let a = compress(Compression::Zstd, &sample(200_000)).unwrap();
        // Frame header descriptor: bit 2 = checksum.
        assert_ne!(a[4] & 0b100, 0, "no content checksum");
        let (back, used) = decompress_zstd_frame(&a).unwrap();
        assert_eq!(back, sample(200_000));
        assert_eq!(used, a.len());
    }

    #[test]
    fn gzip_header_is_plain_and_pinned() {
        let a = compress(Compression::Gzip, b"hello").unwrap();
        // ID1 ID2 CM FLG MTIME(4) XFL OS: deflate, no optional fields, mtime 0, OS unknown.
        assert_eq!(&a[..4], &[0x1f, 0x8b, 8, 0]);
        assert_eq!(&a[4..8], &[0, 0, 0, 0]);
        assert_eq!(a[9], 255);
    }

    #[test]
    fn xz_uses_crc32_and_lzma2() {
        let a = compress(Compression::Xz, &sample(10_000)).unwrap();
        // Stream flags: byte 7 is the check type, 0x01 = CRC32.
        assert_eq!(&a[6..8], &[0x00, 0x01]);
        // Footer repeats the stream flags and ends with "YZ".
        assert_eq!(&a[a.len() - 2..], b"YZ");
        assert_eq!(&a[a.len() - 4..a.len() - 2], &[0x00, 0x01]);
        // Agrees with the xz tool when installed.
        if let Ok(mut child) = std::process::Command::new("xz")
            .args(["-dc"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(&a).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(out.status.success());
            assert_eq!(out.stdout, sample(10_000));
        }
    }

    #[test]
    fn lz4_legacy_layout_and_block_split() {
        assert_eq!(lz4_legacy_compress(&[]), LZ4_LEGACY_MAGIC.to_le_bytes());
        // 8 MiB + 1 byte: two blocks.
        let data = sample(LZ4_LEGACY_BLOCK + 1);
        let a = lz4_legacy_compress(&data);
        assert_eq!(&a[..4], &[0x02, 0x21, 0x4c, 0x18]);
        let first = u32::from_le_bytes(a[4..8].try_into().unwrap()) as usize;
        let second_at = 8 + first;
        let second = u32::from_le_bytes(a[second_at..second_at + 4].try_into().unwrap()) as usize;
        assert_eq!(second_at + 4 + second, a.len());
        assert_eq!(
            lz4_flex::block::decompress(&a[8..8 + first], LZ4_LEGACY_BLOCK)
                .unwrap()
                .len(),
            LZ4_LEGACY_BLOCK
        );
        let d = lz4_legacy_decompress(&a, usize::MAX).unwrap();
        assert_eq!(d.data, data);
        assert_eq!(d.consumed, a.len());
        // A repeated magic (two frames back to back) reads as one stream, like unlz4.
        let small = lz4_legacy_compress(b"abcabcabcabcabcabc");
        let mut two = small.clone();
        two.extend_from_slice(&small);
        let d = lz4_legacy_decompress(&two, usize::MAX).unwrap();
        assert_eq!(d.data, b"abcabcabcabcabcabc".repeat(2));
        assert_eq!(d.consumed, two.len());
    }

    #[test]
    fn lz4_followed_by_another_stream_is_a_problem() {
        let mut buf = lz4_legacy_compress(b"some data some data some data");
        let end = buf.len();
        buf.extend_from_slice(&compress(Compression::Zstd, b"next").unwrap());
        let d = lz4_legacy_decompress(&buf, usize::MAX).unwrap();
        assert_eq!(d.data, b"some data some data some data");
        assert_eq!(d.consumed, end);
        assert!(d.problem.unwrap().contains("must be the last"));
        // Zero padding is the kernel's accepted end.
        let mut padded = lz4_legacy_compress(b"xyz");
        let end = padded.len();
        padded.extend_from_slice(&[0; 8]);
        let d = lz4_legacy_decompress(&padded, usize::MAX).unwrap();
        assert_eq!((d.consumed, d.problem), (end, None));
    }

    #[test]
    fn lz4_matches_the_lz4_tool() {
        let data = sample(100_000);
        let a = lz4_legacy_compress(&data);
        let Ok(mut child) = std::process::Command::new("lz4")
            .args(["-dc"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!("SKIP: lz4 tool not installed");
            return;
        };
        use std::io::Write;
        child.stdin.take().unwrap().write_all(&a).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success());
        assert_eq!(out.stdout, data);
    }

    #[test]
    fn corrupt_and_truncated_streams_are_errors() {
        let data = sample(50_000);
        for c in [Compression::Zstd, Compression::Gzip, Compression::Xz] {
            let a = compress(c, &data).unwrap();
            let n = a.len();
            assert!(
                decompress_stream(c, &a[..n - 6], usize::MAX).is_err(),
                "{c} truncated"
            );
            let mut bad = a.clone();
            bad[n - 5] ^= 0xff; // inside the checksum / trailer
            assert!(
                decompress_stream(c, &bad, usize::MAX).is_err(),
                "{c} corrupt"
            );
        }
        let a = lz4_legacy_compress(&data);
        assert!(lz4_legacy_decompress(&a[..a.len() - 3], usize::MAX).is_err());
    }

    #[test]
    fn output_is_bounded() {
        let zeros = vec![0u8; 1 << 20];
        for c in Compression::ALL {
            let a = compress(*c, &zeros).unwrap();
            let e = decompress_stream(*c, &a, 1000).unwrap_err();
            assert!(e.to_string().contains("more than 1000"), "{c}: {e}");
            assert_eq!(
                decompress_stream(*c, &a, 1 << 20).unwrap().data.len(),
                1 << 20
            );
        }
    }

    #[test]
    fn whole_files_with_several_streams() {
        let mut buf = compress(Compression::Xz, b"one ").unwrap();
        buf.extend_from_slice(&[0; 4]);
        buf.extend_from_slice(&compress(Compression::Gzip, b"two ").unwrap());
        buf.extend_from_slice(&compress(Compression::Zstd, b"three").unwrap());
        assert_eq!(decompress_file(&buf, usize::MAX).unwrap(), b"one two three");
        assert!(decompress_file(b"plain text", usize::MAX).is_err());
    }
}
