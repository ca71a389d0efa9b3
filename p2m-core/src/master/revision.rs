//! The master line's revisions as sets of named switches.
//!
//! The reference revision `xen-master` is the pinned commit `c447b7308b`. Each historical
//! revision is that commit with one later change undone (a doc comment names the commit);
//! planted revisions add a bug that is not Xen history; negative controls undo a change
//! that only ever added work (extra flushes or updates), so the oracle must stay silent.

use crate::revision::{Revision, RevisionKind, Switches as LineSwitches};

crate::switches! {
/// Every revision-dependent behaviour of the master model, one field each.
pub struct Switches {
    /// 6c0e4ad608 (`p2m-ept.c:924-929`): `ept_set_entry` clears `need_modify_vtd_table`
    /// only when the old entry's `p2m_get_iommu_flags` equal the new ones, not only its
    /// mfn. Undone (`ept-perm-noflush`): the mfn alone decides.
    pub ept_need_modify_checks_iommu_flags: bool,
    /// 660fd65d55 (`p2m-pt.c:747-752`): the p2m-pt IOMMU step runs when the old IOMMU flags
    /// or the mfn differ. Undone (`pt-perm-noflush`): only when the mfn differs.
    pub pt_step_checks_iommu_flags: bool,
    /// ee91a49a44, restoring what 854a49a748 dropped: `p2m_pt_set_entry` calls
    /// `iommu_legacy_map` / `iommu_legacy_unmap`. Undone (`pt-no-sync`): it never does.
    pub pt_syncs_iommu: bool,
    /// The 1a7ffe466c analogue (`amd/iommu_map.c:80-111`, `set_iommu_pte_present`): a map
    /// reports "changed" (so `amd_iommu_map_page` sets `IOMMU_FLUSHF_modified`) when pr,
    /// next_level, mfn, iw or ir differ. Undone (`amd-perm-noflush`): when the mfn differs.
    pub amd_pte_change_checks_perms: bool,
    /// d1bb6c97c3 (XSA-378, `asm/p2m.h:975-1036`): `p2m_get_iommu_flags` gives an
    /// `mmio_direct` entry `p2m_access_to_iommu_flags(access)`. Undone (`xsa378-access`):
    /// read/write whatever the access (the frame's `mmio_ro_ranges` check stays).
    pub mmio_direct_honours_access: bool,
    /// 6f6d3b10ec ("add missing break"): `p2m_get_iommu_flags` maps `mmio_direct`. Undone
    /// (`mmio-nobreak`): `mmio_direct` falls through to no permission (50a498c8ba's bug).
    pub mmio_direct_mapped: bool,
    /// `p2m-ept.c:988-995`: `ept_free_entry` runs last, after the IOMMU flush or update.
    /// Undone (`ept-free-first`): the replaced subtree is freed before it.
    pub ept_free_entry_last: bool,
    /// dea460d869 (XSA-346, `memory.c:527-539`): `guest_remove_page` inside the
    /// `XENMAPSPACE_gmfn_range` batch clears `iommu_dont_flush_iotlb`, so the displaced
    /// page is flushed before it is freed. Undone: `xsa346-remove`.
    pub guest_remove_page_flushes: bool,
    /// 5777a3742d (XSA-346, `memory.c:1059-1081`): the batch holds its page references
    /// until after the flush of the moved-from range (and so stops every 16 pages).
    /// Undone: `xsa346-ref` — the reference is dropped per page and there is no page
    /// limit. The hole needs another vCPU freeing the moved page before the batch's
    /// flush, which a sequential scenario cannot express: this revision reads like
    /// `xen-master` until interleavings exist.
    pub batch_holds_page_refs: bool,
    /// 5a991ad8a5 (`x86/iommu.c:674-718`): replaced or emptied IOMMU tables are queued
    /// (`iommu_queue_free_pgtable`) and freed by a tasklet after the hypercall. Undone
    /// (`free-queued-immediately`, synthetic, not Xen history): freed at once, before the
    /// caller's flush.
    pub free_queue_deferred: bool,
    /// `vtd/iommu.c:2229` `++level < min_pt_levels` and `amd/iommu_map.c:523`
    /// `++level < paging_mode`: the free-empty loop stops below the root, whose frame the
    /// context / device table entries point at. Undone (`no-min-pt-levels`, synthetic, not
    /// Xen history): the loop runs on while the table it emptied is empty, up to queueing
    /// the root itself.
    pub free_loop_level_bound: bool,
    /// `pt-contig-markers.h:40-43,84-98` (8c6a4963f0): a `PTE_kind_leaf` update of the
    /// contiguity markers compares (`IS_CONTIG`) the first entries of the two blocks it
    /// merges at every level — the last one, where the table's two 256-entry halves merge,
    /// included. Undone (`deep-coalesce-short`, synthetic, not Xen history: the comparison's
    /// level bound one short, so at the last level only the other half's marker is read):
    /// a table whose halves are each contiguous but not with each other (other frames,
    /// other permissions, or one half empty) is reported complete, and
    /// `amd_iommu_map_page` (`amd/iommu_map.c:452-469`) / `intel_iommu_map_page`
    /// (`vtd/iommu.c:2147-2173`) coalesce it into a superpage that maps the other half to
    /// frames the p2m does not map there. It needs half a table of agreeing 4 KiB maps
    /// (256 writes no 2 MiB op or shatter makes): see
    /// [`Slips`](crate::master::pt_contig_markers::Slips).
    pub coalesce_compares_halves: bool,
    /// `pt-contig-markers.h:40-43,84-98` (8c6a4963f0), the free-empty test of the unmap
    /// paths (`amd/iommu_map.c:51,523`, `vtd/iommu.c:2237-2240`): a `PTE_kind_null` update
    /// checks that the first entry of each block it merges is null at every level, the last
    /// one included. Undone (`deep-free-empty-short`, synthetic, not Xen history: the same
    /// level bound one short in the null test): a table whose other half is a claimed run
    /// of leaves reads as empty once the unmap empties its own half, and the free loop
    /// (`amd/iommu_map.c:523-536`, `vtd/iommu.c:2237-2257`) unlinks and frees it with 256
    /// live entries: the device loses them. It needs half a table emptied page by page
    /// (or built page by page next to an empty half).
    pub free_empty_checks_halves: bool,
    /// `vtd/iommu.c:2263` and `amd/iommu_map.c:541-543`: an unmap reports
    /// `IOMMU_FLUSHF_modified` for the entry it cleared also when the free loop ran (the
    /// loop adds `IOMMU_FLUSHF_all`). Undone (`deep-last-unmap-noflush`, synthetic, not Xen
    /// history: that line placed in the "table not emptied" branch, as if the loop's
    /// `IOMMU_FLUSHF_all` covered it): the unmap that empties a table reports `ALL` only,
    /// which AMD's flush ignores without `MODIFIED` (`amd/iommu_map.c:618-620`), so the
    /// page and the freed table stay in the IOTLB and paging-structure caches. On VT-d the
    /// slip is harmless: `ALL` alone is a domain-selective flush, issued whatever
    /// `MODIFIED` says (`vtd/iommu.c:736-740,764-766`). Not deep despite its name: the
    /// state before the last unmap of a table emptied page by page (one present entry, its
    /// markers as a fresh table's) is also one map into an empty 2 MiB region away.
    pub emptying_unmap_sets_modified: bool,
    /// `vtd/iommu.c:2130` and `amd/iommu_map.c:92-108`: a map that leaves the PTE unchanged
    /// returns without flush flags. Negative control (`no-identical-pte-check`): the PTE is
    /// rewritten and reported as changed (only extra flushes).
    pub identical_pte_short_circuit: bool,
    /// e70a9a043a (`p2m-pt.c:538-546`): `p2m_flags_to_access` reconstructs the access of an
    /// old 4K entry the right way round. Negative control (`e70a9a043a-undone`): d1bb6c97c3's
    /// inverted test (its message: only extra updates, "never too few").
    pub pt_flags_to_access_fixed: bool,
    /// c8a25eb617: `iommu_pde_from_dfn` no longer flushes all pages after a shatter (the
    /// caller flushes — only the caller's pages, the root of finding F1). Control
    /// (`c8a25eb617-undone`): the flush-all is back; under the conservative hardware reading
    /// it removes the AMD half of F1, so this revision is quieter than `xen-master`, never
    /// noisier.
    pub amd_shatter_no_flush_all: bool,
    /// 83432adeb8: shared EPT honours `iommu_dont_flush_iotlb` (the batch flushes once
    /// afterwards). Negative control (`83432adeb8-undone`): shared EPT also flushes at once.
    pub shared_ept_honours_dont_flush: bool,
    /// Not Xen — a proposed fix (`master-fixed`) of a CPU-view hole this harness found in
    /// master and in 4.6: `ept_next_level` (`p2m-ept.c:336-355`) replaces any non-present,
    /// non-PoD entry with a new empty middle table, also a valid non-present superpage
    /// (e.g. a type without r/w/x, or access `n`), so a 4 KiB change inside it drops the
    /// other entries of the superpage. Fix: split it like a present superpage.
    pub ept_split_nonpresent_superpage: bool,
    /// Not Xen — a proposed fix (`master-fixed`) completing `ept_split_nonpresent_superpage`
    /// (internal API only, outside security support): `ept_split_super_page` adds `i *
    /// trunk` to the 40-bit frame field (`p2m-ept.c:274`), so splitting a non-present
    /// `mmio_direct` superpage written with `INVALID_MFN` (all ones) gives children the
    /// frames 0, 1, … 510; a later access change (`set_mem_access … rw`) maps such a frame
    /// in the IOMMU. Xen never splits a non-present non-PoD superpage today (F2 drops it
    /// instead), so the hole opens only with F2's fix. Fix: children of a frameless
    /// non-PoD superpage keep the all-ones field.
    pub ept_split_keeps_invalid_mfn: bool,
    /// Not Xen — a proposed fix (`master-fixed`) of a hole this harness found in master
    /// and in 4.6: the IOMMU step maps `(gfn, mfn, 1 << order)` with
    /// `p2m_get_iommu_flags(...)` even when the p2m wrote an empty entry (`INVALID_MFN`
    /// with a RAM type) or an entry without a frame (`mmio_direct` with `INVALID_MFN`,
    /// which p2m-pt accepts at any order): `iommu_map` then maps `INVALID_MFN + i`, which
    /// wraps to machine frames 0, 1, 2, … Fix: such an entry is unmapped instead.
    pub iommu_flags_require_present_entry: bool,
    /// Not Xen — a proposed fix (`master-fixed`) of the hole this harness found in 4.6 and
    /// master (`p2m-ept.c:924-929`): `need_modify_vtd_table` compares the mfn field and
    /// `p2m_get_iommu_flags` of whatever entry is there — an intermediate entry (its table
    /// frame, read as `ram_rw`) or, with shared tables, a leaf whose EPT r/w bits differ
    /// while the IOMMU flags agree (e.g. `ioreq_server` → `invalid`, both 0) — so no flush
    /// or update happens. Fix: only a present leaf with the same frame and the same
    /// device-visible permission keeps the IOMMU as it is.
    /// With shared tables the fix asks for the same EPT r/w bits *and* the same
    /// `p2m_get_iommu_flags`: a recalc (`resolve_misconfig`) takes W from a `ram_logdirty`
    /// leaf without a flush, so a later retype of that leaf to `ram_ro` has the same bits
    /// but must still flush the W the IOTLB may hold. Nor does an old `ram_logdirty` leaf
    /// ever count as unchanged: with access `wx` the recalc leaves it `--x`, and a retype
    /// to `grant_map_rw` with access `n` has the same bits and flags while the IOTLB may
    /// still hold the W (`corpus/edges/shared-ept-logdirty-wx-retype-flushes-master.trace`).
    pub ept_need_modify_requires_present_leaf: bool,
    /// Not in Xen (closes a hole the harness found on both lines, outside security
    /// support: it needs a non-default p2m access): with shared tables `ept_set_entry`
    /// flushes without `IOMMU_FLUSHF_modified` (4.6: skips `iommu_pte_flush`) when the entry
    /// it replaces is not present (`vtd_pte_present = is_epte_present(ept_entry)`). A
    /// write-only (`p2m_access_w`/`wx`) `ram_rw` page the device walked is present with W
    /// only; a log-dirty recalc then clears W without a flush (accepted by design,
    /// `p2m-ept.c:53-62`), leaving the entry non-present, so its removal flushes nothing
    /// and the IOTLB keeps W to the freed page. Fixed: any valid old entry (a frame and a
    /// type) counts as one the IOMMU may have cached.
    pub shared_flush_on_valid_old_entry: bool,
    /// Not Xen — a proposed fix (`master-fixed`) of the hole this harness found in master
    /// and in 4.6 under the conservative hardware reading (`superpage_survives_partial_inval`):
    /// when a 4 KiB (or 2 MiB) change splits a superpage — the p2m's with shared EPT
    /// (`ept_split_super_page`), the IOMMU's own (`addr_to_dma_page_maddr`,
    /// `iommu_pde_from_dfn`) — the flush covers only the op's range, so an IOTLB entry for
    /// the whole superpage may survive and keep translating the changed page. Fix: flush
    /// the split superpage's range (also when the op changed nothing the device sees).
    /// Scope: splits made by the op being flushed, and the splits of the lazy type
    /// change — `ept_invalidate_emt_range` (`p2m_change_type_range`) and
    /// `resolve_misconfig` (a vCPU's access, or the start of `ept_set_entry`) split
    /// shared-EPT superpages with no IOMMU flush at all; the fix flushes each at its own
    /// size there too (a fix for Xen should do so wherever a present shared superpage
    /// becomes a table).
    pub flush_covers_split_superpage: bool,
    /// Not Xen — a proposed fix (`master-fixed`) of the hole this harness found in master
    /// (`memory.c:1060-1081` with `iommu.c:384-397,456-465`): under
    /// `iommu_dont_flush_iotlb`, `iommu_legacy_map` / `iommu_legacy_unmap` drop the flush
    /// flags the vendor code set — `IOMMU_FLUSHF_all` included, which AMD sets when an
    /// emptied table is unlinked and queued — and the batch flushes with hard-coded
    /// `MODIFIED` (then `ADDED | MODIFIED`): on AMD an order-0 `INVALIDATE_IOMMU_PAGES`
    /// with PDE=0, which leaves the page-directory cache entry pointing at the table the
    /// free queue then frees. Fix: the flags dropped under `dont_flush` are kept and ORed
    /// into the batch's flushes; when a page fails after its source was unmapped (it is in
    /// neither flushed range — with `done` = 0 nothing is flushed at all), the whole
    /// domain is flushed with them.
    pub batch_flush_keeps_deferred_flags: bool,
    /// Not Xen — a proposed fix (`master-fixed`) of finding F10's second-vCPU variant:
    /// `xenmem_add_to_physmap_one` hands the page reference to the batch only on success
    /// (`p2m.c:2106-2110`, 5777a3742d). A page whose move fails after its source gfn was
    /// unmapped under `iommu_dont_flush_iotlb` (e.g. the destination's IOMMU map failing
    /// with `-ENOMEM`, which crashes the domain after the p2m entry is written) loses its
    /// reference at once, so another vCPU can free it before anything flushes the source
    /// gfn. Fix: the batch keeps that reference too and drops it after its flushes (the
    /// whole-domain flush of `batch_flush_keeps_deferred_flags` included).
    pub batch_holds_failed_page_ref: bool,
    /// Not Xen — a proposed fix (`master-fixed`) of finding F5 (internal API only):
    /// `p2m_get_iommu_flags` and `ept_p2m_type_to_flags` test `mmio_ro_ranges` against the
    /// first frame of an entry only, so an `mmio_direct` superpage covering read-only MMIO
    /// frames maps them writable. Xen's callers never make one (`set_mmio_p2m_entry`
    /// returns "retry with a smaller order", `p2m.c:1187-1190`); the fix makes the p2m
    /// write such a superpage in smaller pages where it overlaps, as those callers do.
    pub mmio_ro_superpage_split: bool,
    /// Not Xen — a proposed fix (`master-fixed`) of an under-permission the harness found
    /// in master (outside security support: it needs a non-default access): p2m-pt
    /// rebuilds an old leaf's IOMMU flags from its PTE (`p2m_flags_to_access`, `:538-546`,
    /// rw or r), but an `mmio_direct` leaf was mapped with the flags of its real access
    /// (e.g. `w`); a later change to the same frame with "equal" flags skips the IOMMU
    /// step and the device keeps the old, smaller permission. Fix: an old `mmio_direct`
    /// leaf always takes the step.
    pub pt_mmio_old_flags_unknown: bool,
    /// Not Xen — a proposed fix (`master-fixed`) of an inconsistency the harness found in
    /// master (outside security support: it needs a non-default access): `ept_get_entry`
    /// reads a valid non-present superpage (e.g. `ram_rw` with access `n`) as nothing
    /// (`p2m-ept.c:1048-1060`, the walk with `read_only = 1`) but the same entry at 4 KiB
    /// as typed, so the batch neither moves such a page nor removes it before mapping over
    /// it. Fix: the superpage reads like the 4 KiB entry.
    pub ept_get_entry_reads_nonpresent_superpage: bool,
    /// Not Xen — a proposed fix (`master-fixed`) of finding F9 (internal API only: frame 0
    /// is never a guest page): `iommu_pde_from_dfn` reads a PDE whose frame is 0 as "no
    /// table" (`amd/iommu_map.c:303-306`), so an AMD superpage mapping machine frame 0 is
    /// never shattered — an unmap inside it does nothing and the device keeps the whole
    /// superpage; a map inside it crashes the domain. Fix: shatter it like any other.
    pub amd_split_superpage_at_mfn0: bool,
}
}

