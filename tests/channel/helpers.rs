//! What tests/channel.rs builds on: the `ferry` binary, a signed
//! repository published with it (`support::repo::ferry_publish`), and listings of a root to compare.

use super::*;

pub(crate) const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

pub(crate) use crate::support::repo::ferry_publish as publish;

pub(crate) fn ferry(args: &[&str]) -> Output {
    let out = Command::new(FERRY).args(args).output().unwrap();
    eprintln!(
        "ferry {}: {}\n{}{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub(crate) fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Every path under `dir` with its type, mode and (files) SHA-256.
pub(crate) fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        use std::os::unix::fs::PermissionsExt;
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let meta = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(base).unwrap().display().to_string();
            let mode = meta.permissions().mode() & 0o7777;
            if meta.is_dir() {
                out.push(format!("d {mode:o} {rel}"));
                walk(base, &p, out);
            } else if meta.file_type().is_symlink() {
                out.push(format!(
                    "l {rel} -> {}",
                    fs::read_link(&p).unwrap().display()
                ));
            } else {
                let sum: String = sha2::Digest::finalize(sha2::Digest::chain_update(
                    <sha2::Sha256 as sha2::Digest>::new(),
                    fs::read(&p).unwrap(),
                ))
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
                out.push(format!("f {mode:o} {rel} {sum}"));
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

pub(crate) fn diff_listing(before: &[String], after: &[String]) -> String {
    let mut d = String::new();
    for l in before.iter().filter(|l| !after.contains(l)) {
        d.push_str(&format!("- {l}\n"));
    }
    for l in after.iter().filter(|l| !before.contains(l)) {
        d.push_str(&format!("+ {l}\n"));
    }
    d
}
