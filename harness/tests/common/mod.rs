//! Helpers of the CLI tests (`cli_dot.rs`, `cli_bench.rs`): run `p2m-fuzz`, make a scratch
//! directory, check a usage error.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Runs the CLI with `args`.
pub fn p2m_fuzz(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_p2m-fuzz"))
        .args(args)
        .output()
        .expect("run p2m-fuzz")
}

/// A fresh scratch directory for one test, named `p2m-<suite>-<pid>-<name>`.
pub fn scratch(suite: &str, name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("p2m-{suite}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// Exit status 2 and exactly one line on stderr, which contains `needle`.
pub fn assert_usage_error(o: &Output, needle: &str) {
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.lines().count(), 1, "stderr: {err}");
    assert!(err.contains(needle), "stderr: {err}");
}
