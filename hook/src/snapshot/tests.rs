//! Tests of snapshots: exact round trips, damage refused, hostile trees
//! refused by name, pruning.

use super::*;
use crate::package::MARKER;
use std::fs;
use std::os::unix::fs::symlink;

pub(super) fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ferry-hook-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

pub(super) fn label() -> Label {
    Label {
        package: "agent".into(),
        version: "1.0.0".into(),
        schema: Some(2),
        reason: "test".into(),
    }
}

pub(super) fn sample_state(dir: &Path) {
    fs::create_dir_all(dir.join("work/vm1/app")).unwrap();
    fs::write(dir.join("state.json"), "{\"schema\":2}\n").unwrap();
    fs::write(dir.join("work/vm1/app/out.log"), vec![7u8; 300_000]).unwrap();
    fs::write(dir.join(MARKER), "x").unwrap();
    symlink("state.json", dir.join("link")).unwrap();
}

/// A scratch directory, a sample state in it, and a snapshot of that
/// (without the marker).
pub(super) fn sample_and_snapshot(name: &str) -> (PathBuf, PathBuf, Snapshot) {
    let base = scratch(name);
    let state = base.join("state");
    sample_state(&state);
    let exclude = [MARKER];
    let snapshot = create(&state, &base.join("snaps"), &label(), &exclude).unwrap();
    (base, state, snapshot)
}

#[test]
fn snapshot_restores_exactly_and_excludes_the_marker() {
    let base = scratch("roundtrip");
    let state = base.join("state");
    sample_state(&state);
    let snap = create(&state, &base.join("snaps"), &label(), &[MARKER]).unwrap();
    assert!(!snap.path.join(DATA).join(MARKER).exists());
    fs::write(state.join("state.json"), "changed").unwrap();
    fs::remove_dir_all(state.join("work")).unwrap();
    let m = restore(&snap.path, &state).unwrap();
    assert_eq!(m.schema, Some(2));
    assert_eq!(
        fs::read_to_string(state.join("state.json")).unwrap(),
        "{\"schema\":2}\n"
    );
    assert_eq!(
        fs::read(state.join("work/vm1/app/out.log")).unwrap().len(),
        300_000
    );
    assert_eq!(
        fs::read_link(state.join("link")).unwrap(),
        Path::new("state.json")
    );
    let recorded = m.entries.iter().find_map(|e| match e {
        Entry::File { path, digest, .. } if path == "state.json" => Some(digest.clone()),
        _ => None,
    });
    let blake3 = blake3::hash(b"{\"schema\":2}\n").to_hex().to_string();
    assert_eq!((m.checksum, recorded), (Checksum::Blake3, Some(blake3)));
    fs::remove_dir_all(&base).unwrap();
}

/// Rewrites the manifest of `snapshot` as format 1 wrote it: SHA-256
/// digests in a field named `sha256`, no `checksum` field.
pub(super) fn as_format_1(snapshot: &Path) {
    let mut manifest = read_manifest(snapshot).unwrap();
    let data = Dir::open_trusted(&snapshot.join(DATA)).unwrap();
    manifest.entries = scan(&data, Checksum::Sha256).unwrap();
    let mut json = serde_json::to_value(&manifest).unwrap();
    json["format_version"] = 1.into();
    json.as_object_mut().unwrap().remove("checksum");
    for entry in json["entries"].as_array_mut().unwrap() {
        let entry = entry.as_object_mut().unwrap();
        if let Some(digest) = entry.remove("digest") {
            entry.insert("sha256".into(), digest);
        }
    }
    fs::write(snapshot.join(MANIFEST), json.to_string()).unwrap();
}

#[test]
fn format_1_snapshots_are_verified_and_restored() {
    let (base, state, snap) = sample_and_snapshot("format-1");
    as_format_1(&snap.path);
    assert_eq!(verify(&snap.path).unwrap().checksum, Checksum::Sha256);
    fs::write(state.join("state.json"), "changed").unwrap();
    restore(&snap.path, &state).unwrap();
    assert_eq!(
        fs::read_to_string(state.join("state.json")).unwrap(),
        "{\"schema\":2}\n"
    );
    fs::write(snap.path.join(DATA).join("state.json"), "{\"schema\":3}\n").unwrap();
    let err = format!("{:#}", verify(&snap.path).unwrap_err());
    assert!(err.contains("state.json was changed"), "{err}");
    fs::remove_dir_all(&base).unwrap();
}

