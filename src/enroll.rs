//! `ferry enroll cloud-config`: the `#cloud-config` document that enrols a
//! new VM at first boot from the variables `ferry channel enable` takes
//! (repository URL, key, fingerprint, channel, window).
//!
//! ferry is not on the VM yet at first boot, so the document carries a small
//! shell script (pkg/cloud-init/ferry-enroll) that installs ferry from its
//! own repository (a repository made by `ferry publish` holds one package),
//! runs `ferry channel enable` for ferry and for the agent, and installs
//! the agent. cloud-init
//! runs it once, bounded by a timeout; if that fails, a systemd timer left
//! behind (pkg/cloud-init/ferry-enroll.timer) runs it again at growing
//! intervals until it succeeds, and the successful run removes the timer,
//! its service, its configuration and the script. See docs/CLOUD-INIT.md.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{bail, Result};

use crate::channel::gpg::{checked_key, normalize_fingerprint};
use crate::channel::window::Window;
use crate::channel::BACKENDS;
use crate::exit::refused;

/// The script, the service and the timer the document writes, verbatim.
const SCRIPT: &str = include_str!("../pkg/cloud-init/ferry-enroll");
const SERVICE: &str = include_str!("../pkg/cloud-init/ferry-enroll.service");
const TIMER: &str = include_str!("../pkg/cloud-init/ferry-enroll.timer");

/// Where the document puts them on the VM (the script's own paths).
pub const SCRIPT_PATH: &str = "/usr/local/sbin/ferry-enroll";
pub const SERVICE_PATH: &str = "/etc/systemd/system/ferry-enroll.service";
pub const TIMER_PATH: &str = "/etc/systemd/system/ferry-enroll.timer";
pub const CONF_PATH: &str = "/etc/ferry/enroll/enroll.conf";
pub const KEY_PATH: &str = "/etc/ferry/enroll/signing-key.asc";

/// How long cloud-init's own attempt may take before the timer takes over.
pub const FIRST_ATTEMPT_SECS: u32 = 600;

/// What the document enrols the VM in (`ferry enroll cloud-config`'s options).
#[derive(Debug, Clone)]
pub struct CloudConfigArgs {
    /// The repository made by `ferry publish`, as the VM reaches it.
    pub repo: String,
    /// The repository's public key (DIR/signing-key.asc), embedded.
    pub key: PathBuf,
    /// The key's full fingerprint; a key with another one is refused.
    pub fingerprint: String,
    /// The channel the VM follows.
    pub channel: String,
    /// The maintenance window, as `ferry channel enable --window` takes it.
    pub window: Option<String>,
    /// The agent's package.
    pub package: String,
    /// `apt` or `dnf`, for VMs that have both; else each VM decides.
    pub family: Option<String>,
}

/// Checks the variables as `ferry channel enable` will on the VM (a mistake
/// found at first boot would only be retried, never fixed), and prints the
/// document with the checked key embedded.
pub fn cloud_config(args: &CloudConfigArgs) -> Result<String> {
    check(args).map_err(refused)?;
    let key = checked(&args.key, &args.fingerprint, "--key", "--fingerprint")?;
    Ok(render(args, &key))
}

/// A key checked against its fingerprint, as `ferry channel` checks it.
#[derive(Clone)]
struct Checked {
    armored: String,
    fingerprint: String,
}

fn checked(
    key: &std::path::Path,
    fingerprint: &str,
    key_flag: &str,
    fpr_flag: &str,
) -> Result<Checked> {
    let (_gpg, armored) = checked_key(key, fingerprint).map_err(|e| {
        refused(e.context(format!(
            "{key_flag} {} with {fpr_flag} {fingerprint} refused; fix: pass the repository's \
             signing-key.asc and the full fingerprint its owner published (`gpg --show-keys {0}` \
             prints the key's)",
            key.display()
        )))
    })?;
    Ok(Checked {
        armored,
        fingerprint: normalize_fingerprint(fingerprint),
    })
}

fn check(args: &CloudConfigArgs) -> Result<()> {
    if let Some(problem) = crate::names::channel_name_problem(&args.channel) {
        bail!("--channel: {problem}")
    }
    if let Some(problem) = crate::names::package_name_problem(&args.package) {
        bail!("--package: {problem}")
    }
    if args.package.contains('+') {
        bail!(
            "--package {:?}: ferry channel cannot follow a package whose name holds `+`",
            args.package
        )
    }
    if let Some(w) = &args.window {
        Window::parse(w).map_err(|e| e.context(format!("--window {w:?}")))?;
    }
    let schemes = ["file:///", "http://", "https://"];
    let repo = &args.repo;
    if !schemes.iter().any(|s| repo.starts_with(s)) {
        bail!(
            "--repo {repo:?}: give the repository's URL as the VM reaches it, starting with {}",
            schemes.join(", ")
        )
    }
    if repo.chars().any(|c| c.is_whitespace() || c.is_control()) {
        bail!("--repo {repo:?}: spaces and control characters are not allowed in the URL")
    }
    if let Some(family) = &args.family {
        if !BACKENDS.iter().any(|b| b.name() == family) {
            bail!("--family {family:?}: use apt or dnf")
        }
    }
    Ok(())
}

