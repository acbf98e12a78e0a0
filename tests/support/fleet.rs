//! Six booted lab hosts (three Debian, three RPM) driven by the pinned
//! Ansible of ci/ansible-requirements.txt through community.docker's
//! nsenter connection, with the `ferry.fleet` collection (ansible/)
//! installed for the controller: what tests/fleet.rs and
//! `cargo bench --bench fleet` share.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

use super::lab::{Host, HostKind};
use super::repo::ferry_publish;
use super::signing::Signer;
use super::Scratch;

pub const AGENT_PACKAGE: &str = "roboconf-agent";

/// Where ci/test installs Ansible (`FERRY_ANSIBLE_VENV` overrides it).
pub fn ansible_venv() -> PathBuf {
    let venv = std::env::var_os("FERRY_ANSIBLE_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/ferry-ansible/venv"));
    assert!(
        venv.join("bin/ansible-playbook").exists(),
        "no Ansible in {}: ci/test installs it from ci/ansible-requirements.txt \
         (or set FERRY_ANSIBLE_VENV to a virtual environment that has it)",
        venv.display()
    );
    venv
}

/// A signed repository, made with `ferry publish`, holding the agent and
/// ferry's own package at 1.0.0 (and what else the caller publishes): what
/// every fleet is enrolled from.
pub struct Repository {
    pub signer: Signer,
    pub dir: PathBuf,
    _scratch: Scratch,
}

impl Repository {
    /// The agent 1.0.0 and ferry 1.0.0, and `more`, in channel `stable`.
    pub fn new(name: &str, more: &[&Path]) -> Repository {
        let agent = super::probe::agent("1.0.0");
        let ferry = super::probe::ferry_cli("1.0.0");
        let signer = Signer::new(name);
        let scratch = Scratch::new(&format!("ferry-{name}-repo"));
        let dir = scratch.path().join("repo");
        let mut packages = vec![
            agent.deb.as_path(),
            agent.rpm.as_path(),
            ferry.deb.as_path(),
            ferry.rpm.as_path(),
        ];
        packages.extend_from_slice(more);
        ferry_publish(&signer, &dir, "stable", &packages);
        Repository {
            signer,
            dir,
            _scratch: scratch,
        }
    }

    /// Publishes `packages` into channel `stable`.
    pub fn publish(&self, packages: &[&Path]) {
        ferry_publish(&self.signer, &self.dir, "stable", packages);
    }

    /// The key's fingerprint, as the hosts are told it.
    pub fn fingerprint(&self) -> &str {
        self.signer.fingerprint()
    }

    /// The repository's public key, as `ferry publish` wrote it.
    pub fn key(&self) -> PathBuf {
        self.dir.join("signing-key.asc")
    }
}

/// Booted hosts (six with [`Fleet::boot`]), the collection installed for
/// the controller, an inventory naming each host's PID 1.
pub struct Fleet {
    pub hosts: Vec<(String, Host)>,
    pub dir: Scratch,
    venv: PathBuf,
}

impl Fleet {
    /// Six hosts: debian1, rpm1, debian2, rpm2, debian3, rpm3.
    pub fn boot(repo: &Repository) -> Fleet {
        Fleet::boot_n(
            repo,
            &["debian1", "rpm1", "debian2", "rpm2", "debian3", "rpm3"],
        )
    }

    /// One host per name, in the inventory's order: an RPM host for a name
    /// that begins with `rpm`, a Debian host for any other.
    pub fn boot_n(repo: &Repository, names: &[&str]) -> Fleet {
        let (key, fpr) = (repo.key(), repo.fingerprint());
        let venv = ansible_venv();
        let dir = Scratch::new("ferry-fleet");
        let mut hosts: Vec<(String, Host)> = names
            .iter()
            .map(|name| {
                let kind = if name.starts_with("rpm") {
                    HostKind::Rpm
                } else {
                    HostKind::Debian
                };
                let mut host = Host::new(kind);
                host.bind_ro(&repo.dir, "/srv/repo");
                (name.to_string(), host)
            })
            .collect();
        std::thread::scope(|s| {
            for (name, host) in hosts.iter_mut() {
                s.spawn(move || assert_eq!(host.boot(), "running", "{name}"));
            }
        });
        // The collection as `ansible-galaxy collection install ./ansible` lays it out.
        let collections = dir.path().join("collections/ansible_collections/ferry");
        fs::create_dir_all(&collections).unwrap();
        super::run(
            Command::new("cp")
                .args(["-a", concat!(env!("CARGO_MANIFEST_DIR"), "/ansible")])
                .arg(collections.join("fleet")),
        );
        // The rollout's batches of two follow this order (debian1+rpm1, …).
        // `lab_family` is what the host is, for plays that skip the probe;
        // the enroll role and the rollout probe each host themselves.
        let mut inventory = String::from("[agents]\n");
        for (name, host) in &hosts {
            inventory += &format!(
                "{name} ansible_nsenter_pid={} lab_family={}\n",
                host.leader().unwrap(),
                if host.kind() == HostKind::Rpm {
                    "dnf"
                } else {
                    "apt"
                }
            );
        }
        inventory += &format!(
            "\n[agents:vars]\nansible_connection=community.docker.nsenter\n\
             ansible_python_interpreter=/usr/bin/python3\nferry_repo=file:///srv/repo\n\
             ferry_repo_key_file={}\nferry_repo_fingerprint={fpr}\nferry_channel=stable\n",
            key.display()
        );
        fs::write(dir.path().join("inventory"), inventory).unwrap();
        fs::write(
            dir.path().join("enroll.yml"),
            "- hosts: agents\n  gather_facts: false\n  roles:\n    - ferry.fleet.enroll\n",
        )
        .unwrap();
        Fleet { hosts, dir, venv }
    }