#[test]
fn damaged_snapshot_is_refused_and_state_untouched() {
    let (base, state, snap) = sample_and_snapshot("damaged");
    fs::write(snap.path.join(DATA).join("state.json"), "{\"schema\":3}\n").unwrap();
    fs::write(state.join("state.json"), "current").unwrap();
    let err = format!("{:#}", restore(&snap.path, &state).unwrap_err());
    assert!(
        err.contains("damaged") && err.contains("state.json was changed"),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(state.join("state.json")).unwrap(),
        "current"
    );
    let listed = list(&base.join("snaps")).unwrap();
    assert!(listed[0].verified.is_err());
    fs::remove_dir_all(&base).unwrap();
}

/// Every entry under `dir` with its kind, mode, owner, time and
/// content (a symlink's target), by relative path.
fn listing(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let path = e.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let content = if meta.is_dir() {
                stack.push(path.clone());
                String::new()
            } else if meta.file_type().is_symlink() {
                fs::read_link(&path).unwrap().display().to_string()
            } else {
                blake3::hash(&fs::read(&path).unwrap()).to_hex().to_string()
            };
            use std::os::unix::fs::MetadataExt;
            let mtime = if meta.is_dir() { 0 } else { meta.mtime() };
            let rel = path.strip_prefix(dir).unwrap().display().to_string();
            let what = format!(
                "{:o} {}:{} {mtime} {content}",
                meta.mode(),
                meta.uid(),
                meta.gid()
            );
            out.push((rel, what));
        }
    }
    out.sort();
    out
}

