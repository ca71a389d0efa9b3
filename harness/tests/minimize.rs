//! `minimize` keeps the divergence class and what each frame selector names.

use harness::generate::Swarm;
use harness::minimize::minimize;
use harness::scenario::{
    decode, encode, is_canonical, parse_trace, to_trace, MfnSel, Op, Scenario, TABLE_LEVELS,
};
use harness::{assume_fixed, revision_by_name, run};
use p2m_core::{Mode, MAX_PAGE};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// The `mfn` selectors of `s`, in op order.
fn mfns(s: &Scenario) -> Vec<MfnSel> {
    s.ops.iter().map(|op| op.mfn_sel()).collect()
}

/// EPT with shared tables, `committed`: padding ops around the two that matter shift the
/// table allocations, so the `ptf:6` naming the L1 table under gfn 0x40000 names another
/// table once they are gone. `minimize` keeps the frame's role (`tbl:1`) and reaches the
/// two-op witness, with no `ptf:` left.
#[test]
fn padding_and_ptf_shrink_to_two_ops_without_ptf() {
    let rev = revision_by_name("committed").unwrap();
    let s = parse_trace(
        "config mode=ept vendor=vtd share=on\n\
         set_entry gfn=0x80000 mfn=0x100000 order=0 ram_rw rwx\n\
         set_entry gfn=0x40000 mfn=0x10040000 order=0 ram_rw rwx\n\
         set_entry gfn=0xc0000 mfn=0x100001 order=0 ram_ro rwx\n\
         set_entry gfn=0x40000 mfn=ptf:6 order=9 ram_rw rwx\n",
    )
    .unwrap();
    let d = run(&s, rev).divergence.expect("diverges");
    // The selector names the L1 table under gfn 0x40000 (allocated by op 1).
    assert!(d.trace[3].ends_with("(ptf = 0x40c00)"), "{d}");
    let small = minimize(&s, rev);
    assert_eq!(small.ops.len(), 2, "{small}");
    assert_eq!(
        run(&small, rev).divergence.map(|d| d.class()),
        Some(d.class())
    );
    assert!(
        !mfns(&small)
            .iter()
            .any(|m| matches!(m, MfnSel::TableFrame(_))),
        "{small}"
    );
    assert_eq!(mfns(&small)[1], MfnSel::TableAt(1), "{small}");
    // Dropping the padding alone keeps `ptf:6` pointing elsewhere: no divergence.
    let mut naive = s.clone();
    naive.ops = vec![s.ops[1], s.ops[3]];
    assert!(run(&naive, rev).divergence.is_none(), "{naive}");
}

/// A selector that matters only through its frame's identity becomes a plain literal
/// frame; a literal frame beyond the machine becomes `INVALID_MFN`.
#[test]
fn selectors_and_frames_beyond_the_machine_become_simple() {
    let rev = revision_by_name("committed").unwrap();
    // The access/type change on a shared EPT entry, spelled with the root table frame.
    let s = parse_trace(
        "config mode=ept vendor=vtd share=on\n\
         set_entry gfn=0x40000 mfn=ptf:0 order=18 mmio_direct rwx\n\
         set_entry gfn=0x40000 mfn=cur order=18 invalid rwx\n",
    )
    .unwrap();
    let class = run(&s, rev).divergence.expect("diverges").class();
    let small = minimize(&s, rev);
    assert_eq!(run(&small, rev).divergence.map(|d| d.class()), Some(class));
    assert!(mfns(&small).iter().all(|m| !m.is_selector()), "{small}");
    // Separate tables: a `ram_rw` entry for a frame beyond MAX_PAGE is empty in the p2m
    // but mapped by the IOMMU, exactly as for INVALID_MFN.
    let s = parse_trace(
        "config mode=ept vendor=vtd share=off\n\
         set_entry gfn=0x40000 mfn=0x123456789 order=0 ram_rw rwx\n",
    )
    .unwrap();
    let class = run(&s, rev).divergence.expect("diverges").class();
    let small = minimize(&s, rev);
    assert_eq!(run(&small, rev).divergence.map(|d| d.class()), Some(class));
    assert_eq!(mfns(&small), vec![MfnSel::Invalid], "{small}");
}

