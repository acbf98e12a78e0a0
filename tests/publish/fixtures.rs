//! What tests/publish.rs builds on: throwaway directories, a signing key,
//! probe packages, and real apt and dnf clients reading a repository.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

use ferry::repo::{PromoteArgs, PublishArgs, SigningArgs, PUBLIC_KEY_FILE};

pub(crate) const PACKAGE: &str = "ferry-probe";

// ---------------------------------------------------------------- fixtures

/// A directory removed when the test ends.
pub(crate) struct Scratch(pub(crate) PathBuf);

impl Scratch {
    pub(crate) fn new(name: &str) -> Scratch {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("publish-{name}"));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
    pub(crate) fn path(&self, relative: &str) -> PathBuf {
        self.0.join(relative)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn run(command: &mut Command) -> Output {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}",
        text(&output)
    );
    output
}

pub(crate) fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// A throwaway signing key, made once per test run.
pub(crate) struct Key {
    pub(crate) home: PathBuf,
    pub(crate) fingerprint: String,
}

pub(crate) fn key() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| {
        let home = Path::new(env!("CARGO_TARGET_TMPDIR")).join("publish-gnupg");
        // The previous run's gpg-agent: stop it rather than leave one per run.
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(&home)
            .args(["--kill", "gpg-agent"])
            .status();
        let _ = fs::remove_dir_all(&home);
        fs::create_dir_all(&home).unwrap();
        run(Command::new("chmod").arg("700").arg(&home));
        run(Command::new("gpg").arg("--homedir").arg(&home).args([
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            "ferry publish test <publish@ferry.invalid>",
            "rsa2048",
            "sign",
            "never",
        ]));
        let listing = run(Command::new("gpg").arg("--homedir").arg(&home).args([
            "--batch",
            "--with-colons",
            "--list-secret-keys",
        ]));
        let fingerprint = String::from_utf8_lossy(&listing.stdout)
            .lines()
            .find_map(|l| {
                l.strip_prefix("fpr:")
                    .map(|rest| rest.trim_matches(':').to_string())
            })
            .expect("gpg lists the new key's fingerprint");
        Key { home, fingerprint }
    })
}

/// A second throwaway signing key in the same GNUPGHOME, the key a
/// repository rotates to; made once per test run.
pub(crate) fn second_key() -> &'static Key {
    static KEY: OnceLock<Key> = OnceLock::new();
    KEY.get_or_init(|| {
        let home = key().home.clone();
        let uid = "ferry publish rotation test <rotation@ferry.invalid>";
        run(Command::new("gpg").arg("--homedir").arg(&home).args([
            "--batch",
            "--passphrase",
            "",
            "--quick-gen-key",
            uid,
            "rsa2048",
            "sign",
            "never",
        ]));
        let listing = run(Command::new("gpg").arg("--homedir").arg(&home).args([
            "--batch",
            "--with-colons",
            "--list-secret-keys",
            uid,
        ]));
        let fingerprint = String::from_utf8_lossy(&listing.stdout)
            .lines()
            .find_map(|l| {
                l.strip_prefix("fpr:")
                    .map(|rest| rest.trim_matches(':').to_string())
            })
            .expect("gpg lists the second key's fingerprint");
        Key { home, fingerprint }
    })
}

/// `key`'s public key, armored, in the file `path`.
pub(crate) fn export_key(key: &Key, path: &Path) -> PathBuf {
    let export = run(Command::new("gpg").arg("--homedir").arg(&key.home).args([
        "--batch",
        "--armor",
        "--export",
        &key.fingerprint,
    ]));
    fs::write(path, export.stdout).unwrap();
    path.to_path_buf()
}

/// A small real .deb: version `V-1`, one file whose content is `salt`.
pub(crate) fn build_deb(dir: &Path, version: &str, arch: &str, salt: &str) -> PathBuf {
    build_deb_named(dir, PACKAGE, version, arch, salt)
}

