//! AMD-Vi page merging in separate tables (Xen 4.6 `amd_iommu_map_page` →
//! `iommu_update_pde_count` / `iommu_merge_pages`, split in `iommu_pde_from_gfn`), and
//! its suppression in `fixed` (`amd_suppress_pte_merging`, XSA-275).

use p2m_core::frames::FrameState;
use p2m_core::walk::Translation;
use p2m_core::xen46::domain::Domain;
use p2m_core::*;

fn dom(mode: Mode, rev: &str) -> Domain {
    Domain::new(
        Config::new(mode, Vendor::Amd, false),
        Revision::by_name(rev).unwrap(),
    )
}

fn set(d: &mut Domain, gfn: u64, mfn: Mfn, order: u32, t: P2mType) {
    d.set_entry(gfn, mfn, order, t, P2mAccess::Rwx)
        .unwrap_or_else(|e| panic!("set_entry({gfn:#x}, {mfn}, {order}, {t}) failed: {e}"));
}

fn range(start: u64, end: u64) -> GfnRange {
    GfnRange { start, end }
}

/// Translations of the current tables over `r`.
fn current(d: &Domain, r: GfnRange) -> Vec<Translation> {
    d.current_view(r).translations
}

/// The level-1 table frame the current tables use for `gfn`, if any.
fn l1_of(d: &Domain, gfn: u64) -> Option<u64> {
    d.current_view(GfnRange::of_order(gfn, 0))
        .nonleaf
        .iter()
        .find(|n| n.2 == 1)
        .map(|n| n.1)
}

/// Every (mfn, perm) the device can obtain for `gfn` (tables and caches).
fn reach(d: &Domain, gfn: u64) -> Vec<(u64, IommuPerm)> {
    d.device_view(GfnRange::of_order(gfn, 0))
        .translations
        .iter()
        .map(|(t, _)| (t.mfn, t.perm))
        .collect()
}

fn assert_superpage(d: &Domain, base: u64, mfn: u64, perm: IommuPerm, pages: u64) {
    let t = current(d, range(base, base + pages));
    assert_eq!(
        t,
        vec![Translation {
            range: range(base, base + pages),
            mfn,
            perm,
            leaf_pages: pages,
        }],
        "expected one {pages}-page superpage at {base:#x}"
    );
}

const MODES: [Mode; 2] = [Mode::Npt, Mode::Shadow];

/// One order-9 map of a 2 MiB-aligned mfn range: the 512th page's map merges the L1
/// table into a 2 MiB superpage; the flush-all comes before the free, so no record is left.
#[test]
fn order9_map_merges_and_frees_the_l1_table() {
    for mode in MODES {
        let mut d = dom(mode, "committed");
        set(&mut d, 0x400, Mfn(0x100400), 0, P2mType::RamRw);
        let l1 = l1_of(&d, 0x400).expect("an L1 table after a 4K map");
        let all_before = d.iommu_stats().amd_all;
        set(&mut d, 0x200, Mfn(0x100200), 9, P2mType::RamRw);
        assert_superpage(&d, 0x200, 0x100200, IommuPerm::RW, 512);
        // The L1 table of 0x200 was allocated and freed; the one of 0x400 (another
        // 2 MiB entry) stays.
        assert_eq!(l1_of(&d, 0x400), Some(l1));
        assert!(
            d.iommu_stats().amd_all > all_before,
            "iommu_merge_pages flushes all"
        );
        assert!(d.cache_records().is_empty(), "{:?}", d.cache_records());
        let freed = d
            .mem
            .ever_allocated()
            .iter()
            .filter(|&&f| d.mem.info(f).unwrap().state == FrameState::Free)
            .count();
        assert_eq!(freed, 1, "{mode:?}: exactly the merged L1 table is free");
    }
}

/// 512 order-0 maps give the same superpage; the 511th leaves the table in place.
#[test]
fn order0_maps_merge_on_the_512th() {
    for mode in MODES {
        let mut d = dom(mode, "committed");
        for k in 0..511 {
            set(&mut d, 0x200 + k, Mfn(0x100200 + k), 0, P2mType::RamRw);
        }
        let l1 = l1_of(&d, 0x200).expect("still an L1 table after 511 maps");
        set(&mut d, 0x3ff, Mfn(0x1003ff), 0, P2mType::RamRw);
        assert_superpage(&d, 0x200, 0x100200, IommuPerm::RW, 512);
        assert_eq!(d.mem.info(l1).unwrap().state, FrameState::Free);
        assert_eq!(l1_of(&d, 0x200), None);
        // Same tables as the single order-9 op.
        let mut e = dom(mode, "committed");
        set(&mut e, 0x200, Mfn(0x100200), 9, P2mType::RamRw);
        assert_eq!(
            d.current_view(range(0, 0x40000)).translations,
            e.current_view(range(0, 0x40000)).translations
        );
        assert_eq!(
            d.iommu.separate.table_count(),
            e.iommu.separate.table_count()
        );
    }
}

