//! The oracle-only kill suite of mutation testing (`ci/mutants.sh`, `.cargo/mutants.toml`).
//!
//! A mutant of the model's decision code (need-update, flush, free, invalidation scope)
//! counts as caught only if *the harness* notices: this target runs the corpus replay
//! (`regressions/`, `planted/`, `xen-bug/`, `edges/`, the seed corpora),
//! `exhaustive` at depth 2 (both lines' reference revisions) and a fixed-seed swarm hunt
//! per mode and per master configuration, all through the oracle — verdicts, reports of
//! leaked tables, crashed domains — never the model's own unit tests, which pin exact
//! counts and would inflate the score.
//! Run alone it is an ordinary (fast) test: `cargo test --release -p harness --test
//! mutation_kill`.

use harness::exhaustive::{explore, Options};
use harness::generate::Swarm;
use harness::scenario::{decode_with_mode, parse_trace};
use harness::{assume_fixed, revision_by_name, run_with, DivergenceClass};
use p2m_core::{Mode, Revision};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::path::Path;

/// Scenarios per mode of the swarm hunt (a few seconds each in release).
const HUNT_SCENARIOS: usize = 20_000;

fn header<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines()
        .filter_map(|l| l.strip_prefix('#'))
        .filter_map(|l| l.trim().strip_prefix(key))
        .find_map(|l| l.strip_prefix(':'))
        .map(str::trim)
}

/// Every regression trace (and every planted-revision trace) still shows its class under
/// its revision and is clean with its root causes fixed; every seed-corpus input is clean
/// under `fixed`.
#[test]
fn corpus_replay() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
    // `regressions/`: Xen history and written-up findings; `planted/`: the test-only
    // planted revisions of the 4.6 line (their bugs are what the oracle's free, leak and
    // split checks exist to catch).
    let mut dirs: Vec<_> = ["regressions", "planted"]
        .iter()
        .flat_map(|sub| std::fs::read_dir(root.join(sub)).unwrap())
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
            let want = header(&text, "expect").and_then(DivergenceClass::from_name);
            let causes: Vec<String> = header(&text, "root-cause")
                .unwrap_or_default()
                .split_whitespace()
                .map(String::from)
                .collect();
            // Strict only for a non-fatal class (as `replay_and_properties` does).
            let strict = want.is_some_and(|w| !w.is_fatal(false));
            let got = run_with(&s, rev, strict).divergence.map(|d| d.class());
            assert_eq!(got, want, "{} under {}", f.display(), rev.name);
            let healed = rev.assume_fixed(&causes).unwrap();
            assert!(
                run_with(&s, healed, strict).divergence.is_none(),
                "{}",
                f.display()
            );
        }
    }
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
                None => harness::scenario::decode(&data),
            };
            if let Some(s) = s {
                if let Some(d) = run_with(&s, Revision::fixed(), true).divergence {
                    panic!("{}:\n{d}", f.display());
                }
            }
        }
    }
}

/// Replays every trace of `corpus/<sub>/` strictly (unless its `# strict: no` header says
/// otherwise: a non-fatal note comes first there) under the revision its `# revision:`
/// header names (with the switches of an `# assume-fixed:` header fixed) and checks the
/// class its `# expect:` header records (`none`: clean).
/// Returns the expected classes, in file order.
fn replay_headed(sub: &str) -> Vec<Option<DivergenceClass>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../corpus")
        .join(sub);
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|f| f.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus/{sub} is empty");
    let mut wants = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        let s = parse_trace(&text).unwrap();
        let base = revision_by_name(header(&text, "revision").unwrap()).unwrap();
        // `# assume-fixed:` switches of the revision set to the line's reference values
        // (a hole held alone, e.g. one proposed fix without its companion).
        let fixes: Vec<String> = header(&text, "assume-fixed")
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect();
        let rev = assume_fixed(base, &fixes).unwrap();
        let want = match header(&text, "expect").unwrap() {
            "none" => None,
            c => Some(DivergenceClass::from_name(c).unwrap()),
        };
        let strict = header(&text, "strict") != Some("no");
        let got = run_with(&s, rev, strict).divergence.map(|d| d.class());
        assert_eq!(got, want, "{} under {}", f.display(), rev.name);
        wants.push(want);
    }
    wants
}

