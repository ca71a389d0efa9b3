//! The three deep-hole revisions of the master line (test-only, not Xen history; issue 13
//! item 4): each one's hole on a hand-built deep state, the same ops clean under
//! `xen-master` and `master-fixed`, and the nearest shallow states clean under the planted
//! revision too.
//!
//! * `deep-coalesce-short` (`coalesce_compares_halves` off): leaf marker updates do not
//!   compare the table's two halves, so half a table of agreeing 4 KiB maps next to an
//!   empty half — or two halves from different frames — coalesce into one superpage.
//! * `deep-free-empty-short` (`free_empty_checks_halves` off): the free-empty test does not
//!   check the other half, so a table whose other half is a run of leaves is freed once an
//!   unmap empties its own half.
//! * `deep-last-unmap-noflush` (`emptying_unmap_sets_modified` off): the unmap that empties
//!   a table reports `IOMMU_FLUSHF_all` without `MODIFIED`; AMD then flushes nothing. Not
//!   deep: the last test shows its two-op form.
//!
//! Why the first two are deep: a 2 MiB populate, a 2 MiB give-back and an IOMMU shatter all
//! leave a table uniform (every entry agreeing, or every entry empty), and the markers of a
//! uniform table claim both halves *with* their comparison satisfied. A half that is
//! claimed but does not continue the other one takes 256 agreeing 4 KiB writes.

use p2m_core::callers::{CallerOp, HvmMemType};
use p2m_core::events::Freed;
use p2m_core::walk::Translation;
use p2m_core::*;

const REGION: u64 = 0x200;
const FRAMES: u64 = 0x100200;
const OTHER_FRAMES: u64 = 0x180200;

/// The revisions that must stay clean on every deep state below.
const CLEAN: [&str; 2] = ["xen-master", "master-fixed"];

fn dom(mode: Mode, vendor: Vendor, page_sizes: PageSizes, rev: &str) -> Domain {
    let cfg = Config {
        page_sizes,
        ..Config::new(mode, vendor, false)
    };
    Domain::new(
        cfg,
        Revision::by_name(rev).unwrap_or_else(|| panic!("unknown revision {rev}")),
    )
}

fn amd(rev: &str) -> Domain {
    dom(Mode::Npt, Vendor::Amd, PageSizes::Up1g, rev)
}

fn vtd(rev: &str) -> Domain {
    dom(Mode::Ept, Vendor::Vtd, PageSizes::Up2m, rev)
}

fn call(d: &mut Domain, op: CallerOp) {
    let out = d.call(op);
    assert!(d.crashed().is_none(), "{op}: {out:?}");
}

fn populate_run(d: &mut Domain, gfn: u64, mfn: u64, nr: u32) {
    call(d, CallerOp::PopulateRun { gfn, mfn, nr });
}

fn populate(d: &mut Domain, gfn: u64, mfn: u64) {
    call(d, CallerOp::Populate { gfn, mfn, order: 0 });
}

fn decrease_run(d: &mut Domain, gfn: u64, nr: u32) {
    call(d, CallerOp::DecreaseRun { gfn, nr });
}

fn decrease(d: &mut Domain, gfn: u64) {
    call(d, CallerOp::DecreaseReservation { gfn, order: 0 });
}

/// What the IOMMU's current tables translate `gfn` to: `(mfn, leaf pages)`.
fn iommu_at(d: &Domain, gfn: u64) -> Option<(u64, u64)> {
    let v = d.current_view(GfnRange::of_order(gfn, 0));
    v.translations
        .iter()
        .find(|t: &&Translation| t.range.contains(gfn))
        .map(|t| (t.mfn + (gfn - t.range.start), t.leaf_pages))
}

/// What the p2m maps at `gfn` (a frame for a present RAM entry).
fn p2m_at(d: &Domain, gfn: u64) -> Option<u64> {
    d.get_entry(gfn)
        .filter(|e| e.p2mt == P2mType::RamRw && e.mfn != INVALID_MFN)
        .map(|e| e.mfn.0)
}

/// The IOMMU agrees with the p2m on every page of the 2 MiB region at [`REGION`].
fn region_in_sync(d: &Domain) -> bool {
    (REGION..REGION + 512).all(|g| iommu_at(d, g).map(|t| t.0) == p2m_at(d, g))
}

/// Guest pages the last op freed while the device could still reach them.
fn freed_reachable_pages(d: &Domain) -> Vec<u64> {
    d.op_log()
        .frees
        .iter()
        .filter(|f| matches!(f.what, Freed::GuestPage { .. }) && !f.reaches.is_empty())
        .map(|f| f.frame)
        .collect()
}

// ----------------------------------------------------------------------------------------
// deep-coalesce-short

