//! How a descriptor's problems are told: the file, the field, what is
//! wrong and how to fix it; serde's TOML messages turned into the same.

use std::fmt;
use std::path::{Path, PathBuf};

use super::Descriptor;

/// What was wrong with a descriptor: which file, which field, what, and how
/// to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DescriptorError {
    pub file: PathBuf,
    pub field: String,
    pub problem: String,
    pub fix: String,
}

impl fmt::Display for DescriptorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: field `{}`: {}\n  fix: {}",
            self.file.display(),
            self.field,
            self.problem,
            self.fix
        )
    }
}

impl std::error::Error for DescriptorError {}

/// Something a descriptor should do better, which does not stop the build:
/// which file, what, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DescriptorWarning {
    pub file: PathBuf,
    pub problem: String,
    /// The directives (or fields) concerned.
    pub missing: Vec<String>,
    pub fix: String,
}

impl fmt::Display for DescriptorWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: warning: {}\n  fix: {}",
            self.file.display(),
            self.problem,
            self.fix
        )
    }
}

/// Parses descriptor text, turning serde's messages into ones that name the
/// field and suggest the closest known key.
pub fn parse(file: &Path, text: &str) -> Result<Descriptor, DescriptorError> {
    toml::from_str(text).map_err(|e| toml_error(file, text, &e))
}

fn toml_error(file: &Path, text: &str, e: &toml::de::Error) -> DescriptorError {
    let message = e.message().to_string();
    let line = e
        .span()
        .map(|span| format!(" (line {})", line_of(text, span.start)))
        .unwrap_or_default();
    if let Some((unknown, expected)) = parse_unknown_field(&message) {
        let fix = match closest(&unknown, &expected) {
            Some(best) => format!(
                "did you mean `{best}`? Known keys here: {}",
                expected.join(", ")
            ),
            None => format!("remove it; known keys here: {}", expected.join(", ")),
        };
        return DescriptorError {
            file: file.to_path_buf(),
            field: unknown,
            problem: format!("unknown key{line}"),
            fix,
        };
    }
    DescriptorError {
        file: file.to_path_buf(),
        field: "(syntax)".into(),
        problem: format!("{message}{line}"),
        fix: "see pkg/ferry.toml in the ferry repository for a complete example".into(),
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes()[..offset.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// Reads serde's "unknown field `x`, expected one of `a`, `b`" message.
fn parse_unknown_field(message: &str) -> Option<(String, Vec<String>)> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, rest) = rest.split_once('`')?;
    let expected = rest
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect();
    Some((unknown.to_string(), expected))
}

/// The known key closest to `word`, if any is close enough to be a typo.
pub fn closest(word: &str, known: &[String]) -> Option<String> {
    known
        .iter()
        .map(|k| (strsim::damerau_levenshtein(word, k), k))
        .filter(|(d, k)| *d <= 2.max(k.len() / 3))
        .min_by_key(|(d, _)| *d)
        .map(|(_, k)| k.clone())
}
