//! Semantic versions mapped to Debian and RPM versions, and refused where a
//! format would sort them differently from semver.
//!
//! dpkg and rpm do not compare versions the way semver does. dpkg sorts
//! letters before every other non-digit character, so `1.0.0~alpha.1` sorts
//! *after* `1.0.0~alphab` (semver: before). rpm ranks a numeric segment above
//! an alphabetic one, so `1.0.0~alpha.1` sorts after `1.0.0~alpha.beta`
//! (semver: before), and rpm's Version field forbids `-`. Rather than ship
//! packages that upgrade in the wrong direction, ferry accepts only
//! pre-releases of one shape, in which all three orders agree:
//!
//! ```text
//! WORD(.NUMBER)*      e.g. alpha, rc.1, beta.2.1
//! ```
//!
//! where WORD is one of a declared list of pre-release words (default
//! `alpha`, `beta`, `rc`) of ASCII letters, none a prefix of another.

use std::fmt;

/// The pre-release words accepted when the descriptor declares none.
pub const DEFAULT_PRERELEASE_WORDS: &[&str] = &["alpha", "beta", "rc"];

/// A version that both formats sort exactly as semver does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackageVersion {
    /// The semantic version it came from.
    pub semver: semver::Version,
    /// The packaging revision: Debian revision and RPM Release.
    pub revision: String,
    /// Epoch, only when the descriptor asks for one: it is forever.
    pub epoch: Option<u32>,
}

/// Why a version was refused, with what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionError {
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for VersionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} Fix: {}", self.problem, self.fix)
    }
}

impl std::error::Error for VersionError {}

fn refuse(problem: impl Into<String>, fix: impl Into<String>) -> VersionError {
    VersionError {
        problem: problem.into(),
        fix: fix.into(),
    }
}

impl PackageVersion {
    /// Parses `version`, checks that dpkg and rpm will keep its semver order,
    /// and checks the revision.
    pub fn new(
        version: &str,
        revision: &str,
        epoch: Option<u32>,
        prerelease_words: &[String],
    ) -> Result<Self, VersionError> {
        let semver = semver::Version::parse(version).map_err(|e| {
            refuse(
                format!("`{version}` is not a semantic version ({e})."),
                "write MAJOR.MINOR.PATCH, optionally with a pre-release such as 1.2.0-rc.1.",
            )
        })?;
        if !semver.build.is_empty() {
            return Err(refuse(
                format!("`{version}` has build metadata `+{}`: semver ignores it when ordering, but dpkg and rpm would sort by it.", semver.build),
                "drop the `+…` part; count packaging changes in the revision instead.",
            ));
        }
        check_prerelease(version, semver.pre.as_str(), prerelease_words)?;
        check_revision(revision)?;
        Ok(PackageVersion {
            semver,
            revision: revision.to_string(),
            epoch,
        })
    }

    /// The upstream part in package syntax: `1.2.0~rc.1`.
    pub fn upstream(&self) -> String {
        let v = &self.semver;
        let base = format!("{}.{}.{}", v.major, v.minor, v.patch);
        if v.pre.is_empty() {
            base
        } else {
            format!("{base}~{}", v.pre)
        }
    }

    /// The full Debian version: `[epoch:]upstream-revision`.
    pub fn deb(&self) -> String {
        let epoch = self.epoch.map(|e| format!("{e}:")).unwrap_or_default();
        format!("{epoch}{}-{}", self.upstream(), self.revision)
    }

    /// The Debian version as it appears in file names (no epoch, by policy).
    pub fn deb_file_version(&self) -> String {
        format!("{}-{}", self.upstream(), self.revision)
    }

    /// RPM `Version:` (the Release and Epoch are separate tags).
    pub fn rpm_version(&self) -> String {
        self.upstream()
    }

    /// RPM `Release:`.
    pub fn rpm_release(&self) -> &str {
        &self.revision
    }

    /// The full RPM EVR: `[epoch:]version-release`.
    pub fn rpm_evr(&self) -> String {
        let epoch = self.epoch.map(|e| format!("{e}:")).unwrap_or_default();
        format!("{epoch}{}-{}", self.upstream(), self.revision)
    }
}

