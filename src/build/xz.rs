//! An .xz writer for the .deb data member and the .rpm payload, cut into
//! blocks that are compressed independently and in parallel.
//!
//! liblzma's own multi-threaded encoder runs LZMA over incompressible bytes
//! (compressed assets) as over text, only to store them: LZMA2 falls back
//! to uncompressed chunks after trying. On the benchmark payload that was
//! 2 of xz -0's 3.5 s of CPU, for 5 MiB of random bytes out of 28. So,
//! when the settings ask for it, each 256 KiB segment is first probed with
//! zstd at level 1 (hundreds of MB/s); segments it cannot shrink go into
//! blocks of stored LZMA2 chunks, written without running LZMA, and the
//! others into LZMA2 blocks of at most `block_mib`. The probe sees one
//! segment at a time, so a compressed asset shipped twice is stored twice
//! (and the stored run also cuts the LZMA2 blocks around it). The layout
//! depends on the data and the settings alone, never on the number of
//! threads, so builds stay byte-identical across machines.
//!
//! The stream is plain .xz (one stream, CRC32 checks, LZMA2 blocks, with
//! the x86 BCJ filter before LZMA2 when asked) as described in the .xz
//! file format specification 1.1.0; xz, dpkg, rpm and lintian read it like
//! any other.

use std::io::Write;
use std::ops::Range;

use anyhow::{Context, Result};
pub use liblzma::stream::MatchFinder;

/// The probe's granularity, and the smallest block.
const SEGMENT: usize = 256 << 10;
/// LZMA2's largest uncompressed chunk.
const CHUNK: usize = 64 << 10;
/// The check each block carries: CRC32 (check ID 1).
const CHECK_CRC32: u8 = 0x01;
const HEADER_MAGIC: [u8; 6] = [0xfd, b'7', b'z', b'X', b'Z', 0x00];
const FOOTER_MAGIC: [u8; 2] = [b'Y', b'Z'];

/// How the LZMA2 blocks are compressed.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The xz preset (0–9), for its mode (fast or optimal parsing) and
    /// search depth.
    pub preset: u32,
    /// Replaces the preset's match finder.
    pub match_finder: MatchFinder,
    /// Replaces the preset's nice length: a match this long is taken
    /// without looking for a longer one.
    pub nice_len: u32,
    /// The largest dictionary, in MiB; a block gets the smallest power of
    /// two that covers it, up to this. Decompression needs about as much.
    pub dict_mib: u32,
    /// The largest block, in MiB. Blocks share nothing, so repeats farther
    /// apart than this are not found; smaller blocks spread over more cores.
    pub block_mib: u32,
    /// Store the segments zstd -1 cannot shrink instead of running LZMA2
    /// over them (see above).
    pub store_incompressible: bool,
    /// Run the x86 BCJ filter before LZMA2: call and jump targets in
    /// x86-64 machine code made absolute, so that repeated calls match.
    /// Programs shrink by about 5%; text and compressed data barely move.
    pub x86: bool,
}

/// The small profile's, for the .deb and the .rpm alike: xz -6 (binary
/// trees over 4-byte hashes, nice length 64, optimal parsing, 8 MiB
/// dictionary) with the x86 filter, in blocks of up to 32 MiB, one core per
/// format. Nothing is stored, so that a compressed asset shipped twice is
/// found (0.62 of the size of storing on the bench's `.gz` payload). On the
/// bench corpus the x86 filter makes programs 4.5% smaller, other payloads
/// within 1.2% either way. A 32 MiB dictionary saves at most 0.3% more for
/// 2.5 times the memory (250 MiB a format); preset 5 (nice length 32) is
/// 0.3-1.4% larger, preset 4 with 3-byte trees 3-7% larger. Decompression
/// needs 8 MiB.
pub const SMALL: Settings = Settings {
    preset: 6,
    match_finder: MatchFinder::BinaryTree4,
    nice_len: 64,
    dict_mib: 8,
    block_mib: 32,
    store_incompressible: false,
    x86: true,
};

/// A run of the input encoded as one .xz block.
struct Block {
    range: Range<usize>,
    stored: bool,
}

/// Compresses `data` into one .xz stream.
pub fn compress(data: &[u8], settings: Settings) -> Result<Vec<u8>> {
    let threads = crate::build::threads();
    let segments: Vec<&[u8]> = data.chunks(SEGMENT).collect();
    let stored = parallel_map(&segments, threads, |s| {
        settings.store_incompressible && incompressible(s)
    })
    .into_iter();
    let blocks = plan(data.len(), stored, (settings.block_mib as usize) << 20);
    let bodies = parallel_map(&blocks, threads, |b| {
        encode(&data[b.range.clone()], b.stored, settings)
    });
    let mut out = stream_header();
    let mut records = Vec::with_capacity(blocks.len());
    for (block, body) in blocks.iter().zip(bodies) {
        let block_data = &data[block.range.clone()];
        // Stored chunks are the bytes themselves: no filter before them.
        let x86 = settings.x86 && !block.stored;
        let dict = dict_size(block_data.len(), settings);
        records.push(write_block(&mut out, block_data, &body?, dict, x86));
    }
    let index = index(&records);
    out.extend_from_slice(&index);
    out.extend_from_slice(&stream_footer(index.len()));
    Ok(out)
}

