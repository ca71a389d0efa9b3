//! `p2m-fuzz repro --dot`: usage errors, bad output paths and a written picture.

mod common;
use common::{assert_usage_error, p2m_fuzz, scratch};
use std::path::Path;

/// George Dunlap's regression trace.
fn george() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus/regressions/patch-v1/george-empty-leaf-no-flush.trace")
        .to_string_lossy()
        .into_owned()
}

#[test]
fn dot_with_two_inputs_is_a_usage_error() {
    let dir = scratch("dot", "two");
    let out = dir.join("out.dot");
    let g = george();
    let o = p2m_fuzz(&["repro", "--dot", out.to_str().unwrap(), &g, &g]);
    assert_usage_error(&o, "--dot needs exactly one input file (got 2)");
    assert!(!out.exists());
}

#[test]
fn dot_to_a_bad_path_is_an_error() {
    let dir = scratch("dot", "bad");
    let missing = dir.join("no/such/dir/out.dot");
    let g = george();
    let o = p2m_fuzz(&[
        "repro",
        "--revision",
        "patch-v1",
        "--dot",
        missing.to_str().unwrap(),
        &g,
    ]);
    assert_usage_error(&o, "out.dot");
    let o = p2m_fuzz(&["repro", "--dot", dir.to_str().unwrap(), &g]);
    assert_usage_error(&o, dir.to_str().unwrap());
}

#[test]
fn dot_writes_the_picture_of_the_divergence() {
    let dir = scratch("dot", "ok");
    let out = dir.join("george.dot");
    let o = p2m_fuzz(&[
        "repro",
        "--revision",
        "patch-v1",
        "--dot",
        out.to_str().unwrap(),
        &george(),
    ]);
    // The divergence still makes `repro` exit 1.
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    let d = std::fs::read_to_string(&out).expect("dot written");
    assert!(d.starts_with("digraph p2m {"));
    assert!(d.contains("left by seq 2 (op #1"));
    let o = p2m_fuzz(&[
        "repro",
        "--revision",
        "fixed",
        "--dot",
        out.to_str().unwrap(),
        &george(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let d = std::fs::read_to_string(&out).expect("dot written");
    assert!(d.contains("CLEAN: no divergence under revision fixed"));
}
