//! The master line's IOMMU half (`p2m_core::master::{iommu, x86_iommu, vtd_iommu,
//! amd_iommu_map, pt_contig_markers}`), driven directly: shatter, coalesce, free-empty, the
//! deferred free queue, the flush choices of both vendors, and the range fast path against
//! the literal per-page loop.

use p2m_core::cache::{Invalidation, Issued, RecordKind};
use p2m_core::events::OpLog;
use p2m_core::frames::MachineMemory;
use p2m_core::master::iommu::{FlushFlags, IoCx, Iommu, IommuErr, SeparateTables};
use p2m_core::master::revision::Switches;
use p2m_core::master::x86_iommu::IoPte;
use p2m_core::walk::{walk_root, Translation};
use p2m_core::*;

/// The switches of the master revision `name`.
fn sw(name: &str) -> Switches {
    match Revision::by_name(name).expect("revision").switches {
        p2m_core::Switches::Master(s) => s,
        other => panic!("{name} is not a master revision: {other}"),
    }
}

/// One domain's IOMMU with the machinery an op needs.
struct Env {
    mem: MachineMemory,
    log: OpLog,
    io: Iommu,
    sw: Switches,
    seq: u64,
    /// Invalidations of the last op.
    issued: Vec<Issued>,
}

const RW: IommuPerm = IommuPerm::RW;
const R: IommuPerm = IommuPerm::R;

impl Env {
    fn new(vendor: Vendor, page_sizes: PageSizes, hw: HwSemantics, rev: &str) -> Env {
        let mode = match vendor {
            Vendor::Vtd => Mode::Ept,
            Vendor::Amd => Mode::Npt,
        };
        let cfg = Config {
            page_sizes,
            hw,
            ..Config::new(mode, vendor, false)
        };
        let mut mem = MachineMemory::new();
        let io = Iommu::new(&cfg, &mut mem);
        Env {
            mem,
            log: OpLog::default(),
            io,
            sw: sw(rev),
            seq: 0,
            issued: Vec::new(),
        }
    }

    fn vtd() -> Env {
        Env::new(
            Vendor::Vtd,
            PageSizes::Up1g,
            HwSemantics::CONSERVATIVE,
            "xen-master",
        )
    }

    fn amd() -> Env {
        Env::new(
            Vendor::Amd,
            PageSizes::Up1g,
            HwSemantics::CONSERVATIVE,
            "xen-master",
        )
    }

    /// Runs `f` as one op: a fresh log, the op's sequence number, its invalidations kept.
    fn op<T>(&mut self, f: impl FnOnce(&mut Iommu, &mut IoCx) -> T) -> T {
        self.seq += 1;
        self.log.clear();
        let Env {
            mem,
            log,
            io,
            sw,
            seq,
            ..
        } = self;
        let mut cx = IoCx {
            mem,
            log,
            sw,
            seq: *seq,
        };
        let r = f(io, &mut cx);
        self.issued.clear();
        self.io.caches.take_issued(&mut self.issued);
        self.log.invalidations = self.issued.clone();
        r
    }

    /// `iommu_map` then the caller's flush, returning the flags `iommu_map` accumulated.
    fn map(&mut self, dfn: u64, mfn: u64, n: u64, perm: IommuPerm) -> FlushFlags {
        self.op(|io, cx| {
            let mut ff = FlushFlags::default();
            io.iommu_map(cx, dfn, mfn, n, perm, &mut ff)
                .expect("iommu_map");
            io.iommu_iotlb_flush(cx, dfn, n, ff).unwrap();
            ff
        })
    }

    /// `iommu_unmap` then the caller's flush, returning the flags.
    fn unmap(&mut self, dfn: u64, n: u64) -> FlushFlags {
        self.op(|io, cx| {
            let mut ff = FlushFlags::default();
            io.iommu_unmap(cx, dfn, n, &mut ff).expect("iommu_unmap");
            io.iommu_iotlb_flush(cx, dfn, n, ff).unwrap();
            ff
        })
    }

    fn drain(&mut self) {
        self.op(|io, cx| io.free_queued_pgtables(cx));
    }

    /// The current translations of `[start, end)`.
    fn current(&self, start: u64, end: u64) -> Vec<Translation> {
        walk_root(self.io.io_tables(), &self.mem, GfnRange { start, end }).translations
    }

    /// Every (mfn, perm) a device can reach for `gfn`, from the tables and the caches.
    fn reach(&self, gfn: u64) -> Vec<(u64, IommuPerm)> {
        p2m_core::view::device_view(
            self.io.io_tables(),
            &self.mem,
            self.io.caches.records(),
            GfnRange::of_order(gfn, 0),
        )
        .translations
        .iter()
        .map(|(t, _)| (t.mfn, t.perm))
        .collect()
    }

    fn ctr(&self) -> p2m_core::master::iommu::IommuCounters {
        self.io.counters()
    }
}

fn leaf(start: u64, pages: u64, mfn: u64, perm: IommuPerm, leaf_pages: u64) -> Translation {
    Translation {
        range: GfnRange {
            start,
            end: start + pages,
        },
        mfn,
        perm,
        leaf_pages,
    }
}

fn flags(added: bool, modified: bool, all: bool) -> FlushFlags {
    FlushFlags {
        added,
        modified,
        all,
    }
}

const G2M: u64 = 0x40200; // a 2 MiB-aligned dfn
const M2M: u64 = 0x8_0200; // a 2 MiB-aligned mfn, congruent with G2M modulo 1 GiB too