/// Half a table of agreeing 4 KiB maps in an empty 2 MiB region: the planted revision
/// coalesces it with the empty half, so the device reaches the 256 frames after the run,
/// which the guest never got.
#[test]
fn coalesce_short_half_run_next_to_an_empty_half() {
    for mk in [amd, vtd] {
        let mut d = mk("deep-coalesce-short");
        populate_run(&mut d, REGION, FRAMES, 256);
        assert_eq!(p2m_at(&d, REGION + 256), None);
        assert_eq!(
            iommu_at(&d, REGION + 256),
            Some((FRAMES + 256, 512)),
            "{:?}: the empty half is mapped by a 2 MiB superpage",
            d.config()
        );
        for rev in CLEAN {
            let mut d = mk(rev);
            populate_run(&mut d, REGION, FRAMES, 256);
            assert!(region_in_sync(&d), "{rev}");
            assert_eq!(iommu_at(&d, REGION), Some((FRAMES, 1)), "{rev}");
        }
    }
}

/// Two halves each mapped page by page from different 2 MiB frame blocks (both congruent
/// to the gfns): the planted revision coalesces them at the last map, and the first half's
/// block now covers the second half too.
#[test]
fn coalesce_short_two_halves_from_different_frames() {
    for mk in [amd, vtd] {
        let mut d = mk("deep-coalesce-short");
        populate_run(&mut d, REGION + 256, OTHER_FRAMES + 256, 256);
        populate_run(&mut d, REGION, FRAMES, 256);
        assert_eq!(p2m_at(&d, REGION + 300), Some(OTHER_FRAMES + 300));
        assert_eq!(iommu_at(&d, REGION + 300), Some((FRAMES + 300, 512)));
        for rev in CLEAN {
            let mut d = mk(rev);
            populate_run(&mut d, REGION + 256, OTHER_FRAMES + 256, 256);
            populate_run(&mut d, REGION, FRAMES, 256);
            assert!(region_in_sync(&d), "{rev}");
        }
    }
}

/// The shallow neighbours stay clean under the planted revision: a run one page short of
/// a half; a whole region of agreeing maps; a 2 MiB populate whose last
/// page is retyped and back (511 agreeing entries after an IOMMU shatter — what a
/// "last entry not compared" slip would turn into a two-op hole); a half retyped.
#[test]
fn coalesce_short_needs_a_whole_half() {
    for mk in [amd, vtd] {
        let mut d = mk("deep-coalesce-short");
        populate_run(&mut d, REGION, FRAMES, 255);
        assert!(region_in_sync(&d));
        assert_eq!(iommu_at(&d, REGION + 254), Some((FRAMES + 254, 1)));

        // The whole region: the half coalesces early, the later maps shatter it again
        // and write what the superpage held, so the op ends in sync.
        let mut d = mk("deep-coalesce-short");
        populate_run(&mut d, REGION, FRAMES, 512);
        assert!(region_in_sync(&d));

        // The same current tables as xen-master after a shatter and a lone retype.
        let ops = [
            CallerOp::Populate {
                gfn: REGION,
                mfn: FRAMES,
                order: 9,
            },
            CallerOp::SetMemType {
                gfn: REGION + 511,
                nr: 1,
                mem_type: HvmMemType::RamRo,
            },
            CallerOp::SetMemType {
                gfn: REGION + 510,
                nr: 1,
                mem_type: HvmMemType::RamRo,
            },
            CallerOp::SetMemType {
                gfn: REGION + 510,
                nr: 1,
                mem_type: HvmMemType::RamRw,
            },
        ];
        let mut planted = mk("deep-coalesce-short");
        let mut xen = mk("xen-master");
        for op in ops {
            call(&mut planted, op);
            call(&mut xen, op);
            for g in [REGION, REGION + 256, REGION + 510, REGION + 511] {
                assert_eq!(iommu_at(&planted, g), iommu_at(&xen, g), "{op} at {g:#x}");
            }
        }
    }
}

// ----------------------------------------------------------------------------------------
// deep-free-empty-short

/// A half of agreeing maps, and one page of the other half mapped and given back: the
/// planted revision takes the table for empty and frees it with the 256 pages still mapped
/// in the p2m; the device loses them.
#[test]
fn free_empty_short_frees_a_half_full_table() {
    for mk in [amd, vtd] {
        let mut d = mk("deep-free-empty-short");
        populate_run(&mut d, REGION, FRAMES, 256);
        populate(&mut d, REGION + 511, FRAMES + 511);
        decrease(&mut d, REGION + 511);
        assert_eq!(p2m_at(&d, REGION + 7), Some(FRAMES + 7));
        assert_eq!(iommu_at(&d, REGION + 7), None, "{:?}", d.config());
        assert!(
            d.op_log()
                .frees
                .iter()
                .any(|f| matches!(f.what, Freed::Table { level: 1, .. })),
            "the level-1 table was freed"
        );
        for rev in CLEAN {
            let mut d = mk(rev);
            populate_run(&mut d, REGION, FRAMES, 256);
            populate(&mut d, REGION + 511, FRAMES + 511);
            decrease(&mut d, REGION + 511);
            assert!(region_in_sync(&d), "{rev}");
        }
    }
}