/// The pinned master commit `c447b7308b`.
const MASTER: Switches = Switches {
    ept_need_modify_checks_iommu_flags: true,
    pt_step_checks_iommu_flags: true,
    pt_syncs_iommu: true,
    amd_pte_change_checks_perms: true,
    mmio_direct_honours_access: true,
    mmio_direct_mapped: true,
    ept_free_entry_last: true,
    guest_remove_page_flushes: true,
    batch_holds_page_refs: true,
    free_queue_deferred: true,
    free_loop_level_bound: true,
    coalesce_compares_halves: true,
    free_empty_checks_halves: true,
    emptying_unmap_sets_modified: true,
    identical_pte_short_circuit: true,
    pt_flags_to_access_fixed: true,
    amd_shatter_no_flush_all: true,
    shared_ept_honours_dont_flush: true,
    ept_split_nonpresent_superpage: false,
    ept_split_keeps_invalid_mfn: false,
    iommu_flags_require_present_entry: false,
    ept_need_modify_requires_present_leaf: false,
    shared_flush_on_valid_old_entry: false,
    flush_covers_split_superpage: false,
    batch_flush_keeps_deferred_flags: false,
    batch_holds_failed_page_ref: false,
    mmio_ro_superpage_split: false,
    pt_mmio_old_flags_unknown: false,
    ept_get_entry_reads_nonpresent_superpage: false,
    amd_split_superpage_at_mfn0: false,
};

