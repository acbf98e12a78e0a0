//! `ferry publish` and `ferry promote` against the real clients: apt-get and
//! dnf read the repositories with signature checking on, from alternate roots
//! and configuration on this machine (nothing is booted).
//!
//! Needs (ci/apt-packages.publish): dpkg-dev, apt, gnupg, rpm, dnf,
//! createrepo-c. Runs as root.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use ferry::repo::{promote, publish, PromoteArgs, PublishArgs, PUBLIC_KEY_FILE};

#[path = "publish/fixtures.rs"]
mod fixtures;
use fixtures::*;

/// Retention keeps the newest N plus kept versions; apt and dnf, checking
/// signatures, install the newest and fetch the older kept one; the pruned
/// version is gone from both indices and pools.
#[test]
fn clients_get_newest_and_kept_versions_and_retention_prunes_the_rest() {
    let scratch = Scratch::new("retention");
    let repo = scratch.path("repo");
    let mut first = publish_args(&repo, "candidate", build_pair(&scratch.0, "1.0.0", "a"));
    first.keep_versions = vec!["1.0.0".to_string()];
    publish(&first).unwrap();
    for version in ["1.1.0", "1.2.0", "1.3.0"] {
        let mut args = publish_args(&repo, "candidate", build_pair(&scratch.0, version, "a"));
        args.keep = 2;
        let report = publish(&args).unwrap();
        assert!(report.to_string().contains("published"), "{report}");
    }
    for version in ["1.3.0", "1.2.0", "1.0.0"] {
        assert!(
            pool_deb(&repo, version).is_file() && pool_rpm(&repo, version).is_file(),
            "{version} kept"
        );
    }
    assert!(
        !pool_deb(&repo, "1.1.0").exists() && !pool_rpm(&repo, "1.1.0").exists(),
        "1.1.0 pruned"
    );

    let signature = run(Command::new("rpm")
        .args(["-qp", "--qf", "%{RSAHEADER:pgpsig}"])
        .arg(pool_rpm(&repo, "1.3.0")));
    let short_id = &key().fingerprint[24..].to_lowercase();
    assert!(
        String::from_utf8_lossy(&signature.stdout).contains(short_id.as_str()),
        "pool rpm not signed by the repository key"
    );

    let release = fs::read_to_string(repo.join("apt/dists/candidate/Release")).unwrap();
    for field in [
        "Suite: candidate",
        "Codename: candidate",
        "Components: main",
        "Architectures: amd64",
        "Origin: ferry-ferry-probe-",
    ] {
        assert!(release.contains(field), "Release lacks {field}:\n{release}");
    }

    let apt = Apt::new(scratch.path("apt"), &repo, "candidate");
    apt.update_ok();
    assert_eq!(
        apt.download("1.3.0").unwrap(),
        fs::read(pool_deb(&repo, "1.3.0")).unwrap()
    );
    assert_eq!(
        apt.download("1.0.0").unwrap(),
        fs::read(pool_deb(&repo, "1.0.0")).unwrap()
    );
    assert!(
        apt.download("1.1.0").is_err(),
        "a pruned version is not offered by apt"
    );

    let dnf = Dnf::new(scratch.path("dnf"), &repo, "candidate");
    dnf.makecache_ok();
    assert_eq!(dnf.install_newest(), format!("{PACKAGE}-1.3.0-1.x86_64"));
    assert_eq!(
        dnf.download("1.0.0").unwrap(),
        fs::read(pool_rpm(&repo, "1.0.0")).unwrap()
    );
    assert!(
        dnf.download("1.1.0").is_err(),
        "a pruned version is not offered by dnf"
    );
}