/// A non-contiguous page, or an mfn range not aligned to 2 MiB, prevents the merge.
#[test]
fn non_contiguous_or_misaligned_does_not_merge() {
    let mut d = dom(Mode::Shadow, "committed");
    for k in 0..512 {
        let m = if k == 7 { 0x200007 } else { 0x100200 + k };
        set(&mut d, 0x200 + k, Mfn(m), 0, P2mType::RamRw);
    }
    assert!(l1_of(&d, 0x200).is_some());
    assert!(current(&d, range(0x200, 0x400))
        .iter()
        .all(|t| t.leaf_pages == 1));

    let mut d = dom(Mode::Shadow, "committed");
    for k in 0..512 {
        set(&mut d, 0x200 + k, Mfn(0x100201 + k), 0, P2mType::RamRw);
    }
    assert!(l1_of(&d, 0x200).is_some(), "misaligned first mfn: no merge");
}

/// Xen compares no permissions: the last map's permission becomes the superpage's.
/// 511 read-only pages and one read-write page merge into a read-write superpage
/// (the hole `amd_suppress_pte_merging` closes); `fixed` keeps them read-only.
#[test]
fn merge_takes_the_last_maps_permission() {
    let build = |rev| {
        let mut d = dom(Mode::Shadow, rev);
        for k in 0..511 {
            set(&mut d, 0x200 + k, Mfn(0x100200 + k), 0, P2mType::RamRo);
        }
        set(&mut d, 0x3ff, Mfn(0x1003ff), 0, P2mType::RamRw);
        d
    };
    let d = build("committed");
    assert_superpage(&d, 0x200, 0x100200, IommuPerm::RW, 512);
    let d = build("fixed");
    assert!(reach(&d, 0x200).iter().all(|(_, p)| *p == IommuPerm::R));
}

/// The count counts map events, not entries: 511 maps, an unmap in between, and one
/// more map merge a table with a hole, so the unmapped page becomes reachable again.
#[test]
fn merge_counts_events_not_entries() {
    let build = |rev| {
        let mut d = dom(Mode::Npt, rev);
        for k in 0..511 {
            set(&mut d, 0x200 + k, Mfn(0x100200 + k), 0, P2mType::RamRw);
        }
        set(&mut d, 0x205, INVALID_MFN, 0, P2mType::Invalid);
        set(&mut d, 0x3ff, Mfn(0x1003ff), 0, P2mType::RamRw);
        d
    };
    let d = build("committed");
    assert_eq!(reach(&d, 0x205), vec![(0x100205, IommuPerm::RW)]);
    let d = build("fixed");
    assert!(reach(&d, 0x205).is_empty());
}

/// A later 4K change inside a merged superpage splits it (`iommu_pde_from_gfn`): a new
/// L1 table of read/write entries, flush-all, then the 4K write. For a read-write
/// superpage the device view is exactly right afterwards.
#[test]
fn split_on_4k_change_keeps_the_device_view() {
    for mode in MODES {
        let mut d = dom(mode, "committed");
        set(&mut d, 0x200, Mfn(0x100200), 9, P2mType::RamRw);
        assert_eq!(l1_of(&d, 0x200), None);
        set(&mut d, 0x210, Mfn(0x300000), 0, P2mType::RamRw);
        assert!(l1_of(&d, 0x200).is_some(), "split back into an L1 table");
        assert_eq!(reach(&d, 0x210), vec![(0x300000, IommuPerm::RW)]);
        for g in [0x200, 0x20f, 0x211, 0x3ff] {
            assert_eq!(reach(&d, g), vec![(0x100000 + g, IommuPerm::RW)], "{g:#x}");
        }
        // Unmapping one page splits too and clears just that page.
        let mut d = dom(mode, "committed");
        set(&mut d, 0x200, Mfn(0x100200), 9, P2mType::RamRw);
        set(&mut d, 0x3ff, INVALID_MFN, 0, P2mType::Invalid);
        assert!(reach(&d, 0x3ff).is_empty());
        assert_eq!(reach(&d, 0x3fe), vec![(0x1003fe, IommuPerm::RW)]);
    }
}