/// A whole region mapped page by page, then its lower half given back page by page: the
/// 256th give-back frees the table (the upper half is lost). Compared on the current
/// tables: under `xen-master` the coalesced 2 MiB leaf left by the first give-back's shatter
/// is finding F1, an IOTLB matter.
#[test]
fn free_empty_short_half_emptied_page_by_page() {
    for mk in [amd, vtd] {
        let mut d = mk("deep-free-empty-short");
        populate_run(&mut d, REGION, FRAMES, 512);
        decrease_run(&mut d, REGION, 256);
        assert_eq!(p2m_at(&d, REGION + 300), Some(FRAMES + 300));
        assert_eq!(iommu_at(&d, REGION + 300), None, "{:?}", d.config());
        for rev in CLEAN {
            let mut d = mk(rev);
            populate_run(&mut d, REGION, FRAMES, 512);
            decrease_run(&mut d, REGION, 256);
            assert!(region_in_sync(&d), "{rev}");
        }
    }
}

/// The shallow neighbours stay in sync under the planted revision: 255 pages given back
/// instead of 256; a fresh region's one page mapped and given back (an empty table, freed
/// rightly); a 2 MiB populate given back whole.
#[test]
fn free_empty_short_needs_a_whole_half() {
    for mk in [amd, vtd] {
        let mut d = mk("deep-free-empty-short");
        populate_run(&mut d, REGION, FRAMES, 512);
        decrease_run(&mut d, REGION, 255);
        assert!(region_in_sync(&d));
        assert_eq!(iommu_at(&d, REGION + 300), Some((FRAMES + 300, 1)));

        let mut d = mk("deep-free-empty-short");
        populate(&mut d, REGION + 3, FRAMES + 3);
        populate(&mut d, REGION + 511, FRAMES + 511);
        decrease(&mut d, REGION + 3);
        assert!(region_in_sync(&d));

        let mut d = mk("deep-free-empty-short");
        call(
            &mut d,
            CallerOp::Populate {
                gfn: REGION,
                mfn: FRAMES,
                order: 9,
            },
        );
        call(
            &mut d,
            CallerOp::DecreaseReservation {
                gfn: REGION,
                order: 9,
            },
        );
        assert!(region_in_sync(&d));
    }
}

// ----------------------------------------------------------------------------------------
// deep-last-unmap-noflush

/// AMD: 511 pages mapped page by page (one short of a coalesce) and given back page by
/// page: the last give-back empties the table, reports no `MODIFIED`, and AMD flushes
/// nothing — the page is freed while the IOTLB may still hold it.
#[test]
fn last_unmap_noflush_region_emptied_page_by_page() {
    let mut d = amd("deep-last-unmap-noflush");
    populate_run(&mut d, REGION, FRAMES, 511);
    decrease_run(&mut d, REGION, 511);
    assert_eq!(freed_reachable_pages(&d), vec![FRAMES + 510]);
    for rev in CLEAN {
        let mut d = amd(rev);
        populate_run(&mut d, REGION, FRAMES, 511);
        decrease_run(&mut d, REGION, 511);
        assert_eq!(freed_reachable_pages(&d), Vec::<u64>::new(), "{rev}");
    }
}

/// A page short of emptying the table: every give-back flushes its page.
#[test]
fn last_unmap_noflush_needs_the_table_emptied() {
    let mut d = amd("deep-last-unmap-noflush");
    populate_run(&mut d, REGION, FRAMES, 511);
    decrease_run(&mut d, REGION, 510);
    assert!(freed_reachable_pages(&d).is_empty());
}

/// VT-d: the same slip is harmless, `IOMMU_FLUSHF_all` alone is a domain-selective flush.
#[test]
fn last_unmap_noflush_is_harmless_on_vtd() {
    let mut d = dom(
        Mode::Ept,
        Vendor::Vtd,
        PageSizes::Only4k,
        "deep-last-unmap-noflush",
    );
    populate_run(&mut d, REGION, FRAMES, 512);
    decrease_run(&mut d, REGION, 512);
    assert!(freed_reachable_pages(&d).is_empty());
}

/// Not deep despite its name: the state before the last unmap of a table emptied page by
/// page is also one map into an empty region away, and two ops show the hole.
#[test]
fn last_unmap_noflush_also_shows_in_two_ops() {
    let mut d = amd("deep-last-unmap-noflush");
    populate(&mut d, REGION + 5, FRAMES + 5);
    decrease(&mut d, REGION + 5);
    assert_eq!(freed_reachable_pages(&d), vec![FRAMES + 5]);
}