/// A 2 MiB map, then a 4 KiB remap inside it: the IOMMU superpage is shattered (the new
/// table keeps the other 511 translations and the permission), the remap flushes one page;
/// remapping it back coalesces the table again (`ALL`), and the drain frees the old table.
#[test]
fn shatter_keeps_511_and_remap_back_coalesces() {
    for vendor in [Vendor::Vtd, Vendor::Amd] {
        let mut e = Env::new(
            vendor,
            PageSizes::Up1g,
            HwSemantics::CONSERVATIVE,
            "xen-master",
        );
        let ff = e.map(G2M, M2M, 512, R);
        assert_eq!(ff, flags(true, false, false), "{vendor}: fresh 2M map");
        assert_eq!(e.current(G2M, G2M + 512), vec![leaf(G2M, 512, M2M, R, 512)]);

        // 4 KiB remap inside: shatter (MODIFIED), then the write (old present).
        let ff = e.map(G2M + 5, 0x9_9999, 1, RW);
        assert_eq!(ff, flags(true, true, false), "{vendor}: remap inside");
        assert_eq!(e.ctr().iommu_shatters_2m, 1);
        assert_eq!(e.log.splits.len(), 1, "{vendor}");
        assert_eq!(e.log.splits[0].range, GfnRange::of_order(G2M, 9));
        let want = match vendor {
            Vendor::Vtd => Invalidation::VtdPsi {
                gfn: G2M + 5,
                order: 0,
                ih: false,
            },
            Vendor::Amd => Invalidation::AmdPages {
                gfn: G2M + 5,
                order: 0,
            },
        };
        assert_eq!(
            e.issued,
            vec![Issued {
                cmd: want,
                pages: 1
            }],
            "{vendor}"
        );
        assert_eq!(
            e.current(G2M, G2M + 512),
            vec![
                leaf(G2M, 5, M2M, R, 1),
                leaf(G2M + 5, 1, 0x9_9999, RW, 1),
                leaf(G2M + 6, 506, M2M + 6, R, 1),
            ],
            "{vendor}: 511 translations and their permission kept"
        );
        // The old 2 MiB IOTLB entry survives a 4 KiB invalidation (conservative hardware).
        assert!(e.reach(G2M + 5).contains(&(M2M + 5, R)), "{vendor}");

        // Remap back: the table is contiguous again and coalesces.
        let l1 =
            e.io.table_frames()
                .into_iter()
                .find(|&(_, l)| l == 1)
                .unwrap()
                .0;
        let ff = e.map(G2M + 5, M2M + 5, 1, R);
        assert_eq!(ff, flags(true, true, true), "{vendor}: coalesce");
        assert_eq!(e.ctr().iommu_coalesce_2m, 1);
        let want = match vendor {
            Vendor::Vtd => Invalidation::VtdDsi,
            Vendor::Amd => Invalidation::AmdAllPages,
        };
        assert_eq!(
            e.issued,
            vec![Issued {
                cmd: want,
                pages: 1
            }],
            "{vendor}"
        );
        assert_eq!(e.current(G2M, G2M + 512), vec![leaf(G2M, 512, M2M, R, 512)]);
        assert_eq!(e.io.queued().len(), 1);
        assert_eq!(e.io.queued()[0].frame, l1);
        assert!(e.mem.is_live_table(l1, p2m_core::frames::TableOwner::Iommu));
        e.drain();
        assert_eq!(e.log.frees.len(), 1);
        assert_eq!(e.log.frees[0].frame, l1);
        assert!(
            e.log.frees[0].reaches.is_empty(),
            "{vendor}: flushed before the drain"
        );
        assert!(!e.mem.is_live_table(l1, p2m_core::frames::TableOwner::Iommu));
        assert_eq!(e.ctr().iommu_drains_nonempty, 1);
    }
}

/// A 1 GiB region built from 512 congruent 2 MiB maps coalesces into one 1 GiB leaf at the
/// 512th map, on both vendors.
#[test]
fn one_gib_from_2m_maps_coalesces() {
    for vendor in [Vendor::Vtd, Vendor::Amd] {
        let mut e = Env::new(
            vendor,
            PageSizes::Up1g,
            HwSemantics::CONSERVATIVE,
            "xen-master",
        );
        let (g, m) = (0x4_0000u64, 0x40_0000u64);
        for k in 0..512 {
            let ff = e.map(g + k * 512, m + k * 512, 512, RW);
            let last = k == 511;
            assert_eq!(ff, flags(true, last, last), "{vendor} 2M map {k}");
        }
        assert_eq!(e.ctr().iommu_coalesce_1g, 1, "{vendor}");
        assert_eq!(e.ctr().iommu_coalesce_2m, 0, "{vendor}");
        assert_eq!(
            e.current(g, g + (1 << 18)),
            vec![leaf(g, 1 << 18, m, RW, 1 << 18)]
        );
        assert_eq!(e.io.queued().len(), 1, "{vendor}: the level-2 table");
        assert_eq!(e.io.queued()[0].level, 2);
    }
}