/// A Release/InRelease or repomd.xml changed after signing is refused by
/// apt-get update (fresh lists, --error-on=any) and by dnf makecache.
#[test]
fn tampered_indices_are_rejected() {
    let scratch = Scratch::new("tamper");
    let repo = scratch.path("repo");
    publish(&publish_args(
        &repo,
        "stable",
        build_pair(&scratch.0, "2.0.0", "t"),
    ))
    .unwrap();
    assert_clients_read(&scratch, &repo, "stable", "2.0.0");

    let dist = fs::canonicalize(repo.join("apt/dists/stable")).unwrap();
    let in_release = fs::read_to_string(dist.join("InRelease")).unwrap();
    fs::write(
        dist.join("InRelease"),
        in_release.replace("Label: ", "Label: evil "),
    )
    .unwrap();
    let apt = Apt::new(scratch.path("apt-inrelease"), &repo, "stable");
    let update = apt.update();
    assert!(
        !update.status.success() && text(&update).contains("BADSIG"),
        "tampered InRelease accepted, or refused for another reason:\n{}",
        text(&update)
    );

    fs::remove_file(dist.join("InRelease")).unwrap();
    let release = fs::read_to_string(dist.join("Release")).unwrap();
    fs::write(
        dist.join("Release"),
        release.replace("Label: ", "Label: evil "),
    )
    .unwrap();
    let apt = Apt::new(scratch.path("apt-release"), &repo, "stable");
    let update = apt.update();
    assert!(
        !update.status.success() && text(&update).contains("BADSIG"),
        "tampered Release accepted, or refused for another reason:\n{}",
        text(&update)
    );

    let repomd = fs::canonicalize(repo.join("rpm/stable/repodata/repomd.xml")).unwrap();
    let xml = fs::read_to_string(&repomd).unwrap();
    fs::write(&repomd, xml.replacen("<revision>", "<revision>1", 1)).unwrap();
    let dnf = Dnf::new(scratch.path("dnf"), &repo, "stable");
    let cache = dnf.makecache();
    assert!(
        !cache.status.success() && text(&cache).contains("signature"),
        "tampered repomd.xml accepted, or refused for another reason:\n{}",
        text(&cache)
    );
}

/// Same content again is a no-op; different content under a published
/// version is refused, for deb and rpm, and changes nothing.
#[test]
fn a_published_version_is_immutable() {
    let scratch = Scratch::new("immutable");
    let repo = scratch.path("repo");
    let packages = build_pair(&scratch.0, "3.0.0", "one");
    publish(&publish_args(&repo, "candidate", packages.clone())).unwrap();
    let before = snapshot(&repo);

    let again = publish(&publish_args(&repo, "candidate", packages)).unwrap();
    assert_eq!(again.generation, None, "{again}");
    assert_eq!(again.unchanged.len(), 2);
    assert_eq!(
        snapshot(&repo),
        before,
        "an idempotent publish changed the repository"
    );

    for other in build_pair(&scratch.0, "3.0.0", "two") {
        let error = publish(&publish_args(&repo, "candidate", vec![other])).unwrap_err();
        assert!(format!("{error:#}").contains("immutable"), "{error:#}");
        assert_eq!(
            snapshot(&repo),
            before,
            "a refused publish changed the repository"
        );
    }
}

/// A second package joins the repository (ferry's own package beside its
/// agent, docs/FLEET.md): both are in the channel, each with its own
/// retention.
#[test]
fn a_second_package_joins_the_repository_with_its_own_retention() {
    let scratch = Scratch::new("two-packages");
    let repo = scratch.path("repo");
    let mut args = publish_args(&repo, "candidate", build_pair(&scratch.0, "1.0.0", "r"));
    args.keep = 1;
    publish(&args).unwrap();
    for version in ["1.0.0", "1.1.0"] {
        let mut other = publish_args(
            &repo,
            "candidate",
            vec![build_deb_named(
                &scratch.0,
                "other-agent",
                version,
                "amd64",
                "r",
            )],
        );
        other.keep = 1;
        publish(&other).unwrap();
    }
    let packages =
        fs::read_to_string(repo.join("apt/dists/candidate/main/binary-amd64/Packages")).unwrap();
    let mut entries: Vec<(String, String)> = Vec::new();
    for stanza in packages.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(str::to_string)
        };
        if let (Some(p), Some(v)) = (field("Package: "), field("Version: ")) {
            entries.push((p, v));
        }
    }
    entries.sort();
    assert_eq!(
        entries.len(),
        2,
        "one version of each package (keep 1): {entries:?}"
    );
    assert!(
        entries.contains(&("other-agent".to_string(), "1.1.0-1".to_string())),
        "{entries:?}"
    );
}

