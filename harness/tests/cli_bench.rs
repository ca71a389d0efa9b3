//! `p2m-fuzz bench --corpus`: bad paths and revisions are one-line errors; a corpus is
//! timed input by input, inputs that are not scenarios counted and named.

mod common;
use common::{assert_usage_error, p2m_fuzz, scratch};
use std::path::Path;

#[test]
fn a_missing_directory_is_a_one_line_error() {
    let d = scratch("bench", "missing").join("nope");
    let o = p2m_fuzz(&["bench", "--corpus", &d.to_string_lossy()]);
    assert_usage_error(&o, "nope");
}

#[test]
fn a_directory_without_scenarios_is_a_one_line_error() {
    let d = scratch("bench", "empty");
    std::fs::write(d.join("junk"), b"").expect("write");
    let o = p2m_fuzz(&["bench", "--corpus", &d.to_string_lossy()]);
    assert_usage_error(&o, "no input to time (1 files, none a scenario)");
}

#[test]
fn an_unknown_revision_is_a_one_line_error() {
    let d = scratch("bench", "rev");
    let o = p2m_fuzz(&[
        "bench",
        "--corpus",
        &d.to_string_lossy(),
        "--revision",
        "no-such-revision",
    ]);
    assert_usage_error(&o, "no-such-revision");
}

#[test]
fn a_corpus_is_timed_per_input_heaviest_first() {
    let d = scratch("bench", "timed");
    let trace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus/regressions/patch-v1/george-empty-leaf-no-flush.trace");
    std::fs::copy(&trace, d.join("george.trace")).expect("copy");
    std::fs::write(
        d.join("big.trace"),
        "config mode=ept vendor=vtd share=off\n\
         populate_physmap gfn=0x0 mfn=0x100000 order=0 nr=512\n\
         populate_physmap gfn=0x200 mfn=0x100200 order=0 nr=512\n\
         populate_physmap gfn=0x400 mfn=0x100400 order=0 nr=512\n\
         populate_physmap gfn=0x600 mfn=0x100600 order=0 nr=512\n",
    )
    .expect("write");
    std::fs::write(d.join("truncated"), [0x01u8, 0x02]).expect("write");
    let o = p2m_fuzz(&["bench", "--corpus", &d.to_string_lossy(), "--reps", "5"]);
    assert_eq!(o.status.code(), Some(0), "{o:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("under fixed: 2 inputs, 5 replays each"),
        "{out}"
    );
    assert!(
        out.contains("skipped 1 files that are not a scenario (first: "),
        "{out}"
    );
    assert!(out.contains("truncated input"), "{out}");
    assert!(out.contains("cost per input: mean "), "{out}");
    // Both inputs listed, heaviest first (the order itself is timing: checked on the
    // printed figures, not on which input wins, so a loaded machine cannot flip it).
    let rows: Vec<(f64, &str)> = out
        .lines()
        .skip_while(|l| !l.starts_with("heaviest inputs:"))
        .skip(1)
        .filter_map(|l| {
            let us = l.split_whitespace().next()?.parse::<f64>().ok()?;
            Some((us, l))
        })
        .collect();
    assert_eq!(rows.len(), 2, "{out}");
    assert!(rows[0].0 >= rows[1].0, "{out}");
    assert!(rows
        .iter()
        .any(|(_, l)| l.contains("  4 ops  big.trace  populate_physmap,")));
    assert!(rows
        .iter()
        .any(|(_, l)| l.contains("  2 ops  george.trace  set_entry,set_entry")));
}
