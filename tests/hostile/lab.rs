//! The hostile lab's host: what the agent's user plants, the canaries root
//! must never touch, and the package steps (tests/hostile.rs).

use super::*;

impl Lab {
    pub(crate) fn new(kind: HostKind) -> Lab {
        let began = Instant::now();
        // Built before the host boots: once per test process.
        for v in [OLD, NEW, BROKEN] {
            v.package(kind);
        }
        let mut host = Host::new(kind);
        assert!(matches!(host.boot().as_str(), "running" | "degraded"));
        let first = if kind == HostKind::Rpm { "install" } else { "" };
        let out = install(&host, &OLD.package(kind), first);
        assert!(out.success(), "installing {}: {out}", OLD.semver);
        wait_answering(&host);
        deploy_tree(&host);
        host.copy_in(env!("CARGO_BIN_EXE_ferry"), "/usr/local/bin/ferry");
        host.write(RACE_SCRIPT, RACE_PERL);
        let mut lab = Lab {
            tree: sorted_tree(&host),
            host,
            kind,
            canaries: Vec::new(),
        };
        lab.make_canaries();
        report(&format!(
            "{} host booted, {} installed, tree deployed, canaries made in {:.1} s",
            kind.name(),
            OLD.semver,
            began.elapsed().as_secs_f64()
        ));
        lab
    }

    /// Root-only files with unique text, and a valid state holding a
    /// secret (component `VM-<unique>`) made from the agent's own.
    pub(crate) fn make_canaries(&mut self) {
        let h = &self.host;
        h.sh_ok(&format!(
            "[ -d {FERRY_DIR} ] || install -d -m 0700 {FERRY_DIR}"
        ));
        let mut canaries = vec![Canary {
            path: "/etc/shadow".into(),
            unique: None,
        }];
        let plain = ["lock", "tmp", "marker", "race"]
            .iter()
            .map(|n| format!("/root/canary-{n}"))
            .chain([format!("{FERRY_DIR}/canary")]);
        for path in plain {
            let unique = format!("ferry-hostile-canary-{}", random_hex());
            h.sh_ok(&format!(
                "umask 077; printf '%s\\n' {unique} > {path}; chmod 0600 {path}"
            ));
            canaries.push(Canary {
                path,
                unique: Some(unique),
            });
        }
        let secret = format!("VM-secret-{}", random_hex());
        let state = h.read(&format!("{STATE}/state.json"));
        let (head, payload) = state.split_once('\n').expect("a state header line");
        let secret_payload = payload.replacen(
            "\"component\": \"VM\"",
            &format!("\"component\": \"{secret}\""),
            1,
        );
        assert_ne!(secret_payload, payload, "the /vm instance in {payload}");
        let mut head: serde_json::Value = serde_json::from_str(head).unwrap();
        head["sha256"] = hex(&Sha256::digest(secret_payload.as_bytes())).into();
        h.write(STATE_CANARY, format!("{head}\n{secret_payload}"));
        h.sh_ok(&format!(
            "chmod 0600 {STATE_CANARY}
             mkdir -m 0700 /root/hostile-check
             cp {STATE_CANARY} /root/hostile-check/state.json
             {AGENT} --state-dir /root/hostile-check state check
             rm -r /root/hostile-check"
        ));
        canaries.push(Canary {
            path: STATE_CANARY.into(),
            unique: Some(secret),
        });
        self.canaries = canaries;
    }

    /// Each canary's type, owner, mode and SHA-256.
    pub(crate) fn fingerprints(&self) -> BTreeMap<String, String> {
        let paths: Vec<&str> = self.canaries.iter().map(|c| c.path.as_str()).collect();
        let out = self.host.sh_ok(&format!(
            "for f in {}; do
                if [ -e \"$f\" ] || [ -L \"$f\" ]; then
                    printf '%s\\t%s %s\\n' \"$f\" \"$(stat -c '%F %U:%G %a' \"$f\")\" \"$(sha256sum < \"$f\" | cut -c1-64)\"
                else
                    printf '%s\\tmissing\\n' \"$f\"
                fi
            done",
            paths.join(" ")
        ));
        out.lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(p, f)| (p.to_string(), f.to_string()))
            .collect()
    }

