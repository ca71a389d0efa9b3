//! The p2m half of the master line through its `Domain`: `p2m_set_entry` chunking, CPU
//! views (`cpu_extents` against `get_entry` at every gfn), splits, frees, IOMMU calls and
//! determinism, in every p2m configuration.

use p2m_core::master::domain::Domain;
use p2m_core::master::iommu::FlushFlags;
use p2m_core::master::p2m::IommuCall;
use p2m_core::*;

/// Every p2m configuration: EPT shared / separate, NPT, shadow on either vendor.
const CONFIGS: [(Mode, Vendor, bool); 5] = [
    (Mode::Ept, Vendor::Vtd, true),
    (Mode::Ept, Vendor::Vtd, false),
    (Mode::Npt, Vendor::Amd, true),
    (Mode::Shadow, Vendor::Vtd, true),
    (Mode::Shadow, Vendor::Amd, false),
];

fn dom(mode: Mode, vendor: Vendor, share: bool, rev: &str) -> Domain {
    Domain::new(
        Config::new(mode, vendor, share),
        Revision::by_name(rev).unwrap(),
    )
}

const RWX: P2mAccess = P2mAccess::Rwx;

/// The p2m's own free events (the IOMMU's drain may add its own).
fn p2m_frees(d: &Domain) -> Vec<&p2m_core::events::FreeEvent> {
    d.log
        .frees
        .iter()
        .filter(|f| {
            matches!(
                f.what,
                p2m_core::events::Freed::Table {
                    owner: p2m_core::frames::TableOwner::P2m,
                    ..
                }
            )
        })
        .collect()
}

/// The p2m's own splits (the IOMMU may log its shatters too).
fn p2m_splits(d: &Domain) -> usize {
    d.log
        .splits
        .iter()
        .filter(|s| s.by == "ept_split_super_page" || s.by == "p2m_next_level")
        .count()
}

fn map(dfn: u64, mfn: u64, page_count: u64, perm: IommuPerm) -> IommuCall {
    IommuCall::LegacyMap {
        dfn,
        mfn,
        page_count,
        perm,
    }
}

#[test]
fn p2m_set_entry_chunks_by_mode() {
    // HAP: one 1 GiB chunk.
    let mut d = dom(Mode::Npt, Vendor::Amd, false, "xen-master");
    d.p2m_set_entry(0x40000, Mfn(0x80000), 18, P2mType::RamRw, RWX)
        .unwrap();
    assert_eq!(d.calls, [map(0x40000, 0x80000, 1 << 18, IommuPerm::RW)]);
    // Shadow: 2 MiB chunks (f2d947ac07), one IOMMU map each.
    let mut s = dom(Mode::Shadow, Vendor::Vtd, false, "xen-master");
    s.p2m_set_entry(0x40000, Mfn(0x80000), 18, P2mType::RamRw, RWX)
        .unwrap();
    assert_eq!(s.calls.len(), 512);
    assert_eq!(
        s.calls[511],
        map(0x40000 + 511 * 512, 0x80000 + 511 * 512, 512, IommuPerm::RW)
    );
    assert_eq!(
        s.cpu_extents(GfnRange::of_order(0x40000, 18)),
        [CpuExtent {
            range: GfnRange::of_order(0x40000, 18),
            mfn: Mfn(0x80000),
            p2mt: P2mType::RamRw,
            access: RWX
        }]
    );
    // INVALID_MFN is not forced to 4 KiB (efa9596e9d): one 2 MiB removal in either mode.
    for d in [&mut d, &mut s] {
        d.p2m_set_entry(0x40200, INVALID_MFN, 9, P2mType::Invalid, RWX)
            .unwrap();
        assert_eq!(
            d.calls,
            [IommuCall::LegacyUnmap {
                dfn: 0x40200,
                page_count: 512
            }]
        );
    }
    // A misaligned frame: 4 KiB chunks.
    let mut e = dom(Mode::Ept, Vendor::Vtd, false, "xen-master");
    e.p2m_set_entry(0x200, Mfn(0x1001), 9, P2mType::RamRw, RWX)
        .unwrap();
    assert_eq!(e.calls.len(), 512);
    assert_eq!(e.get_entry(0x3ff).unwrap().mfn, Mfn(0x1200));
}

