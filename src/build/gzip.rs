//! A gzip writer for the fast profile's .deb data member: the input cut
//! into chunks of a fixed size, each compressed by libdeflate into a gzip
//! member of its own, in parallel, the members written one after the other.
//!
//! A gzip file is a series of members (RFC 1952, 2.2), and gzip, zlib's
//! gzread (under dpkg-deb and apt), Python and Go read them as one stream;
//! a reader of one member (flate2's `GzDecoder`) sees only the first MiB,
//! which is why ferry reads packages with `MultiGzDecoder`
//! (`repo/inspect.rs`). Each member starts without the 32 KiB history the
//! chunk before would have given it: on the bench corpus 1 MiB chunks cost
//! 0.1% of size.
//! The chunks depend on the data and the settings alone, never on the
//! number of threads, so builds stay byte-identical across machines.

use anyhow::{Context, Result};
use libdeflater::{CompressionLvl, Compressor};

/// How the chunks are compressed.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// libdeflate's level, 1–12. Its 8 is 0.96-1.00 of nfpm's gzip -9 on
    /// the bench corpus, in a fifth of the time.
    pub level: i32,
    /// The level of a chunk whose bytes are spread almost evenly
    /// (`high_entropy`: compressed or encrypted data), where deeper
    /// searches find nothing more: on the bench's `.gz` payload level 6 is
    /// within 0.05% of level 8's size for 70% of its time.
    pub high_entropy_level: i32,
    /// Each chunk's size, in KiB: the unit of parallel work.
    pub chunk_kib: usize,
}

/// Compresses `data` into a gzip file of one member per chunk (one member
/// for empty data).
pub fn compress(data: &[u8], settings: Settings) -> Result<Vec<u8>> {
    let level = compression_level(settings.level)?;
    let high_entropy_level = compression_level(settings.high_entropy_level)?;
    let chunks: Vec<&[u8]> = if data.is_empty() {
        vec![data]
    } else {
        data.chunks(settings.chunk_kib << 10).collect()
    };
    let members = super::parallel_map(&chunks, super::threads(), |chunk| {
        member(
            chunk,
            if high_entropy(chunk) {
                high_entropy_level
            } else {
                level
            },
        )
    });
    let mut out = Vec::with_capacity(data.len() / 2);
    for m in members {
        out.extend_from_slice(&m?);
    }
    Ok(out)
}

fn compression_level(level: i32) -> Result<CompressionLvl> {
    CompressionLvl::new(level).map_err(|e| anyhow::anyhow!("gzip level {level}: {e:?}"))
}

/// Whether the chunk's bytes are spread almost evenly, as in compressed or
/// encrypted data: its collision entropy (-log2 of the sum of the squared
/// byte frequencies) above 7.5 bits a byte. gzip, xz and zstd output is
/// near 8, programs and text below 7. Decided in integers (sum of squared
/// counts times 181 below the squared length; 2^7.5 is 181.02), so that
/// every machine picks the same level and builds stay byte-identical.
fn high_entropy(chunk: &[u8]) -> bool {
    let mut counts = [0u64; 256];
    for &b in chunk {
        counts[b as usize] += 1;
    }
    let squares: u128 = counts.iter().map(|&c| u128::from(c) * u128::from(c)).sum();
    let n = chunk.len() as u128;
    squares * 181 < n * n
}

/// One gzip member; libdeflate writes no name and a zero mtime.
fn member(chunk: &[u8], level: CompressionLvl) -> Result<Vec<u8>> {
    let mut compressor = Compressor::new(level);
    let mut out = vec![0; compressor.gzip_compress_bound(chunk.len())];
    let len = compressor
        .gzip_compress(chunk, &mut out)
        .context("compressing a gzip member")?;
    out.truncate(len);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const SETTINGS: Settings = Settings {
        level: 8,
        high_entropy_level: 6,
        chunk_kib: 64,
    };

    fn noise(len: usize) -> Vec<u8> {
        let mut state = 42u64;
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
                (state >> 56) as u8
            })
            .collect()
    }

    fn gunzip(data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(data)
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    #[test]
    fn members_read_back_as_the_input() {
        let data: Vec<u8> = (0..300_000u32)
            .map(|i| ((i % 251) ^ (i >> 11)) as u8)
            .collect();
        let gz = compress(&data, SETTINGS).unwrap();
        assert!(gz.len() < data.len() / 4);
        assert_eq!(gunzip(&gz), data);
        // 300 000 bytes in 64 KiB chunks: five members, of which a
        // single-member reader sees the first chunk only.
        let mut one = flate2::read::GzDecoder::new(&gz[..]);
        let mut first = Vec::new();
        one.read_to_end(&mut first).unwrap();
        assert_eq!(first, data[..64 << 10]);
    }

    #[test]
    fn empty_data_is_one_empty_member() {
        let gz = compress(&[], SETTINGS).unwrap();
        assert_eq!(&gz[..2], &[0x1f, 0x8b]);
        assert!(gunzip(&gz).is_empty());
    }

    #[test]
    fn each_chunk_gets_its_level() {
        // Two chunks of text, three of noise, one and a half of text: the
        // noise's chunks at the high entropy level, the others at the
        // level.
        let chunk = SETTINGS.chunk_kib << 10;
        let text = |len: usize| -> Vec<u8> {
            let mut t = b"agent started, state schema 3\n".repeat(len / 30 + 1);
            t.truncate(len);
            t
        };
        let data: Vec<u8> = [text(2 * chunk), noise(3 * chunk), text(chunk * 3 / 2)].concat();
        let expected: Vec<u8> = data
            .chunks(chunk)
            .enumerate()
            .flat_map(|(i, c)| {
                let level = if (2..5).contains(&i) {
                    SETTINGS.high_entropy_level
                } else {
                    SETTINGS.level
                };
                member(c, compression_level(level).unwrap()).unwrap()
            })
            .collect();
        let gz = compress(&data, SETTINGS).unwrap();
        assert!(gz == expected, "the chunks' levels differ");
        assert!(high_entropy(&noise(1 << 16)));
        assert!(!high_entropy(&data[..1 << 16]));
        assert!(!high_entropy(&[]));
    }
}