/// A 4 KiB unmap inside a 1 GiB leaf shatters twice (1G into 2M, then 2M into 4K);
/// remapping the page coalesces twice where 1 GiB is a page size (AMD always; VT-d only
/// with `Up1g`: with `Up2m` the level-2 table stays).
#[test]
fn one_gib_shatter_and_double_coalesce() {
    for (vendor, ps, coalesce_1g) in [
        (Vendor::Vtd, PageSizes::Up1g, 1),
        (Vendor::Vtd, PageSizes::Up2m, 0),
        (Vendor::Amd, PageSizes::Up1g, 1),
    ] {
        let mut e = Env::new(vendor, ps, HwSemantics::CONSERVATIVE, "xen-master");
        let (g, m) = (0x4_0000u64, 0x40_0000u64);
        // Without 1 GiB pages `iommu_map` builds the region from 2 MiB leaves.
        e.map(g, m, 1 << 18, RW);
        assert_eq!(e.ctr().iommu_coalesce_1g, 0);
        let ff = e.unmap(g + 0x1234, 1);
        assert_eq!(ff, flags(false, true, false), "{vendor} {ps:?}");
        let up1g = (ps == PageSizes::Up1g) as u64;
        assert_eq!(e.ctr().iommu_shatters_1g, up1g, "{vendor} {ps:?}");
        assert_eq!(e.ctr().iommu_shatters_2m, 1, "{vendor} {ps:?}");
        assert_eq!(e.log.splits.len(), 1 + up1g as usize);
        let ff = e.map(g + 0x1234, m + 0x1234, 1, RW);
        assert_eq!(ff, flags(true, true, true), "{vendor} {ps:?}");
        assert_eq!(e.ctr().iommu_coalesce_2m, 1, "{vendor} {ps:?}");
        assert_eq!(e.ctr().iommu_coalesce_1g, coalesce_1g, "{vendor} {ps:?}");
        let leaf_pages = if coalesce_1g == 1 { 1 << 18 } else { 512 };
        assert!(e
            .current(g, g + (1 << 18))
            .iter()
            .all(|t| t.leaf_pages == leaf_pages && t.mfn - m == t.range.start - g));
        e.drain();
        assert_eq!(e.log.frees.len(), 1 + coalesce_1g as usize);
    }
}

/// `iommu=no-superpages`: VT-d maps 4 KiB only and never coalesces; AMD still coalesces.
#[test]
fn no_superpages_vtd_never_coalesces_amd_does() {
    for vendor in [Vendor::Vtd, Vendor::Amd] {
        let mut e = Env::new(
            vendor,
            PageSizes::Only4k,
            HwSemantics::CONSERVATIVE,
            "xen-master",
        );
        let ff = e.map(G2M, M2M, 512, RW);
        match vendor {
            Vendor::Vtd => {
                assert_eq!(ff, flags(true, false, false));
                assert_eq!(e.ctr().iommu_coalesce_2m, 0);
                assert_eq!(e.current(G2M, G2M + 512), vec![leaf(G2M, 512, M2M, RW, 1)]);
                // Not even once the table is rewritten page by page.
                for k in 0..512 {
                    e.map(G2M + k, M2M + k, 1, R);
                }
                assert_eq!(e.ctr().iommu_coalesce_2m, 0);
            }
            Vendor::Amd => {
                assert_eq!(ff, flags(true, true, true));
                assert_eq!(e.ctr().iommu_coalesce_2m, 1);
                assert_eq!(
                    e.current(G2M, G2M + 512),
                    vec![leaf(G2M, 512, M2M, RW, 512)]
                );
            }
        }
        assert_eq!(
            e.ctr().map_pages,
            if vendor == Vendor::Vtd { 1024 } else { 512 }
        );
    }
}

/// Unmapping the last entry of a table queues the emptied tables (level 1 and 2; level 3
/// stays by the `min_pt_levels` / `paging_mode` bound) and the drain frees them. Flushed
/// first, nothing reaches them; with the flush dropped (`dont_flush`), the cached pointer
/// shows up in the free event.
#[test]
fn emptied_tables_are_queued_and_drained() {
    for vendor in [Vendor::Vtd, Vendor::Amd] {
        for dont_flush in [false, true] {
            let mut e = Env::new(
                vendor,
                PageSizes::Up1g,
                HwSemantics::CONSERVATIVE,
                "xen-master",
            );
            let g = 0x4_0123;
            e.map(g, 0x7777, 1, RW);
            let before: Vec<(u64, u8)> = e.io.table_frames();
            assert_eq!(before.len(), 4, "{vendor}: root, L3, L2, L1");
            e.io.dont_flush = dont_flush;
            e.op(|io, cx| io.iommu_legacy_unmap(cx, g, 1).unwrap());
            assert_eq!(e.ctr().iommu_tables_freed_empty, 2, "{vendor}");
            assert_eq!(
                e.ctr().iommu_queued_while_dont_flush,
                if dont_flush { 2 } else { 0 }
            );
            let queued: Vec<u8> = e.io.queued().iter().map(|q| q.level).collect();
            assert_eq!(queued, vec![1, 2], "{vendor}");
            assert_eq!(e.ctr().iommu_tables_queued, 2);
            assert_eq!(e.log.unlinked.len(), 2);
            if dont_flush {
                assert!(e.issued.is_empty(), "{vendor}: flags (ALL too) dropped");
            } else {
                let want = match vendor {
                    Vendor::Vtd => Invalidation::VtdDsi,
                    Vendor::Amd => Invalidation::AmdAllPages,
                };
                assert_eq!(
                    e.issued,
                    vec![Issued {
                        cmd: want,
                        pages: 1
                    }]
                );
            }
            e.io.dont_flush = false;
            e.drain();
            assert_eq!(e.log.frees.len(), 2);
            for f in &e.log.frees {
                assert_eq!(
                    f.reaches.is_empty(),
                    !dont_flush,
                    "{vendor} dont_flush={dont_flush}: {f:?}"
                );
            }
            assert_eq!(e.io.table_frames().len(), 2, "{vendor}: root and L3 stay");
        }
    }
}