#[test]
fn p2m_set_entry_continues_after_a_failed_chunk() {
    for (mode, vendor, share) in CONFIGS {
        let mut d = dom(mode, vendor, share, "xen-master");
        let last = (1u64 << 36) - 1;
        let rc = d.p2m_set_entry(last, Mfn(0x10), 1, P2mType::RamRw, RWX);
        assert_eq!(rc, Err(P2mError::GfnOutOfRange), "{mode:?}");
        assert_eq!(d.get_entry(last).unwrap().mfn, Mfn(0x10), "{mode:?}");
        assert_eq!(d.calls.len(), 1, "{mode:?}");
    }
}

/// The shared-EPT free event through `p2m_set_entry`: the replaced table is freed after
/// the flush (no reach); `ept-free-first` frees it before (a cached walk reaches it).
#[test]
fn shared_ept_free_event_reaches() {
    for (rev, reached) in [("xen-master", false), ("ept-free-first", true)] {
        let mut d = dom(Mode::Ept, Vendor::Vtd, true, rev);
        d.p2m_set_entry(0x200, Mfn(0x1200), 0, P2mType::RamRw, RWX)
            .unwrap();
        d.p2m_set_entry(0x200, Mfn(0x4000), 9, P2mType::RamRw, RWX)
            .unwrap();
        assert_eq!(
            d.calls,
            [IommuCall::IotlbFlush {
                dfn: 0x200,
                page_count: 512,
                flags: FlushFlags {
                    added: true,
                    modified: true,
                    all: false
                }
            }]
        );
        assert_eq!(p2m_frees(&d).len(), 1);
        assert_eq!(!p2m_frees(&d)[0].reaches.is_empty(), reached, "{rev}");
        // Either way the device view no longer reaches a freed frame after the op.
        let v = d.device_view(GfnRange::of_order(0x200, 9));
        assert!(v.faults.is_empty(), "{rev}: {:?}", v.faults);
    }
}

#[test]
fn map_remap_split_replace_views() {
    for (mode, vendor, share) in CONFIGS {
        let tag = format!("{mode:?}/{vendor:?}/share={share}");
        let mut d = dom(mode, vendor, share, "xen-master");
        let r = GfnRange::of_order(0x40000, 18);
        // 4 KiB maps, then a 2 MiB page over them (replacing their table).
        for g in 0x40000..0x40004 {
            d.set_entry(g, Mfn(g), 0, P2mType::RamRw, RWX).unwrap();
        }
        d.set_entry(0x40000, Mfn(0x8000), 9, P2mType::RamRo, RWX)
            .unwrap();
        assert_eq!(p2m_frees(&d).len(), 1, "{tag}");
        assert!(d.log.bad_frees.is_empty() && d.log.leaked(&d.mem).next().is_none());
        // Remap one 4 KiB page inside: split.
        d.set_entry(0x40005, Mfn(0x77), 0, P2mType::RamRw, RWX)
            .unwrap();
        assert_eq!(p2m_splits(&d), 1, "{tag}");
        let x = d.cpu_extents(r);
        let got: Vec<_> = x.iter().map(|e| (e.range, e.mfn, e.p2mt)).collect();
        let g = |s, e| GfnRange { start: s, end: e };
        assert_eq!(
            got,
            [
                (g(0x40000, 0x40005), Mfn(0x8000), P2mType::RamRo),
                (g(0x40005, 0x40006), Mfn(0x77), P2mType::RamRw),
                (g(0x40006, 0x40200), Mfn(0x8006), P2mType::RamRo),
                (g(0x40200, 0x80000), INVALID_MFN, P2mType::Invalid),
            ],
            "{tag}"
        );
        // A 1 GiB page over all of it.
        d.set_entry(0x40000, Mfn(0x40000 * 8), 18, P2mType::RamRw, RWX)
            .unwrap();
        assert_eq!(p2m_frees(&d).len(), 2, "{tag}: the L1 and the L2 table");
        let x = d.cpu_extents(r);
        assert_eq!(x.len(), 1, "{tag}");
        assert_eq!(d.model_stats().intermediate_replaced, 2, "{tag}");
    }
}