#[test]
fn round_trip_keeps_modes_owners_times_and_contents() {
    let base = scratch("exact");
    let state = base.join("state");
    sample_state(&state);
    fs::remove_file(state.join(MARKER)).unwrap();
    let odd = state.join("work/vm1/app/out.log");
    std::os::unix::fs::chown(&odd, Some(65534), Some(65534)).unwrap();
    fs::set_permissions(&odd, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
    fs::set_permissions(
        state.join("work/vm1"),
        std::os::unix::fs::PermissionsExt::from_mode(0o710),
    )
    .unwrap();
    std::os::unix::fs::lchown(state.join("link"), Some(65534), Some(65534)).unwrap();
    let before = listing(&state);
    let snap = create(&state, &base.join("snaps"), &label(), &[]).unwrap();
    fs::remove_dir_all(&state).unwrap();
    fs::create_dir(&state).unwrap();
    restore(&snap.path, &state).unwrap();
    assert_eq!(listing(&state), before);
    fs::remove_dir_all(&base).unwrap();
}

/// A FIFO, a sparse file and a hard link to someone else's file make a
/// snapshot refuse, naming them, at once; the state is not changed.
#[test]
fn hostile_objects_are_refused_by_name() {
    let base = scratch("hostile");
    let state = base.join("state");
    type Plant<'a> = &'a dyn Fn(&Path);
    let cases: [(&str, Plant); 3] = [
        ("a FIFO", &|p| {
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: a valid NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        }),
        ("a sparse file", &|p| {
            fs::File::create(p).unwrap().set_len(100 << 30).unwrap();
        }),
        ("a hard link to a file owned by uid 0", &|p| {
            fs::hard_link(base.join("root-only"), p).unwrap();
        }),
    ];
    fs::write(base.join("root-only"), "secret").unwrap();
    for (what, plant) in cases {
        let _ = fs::remove_dir_all(&state);
        sample_state(&state);
        // The state's owner is the agent's user, here nobody.
        std::os::unix::fs::chown(&state, Some(65534), Some(65534)).unwrap();
        let planted = state.join("work/vm1/planted");
        plant(&planted);
        let started = std::time::Instant::now();
        let err = format!(
            "{:#}",
            create(&state, &base.join("snaps"), &label(), &[MARKER]).unwrap_err()
        );
        assert!(
            err.contains(&format!("{planted:?}")) && err.contains(what.split(' ').nth(1).unwrap()),
            "{what}: {err}"
        );
        assert!(
            started.elapsed().as_secs() < 5,
            "{what} took {:?}",
            started.elapsed()
        );
        assert!(names(&base.join("snaps")).unwrap().is_empty());
    }
    fs::remove_dir_all(&base).unwrap();
}

/// Symlinks are copied as symlinks; a directory swapped for a symlink
/// to somewhere else while snapshots are taken is never entered: each
/// snapshot is refused naming it, or holds the link itself.
#[test]
fn symlinks_are_copied_never_followed_even_in_a_race() {
    let base = scratch("links");
    let (state, outside) = (base.join("state"), base.join("outside"));
    fs::create_dir_all(&outside).unwrap();
    fs::write(outside.join("canary"), "CANARY-CONTENT").unwrap();
    sample_state(&state);
    symlink(outside.join("canary"), state.join("state.json.tmp")).unwrap();
    let snap = create(&state, &base.join("snaps"), &label(), &[MARKER]).unwrap();
    let copied = snap.path.join(DATA).join("state.json.tmp");
    assert_eq!(fs::read_link(&copied).unwrap(), outside.join("canary"));
    let stop = std::sync::atomic::AtomicBool::new(false);
    let swapped = state.join("work/vm1/app");
    std::thread::scope(|s| {
        s.spawn(|| {
            let aside = state.join("work/vm1/aside");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                fs::rename(&swapped, &aside).unwrap();
                symlink(&outside, &swapped).unwrap();
                fs::remove_file(&swapped).unwrap();
                fs::rename(&aside, &swapped).unwrap();
            }
        });
        for _ in 0..50 {
            match create(&state, &base.join("snaps"), &label(), &[MARKER]) {
                Ok(snap) => remove_if_present(&snap.path).unwrap(),
                Err(e) => {
                    let err = format!("{e:#}");
                    assert!(err.contains("work/vm1"), "{err}");
                }
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let found = std::process::Command::new("grep")
        .args(["-r", "CANARY-CONTENT"])
        .arg(base.join("snaps"))
        .output()
        .unwrap();
    assert!(
        found.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&found.stdout)
    );
    fs::remove_dir_all(&base).unwrap();
}

#[test]
fn prune_keeps_the_newest_and_the_protected() {
    let base = scratch("prune");
    for n in [
        "100-1.0.0",
        "200-1.1.0",
        "300-1.2.0",
        "1000-2.0.0",
        ".partial-5-x",
    ] {
        fs::create_dir_all(base.join(n)).unwrap();
    }
    let removed = prune(&base, 2, Some("100-1.0.0")).unwrap();
    assert_eq!(removed, vec!["200-1.1.0"]);
    assert_eq!(
        names(&base).unwrap(),
        vec!["100-1.0.0", "300-1.2.0", "1000-2.0.0"]
    );
    fs::remove_dir_all(&base).unwrap();
}

/// `retake_moving`: the live names are the earlier snapshot's, as it held
/// them (the state's later writes to them are not read), the rest is read
/// from the state; a live name the earlier snapshot lacks is read too. The
/// result verifies and restores; the earlier one is left without them.
#[test]
fn a_retake_moves_the_live_data_from_the_earlier_snapshot_and_reads_the_rest() {
    let (base, state, early) = sample_and_snapshot("moving");
    fs::write(state.join("state.json"), "{\"schema\":2,\"queue\":[1]}\n").unwrap();
    fs::write(state.join("work/vm1/app/out.log"), b"written after").unwrap();
    fs::create_dir_all(state.join("spawn")).unwrap();
    fs::write(state.join("spawn/app.pid"), "42\n").unwrap();
    let live = ["work", "spawn"];
    let snap = retake_moving(&early.path, &state, "after the stop", &[MARKER], &live).unwrap();
    let m = verify(&snap.path).unwrap();
    assert_eq!(m.reason, "after the stop");
    let data = snap.path.join(DATA);
    assert_eq!(
        fs::read_to_string(data.join("state.json")).unwrap(),
        "{\"schema\":2,\"queue\":[1]}\n"
    );
    assert_eq!(
        fs::read(data.join("work/vm1/app/out.log")).unwrap(),
        vec![7u8; 300_000],
        "moved as the earlier snapshot held it"
    );
    assert_eq!(
        fs::read_to_string(data.join("spawn/app.pid")).unwrap(),
        "42\n"
    );
    assert!(!data.join(MARKER).exists());
    let paths: Vec<&str> = m.entries.iter().map(Entry::path).collect();
    for p in [
        "state.json",
        "link",
        "work",
        "work/vm1/app/out.log",
        "spawn/app.pid",
    ] {
        assert_eq!(
            paths.iter().filter(|x| **x == p).count(),
            1,
            "{p}: {paths:?}"
        );
    }
    assert!(!early.path.join(DATA).join("work").exists());
    restore(&snap.path, &state).unwrap();
    assert_eq!(
        fs::read(state.join("work/vm1/app/out.log")).unwrap().len(),
        300_000
    );
    fs::remove_dir_all(&base).unwrap();
}
