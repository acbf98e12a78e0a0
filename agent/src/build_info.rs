//! Settings baked in by build.rs (FERRY_VERSION, FERRY_STATE_SCHEMA).
include!(concat!(env!("OUT_DIR"), "/build_settings.rs"));