    pub fn host(&self, name: &str) -> &Host {
        &self.hosts.iter().find(|(n, _)| n == name).unwrap().1
    }

    /// `ansible-playbook PLAYBOOK ARGS…` with the JSON callback; its output
    /// and whether it succeeded.
    pub fn playbook(&self, playbook: &str, args: &[&str]) -> (Value, bool) {
        let started = Instant::now();
        let out = Command::new(self.venv.join("bin/ansible-playbook"))
            .current_dir(self.dir.path())
            .env(
                "ANSIBLE_COLLECTIONS_PATH",
                self.dir.path().join("collections"),
            )
            .env("ANSIBLE_STDOUT_CALLBACK", "json")
            .env("ANSIBLE_LOCAL_TEMP", self.dir.path().join("tmp"))
            .env("ANSIBLE_FORKS", "6")
            .env("ANSIBLE_NOCOLOR", "1")
            .args(["-i", "inventory", playbook])
            .args(args)
            .output()
            .expect("ansible-playbook runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| {
            panic!(
                "ansible-playbook {playbook} {args:?} printed no JSON ({e}): {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        eprintln!(
            "fleet: ansible-playbook {playbook} {args:?}: {} in {:.1?}",
            out.status,
            started.elapsed()
        );
        (json, out.status.success())
    }

    /// The collection's rollout playbook.
    pub fn rollout_playbook(&self) -> String {
        self.collection_playbook("rollout.yml")
    }

    /// A playbook of the installed collection (`playbooks/NAME`).
    pub fn collection_playbook(&self, name: &str) -> String {
        self.dir
            .path()
            .join("collections/ansible_collections/ferry/fleet/playbooks")
            .join(name)
            .display()
            .to_string()
    }
}

/// A host's recap: changed, failures, ok…
pub fn stats<'a>(run: &'a Value, host: &str) -> &'a Value {
    &run["stats"][host]
}

/// What failed in a run: each failed task's host, name and message.
pub fn failures(run: &Value) -> String {
    let mut out = String::new();
    for play in run["plays"].as_array().into_iter().flatten() {
        for t in play["tasks"].as_array().into_iter().flatten() {
            for (host, result) in t["hosts"].as_object().into_iter().flatten() {
                if result["failed"] == true || result["unreachable"] == true {
                    out += &format!(
                        "{host}: {}: {} {} {}\n",
                        t["task"]["name"], result["msg"], result["stderr"], result["module_stderr"]
                    );
                }
            }
        }
    }
    out
}

/// Every result of the task named `task` (in a role, after its prefix), by host.
pub fn task_results<'a>(run: &'a Value, task: &str) -> Vec<(&'a str, &'a Value)> {
    let mut found = Vec::new();
    for play in run["plays"].as_array().unwrap() {
        for t in play["tasks"].as_array().unwrap() {
            let name = t["task"]["name"].as_str().unwrap_or_default();
            if name == task || name.ends_with(&format!(" : {task}")) {
                for (host, result) in t["hosts"].as_object().unwrap() {
                    found.push((host.as_str(), result));
                }
            }
        }
    }
    found
}

pub fn installed_version(host: &Host) -> String {
    let query = match host.kind() {
        HostKind::Debian => format!("dpkg-query -W -f '${{Version}}' {AGENT_PACKAGE}"),
        HostKind::Rpm => format!("rpm -q --qf '%{{VERSION}}-%{{RELEASE}}' {AGENT_PACKAGE}"),
    };
    host.sh_ok(&query)
}

/// Everything under /etc with its checksum: what a check-mode run must leave alone.
pub fn etc_listing(host: &Host) -> String {
    host.sh_ok(
        "find /etc -xdev -type f -newer /etc/hostname -print0 | sort -z | xargs -0 -r sha256sum",
    )
}