fn check_prerelease(version: &str, pre: &str, words: &[String]) -> Result<(), VersionError> {
    if pre.is_empty() {
        return Ok(());
    }
    let mut identifiers = pre.split('.');
    let word = identifiers.next().unwrap_or_default();
    if !words.iter().any(|w| w == word) {
        return Err(refuse(
            format!(
                "`{version}`: the pre-release must start with one of the declared words {} (found `{word}`); dpkg and rpm sort other shapes differently from semver (dpkg: letters sort before `.`, so `alpha.1` would come after `alphab`; rpm: a number sorts above a word, so `alpha.1` would come after `alpha.beta`).",
                quoted_list(words)
            ),
            "use WORD or WORD.NUMBER (e.g. 1.2.0-rc.1), or declare the word in `version.prerelease_words` of the descriptor.",
        ));
    }
    for id in identifiers {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(refuse(
                format!("`{version}`: pre-release identifier `{id}` after `{word}` is not a number; rpm ranks numbers above words and dpkg sorts `-` and digits inside words differently from semver, so only numbers may follow the word."),
                format!("use the shape {word}.NUMBER(.NUMBER)*, e.g. {word}.1"),
            ));
        }
    }
    Ok(())
}

/// Checks that pre-release words are letters only and none is a prefix of
/// another (dpkg would sort `pre.1` after `preview`).
pub fn check_prerelease_words(words: &[String]) -> Result<(), VersionError> {
    for w in words {
        if w.is_empty() || !w.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(refuse(
                format!("pre-release word `{w}` must be ASCII letters only."),
                "remove digits, `-` and other characters from the word.",
            ));
        }
    }
    for a in words {
        for b in words {
            if a != b && b.starts_with(a.as_str()) {
                return Err(refuse(
                    format!("pre-release word `{a}` is a prefix of `{b}`: dpkg would sort `{a}.1` after `{b}`, semver before."),
                    format!("drop one of `{a}` and `{b}`."),
                ));
            }
        }
    }
    Ok(())
}

fn check_revision(revision: &str) -> Result<(), VersionError> {
    let valid = revision.starts_with(|c: char| c.is_ascii_digit())
        && revision
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '~'));
    if valid {
        Ok(())
    } else {
        Err(refuse(
            format!("revision `{revision}` is not valid for both formats (rpm's Release forbids `-`; dpkg needs a leading digit)."),
            "use a number such as 1, or digits with dots such as 1.1.",
        ))
    }
}

fn quoted_list(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("`{w}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words() -> Vec<String> {
        DEFAULT_PRERELEASE_WORDS
            .iter()
            .map(|w| w.to_string())
            .collect()
    }

    fn v(s: &str) -> Result<PackageVersion, VersionError> {
        PackageVersion::new(s, "1", None, &words())
    }

    #[test]
    fn maps_release_and_prerelease() {
        let p = v("1.2.0-rc.1").unwrap();
        assert_eq!(p.deb(), "1.2.0~rc.1-1");
        assert_eq!(p.rpm_version(), "1.2.0~rc.1");
        assert_eq!(p.rpm_release(), "1");
        assert_eq!(v("2.0.0").unwrap().deb(), "2.0.0-1");
    }

    #[test]
    fn epoch_only_when_asked() {
        let p = PackageVersion::new("1.0.0", "2", Some(1), &words()).unwrap();
        assert_eq!(p.deb(), "1:1.0.0-2");
        assert_eq!(p.deb_file_version(), "1.0.0-2");
        assert_eq!(p.rpm_evr(), "1:1.0.0-2");
    }

    #[test]
    fn refuses_shapes_that_sort_wrongly() {
        for bad in [
            "1.0.0-alpha.beta",
            "1.0.0-1",
            "1.0.0-rc-1",
            "1.0.0-alpha2",
            "1.0.0-preview",
            "1.0.0+build.5",
            "1.0",
            "v1.0.0",
        ] {
            let err = v(bad).expect_err(bad);
            assert!(err.to_string().contains("Fix:"), "{bad}: {err}");
        }
    }

    #[test]
    fn refuses_bad_revisions() {
        for bad in ["", "1-2", "a1", "1 2"] {
            assert!(PackageVersion::new("1.0.0", bad, None, &words()).is_err());
        }
    }

    #[test]
    fn refuses_prefix_words() {
        let w = vec!["pre".to_string(), "preview".to_string()];
        assert!(check_prerelease_words(&w).is_err());
        assert!(check_prerelease_words(&["rc1".to_string()]).is_err());
        assert!(check_prerelease_words(&words()).is_ok());
    }
}
