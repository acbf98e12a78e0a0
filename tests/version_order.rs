//! ferry's version mapping checked against the real comparators:
//! `dpkg --compare-versions` and rpm's own `rpm.vercmp`.

use std::cmp::Ordering;
use std::process::Command;

use ferry::version::{PackageVersion, DEFAULT_PRERELEASE_WORDS};

fn words() -> Vec<String> {
    DEFAULT_PRERELEASE_WORDS
        .iter()
        .map(|w| w.to_string())
        .collect()
}

fn dpkg_cmp(a: &str, b: &str) -> Ordering {
    let lt = |x: &str, y: &str| {
        Command::new("dpkg")
            .args(["--compare-versions", x, "lt", y])
            .status()
            .expect("dpkg runs")
            .success()
    };
    if lt(a, b) {
        Ordering::Less
    } else if lt(b, a) {
        Ordering::Greater
    } else {
        Ordering::Equal
    }
}

fn rpm_cmp(a: &str, b: &str) -> Ordering {
    let out = Command::new("rpm")
        .arg("--eval")
        .arg(format!("%{{lua: print(rpm.vercmp(\"{a}\", \"{b}\"))}}"))
        .output()
        .expect("rpm runs");
    match String::from_utf8_lossy(&out.stdout).trim() {
        "-1" => Ordering::Less,
        "0" => Ordering::Equal,
        "1" => Ordering::Greater,
        other => panic!("rpm.vercmp({a}, {b}) printed {other:?}"),
    }
}

/// Pairs ferry accepts: semver, dpkg and rpm must agree on each.
const ACCEPTED: &[(&str, &str)] = &[
    ("1.0.0", "1.0.1"),
    ("1.0.0", "1.1.0"),
    ("1.9.0", "1.10.0"),
    ("1.0.10", "1.0.9"),
    ("2.0.0", "10.0.0"),
    ("1.0.0-alpha", "1.0.0"),
    ("1.0.0-rc.1", "1.0.0"),
    ("1.0.0-alpha", "1.0.0-alpha.1"),
    ("1.0.0-alpha.1", "1.0.0-alpha.2"),
    ("1.0.0-alpha.2", "1.0.0-alpha.10"),
    ("1.0.0-alpha.1", "1.0.0-beta"),
    ("1.0.0-alpha.9", "1.0.0-beta.1"),
    ("1.0.0-beta", "1.0.0-beta.2"),
    ("1.0.0-beta.11", "1.0.0-rc.1"),
    ("1.0.0-rc.1", "1.0.0-rc.1.1"),
    ("1.0.0-rc.1.9", "1.0.0-rc.2"),
    ("1.0.0-rc.0", "1.0.0-rc.1"),
    ("0.9.9", "1.0.0-alpha"),
    ("1.0.0", "1.0.0"),
    ("1.0.0-rc.1", "1.0.0-rc.1"),
    ("1.2.3-beta.1", "1.2.2"),
    ("0.0.1", "0.0.0"),
    ("3.0.0-alpha", "2.99.99"),
    ("1.0.0-beta.2", "1.0.0-beta.10"),
    ("1.1.0-alpha", "1.0.9"),
    ("1.0.0-rc.2.1", "1.0.0-rc.10"),
];

/// Versions ferry refuses, each with a version it would mis-sort against
/// under the naive `-` → `~` mapping (the reason it is refused).
const REFUSED: &[(&str, &str)] = &[
    // rpm ranks a number above a word: semver says alpha.1 < alpha.beta.
    ("1.0.0-alpha.beta", "1.0.0-alpha.1"),
    // dpkg sorts `.` after letters: semver says alpha.1 < alphab.
    ("1.0.0-alphab", "1.0.0-alpha.1"),
    // digits inside a word: semver compares ASCII, dpkg and rpm numbers.
    ("1.0.0-alpha10", "1.0.0-alpha2"),
    // a numeric identifier first: rpm ranks it above any word.
    ("1.0.0-1", "1.0.0-alpha"),
    // `-` inside an identifier: rpm's Version forbids it outright.
    ("1.0.0-rc-1", "1.0.0-rc"),
    // build metadata: semver ignores it, dpkg and rpm would not.
    ("1.0.0+build.1", "1.0.0+build.2"),
];

fn mapped(v: &str) -> String {
    PackageVersion::new(v, "1", None, &words())
        .unwrap_or_else(|e| panic!("{v} should be accepted: {e}"))
        .upstream()
}

fn semver_cmp(a: &str, b: &str) -> Ordering {
    semver::Version::parse(a)
        .unwrap()
        .cmp_precedence(&semver::Version::parse(b).unwrap())
}

#[test]
fn accepted_versions_sort_as_semver_in_dpkg_and_rpm() {
    assert!(ACCEPTED.len() + REFUSED.len() >= 30);
    for (a, b) in ACCEPTED {
        let want = semver_cmp(a, b);
        let (da, db) = (mapped(a), mapped(b));
        assert_eq!(
            dpkg_cmp(&format!("{da}-1"), &format!("{db}-1")),
            want,
            "dpkg: {a} vs {b}"
        );
        assert_eq!(rpm_cmp(&da, &db), want, "rpm: {a} vs {b}");
    }
}

#[test]
fn revision_orders_after_version() {
    let a = PackageVersion::new("1.0.0", "1", None, &words()).unwrap();
    let b = PackageVersion::new("1.0.0", "2", None, &words()).unwrap();
    assert_eq!(dpkg_cmp(&a.deb(), &b.deb()), Ordering::Less);
    assert_eq!(rpm_cmp(&a.rpm_evr(), &b.rpm_evr()), Ordering::Less);
    let e = PackageVersion::new("0.1.0", "1", Some(1), &words()).unwrap();
    assert_eq!(
        dpkg_cmp(&b.deb(), &e.deb()),
        Ordering::Less,
        "epoch wins in dpkg"
    );
    assert_eq!(
        rpm_cmp(&b.rpm_evr(), &e.rpm_evr()),
        Ordering::Less,
        "epoch wins in rpm"
    );
}

/// Each refused version is refused, and the naive mapping would really
/// have sorted it wrongly (or been rejected) by dpkg or rpm.
#[test]
fn refused_versions_would_sort_wrongly() {
    let naive = |v: &str| v.replacen('-', "~", 1);
    for (bad, other) in REFUSED {
        let err = PackageVersion::new(bad, "1", None, &words()).expect_err(bad);
        assert!(err.to_string().contains("Fix:"), "{bad}: {err}");
        let want = semver_cmp(bad, other);
        let (nb, no) = (naive(bad), naive(other));
        let dpkg_wrong = dpkg_cmp(&format!("{nb}-1"), &format!("{no}-1")) != want;
        let rpm_wrong = rpm_cmp(&nb, &no) != want || nb.contains('-');
        assert!(
            dpkg_wrong || rpm_wrong,
            "{bad} vs {other}: both tools agree with semver, so refusing it is not needed"
        );
    }
}