/// Whether zstd at level 1 saves less than 1/64 of `segment`: LZMA2 would
/// then rarely save more than a few percent, at the full cost of trying.
fn incompressible(segment: &[u8]) -> bool {
    zstd::bulk::compress(segment, 1)
        .map(|c| c.len() + segment.len() / 64 >= segment.len())
        .unwrap_or(false)
}

/// Groups consecutive segments of one kind into blocks of at most
/// `block_size` bytes (at least one segment).
fn plan(len: usize, stored: impl Iterator<Item = bool>, block_size: usize) -> Vec<Block> {
    let mut blocks: Vec<Block> = Vec::new();
    for (i, stored) in stored.enumerate() {
        let range = i * SEGMENT..((i + 1) * SEGMENT).min(len);
        match blocks.last_mut() {
            Some(b) if b.stored == stored && range.end - b.range.start <= block_size => {
                b.range.end = range.end
            }
            _ => blocks.push(Block { range, stored }),
        }
    }
    blocks
}

/// The block's dictionary: the smallest power of two covering it, within
/// LZMA2's minimum and the settings' largest.
fn dict_size(len: usize, settings: Settings) -> u32 {
    let largest = settings.dict_mib << 20;
    (len.next_power_of_two().min(largest as usize) as u32).clamp(4096, largest)
}

/// The block's LZMA2 data: compressed, or stored chunk by chunk.
fn encode(data: &[u8], stored: bool, settings: Settings) -> Result<Vec<u8>> {
    if stored {
        return Ok(stored_lzma2(data));
    }
    let mut options = liblzma::stream::LzmaOptions::new_preset(settings.preset)?;
    options.dict_size(dict_size(data.len(), settings));
    options.match_finder(settings.match_finder);
    options.nice_len(settings.nice_len);
    let mut filters = liblzma::stream::Filters::new();
    if settings.x86 {
        filters.x86();
    }
    filters.lzma2(&options);
    let stream =
        liblzma::stream::Stream::new_raw_encoder(&filters).context("starting the LZMA2 encoder")?;
    let mut e = liblzma::write::XzEncoder::new_stream(Vec::with_capacity(data.len() / 2), stream);
    e.write_all(data)?;
    Ok(e.finish()?)
}

