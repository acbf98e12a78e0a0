//! An .xz writer for the small profile's .deb data member and .rpm
//! payload, cut into blocks of a fixed size that are compressed
//! independently and in parallel. The blocks depend on the data and the
//! settings alone, never on the number of threads, so builds stay
//! byte-identical across machines.
//!
//! The stream is plain .xz (one stream, CRC32 checks, LZMA2 blocks, with
//! the x86 BCJ filter before LZMA2 when asked) as described in the .xz
//! file format specification 1.1.0; xz, dpkg, rpm and lintian read it like
//! any other.

use anyhow::Result;
pub use liblzma::stream::MatchFinder;

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
    /// Run the x86 BCJ filter before LZMA2: call and jump targets in
    /// x86-64 machine code made absolute, so that repeated calls match.
    /// Programs shrink by about 5%; text and compressed data barely move.
    pub x86: bool,
}

/// The small profile's, for the .deb and the .rpm alike: xz -6 (binary
/// trees over 4-byte hashes, nice length 64, optimal parsing, 8 MiB
/// dictionary) with the x86 filter, in blocks of up to 32 MiB, one core per
/// format. On the bench corpus the x86 filter makes programs 4.5% smaller,
/// other payloads within 1.2% either way. A 32 MiB dictionary saves at most
/// 0.3% more for 2.5 times the memory (250 MiB a format); preset 5 (nice
/// length 32) is 0.3-1.4% larger, preset 4 with 3-byte trees 3-7% larger.
/// Decompression needs 8 MiB.
pub const SMALL: Settings = Settings {
    preset: 6,
    match_finder: MatchFinder::BinaryTree4,
    nice_len: 64,
    dict_mib: 8,
    block_mib: 32,
    x86: true,
};

/// Compresses `data` into one .xz stream of blocks of `block_mib` MiB.
pub fn compress(data: &[u8], settings: Settings) -> Result<Vec<u8>> {
    let blocks: Vec<&[u8]> = data.chunks((settings.block_mib as usize) << 20).collect();
    let bodies = super::parallel_map(&blocks, crate::build::threads(), |b| encode(b, settings));
    let mut out = stream_header();
    let mut records = Vec::with_capacity(blocks.len());
    for (block, body) in blocks.iter().zip(bodies) {
        let dict = dict_size(block.len(), settings);
        records.push(write_block(&mut out, block, &body?, dict, settings.x86));
    }
    let index = index(&records);
    out.extend_from_slice(&index);
    out.extend_from_slice(&stream_footer(index.len()));
    Ok(out)
}

/// The block's dictionary: the smallest power of two covering it, within
/// LZMA2's minimum and the settings' largest.
fn dict_size(len: usize, settings: Settings) -> u32 {
    let largest = settings.dict_mib << 20;
    (len.next_power_of_two().min(largest as usize) as u32).clamp(4096, largest)
}

/// The block's LZMA2 data, from liblzma's one-call raw encoder given
/// [`huge_pages::allocator`]: the crate's streams take no allocator.
fn encode(data: &[u8], settings: Settings) -> Result<Vec<u8>> {
    use liblzma_sys as sys;
    // SAFETY: all-zero is a valid lzma_options_lzma (integers and null
    // pointers); lzma_lzma_preset then fills every field it reads.
    let mut options: sys::lzma_options_lzma = unsafe { std::mem::zeroed() };
    if unsafe { sys::lzma_lzma_preset(&mut options, settings.preset) } != 0 {
        anyhow::bail!("xz preset {} is not supported", settings.preset);
    }
    options.dict_size = dict_size(data.len(), settings);
    options.mf = settings.match_finder as sys::lzma_match_finder;
    options.nice_len = settings.nice_len;
    let filter = |id, options: *mut std::ffi::c_void| sys::lzma_filter { id, options };
    let mut filters = Vec::with_capacity(3);
    if settings.x86 {
        filters.push(filter(sys::LZMA_FILTER_X86, std::ptr::null_mut()));
    }
    filters.push(filter(
        sys::LZMA_FILTER_LZMA2,
        std::ptr::addr_of_mut!(options).cast(),
    ));
    filters.push(filter(sys::LZMA_VLI_UNKNOWN, std::ptr::null_mut()));
    let mut out = vec![0u8; lzma2_bound(data.len())];
    let mut written = 0;
    let allocator = huge_pages::allocator();
    // SAFETY: the filter chain ends with LZMA_VLI_UNKNOWN and points at
    // `options`, which outlives the call; input and output are valid for
    // the lengths given; liblzma writes at most `out.len()` bytes and sets
    // `written` to the count.
    let status = unsafe {
        sys::lzma_raw_buffer_encode(
            filters.as_ptr(),
            &allocator,
            data.as_ptr(),
            data.len(),
            out.as_mut_ptr(),
            &mut written,
            out.len(),
        )
    };
    match status {
        sys::LZMA_OK => {
            out.truncate(written);
            // Blocks wait for each other before the stream is written.
            out.shrink_to_fit();
            Ok(out)
        }
        sys::LZMA_MEM_ERROR => anyhow::bail!("out of memory in the xz encoder"),
        other => anyhow::bail!("the xz encoder failed (liblzma status {other})"),
    }
}