pub(crate) fn build_deb_named(
    dir: &Path,
    name: &str,
    version: &str,
    arch: &str,
    salt: &str,
) -> PathBuf {
    let tree = dir.join(format!("deb-{name}-{version}-{arch}-{salt}"));
    fs::create_dir_all(tree.join("DEBIAN")).unwrap();
    fs::create_dir_all(tree.join("usr/share").join(name)).unwrap();
    fs::write(
        tree.join("usr/share").join(name).join("version"),
        format!("{version} {salt}\n"),
    )
    .unwrap();
    fs::write(
        tree.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: {version}-1\nArchitecture: {arch}\nMaintainer: ferry <ferry@invalid>\n\
             Section: admin\nPriority: optional\nDescription: probe package of ferry's tests\n"
        ),
    )
    .unwrap();
    let out = dir.join(format!("{name}_{version}-1_{arch}-{salt}.deb"));
    run(Command::new("dpkg-deb")
        .args(["--root-owner-group", "-Zgzip", "--build"])
        .arg(&tree)
        .arg(&out));
    out
}

/// A small real, unsigned rpm: version `V`, release 1, one file.
pub(crate) fn build_rpm(dir: &Path, version: &str, arch: &str, salt: &str) -> PathBuf {
    let package = rpm::PackageBuilder::new(
        PACKAGE,
        version,
        "MIT",
        arch,
        "probe package of ferry's tests",
    )
    .release("1")
    .with_file_contents(
        format!("{version} {salt}\n"),
        rpm::FileOptions::new(format!("/usr/share/{PACKAGE}/version")),
    )
    .unwrap()
    .build()
    .unwrap();
    let out = dir.join(format!("{PACKAGE}-{version}-1.{arch}-{salt}.rpm"));
    package.write_file(&out).unwrap();
    out
}

/// One .deb and one .rpm of `version`.
pub(crate) fn build_pair(dir: &Path, version: &str, salt: &str) -> Vec<PathBuf> {
    vec![
        build_deb(dir, version, "amd64", salt),
        build_rpm(dir, version, "x86_64", salt),
    ]
}

pub(crate) fn publish_args(repo: &Path, channel: &str, packages: Vec<PathBuf>) -> PublishArgs {
    PublishArgs {
        repo: repo.to_path_buf(),
        channel: channel.to_string(),
        keep: 5,
        signing: SigningArgs {
            keys: vec![key().fingerprint.clone()],
            gnupghome: Some(key().home.clone()),
        },
        keep_versions: Vec::new(),
        packages,
    }
}

/// Promotes `version` from candidate to stable, with the key the
/// repository records.
pub(crate) fn promote_to_stable(repo: &Path, version: &str) -> PromoteArgs {
    PromoteArgs {
        repo: repo.to_path_buf(),
        from: "candidate".to_string(),
        to: "stable".to_string(),
        keep: 5,
        signing: SigningArgs {
            keys: Vec::new(),
            gnupghome: Some(key().home.clone()),
        },
        version: version.to_string(),
        package: None,
    }
}

/// Every path under `dir` with its content hash (or symlink target): a
/// refused command must leave this unchanged.
pub(crate) fn snapshot(dir: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(current) = stack.pop() {
        for entry in fs::read_dir(&current).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(dir).unwrap().display().to_string();
            let meta = fs::symlink_metadata(&path).unwrap();
            let value = if meta.file_type().is_symlink() {
                format!("-> {}", fs::read_link(&path).unwrap().display())
            } else if meta.is_dir() {
                stack.push(path);
                "dir".to_string()
            } else {
                sha256(&fs::read(&path).unwrap())
            };
            found.insert(relative, value);
        }
    }
    found
}

pub(crate) fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn pool_deb(repo: &Path, version: &str) -> PathBuf {
    repo.join(format!(
        "apt/pool/main/{PACKAGE}/{PACKAGE}_{version}-1_amd64.deb"
    ))
}