/// Each refusal says what is wrong and leaves the directory as it was.
#[test]
fn refusals_are_clear_and_change_nothing() {
    let scratch = Scratch::new("refusals");
    let repo = scratch.path("repo");

    let mut unsigned = publish_args(&repo, "candidate", build_pair(&scratch.0, "1.0.0", "r"));
    unsigned.signing.keys = Vec::new();
    let error = publish(&unsigned).unwrap_err();
    assert!(format!("{error:#}").contains("unsigned"), "{error:#}");
    let mut unknown = publish_args(&repo, "candidate", build_pair(&scratch.0, "1.0.0", "r"));
    unknown.signing.keys = vec!["0123456789ABCDEF0123456789ABCDEF01234567".to_string()];
    let error = publish(&unknown).unwrap_err();
    assert!(
        format!("{error:#}").contains("not a secret key"),
        "{error:#}"
    );
    assert!(
        !repo.exists(),
        "a refused first publish created the repository"
    );

    publish(&publish_args(
        &repo,
        "candidate",
        build_pair(&scratch.0, "1.0.0", "r"),
    ))
    .unwrap();
    let before = snapshot(&repo);
    let refused: Vec<(PublishArgs, &str)> = vec![
        (
            publish_args(
                &repo,
                "candidate",
                vec![build_deb(&scratch.0, "1.1.0", "arm64", "r")],
            ),
            "architecture arm64",
        ),
        (
            publish_args(
                &repo,
                "candidate",
                vec![build_rpm(&scratch.0, "1.1.0", "aarch64", "r")],
            ),
            "architecture aarch64",
        ),
        (
            publish_args(&repo, "bad/channel", build_pair(&scratch.0, "1.1.0", "r")),
            "channel name",
        ),
        (
            PublishArgs {
                keep_versions: vec!["9.9.9".to_string()],
                ..publish_args(&repo, "candidate", build_pair(&scratch.0, "1.1.0", "r"))
            },
            "--keep-version 9.9.9",
        ),
    ];
    for (args, expected) in refused {
        let error = publish(&args).unwrap_err();
        assert!(
            format!("{error:#}").contains(expected),
            "expected {expected:?} in: {error:#}"
        );
        assert_eq!(
            snapshot(&repo),
            before,
            "refused ({expected}) but changed the repository"
        );
    }

    let in_release = fs::canonicalize(repo.join("apt/dists/candidate/InRelease")).unwrap();
    fs::rename(&in_release, scratch.path("InRelease")).unwrap();
    let error = publish(&publish_args(
        &repo,
        "candidate",
        build_pair(&scratch.0, "1.1.0", "r"),
    ))
    .unwrap_err();
    assert!(format!("{error:#}").contains("broken state"), "{error:#}");
    fs::rename(scratch.path("InRelease"), &in_release).unwrap();
    assert_eq!(snapshot(&repo), before);

    fs::remove_file(pool_rpm(&repo, "1.0.0")).unwrap();
    let broken = snapshot(&repo);
    let error = publish(&publish_args(
        &repo,
        "candidate",
        build_pair(&scratch.0, "1.1.0", "r"),
    ))
    .unwrap_err();
    assert!(format!("{error:#}").contains("broken state"), "{error:#}");
    assert_eq!(snapshot(&repo), broken);

    fs::remove_file(repo.join("ferry-repo.json")).unwrap();
    fs::remove_file(repo.join(".ferry-lock")).unwrap();
    let error = publish(&publish_args(
        &repo,
        "candidate",
        build_pair(&scratch.0, "1.1.0", "r"),
    ))
    .unwrap_err();
    assert!(
        format!("{error:#}").contains("not a ferry repository"),
        "{error:#}"
    );
}

