//! The seed scenarios of MODEL.md §5, plus one scenario for each `fixed`-only
//! switch, run against the model. For each one, the test checks that the stale
//! permission or freed-frame walk shows up under the revision that has the hole,
//! and does not show up under the revisions that close it.

use p2m_core::frames::{FrameState, TableOwner};
use p2m_core::walk::{Translation, WalkFault};
use p2m_core::xen46::domain::Domain;
use p2m_core::*;

fn dom(mode: Mode, vendor: Vendor, share: bool, rev: &str) -> Domain {
    Domain::new(
        Config::new(mode, vendor, share),
        Revision::by_name(rev).unwrap_or_else(|| panic!("unknown revision {rev}")),
    )
}

fn set(d: &mut Domain, gfn: u64, mfn: Mfn, order: u32, t: P2mType) {
    d.set_entry(gfn, mfn, order, t, P2mAccess::Rwx)
        .unwrap_or_else(|e| panic!("set_entry({gfn:#x}, {mfn}, {order}, {t}) failed: {e}"));
}

fn range(start: u64, end: u64) -> GfnRange {
    GfnRange { start, end }
}

/// Every translation the device can get for `gfn`, with its (mfn, perm).
fn reach(d: &Domain, gfn: u64) -> Vec<(u64, IommuPerm, ViewSource)> {
    d.device_view(GfnRange::of_order(gfn, 0))
        .translations
        .iter()
        .map(|(t, s)| (t.mfn, t.perm, *s))
        .collect()
}

/// Translations for `gfn` in the current tables only.
fn current(d: &Domain, gfn: u64) -> Vec<Translation> {
    d.current_view(GfnRange::of_order(gfn, 0)).translations
}

fn cached_translations(v: &DeviceView) -> Vec<&Translation> {
    v.translations
        .iter()
        .filter(|(_, s)| matches!(s, ViewSource::Cached { .. }))
        .map(|(t, _)| t)
        .collect()
}

fn freed_faults(v: &DeviceView) -> Vec<&WalkFault> {
    v.faults
        .iter()
        .filter(|(f, _)| matches!(f, WalkFault::FreedFrame { .. }))
        .map(|(f, _)| f)
        .collect()
}

fn non_table_faults(v: &DeviceView) -> Vec<&WalkFault> {
    v.faults
        .iter()
        .filter(|(f, _)| matches!(f, WalkFault::NonTableFrame { .. }))
        .map(|(f, _)| f)
        .collect()
}

