//! The stepping runner ([`Session`]) and the bounded-exhaustive search.

use harness::blame::blame;
use harness::exhaustive::{
    configs, explore, search_config, search_config_with, AbstractDomain, Control, Options,
};
use harness::generate::Swarm;
use harness::runner::resolve_mfn;
use harness::scenario::{parse_trace, MfnSel, Op, Scenario};
use harness::{assume_fixed, revision_by_name, run, DivergenceClass, RunOutcome, Session};
use p2m_core::{Config, Mfn, Mode, P2mType, Revision, Vendor};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::process::Command;

fn rev(name: &str) -> Revision {
    revision_by_name(name).expect("known revision")
}

/// `run` and a hand-written `Session` loop give identical outcomes on swarm scenarios.
#[test]
fn run_equals_manual_session_loop() {
    let mut rng = SmallRng::seed_from_u64(5);
    for r in ["patch-v1", "fixed"] {
        let r = rev(r);
        for i in 0..300 {
            let s = Swarm::new(&mut rng, Some(Mode::ALL[i % 3])).scenario(&mut rng);
            let mut sess = Session::for_scenario(&s, r);
            let (mut divergence, mut crashed) = (None, None);
            for op in &s.ops {
                let out = sess.step_outcome(op);
                if let Some(f) = out.finding {
                    divergence = Some(sess.divergence(f));
                    break;
                }
                if out.crashed.is_some() {
                    crashed = out.crashed;
                    break;
                }
            }
            let manual = RunOutcome {
                divergence,
                notes: sess.notes().to_vec(),
                crashed,
                stats: sess.stats(),
            };
            assert_eq!(run(&s, r), manual, "scenario:\n{s}");
        }
    }
}

/// A `Session` cloned after a prefix and continued gives the same outcome as a replay.
#[test]
fn cloned_prefix_continues_like_a_replay() {
    let mut rng = SmallRng::seed_from_u64(6);
    let r = rev("committed");
    for i in 0..300 {
        let s = Swarm::new(&mut rng, Some(Mode::ALL[i % 3])).scenario(&mut rng);
        let cut = rng.gen_range(0..=s.ops.len());
        let mut prefix = Session::for_scenario(&s, r);
        let (mut early, mut crashed) = (None, None);
        for op in &s.ops[..cut] {
            let out = prefix.step_outcome(op);
            if let Some(f) = out.finding {
                early = Some(prefix.divergence(f));
                break;
            }
            if out.crashed.is_some() {
                crashed = out.crashed;
                break;
            }
        }
        let mut divergence = early.clone();
        let mut cont = prefix.clone();
        if early.is_none() && crashed.is_none() {
            for op in &s.ops[cut..] {
                let out = cont.step_outcome(op);
                if let Some(f) = out.finding {
                    divergence = Some(cont.divergence(f));
                    break;
                }
                if out.crashed.is_some() {
                    crashed = out.crashed;
                    break;
                }
            }
        }
        let cloned = RunOutcome {
            divergence,
            notes: cont.notes().to_vec(),
            crashed,
            stats: cont.stats(),
        };
        assert_eq!(run(&s, r), cloned, "scenario (cut at {cut}):\n{s}");
    }
}

/// Reduction 2: an op both sides refuse leaves the model and the reference unchanged
/// (checked for every letter, from the empty state and after every accepted letter).
#[test]
fn refused_ops_leave_state_unchanged() {
    let snapshot = |s: &Session| {
        let d = s.domain();
        let mut state = String::new();
        d.write_state(&mut state).unwrap();
        format!("{state}{:?}{:?}", d.cache_records(), s.reference())
    };
    let mut refused = 0;
    for cfg in configs(Mode::ALL) {
        let letters = AbstractDomain::standard().alphabet();
        let fresh = Session::new(cfg, rev("committed"));
        let mut starts = vec![fresh.clone()];
        for l in &letters {
            let mut s = fresh.clone();
            if !s.step_outcome(&l.op).both_refused {
                starts.push(s);
            }
        }
        for start in starts.iter().step_by(7) {
            let before = snapshot(start);
            for l in &letters {
                let mut s = start.clone();
                if s.step_outcome(&l.op).both_refused {
                    refused += 1;
                    assert_eq!(before, snapshot(&s), "{cfg}: {} changed state", l.op);
                }
            }
        }
    }
    assert!(refused > 0, "no letter was refused");
}