/// A 1 GiB op touches entries, not pages: map, unmap, map inside, remap, with few tables
/// and extents, and a 1 GiB CPU view in a handful of runs.
#[test]
fn one_gib_ops_stay_cheap() {
    for (mode, vendor, share) in CONFIGS {
        let mut d = dom(mode, vendor, share, "xen-master");
        let r = GfnRange::of_order(0x40000, 18);
        d.p2m_set_entry(0x40000, Mfn(0x40000 * 16), 18, P2mType::RamRw, RWX)
            .unwrap();
        d.p2m_set_entry(0x40000, INVALID_MFN, 18, P2mType::Invalid, RWX)
            .unwrap();
        d.p2m_set_entry(0x40000 + 0x1234, Mfn(0x99), 0, P2mType::RamRw, RWX)
            .unwrap();
        d.p2m_set_entry(0x40000, Mfn(0x40000 * 16), 18, P2mType::RamRw, RWX)
            .unwrap();
        assert!(d.cpu_extents(r).len() <= 3);
        assert!(
            d.live_table_frames() <= 16,
            "{mode:?}: {}",
            d.live_table_frames()
        );
        assert!(d.cache_records().len() <= 16);
    }
}

#[test]
fn write_state_is_deterministic_and_complete() {
    for (mode, vendor, share) in CONFIGS {
        let run = |extra: bool| {
            let mut d = dom(mode, vendor, share, "xen-master");
            d.set_entry(0x200, Mfn(0x1000), 9, P2mType::RamRw, RWX)
                .unwrap();
            d.set_entry(0x201, Mfn(0x5), 0, P2mType::RamRo, RWX)
                .unwrap();
            if extra {
                d.set_entry(0x202, Mfn(0x6), 0, P2mType::RamRo, RWX)
                    .unwrap();
            }
            let mut s = String::new();
            d.write_state(&mut s).unwrap();
            s
        };
        assert_eq!(run(false), run(false));
        assert_ne!(run(false), run(true));
    }
}

/// xorshift64: deterministic, no dependency.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The window the random ops touch: two 1 GiB regions.
const WINDOW: GfnRange = GfnRange {
    start: 0,
    end: 1 << 19,
};

/// What `get_entry` says about `gfn`, as the extent convention reads it.
fn reading(d: &Domain, gfn: u64) -> (Mfn, P2mType, P2mAccess) {
    d.get_entry(gfn)
        .map(|e| (e.mfn, e.p2mt, e.access))
        .unwrap_or((INVALID_MFN, P2mType::Invalid, P2mAccess::Rwx))
}

/// What an extent says about `gfn`.
fn extent_reading(e: &CpuExtent, gfn: u64) -> (Mfn, P2mType, P2mAccess) {
    let mfn = if e.mfn == INVALID_MFN {
        INVALID_MFN
    } else {
        Mfn(e.mfn.0 + (gfn - e.range.start))
    };
    (mfn, e.p2mt, e.access)
}

/// Extents cover `range` in order, without gaps, each non-empty, none mergeable into its
/// predecessor; `get_entry` agrees with them at `gfns` (all of them when `full`) wherever
/// the query reports a frame.
fn check_extents(d: &Domain, range: GfnRange, samples: &[u64], full: bool, tag: &str) {
    let x = d.cpu_extents(range);
    assert_eq!(x.first().unwrap().range.start, range.start, "{tag}");
    assert_eq!(x.last().unwrap().range.end, range.end, "{tag}");
    for w in x.windows(2) {
        assert_eq!(w[0].range.end, w[1].range.start, "{tag}");
        let continues = w[0].p2mt == w[1].p2mt
            && w[0].access == w[1].access
            && if w[0].mfn == INVALID_MFN || w[1].mfn == INVALID_MFN {
                w[0].mfn == w[1].mfn
            } else {
                w[0].mfn.0 + w[0].range.len() == w[1].mfn.0
            };
        assert!(!continues, "{tag}: not canonical at {:?}", w[1].range);
    }
    // `cpu_extents` is the stored content; `get_entry` hides some of it the way Xen's
    // query does (no frame for PoD, a non-present superpage or type, a grant superpage on
    // p2m-pt). Where the query reports a frame, the two must agree exactly.
    let check = |g: u64| {
        let i = x.partition_point(|e| e.range.end <= g);
        let q = reading(d, g);
        if q.0 != INVALID_MFN && q.1 != P2mType::PopulateOnDemand {
            assert_eq!(q, extent_reading(&x[i], g), "{tag}: gfn {g:#x}");
        }
    };
    if full {
        for g in range.start..range.end {
            check(g);
        }
    } else {
        for e in &x {
            check(e.range.start);
            check(e.range.end - 1);
        }
        for &g in samples {
            if range.contains(g) {
                check(g);
            }
        }
    }
}