/// The p2m level-1 tables that are live now.
fn live_p2m_l1_tables(d: &Domain) -> Vec<u64> {
    d.mem
        .ever_allocated()
        .iter()
        .copied()
        .filter(|&f| {
            matches!(
                d.mem.info(f).map(|i| i.state),
                Some(FrameState::Table {
                    owner: TableOwner::P2m,
                    level: 1
                })
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------
// a. George Dunlap's case (seed thread): NPT, shared AMD tables, patch-v1.
// ---------------------------------------------------------------------------

fn george(rev: &str) -> Domain {
    let mut d = dom(Mode::Npt, Vendor::Amd, true, rev);
    set(&mut d, 0x200, Mfn(0x100200), 0, P2mType::RamRw);
    set(&mut d, 0x200, INVALID_MFN, 9, P2mType::Invalid);
    d
}

#[test]
fn george_empty_leaf_over_intermediate_patch_v1_leaks() {
    let d = george("patch-v1");
    assert_eq!(d.get_entry(0x200), None, "the p2m must no longer map 0x200");
    assert_eq!(d.mem.free_count(), 1, "the L1 table is freed");
    let v = d.device_view(range(0x200, 0x400));
    let stale: Vec<_> = cached_translations(&v)
        .into_iter()
        .filter(|t| t.range.contains(0x200) && t.mfn == 0x100200)
        .collect();
    let freed = freed_faults(&v);
    assert!(
        !stale.is_empty() || !freed.is_empty(),
        "patch-v1 hole (George Dunlap): intermediate entry replaced by an empty leaf \
         without a flush; the stale IOTLB/PSC must still reach gfn 0x200 or walk \
         the freed L1 table. view: {v:?}"
    );
    // With this model both show: the IOTLB record for 0x200 and the PSC record
    // walking into the freed L1 table.
    assert!(
        !stale.is_empty(),
        "patch-v1 hole: stale IOTLB record for 0x200 -> 0x100200 expected: {v:?}"
    );
    assert!(
        stale.iter().all(|t| t.perm == IommuPerm::RW),
        "patch-v1 hole: the stale record keeps rw: {v:?}"
    );
    assert!(
        !freed.is_empty(),
        "patch-v1 hole: the PSC record points into the freed L1 table: {v:?}"
    );
}

#[test]
fn george_empty_leaf_over_intermediate_closed_in_committed_and_fixed() {
    for rev in ["committed", "fixed", "660fd65d55", "edb9531263"] {
        let d = george(rev);
        let v = d.device_view(range(0x200, 0x400));
        assert!(
            v.translations.is_empty() && v.faults.is_empty(),
            "{rev}: George's empty-leaf hole must be closed (iommu_old_flags = ~0 \
             forces the flush): {v:?}"
        );
        assert!(
            d.cache_records().is_empty(),
            "{rev}: the order-9 flush must drop every record: {:?}",
            d.cache_records()
        );
    }
}

// ---------------------------------------------------------------------------
// b. Pre-patch EPT: ram_rw -> ram_ro with the same mfn.
// ---------------------------------------------------------------------------

fn ept_rw_to_ro(share: bool, rev: &str) -> Domain {
    let mut d = dom(Mode::Ept, Vendor::Vtd, share, rev);
    set(&mut d, 0x10, Mfn(0x100010), 0, P2mType::RamRw);
    set(&mut d, 0x10, Mfn(0x100010), 0, P2mType::RamRo);
    d
}

#[test]
fn pre_ept_type_change_separate_tables_keep_write() {
    let d = ept_rw_to_ro(false, "xen-4.6-pre");
    assert_eq!(d.get_entry(0x10).map(|e| e.p2mt), Some(P2mType::RamRo));
    assert_eq!(d.stats.need_modify_cleared, 1);
    let cur = current(&d, 0x10);
    assert!(
        cur.iter().any(|t| t.mfn == 0x100010 && t.perm.write),
        "xen-4.6-pre hole (need_modify_vtd_table cleared on same mfn): the separate \
         VT-d table must still grant write to 0x10: {cur:?}"
    );
}

#[test]
fn pre_ept_type_change_separate_tables_fixed_by_6c0e4ad608() {
    for rev in ["6c0e4ad608", "committed", "fixed"] {
        let d = ept_rw_to_ro(false, rev);
        let r = reach(&d, 0x10);
        assert!(
            !r.is_empty()
                && r.iter()
                    .all(|(m, p, _)| *m == 0x100010 && *p == IommuPerm::R),
            "{rev}: ram_rw -> ram_ro must leave the device read-only on 0x10 \
             (6c0e4ad608 keeps need_modify_vtd_table when IOMMU flags differ): {r:?}"
        );
    }
}

#[test]
fn pre_ept_type_change_shared_iotlb_keeps_write() {
    let d = ept_rw_to_ro(true, "xen-4.6-pre");
    let cur = current(&d, 0x10);
    assert!(
        cur.iter().all(|t| !t.perm.write),
        "shared EPT: the EPT entry itself is read-only now: {cur:?}"
    );
    let r = reach(&d, 0x10);
    assert!(
        r.iter().any(|(m, p, s)| *m == 0x100010
            && p.write
            && matches!(s, ViewSource::Cached { nonleaf: false, .. })),
        "xen-4.6-pre hole (shared EPT, no iommu_pte_flush on same mfn): the IOTLB \
         record must keep rw on 0x10: {r:?}"
    );
}

#[test]
fn pre_ept_type_change_shared_fixed_by_6c0e4ad608() {
    for rev in ["6c0e4ad608", "committed", "fixed"] {
        let d = ept_rw_to_ro(true, rev);
        let r = reach(&d, 0x10);
        assert!(
            !r.is_empty()
                && r.iter()
                    .all(|(m, p, _)| *m == 0x100010 && *p == IommuPerm::R),
            "{rev}: shared EPT ram_rw -> ram_ro must be flushed (read-only only): {r:?}"
        );
    }
}

// ---------------------------------------------------------------------------
// c. Pre-patch NPT/shadow: intermediate tables freed before the IOMMU step.
// ---------------------------------------------------------------------------

/// Before 660fd65d55, an empty 2 MiB entry over an L1 table leaves `old_mfn` 0, so the
/// shared AMD path does not flush at all, and (before 960265fbd8) the L1 table is
/// freed straight after the write: the PSC record then walks a freed frame.
fn npt_empty_over_l1(rev: &str) -> Domain {
    let mut d = dom(Mode::Npt, Vendor::Amd, true, rev);
    set(&mut d, 0x200, Mfn(0x100200), 0, P2mType::RamRw);
    set(&mut d, 0x200, INVALID_MFN, 9, P2mType::Invalid);
    d
}

#[test]
fn pre_npt_shared_empty_superpage_walks_freed_table() {
    for rev in ["xen-4.6-pre", "960265fbd8", "c0a85795d8"] {
        let d = npt_empty_over_l1(rev);
        let v = d.device_view(range(0x200, 0x400));
        assert!(
            !freed_faults(&v).is_empty(),
            "{rev} hole (p2m-pt pre-660fd65d55: old_mfn stays 0 for an empty entry, \
             no amd_iommu_flush_pages): a PSC record must walk the freed L1 table: {v:?}"
        );
        assert!(
            cached_translations(&v)
                .iter()
                .any(|t| t.mfn == 0x100200 && t.perm.write),
            "{rev} hole: the IOTLB record 0x200 -> 0x100200 rw must remain: {v:?}"
        );
    }
}

#[test]
fn npt_shared_empty_superpage_clean_in_committed_and_fixed() {
    for rev in ["committed", "fixed"] {
        let d = npt_empty_over_l1(rev);
        let v = d.device_view(range(0x200, 0x400));
        assert!(
            v.translations.is_empty() && v.faults.is_empty(),
            "{rev}: the freed-L1 walk must be flushed: {v:?}"
        );
    }
}

/// A 2 MiB leaf whose frame equals the replaced L1 table's frame: before 660fd65d55
/// `old_mfn` is the table frame and equals the new mfn, so `old_mfn != mfn` is false
/// and nothing is flushed; the L1 table (now guest data) is already freed.
fn npt_leaf_on_own_table(rev: &str) -> (Domain, u64) {
    let mut d = dom(Mode::Npt, Vendor::Amd, true, rev);
    set(&mut d, 0x200, Mfn(0x100200), 0, P2mType::RamRw);
    let l1 = live_p2m_l1_tables(&d);
    assert_eq!(l1.len(), 1, "one p2m L1 table expected, got {l1:?}");
    set(&mut d, 0x200, Mfn(l1[0]), 9, P2mType::RamRw);
    (d, l1[0])
}

#[test]
fn pre_npt_shared_superpage_over_table_same_frame_walks_freed_table() {
    let (d, l1) = npt_leaf_on_own_table("xen-4.6-pre");
    let v = d.device_view(range(0x200, 0x400));
    assert!(
        freed_faults(&v)
            .iter()
            .any(|f| matches!(f, WalkFault::FreedFrame { frame, .. } if *frame == l1)),
        "xen-4.6-pre hole (old_mfn == new mfn hides the intermediate replacement, \
         table freed before/without flush): PSC walk through freed L1 {l1:#x}: {v:?}"
    );
    assert!(
        cached_translations(&v).iter().any(|t| t.mfn == 0x100200),
        "xen-4.6-pre hole: stale 0x200 -> 0x100200 IOTLB record: {v:?}"
    );
    for rev in ["committed", "fixed"] {
        let (d, _) = npt_leaf_on_own_table(rev);
        let v = d.device_view(range(0x200, 0x400));
        assert!(
            freed_faults(&v).is_empty() && cached_translations(&v).is_empty(),
            "{rev}: replacing an intermediate entry must flush (iommu_old_flags = ~0): {v:?}"
        );
    }
}

/// The brief's sequence: a 2 MiB leaf with a real, different frame over the L1 table.
/// Pre flushes here (`old_mfn` = table frame != new mfn), so the end state is clean
/// in every revision.
#[test]
fn npt_shared_superpage_over_table_other_frame_is_flushed_everywhere() {
    for rev in ["xen-4.6-pre", "960265fbd8", "committed", "fixed"] {
        let mut d = dom(Mode::Npt, Vendor::Amd, true, rev);
        set(&mut d, 0x200, Mfn(0x100200), 0, P2mType::RamRw);
        set(&mut d, 0x200, Mfn(0x100400), 9, P2mType::RamRw);
        let v = d.device_view(range(0x200, 0x400));
        assert!(
            v.faults.is_empty() && cached_translations(&v).is_empty(),
            "{rev}: order-9 flush expected: {v:?}"
        );
        assert!(v
            .translations
            .iter()
            .all(|(t, _)| t.mfn == 0x100400 + (t.range.start - 0x200)));
    }
}

/// Pre-960265fbd8: `p2m_pt_set_entry` freed the replaced L1 table right after the write,
/// before `amd_iommu_flush_pages` of the same call. The end state hides it (the flush
/// follows), but the free event records what still reached the frame at that moment: the
/// paging-structure record of the old L2 entry. From 960265fbd8 on, the free comes after
/// the flush and nothing reaches it.
#[test]
fn pre_npt_early_free_window_is_visible() {
    for (rev, early) in [
        ("xen-4.6-pre", true),
        ("6c0e4ad608", true),
        ("960265fbd8", false),
        ("committed", false),
        ("fixed", false),
    ] {
        let mut d = dom(Mode::Npt, Vendor::Amd, true, rev);
        set(&mut d, 0x200, Mfn(0x100200), 0, P2mType::RamRw);
        set(&mut d, 0x200, Mfn(0x100400), 9, P2mType::RamRw);
        let frees = &d.log.frees;
        assert_eq!(frees.len(), 1, "{rev}: the L1 table is freed: {frees:?}");
        let reached = !frees[0].reaches.is_empty();
        assert_eq!(
            reached, early,
            "{rev}: a record still reaching the L1 table when it was freed: {frees:?}"
        );
        if early {
            assert!(matches!(
                frees[0].reaches[0].via,
                p2m_core::events::ReachVia::CachedWalk { seq: 2 }
            ));
            // ... and by the end of the op the flush has dropped it.
            let v = d.device_view(range(0x200, 0x400));
            assert!(freed_faults(&v).is_empty());
        }
    }
}

/// Shadow with the global share flag: before c0a85795d8 p2m-pt takes the shared
/// path (flush only) although the IOMMU walks its own tables, so they never get
/// the mapping (under-permissive).
#[test]
fn pre_shadow_share_flag_skips_separate_tables() {
    for vendor in [Vendor::Amd, Vendor::Vtd] {
        for rev in ["xen-4.6-pre", "6c0e4ad608", "960265fbd8"] {
            let mut d = dom(Mode::Shadow, vendor, true, rev);
            set(&mut d, 0x300, Mfn(0x100300), 0, P2mType::RamRw);
            assert!(d.get_entry(0x300).is_some());
            let cur = current(&d, 0x300);
            assert!(
                cur.is_empty(),
                "{rev}/{vendor:?} hole (p2m-pt uses global iommu_hap_pt_share for shadow): \
                 separate IOMMU tables must lack 0x300: {cur:?}"
            );
        }
        for rev in ["c0a85795d8", "committed", "fixed"] {
            let mut d = dom(Mode::Shadow, vendor, true, rev);
            set(&mut d, 0x300, Mfn(0x100300), 0, P2mType::RamRw);
            let cur = current(&d, 0x300);
            assert!(
                cur.iter()
                    .any(|t| t.mfn == 0x100300 && t.perm == IommuPerm::RW),
                "{rev}/{vendor:?}: shadow ignores the share flag, the separate table \
                 maps 0x300 -> 0x100300 rw: {cur:?}"
            );
        }
    }
}

// ---------------------------------------------------------------------------
// d. One scenario per fixed-only switch: hole in committed, closed in fixed.
// ---------------------------------------------------------------------------

/// `ept_need_modify_requires_present_leaf`: a 2 MiB leaf whose frame equals the L1
/// table frame the intermediate entry pointed to; Xen compares `ept_entry->mfn`
/// (the table frame) and `sa_p2mt` (0 = ram_rw) and skips the IOMMU update.
fn ept_leaf_on_own_table(rev: &str) -> (Domain, u64) {
    let mut d = dom(Mode::Ept, Vendor::Vtd, false, rev);
    set(&mut d, 0x200, Mfn(0x100200), 0, P2mType::RamRw);
    let l1 = live_p2m_l1_tables(&d);
    assert_eq!(l1.len(), 1, "one EPT L1 table expected, got {l1:?}");
    set(&mut d, 0x200, Mfn(l1[0]), 9, P2mType::RamRw);
    (d, l1[0])
}

#[test]
fn committed_ept_need_modify_on_intermediate_entry_keeps_old_mapping() {
    let (d, l1) = ept_leaf_on_own_table("committed");
    assert_eq!(d.get_entry(0x200).map(|e| e.mfn), Some(Mfn(l1)));
    let r = reach(&d, 0x200);
    assert!(
        r.iter().any(|(m, _, _)| *m == 0x100200),
        "committed hole (need_modify_vtd_table cleared for an intermediate entry whose \
         table frame equals the new mfn): VT-d must still map 0x200 -> 0x100200: {r:?}"
    );
    assert!(
        current(&d, 0x201).is_empty(),
        "committed hole: the rest of the 2 MiB range is never mapped in VT-d"
    );
}

#[test]
fn fixed_ept_need_modify_on_intermediate_entry_updates_iommu() {
    let (d, l1) = ept_leaf_on_own_table("fixed");
    let r = reach(&d, 0x200);
    assert!(
        !r.is_empty() && r.iter().all(|(m, _, _)| *m == l1),
        "fixed: VT-d must map 0x200 -> {l1:#x} only (no stale 0x100200): {r:?}"
    );
    let r = reach(&d, 0x3ff);
    assert!(
        r.iter().any(|(m, _, _)| *m == l1 + 0x1ff),
        "fixed: the whole 2 MiB range is mapped: {r:?}"
    );
}

/// `amd_map_flush_on_perm_change`: shadow + AMD separate tables, rw -> ro same mfn:
/// `set_iommu_pde_present` reports no flush when only the permission changes.
fn amd_perm_change(rev: &str) -> Domain {
    let mut d = dom(Mode::Shadow, Vendor::Amd, false, rev);
    set(&mut d, 0x40, Mfn(0x100040), 0, P2mType::RamRw);
    set(&mut d, 0x40, Mfn(0x100040), 0, P2mType::RamRo);
    d
}

#[test]
fn committed_amd_map_perm_reduction_not_flushed() {
    let d = amd_perm_change("committed");
    let cur = current(&d, 0x40);
    assert!(
        cur.iter().all(|t| t.perm == IommuPerm::R),
        "the AMD PTE itself is read-only: {cur:?}"
    );
    let r = reach(&d, 0x40);
    assert!(
        r.iter().any(|(m, p, s)| *m == 0x100040
            && p.write
            && matches!(s, ViewSource::Cached { nonleaf: false, .. })),
        "committed hole (amd_iommu_map_page flushes only on address change): the \
         IOTLB record must keep rw on 0x40: {r:?}"
    );
}

#[test]
fn fixed_amd_map_perm_reduction_flushed() {
    let d = amd_perm_change("fixed");
    let r = reach(&d, 0x40);
    assert!(
        !r.is_empty()
            && r.iter()
                .all(|(m, p, _)| *m == 0x100040 && *p == IommuPerm::R),
        "fixed: permission reduction on AMD must be flushed: {r:?}"
    );
}

/// `pt_split_1g_keeps_leaf_nlevel`: splitting a shared 1 GiB NPT page ORs
/// next-level 1 into each 2 MiB leaf, so the AMD IOMMU walks guest data as a table.
fn npt_split_1g(rev: &str) -> Domain {
    let mut d = dom(Mode::Npt, Vendor::Amd, true, rev);
    set(&mut d, 0, Mfn(0x40000 * 8), 18, P2mType::RamRw);
    set(&mut d, 0x200, Mfn(0x100200), 0, P2mType::RamRw);
    d
}

#[test]
fn committed_npt_1g_split_sets_next_level_on_2m_leaves() {
    let d = npt_split_1g("committed");
    let v = d.device_view(range(0, 0x40000));
    assert!(
        !non_table_faults(&v).is_empty(),
        "committed hole (p2m_next_level ORs next-level 1 into split 2 MiB leaves): \
         the IOMMU must walk guest data as an L1 table: faults {:?}",
        v.faults
    );
    let v = d.device_view(range(0x400, 0x600));
    assert!(
        v.faults.iter().any(|(f, s)| *s == ViewSource::Current
            && matches!(f, WalkFault::NonTableFrame { frame, .. } if *frame == 0x40000 * 8 + 0x400)),
        "committed hole: gfn 0x400's 2 MiB leaf is walked as a table at its data frame: {v:?}"
    );
}

#[test]
fn fixed_npt_1g_split_keeps_2m_leaves() {
    let d = npt_split_1g("fixed");
    let v = d.device_view(range(0, 0x40000));
    assert!(
        v.faults.is_empty(),
        "fixed: split 2 MiB leaves stay leaves: {:?}",
        v.faults
    );
    let r = reach(&d, 0x400);
    assert!(
        !r.is_empty()
            && r.iter()
                .all(|(m, p, _)| *m == 0x40000 * 8 + 0x400 && *p == IommuPerm::RW),
        "fixed: 0x400 still maps to its 1 GiB frame: {r:?}"
    );
    let r = reach(&d, 0x200);
    assert!(
        !r.is_empty() && r.iter().all(|(m, _, _)| *m == 0x100200),
        "fixed: 0x200 maps to the new 4K frame only: {r:?}"
    );
}

/// `iommu_flags_require_present_entry`: `ram_rw` with `INVALID_MFN` writes an empty
/// entry, but the separate IOMMU step maps with `p2m_get_iommu_flags(ram_rw)`.
fn invalid_mfn_ram_rw(mode: Mode, vendor: Vendor, rev: &str) -> Domain {
    let mut d = dom(mode, vendor, false, rev);
    set(&mut d, 0x5, INVALID_MFN, 0, P2mType::RamRw);
    d
}

#[test]
fn committed_invalid_mfn_ram_rw_maps_bogus_frame() {
    for (mode, vendor) in [
        (Mode::Ept, Vendor::Vtd),
        (Mode::Npt, Vendor::Amd),
        (Mode::Shadow, Vendor::Vtd),
    ] {
        let d = invalid_mfn_ram_rw(mode, vendor, "committed");
        assert_eq!(
            d.get_entry(0x5),
            None,
            "{mode:?}: the p2m maps nothing at 0x5"
        );
        let r = reach(&d, 0x5);
        assert!(
            !r.is_empty(),
            "committed hole ({mode:?}: separate IOMMU step maps INVALID_MFN with \
             ram_rw's flags): the device must reach a bogus frame at 0x5: {r:?}"
        );
    }
}

#[test]
fn fixed_invalid_mfn_ram_rw_maps_nothing() {
    for (mode, vendor) in [
        (Mode::Ept, Vendor::Vtd),
        (Mode::Npt, Vendor::Amd),
        (Mode::Shadow, Vendor::Vtd),
    ] {
        let d = invalid_mfn_ram_rw(mode, vendor, "fixed");
        let r = reach(&d, 0x5);
        assert!(
            r.is_empty(),
            "fixed ({mode:?}): an empty p2m entry must be unmapped in the IOMMU: {r:?}"
        );
    }
}

/// Found by the `ept` fuzz target: a `ram_rw` leaf for mfn 0 with access `n` has r=w=x=0,
/// mfn 0 and type 0, but `epte_get_entry_emt()` gives it a memory type, so the entry is
/// non-zero and `ept_get_entry` reports it (`is_epte_valid`).
#[test]
fn ept_ram_rw_mfn0_access_n_is_a_valid_entry() {
    for share in [false, true] {
        let mut d = dom(Mode::Ept, Vendor::Vtd, share, "fixed");
        d.set_entry(0x40200, Mfn(0), 0, P2mType::RamRw, P2mAccess::N)
            .expect("set_entry");
        let e = d.get_entry(0x40200).expect("valid entry");
        assert_eq!(
            (e.mfn, e.p2mt, e.access),
            (Mfn(0), P2mType::RamRw, P2mAccess::N)
        );
    }
}
