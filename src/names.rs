//! The names ferry accepts, one rule each, wherever they are given: the
//! package name (descriptor, `ferry channel --package`) and the channel name
//! (`ferry publish`, `ferry promote`, `ferry channel enable --channel`).

/// A package name both dpkg and rpm accept: at least two characters,
/// lowercase letters, digits, `+`, `-` and `.`, starting with a letter or a
/// digit. `None` when valid, else what is wrong.
pub fn package_name_problem(name: &str) -> Option<String> {
    let valid = name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    (!valid).then(|| {
        format!(
            "`{name}` is not a valid package name for dpkg and rpm (lowercase letters, digits, \
             `+`, `-` and `.`, starting with a letter or digit)"
        )
    })
}

/// A channel name: a letter or digit, then letters, digits, `-` and `_`, at
/// most 64 characters (it names an apt suite and an rpm repository
/// directory). `None` when valid, else what is wrong.
pub fn channel_name_problem(name: &str) -> Option<String> {
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
        && name.len() <= 64;
    (!valid).then(|| {
        format!(
            "channel name {name:?} is invalid: use letters, digits, '-' or '_' (e.g. candidate, stable)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_rule_per_name() {
        assert_eq!(package_name_problem("roboconf-agent"), None);
        assert_eq!(package_name_problem("libstdc++6"), None);
        for bad in ["a", "Agent", "-agent", "agent_x", ""] {
            assert!(package_name_problem(bad).is_some(), "{bad:?}");
        }
        assert_eq!(channel_name_problem("stable"), None);
        assert_eq!(channel_name_problem("rc_2-x"), None);
        for bad in ["", "-stable", "a.b", "a/b", &"x".repeat(65)] {
            assert!(channel_name_problem(bad).is_some(), "{bad:?}");
        }
    }
}