/// Every `corpus/xen-bug/` trace still reaches its `BUG_ON` (class `xen-bug`, strict) under
/// the revision its `# revision:` header names: the harness keeps telling a Xen developer
/// which raw inputs would crash Xen rather than diverge.
#[test]
fn xen_bug_traces_still_hit_their_bug_on() {
    let wants = replay_headed("xen-bug");
    assert!(wants.iter().all(|w| *w == Some(DivergenceClass::XenBug)));
}

/// Every `corpus/edges/` trace keeps its verdict (usually clean) under its revision: inputs
/// at the edges of what the model decides (misaligned frames, table indices other than 0,
/// level boundaries) that random search rarely builds.
#[test]
fn edge_traces_keep_their_verdicts() {
    replay_headed("edges");
}

/// `exhaustive --depth 2` is clean on every line's reference revision (`fixed`,
/// `master-fixed`), in every mode.
#[test]
fn exhaustive_depth_2_is_clean() {
    for rev in [
        Revision::fixed(),
        Revision::by_name("master-fixed").unwrap(),
    ] {
        let mut opts = Options::new(rev, 2);
        opts.jobs = 2;
        let report = explore(Mode::ALL, &opts);
        if let Some((d, _)) = report.shortest() {
            panic!("{d}");
        }
    }
}

/// A fixed-seed swarm hunt per master configuration (both vendors, shared and separate
/// tables, every IOMMU page size) is clean under `master-fixed` (fatal classes, no
/// `leaked-table` note; the `BUG_ON`s master keeps for internal-API inputs are notes;
/// fewer than one scenario in ten crashes the domain).
#[test]
fn master_fixed_seed_hunt_is_clean() {
    use p2m_core::{Config, PageSizes, Vendor};
    let rev = Revision::by_name("master-fixed").expect("master-fixed");
    let configs = [
        (Mode::Ept, Vendor::Vtd, true),
        (Mode::Ept, Vendor::Vtd, false),
        (Mode::Npt, Vendor::Amd, false),
        (Mode::Shadow, Vendor::Vtd, false),
        (Mode::Shadow, Vendor::Amd, false),
    ];
    for (i, &(mode, vendor, share)) in configs.iter().enumerate() {
        let mut rng = SmallRng::seed_from_u64(2000 + i as u64);
        let (mut n, mut crashes) = (0, 0);
        while n < HUNT_SCENARIOS {
            let mut cfg = Config::new(mode, vendor, share);
            cfg.page_sizes = PageSizes::ALL[n / 64 % PageSizes::ALL.len()];
            let swarm = Swarm::for_config(&mut rng, cfg);
            for _ in 0..64 {
                let s = swarm.scenario(&mut rng);
                let out = run_with(&s, rev, false);
                if let Some(d) = out.divergence {
                    panic!("{d}");
                }
                // A crashed domain is a verdict of its own (Xen's `domain_crash` when a
                // caller meets a grant, foreign or MMIO entry it may not replace); it must
                // stay the exception, not hide the rest of the search.
                if out.crashed.is_some() {
                    crashes += 1;
                }
                // A leak is a note (non-fatal) on master too, but master-fixed has none.
                if let Some(d) = out
                    .notes
                    .iter()
                    .find(|d| d.finding.class == DivergenceClass::LeakedTable)
                {
                    panic!("{d}");
                }
                n += 1;
            }
        }
        assert!(
            crashes * 10 < n,
            "{crashes} of {n} scenarios crashed the domain"
        );
    }
}

/// A fixed-seed swarm hunt per mode is clean under `fixed`: no divergence and no note
/// but `accepted-by-design` (Xen's own acceptance of a stale W on log-dirty pages with
/// shared EPT, in every revision).
#[test]
fn fixed_seed_hunt_is_clean() {
    for (i, &mode) in Mode::ALL.iter().enumerate() {
        let mut rng = SmallRng::seed_from_u64(1000 + i as u64);
        let mut n = 0;
        while n < HUNT_SCENARIOS {
            let swarm = Swarm::new(&mut rng, Some(mode));
            for _ in 0..64 {
                let s = swarm.scenario(&mut rng);
                let out = run_with(&s, Revision::fixed(), false);
                if let Some(d) = out.divergence {
                    panic!("{d}");
                }
                // Notes of the non-fatal classes (a fatal class only becomes a note
                // when the op crashed the domain, Xen's own verdict).
                let other = out.notes.iter().find(|d| {
                    let c = d.finding.class;
                    !c.is_fatal(false) && c != DivergenceClass::AcceptedByDesign
                });
                if let Some(d) = other {
                    panic!("{d}");
                }
                n += 1;
            }
        }
    }
}
