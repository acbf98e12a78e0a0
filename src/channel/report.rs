//! What a `ferry channel` command did (or, in a dry run, would do): the
//! text it prints, and each change as data for `--json`, so a caller such
//! as the Ansible collection (ansible/) reports `changed`, `check_mode` and
//! `diff` from ferry's own account instead of guessing it.

use std::fmt;

use serde::Serialize;

/// One change to the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// A file's absolute path, or what else changed (`rpm key`,
    /// `dnf versionlock`).
    pub path: String,
    /// `create`, `update`, `remove`, `import`, `lock` or `unlock`.
    pub action: &'static str,
    /// What was there before (a file's text, a key's name, a lock).
    pub before: String,
    /// What is (or would be) there after.
    pub after: String,
}

/// The text and the changes of one command.
#[derive(Debug, Default)]
pub struct Report {
    text: String,
    changes: Vec<Change>,
}

impl Report {
    pub fn new() -> Report {
        Report::default()
    }

    /// Notes a change (the text says it in words too).
    pub fn change(
        &mut self,
        path: impl Into<String>,
        action: &'static str,
        before: impl Into<String>,
        after: impl Into<String>,
    ) {
        self.changes.push(Change {
            path: path.into(),
            action,
            before: before.into(),
            after: after.into(),
        });
    }

    /// Takes over another report's changes (its text is the caller's to print).
    pub fn extend(&mut self, other: Report) {
        self.changes.extend(other.changes);
    }

    /// Says, and notes, the rollback of `package` from `installed` to
    /// `target` through `tool`; whether the package manager must run (not
    /// when the target is installed already, nor in a dry run).
    pub fn rollback(
        &mut self,
        package: &str,
        installed: &str,
        target: &str,
        tool: &str,
        dry_run: bool,
    ) -> bool {
        use fmt::Write as _;
        if target == installed {
            let _ = writeln!(self, "{package} is already at {target}");
            return false;
        }
        let _ = writeln!(
            self,
            "rolling {package} back from {installed} to {target} ({tool}; the hooks carry the state down)"
        );
        self.change(format!("package {package}"), "install", installed, target);
        if dry_run {
            let _ = writeln!(self, "dry run: nothing was installed");
        }
        !dry_run
    }

    /// Says, and notes, the install of `package` at `target` over
    /// `installed` (upgrading or downgrading) through `tool`; whether the
    /// package manager must run (not when the target is installed
    /// already, nor in a dry run).
    pub fn install(
        &mut self,
        package: &str,
        installed: Option<&str>,
        target: &str,
        tool: &str,
        dry_run: bool,
    ) -> bool {
        use fmt::Write as _;
        if installed == Some(target) {
            let _ = writeln!(self, "{package} is already at {target}");
            return false;
        }
        match installed {
            Some(from) => writeln!(
                self,
                "installing {package} {target} over {from} ({tool}; the hooks carry the state)"
            ),
            None => writeln!(self, "installing {package} {target} ({tool})"),
        }
        .ok();
        self.change(
            format!("package {package}"),
            "install",
            installed.unwrap_or_default(),
            target,
        );
        if dry_run {
            let _ = writeln!(self, "dry run: nothing was installed");
        }
        !dry_run
    }

    pub fn push_str(&mut self, s: &str) {
        self.text.push_str(s);
    }

    /// Whether anything changed (or would, in a dry run).
    pub fn changed(&self) -> bool {
        !self.changes.is_empty()
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn changes(&self) -> &[Change] {
        &self.changes
    }
}

impl fmt::Write for Report {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.text.push_str(s);
        Ok(())
    }
}
