//! Logging to stderr, which systemd sends to the journal. Under journald
//! (JOURNAL_STREAM is set) each line carries a syslog priority prefix so that
//! `journalctl -p warning` works; on a terminal the lines stay plain.
use std::sync::OnceLock;

fn journal() -> bool {
    static JOURNAL: OnceLock<bool> = OnceLock::new();
    *JOURNAL.get_or_init(|| std::env::var_os("JOURNAL_STREAM").is_some())
}

fn emit(priority: u8, level: &str, msg: &str) {
    if journal() {
        eprintln!("<{priority}>{msg}");
    } else {
        eprintln!("roboconf-agent[{}] {level}: {msg}", std::process::id());
    }
}

pub fn info(msg: &str) {
    emit(6, "info", msg);
}

pub fn warn(msg: &str) {
    emit(4, "warning", msg);
}

pub fn error(msg: &str) {
    emit(3, "error", msg);
}