/// The harness's proposed fixes of the holes it found in master (not Xen).
const MASTER_FIXED: Switches = Switches {
    ept_split_nonpresent_superpage: true,
    ept_split_keeps_invalid_mfn: true,
    iommu_flags_require_present_entry: true,
    ept_need_modify_requires_present_leaf: true,
    shared_flush_on_valid_old_entry: true,
    flush_covers_split_superpage: true,
    batch_flush_keeps_deferred_flags: true,
    batch_holds_failed_page_ref: true,
    mmio_ro_superpage_split: true,
    pt_mmio_old_flags_unknown: true,
    ept_get_entry_reads_nonpresent_superpage: true,
    amd_split_superpage_at_mfn0: true,
    ..MASTER
};

macro_rules! undo {
    ($name:literal, $kind:ident, $summary:literal, $field:ident) => {
        Revision {
            name: $name,
            summary: $summary,
            kind: RevisionKind::$kind,
            switches: LineSwitches::Master(Switches {
                $field: false,
                ..MASTER
            }),
        }
    };
}

/// Every named revision of the master line: the reference, then one change undone each.
pub const REVISIONS: &[Revision] = &[
    Revision {
        name: "xen-master",
        summary: "Xen master at c447b7308b (2026-08-18)",
        kind: RevisionKind::Reference,
        switches: LineSwitches::Master(MASTER),
    },
    Revision {
        name: "master-fixed",
        summary: "not Xen: xen-master with the harness's proposed fixes of its findings",
        kind: RevisionKind::Proposed,
        switches: LineSwitches::Master(MASTER_FIXED),
    },
    undo!(
        "ept-perm-noflush",
        History,
        "master without 6c0e4ad608: EPT keeps the IOMMU when only permissions change",
        ept_need_modify_checks_iommu_flags
    ),
    undo!(
        "pt-perm-noflush",
        History,
        "master without 660fd65d55: p2m-pt updates the IOMMU only when the mfn changes",
        pt_step_checks_iommu_flags
    ),
    undo!(
        "pt-no-sync",
        History,
        "854a49a748 before ee91a49a44: p2m-pt never updates the IOMMU",
        pt_syncs_iommu
    ),
    undo!(
        "amd-perm-noflush",
        History,
        "1a7ffe466c analogue undone: an AMD remap flushes only when the mfn changes",
        amd_pte_change_checks_perms
    ),
    undo!(
        "xsa378-access",
        History,
        "master without d1bb6c97c3: mmio_direct is mapped read/write whatever its access",
        mmio_direct_honours_access
    ),
    undo!(
        "mmio-nobreak",
        History,
        "50a498c8ba before 6f6d3b10ec: mmio_direct falls through to no IOMMU permission",
        mmio_direct_mapped
    ),
    undo!(
        "ept-free-first",
        History,
        "ept_set_entry frees a replaced subtree before the IOMMU flush",
        ept_free_entry_last
    ),
    undo!(
        "xsa346-remove",
        History,
        "master without dea460d869: guest_remove_page in the batch keeps dont_flush",
        guest_remove_page_flushes
    ),
    undo!(
        "xsa346-ref",
        History,
        "master without 5777a3742d: the batch drops page references before its flush",
        batch_holds_page_refs
    ),
    undo!(
        "free-queued-immediately",
        Planted,
        "synthetic, not Xen history: IOMMU tables are freed at once, not queued",
        free_queue_deferred
    ),
    undo!(
        "no-min-pt-levels",
        Planted,
        "synthetic, not Xen history: the free-empty loop runs up to the root",
        free_loop_level_bound
    ),
    undo!(
        "deep-coalesce-short",
        Planted,
        "synthetic, not Xen history: leaf marker updates skip comparing the two halves, which coalesce",
        coalesce_compares_halves
    ),
    undo!(
        "deep-free-empty-short",
        Planted,
        "synthetic, not Xen history: the free-empty test skips checking the other half: half-full tables freed",
        free_empty_checks_halves
    ),
    undo!(
        "deep-last-unmap-noflush",
        Planted,
        "synthetic, not Xen history: the unmap emptying a table reports ALL only, no MODIFIED (AMD: no flush)",
        emptying_unmap_sets_modified
    ),
    undo!(
        "no-identical-pte-check",
        NegativeControl,
        "negative control: vendor map rewrites an identical PTE and reports a change",
        identical_pte_short_circuit
    ),
    undo!(
        "e70a9a043a-undone",
        NegativeControl,
        "negative control: p2m_flags_to_access inverted as in d1bb6c97c3",
        pt_flags_to_access_fixed
    ),
    undo!(
        "c8a25eb617-undone",
        NegativeControl,
        "control: AMD flushes all pages after a shatter (quieter than master: closes the AMD half of F1)",
        amd_shatter_no_flush_all
    ),
    undo!(
        "83432adeb8-undone",
        NegativeControl,
        "negative control: shared EPT flushes at once inside the batch too",
        shared_ept_honours_dont_flush
    ),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_revision_undoes_exactly_one_switch() {
        for r in &REVISIONS[2..] {
            let LineSwitches::Master(s) = r.switches else {
                panic!("{} is not a master revision", r.name)
            };
            assert_eq!(s.differing(&MASTER).len(), 1, "{}", r.name);
        }
        // Every switch has a revision that undoes it, or is a proposed fix.
        let fixes = MASTER_FIXED.differing(&MASTER).len();
        assert_eq!(REVISIONS.len() - 2 + fixes, Switches::NAMES.len());
    }
}