/// Promote puts the very bytes of the candidate into stable, and clients of
/// stable get exactly those bytes.
#[test]
fn promote_copies_the_exact_bytes() {
    let scratch = Scratch::new("promote");
    let repo = scratch.path("repo");
    publish(&publish_args(
        &repo,
        "candidate",
        build_pair(&scratch.0, "4.0.0", "p"),
    ))
    .unwrap();
    publish(&publish_args(
        &repo,
        "candidate",
        build_pair(&scratch.0, "4.1.0", "p"),
    ))
    .unwrap();
    let deb = fs::read(pool_deb(&repo, "4.0.0")).unwrap();
    let rpm = fs::read(pool_rpm(&repo, "4.0.0")).unwrap();

    let args = promote_to_stable(&repo, "4.0.0");
    let report = promote(&args).unwrap();
    assert_eq!(report.copied.len(), 2, "{report}");
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["copied"].as_array().map(Vec::len), Some(2), "{json}");
    assert_eq!(
        promote(&args).unwrap().generation,
        None,
        "promoting again changes nothing"
    );

    let apt = Apt::new(scratch.path("apt"), &repo, "stable");
    apt.update_ok();
    assert_eq!(apt.download("4.0.0").unwrap(), deb);
    assert!(
        apt.download("4.1.0").is_err(),
        "stable holds only what was promoted"
    );
    let dnf = Dnf::new(scratch.path("dnf"), &repo, "stable");
    dnf.makecache_ok();
    assert_eq!(dnf.download("4.0.0").unwrap(), rpm);

    let missing = PromoteArgs {
        version: "9.0.0".to_string(),
        package: None,
        ..args
    };
    let error = promote(&missing).unwrap_err();
    assert!(
        format!("{error:#}").contains("holds no version 9.0.0"),
        "{error:#}"
    );
}

/// A real publish process killed with SIGKILL at random instants leaves a
/// repository that apt and dnf still read, and the next publish completes.
#[test]
fn publish_killed_at_random_points_leaves_a_readable_repository() {
    let scratch = Scratch::new("crash");
    let repo = scratch.path("repo");
    // 5.0.0 is kept: completed rounds must not prune what the checks read.
    let mut first = publish_args(&repo, "candidate", build_pair(&scratch.0, "5.0.0", "c"));
    first.keep_versions = vec!["5.0.0".to_string()];
    publish(&first).unwrap();

    let started = Instant::now();
    let mut child = publish_process(&repo, build_pair(&scratch.0, "5.0.1", "c"));
    assert!(
        child.wait().unwrap().success(),
        "ferry publish works when not killed"
    );
    // The first run is the slowest (cold caches): kill within its first 60%
    // so that most rounds are cut short.
    let full = started.elapsed();

    let mut kills = Kills::new("publish_killed_at_random_points", full, full.mul_f64(0.6));
    // Rounds until four kills landed inside a publish, or sixteen rounds.
    for round in 0..16 {
        if kills.landed == 4 {
            break;
        }
        let version = format!("5.1.{round}");
        kills.kill_a_publish(
            round,
            &repo,
            build_pair(&scratch.0, &version, "c"),
            &version,
        );
        assert_clients_read(&scratch, &repo, "candidate", "5.0.0");
        fs::remove_dir_all(scratch.path("apt-check-5.0.0")).unwrap();
        fs::remove_dir_all(scratch.path("dnf-check-5.0.0")).unwrap();
    }
    kills.assert_landed("a publish");
    publish(&publish_args(
        &repo,
        "candidate",
        build_pair(&scratch.0, "5.2.0", "c"),
    ))
    .unwrap();
    assert_clients_read(&scratch, &repo, "candidate", "5.2.0");
}