/// Indents every line of `text` by `n` spaces (a YAML literal block).
fn block(text: &str, n: usize) -> String {
    let pad = " ".repeat(n);
    text.lines().fold(String::new(), |mut out, line| {
        if line.is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "{pad}{line}");
        }
        out
    })
}

/// The document: `write_files` (key, configuration, script, units) and
/// `runcmd` (the timer enabled, the bounded first attempt, the timer
/// started if that failed).
fn render(args: &CloudConfigArgs, key: &Checked) -> String {
    let conf = format!(
        "# Read by {SCRIPT_PATH}: NAME=VALUE, each value taken literally.\n\
         REPO={}\nFINGERPRINT={}\nCHANNEL={}\nWINDOW={}\nPACKAGE={}\nFAMILY={}\n",
        args.repo.trim_end_matches('/'),
        key.fingerprint,
        args.channel,
        args.window.as_deref().unwrap_or(""),
        args.package,
        args.family.as_deref().unwrap_or(""),
    );
    let mut doc = format!(
        "#cloud-config\n\
         # Made by `ferry enroll cloud-config` (docs/CLOUD-INIT.md): enrols this VM in\n\
         # channel {channel} of {repo} for {package}; ferry itself comes from\n\
         # the same repository and channel.\n\
         # cloud-init makes one attempt of at most {FIRST_ATTEMPT_SECS} s; if it fails, ferry-enroll.timer\n\
         # retries until the VM is enrolled (journalctl -u ferry-enroll.service), then\n\
         # removes itself.\n\
         write_files:\n",
        channel = args.channel,
        repo = args.repo,
        package = args.package,
    );
    for (path, mode, content) in [
        (KEY_PATH, "0644", key.armored.as_str()),
        (CONF_PATH, "0644", conf.as_str()),
        (SCRIPT_PATH, "0755", SCRIPT),
        (SERVICE_PATH, "0644", SERVICE),
        (TIMER_PATH, "0644", TIMER),
    ] {
        let _ = write!(
            doc,
            "  - path: {path}\n    owner: root:root\n    permissions: '{mode}'\n    content: |\n{}",
            block(content, 6)
        );
    }
    let _ = write!(
        doc,
        "runcmd:\n  - systemctl daemon-reload\n\
         \x20 # Enabled first, so a reboot during the first attempt still retries.\n\
         \x20 - systemctl enable ferry-enroll.timer\n\
         \x20 - |\n\
         \x20   if timeout {FIRST_ATTEMPT_SECS} {SCRIPT_PATH}; then\n\
         \x20     echo \"ferry-enroll: enrolled at first boot\"\n\
         \x20   else\n\
         \x20     echo \"ferry-enroll: the first attempt failed; ferry-enroll.timer retries (journalctl -u ferry-enroll.service)\"\n\
         \x20     systemctl start --no-block ferry-enroll.timer\n\
         \x20   fi\n"
    );
    doc
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;
    use yaml_rust2::{Yaml, YamlLoader};

    /// A throwaway key in its own GNUPGHOME; its armored export and
    /// fingerprint.
    fn key(dir: &std::path::Path, name: &str) -> (PathBuf, String) {
        let home = dir.join(name);
        std::fs::create_dir_all(&home).unwrap();
        let gpg = |args: &[&str]| {
            let out = Command::new("gpg")
                .arg("--homedir")
                .arg(&home)
                .args(["--batch", "--yes", "--pinentry-mode", "loopback"])
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "gpg {args:?}: {out:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        let uid = format!("{name} <{name}@enroll.invalid>");
        gpg(&[
            "--passphrase",
            "",
            "--quick-gen-key",
            &uid,
            "ed25519",
            "sign",
            "never",
        ]);
        let listing = gpg(&["--with-colons", "--list-keys"]);
        let fpr = crate::channel::gpg::primary_fingerprints(&listing).remove(0);
        let file = dir.join(format!("{name}.asc"));
        std::fs::write(&file, gpg(&["--armor", "--export", &fpr])).unwrap();
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&home)
            .args(["--kill", "all"])
            .status();
        (file, fpr)
    }

    fn args(key: PathBuf, fingerprint: &str) -> CloudConfigArgs {
        CloudConfigArgs {
            repo: "https://repo.example.org/ferry/".into(),
            key,
            fingerprint: fingerprint.to_lowercase(),
            channel: "stable".into(),
            window: Some("Mon..Fri 02:00-04:00".into()),
            package: "roboconf-agent".into(),
            family: None,
        }
    }

    fn file<'a>(doc: &'a Yaml, path: &str) -> &'a str {
        doc["write_files"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|f| f["path"].as_str() == Some(path))
            .unwrap_or_else(|| panic!("{path} not in write_files"))["content"]
            .as_str()
            .unwrap()
    }

    #[test]
    fn the_document_is_cloud_config_with_the_checked_key_and_the_variables() {
        let dir = tempfile::tempdir().unwrap();
        let (key_file, fpr) = key(dir.path(), "repo");
        let text = cloud_config(&args(key_file.clone(), &fpr)).unwrap();
        assert!(text.starts_with("#cloud-config\n"), "{text}");
        let docs = YamlLoader::load_from_str(&text).unwrap();
        assert_eq!(docs.len(), 1);
        let doc = &docs[0];

        let armored = file(doc, KEY_PATH);
        assert!(armored.starts_with("-----BEGIN PGP PUBLIC KEY BLOCK-----\n"));
        // The embedded key is the checked one: gpg finds the fingerprint in it.
        let embedded = dir.path().join("embedded.asc");
        std::fs::write(&embedded, armored).unwrap();
        let gpg = crate::channel::gpg::TempGpg::new().unwrap();
        assert_eq!(gpg.show_keys(&embedded).unwrap(), vec![fpr.clone()]);

        assert_eq!(
            file(doc, CONF_PATH),
            format!(
                "# Read by {SCRIPT_PATH}: NAME=VALUE, each value taken literally.\n\
                 REPO=https://repo.example.org/ferry\nFINGERPRINT={fpr}\nCHANNEL=stable\n\
                 WINDOW=Mon..Fri 02:00-04:00\nPACKAGE=roboconf-agent\nFAMILY=\n"
            )
        );
        // Script and units verbatim, the script executable.
        assert_eq!(file(doc, SCRIPT_PATH), SCRIPT);
        assert_eq!(file(doc, SERVICE_PATH), SERVICE);
        assert_eq!(file(doc, TIMER_PATH), TIMER);
        let script = doc["write_files"]
            .as_vec()
            .unwrap()
            .iter()
            .find(|f| f["path"].as_str() == Some(SCRIPT_PATH))
            .unwrap();
        assert_eq!(script["permissions"].as_str(), Some("0755"));

        // runcmd: the timer enabled before the bounded attempt, started if it fails.
        let runcmd: Vec<&str> = doc["runcmd"]
            .as_vec()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(
            runcmd[..2],
            [
                "systemctl daemon-reload",
                "systemctl enable ferry-enroll.timer"
            ]
        );
        assert!(runcmd[2].contains(&format!("timeout {FIRST_ATTEMPT_SECS} {SCRIPT_PATH}")));
        assert!(runcmd[2].contains("systemctl start --no-block ferry-enroll.timer"));
    }

    #[test]
    fn a_key_with_another_fingerprint_is_refused_naming_the_flags_and_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        let (key_file, _) = key(dir.path(), "repo");
        let (_, other) = key(dir.path(), "other");
        let err = cloud_config(&args(key_file.clone(), &other)).unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("--key") && text.contains("--fingerprint"),
            "{text}"
        );
        assert!(
            text.contains("fix: pass the repository's signing-key.asc"),
            "{text}"
        );
        assert!(text.contains("refusing to trust it"), "{text}");
        assert_eq!(crate::exit::status_of(&err), crate::exit::REFUSED);
    }

    #[test]
    fn bad_variables_are_refused_before_the_key_is_read() {
        let missing = PathBuf::from("/nonexistent/key.asc");
        let fpr = "0".repeat(40);
        // A change to good variables, and what the refusal must name.
        type Case = (fn(&mut CloudConfigArgs), &'static str);
        let cases: [Case; 6] = [
            (|a| a.channel = "a.b".into(), "--channel"),
            (|a| a.package = "Agent".into(), "--package"),
            (|a| a.window = Some("Mon 02:00".into()), "--window"),
            (|a| a.repo = "/srv/repo".into(), "--repo"),
            (
                |a| a.repo = "file:///srv/repo\nX=1".into(),
                "control characters",
            ),
            (|a| a.family = Some("yum".into()), "--family"),
        ];
        for (change, message) in cases {
            let mut a = args(missing.clone(), &fpr);
            change(&mut a);
            let err = cloud_config(&a).unwrap_err();
            assert!(format!("{err:#}").contains(message), "{message}: {err:#}");
            assert_eq!(crate::exit::status_of(&err), crate::exit::REFUSED);
        }
    }
}