/// A random op: mostly aligned valid frames, sometimes MMIO (read-only frames included),
/// `INVALID_MFN`, frames near 2^40, or a live table frame.
fn random_op(rng: &mut Rng, d: &Domain) -> (u64, Mfn, u32, P2mType, P2mAccess, bool) {
    let order = [0u32, 0, 0, 0, 0, 9, 9, 9, 9, 18][rng.below(10) as usize];
    let align = |x: u64| x & !((1u64 << order) - 1);
    let gfn = align(rng.below(WINDOW.end));
    let mfn = match rng.below(10) {
        0 => INVALID_MFN,
        1 => Mfn(align(MAX_PAGE + rng.below(0x400))),
        2 => Mfn(align(MMIO_RO_FRAMES.start - 0x80 + rng.below(0x200))),
        3 => Mfn(align(PTE_MFN_MASK - rng.below(1 << 19))),
        4 => {
            let f = d.mem.ever_allocated();
            Mfn(f[rng.below(f.len() as u64) as usize])
        }
        _ => Mfn(align(rng.below(1 << 24))),
    };
    let t = P2mType::ALL[rng.below(P2mType::ALL.len() as u64) as usize];
    let t = if rng.below(3) == 0 { P2mType::RamRw } else { t };
    let a = P2mAccess::ALL[rng.below(P2mAccess::ALL.len() as u64) as usize];
    let a = if rng.below(2) == 0 { RWX } else { a };
    (gfn, mfn, order, t, a, rng.below(4) == 0)
}

/// Random ops in every configuration: `cpu_extents` matches `get_entry` (at every gfn of
/// the window now and then, at boundaries and samples after each op), nothing is freed
/// twice or leaked, and replaying the ops gives the same state.
#[test]
fn cpu_extents_match_get_entry_under_random_ops() {
    for (ci, (mode, vendor, share)) in CONFIGS.into_iter().enumerate() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((ci as u64 + 1) * 0x1234_5678));
        let mut d = dom(mode, vendor, share, "xen-master");
        let mut replay = dom(mode, vendor, share, "xen-master");
        let mut touched: Vec<u64> = Vec::new();
        for step in 0..400 {
            let (gfn, mfn, order, t, a, chunked) = random_op(&mut rng, &d);
            let tag = format!(
                "{mode:?}/{vendor:?}/share={share} step {step}: \
                 {gfn:#x} {mfn} {order} {t} {a} chunked={chunked}"
            );
            let (r1, r2) = if chunked {
                (
                    d.p2m_set_entry(gfn, mfn, order, t, a),
                    replay.p2m_set_entry(gfn, mfn, order, t, a),
                )
            } else {
                (
                    d.set_entry(gfn, mfn, order, t, a),
                    replay.set_entry(gfn, mfn, order, t, a),
                )
            };
            assert_eq!(r1, r2, "{tag}");
            assert!(d.log.bad_frees.is_empty(), "{tag}: {:?}", d.log.bad_frees);
            assert!(d.log.leaked(&d.mem).next().is_none(), "{tag}");
            touched.extend([gfn, gfn.wrapping_sub(1), gfn + (1 << order), gfn + 3]);
            for _ in 0..8 {
                touched.push(rng.below(WINDOW.end));
            }
            if touched.len() > 400 {
                touched.drain(..200);
            }
            let full = step % 100 == 99;
            check_extents(&d, WINDOW, &touched, full, &tag);
            let sub = GfnRange {
                start: gfn.saturating_sub(3),
                end: gfn + (1 << order) + 5,
            };
            check_extents(&d, sub, &touched, false, &tag);
        }
        let (mut a, mut b) = (String::new(), String::new());
        d.write_state(&mut a).unwrap();
        replay.write_state(&mut b).unwrap();
        assert_eq!(a, b);
        // Beyond the address width nothing is mapped.
        let far = GfnRange {
            start: (1 << 36) - 2,
            end: (1 << 36) + 2,
        };
        check_extents(&d, far, &[], true, "far");
    }
}
