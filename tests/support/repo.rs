//! Minimal signed local repositories, served to lab hosts as `file://` URLs
//! from a read-only bind mount. `ferry publish` will replace the publishing
//! half; `attach` (the host side) is what a real host is given.
//!
//! apt: `dists/lab/{Release,InRelease,Release.gpg}` and
//! `dists/lab/main/binary-amd64/Packages` over `pool/`, with a unique Origin.
//! rpm: packages signed with `rpmsign --addsign`, `createrepo_c`, and
//! `repodata/repomd.xml.asc`.

use super::lab::Host;
use super::signing::Signer;
use super::{run, Scratch};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::Path;
use std::process::Command;

/// `ferry publish --repo REPO --channel CHANNEL PACKAGES…`, signed with the
/// signer's key: a repository as ferry's users make it.
pub fn ferry_publish(signer: &Signer, repo: &Path, channel: &str, packages: &[&Path]) {
    run(Command::new(env!("CARGO_BIN_EXE_ferry"))
        .args(["publish", "--repo"])
        .arg(repo)
        .args(["--channel", channel, "--key", signer.fingerprint()])
        .arg("--gnupghome")
        .arg(signer.home())
        .args(packages));
}

/// Where a repository appears inside a host.
fn guest_dir(name: &str) -> String {
    format!("/srv/ferry-lab/{name}")
}

fn add_to(dir: &Path, package: &Path) -> std::path::PathBuf {
    fs::create_dir_all(dir).unwrap();
    let dest = dir.join(package.file_name().expect("package file name"));
    fs::copy(package, &dest).unwrap_or_else(|e| panic!("cannot copy {}: {e}", package.display()));
    dest
}

pub struct AptRepo {
    name: String,
    origin: String,
    signer: Signer,
    dir: Scratch,
}

impl AptRepo {
    /// An empty repository signed by a fresh key. `name` is short, made of
    /// [a-z0-9-]; the Origin adds the process id to stay unique.
    pub fn new(name: &str) -> AptRepo {
        let repo = AptRepo {
            name: name.to_string(),
            origin: format!("ferry-lab-{name}-{}", std::process::id()),
            signer: Signer::new(name),
            dir: Scratch::new("ferry-lab-apt"),
        };
        repo.index();
        repo
    }

    /// The Release file's Origin (and Label): what unattended-upgrades'
    /// `Origins-Pattern` matches with `origin=`.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Adds a .deb and re-signs the indices.
    pub fn publish(&self, deb: &Path) {
        add_to(&self.dir().join("pool"), deb);
        self.index();
    }

    fn index(&self) {
        let dists = self.dir().join("dists/lab");
        let bin = dists.join("main/binary-amd64");
        fs::create_dir_all(&bin).unwrap();
        fs::create_dir_all(self.dir().join("pool")).unwrap();
        let packages = run(Command::new("dpkg-scanpackages")
            .args(["--multiversion", "pool", "/dev/null"])
            .current_dir(self.dir()));
        fs::write(bin.join("Packages"), &packages).unwrap();
        let date = run(Command::new("date").args(["-u", "+%a, %d %b %Y %H:%M:%S UTC"]));
        let release = format!(
            "Origin: {o}\nLabel: {o}\nSuite: lab\nCodename: lab\nDate: {d}\n\
             Architectures: amd64\nComponents: main\nDescription: ferry lab repository\n\
             SHA256:\n {h:x} {n} main/binary-amd64/Packages\n",
            o = self.origin,
            d = date.trim(),
            h = Sha256::digest(packages.as_bytes()),
            n = packages.len(),
        );
        let path = dists.join("Release");
        fs::write(&path, release).unwrap();
        self.signer.clearsign(&path, &dists.join("InRelease"));
        self.signer
            .detach_sign(&path, &dists.join("Release.gpg"), false);
    }

    /// The key's path inside a host (the `.sources` file's `Signed-By:`).
    pub fn keyring(&self) -> String {
        format!("/etc/apt/keyrings/ferry-lab-{}.gpg", self.name)
    }

