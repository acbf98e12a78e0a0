//! The package formats ferry builds and publishes: one type for the whole
//! crate (the build, the plan, the repository's record). The command line's
//! `--format` values live in the binary and convert to it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A package format. Serialized as `deb` and `rpm` (the repository's record
/// keeps it so).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Deb,
    Rpm,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::Deb => "deb",
            Format::Rpm => "rpm",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