/// Planted `no-min-pt-levels`: the free loop goes past the bound, so the level-3 table is
/// queued too (the root's markers start cleared, so it does not read as empty).
#[test]
fn no_min_pt_levels_frees_level_3() {
    for vendor in [Vendor::Vtd, Vendor::Amd] {
        let mut e = Env::new(
            vendor,
            PageSizes::Up1g,
            HwSemantics::CONSERVATIVE,
            "no-min-pt-levels",
        );
        e.map(0x4_0123, 0x7777, 1, RW);
        e.unmap(0x4_0123, 1);
        let queued: Vec<u8> = e.io.queued().iter().map(|q| q.level).collect();
        assert_eq!(queued, vec![1, 2, 3], "{vendor}");
        assert_eq!(
            e.io.table_frames().len(),
            4,
            "{vendor}: queued tables stay allocated"
        );
        e.drain();
        assert_eq!(e.io.table_frames().len(), 1, "{vendor}: the root");
    }
}

/// The VT-d flush choice: a domain-selective flush for `ALL`, a count that is not a power
/// of two or a misaligned dfn (issued even for `ADDED` only); otherwise page-selective,
/// skipped for `ADDED` only unless Caching Mode; above the address mask, domain-selective.
#[test]
fn vtd_flush_range_choice() {
    let added = flags(true, false, false);
    let modified = flags(false, true, false);
    let cases: [(u64, u64, FlushFlags, bool, u8, Option<Invalidation>); 8] = [
        (0x100, 3, added, false, 18, Some(Invalidation::VtdDsi)),
        (0x102, 4, added, false, 18, Some(Invalidation::VtdDsi)),
        (0x104, 4, added, false, 18, None),
        (
            0x104,
            4,
            added,
            true,
            18,
            Some(Invalidation::VtdPsi {
                gfn: 0x104,
                order: 2,
                ih: false,
            }),
        ),
        (
            0x104,
            4,
            modified,
            false,
            18,
            Some(Invalidation::VtdPsi {
                gfn: 0x104,
                order: 2,
                ih: false,
            }),
        ),
        (0x200, 512, modified, false, 8, Some(Invalidation::VtdDsi)),
        (0x200, 512, added, false, 8, None),
        (
            0x200,
            1,
            flags(true, false, true),
            false,
            18,
            Some(Invalidation::VtdDsi),
        ),
    ];
    for (i, (dfn, n, ff, cm, amask, want)) in cases.into_iter().enumerate() {
        let hw = HwSemantics {
            vtd_caching_mode: cm,
            vtd_max_amask: amask,
            ..HwSemantics::CONSERVATIVE
        };
        let mut e = Env::new(Vendor::Vtd, PageSizes::Up1g, hw, "xen-master");
        e.op(|io, cx| io.iommu_iotlb_flush(cx, dfn, n, ff).unwrap());
        let got: Vec<Invalidation> = e.issued.iter().map(|i| i.cmd).collect();
        assert_eq!(got, want.into_iter().collect::<Vec<_>>(), "case {i}");
        assert_eq!(e.ctr().vtd_psi_skipped, want.is_none() as u64, "case {i}");
    }
    // No pages or no flags: nothing at all.
    let mut e = Env::vtd();
    e.op(|io, cx| io.iommu_iotlb_flush(cx, 0x100, 0, modified).unwrap());
    e.op(|io, cx| {
        io.iommu_iotlb_flush(cx, 0x100, 1, FlushFlags::default())
            .unwrap()
    });
    e.op(|io, cx| io.iommu_iotlb_flush_all(cx, FlushFlags::default()).unwrap());
    assert_eq!(e.ctr(), Default::default());
    // flush_all with ADDED only still issues the domain-selective flush.
    e.op(|io, cx| io.iommu_iotlb_flush_all(cx, added).unwrap());
    assert_eq!(e.ctr().vtd_dsi, 1);
}

/// The AMD flush choice: nothing without `MODIFIED` (so `ALL` alone does nothing); all pages
/// for `ALL` or a wrapping range; one page: order 0; one 2 MiB block: order 9; one 1 GiB
/// block: order 18; otherwise all pages.
#[test]
fn amd_flush_range_choice() {
    let m = flags(false, true, false);
    let cases: [(u64, u64, FlushFlags, Option<Invalidation>); 8] = [
        (0x200, 1, flags(true, false, true), None),
        (0x200, 1, flags(false, false, true), None),
        (
            0x200,
            1,
            flags(false, true, true),
            Some(Invalidation::AmdAllPages),
        ),
        (u64::MAX - 1, 4, m, Some(Invalidation::AmdAllPages)),
        (
            0x205,
            1,
            m,
            Some(Invalidation::AmdPages {
                gfn: 0x205,
                order: 0,
            }),
        ),
        (
            0x205,
            3,
            m,
            Some(Invalidation::AmdPages {
                gfn: 0x205,
                order: 9,
            }),
        ),
        (
            0x3ff,
            2,
            m,
            Some(Invalidation::AmdPages {
                gfn: 0x3ff,
                order: 18,
            }),
        ),
        (0x3_ffff, 2, m, Some(Invalidation::AmdAllPages)),
    ];
    for (i, (dfn, n, ff, want)) in cases.into_iter().enumerate() {
        let mut e = Env::amd();
        e.op(|io, cx| io.iommu_iotlb_flush(cx, dfn, n, ff).unwrap());
        let got: Vec<Invalidation> = e.issued.iter().map(|i| i.cmd).collect();
        assert_eq!(got, want.into_iter().collect::<Vec<_>>(), "case {i}");
    }
    // iommu_iotlb_flush_all(ADDED): ALL without MODIFIED, nothing.
    let mut e = Env::amd();
    e.op(|io, cx| {
        io.iommu_iotlb_flush_all(cx, flags(true, false, false))
            .unwrap()
    });
    assert!(e.issued.is_empty());
}

