//! Bakes the package version and the state schema this build writes into the
//! binary. ferry sets both when it builds a package, so that the packaged agent
//! reports the package's version and a package can be built that writes an
//! older schema (needed to test down-migrations on real upgrades).
use std::{env, fs, path::PathBuf};

fn main() {
    println!("cargo:rerun-if-env-changed=FERRY_VERSION");
    println!("cargo:rerun-if-env-changed=FERRY_STATE_SCHEMA");
    let version = env::var("FERRY_VERSION")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| env::var("CARGO_PKG_VERSION").expect("cargo sets CARGO_PKG_VERSION"));
    // The range check against the registry happens at compile time in
    // src/migrate.rs, where the newest schema is known.
    let schema = match env::var("FERRY_STATE_SCHEMA") {
        Ok(s) if !s.trim().is_empty() => {
            let n: u32 = s.trim().parse().unwrap_or_else(|_| {
                panic!("FERRY_STATE_SCHEMA must be a positive integer (a schema number), got {s:?}")
            });
            format!("Some({n})")
        }
        _ => "None".to_string(),
    };
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(
        out.join("build_settings.rs"),
        format!(
            "/// Package version this binary reports (FERRY_VERSION).\n\
             pub const VERSION: &str = {version:?};\n\
             /// State schema requested at build time (FERRY_STATE_SCHEMA), if any.\n\
             pub const REQUESTED_SCHEMA: Option<u32> = {schema};\n"
        ),
    )
    .expect("write build_settings.rs");
}
