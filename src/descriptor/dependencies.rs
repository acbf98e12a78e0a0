//! The `[dependencies]` a descriptor declares, in each format's grammar.
//! They are checked with the rest of the descriptor, so that no format
//! starts on a bad one (a bad rpm requirement would otherwise fail while
//! the .deb built beside it lands); the rpm packager reads them through
//! [`parse_rpm`], the one parser of that grammar.

/// How to write an rpm requirement, for error messages.
pub const RPM_SHAPE: &str = "write `NAME` or `NAME OP VERSION` with OP one of = < <= > >=, e.g. `shadow-utils` or `systemd >= 239`";
/// How to write a Debian relation, for error messages.
pub const DEB_SHAPE: &str = "write `NAME`, `NAME (OP VERSION)` with OP one of << <= = >= >>, or alternatives joined by `|`, e.g. `passwd` or `init-system-helpers (>= 1.54)`";

/// The comparison of an rpm requirement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RpmOp {
    Eq,
    Less,
    LessEq,
    Greater,
    GreaterEq,
}

/// An rpm requirement: `NAME`, or `NAME OP VERSION`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RpmRequirement<'a> {
    pub name: &'a str,
    pub version: Option<(RpmOp, &'a str)>,
}

/// Parses `NAME` or `NAME OP VERSION` (OP one of `=` `<` `<=` `>` `>=`).
/// Names may hold what rpm's provides do (`/usr/bin/sh`,
/// `perl(File::Temp)`, `pkgconfig(systemd)`); versions are
/// `[EPOCH:]VERSION[-RELEASE]`.
pub fn parse_rpm(text: &str) -> Result<RpmRequirement<'_>, String> {
    let parts: Vec<&str> = text.split_whitespace().collect();
    let (name, version) = match parts.as_slice() {
        [name] => (*name, None),
        [name, op, version] => {
            let op = match *op {
                "=" => RpmOp::Eq,
                "<" => RpmOp::Less,
                "<=" => RpmOp::LessEq,
                ">" => RpmOp::Greater,
                ">=" => RpmOp::GreaterEq,
                _ => return Err(format!("`{text}`: `{op}` is not a comparison")),
            };
            (*name, Some((op, *version)))
        }
        _ => return Err(format!("`{text}` is not a requirement")),
    };
    let name_ok = !name.starts_with(['-', '(', '<', '>', '='])
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-/():".contains(c));
    if !name_ok {
        return Err(format!(
            "`{text}`: `{name}` is not a package or capability name"
        ));
    }
    if let Some((_, v)) = version {
        if !version_ok(v, "._+~^:-") {
            return Err(format!(
                "`{text}`: `{v}` is not an rpm version ([EPOCH:]VERSION[-RELEASE], starting with a digit)"
            ));
        }
    }
    Ok(RpmRequirement { name, version })
}

/// Checks a Debian relation: alternatives separated by `|`, each
/// `NAME[:ARCH] [(OP VERSION)]` with OP one of `<<` `<=` `=` `>=` `>>`
/// (Debian Policy §7.1).
pub fn check_deb(text: &str) -> Result<(), String> {
    for alternative in text.split('|') {
        let alternative = alternative.trim();
        let (name, constraint) = match alternative.split_once('(') {
            Some((name, rest)) => {
                let Some(inside) = rest.trim_end().strip_suffix(')') else {
                    return Err(format!("`{text}`: `(` without `)`"));
                };
                (name.trim(), Some(inside.trim()))
            }
            None => (alternative, None),
        };
        let bare = name.split_once(':').map_or(name, |(n, _)| n);
        let name_ok = bare.len() >= 2
            && bare.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && bare
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
        if !name_ok {
            return Err(format!("`{text}`: `{name}` is not a Debian package name"));
        }
        if let Some(constraint) = constraint {
            let (op, version) = constraint
                .split_once(char::is_whitespace)
                .map(|(op, v)| (op, v.trim()))
                .unwrap_or((constraint, ""));
            if !["<<", "<=", "=", ">=", ">>"].contains(&op) {
                return Err(format!("`{text}`: `{op}` is not a comparison"));
            }
            if !version_ok(version, ".+~:-") {
                return Err(format!(
                    "`{text}`: `{version}` is not a Debian version ([EPOCH:]UPSTREAM[-REVISION], starting with a digit)"
                ));
            }
        }
    }
    Ok(())
}

/// A version: starts with a digit, then letters, digits and `extra`.
fn version_ok(version: &str, extra: &str) -> bool {
    version.starts_with(|c: char| c.is_ascii_digit())
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rpm_requirements() {
        assert_eq!(
            parse_rpm("shadow-utils"),
            Ok(RpmRequirement {
                name: "shadow-utils",
                version: None
            })
        );
        assert_eq!(
            parse_rpm("systemd >= 1:239-2.el8").unwrap().version,
            Some((RpmOp::GreaterEq, "1:239-2.el8"))
        );
        assert!(parse_rpm("perl(File::Temp)").is_ok());
        assert!(parse_rpm("/usr/bin/sh").is_ok());
        for bad in ["", "a >== 1", "a >= ", "a >= x1", "a b", "a, b", ">= 1 a"] {
            assert!(parse_rpm(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn debian_relations() {
        for good in [
            "passwd",
            "init-system-helpers (>= 1.54)",
            "libc6 (>= 2.34)",
            "default-mta | mail-transport-agent",
            "python3:any (>> 3.9~)",
            "foo (= 1:2.0-1+deb12u1)",
        ] {
            assert_eq!(check_deb(good), Ok(()), "{good}");
        }
        for bad in [
            "Passwd",
            "passwd (>= )",
            "passwd (> 1.0)",
            "passwd (>= 1.0",
            "passwd >= 1.0",
            "a",
            "passwd, login",
        ] {
            assert!(check_deb(bad).is_err(), "{bad:?} accepted");
        }
    }
}