/// An identical remap: VT-d returns with no flags at all; AMD reports `ADDED` only, which
/// its flush ignores. Without the short-circuit (negative control) both report `MODIFIED`.
#[test]
fn identical_pte_short_circuit() {
    for vendor in [Vendor::Vtd, Vendor::Amd] {
        for rev in ["xen-master", "no-identical-pte-check"] {
            let mut e = Env::new(vendor, PageSizes::Up1g, HwSemantics::CONSERVATIVE, rev);
            e.map(0x123, 0x4567, 1, RW);
            let ff = e.map(0x123, 0x4567, 1, RW);
            let want = match (vendor, rev) {
                (Vendor::Vtd, "xen-master") => flags(false, false, false),
                (Vendor::Amd, "xen-master") => flags(true, false, false),
                _ => flags(true, true, false),
            };
            assert_eq!(ff, want, "{vendor} {rev}");
            assert_eq!(e.issued.is_empty(), rev == "xen-master", "{vendor} {rev}");
        }
    }
}

/// `amd-perm-noflush`: a permission-only remap on AMD is written but reported unchanged,
/// so no flush happens and the old write permission stays cached.
#[test]
fn amd_perm_noflush_leaves_write_cached() {
    for (rev, stale) in [("xen-master", false), ("amd-perm-noflush", true)] {
        let mut e = Env::new(Vendor::Amd, PageSizes::Up1g, HwSemantics::CONSERVATIVE, rev);
        e.map(0x123, 0x4567, 1, RW);
        let ff = e.map(0x123, 0x4567, 1, R);
        assert_eq!(ff.modified, !stale, "{rev}");
        assert_eq!(e.current(0x123, 0x124), vec![leaf(0x123, 1, 0x4567, R, 1)]);
        assert_eq!(e.reach(0x123).contains(&(0x4567, RW)), stale, "{rev}");
    }
}

/// An AMD superpage at mfn 0 is never split: a 4 KiB map inside it crashes the domain
/// (`-EFAULT`), an unmap inside it does nothing. A multi-page map that fails unmaps what it
/// did, flushes everything and clears the flags.
#[test]
fn amd_superpage_at_mfn0() {
    let mut e = Env::amd();
    e.map(0x200, 0, 512, RW);
    let ff = e.unmap(0x205, 1);
    assert_eq!(ff, FlushFlags::default());
    assert_eq!(e.current(0x200, 0x400), vec![leaf(0x200, 512, 0, RW, 512)]);
    assert!(e.io.crashed.is_none());
    let r = e.op(|io, cx| {
        let mut ff = FlushFlags::default();
        let r = io.iommu_map(cx, 0x1fe, 0x5000, 4, RW, &mut ff);
        (r, ff)
    });
    assert_eq!(r.0, Err(IommuErr::Fault));
    assert_eq!(
        r.1,
        FlushFlags::default(),
        "flags cleared after the flush-all"
    );
    assert!(e.io.crashed.is_some());
    assert_eq!(
        e.issued.iter().map(|i| i.cmd).collect::<Vec<_>>(),
        vec![Invalidation::AmdAllPages]
    );
    // The two pages mapped before the failure were unmapped again.
    assert!(e.current(0x1fe, 0x200).is_empty());
    // VT-d has no such exception: the superpage at mfn 0 shatters.
    let mut v = Env::vtd();
    v.map(0x200, 0, 512, RW);
    v.map(0x205, 0x5000, 1, RW);
    assert_eq!(v.ctr().iommu_shatters_2m, 1);
    assert!(v.io.crashed.is_none());
}

/// An unmap inside a superpage shatters it on both vendors even though it allocates
/// nothing else; on VT-d a non-present target gives no flags, on AMD the clear still runs.
#[test]
fn unmap_inside_superpage_shatters() {
    for vendor in [Vendor::Vtd, Vendor::Amd] {
        let mut e = Env::new(
            vendor,
            PageSizes::Up1g,
            HwSemantics::CONSERVATIVE,
            "xen-master",
        );
        e.map(G2M, M2M, 512, RW);
        let ff = e.unmap(G2M + 7, 1);
        assert_eq!(ff, flags(false, true, false), "{vendor}");
        assert_eq!(e.ctr().iommu_shatters_2m, 1);
        assert_eq!(e.current(G2M + 6, G2M + 9).len(), 2);
        let ff = e.unmap(G2M + 7, 1);
        assert_eq!(ff, FlushFlags::default(), "{vendor}: already clear");
        let ff = e.unmap(0x9_0000, 1);
        assert_eq!(ff, FlushFlags::default(), "{vendor}: no table");
    }
}

