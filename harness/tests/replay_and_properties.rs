//! Replays `corpus/regressions/<revision>/` and checks whole-run properties.

use harness::generate::Swarm;
use harness::scenario::{decode, parse_trace};
use harness::{revision_by_name, run};
use p2m_core::Revision;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use std::path::Path;

/// Every regression trace diverges under its directory's revision and is clean under `fixed`.
#[test]
fn regressions_replay_with_expected_verdicts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus/regressions");
    let mut n = 0;
    for dir in std::fs::read_dir(&root).expect("corpus/regressions") {
        let dir = dir.unwrap().path();
        let rev = revision_by_name(dir.file_name().unwrap().to_str().unwrap()).unwrap();
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            let s = parse_trace(&std::fs::read_to_string(&f).unwrap()).unwrap();
            assert!(
                run(&s, rev).divergence.is_some(),
                "{} should diverge under {}",
                f.display(),
                rev.name
            );
            assert!(
                run(&s, Revision::fixed()).divergence.is_none(),
                "{} should be clean under fixed",
                f.display()
            );
            n += 1;
        }
    }
    assert!(n >= 3, "only {n} regression files replayed");
}

/// 100,000 random byte strings decode and run under `fixed` without a panic or divergence.
#[test]
fn random_bytes_run_clean_under_fixed() {
    let mut rng = SmallRng::seed_from_u64(42);
    let mut buf = [0u8; 1 + 12 * 6];
    let mut ran = 0;
    for _ in 0..100_000 {
        let len = 1 + (rng.next_u32() as usize % buf.len());
        rng.fill_bytes(&mut buf[..len]);
        if let Some(s) = decode(&buf[..len]) {
            ran += 1;
            if let Some(d) = run(&s, Revision::fixed()).divergence {
                panic!("fixed diverged:\n{d}");
            }
        }
    }
    assert!(ran > 50_000, "only {ran} inputs decoded");
}

/// The same scenario gives the same report twice.
#[test]
fn runs_are_deterministic() {
    let s = parse_trace(
        "config mode=npt vendor=amd share=on\n\
         set_entry gfn=0x200 mfn=0x100200 order=0 ram_rw rwx\n\
         set_entry gfn=0x200 mfn=INVALID_MFN order=9 invalid rwx\n",
    )
    .unwrap();
    let rev = revision_by_name("patch-v1").unwrap();
    let a = run(&s, rev).divergence.expect("diverges").to_string();
    let b = run(&s, rev).divergence.expect("diverges").to_string();
    assert_eq!(a, b);
}

/// 1,000 swarm scenarios under `fixed` exercise every counter at least once.
#[test]
fn swarm_exercises_every_counter() {
    let mut rng = SmallRng::seed_from_u64(3);
    let mut total = harness::RunStats::default();
    for i in 0..1000 {
        let mode = [
            p2m_core::Mode::Ept,
            p2m_core::Mode::Npt,
            p2m_core::Mode::Shadow,
        ][i % 3];
        let s = Swarm::new(&mut rng, Some(mode)).scenario(&mut rng);
        let o = run(&s, Revision::fixed());
        assert!(o.divergence.is_none());
        total.add(&o.stats);
    }
    let t = total;
    for (name, v) in [
        ("ops_ok", t.ops_ok),
        ("ops_err", t.ops_err),
        ("order 0", t.by_order[0]),
        ("order 9", t.by_order[1]),
        ("order 18", t.by_order[2]),
        ("splits", t.splits),
        ("intermediate_replaced", t.intermediate_replaced),
        ("frees", t.frees),
        ("vtd_psi", t.vtd_psi),
        ("vtd_psi_skipped", t.vtd_psi_skipped),
        ("amd_pages_4k", t.amd_pages_4k),
        ("amd_pages_large", t.amd_pages_large),
        ("amd_all", t.amd_all),
        ("map_pages", t.map_pages),
        ("unmap_pages", t.unmap_pages),
        ("records_created", t.records_created),
        ("range_checks", t.range_checks),
    ] {
        assert!(
            v > 0,
            "counter {name} never moved in 1,000 scenarios: {t:?}"
        );
    }
}