    /// What a changed canary holds now, in words.
    pub(crate) fn describe(&self, path: &str) -> String {
        let bytes = std::fs::read(self.host.path(path)).unwrap_or_default();
        let text = String::from_utf8_lossy(&bytes);
        let mut said = Vec::new();
        let trimmed = text.trim();
        if !trimmed.is_empty() && trimmed.chars().all(|c| c.is_ascii_digit()) {
            said.push(format!("now holds a PID ({trimmed}): the agent's lock"));
        }
        if text.contains("roboconf-agent-state") && path != STATE_CANARY {
            said.push("now holds the agent's state JSON".to_string());
        }
        if text.contains("ferry-hook[") {
            said.push("now holds ferry-hook's log lines".to_string());
        }
        if said.is_empty() && path != "/etc/shadow" {
            let head: String = text.chars().take(120).collect();
            said.push(format!("now begins {head:?}"));
        }
        said.join("; ")
    }

    pub(crate) fn canary_findings(&self, before: &BTreeMap<String, String>) -> Vec<String> {
        let after = self.fingerprints();
        before
            .iter()
            .filter(|(path, was)| after.get(*path) != Some(*was))
            .map(|(path, was)| {
                format!(
                    "canary {path} changed: [{was}] -> [{}]; {}",
                    after.get(path).map_or("gone", String::as_str),
                    self.describe(path)
                )
            })
            .collect()
    }

    /// Runs `script` as the agent's user (no new privileges, its groups).
    pub(crate) fn as_agent(&self, script: &str) -> String {
        self.host.sh_ok(&format!(
            "setpriv --reuid={USER} --regid={USER} --init-groups sh -ec {}",
            shell_quote(script)
        ))
    }

    pub(crate) fn plant(&self, plants: Plants) -> Planted {
        // The full path, or the name inside the state directory, but for
        // `state.json`, which many messages name for other reasons.
        let in_state = |name: &str| {
            let mut needles = vec![format!("{STATE}/{name}")];
            if name != "state.json" {
                needles.push(name.to_string());
            }
            needles
        };
        let mut needles = Vec::new();
        match plants {
            Plants::Survivable => {
                self.as_agent(&format!(
                    "cd {STATE}
                     ln -sfn /root/canary-lock agent.lock
                     ln -sfn /root/canary-tmp .state.json.tmp
                     ln -sfn /root/canary-marker upgrade-in-progress
                     ln -sfn {FERRY_DIR}/canary last-stop.json
                     : > 'hostile-new\nline'
                     d=hostile-deep; i=0
                     while [ $i -lt 200 ]; do d=$d/d; i=$((i + 1)); done
                     mkdir -p $d && echo deep > $d/leaf
                     cd {LOG_DIR}
                     if [ -f upgrades.log ] && [ ! -L upgrades.log ]; then mv upgrades.log upgrades.log.hostile-saved; fi
                     ln -sfn /etc/shadow upgrades.log"
                ));
                for name in [
                    "agent.lock",
                    ".state.json.tmp",
                    "upgrade-in-progress",
                    "last-stop.json",
                    "hostile-new",
                    "hostile-deep",
                ] {
                    needles.extend(in_state(name));
                }
                // Not the log: every failure's advice names it.
            }
            Plants::StateJsonSymlink => {
                self.as_agent(&format!(
                    "cd {STATE}
                     mv state.json hostile-saved-state.json
                     ln -s {STATE_CANARY} state.json"
                ));
                needles.extend(in_state("state.json"));
            }
            Plants::Fifo => {
                self.as_agent(&format!("mkfifo {STATE}/hostile-fifo"));
                needles.extend(in_state("hostile-fifo"));
            }
            Plants::Sparse => {
                // More than the free space (twice it when 100 GiB is not):
                // a copy must never be able to fill the disk.
                let free: u64 = self
                    .host
                    .sh_ok(&format!("df --output=avail -B1 {STATE} | tail -n 1"))
                    .trim()
                    .parse()
                    .expect("free bytes");
                let size = if free < 100 << 30 {
                    100 << 30
                } else {
                    2 * free
                };
                self.as_agent(&format!("truncate -s {size} {STATE}/hostile-sparse"));
                needles.extend(in_state("hostile-sparse"));
            }
            Plants::Race => {
                // The directory holds an empty file or directory for every
                // name under /root, so that whichever of the two a path
                // resolves through when root opens it, the open succeeds.
                // Before it in the walk, 2000 small files of the agent's:
                // copying them takes long enough for the swapper to run
                // between the walk that lists the race's files and the
                // threads that open them.
                let listing = self
                    .host
                    .sh_ok("cd /root && find . -mindepth 1 -printf '%y %P\\n'");
                let mut mirror = format!(
                    "cd {STATE}
                     mkdir hostile-bulk hostile-race
                     i=0; while [ $i -lt 2000 ]; do echo \"agent's own file $i\" > hostile-bulk/$i; i=$((i + 1)); done
                     ln -s /root hostile-race.swap
                     cd hostile-race\n"
                );
                for line in listing.lines() {
                    match line.split_once(' ') {
                        Some(("d", name)) => mirror += &format!("mkdir -p {}\n", shell_quote(name)),
                        Some(("f", name)) => mirror += &format!(": > {}\n", shell_quote(name)),
                        _ => {}
                    }
                }
                self.as_agent(&mirror);
                self.host.sh_ok(&format!(
                    "rm -f {RACE_PID}
                     setsid --fork sh -c 'echo $$ > {RACE_PID}; exec setpriv --reuid={USER} --regid={USER} --init-groups perl {RACE_SCRIPT}' </dev/null >/dev/null 2>&1
                     while [ ! -s {RACE_PID} ]; do sleep 0.01; done
                     sleep 0.2
                     kill -0 $(cat {RACE_PID})"
                ));
                needles.extend(in_state("hostile-race"));
            }
        }
        Planted {
            needles,
            race: plants == Plants::Race,
        }
    }