/// The split fills the new table read/write whatever the superpage's permission:
/// a read-only 2 MiB merge becomes writable when one page is unmapped.
#[test]
fn split_of_read_only_superpage_grants_write() {
    let build = |rev| {
        let mut d = dom(Mode::Shadow, rev);
        set(&mut d, 0x200, Mfn(0x100200), 9, P2mType::RamRo);
        set(&mut d, 0x200, INVALID_MFN, 0, P2mType::Invalid);
        d
    };
    let d = build("committed");
    assert_eq!(reach(&d, 0x201), vec![(0x100201, IommuPerm::RW)]);
    let d = build("fixed");
    assert_eq!(reach(&d, 0x201), vec![(0x100201, IommuPerm::R)]);
}

/// A 1 GiB map merges all the way up: 512 2 MiB merges (the same L1 frame reused each
/// time), then the L2 table into a 1 GiB superpage. Unmapping it again splits twice
/// per 2 MiB entry; live frames stay within the separate-table bound of
/// `cost_and_errors.rs`, and the work is per table, not per page.
#[test]
fn one_gib_merges_and_splits_bounded() {
    for mode in MODES {
        let mut d = dom(mode, "committed");
        set(&mut d, 0x40000, Mfn(0x4000000), 18, P2mType::RamRw);
        assert_superpage(&d, 0x40000, 0x4000000, IommuPerm::RW, 1 << 18);
        assert!(d.live_table_frames() <= 8, "{}", d.live_table_frames());
        assert!(d.cache_records().is_empty());
        set(&mut d, 0x40000, Mfn(0), 18, P2mType::Invalid);
        assert!(current(&d, range(0x40000, 0x80000)).is_empty());
        assert!(
            d.live_table_frames() <= 2 * 512 + 16,
            "{}",
            d.live_table_frames()
        );
        // Remap: 512 merges again, then the 1 GiB merge; the split tables leak as in
        // Xen (a merge frees only the table under the merged entry).
        set(&mut d, 0x40000, Mfn(0x4000000), 18, P2mType::RamRw);
        assert_superpage(&d, 0x40000, 0x4000000, IommuPerm::RW, 1 << 18);
        assert!(d.cache_records().len() <= 16);
    }
}

/// `fixed` never merges: an order-9 map leaves 512 4 KiB leaves and the L1 table.
#[test]
fn fixed_does_not_merge() {
    let mut d = dom(Mode::Npt, "fixed");
    set(&mut d, 0x200, Mfn(0x100200), 9, P2mType::RamRw);
    assert!(l1_of(&d, 0x200).is_some());
    assert!(current(&d, range(0x200, 0x400))
        .iter()
        .all(|t| t.leaf_pages == 1));
}

mod range_form {
    //! The range form of the AMD map/unmap loops against the per-page loop (one
    //! `iommu_map_page` / `iommu_unmap_page` call per page), with merging on: same
    //! tables, same frames freed and reused (generations), same cache records, same
    //! flushes.
    use p2m_core::cache::RecordKind;
    use p2m_core::frames::MachineMemory;
    use p2m_core::walk::walk_root;
    use p2m_core::xen46::iommu::Iommu;
    use p2m_core::*;

    #[derive(Clone, Copy, Debug)]
    enum IoOp {
        Map(u64, u64, u64, IommuPerm),
        Unmap(u64, u64),
    }

    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 33
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Coalesced `(start, end, mfn, perm, leaf pages, seq-or-0)` runs.
    fn coalesce(mut v: Vec<(u64, u64, u64, IommuPerm, u64, u64)>) -> Vec<String> {
        v.sort_by_key(|x| (x.5, x.0));
        let mut out: Vec<(u64, u64, u64, IommuPerm, u64, u64)> = Vec::new();
        for x in v {
            if let Some(p) = out.last_mut() {
                if p.1 == x.0
                    && p.2.wrapping_add(p.1 - p.0) == x.2
                    && p.3 == x.3
                    && p.4 == x.4
                    && p.5 == x.5
                {
                    p.1 = x.1;
                    continue;
                }
            }
            out.push(x);
        }
        out.iter().map(|x| format!("{x:?}")).collect()
    }