/// A publish or promote killed between its commit point (`ferry-repo.json`
/// written) and the switch of the channel's symlinks is finished by the same
/// command run again, although it has nothing left to add. (The random kills
/// below hit that window only now and then.)
#[test]
fn a_change_killed_after_its_commit_is_finished_by_running_it_again() {
    let scratch = Scratch::new("killed-after-commit");
    let repo = scratch.path("repo");
    let packages = build_pair(&scratch.0, "7.0.0", "k");
    let args = publish_args(&repo, "candidate", packages);
    publish(&args).unwrap();
    // As a first publish killed there leaves it: no symlink yet.
    fs::remove_file(repo.join("apt/dists/candidate")).unwrap();
    fs::remove_file(repo.join("rpm/candidate")).unwrap();
    let report = publish(&args).unwrap();
    assert_eq!(report.unchanged.len(), 2, "{report}");
    assert_clients_read(&scratch, &repo, "candidate", "7.0.0");

    let promote_args = promote_to_stable(&repo, "7.0.0");
    promote(&promote_args).unwrap();
    fs::remove_file(repo.join("apt/dists/stable")).unwrap();
    fs::remove_file(repo.join("rpm/stable")).unwrap();
    let report = promote(&promote_args).unwrap();
    assert_eq!(report.unchanged.len(), 2, "{report}");
    fs::remove_dir_all(scratch.path("apt-check-7.0.0")).unwrap();
    fs::remove_dir_all(scratch.path("dnf-check-7.0.0")).unwrap();
    assert_clients_read(&scratch, &repo, "stable", "7.0.0");
}

/// A first publish killed at a random instant leaves either nothing usable
/// or a complete repository; publishing again then succeeds either way.
#[test]
fn first_publish_killed_can_be_done_again() {
    let scratch = Scratch::new("first-crash");
    // How long a first publish takes here, uninterrupted: kills are drawn
    // within it.
    let packages = build_pair(&scratch.0, "6.0.0", "full");
    let started = Instant::now();
    let mut child = publish_process(&scratch.path("repo-full"), packages);
    assert!(child.wait().unwrap().success(), "a first publish works");
    let full = started.elapsed();
    let mut kills = Kills::new("first_publish_killed", full, full);
    // Rounds until three kills landed inside a publish, or twelve rounds.
    for round in 0..12 {
        if kills.landed == 3 {
            break;
        }
        let repo = scratch.path(&format!("repo-{round}"));
        let packages = build_pair(&scratch.0, "6.0.0", &format!("f{round}"));
        kills.kill_a_publish(round, &repo, packages.clone(), "6.0.0");
        if let Err(e) = publish(&publish_args(&repo, "candidate", packages)) {
            panic!(
                "round {round} (seed {}): publishing again after the kill: {e:#}",
                kills.seed
            );
        }
        assert_clients_read(&scratch, &repo, "candidate", "6.0.0");
        fs::remove_dir_all(scratch.path("apt-check-6.0.0")).unwrap();
        fs::remove_dir_all(scratch.path("dnf-check-6.0.0")).unwrap();
    }
    kills.assert_landed("a first publish");
}

/// The kills of a random-kill test: its seed (printed; `FERRY_SEED`
/// replays it), how long a whole publish takes, the bound kills are drawn
/// within, and how many landed inside a publish.
struct Kills {
    seed: u64,
    random: u64,
    full: std::time::Duration,
    bound: std::time::Duration,
    landed: usize,
}

impl Kills {
    fn new(test: &str, full: std::time::Duration, bound: std::time::Duration) -> Kills {
        let seed = seed(test);
        Kills {
            seed,
            random: seed,
            full,
            bound,
            landed: 0,
        }
    }