    /// Stops the race's process (by its PID) and waits until it is gone.
    pub(crate) fn stop_race(&self, planted: &Planted) {
        if planted.race {
            self.host.sh_ok(&format!(
                "pid=$(cat {RACE_PID}); kill $pid
                 while kill -0 $pid 2>/dev/null; do sleep 0.02; done
                 rm -f {RACE_PID}"
            ));
        }
    }

    /// Removes whatever a plant left, as root, never following a link; puts
    /// back the agent's state file and the upgrade log the plants moved.
    pub(crate) fn unplant(&self) {
        self.host.sh_ok(&format!(
            "cd {STATE}
             for f in agent.lock .state.json.tmp upgrade-in-progress last-stop.json state.json; do
                 if [ -L \"$f\" ]; then rm -f \"$f\"; fi
             done
             if [ -e hostile-saved-state.json ] && [ ! -e state.json ]; then mv hostile-saved-state.json state.json; fi
             rm -rf hostile-*
             cd {LOG_DIR}
             if [ -L upgrades.log ]; then rm -f upgrades.log; fi
             if [ -e upgrades.log.hostile-saved ]; then
                 if [ -f upgrades.log ]; then cat upgrades.log >> upgrades.log.hostile-saved; fi
                 mv -f upgrades.log.hostile-saved upgrades.log
             fi"
        ));
    }

    /// A path exists, a symlink counting as itself (the state and ferry
    /// directories are root's or the agent's, never links).
    pub(crate) fn lexists(&self, guest: &str) -> bool {
        std::fs::symlink_metadata(self.host.root().join(guest.trim_start_matches('/'))).is_ok()
    }

    /// The installed version and whether the package manager finished with
    /// it (dpkg's `installed`; rpm has no such state).
    pub(crate) fn installed(&self) -> (String, bool) {
        match self.kind {
            HostKind::Debian => {
                let out = self
                    .host
                    .sh("dpkg-query -W -f '${Version} ${db:Status-Status}' roboconf-agent");
                let (version, status) = out.stdout.split_once(' ').unwrap_or_default();
                let version = version.rsplit_once('-').map_or(version, |(v, _)| v);
                (version.to_string(), status == "installed")
            }
            HostKind::Rpm => {
                let out = self.host.sh("rpm -q --qf '%{VERSION}' roboconf-agent");
                (out.stdout.trim().to_string(), out.success())
            }
        }
    }

    /// Installed and finished, no marker, no upgrade record.
    pub(crate) fn healthy(&self) -> bool {
        self.installed().1 && !self.lexists(MARKER) && !self.lexists(RECORD)
    }

    /// Installs `v` without plants (a downgrade, an upgrade, a reinstall, or
    /// the way out of a failed step).
    pub(crate) fn install_clean(&self, v: Version) {
        let (installed, _) = self.installed();
        let extra = match self.kind {
            HostKind::Debian if installed == v.semver => "--reinstall",
            HostKind::Debian => "--allow-downgrades",
            HostKind::Rpm if installed == v.semver => "reinstall",
            HostKind::Rpm if installed.as_str() > v.semver => "downgrade",
            HostKind::Rpm => "install",
        };
        let out = install(&self.host, &v.package(self.kind), extra);
        assert!(
            out.success() && self.healthy() && self.installed().0 == v.semver,
            "installing {} (from {installed}) to set the case up: {out}",
            v.semver
        );
    }

    pub(crate) fn start_agent(&self) {
        self.host.sh_ok(&format!(
            "systemctl reset-failed {AGENT} || true; systemctl start {AGENT}"
        ));
        wait_answering(&self.host);
    }

    /// `v` installed and healthy, the agent running or stopped.
    pub(crate) fn ready(&self, v: Version, running: bool) {
        if !self.healthy() || self.installed().0 != v.semver {
            self.install_clean(v);
        }
        if running {
            self.start_agent();
            assert_eq!(version_running(&self.host), v.semver);
        } else {
            self.host.sh_ok(&format!("systemctl stop {AGENT}"));
        }
    }

    /// After a case: a healthy package (`previous` installed again if the
    /// step left it unfinished), the agent running with the tree of setup.
    pub(crate) fn settle(&self, previous: Version) {
        if !self.healthy() {
            self.install_clean(previous);
        }
        self.start_agent();
        assert_eq!(version_running(&self.host), self.installed().0);
        assert_eq!(sorted_tree(&self.host), self.tree, "the tree of setup");
        assert_eq!(
            self.host
                .read(&format!("{STATE}/work/vm/app/made-by-recipe")),
            "deployed\n"
        );
    }

    /// Runs `command` under `timeout` in the host; how long it took.
    pub(crate) fn timed(&self, command: &str) -> (Output, Duration) {
        let began = Instant::now();
        let out = self
            .host
            .sh(&format!("timeout -k 10 {STEP_TIMEOUT_SECS} {command}"));
        (out, began.elapsed())
    }

    /// Where the upgrade log is before a step: its inode and length, if it
    /// is a file.
    pub(crate) fn log_mark(&self) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        let log = self.host.root().join(UPGRADE_LOG.trim_start_matches('/'));
        std::fs::symlink_metadata(log)
            .ok()
            .filter(|m| m.is_file())
            .map(|m| (m.ino(), m.len()))
    }