/// Swarm scenarios (fixed seeds), a quarter of their frames turned into `tbl:L` / `cur`:
/// for 150 divergences each under `committed`, `xen-4.6-pre` and `committed` with only
/// `ept_need_modify_requires_present_leaf` open, the minimized scenario diverges with the
/// same class, is no longer, is canonical and round-trips through text and bytes, keeps a
/// frame beyond the machine only where `INVALID_MFN` would lose the class, and
/// minimizing is deterministic.
#[test]
fn minimize_never_changes_the_divergence_class() {
    const PER_REVISION: usize = 150;
    // The third run leaves only `ept_need_modify_requires_present_leaf` open in
    // `committed`, whose intermediate-entry form needs `tbl:1`: its witnesses keep
    // selectors, so the respelling is exercised, not only dropped.
    let only_need_modify: Vec<String> = [
        "iommu_flags_require_present_entry",
        "amd_map_flush_on_perm_change",
        "pt_split_1g_keeps_leaf_nlevel",
        "amd_suppress_pte_merging",
        "flush_covers_split_superpage",
    ]
    .map(String::from)
    .to_vec();
    for (name, assumed, seed) in [
        ("committed", &[][..], 11u64),
        ("xen-4.6-pre", &[], 12),
        ("committed", &only_need_modify[..], 13),
    ] {
        let rev = assume_fixed(revision_by_name(name).unwrap(), assumed).unwrap();
        let mut rng = SmallRng::seed_from_u64(seed);
        let (mut found, mut with_selectors, mut tried) = (0, 0, 0);
        let (mut ops_before, mut ops_after, mut kept) = (0, 0, std::collections::BTreeMap::new());
        while found < PER_REVISION {
            tried += 1;
            assert!(tried < 200_000, "{name}: only {found} divergences");
            // Raw ops: the property is about `set_entry` frame selectors.
            let swarm = Swarm::new(&mut rng, Some(Mode::ALL[tried % 3])).without_callers();
            let mut s = swarm.scenario(&mut rng);
            for op in &mut s.ops {
                let Op::SetEntry(e) = op else {
                    continue;
                };
                if rng.gen_bool(0.25) {
                    e.mfn = match rng.gen_range(0..4u8) {
                        0 => MfnSel::Current,
                        l => MfnSel::TableAt(l),
                    };
                }
            }
            let Some(d) = run(&s, rev).divergence else {
                continue;
            };
            found += 1;
            with_selectors += usize::from(mfns(&s).iter().any(|m| m.is_selector()));
            let small = minimize(&s, rev);
            ops_before += s.ops.len();
            ops_after += small.ops.len();
            for m in mfns(&small) {
                if m.is_selector() {
                    *kept.entry(format!("{m}")).or_insert(0) += 1;
                }
            }
            let got = run(&small, rev).divergence.map(|d| d.class());
            assert_eq!(got, Some(d.class()), "{name}:\n{s}\nminimized to\n{small}");
            assert!(small.ops.len() <= d.observed_op + 1, "{s}\n→\n{small}");
            assert!(is_canonical(&small), "{small}");
            assert_eq!(parse_trace(&to_trace(&small)).as_ref(), Ok(&small));
            assert_eq!(decode(&encode(&small)).as_ref(), Some(&small));
            for (i, m) in mfns(&small).into_iter().enumerate() {
                if let MfnSel::TableAt(l) = m {
                    assert!(TABLE_LEVELS.contains(&l));
                }
                // A frame beyond the machine is kept only where INVALID_MFN differs.
                if matches!(m, MfnSel::Frame(f) if f >= MAX_PAGE) {
                    let mut t = small.clone();
                    let Op::SetEntry(e) = &mut t.ops[i] else {
                        continue;
                    };
                    e.mfn = MfnSel::Invalid;
                    let c = run(&t, rev).divergence.map(|d| d.class());
                    assert_ne!(c, got, "{small}\nop {i} could be INVALID_MFN");
                }
            }
            if found % 25 == 0 {
                assert_eq!(minimize(&s, rev), small, "not deterministic:\n{s}");
            }
        }
        assert!(
            ops_after < ops_before,
            "{name}: {ops_before} ops → {ops_after}"
        );
        if !assumed.is_empty() {
            assert!(
                kept.get("tbl:1").is_some_and(|&n| n > 0),
                "{name}: no witness kept `tbl:1`: {kept:?}"
            );
        }
        assert!(
            with_selectors > PER_REVISION / 4,
            "{name}: {with_selectors} diverging scenarios held a selector"
        );
    }
}

/// The reachability tier of a report: a caller chain, a raw `set_entry` with inputs a
/// caller passes, or neither.
fn tier(d: &harness::runner::Divergence) -> &'static str {
    if d.is_caller_chain() {
        "caller chain"
    } else if d.is_reachable() {
        "raw"
    } else {
        "unreachable"
    }
}

/// `minimize` never changes the verdict: over swarm scenarios with caller ops and
/// interleaved batches (half of them caller ops only), under revisions with reachable
/// holes, the minimized scenario diverges with the same class and the same
/// reachability tier, and is no longer.
#[test]
fn minimize_keeps_the_reachability_verdict() {
    let mut per_tier = std::collections::BTreeMap::new();
    for (name, seed) in [("xsa346-ref", 21u64), ("committed", 22), ("xen-master", 23)] {
        let rev = revision_by_name(name).unwrap();
        let mut rng = SmallRng::seed_from_u64(seed);
        let (mut found, mut tried) = (0, 0);
        while found < 40 {
            tried += 1;
            assert!(tried < 100_000, "{name}: only {found} divergences");
            let mut swarm = Swarm::new(&mut rng, Some(Mode::ALL[tried % 3]));
            if tried % 2 == 0 {
                swarm = swarm.callers_only();
            }
            let s = swarm.scenario(&mut rng);
            let Some(d) = run(&s, rev).divergence else {
                continue;
            };
            found += 1;
            let small = minimize(&s, rev);
            let m = run(&small, rev).divergence.expect("still diverges");
            assert_eq!(m.class(), d.class(), "{name}:\n{s}\n→\n{small}");
            assert_eq!(tier(&m), tier(&d), "{name}:\n{s}\n→\n{small}\n{m}");
            assert!(small.ops.len() <= s.ops.len());
            *per_tier.entry(tier(&d)).or_insert(0) += 1;
        }
    }
    assert!(
        per_tier.get("caller chain").is_some_and(|&n| n >= 10),
        "too few caller-chain divergences: {per_tier:?}"
    );
}