pub(crate) fn pool_rpm(repo: &Path, version: &str) -> PathBuf {
    repo.join(format!("rpm/pool/{PACKAGE}-{version}-1.x86_64.rpm"))
}

// ---------------------------------------------------------------- clients

/// apt-get with its own sources, keyring-free trust (Signed-By) and state:
/// the host's apt configuration and lists are never touched.
pub(crate) struct Apt {
    pub(crate) root: PathBuf,
}

impl Apt {
    pub(crate) fn new(root: PathBuf, repo: &Path, channel: &str) -> Apt {
        Apt::trusting(root, repo, channel, &repo.join(PUBLIC_KEY_FILE))
    }

    /// A client whose `signed-by=` is `key` rather than the repository's file.
    pub(crate) fn trusting(root: PathBuf, repo: &Path, channel: &str, key: &Path) -> Apt {
        for dir in [
            "etc/trusted.gpg.d",
            "etc/sources.list.d",
            "etc/preferences.d",
            "state/lists/partial",
            "cache/archives/partial",
            "download",
        ] {
            fs::create_dir_all(root.join(dir)).unwrap();
        }
        fs::write(root.join("status"), "").unwrap();
        fs::write(
            root.join("etc/sources.list"),
            format!(
                "deb [signed-by={}] file://{}/apt {channel} main\n",
                key.display(),
                repo.display()
            ),
        )
        .unwrap();
        Apt { root }
    }

    pub(crate) fn command(&self) -> Command {
        let mut command = Command::new("apt-get");
        let r = self.root.display();
        for option in [
            format!("Dir::Etc::SourceList={r}/etc/sources.list"),
            format!("Dir::Etc::SourceParts={r}/etc/sources.list.d"),
            format!("Dir::Etc::TrustedParts={r}/etc/trusted.gpg.d"),
            format!("Dir::Etc::Trusted={r}/etc/trusted.gpg"),
            format!("Dir::Etc::PreferencesParts={r}/etc/preferences.d"),
            format!("Dir::State={r}/state"),
            format!("Dir::State::status={r}/status"),
            format!("Dir::Cache={r}/cache"),
            "Debug::NoLocking=1".to_string(),
            "APT::Sandbox::User=root".to_string(),
            "Acquire::Languages=none".to_string(),
            "APT::Architecture=amd64".to_string(),
            "APT::Architectures=amd64".to_string(),
        ] {
            command.arg("-o").arg(option);
        }
        command
            .current_dir(self.root.join("download"))
            .stdin(Stdio::null());
        command
    }

    /// `apt-get update` with fresh lists, failing on any warning (SPEC §5).
    pub(crate) fn update(&self) -> Output {
        let _ = fs::remove_dir_all(self.root.join("state/lists"));
        fs::create_dir_all(self.root.join("state/lists/partial")).unwrap();
        self.command()
            .args(["update", "--error-on=any"])
            .output()
            .unwrap()
    }

    /// `update`, which must succeed.
    pub(crate) fn update_ok(&self) {
        let update = self.update();
        assert!(
            update.status.success(),
            "apt-get update failed:\n{}",
            text(&update)
        );
    }

    /// `apt-get download NAME=VERSION-1`: the bytes apt verified and fetched.
    pub(crate) fn download(&self, version: &str) -> Result<Vec<u8>, String> {
        let output = self
            .command()
            .args(["download", &format!("{PACKAGE}={version}-1")])
            .output()
            .unwrap();
        take_download(
            &output,
            &self.root,
            &format!("{PACKAGE}_{version}-1_amd64.deb"),
        )
    }
}

/// dnf with an installroot of its own, gpgcheck and repo_gpgcheck on, and
/// skip_if_unavailable off (SPEC §6: Debian's default would hide failures).
pub(crate) struct Dnf {
    pub(crate) root: PathBuf,
}

impl Dnf {
    pub(crate) fn new(root: PathBuf, repo: &Path, channel: &str) -> Dnf {
        Dnf::trusting(root, repo, channel, &repo.join(PUBLIC_KEY_FILE))
    }