    /// What the step said: its output, and what the upgrade log gained
    /// since `mark` if it is still a file (all of it if it is another file:
    /// the plant moved the real one aside).
    pub(crate) fn said(&self, out: &Output, mark: Option<(u64, u64)>) -> String {
        let mut said = format!("{}\n{}", out.stdout, out.stderr);
        let from = match (mark, self.log_mark()) {
            (_, None) => return said,
            (Some((ino, len)), Some((now, _))) if ino == now => len as usize,
            _ => 0,
        };
        let log = std::fs::read(self.host.root().join(UPGRADE_LOG.trim_start_matches('/')))
            .unwrap_or_default();
        said.push_str(&String::from_utf8_lossy(
            log.get(from..).unwrap_or_default(),
        ));
        said
    }

    /// No snapshot and no directory of the agent holds a canary's text; no
    /// regular file in a snapshot has the content of a file outside the
    /// state directory.
    pub(crate) fn snapshot_findings(&self) -> Vec<String> {
        let mut findings = Vec::new();
        let patterns: Vec<String> = self
            .canaries
            .iter()
            .filter_map(|c| c.unique.as_ref())
            .map(|u| format!("-e {u}"))
            .collect();
        // -D skip: never open a FIFO; the sparse file is never read.
        let found = self.host.sh(&format!(
            "grep -rlF -D skip --exclude=hostile-sparse {} {SNAPSHOTS} {STATE} {LOG_DIR} 2>/dev/null || true",
            patterns.join(" ")
        ));
        for file in found.stdout.lines() {
            findings.push(format!(
                "{file} holds a canary's text: root copied a root-only file for the agent's user"
            ));
        }
        let hashes = |script: &str| -> BTreeMap<String, String> {
            self.host
                .sh(&format!("{script} 2>/dev/null || true"))
                .stdout
                .lines()
                .filter_map(|l| l.split_once("  "))
                .map(|(h, p)| (h.to_string(), p.to_string()))
                .collect()
        };
        let outside = hashes(&format!(
            "find /root /etc/shadow /etc/gshadow {FERRY_DIR}/canary -xdev -type f -size +0 -exec sha256sum {{}} +"
        ));
        let copies = hashes(&format!(
            "[ ! -d {SNAPSHOTS} ] || find {SNAPSHOTS} -path '*/data/*' -type f -size +0 ! -name hostile-sparse -exec sha256sum {{}} +"
        ));
        for (hash, copy) in &copies {
            if let Some(original) = outside.get(hash) {
                findings.push(format!(
                    "{copy} in a snapshot is a copy of {original}, outside the state directory"
                ));
            }
        }
        findings
    }
}