/// A superpage-order map over a table pointer queues the whole subtree (children first).
#[test]
fn superpage_over_table_queues_subtree() {
    for vendor in [Vendor::Vtd, Vendor::Amd] {
        let mut e = Env::new(
            vendor,
            PageSizes::Up1g,
            HwSemantics::CONSERVATIVE,
            "xen-master",
        );
        let g = 0x8_0000u64; // 1 GiB aligned
        e.map(g + 3, 0x1234, 1, RW);
        e.map(g + 0x400 + 9, 0x2234, 1, RW);
        let ff = e.map(g, 0x4000_0000, 1 << 18, RW);
        assert_eq!(ff, flags(true, true, false), "{vendor}");
        let levels: Vec<u8> = e.io.queued().iter().map(|q| q.level).collect();
        assert_eq!(levels, vec![1, 1, 2], "{vendor}");
        assert_eq!(e.log.unlinked.len(), 3);
        e.drain();
        assert!(e.log.frees.iter().all(|f| f.reaches.is_empty()), "{vendor}");
    }
}

/// Planted `free-queued-immediately`: a coalesced table is freed inside the map, before the
/// caller's flush, while a cached pointer still reaches it.
#[test]
fn free_queued_immediately_frees_before_the_flush() {
    for vendor in [Vendor::Vtd, Vendor::Amd] {
        let mut e = Env::new(
            vendor,
            PageSizes::Up1g,
            HwSemantics::CONSERVATIVE,
            "free-queued-immediately",
        );
        e.map(G2M, M2M, 512, RW);
        e.map(G2M + 5, 0x9_9999, 1, RW);
        e.map(G2M + 5, M2M + 5, 1, RW);
        assert!(e.io.queued().is_empty());
        assert_eq!(e.log.frees.len(), 1, "{vendor}");
        assert!(!e.log.frees[0].reaches.is_empty(), "{vendor}");
    }
}

/// `dont_flush` drops everything the legacy wrappers accumulated, `ALL` included.
#[test]
fn legacy_map_under_dont_flush_drops_flags() {
    for vendor in [Vendor::Vtd, Vendor::Amd] {
        let mut e = Env::new(
            vendor,
            PageSizes::Up1g,
            HwSemantics::CONSERVATIVE,
            "xen-master",
        );
        e.map(G2M, M2M, 512, RW);
        e.map(G2M + 5, 0x9_9999, 1, RW);
        e.io.dont_flush = true;
        e.op(|io, cx| io.iommu_legacy_map(cx, G2M + 5, M2M + 5, 1, RW).unwrap());
        assert_eq!(e.ctr().iommu_coalesce_2m, 1);
        assert!(e.issued.is_empty(), "{vendor}");
        assert_eq!(e.ctr().iommu_queued_while_dont_flush, 1);
        e.io.dont_flush = false;
        e.drain();
        assert!(
            !e.log.frees[0].reaches.is_empty(),
            "{vendor}: the stale pointer"
        );
    }
}

/// Cost: a 1 GiB map with 4 KiB pages only goes through the range fast path (512 level-1
/// tables, not 262,144 calls), and a superpage map or unmap touches one entry.
#[test]
fn one_gib_cost() {
    for vendor in [Vendor::Vtd, Vendor::Amd] {
        let mut e = Env::new(
            vendor,
            PageSizes::Only4k,
            HwSemantics::CONSERVATIVE,
            "xen-master",
        );
        let t = std::time::Instant::now();
        e.map(0x4_0000, 0x100_0000 + 3, 1 << 18, RW);
        e.unmap(0x4_0000, 1 << 18);
        e.map(0x4_0000, 0x100_0000, 1 << 18, RW);
        e.drain();
        assert!(t.elapsed().as_secs() < 5, "{vendor}: {:?}", t.elapsed());
        assert!(e.io.caches.records().len() < 2048, "{vendor}");
        let mut s = Env::new(
            vendor,
            PageSizes::Up1g,
            HwSemantics::CONSERVATIVE,
            "xen-master",
        );
        s.map(0x4_0000, 0x100_0000, 1 << 18, RW);
        assert_eq!(s.io.table_frames().len(), 2, "{vendor}: root and L3");
        s.unmap(0x4_0000, 1 << 18);
        assert_eq!(s.ctr().map_pages, 1 << 18);
    }
}

mod fast_path {
    //! The range fast path against the literal per-page loop: same tables, markers, frames
    //! and generations, queue, cache records, invalidations, op log, flags and counters.

    use super::*;

    #[derive(Clone, Copy, Debug)]
    enum IoOp {
        /// `iommu_map(dfn, mfn, n, perm)` then the caller's flush (or `iommu_legacy_map`).
        Map(u64, u64, u64, IommuPerm, bool),
        /// `iommu_unmap(dfn, n)` then the flush (or `iommu_legacy_unmap`).
        Unmap(u64, u64, bool),
        /// `free_queued_pgtables`.
        Drain,
        /// Toggle `dont_flush`.
        DontFlush,
    }

    /// A small deterministic generator.
    struct Lcg(u64);
    impl Lcg {
        fn below(&mut self, n: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (self.0 >> 33) % n
        }
    }

    /// Merges adjacent ranges.
    fn union(mut v: Vec<GfnRange>) -> Vec<GfnRange> {
        v.sort();
        let mut out: Vec<GfnRange> = Vec::new();
        for r in v {
            match out.last_mut() {
                Some(l) if r.start <= l.end => l.end = l.end.max(r.end),
                _ => out.push(r),
            }
        }
        out
    }