/// LZMA2 uncompressed chunks: control byte 1 (dictionary reset, the first
/// of a block) or 2, the size minus one in big-endian, the bytes; then the
/// end marker 0.
fn stored_lzma2(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 3 * data.len().div_ceil(CHUNK) + 1);
    for (i, chunk) in data.chunks(CHUNK).enumerate() {
        out.push(if i == 0 { 1 } else { 2 });
        out.extend_from_slice(&((chunk.len() - 1) as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out.push(0);
    out
}

/// Appends one block (header, LZMA2 data, padding, CRC32 of `data`) and
/// returns its index record: unpadded size, uncompressed size.
fn write_block(out: &mut Vec<u8>, data: &[u8], body: &[u8], dict: u32, x86: bool) -> (u64, u64) {
    let header = block_header(dict, x86);
    out.extend_from_slice(&header);
    out.extend_from_slice(body);
    out.resize(out.len() + padding(body.len()), 0);
    out.extend_from_slice(&crc32fast::hash(data).to_le_bytes());
    let unpadded = header.len() + body.len() + 4;
    (unpadded as u64, data.len() as u64)
}

/// A 12-byte block header: its size in 4-byte units minus one, flags (the
/// number of filters minus one, no size fields), the x86 filter if asked
/// (ID 0x04, no properties), the LZMA2 filter (ID 0x21, one property byte:
/// the dictionary size), padding, CRC32.
fn block_header(dict: u32, x86: bool) -> Vec<u8> {
    let lzma2 = [0x21, 0x01, dict_property(dict)];
    let mut h = if x86 {
        [&[12 / 4 - 1, 0x01, 0x04, 0x00][..], &lzma2, &[0]].concat()
    } else {
        [&[12 / 4 - 1, 0x00][..], &lzma2, &[0, 0, 0]].concat()
    };
    let crc = crc32fast::hash(&h);
    h.extend_from_slice(&crc.to_le_bytes());
    h
}

/// LZMA2's dictionary property: the smallest `b` with
/// `(2 | (b & 1)) << (b / 2 + 11)` at least `dict`.
fn dict_property(dict: u32) -> u8 {
    (0..40u8)
        .find(|&b| u64::from(2 | (b & 1)) << (b / 2 + 11) >= u64::from(dict))
        .unwrap_or(40)
}

fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// The index: indicator 0, record count, records, padding, CRC32.
fn index(records: &[(u64, u64)]) -> Vec<u8> {
    let mut ix = vec![0x00];
    varint(&mut ix, records.len() as u64);
    for &(unpadded, uncompressed) in records {
        varint(&mut ix, unpadded);
        varint(&mut ix, uncompressed);
    }
    ix.resize(ix.len() + padding(ix.len()), 0);
    let crc = crc32fast::hash(&ix);
    ix.extend_from_slice(&crc.to_le_bytes());
    ix
}

/// The format's multibyte integer: 7 bits a byte, low first.
fn varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn stream_header() -> Vec<u8> {
    let flags = [0x00, CHECK_CRC32];
    let mut h = HEADER_MAGIC.to_vec();
    h.extend_from_slice(&flags);
    h.extend_from_slice(&crc32fast::hash(&flags).to_le_bytes());
    h
}

/// The footer: CRC32, the index size in 4-byte units minus one, the
/// stream flags, the magic.
fn stream_footer(index_len: usize) -> Vec<u8> {
    let mut fields = ((index_len / 4 - 1) as u32).to_le_bytes().to_vec();
    fields.extend_from_slice(&[0x00, CHECK_CRC32]);
    let mut f = crc32fast::hash(&fields).to_le_bytes().to_vec();
    f.extend_from_slice(&fields);
    f.extend_from_slice(&FOOTER_MAGIC);
    f
}

/// `f` over `items` on `threads` threads; results in the items' order,
/// whatever the number of threads.
fn parallel_map<T: Sync, R: Send>(items: &[T], threads: u32, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let worker = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                return done;
            };
            done.push((i, f(item)));
        }
    };
    let mut results: Vec<(usize, R)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.max(1)).map(|_| s.spawn(worker)).collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a compression thread panicked"))
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const SETTINGS: Settings = Settings {
        preset: 0,
        match_finder: MatchFinder::HashChain3,
        nice_len: 128,
        dict_mib: 1,
        block_mib: 1,
        store_incompressible: true,
        x86: false,
    };

    fn decompress(xz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        liblzma::read::XzDecoder::new(xz)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// Text, then bytes no compressor can shrink, then text again.
    fn mixed() -> Vec<u8> {
        let mut state = 42u64;
        let noise = (0..3 * SEGMENT).map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            (state >> 56) as u8
        });
        let text = b"agent started, state schema 3\n".repeat(20_000);
        text.iter()
            .copied()
            .chain(noise)
            .chain(text.clone())
            .collect()
    }

    #[test]
    fn round_trips_through_liblzma() {
        let x86 = Settings {
            x86: true,
            ..SETTINGS
        };
        let everything = Settings {
            store_incompressible: false,
            ..x86
        };
        // A call (E8) every 5 bytes, which the x86 filter rewrites.
        let calls: Vec<u8> = (0..200_000u32)
            .flat_map(|i| [0xe8, i as u8, (i >> 8) as u8, 0, 0])
            .collect();
        for settings in [SETTINGS, x86, everything] {
            for data in [Vec::new(), b"x".to_vec(), mixed(), calls.clone()] {
                assert_eq!(decompress(&compress(&data, settings).unwrap()), data);
            }
        }
    }

    #[test]
    fn noise_is_stored_and_text_is_not() {
        let data = mixed();
        let text = &data[..SEGMENT];
        let noise = &data[data.len() / 2..data.len() / 2 + SEGMENT];
        assert!(incompressible(noise));
        assert!(!incompressible(text));
        // Stored noise costs its own size plus 3 bytes a 64 KiB chunk.
        let xz = compress(&data, SETTINGS).unwrap();
        assert!(xz.len() < 3 * SEGMENT + 8192, "{}", xz.len());
    }

    #[test]
    fn plan_cuts_at_kind_changes_and_block_size() {
        let kinds = [false, false, false, true, true, false];
        let blocks = plan(6 * SEGMENT - 5, kinds.into_iter(), 2 * SEGMENT);
        let runs: Vec<(usize, usize, bool)> = blocks
            .iter()
            .map(|b| {
                (
                    b.range.start / SEGMENT,
                    b.range.end.div_ceil(SEGMENT),
                    b.stored,
                )
            })
            .collect();
        assert_eq!(
            runs,
            [(0, 2, false), (2, 3, false), (3, 5, true), (5, 6, false)]
        );
    }

    #[test]
    fn parallel_map_keeps_the_order_whatever_the_threads() {
        let items: Vec<u32> = (0..100).collect();
        let squares: Vec<u32> = items.iter().map(|i| i * i).collect();
        for threads in [1, 3, 8] {
            assert_eq!(parallel_map(&items, threads, |i| i * i), squares);
        }
    }

    #[test]
    fn dictionary_property_covers_the_size() {
        assert_eq!(dict_property(4096), 0);
        assert_eq!(dict_property(6144), 1);
        assert_eq!(dict_property(8 << 20), 22);
        assert_eq!(dict_property(32 << 20), 26);
        assert_eq!(dict_property((32 << 20) + 1), 27);
    }
}
