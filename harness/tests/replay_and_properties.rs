//! Replays `corpus/regressions/<revision>/` and checks whole-run properties.

use harness::generate::Swarm;
use harness::scenario::{decode, parse_trace};
use harness::{assume_fixed, revision_by_name, run, run_with, DivergenceClass};
use p2m_core::Revision;
use rand::rngs::SmallRng;
use rand::{RngCore, SeedableRng};
use std::path::Path;

/// A `# key: value` header line of a regression trace.
fn header<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter_map(|l| l.trim().strip_prefix(key))
        .find_map(|l| l.strip_prefix(':'))
        .map(str::trim)
}

/// Every regression trace shows its recorded class under its directory's revision, is
/// clean once its recorded root-cause switches take their `fixed` values, and is clean
/// under its line's fixed revision (`fixed`, `master-fixed`). Its `# reachable:` header
/// must agree with the report's computed verdict: `yes` — every op a caller op in a
/// configuration the line has (`reachable via …`); `raw` — a raw `set_entry` whose inputs
/// a caller passes; `no` — internal API only, outside security support, or a
/// configuration the line does not have.
#[test]
fn regressions_replay_with_expected_verdicts() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus/regressions");
    let mut n = 0;
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .expect("corpus/regressions")
        .map(|d| d.unwrap().path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let rev = revision_by_name(dir.file_name().unwrap().to_str().unwrap()).unwrap();
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|f| f.unwrap().path())
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let s = parse_trace(&text).unwrap();
            let want = header(&text, "expect")
                .and_then(DivergenceClass::from_name)
                .unwrap_or_else(|| panic!("{}: needs `# expect: <class>`", f.display()));
            let causes: Vec<String> = header(&text, "root-cause")
                .unwrap_or_else(|| panic!("{}: needs `# root-cause: <switch>...`", f.display()))
                .split_whitespace()
                .map(String::from)
                .collect();
            // A non-fatal class (a leak) is judged with every class fatal.
            let strict = !want.is_fatal(false);
            let got = run_with(&s, rev, strict).divergence.map(|d| d.class());
            assert_eq!(got, Some(want), "{} under {}", f.display(), rev.name);
            let healed = assume_fixed(rev, &causes).unwrap();
            assert!(
                run_with(&s, healed, strict).divergence.is_none(),
                "{}: still diverges with {causes:?} fixed",
                f.display()
            );
            let fixed = Revision::fixed_for(rev.line());
            assert!(
                run_with(&s, fixed, strict).divergence.is_none(),
                "{} should be clean under {}",
                f.display(),
                fixed.name
            );
            let r = header(&text, "reachable")
                .unwrap_or_else(|| panic!("{}: needs `# reachable: yes|raw|no`", f.display()));
            let d = run_with(&s, rev, strict).divergence.expect("diverges");
            let computed = if d.is_caller_chain() {
                "yes"
            } else if d.is_reachable() {
                "raw"
            } else {
                "no"
            };
            assert_eq!(
                r,
                computed,
                "{}: `# reachable: {r}` but the report says: {}",
                f.display(),
                d.reachability
            );
            n += 1;
        }
    }
    assert!(n >= 16, "only {n} regression files replayed");
}

/// Every seed-corpus entry `corpus/<target>/*` decodes as that target decodes it and runs
/// clean under `fixed`.
#[test]
fn seed_corpora_replay_clean_under_fixed() {
    use harness::scenario::decode_with_mode;
    use p2m_core::Mode;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    let mut n = 0;
    for (target, mode) in [
        ("ept", Some(Mode::Ept)),
        ("npt", Some(Mode::Npt)),
        ("shadow", Some(Mode::Shadow)),
        ("mixed", None),
    ] {
        let Ok(rd) = std::fs::read_dir(root.join(target)) else {
            continue;
        };
        let mut files: Vec<_> = rd.map(|f| f.unwrap().path()).collect();
        files.sort();
        for f in files {
            let data = std::fs::read(&f).unwrap();
            let s = match mode {
                Some(m) => decode_with_mode(&data, m),
                None => decode(&data),
            };
            // libFuzzer keeps inputs the target rejected too (they add coverage).
            let Some(s) = s else { continue };
            if let Some(d) = run(&s, Revision::fixed()).divergence {
                panic!("{} diverges under fixed:\n{d}", f.display());
            }
            n += 1;
        }
    }
    if root.join("mixed").exists() {
        assert!(n > 0, "seed corpora hold no decodable input");
    }
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
        // `fixed` leaks nothing and has no cached under-permission; the only notes are
        // findings of an op that crashed the domain (an injected allocation failure) and
        // the stale W on log-dirty pages Xen accepts by design.
        for n in &o.notes {
            assert!(
                (o.crashed.is_some() && n.to_string().contains("the op crashed the domain"))
                    || n.finding.class == DivergenceClass::AcceptedByDesign,
                "fixed reported a non-fatal finding:\n{n}"
            );
        }
        total.add(&o.stats);
    }
    let t = total;
    assert!(t.alloc_failures > 0, "no injected allocation failure fired");
    // Machinery the 4.6 line does not have: VT-d domain-selective invalidations, the
    // master IOMMU's superpages and deferred free queue, and batch continuations.
    for (name, v) in t.fields() {
        if name == "notes"
            || name == "vtd_dsi"
            || name.starts_with("iommu_")
            || name == "physmap_continuations"
        {
            continue;
        }
        assert!(
            v > 0,
            "counter {name} never moved in 1,000 scenarios: {t:?}"
        );
    }
}

/// A libFuzzer artifact of the `npt` target (run with `P2M_REVISION=patch-v1` and the other
/// patch-v1 holes assumed fixed) shrinks to George's case: ≤ 4 ops, same class, same root cause.
#[test]
fn minimize_turns_a_fuzz_artifact_into_georges_case() {
    use harness::blame::blame;
    use harness::minimize::minimize;
    use harness::scenario::decode_with_mode;
    let artifact: [u8; 37] = [
        0xff, 0x2a, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xd5,
        0x43, 0x43, 0x42, 0xbc, 0x43, 0x00, 0xf3, 0xff, 0xff, 0xff, 0x2a, 0xd5, 0x43, 0x43, 0x42,
        0xbc, 0x00, 0x00, 0xf3, 0xff, 0xff, 0xff,
    ];
    let others: Vec<String> = [
        "ept_need_modify_requires_present_leaf",
        "iommu_flags_require_present_entry",
        "pt_split_1g_keeps_leaf_nlevel",
        "amd_map_flush_on_perm_change",
        "flush_covers_split_superpage",
        "ept_split_nonpresent_superpage",
    ]
    .map(String::from)
    .to_vec();
    let rev = assume_fixed(revision_by_name("patch-v1").unwrap(), &others).unwrap();
    let s = decode_with_mode(&artifact, p2m_core::Mode::Npt).unwrap();
    let class = run(&s, rev)
        .divergence
        .expect("the artifact diverges")
        .class();
    let small = minimize(&s, rev);
    assert!(small.ops.len() <= 4, "{} ops:\n{small}", small.ops.len());
    assert_eq!(run(&small, rev).divergence.map(|d| d.class()), Some(class));
    assert_eq!(class, DivergenceClass::FreedFrameReachable);
    let b = blame(&small, revision_by_name("patch-v1").unwrap()).unwrap();
    assert_eq!(b.culprits, vec!["pt_iommu_conditions"], "{small}");
}