    fn state(io: &Iommu, mem: &MachineMemory) -> (Vec<String>, Vec<String>, Vec<String>, String) {
        let w = walk_root(
            &io.separate,
            mem,
            GfnRange {
                start: 0,
                end: 1 << 20,
            },
        );
        let tr = coalesce(
            w.translations
                .iter()
                .map(|t| (t.range.start, t.range.end, t.mfn, t.perm, t.leaf_pages, 0))
                .collect(),
        );
        let mut nonleaf: Vec<String> = w.nonleaf.iter().map(|n| format!("{n:?}")).collect();
        let mut leaves = Vec::new();
        for r in io.caches.records() {
            match r.kind {
                RecordKind::Leaf {
                    mfn,
                    perm,
                    leaf_pages,
                } => leaves.push((r.range.start, r.range.end, mfn, perm, leaf_pages, r.seq)),
                k => nonleaf.push(format!("rec {:?} {k:?} {}", r.range, r.seq)),
            }
        }
        nonleaf.sort();
        let st = io.stats;
        (
            tr,
            nonleaf,
            coalesce(leaves),
            format!(
                "{mem:?} {} {} {}",
                st.amd_pages_4k, st.amd_all, st.map_pages
            ),
        )
    }

    fn sw46(name: &str) -> p2m_core::xen46::revision::Switches {
        match Revision::by_name(name).unwrap().switches {
            Switches::Xen46(s) => s,
            other => panic!("{name} is not a 4.6 revision: {other}"),
        }
    }

    fn apply(
        ops: &[IoOp],
        per_page: bool,
        sw: &p2m_core::xen46::revision::Switches,
    ) -> (Iommu, MachineMemory) {
        let mut log = p2m_core::events::OpLog::default();
        let mut mem = MachineMemory::new();
        let mut io = Iommu::new(Vendor::Amd, HwSemantics::CONSERVATIVE, &mut mem);
        for (i, op) in ops.iter().enumerate() {
            let seq = i as u64 + 1;
            match *op {
                IoOp::Map(g, n, m, p) => {
                    if per_page {
                        for k in 0..n {
                            io.iommu_map_pages(&mut mem, sw, g + k, 1, m + k, p, seq, &mut log);
                        }
                    } else {
                        io.iommu_map_pages(&mut mem, sw, g, n, m, p, seq, &mut log);
                    }
                }
                IoOp::Unmap(g, n) => {
                    if per_page {
                        for k in 0..n {
                            io.iommu_unmap_pages(&mut mem, sw, g + k, 1, seq);
                        }
                    } else {
                        io.iommu_unmap_pages(&mut mem, sw, g, n, seq);
                    }
                }
            }
        }
        (io, mem)
    }

    #[test]
    fn range_ops_equal_per_page_loops() {
        let mut rng = Lcg(7);
        for rev in ["committed", "xen-4.6-pre", "fixed"] {
            let mut sw = sw46(rev);
            for case in 0..300 {
                if case == 150 {
                    // Also with the flush on permission changes (more map events).
                    sw.amd_map_flush_on_perm_change = !sw.amd_map_flush_on_perm_change;
                }
                let mut ops = Vec::new();
                for _ in 0..1 + rng.below(12) {
                    let g = rng.below(4 * 512);
                    let n = match rng.below(4) {
                        0 => 1,
                        1 => 1 + rng.below(40),
                        2 => 512 - g % 512 + rng.below(2) * 512,
                        _ => 1 + rng.below(1024),
                    };
                    let off = [0, 0, 0, 1, 0x1000][rng.below(5) as usize];
                    let perm = if rng.below(3) == 0 {
                        IommuPerm::R
                    } else {
                        IommuPerm::RW
                    };
                    ops.push(if rng.below(4) == 0 {
                        IoOp::Unmap(g, n)
                    } else {
                        IoOp::Map(g, n, 0x100000 + g + off, perm)
                    });
                }
                let (a, am) = apply(&ops, false, &sw);
                let (b, bm) = apply(&ops, true, &sw);
                assert_eq!(state(&a, &am), state(&b, &bm), "{rev} case {case}: {ops:?}");
            }
        }
    }

    /// A 1 GiB range with a pre-loaded count: the 2 MiB merges and the 1 GiB merge
    /// happen at the same pages as in the per-page loop.
    #[test]
    fn one_gib_range_equals_per_page_loop() {
        let sw = sw46("committed");
        let g = 0x40000;
        let ops = [
            IoOp::Map(g + 3, 100, 0x4000003, IommuPerm::RW),
            IoOp::Map(g + 0x1000, 5, 0x4001000, IommuPerm::R),
            IoOp::Map(g, 1 << 18, 0x4000000, IommuPerm::RW),
            IoOp::Unmap(g + 0x20000, 0x300),
            IoOp::Map(g, 1 << 18, 0x4000000, IommuPerm::R),
        ];
        let (a, am) = apply(&ops, false, &sw);
        let (b, bm) = apply(&ops, true, &sw);
        assert_eq!(state(&a, &am), state(&b, &bm));
    }
}