    /// Gives `host` this repository, before it boots: a read-only bind, a
    /// deb822 `.sources` file and its key under /etc/apt/keyrings.
    pub fn attach(&self, host: &mut Host) {
        let keyring = self.keyring();
        host.bind_ro(self.dir(), &guest_dir(&self.name));
        host.write(&keyring, self.signer.public_key());
        host.write(
            &format!("/etc/apt/sources.list.d/ferry-lab-{}.sources", self.name),
            format!(
                "Types: deb\nURIs: file://{}\nSuites: lab\nComponents: main\nSigned-By: {keyring}\n",
                guest_dir(&self.name)
            ),
        );
    }
}

pub struct RpmRepo {
    name: String,
    signer: Signer,
    dir: Scratch,
}

impl RpmRepo {
    /// An empty repository (package and metadata signatures) with a fresh key.
    pub fn new(name: &str) -> RpmRepo {
        let repo = RpmRepo {
            name: name.to_string(),
            signer: Signer::new(name),
            dir: Scratch::new("ferry-lab-rpm"),
        };
        repo.index();
        repo
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The dnf repository id, also the .repo file's name.
    pub fn id(&self) -> String {
        format!("ferry-lab-{}", self.name)
    }

    /// Adds a signed copy of an .rpm and re-signs the metadata.
    pub fn publish(&self, rpm: &Path) {
        let copy = add_to(&self.dir().join("packages"), rpm);
        self.signer.rpmsign(&copy);
        self.index();
    }

    fn index(&self) {
        run(Command::new("createrepo_c")
            .args(["--quiet", "--update"])
            .arg(self.dir()));
        let repomd = self.dir().join("repodata/repomd.xml");
        self.signer
            .detach_sign(&repomd, &self.dir().join("repodata/repomd.xml.asc"), true);
    }

    /// The `.repo` file: signatures on packages and metadata checked, never
    /// skipped when broken, metadata always refreshed.
    pub fn repo_file(&self) -> String {
        format!(
            "[{id}]\nname=ferry lab {name}\nbaseurl=file://{dir}\nenabled=1\n\
             gpgcheck=1\nrepo_gpgcheck=1\ngpgkey=file://{key}\n\
             skip_if_unavailable=0\nmetadata_expire=0\n",
            id = self.id(),
            name = self.name,
            dir = guest_dir(&self.name),
            key = self.key_path(),
        )
    }

    /// Runs dnf-automatic in the booted `host` once, as its service does,
    /// with a configuration of its own restricted to this repository
    /// (SPEC §6); its journal.
    pub fn automatic_run(&self, host: &Host) -> String {
        host.write(
            &format!("/etc/ferry-lab/automatic.repos.d/{}.repo", self.id()),
            self.repo_file(),
        );
        host.write(
            "/etc/dnf/automatic.conf",
            "[commands]\nupgrade_type = default\nrandom_sleep = 0\nnetwork_online_timeout = 60\n\
             download_updates = yes\napply_updates = yes\n\n\
             [emitters]\nemit_via = stdio\n\n\
             [base]\ndebuglevel = 1\nreposdir = /etc/ferry-lab/automatic.repos.d\n",
        );
        // dnf measures cache age in whole seconds (SPEC §6).
        std::thread::sleep(std::time::Duration::from_secs(1));
        host.sh_ok("systemctl start dnf-automatic.service");
        host.sh("journalctl -u dnf-automatic.service --no-pager")
            .stdout
    }

    /// The key's path inside a host (`gpgkey=` and what `rpm --import` read).
    pub fn key_path(&self) -> String {
        format!("/etc/pki/rpm-gpg/RPM-GPG-KEY-ferry-lab-{}", self.name)
    }

    /// Gives `host` this repository, before it boots: a read-only bind, the
    /// key imported with `rpm --import`, and /etc/yum.repos.d/ID.repo.
    pub fn attach(&self, host: &mut Host) {
        host.bind_ro(self.dir(), &guest_dir(&self.name));
        host.write(&self.key_path(), self.signer.public_key_armored());
        host.write(
            &format!("/etc/yum.repos.d/{}.repo", self.id()),
            self.repo_file(),
        );
        let out = host.exec(&["rpm", "--import", &self.key_path()]);
        assert!(out.success(), "rpm --import failed: {out}");
    }
}
