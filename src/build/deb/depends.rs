//! The `.deb`'s Depends: what the descriptor declares, plus what
//! dpkg-shlibdeps would add for the shipped ELF files.

use crate::plan::PlannedFile;

/// The descriptor's Depends, plus libc6 at the newest glibc symbol version
/// a shipped ELF binary needs: what dpkg-shlibdeps would add, without
/// needing dpkg-dev on the build machine.
pub(super) fn depends(declared: &[String], files: &[&PlannedFile]) -> Vec<String> {
    let mut depends = declared.to_vec();
    let declares_libc = declared
        .iter()
        .any(|d| d.split_whitespace().next() == Some("libc6"));
    let needed = files.iter().filter_map(|f| glibc_needed(&f.data)).max();
    if let (false, Some((major, minor))) = (declares_libc, needed) {
        depends.insert(0, format!("libc6 (>= {major}.{minor})"));
    }
    depends
}

/// The highest `GLIBC_x.y` symbol version named in a dynamically linked
/// ELF file, if it is one.
pub fn glibc_needed(data: &[u8]) -> Option<(u32, u32)> {
    if !data.starts_with(b"\x7fELF") {
        return None;
    }
    const TAG: &[u8] = b"GLIBC_";
    data.windows(TAG.len())
        .enumerate()
        .filter(|(_, w)| *w == TAG)
        .filter_map(|(i, _)| {
            let rest = &data[i + TAG.len()..];
            let end = rest
                .iter()
                .position(|b| !(b.is_ascii_digit() || *b == b'.'))?;
            let text = std::str::from_utf8(&rest[..end]).ok()?;
            let (major, minor) = text.split_once('.')?;
            let minor = minor.split('.').next()?;
            Some((major.parse().ok()?, minor.parse().ok()?))
        })
        .max()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_newest_glibc_version() {
        let elf = b"\x7fELF....GLIBC_2.2.5\0GLIBC_2.34\0GLIBC_PRIVATE\0GLIBC_2.17\0";
        assert_eq!(glibc_needed(elf), Some((2, 34)));
        assert_eq!(glibc_needed(b"GLIBC_2.34"), None);
    }
}
