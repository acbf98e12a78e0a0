//! Version ordering as each package manager sees it.
//!
//! Retention keeps "the newest N versions", and newest must mean what apt and
//! dnf mean, not what semver means (SPEC §8: the two disagree on some
//! pre-releases). Debian's order is dpkg's `verrevcmp`; rpm's comes from the
//! `rpm-version` crate, a port of `rpmvercmp`.

use std::cmp::Ordering;

use super::state::Format;

/// Compares two full versions (`[epoch:]version[-release]`) of one format.
pub fn compare(format: Format, a: &str, b: &str) -> Ordering {
    match format {
        Format::Deb => compare_deb(a, b),
        Format::Rpm => rpm_version::Evr::parse(a).cmp(&rpm_version::Evr::parse(b)),
    }
}

/// dpkg's comparison of `[epoch:]upstream[-revision]`.
pub fn compare_deb(a: &str, b: &str) -> Ordering {
    let (epoch_a, upstream_a, revision_a) = split_deb(a);
    let (epoch_b, upstream_b, revision_b) = split_deb(b);
    epoch_a
        .cmp(&epoch_b)
        .then_with(|| verrevcmp(upstream_a.as_bytes(), upstream_b.as_bytes()))
        .then_with(|| verrevcmp(revision_a.as_bytes(), revision_b.as_bytes()))
}

/// Splits a Debian version into epoch, upstream version and revision.
fn split_deb(version: &str) -> (u64, &str, &str) {
    let (epoch, rest) = match version.split_once(':') {
        Some((epoch, rest)) => (epoch.parse().unwrap_or(0), rest),
        None => (0, version),
    };
    match rest.rsplit_once('-') {
        Some((upstream, revision)) => (epoch, upstream, revision),
        None => (epoch, rest, ""),
    }
}

/// The upstream part of a full version: what a user types as "the version"
/// (`1.2.0` for deb `1:1.2.0-3` or rpm `1.2.0-3`).
pub fn upstream(version: &str) -> &str {
    let without_epoch = version.split_once(':').map_or(version, |(_, rest)| rest);
    without_epoch
        .rsplit_once('-')
        .map_or(without_epoch, |(upstream, _)| upstream)
}

/// True when `wanted` names `version`: either exactly, or by its upstream part.
pub fn names(wanted: &str, version: &str) -> bool {
    wanted == version || wanted == upstream(version)
}

/// dpkg's weight of one character: `~` sorts before everything, even the end
/// of the string; letters sort before other characters.
fn order(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

/// dpkg's `verrevcmp` (lib/dpkg/version.c), alternating non-digit and digit runs.
fn verrevcmp(a: &[u8], b: &[u8]) -> Ordering {
    let (mut i, mut j) = (0, 0);
    let is_digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    while i < a.len() || j < b.len() {
        while (i < a.len() && !is_digit(a, i)) || (j < b.len() && !is_digit(b, j)) {
            let (ac, bc) = (order(a.get(i).copied()), order(b.get(j).copied()));
            if ac != bc {
                return ac.cmp(&bc);
            }
            i += 1;
            j += 1;
        }
        while a.get(i) == Some(&b'0') {
            i += 1;
        }
        while b.get(j) == Some(&b'0') {
            j += 1;
        }
        let mut first_diff = Ordering::Equal;
        while is_digit(a, i) && is_digit(b, j) {
            if first_diff == Ordering::Equal {
                first_diff = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if is_digit(a, i) {
            return Ordering::Greater;
        }
        if is_digit(b, j) {
            return Ordering::Less;
        }
        if first_diff != Ordering::Equal {
            return first_diff;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb_order_matches_dpkg_rules() {
        let ascending = [
            "1.0.0~alpha.1-1",
            "1.0.0~rc.1-1",
            "1.0.0-1",
            "1.0.0-2",
            "1.0.0+b1-1",
            "1.0.1-1",
            "1.0.10-1",
            "1:0.1-1",
        ];
        for pair in ascending.windows(2) {
            assert_eq!(compare_deb(pair[0], pair[1]), Ordering::Less, "{pair:?}");
            assert_eq!(compare_deb(pair[1], pair[0]), Ordering::Greater, "{pair:?}");
        }
        assert_eq!(compare_deb("1.00-1", "1.0-1"), Ordering::Equal);
    }

    #[test]
    fn rpm_order_puts_tilde_first() {
        assert_eq!(
            compare(Format::Rpm, "1.0.0~rc.1-1", "1.0.0-1"),
            Ordering::Less
        );
        assert_eq!(
            compare(Format::Rpm, "1.0.10-1", "1.0.9-1"),
            Ordering::Greater
        );
    }

    const TRICKY: [(&str, &str); 8] = [
        ("1.0.0~alpha.1-1", "1.0.0~alpha.beta-1"),
        ("1.0.0~rc.1-1", "1.0.0-1"),
        ("1.0.0-1", "1.0.0+b1-1"),
        ("1.0.9-1", "1.0.10-1"),
        ("1.0a-1", "1.0.1-1"),
        ("1.0-1", "1.0.0-1"),
        ("2:1.0-1", "1:9.0-1"),
        ("1.0.0-1", "1.0.0-1"),
    ];

    /// Our order agrees with `dpkg --compare-versions` (SPEC §8).
    #[test]
    fn deb_order_agrees_with_dpkg() {
        for (a, b) in TRICKY {
            let dpkg_less = std::process::Command::new("dpkg")
                .args(["--compare-versions", a, "lt", b])
                .status()
                .expect("dpkg runs")
                .success();
            assert_eq!(compare_deb(a, b) == Ordering::Less, dpkg_less, "{a} < {b}");
        }
    }

    /// Our order agrees with rpm's own `rpm.vercmp` (SPEC §8).
    #[test]
    fn rpm_order_agrees_with_rpm() {
        for (a, b) in TRICKY {
            let lua = format!("%{{lua: print(rpm.vercmp(\"{a}\", \"{b}\"))}}");
            let output = std::process::Command::new("rpm")
                .args(["--eval", &lua])
                .output()
                .expect("rpm runs");
            let rpm_says: i32 = String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .expect("vercmp prints a number");
            assert_eq!(
                compare(Format::Rpm, a, b) as i32,
                rpm_says.signum(),
                "{a} vs {b}"
            );
        }
    }

    #[test]
    fn a_version_is_named_exactly_or_by_upstream() {
        assert!(names("1.2.0", "1:1.2.0-3"));
        assert!(names("1.2.0-3", "1.2.0-3"));
        assert!(!names("1.2", "1.2.0-3"));
    }
}