    /// Publishes `packages` into `repo` and SIGKILLs ferry after a random
    /// delay within the bound. Nothing it started may be left running; a
    /// kill inside the publish of `version` counts as landed; one that came
    /// after it finished (the first, cold run is slower than the next)
    /// draws the later ones earlier.
    fn kill_a_publish(&mut self, round: usize, repo: &Path, packages: Vec<PathBuf>, version: &str) {
        self.random = self
            .random
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let delay = self
            .bound
            .mul_f64((self.random >> 11) as f64 / (1u64 << 53) as f64);
        let mut child = publish_process(repo, packages);
        std::thread::sleep(delay);
        let _ = child.kill();
        let status = child.wait().unwrap();
        let seed = self.seed;
        assert_eq!(
            left_running(repo),
            Vec::<String>::new(),
            "round {round} (seed {seed})"
        );
        let inside = killed_while_writing(status, repo, version);
        self.landed += usize::from(inside);
        if status.success() {
            self.bound = self.bound.mul_f64(0.7);
        }
        eprintln!(
            "round {round}: killed after {delay:?} of {:?}: {status}{}",
            self.full,
            if inside { ", inside the publish" } else { "" }
        );
    }

    /// Fails when no kill landed inside `what`: the test proved nothing.
    fn assert_landed(&self, what: &str) {
        assert!(
            self.landed > 0,
            "no kill landed inside {what} (seed {}): the test proved nothing",
            self.seed
        );
    }
}

