//! `ferry generate --out DIR`: ferry's manual pages and shell completions,
//! made from the clap tree itself so they say what `--help` says. ferry's
//! own package runs it in its `[build] command` (pkg/ferry-cli.toml).
//!
//! The command is visible, not hidden: clap_complete completes hidden
//! subcommands too, and a `cargo install` of ferry needs it as much.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

/// The shells whose completions ferry's package ships.
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

/// Writes `OUT/man/ferry.1` and a page per subcommand
/// (`ferry-channel-status.1`, …), and `OUT/completions/ferry.bash`,
/// `_ferry` and `ferry.fish`; returns the two directories. The pages carry
/// no date, so their bytes depend on the source alone, as reproducible
/// packages need.
pub fn generate(out: &Path) -> Result<[PathBuf; 2]> {
    let man = out.join("man");
    let completions = out.join("completions");
    for dir in [&man, &completions] {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    // `help` documents nothing a page does not; building names every
    // subcommand `ferry-channel-status`, as its page is named.
    let mut cmd = crate::Cli::command().disable_help_subcommand(true);
    cmd.build();
    let source = format!("ferry {}", env!("CARGO_PKG_VERSION"));
    write_pages(&cmd, &source, &man)
        .with_context(|| format!("writing the manual pages into {}", man.display()))?;
    let mut cmd = crate::Cli::command();
    for shell in SHELLS {
        clap_complete::generate_to(shell, &mut cmd, "ferry", &completions).with_context(|| {
            format!(
                "writing the {shell} completions into {}",
                completions.display()
            )
        })?;
    }
    Ok([man, completions])
}

/// A page for `cmd` and each subcommand below it, every one's footer naming
/// ferry and its version (clap_mangen's default names the subcommand alone).
fn write_pages(cmd: &clap::Command, source: &str, dir: &Path) -> std::io::Result<()> {
    for sub in cmd.get_subcommands() {
        write_pages(sub, source, dir)?;
    }
    clap_mangen::Man::new(cmd.clone())
        .source(source)
        .generate_to(dir)
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The pages a command and its subcommands should have: `ferry.1`,
    /// `ferry-channel.1`, `ferry-channel-status.1`, …
    fn expected_pages(cmd: &clap::Command, name: &str, pages: &mut Vec<String>) {
        pages.push(format!("{name}.1"));
        for sub in cmd.get_subcommands() {
            expected_pages(sub, &format!("{name}-{}", sub.get_name()), pages);
        }
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// Every command has its page, and ferry's descriptor ships each page
    /// and completion: a new subcommand fails here until
    /// pkg/ferry-cli.toml installs its page.
    #[test]
    fn every_command_has_a_manual_page_and_the_package_ships_it() {
        let out = tempfile::tempdir().unwrap();
        let [man, completions] = generate(out.path()).unwrap();
        let mut pages = Vec::new();
        expected_pages(&crate::Cli::command(), "ferry", &mut pages);
        pages.sort();
        assert!(pages.contains(&"ferry-channel-status.1".to_string()));
        assert_eq!(names_in(&man), pages);
        assert_eq!(
            names_in(&completions),
            ["_ferry", "ferry.bash", "ferry.fish"]
        );

        let file = Path::new("pkg/ferry-cli.toml");
        let descriptor =
            ferry::descriptor::parse(file, include_str!("../pkg/ferry-cli.toml")).unwrap();
        let shipped = |dir: &str| -> Vec<String> {
            let mut names: Vec<String> = descriptor
                .assets
                .iter()
                .filter_map(|a| a.dest.strip_prefix(dir))
                .map(str::to_string)
                .collect();
            names.sort();
            names
        };
        assert_eq!(
            shipped("/usr/share/man/man1/"),
            pages,
            "{} must install the page of every command (right) in /usr/share/man/man1",
            file.display()
        );
        for dest in [
            "/usr/share/bash-completion/completions/ferry",
            "/usr/share/zsh/vendor-completions/_ferry",
            "/usr/share/fish/vendor_completions.d/ferry.fish",
        ] {
            assert!(
                descriptor.assets.iter().any(|a| a.dest == dest),
                "{} does not install {dest}",
                file.display()
            );
        }
    }
}