/// The standard alphabet: 108 distinct letters, gfns aligned to their order, `tbl:L` one
/// level below the op's entry (orders 9 and 18 only).
#[test]
fn alphabet_is_deduplicated_and_aligned() {
    let letters = AbstractDomain::standard().alphabet();
    assert_eq!(letters.len(), 108);
    let tables: Vec<_> = letters
        .iter()
        .filter_map(|l| match l.op {
            Op::SetEntry(e) => match e.mfn {
                MfnSel::TableAt(level) => Some((e.order, level)),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(tables.len(), 12);
    assert!(tables.iter().all(|&(o, l)| o >= 9 && u32::from(l) == o / 9));
    assert!(!letters
        .iter()
        .any(|l| matches!(l.op, Op::SetEntry(e) if e.mfn == MfnSel::Current)));
    for (i, l) in letters.iter().enumerate() {
        let Op::SetEntry(e) = l.op else {
            continue;
        };
        assert_eq!(e.gfn & ((1 << e.order) - 1), 0, "{}", l.op);
        if let MfnSel::Frame(m) = e.mfn {
            assert_eq!(m & ((1 << e.order) - 1), 0, "{}", l.op);
        }
        assert!(!letters[..i].iter().any(|o| o.op == l.op));
    }
    assert_eq!(configs(&[Mode::Ept]).len(), 2);
    assert_eq!(configs(&[Mode::Npt]).len(), 2);
    assert_eq!(configs(&[Mode::Shadow]).len(), 4);
    assert!(AbstractDomain::wide(Mode::Npt).alphabet().len() > letters.len());
}

/// The configuration of `mode` with sharing `share` (vendor as normalized; VT-d for shadow).
fn cfg(mode: Mode, share: bool) -> Config {
    Config::new(mode, Vendor::Vtd, share).normalized()
}

/// Finds the first sequence that diverges under `bad` and is clean under `good`,
/// checking that claim by replay; returns its class and scenario.
fn closed_hole(config: Config, bad: &str, good: &str, depth: usize) -> (DivergenceClass, Scenario) {
    let opts = Options {
        baseline: Some(rev(good)),
        ..Options::new(rev(bad), depth)
    };
    let (d, s) = search_config(config, &opts)
        .found
        .unwrap_or_else(|| panic!("{bad} has no hole that {good} closed in {config}"));
    assert_eq!(run(&s, rev(bad)).divergence.as_ref(), Some(&d));
    assert!(run(&s, rev(good)).divergence.is_none(), "{s}");
    (d.class(), s)
}

/// xen-4.6-pre: the EPT type change on the same frame (6c0e4ad608), the NPT old-mfn
/// logic (660fd65d55) and shadow obeying the share flag (c0a85795d8), all closed by
/// the committed series.
#[test]
fn finds_xen_4_6_pre_holes() {
    let (class, s) = closed_hole(cfg(Mode::Ept, false), "xen-4.6-pre", "committed", 2);
    assert_eq!(class, DivergenceClass::OverPermissive);
    // Two ops on the same gfn, frame and order that change only the type.
    let [Op::SetEntry(a), Op::SetEntry(b)] = s.ops[..] else {
        panic!("expected two ops:\n{s}");
    };
    assert_eq!((a.gfn, a.mfn, a.order), (b.gfn, b.mfn, b.order), "{s}");
    assert_ne!(a.p2mt, b.p2mt, "{s}");
    let (class, s) = closed_hole(cfg(Mode::Npt, true), "xen-4.6-pre", "committed", 2);
    assert_eq!(class, DivergenceClass::OverPermissive);
    assert_eq!(s.ops.len(), 2, "{s}");
    let (class, s) = closed_hole(cfg(Mode::Shadow, true), "xen-4.6-pre", "committed", 2);
    assert_eq!(class, DivergenceClass::UnderPermissive);
    assert_eq!(s.ops.len(), 1, "{s}");
}

/// patch-v1: George Dunlap's case — a 4 KiB map, then an empty 2 MiB entry over it —
/// with separate and with shared tables.
#[test]
fn finds_patch_v1_george_case() {
    let want = parse_trace(
        "config mode=npt vendor=amd share=off\n\
         set_entry gfn=0x40000 mfn=0x10040000 order=0 ram_rw rwx\n\
         set_entry gfn=0x40000 mfn=INVALID_MFN order=9 invalid rwx\n",
    )
    .expect("trace");
    for share in [false, true] {
        let (class, s) = closed_hole(cfg(Mode::Npt, share), "patch-v1", "committed", 2);
        assert_eq!(s.ops, want.ops);
        // Shared: the L1 table is freed while the IOMMU may still walk it (reported
        // before the stale leaf it also leaves).
        let expect = if share {
            DivergenceClass::FreedFrameReachable
        } else {
            DivergenceClass::OverPermissive
        };
        assert_eq!(class, expect);
    }
}

/// committed: holes that `fixed` closed, in every mode, within two ops: the EPT
/// access/type change on a shared entry, the 1 GiB split with next-level bits on a
/// shared NPT, and the IOMMU mapping an empty entry (separate tables).
#[test]
fn finds_committed_holes() {
    for (config, len) in [
        (cfg(Mode::Ept, true), 2),
        (cfg(Mode::Npt, true), 2),
        (cfg(Mode::Shadow, false), 1),
    ] {
        let (_, s) = closed_hole(config, "committed", "fixed", 2);
        assert_eq!(s.ops.len(), len, "{s}");
    }
}

/// committed: a new leaf whose frame is the table of the intermediate entry it replaces
/// looks unchanged to `need_modify_vtd_table` (the hole `ept_need_modify_requires_present_leaf`
/// closes). `tbl:1` reaches it at depth 2, with shared and with separate VT-d tables; the
/// separate-table configuration first has to be rid of its one-op hole (an empty entry the
/// IOMMU maps), so that switch is assumed fixed.
#[test]
fn finds_committed_intermediate_entry_hole() {
    let committed = assume_fixed(
        rev("committed"),
        &["iommu_flags_require_present_entry".to_string()],
    )
    .expect("known switch");
    let report = explore(&[Mode::Ept], &Options::new(committed, 2));
    assert_eq!(report.configs.len(), 2);
    for c in &report.configs {
        let (d, s) = c
            .found
            .as_ref()
            .unwrap_or_else(|| panic!("{}: clean at depth 2", c.config));
        assert_eq!(s.ops.len(), 2, "{s}");
        let b = blame(s, committed).expect("diverges");
        assert_eq!(b.class, d.class());
        assert_eq!(
            b.culprits,
            vec!["ept_need_modify_requires_present_leaf"],
            "{s}"
        );
        // The mechanism: the second op maps, at the level of a present intermediate entry,
        // the very table that entry points to.
        let Op::SetEntry(last) = s.ops[1] else {
            panic!("{s}: a set_entry")
        };
        let below = (last.order / 9) as u8;
        assert_eq!(last.mfn, MfnSel::TableAt(below), "{s}");
        let mut sess = Session::new(s.config, committed);
        assert!(sess.step(&s.ops[0]).is_none());
        let table = sess
            .domain()
            .p2m_table_at(last.gfn, below)
            .unwrap_or_else(|| panic!("no intermediate entry under the last op:\n{s}"));
        assert_eq!(resolve_mfn(sess.domain(), last.gfn, last.mfn), Mfn(table));
        assert_eq!(
            last.p2mt,
            P2mType::RamRw,
            "the intermediate entry's sa_p2mt: {s}"
        );
        assert!(run(s, Revision::fixed()).divergence.is_none(), "{s}");
    }
}

/// Without a baseline every historical revision diverges in every mode within two ops.
#[test]
fn historical_revisions_diverge() {
    for r in ["xen-4.6-pre", "patch-v1", "committed"] {
        for mode in Mode::ALL {
            let report = explore(&[*mode], &Options::new(rev(r), 2));
            assert!(report.shortest().is_some(), "{r} {mode} clean");
        }
    }
}

/// `fixed` is clean at depth 2 in every configuration.
#[test]
fn fixed_is_clean_at_depth_2() {
    let report = explore(Mode::ALL, &Options::new(Revision::fixed(), 2));
    for c in &report.configs {
        assert!(c.found.is_none(), "{}: {:?}", c.config, c.found);
        assert_eq!(c.depth_done, 2);
        assert!(
            c.sequences > 1000,
            "{}: {} sequences",
            c.config,
            c.sequences
        );
    }
}

/// The visitor sees divergences shortest first and can pass over them.
#[test]
fn visitor_sees_divergences_shortest_first() {
    let cfg = configs(&[Mode::Npt])[1];
    let mut lengths = Vec::new();
    let res = search_config_with(cfg, &Options::new(rev("committed"), 2), &mut |s, _| {
        lengths.push(s.len());
        Control::Continue
    });
    assert!(res.found.is_none());
    assert!(lengths.len() > 1);
    assert!(lengths.windows(2).all(|w| w[0] <= w[1]), "{lengths:?}");
}

/// Reductions 2-4 change neither the verdict nor the length of the first divergence.
#[test]
fn reductions_keep_verdicts() {
    let cases = [
        (cfg(Mode::Ept, true), "xen-4.6-pre", Some("committed")),
        (cfg(Mode::Ept, true), "committed", None),
        (cfg(Mode::Npt, true), "patch-v1", Some("committed")),
        (cfg(Mode::Npt, true), "committed", Some("fixed")),
        (cfg(Mode::Npt, true), "fixed", None),
        (cfg(Mode::Shadow, true), "6c0e4ad608", Some("960265fbd8")),
    ];
    for (config, r, base) in cases {
        let reduced = Options {
            baseline: base.map(rev),
            ..Options::new(rev(r), 2)
        };
        let plain = Options {
            reduce: false,
            ..reduced
        };
        let verdict = |o: &Options| {
            let res = search_config(config, o);
            let found = res.found.map(|(d, s)| (d.class(), s.ops.len()));
            (found, res.depth_done, res.sequences)
        };
        let (a, da, na) = verdict(&reduced);
        let (b, db, nb) = verdict(&plain);
        assert_eq!((a, da), (b, db), "{config} {r} baseline {base:?}");
        assert!(na <= nb);
    }
}

/// Searching configurations on two threads gives the same report as one at a time.
#[test]
fn jobs_do_not_change_the_report() {
    for (r, depth) in [("committed", 2), ("fixed", 1)] {
        let one = explore(Mode::ALL, &Options::new(rev(r), depth));
        let two = explore(
            Mode::ALL,
            &Options {
                jobs: 2,
                ..Options::new(rev(r), depth)
            },
        );
        let key = |rep: &harness::exhaustive::Report| -> Vec<String> {
            rep.configs
                .iter()
                .map(|c| format!("{} {} {} {:?}", c.config, c.sequences, c.ops, c.found))
                .collect()
        };
        assert_eq!(key(&one), key(&two));
    }
}

/// The CLI: exit 0 clean, 1 with a reproducer, 2 with a one-line error.
#[test]
fn cli_exit_codes() {
    let bin = env!("CARGO_BIN_EXE_p2m-fuzz");
    let out = Command::new(bin)
        .args(["exhaustive", "--mode", "npt", "--depth", "1"])
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("verdict: clean"));

    let dir = std::env::temp_dir().join(format!("p2m-exhaustive-{}", std::process::id()));
    let out = Command::new(bin)
        .args(["exhaustive", "--mode", "shadow", "--revision", "committed"])
        .args(["--depth", "2", "--out"])
        .arg(&dir)
        .output()
        .expect("runs");
    assert_eq!(out.status.code(), Some(1));
    let trace = std::fs::read_dir(&dir)
        .expect("out dir")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "trace"))
        .expect("a .trace reproducer");
    let s = parse_trace(&std::fs::read_to_string(&trace).expect("read")).expect("parses");
    assert!(run(&s, rev("committed")).divergence.is_some());
    let _ = std::fs::remove_dir_all(&dir);

    for args in [
        &["exhaustive", "--revision", "nope"][..],
        &["exhaustive", "--mode", "pv"],
        &["exhaustive", "--depth", "0"],
        &["exhaustive", "--depth", "99"],
        &["exhaustive", "--baseline", "nope"],
    ] {
        let out = Command::new(bin).args(args).output().expect("runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
}

/// `reachable` passes over divergences no Xen caller can produce and keeps searching: the
/// negative control `e70a9a043a-undone` diverges at length 2 on NPT only through
/// `p2m_invalid` written with a frame (internal API), so the raw search reports it and the
/// reachable search is clean at that depth, having passed over at least that sequence.
#[test]
fn reachable_search_passes_over_internal_api_divergences() {
    let config = Config::new(Mode::Npt, Vendor::Amd, false).normalized();
    // Counting only what the control breaks beyond the pinned master (whose own findings,
    // e.g. F1, it keeps), as ci/negative-controls.sh does.
    let raw = Options {
        baseline: Some(rev("xen-master")),
        ..Options::new(rev("e70a9a043a-undone"), 2)
    };
    let (d, _) = search_config(config, &raw).found.expect("raw divergence");
    assert!(!d.is_reachable(), "{d}");
    let reach = Options {
        reachable: true,
        ..raw
    };
    let res = search_config(config, &reach);
    assert!(
        res.found.is_none(),
        "{:?}",
        res.found.map(|(d, _)| d.to_string())
    );
    assert!(res.passed_unreachable >= 1);
    assert_eq!(res.depth_done, 2);
}

/// The caller alphabet (`exhaustive`'s default): `master-fixed` and `fixed` are clean to
/// depth 3 in every configuration, and with the master findings assumed fixed it still
/// finds `xsa346-ref` (the interleaved batch letter) and F10 (fault injection before a
/// batch) — holes the raw `set_entry` alphabet cannot express.
#[test]
fn caller_alphabet_is_clean_on_the_fixed_revisions_and_finds_batch_holes() {
    let opts = |rev: Revision| Options {
        callers: true,
        jobs: 2,
        ..Options::new(rev, 3)
    };
    for r in ["fixed", "master-fixed"] {
        let report = explore(Mode::ALL, &opts(rev(r)));
        assert!(report.shortest().is_none(), "{r} diverges");
        assert!(report.configs.iter().all(|c| c.sequences > 1000), "{r}");
    }
    let master = rev("xen-master");
    let fixes: Vec<String> = rev("master-fixed")
        .switches
        .differing(&master.switches)
        .into_iter()
        .map(String::from)
        .collect();
    let cfg = Config::new(Mode::Ept, Vendor::Vtd, false).normalized();
    let without =
        |skip: &str| -> Vec<String> { fixes.iter().filter(|f| *f != skip).cloned().collect() };
    for (r, keep_open, needs) in [
        ("xsa346-ref", "", "add_to_physmap_range"),
        (
            "xen-master",
            "batch_flush_keeps_deferred_flags",
            "fail_alloc",
        ),
    ] {
        let base = rev(r);
        let assumed = if keep_open.is_empty() {
            fixes.clone()
        } else {
            without(keep_open)
        };
        let revision = assume_fixed(base, &assumed).unwrap();
        let res = search_config(cfg, &opts(revision));
        let (d, s) = res.found.expect("a divergence");
        assert!(d.is_caller_chain(), "{r}: {d}");
        assert!(s.to_string().contains(needs), "{r}:\n{s}");
    }
}
