//! The admin's configuration under the config directory: `agent.toml` and the
//! `credentials` file. The agent only reads them, never writes there (they are
//! conffiles: a rewrite would make every upgrade prompt).
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub const CONFIG_FILE: &str = "agent.toml";
pub const CREDENTIALS_FILE: &str = "credentials";
const DEFAULT_RECIPE_TIMEOUT_SECS: u64 = 300;

/// Where the agent keeps things; each is a global flag with an environment
/// variable so that tests run unprivileged in temporary directories.
#[derive(Debug, Clone)]
pub struct Paths {
    pub config_dir: PathBuf,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
}

impl Paths {
    pub fn socket(&self) -> PathBuf {
        self.runtime_dir.join("control.sock")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    application: String,
    scoped_instance_path: String,
    messaging_endpoint: String,
    recipes_dir: Option<PathBuf>,
    recipe_timeout_secs: Option<u64>,
    migrate_on_start: Option<bool>,
}

/// The configuration the daemon runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub application: String,
    pub scoped_instance_path: String,
    pub messaging_endpoint: String,
    pub recipes_dir: PathBuf,
    pub recipe_timeout: Duration,
    pub has_credentials: bool,
    /// Whether `run` may migrate an older state up by itself (the default).
    /// Off, it refuses to start on an older schema: only the package's
    /// upgrade hook (or the admin, with `state migrate`) migrates.
    pub migrate_on_start: bool,
}

pub fn load(paths: &Paths) -> Result<Config> {
    let path = paths.config_dir.join(CONFIG_FILE);
    let text = fs::read_to_string(&path).with_context(|| {
        format!(
            "cannot read the agent configuration {}: create it with at least application, \
             scoped_instance_path and messaging_endpoint (see docs/AGENT.md)",
            path.display()
        )
    })?;
    let file: File = toml::from_str(&text)
        .with_context(|| format!("invalid configuration in {}", path.display()))?;
    crate::model::validate_path(&file.scoped_instance_path)
        .map_err(|e| anyhow::anyhow!("invalid scoped_instance_path in {}: {e}", path.display()))?;
    if file.recipe_timeout_secs == Some(0) {
        bail!(
            "invalid recipe_timeout_secs in {}: it must be at least 1",
            path.display()
        );
    }
    let has_credentials = check_credentials(&paths.config_dir.join(CREDENTIALS_FILE))?;
    Ok(Config {
        application: file.application,
        scoped_instance_path: file.scoped_instance_path,
        messaging_endpoint: file.messaging_endpoint,
        recipes_dir: file
            .recipes_dir
            .unwrap_or_else(|| paths.state_dir.join("recipes")),
        recipe_timeout: Duration::from_secs(
            file.recipe_timeout_secs
                .unwrap_or(DEFAULT_RECIPE_TIMEOUT_SECS),
        ),
        has_credentials,
        migrate_on_start: file.migrate_on_start.unwrap_or(true),
    })
}

/// The credentials file is optional (false when absent); when present it must
/// be 0640 or tighter, since anyone who can read it can speak for this VM and
/// anyone who can write it can redirect the agent.
pub fn check_credentials(path: &Path) -> Result<bool> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => {
            return Err(e)
                .with_context(|| format!("cannot read the credentials file {}", path.display()))
        }
    };
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o027 != 0 {
        bail!(
            "refusing the credentials file {}: its mode is {mode:04o}, which lets {} it; \
             it must be 0640 or tighter: run `chmod 0640 {}`",
            path.display(),
            if mode & 0o022 != 0 {
                "the group or others write"
            } else {
                "others read"
            },
            path.display()
        );
    }
    fs::File::open(path)
        .with_context(|| format!("cannot read the credentials file {}", path.display()))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loose_credentials_are_refused() {
        let dir = std::env::temp_dir().join(format!("roboconf-cred-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(CREDENTIALS_FILE);
        assert!(!check_credentials(&path).unwrap());
        fs::write(&path, "user=vm1\n").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o640, true),
            (0o644, false),
            (0o660, false),
            (0o602, false),
        ] {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
            let r = check_credentials(&path);
            assert_eq!(r.is_ok(), ok, "mode {mode:o}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().contains("0640 or tighter"), "{e}");
            }
        }
        fs::remove_dir_all(dir).unwrap();
    }
}