    /// A client whose `gpgkey=` is `key` rather than the repository's file
    /// (rpm's own database, which `gpgcheck` uses, gets it on install).
    pub(crate) fn trusting(root: PathBuf, repo: &Path, channel: &str, key: &Path) -> Dnf {
        fs::create_dir_all(root.join("etc/yum.repos.d")).unwrap();
        fs::create_dir_all(root.join("download")).unwrap();
        fs::write(
            root.join("etc/yum.repos.d/ferry.repo"),
            format!(
                "[ferry]\nname=ferry\nbaseurl=file://{}/rpm/{channel}\nenabled=1\ngpgcheck=1\nrepo_gpgcheck=1\n\
                 gpgkey=file://{}\nskip_if_unavailable=0\nmetadata_expire=0\n",
                repo.display(),
                key.display()
            ),
        )
        .unwrap();
        Dnf { root }
    }

    pub(crate) fn command(&self) -> Command {
        let mut command = Command::new("dnf");
        command
            .args(["-y", "--installroot"])
            .arg(&self.root)
            .arg(format!(
                "--setopt=reposdir={}/etc/yum.repos.d",
                self.root.display()
            ))
            .args([
                "--releasever",
                "12",
                "--disablerepo=*",
                "--enablerepo=ferry",
                "--refresh",
            ])
            .stdin(Stdio::null());
        command
    }

    pub(crate) fn makecache(&self) -> Output {
        let _ = fs::remove_dir_all(self.root.join("var/cache/dnf"));
        self.command().arg("makecache").output().unwrap()
    }

    /// `makecache`, which must succeed.
    pub(crate) fn makecache_ok(&self) {
        let cache = self.makecache();
        assert!(
            cache.status.success(),
            "dnf makecache failed:\n{}",
            text(&cache)
        );
    }

    /// Downloads `NAME-VERSION-1` through dnf (signature checked): its bytes.
    pub(crate) fn download(&self, version: &str) -> Result<Vec<u8>, String> {
        let output = self
            .command()
            .args(["install", "--downloadonly", "--downloaddir"])
            .arg(self.root.join("download"))
            .arg(format!("{PACKAGE}-{version}-1"))
            .output()
            .unwrap();
        take_download(
            &output,
            &self.root,
            &format!("{PACKAGE}-{version}-1.x86_64.rpm"),
        )
    }

    /// Installs the newest version and returns what the installroot's rpmdb holds.
    pub(crate) fn install_newest(&self) -> String {
        let output = self.command().args(["install", PACKAGE]).output().unwrap();
        assert!(
            output.status.success(),
            "dnf install failed:\n{}",
            text(&output)
        );
        let query = run(Command::new("rpm")
            .arg("--root")
            .arg(&self.root)
            .args(["-q", PACKAGE]));
        String::from_utf8_lossy(&query.stdout).trim().to_string()
    }
}

pub(crate) fn assert_clients_read(scratch: &Scratch, repo: &Path, channel: &str, version: &str) {
    let apt = Apt::new(scratch.path(&format!("apt-check-{version}")), repo, channel);
    apt.update_ok();
    assert_eq!(
        apt.download(version).unwrap(),
        fs::read(pool_deb(repo, version)).unwrap()
    );
    let dnf = Dnf::new(scratch.path(&format!("dnf-check-{version}")), repo, channel);
    dnf.makecache_ok();
    assert_eq!(
        dnf.download(version).unwrap(),
        fs::read(pool_rpm(repo, version)).unwrap()
    );
}

// ---------------------------------------------------------------- tests

/// What a client's download left in `ROOT/download/NAME` (removed), or the
/// client's output when the download failed.
fn take_download(output: &Output, root: &Path, name: &str) -> Result<Vec<u8>, String> {
    if !output.status.success() {
        return Err(text(output));
    }
    let file = root.join("download").join(name);
    let bytes = fs::read(&file).unwrap();
    fs::remove_file(file).unwrap();
    Ok(bytes)
}