    /// Cache records with adjacent linear leaves merged, sorted.
    fn records(io: &Iommu) -> Vec<String> {
        let mut leaves = Vec::new();
        let mut out = Vec::new();
        for r in io.caches.records() {
            match r.kind {
                RecordKind::Leaf {
                    mfn,
                    perm,
                    leaf_pages,
                } => leaves.push((
                    r.seq,
                    perm,
                    leaf_pages,
                    mfn.wrapping_sub(r.range.start),
                    r.range.start,
                    r.range.end,
                )),
                k => out.push(format!("{:?} {:?} {}", r.range, k, r.seq)),
            }
        }
        // Grouped by linear mapping (frame minus gfn), then merged where adjacent.
        leaves.sort();
        let mut merged: Vec<(u64, IommuPerm, u64, u64, u64, u64)> = Vec::new();
        for l in leaves {
            match merged.last_mut() {
                Some(m) if (m.0, m.1, m.2, m.3) == (l.0, l.1, l.2, l.3) && l.4 <= m.5 => {
                    m.5 = m.5.max(l.5)
                }
                _ => merged.push(l),
            }
        }
        out.extend(merged.iter().map(|l| format!("{l:?}")));
        out.sort();
        out
    }

    /// Everything that must match, as text.
    fn state(e: &Env) -> Vec<String> {
        let mut s = vec![format!("{:?}", e.mem), format!("{:?}", e.io.queued())];
        fn tables<E: IoPte>(pt: &p2m_core::master::x86_iommu::PgTables<E>, s: &mut Vec<String>) {
            for (f, t) in pt.frames() {
                let raw: Vec<u64> = (0..512).map(|i| t.get(i).raw()).collect();
                s.push(format!(
                    "table {f:#x} L{} {raw:x?} markers {:?}",
                    t.level,
                    pt.markers_of(f)
                ));
            }
            s.push(format!("root {:?}", pt.root()));
        }
        match e.io.separate() {
            SeparateTables::Vtd(pt) => tables(pt, &mut s),
            SeparateTables::Amd(pt) => tables(pt, &mut s),
            SeparateTables::None => {}
        }
        s.extend(records(&e.io));
        let c = e.io.counters();
        s.push(format!("{c:?} crashed {:?}", e.io.crashed));
        s.push(format!("invalidations {:?}", e.log.invalidations));
        s.push(format!("changed {:?}", union(e.log.changed.clone())));
        s.push(format!("splits {:?}", e.log.splits));
        s.push(format!("frees {:?}", e.log.frees));
        s.push(format!("bad frees {:?}", e.log.bad_frees));
        s.push(format!("unlinked {:?}", e.log.unlinked));
        s
    }

    fn apply(e: &mut Env, op: IoOp) -> String {
        match op {
            IoOp::Map(g, m, n, p, legacy) => e.op(|io, cx| {
                if legacy {
                    format!("{:?}", io.iommu_legacy_map(cx, g, m, n, p))
                } else {
                    let mut ff = FlushFlags::default();
                    let r = io.iommu_map(cx, g, m, n, p, &mut ff);
                    let f = io.iommu_iotlb_flush(cx, g, n, ff);
                    format!("{r:?} {ff:?} {f:?}")
                }
            }),
            IoOp::Unmap(g, n, legacy) => e.op(|io, cx| {
                if legacy {
                    format!("{:?}", io.iommu_legacy_unmap(cx, g, n))
                } else {
                    let mut ff = FlushFlags::default();
                    let r = io.iommu_unmap(cx, g, n, &mut ff);
                    let f = io.iommu_iotlb_flush(cx, g, n, ff);
                    format!("{r:?} {ff:?} {f:?}")
                }
            }),
            IoOp::Drain => {
                e.drain();
                String::new()
            }
            IoOp::DontFlush => {
                e.io.dont_flush = !e.io.dont_flush;
                String::new()
            }
        }
    }

    /// Runs `ops` with the fast path and with the per-page loop, comparing after each op.
    fn compare(vendor: Vendor, ps: PageSizes, hw: HwSemantics, rev: &str, ops: &[IoOp]) {
        let mut fast = Env::new(vendor, ps, hw, rev);
        let mut slow = Env::new(vendor, ps, hw, rev);
        slow.io.set_range_fast_path(false);
        for (i, &op) in ops.iter().enumerate() {
            let a = apply(&mut fast, op);
            let b = apply(&mut slow, op);
            assert_eq!(
                a, b,
                "{vendor} {ps:?} {rev}: op {i} {op:?} result\nops {ops:?}"
            );
            let (sa, sb) = (state(&fast), state(&slow));
            if sa != sb {
                if std::env::var("DUMP").is_ok() {
                    eprintln!("FAST:\n{}\nSLOW:\n{}", sa.join("\n"), sb.join("\n"));
                }
                for (x, y) in sa.iter().zip(&sb) {
                    if x != y {
                        panic!(
                            "{vendor} {ps:?} {rev}: op {i} {op:?}\nfast {x}\nslow {y}\nops {ops:?}"
                        );
                    }
                }
                panic!("{vendor} {ps:?} {rev}: op {i}: state lengths differ\nops {ops:?}");
            }
        }
    }