/// The seed of a random-kill test: `FERRY_SEED` replays one, else the
/// clock picks it; printed either way, so a failure can be replayed.
fn seed(test: &str) -> u64 {
    let seed = std::env::var("FERRY_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("{test}: seed {seed} (FERRY_SEED={seed} replays it)");
    seed
}

/// Whether a kill landed inside the publish of `version`, where it can
/// break something: the process died of the signal (it had not finished),
/// after it began writing the version's files into the pool, before it
/// committed the version to `ferry-repo.json`.
fn killed_while_writing(status: std::process::ExitStatus, repo: &Path, version: &str) -> bool {
    use std::os::unix::process::ExitStatusExt;
    let committed = fs::read_to_string(repo.join(ferry::repo::STATE_FILE))
        .is_ok_and(|record| record.contains(&format!("/{version}")));
    let pool_files = ["apt/pool", "rpm/pool"].iter().any(|pool| {
        walkdir::WalkDir::new(repo.join(pool))
            .into_iter()
            .flatten()
            .any(|entry| {
                let name = entry.file_name().to_string_lossy();
                name.contains(&format!("_{version}")) || name.contains(&format!("-{version}"))
            })
    });
    status.signal() == Some(libc::SIGKILL) && pool_files && !committed
}

/// The real `ferry publish`, as a process a test can SIGKILL mid-publish.
fn publish_process(repo: &Path, packages: Vec<PathBuf>) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_ferry"))
        .arg("publish")
        .arg("--repo")
        .arg(repo)
        .args([
            "--channel",
            "candidate",
            "--key",
            &key().fingerprint,
            "--gnupghome",
        ])
        .arg(&key().home)
        .args(packages)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

/// Processes still running whose command line names `repo`: what a killed
/// publish left writing into it (gpg, rpmsign, createrepo_c). Children
/// that die with ferry are gone within milliseconds; an orphan signing a
/// package runs for tens of them, so the wait is short on purpose.
fn left_running(repo: &Path) -> Vec<String> {
    let repo = repo.display().to_string();
    let deadline = Instant::now() + std::time::Duration::from_millis(20);
    loop {
        let running: Vec<String> = fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                e.file_name()
                    .to_string_lossy()
                    .bytes()
                    .all(|b| b.is_ascii_digit())
            })
            .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| c.contains(&repo))
            .collect();
        if running.is_empty() || Instant::now() > deadline {
            return running;
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Rotating the signing key (docs/REPOSITORIES.md): keys sharing none with
/// the repository's are refused; published with OLD and NEW, every channel
/// (the one not published to as well) is re-signed by both, so clients
/// trusting either read it, and rpms are signed by the first key; with NEW
/// alone, clients trusting OLD alone are refused and clients trusting NEW
/// read every channel.
#[test]
fn a_key_rotation_signs_every_channel_with_both_keys_then_the_new_one() {
    let scratch = Scratch::new("rotation");
    let repo = scratch.path("repo");
    let (old, new) = (key(), second_key());
    let old_file = export_key(old, &scratch.path("old.asc"));
    let new_file = export_key(new, &scratch.path("new.asc"));
    let signed_by = |keys: &[&Key], version: &str| {
        let mut args = publish_args(&repo, "candidate", build_pair(&scratch.0, version, "k"));
        args.signing.keys = keys.iter().map(|k| k.fingerprint.clone()).collect();
        args
    };
    // Whether apt and dnf clients trusting `trusted` alone read `channel`.
    let readable = |channel: &str, trusted: &Path, tag: &str| {
        let apt = Apt::trusting(scratch.path(&format!("apt-{tag}")), &repo, channel, trusted);
        let dnf = Dnf::trusting(scratch.path(&format!("dnf-{tag}")), &repo, channel, trusted);
        (
            apt.update().status.success(),
            dnf.makecache().status.success(),
        )
    };
    let rpm_signer = |version: &str| {
        let out = run(Command::new("rpm")
            .args(["-qp", "--qf", "%{RSAHEADER:pgpsig}"])
            .arg(pool_rpm(&repo, version)));
        String::from_utf8_lossy(&out.stdout).to_uppercase()
    };

    publish(&signed_by(&[old], "1.0.0")).unwrap();
    promote(&promote_to_stable(&repo, "1.0.0")).unwrap();
    let before = snapshot(&repo);
    let error = publish(&signed_by(&[new], "1.1.0")).unwrap_err();
    assert!(
        format!("{error:#}").contains("--key OLD --key NEW"),
        "{error:#}"
    );
    assert_eq!(
        snapshot(&repo),
        before,
        "a refused publish changed the repository"
    );
    assert_eq!(readable("stable", &new_file, "refused"), (false, false));

    // Both keys: both channels readable by clients of either key.
    publish(&signed_by(&[old, new], "1.1.0")).unwrap();
    for channel in ["candidate", "stable"] {
        assert_eq!(
            readable(channel, &old_file, &format!("{channel}-old")),
            (true, true),
            "{channel}, OLD"
        );
        assert_eq!(
            readable(channel, &new_file, &format!("{channel}-new")),
            (true, true),
            "{channel}, NEW"
        );
    }
    assert!(
        rpm_signer("1.1.0").contains(&old.fingerprint[24..]),
        "rpms by the first key"
    );
    let public = fs::read_to_string(repo.join(PUBLIC_KEY_FILE)).unwrap();
    assert_eq!(public.matches("BEGIN PGP PUBLIC KEY BLOCK").count(), 1);
    let shown = run(Command::new("gpg")
        .args(["--batch", "--show-keys", "--with-colons"])
        .arg(repo.join(PUBLIC_KEY_FILE)));
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains(&old.fingerprint) && shown.contains(&new.fingerprint),
        "{shown}"
    );

    // NEW alone, defaulted to by the next publish.
    publish(&signed_by(&[new], "1.2.0")).unwrap();
    publish(&signed_by(&[], "1.3.0")).unwrap();
    for channel in ["candidate", "stable"] {
        assert_eq!(
            readable(channel, &old_file, &format!("{channel}-old2")),
            (false, false),
            "{channel}, OLD"
        );
        assert_eq!(
            readable(channel, &new_file, &format!("{channel}-new2")),
            (true, true),
            "{channel}, NEW"
        );
    }
    assert!(
        rpm_signer("1.3.0").contains(&new.fingerprint[24..]),
        "rpms by NEW"
    );
    let record = fs::read_to_string(repo.join("ferry-repo.json")).unwrap();
    assert!(
        record.contains(&format!("\"key\": \"{}\"", new.fingerprint))
            && !record.contains("also_signed_by"),
        "{record}"
    );
}