/// Room for the LZMA2 data of `len` bytes. liblzma's `lzma2_bound` counts
/// incompressible data stored in 64 KiB chunks behind a 3-byte header,
/// plus the end marker; the encoder's stored chunks are somewhat shorter
/// (each holds what its LZMA attempt read before reaching about 60 KiB of
/// output: 32 MiB of random bytes take 126 bytes more than that bound), so
/// 64 KiB more is left. A buffer too small fails the build (LZMA_BUF_ERROR),
/// never truncates it. The x86 filter does not change the length.
fn lzma2_bound(len: usize) -> usize {
    const CHUNK: usize = 1 << 16;
    len + len.div_ceil(CHUNK) * 3 + 1 + CHUNK
}

/// The encoder's memory in transparent huge pages. The match finder's
/// tables (about 80 MiB of the encoder's 94 at xz -6 with an 8 MiB
/// dictionary) are read at random places, so with 4 KiB pages most lookups
/// also miss the TLB; 7-Zip's `-slp` switch exists for the same reason. On
/// this machine the small profile's xz took about 6% less time with them
/// (docs/BENCHMARKS.md). The pages are a request: where the kernel's
/// transparent huge pages are off (`never`), `madvise` changes nothing, and
/// the output is the same bytes either way. With `defrag` at `madvise` (the
/// kernel's default) a page fault in these blocks may wait for the kernel
/// to compact memory, so a host with fragmented memory can lose the gain.
mod huge_pages {
    use std::ffi::c_void;

    /// The size of an x86-64 huge page; smaller requests go to malloc.
    const HUGE: usize = 2 << 20;

    pub fn allocator() -> liblzma_sys::lzma_allocator {
        liblzma_sys::lzma_allocator {
            alloc: Some(alloc),
            free: Some(free),
            opaque: std::ptr::null_mut(),
        }
    }

    extern "C" fn alloc(_opaque: *mut c_void, nmemb: usize, size: usize) -> *mut c_void {
        let Some(bytes) = nmemb.checked_mul(size) else {
            return std::ptr::null_mut();
        };
        if bytes < HUGE {
            // SAFETY: plain malloc; liblzma checks for null.
            return unsafe { libc::malloc(bytes) };
        }
        let mut at = std::ptr::null_mut();
        // SAFETY: `at` receives a block of `bytes` aligned to HUGE, or the
        // call fails and it stays null. madvise only sets a flag on the
        // pages from that aligned start; the kernel rounds the length up to
        // a page, which may reach the start of a neighbouring malloc chunk
        // in the same heap, harmlessly: the flag changes no byte.
        unsafe {
            if libc::posix_memalign(&mut at, HUGE, bytes) != 0 {
                return std::ptr::null_mut();
            }
            libc::madvise(at, bytes, libc::MADV_HUGEPAGE);
        }
        at
    }

    extern "C" fn free(_opaque: *mut c_void, at: *mut c_void) {
        // SAFETY: `at` came from malloc or posix_memalign above (or is
        // null), and liblzma frees each block once.
        unsafe { libc::free(at) }
    }
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
        x86: false,
    };

    fn decompress(xz: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        liblzma::read::XzDecoder::new(xz)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    /// Text, then bytes no compressor can shrink, then text again, over
    /// several 1 MiB blocks.
    fn mixed() -> Vec<u8> {
        let mut state = 42u64;
        let noise = (0..3 << 20).map(|_| {
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
        // A call (E8) every 5 bytes, which the x86 filter rewrites.
        let calls: Vec<u8> = (0..200_000u32)
            .flat_map(|i| [0xe8, i as u8, (i >> 8) as u8, 0, 0])
            .collect();
        for settings in [SETTINGS, x86] {
            for data in [Vec::new(), b"x".to_vec(), mixed(), calls.clone()] {
                assert_eq!(decompress(&compress(&data, settings).unwrap()), data);
            }
        }
    }

    #[test]
    fn large_blocks_are_aligned_for_huge_pages() {
        let allocator = huge_pages::allocator();
        let (alloc, free) = (allocator.alloc.unwrap(), allocator.free.unwrap());
        let opaque = std::ptr::null_mut();
        // SAFETY: the allocator's own functions, each block written within
        // its size and freed once.
        unsafe {
            let large = alloc(opaque, 3, 5 << 20);
            let small = alloc(opaque, 1, 4096);
            assert!(!large.is_null() && !small.is_null());
            assert_eq!(large as usize % (2 << 20), 0);
            large.cast::<u8>().write_bytes(1, 15 << 20);
            small.cast::<u8>().write_bytes(1, 4096);
            free(opaque, large);
            free(opaque, small);
            assert!(
                alloc(opaque, usize::MAX, 2).is_null(),
                "an overflowing size"
            );
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