    /// A random op over a window of four level-1 tables straddling a 1 GiB boundary, with
    /// mfns biased to congruence (so tables complete and coalesce) and to mfn 0.
    fn random_op(rng: &mut Lcg) -> IoOp {
        let base = 0x3_fe00u64; // two tables below a 1 GiB boundary, two above
        match rng.below(20) {
            0 => return IoOp::Drain,
            1 => return IoOp::DontFlush,
            _ => {}
        }
        let mut g = base + rng.below(4 * 512);
        if rng.below(4) == 0 {
            g &= !511;
        }
        let n = match rng.below(6) {
            0 => 1,
            1 => 1 + rng.below(8),
            2 => 512 - g % 512 + rng.below(2) * 512,
            3 => (512 - g % 512).min(1 + rng.below(600)),
            _ => 1 + rng.below(1200),
        };
        let legacy = rng.below(3) == 0;
        if rng.below(3) == 0 {
            return IoOp::Unmap(g, n, legacy);
        }
        let m = match rng.below(6) {
            0 => g,                       // identity, congruent
            1 => g + 0x10_0000,           // congruent
            2 => g + 0x10_0000 + 1,       // off by one page
            3 => g - base,                // around mfn 0
            4 => g + 0x10_0000 + 512 * 3, // congruent modulo 2M only
            _ => 0x55_5555 + rng.below(4),
        };
        let p = [
            RW,
            RW,
            RW,
            R,
            IommuPerm {
                read: false,
                write: true,
            },
            IommuPerm::NONE,
        ][rng.below(6) as usize];
        IoOp::Map(g, m, n, p, legacy)
    }

    const REVS: [&str; 7] = [
        "xen-master",
        "no-identical-pte-check",
        "amd-perm-noflush",
        "no-min-pt-levels",
        "free-queued-immediately",
        "c8a25eb617-undone",
        "xen-master",
    ];

    #[test]
    fn random_ops_equal_per_page_loop() {
        // `MASTER_IOMMU_CASES=n` runs `n` sequences per configuration (default 25).
        let per: u64 = std::env::var("MASTER_IOMMU_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(25);
        let seed = std::env::var("MASTER_IOMMU_SEED")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2026);
        let mut rng = Lcg(seed);
        let mut cases = 0;
        for (r, rev) in REVS.iter().enumerate() {
            for vendor in [Vendor::Vtd, Vendor::Amd] {
                for ps in [PageSizes::Only4k, PageSizes::Up2m, PageSizes::Up1g] {
                    if vendor == Vendor::Amd && ps == PageSizes::Up2m {
                        continue;
                    }
                    let hw = if r == REVS.len() - 1 {
                        HwSemantics {
                            vtd_caching_mode: true,
                            vtd_max_amask: 4,
                            amd_pde0_keeps_pdc: false,
                            ..HwSemantics::DROP_ON_HIT
                        }
                    } else {
                        HwSemantics::CONSERVATIVE
                    };
                    for _ in 0..per {
                        let ops: Vec<IoOp> = (0..1 + rng.below(25))
                            .map(|_| random_op(&mut rng))
                            .collect();
                        compare(vendor, ps, hw, rev, &ops);
                        cases += 1;
                    }
                }
            }
        }
        assert_eq!(cases, 7 * 5 * per);
    }

    /// Coalescing and emptying in the middle of a 4 KiB run, and a whole 1 GiB at 4 KiB.
    #[test]
    fn completion_inside_a_run_and_one_gib() {
        for vendor in [Vendor::Vtd, Vendor::Amd] {
            for ps in [PageSizes::Only4k, PageSizes::Up2m, PageSizes::Up1g] {
                let g = 0x4_0000u64;
                let ops = [
                    // The tail of a table already mapped: a map of the whole table
                    // completes it at the last changed page, then finds the superpage.
                    IoOp::Map(g + 300, 0x100_0000 + 300, 212, RW, false),
                    IoOp::Map(g + 1, 0x100_0000 + 1, 511, RW, false),
                    IoOp::Drain,
                    // Unmapping a table whose tail is empty frees it at the last present.
                    IoOp::Unmap(g + 600, 100, false),
                    IoOp::Map(g + 512, 0x100_0000 + 512, 40, RW, false),
                    IoOp::Unmap(g + 512, 512, false),
                    IoOp::Drain,
                    // A whole 1 GiB at 4 KiB, then its removal.
                    IoOp::Map(g, 0x100_0000, 1 << 18, RW, true),
                    IoOp::Unmap(g + 7, (1 << 18) - 9, true),
                    IoOp::Drain,
                    // 1 GiB from 2 MiB maps but one 2 MiB block at 4 KiB, whose last page
                    // completes the level-2 table inside a run (1 GiB coalesce where 1G is
                    // a page size), then a 4 KiB unmap shatters 1G and 2M on the way.
                    IoOp::Map(g, 0x100_0000, 0x200 * 300, RW, false),
                    IoOp::Map(
                        g + 0x200 * 301,
                        0x100_0000 + 0x200 * 301,
                        0x200 * 211,
                        RW,
                        false,
                    ),
                    IoOp::Map(
                        g + 0x200 * 300 + 1,
                        0x100_0000 + 0x200 * 300 + 1,
                        511,
                        RW,
                        false,
                    ),
                    IoOp::Map(g + 0x200 * 300, 0x100_0000 + 0x200 * 300, 1, RW, false),
                    IoOp::Unmap(g + 0x1234, 1, false),
                    IoOp::Map(g + 0x1234, 0x100_0000 + 0x1234, 1, RW, false),
                    IoOp::Drain,
                ];
                compare(vendor, ps, HwSemantics::CONSERVATIVE, "xen-master", &ops);
            }
        }
    }
}
