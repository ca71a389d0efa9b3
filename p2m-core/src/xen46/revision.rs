//! The 4.6 line's revisions as sets of named switches.
//!
//! Every behaviour that differs between the 4.6-era revisions we model is one field of
//! [`Switches`]; a named [`Revision`] is a set of values. The upstream commits are
//! those of the series "x86/p2m: tighten conditions of IOMMU mapping updates"
//! (Jan Beulich, Sept/Oct 2015), committed before Xen 4.6.0.

use crate::revision::{Revision, RevisionKind, Switches as LineSwitches};

/// How `p2m_pt_set_entry` decides whether the IOMMU needs updating or flushing.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PtIommuConditions {
    /// Before 660fd65d55: `old_mfn` is 0 unless the *new* entry is non-empty, then the
    /// old entry's frame; the IOMMU step always runs; shared tables flush when
    /// `old_mfn && old_mfn != mfn`.
    Pre,
    /// The patch as posted (seed thread): `old_flags` keeps the old entry's PTE flags
    /// (`~0` for a present intermediate entry) and converts them with
    /// `p2m_get_iommu_flags(p2m_flags_to_type(old_flags))`; `~0` converts to type 127,
    /// i.e. no permission. The step runs only when those flags or the mfn differ;
    /// shared tables flush when the converted old flags are non-zero.
    PatchV1,
    /// 660fd65d55: `iommu_old_flags` is 0 for a non-present old entry, the real flags
    /// for a present leaf and `~0` (unequal to anything) for a present intermediate
    /// entry; `old_mfn` comes from the old leaf whatever the new entry is; the step
    /// runs only when flags or mfn differ; shared tables flush when
    /// `iommu_old_flags != 0`.
    Committed,
}

/// Planted, not Xen (measures the IOTLB model's partial invalidation): which single page
/// the shared-table flush of a superpage-order `ept_set_entry` still covers.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum PlantedShortFlush {
    /// The flush covers what Xen flushes.
    Off,
    /// Only the first page of the range Xen flushes.
    FirstPage,
    /// Only the last page of the range Xen flushes.
    LastPage,
}

impl PlantedShortFlush {
    /// The `(gfn, order)` the flush of `(gfn, order)` by an op of `op_order` covers under
    /// this plant: 4 KiB ops (and the splits they cause) flush as Xen does.
    pub fn narrow(self, op_order: u32, gfn: u64, order: u32) -> (u64, u32) {
        match self {
            _ if op_order == 0 => (gfn, order),
            PlantedShortFlush::Off => (gfn, order),
            PlantedShortFlush::FirstPage => (gfn, 0),
            PlantedShortFlush::LastPage => (gfn + (1u64 << order) - 1, 0),
        }
    }
}

crate::switches! {
/// Every revision-dependent behaviour of the 4.6 model, one field each.
pub struct Switches {
    /// 6c0e4ad608 "x86/EPT: tighten conditions of IOMMU mapping updates": keep
    /// `need_modify_vtd_table` when the IOMMU flags of the old entry's type differ,
    /// not only when the mfn differs.
    pub ept_need_modify_checks_iommu_flags: bool,
    /// 960265fbd8 "x86/p2m-pt: delay freeing of intermediate page tables": free the
    /// replaced subtree after the IOMMU step instead of right after the write.
    pub pt_delay_intermediate_free: bool,
    /// c0a85795d8 "x86/p2m-pt: ignore pt-share flag for shadow mode guests": use
    /// `iommu_use_hap_pt(d)` instead of the global `iommu_hap_pt_share`.
    pub pt_shadow_ignores_share: bool,
    /// 660fd65d55 "x86/p2m-pt: tighten conditions of IOMMU mapping updates" (and the
    /// posted variant of it). edb9531263 only reuses the pre-computed flags: no
    /// behaviour change, so it has no switch of its own.
    pub pt_iommu_conditions: PtIommuConditions,
    /// Not in Xen (closes a hole the harness found in `committed`): `ept_set_entry`
    /// clears `need_modify_vtd_table` only when the old entry is a *present leaf*
    /// with the same mfn and the same device-visible permission. Xen compares the
    /// mfn field and `sa_p2mt` of whatever entry is there: an intermediate entry
    /// (whose mfn is its table frame and whose `sa_p2mt` is 0, `ram_rw`) or a
    /// zeroed non-present entry (mfn 0, `ram_rw`) then looks "unchanged", and with
    /// shared tables an access-only change is never flushed.
    /// With shared tables the fix asks for the same EPT r/w bits *and* the same
    /// `p2m_get_iommu_flags`: a recalc (`resolve_misconfig`) takes W from a `ram_logdirty`
    /// leaf without a flush, so a later retype of that leaf to `ram_ro` has the same bits
    /// but must still flush the W the IOTLB may hold. Nor does it clear for an old
    /// `ram_logdirty` leaf at all: with access `wx` the recalc leaves it `--x`, and a
    /// retype to `grant_map_rw` with access `n` has the same bits and flags while the
    /// IOTLB may still hold the W (`corpus/edges/shared-ept-logdirty-wx-retype-flushes.trace`).
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
    /// Not in Xen 4.6 (closes a hole the harness found in every revision):
    /// `p2m_next_level` splitting a 1 GiB page ORs next-level 1 into the inherited
    /// flags of each 2 MiB leaf, so a shared AMD IOMMU walks guest data as an L1
    /// table. Fixed: the split leaves keep next-level 0.
    pub pt_split_1g_keeps_leaf_nlevel: bool,
    /// Not in Xen 4.6 (closes a hole the harness found in every revision):
    /// `amd_iommu_map_page` flushes only when the PTE's address changes
    /// (`set_iommu_pde_present` returns `need_flush` for that alone), so a
    /// permission reduction on the same frame stays in the IOTLB. Fixed: flush when
    /// the old PTE was present and differs in address or permission.
    pub amd_map_flush_on_perm_change: bool,
    /// Not in Xen (closes a hole the harness found in every revision): the separate
    /// IOMMU step maps with `p2m_get_iommu_flags(p2mt)` even when the p2m wrote an
    /// empty entry (e.g. `ram_rw` with `INVALID_MFN`), so the IOMMU maps a bogus
    /// frame the CPU side does not. Fixed: an empty new entry is unmapped.
    pub iommu_flags_require_present_entry: bool,
    /// XSA-275, 937ef32565 (2018) "AMD/IOMMU: suppress PTE merging after initial table
    /// creation": Xen 4.6's `amd_iommu_map_page` merges a table into a superpage
    /// (`iommu_update_pde_count` / `iommu_merge_pages`) after 512 contiguous map
    /// *events*, without checking the table's entries or their permissions (the last
    /// map's permission wins), and `iommu_pde_from_gfn` splits a superpage into
    /// read/write entries whatever its permission. Fixed: no merging once the domain
    /// is created (every modelled op is), so separate AMD tables hold 4 KiB leaves only.
    pub amd_suppress_pte_merging: bool,
    /// Not in Xen (closes a hole the harness found in every revision, under the
    /// conservative hardware reading `superpage_survives_partial_inval`): when
    /// `ept_set_entry` / `p2m_pt_set_entry` split a superpage to change part of it, the
    /// shared-table flush (`iommu_pte_flush`, `amd_iommu_flush_pages`) covers only the
    /// op's `(gfn, order)`, so an IOTLB entry for the whole superpage may survive and keep
    /// translating the changed page. Fixed: flush the split superpage's range.
    pub flush_covers_split_superpage: bool,
    /// Not in Xen (closes a CPU-view hole the harness found in every revision, and still
    /// in master): `ept_next_level` overwrites any non-present, non-PoD entry with a new
    /// empty middle table — also a *valid* non-present superpage (e.g. `ram_rw` with access
    /// `n`), so a 4 KiB change inside it drops the other 511 (or 262,143) p2m entries,
    /// while separate IOMMU tables keep mapping them. Fixed: split it like a present
    /// superpage.
    pub ept_split_nonpresent_superpage: bool,
    /// XSA-346, dea460d869 (2020) "IOMMU: suppress "iommu_dont_flush_iotlb" when about
    /// to free a page", backported: the batch's `guest_remove_page` of a populated
    /// destination flushes before the page is freed. 4.6 removes it under
    /// `iommu_dont_flush_iotlb` (VT-d skips the flush) and frees it at once.
    pub guest_remove_page_flushes: bool,
    /// ba45ae4d7f (2020, "XENMAPSPACE_gmfn{,_batch,_range} want to special case idx ==
    /// gpfn"; master `p2m.c:2083`): the batch removes a populated destination only when it
    /// holds *another* page. 4.6 calls
    /// `guest_remove_page` on it whatever it holds, so moving a page onto itself
    /// (`idx == gpfn`) drops its allocation reference and the final `put_page` frees
    /// it while it is mapped again at `gpfn`.
    pub add_to_physmap_keeps_same_page: bool,
    /// XSA-346, 5777a3742d (2020) "IOMMU: hold page ref until after deferred TLB flush",
    /// backported: the batch keeps each moved page's reference until after its flush of
    /// the old gfns. 4.6 drops it per page (`put_page` in `xenmem_add_to_physmap_one`),
    /// so a second vCPU removing the page at its new gfn frees it while the old gfn's
    /// IOTLB entry (unmapped under `iommu_dont_flush_iotlb`) still translates to it.
    pub batch_holds_page_refs: bool,
    /// Not Xen (closes a hole the harness found in 4.6, and in master without its
    /// proposed fix): a batch page that fails after its source gfn was unmapped under
    /// `iommu_dont_flush_iotlb` (the destination cannot be unshared, or holds a grant) is
    /// not in the range the batch flushes (`idx - done`, `done` pages), so VT-d keeps the
    /// source's IOTLB entry. Fixed: the flush of the old gfns covers the failed page too.
    pub batch_flush_covers_failed_page: bool,
    /// 834c97baeb (2016) "IOMMU: handle IOMMU mapping and unmapping failures",
    /// backported: `iommu_map_page` crashes a domU whose `->map_page` failed. In 4.6 it
    /// returns VT-d's `-ENOMEM` (`intel_iommu_map_page` when a table allocation fails)
    /// to `ept_set_entry` / `p2m_pt_set_entry`, which ignore it: the p2m grants the page,
    /// the IOMMU does not map it. (AMD's `amd_iommu_map_page` crashes the domain itself.)
    pub iommu_map_failure_crashes_domu: bool,
    /// XSA-222, a0cce6048d (2017) "guest_physmap_remove_page() needs its return value
    /// checked", its `guest_remove_page` half backported: the allocation reference goes
    /// only when the removal succeeded, and the call fails otherwise (the batch keeps
    /// 4.6's flow, which ignores the result). In 4.6 `guest_physmap_remove_page` is
    /// `void`: when `p2m_set_entry` fails (a superpage split finds no memory for the new
    /// table) the page is freed while the p2m and the IOMMU still map it.
    pub guest_remove_page_checks_remove_rc: bool,
    /// Not Xen (a proposed fix for 4.6): `arch_iommu_populate_page_table` maps every p2m
    /// entry with the permission of its type (`p2m_get_iommu_flags`). 4.6 maps every page
    /// of the domain read/write whatever its type (`x86/iommu.c:42-112`), so a device
    /// hot-plugged into a running guest can write its `ram_ro` and `mmio_write_dm` pages,
    /// and it misses grant and foreign mappings (not on `d->page_list`). Upstream never
    /// fixed the population: f89f555827 (2019) removed late construction.
    pub iommu_populate_uses_p2m_type: bool,
    /// Not Xen (a proposed fix for 4.6, whose AMD sharing is dead code: `amd_iommu_init`
    /// turns it off): `do_recalc` writes a recalculated leaf's IOMMU bits as `set_entry`
    /// does — `p2m_get_iommu_flags` of the new type, next-level 0. 4.6 writes
    /// `p2m_add_iommu_flags(&e, level, ram_rw ? RW : 0)` (`p2m-pt.c:452-455`): a 2 MiB
    /// or 1 GiB leaf gets next-level 1 or 2, so the IOMMU walks the guest's frame as a
    /// table, and a `ram_logdirty` leaf loses IR/IW, which `p2m_get_iommu_flags` grants.
    /// The line stayed until AMD sharing was removed.
    pub pt_recalc_keeps_iommu_flags: bool,
    /// Planted, not Xen (measures the oracle's free-event check): `ept_set_entry`
    /// frees the replaced subtree (`ept_free_entry`) *before* the IOMMU step, so with
    /// shared tables a paging-structure record of the old entry still points at it.
    pub planted_free_before_flush: bool,
    /// Planted, not Xen (measures the range check): `ept_split_super_page` and
    /// `p2m_next_level` write every entry of the split table one page off.
    pub planted_split_wrong_frame: bool,
    /// Planted, not Xen (measures the leak check): `ept_free_entry` / `p2m_free_entry`
    /// free nothing, so a replaced subtree stays allocated.
    pub planted_leak_replaced_subtree: bool,
    /// Planted, not Xen (measures the leak check): `ept_free_entry` / `p2m_free_entry`
    /// recurse one level too few, leaking the level-1 tables under a freed level-2 table.
    pub planted_free_entry_recurses_short: bool,
    /// Planted, not Xen (measures the bad-free check): `ept_free_entry` /
    /// `p2m_free_entry` treat a superpage leaf as a table and free its (guest) frame.
    pub planted_free_leaf_frame: bool,
    /// Planted, not Xen (measures the remainder records a partial invalidation keeps):
    /// the shared-table flush of a superpage-order `ept_set_entry` covers one page of its
    /// range.
    pub planted_short_flush: PlantedShortFlush,
}
}

const PRE: Switches = Switches {
    ept_need_modify_checks_iommu_flags: false,
    pt_delay_intermediate_free: false,
    pt_shadow_ignores_share: false,
    pt_iommu_conditions: PtIommuConditions::Pre,
    ept_need_modify_requires_present_leaf: false,
    shared_flush_on_valid_old_entry: false,
    pt_split_1g_keeps_leaf_nlevel: false,
    amd_map_flush_on_perm_change: false,
    iommu_flags_require_present_entry: false,
    amd_suppress_pte_merging: false,
    flush_covers_split_superpage: false,
    ept_split_nonpresent_superpage: false,
    guest_remove_page_flushes: false,
    add_to_physmap_keeps_same_page: false,
    batch_holds_page_refs: false,
    batch_flush_covers_failed_page: false,
    iommu_map_failure_crashes_domu: false,
    guest_remove_page_checks_remove_rc: false,
    iommu_populate_uses_p2m_type: false,
    pt_recalc_keeps_iommu_flags: false,
    planted_free_before_flush: false,
    planted_split_wrong_frame: false,
    planted_leak_replaced_subtree: false,
    planted_free_entry_recurses_short: false,
    planted_free_leaf_frame: false,
    planted_short_flush: PlantedShortFlush::Off,
};

const COMMITTED: Switches = Switches {
    ept_need_modify_checks_iommu_flags: true,
    pt_delay_intermediate_free: true,
    pt_shadow_ignores_share: true,
    pt_iommu_conditions: PtIommuConditions::Committed,
    ..PRE
};

/// `committed` plus every hole known to the harness closed.
const FIXED: Switches = Switches {
    ept_need_modify_requires_present_leaf: true,
    shared_flush_on_valid_old_entry: true,
    pt_split_1g_keeps_leaf_nlevel: true,
    amd_map_flush_on_perm_change: true,
    iommu_flags_require_present_entry: true,
    amd_suppress_pte_merging: true,
    flush_covers_split_superpage: true,
    ept_split_nonpresent_superpage: true,
    guest_remove_page_flushes: true,
    add_to_physmap_keeps_same_page: true,
    batch_holds_page_refs: true,
    batch_flush_covers_failed_page: true,
    iommu_map_failure_crashes_domu: true,
    guest_remove_page_checks_remove_rc: true,
    iommu_populate_uses_p2m_type: true,
    pt_recalc_keeps_iommu_flags: true,
    ..COMMITTED
};

/// Every named revision of the 4.6 line, oldest first.
pub const REVISIONS: &[Revision] = &[
    Revision {
        name: "xen-4.6-pre",
        summary: "master just before 6c0e4ad608 (the '-' side of the seed's diff)",
        kind: RevisionKind::History,
        switches: LineSwitches::Xen46(PRE),
    },
    Revision {
        name: "6c0e4ad608",
        summary: "+ x86/EPT: tighten conditions of IOMMU mapping updates",
        kind: RevisionKind::History,
        switches: LineSwitches::Xen46(Switches {
            ept_need_modify_checks_iommu_flags: true,
            ..PRE
        }),
    },
    Revision {
        name: "960265fbd8",
        summary: "+ x86/p2m-pt: delay freeing of intermediate page tables",
        kind: RevisionKind::History,
        switches: LineSwitches::Xen46(Switches {
            ept_need_modify_checks_iommu_flags: true,
            pt_delay_intermediate_free: true,
            ..PRE
        }),
    },
    Revision {
        name: "c0a85795d8",
        summary: "+ x86/p2m-pt: ignore pt-share flag for shadow mode guests",
        kind: RevisionKind::History,
        switches: LineSwitches::Xen46(Switches {
            ept_need_modify_checks_iommu_flags: true,
            pt_delay_intermediate_free: true,
            pt_shadow_ignores_share: true,
            ..PRE
        }),
    },
    Revision {
        name: "660fd65d55",
        summary: "+ x86/p2m-pt: tighten conditions of IOMMU mapping updates",
        kind: RevisionKind::History,
        switches: LineSwitches::Xen46(COMMITTED),
    },
    Revision {
        name: "edb9531263",
        summary: "+ x86/p2m-pt: use pre-calculated IOMMU flags (no behaviour change)",
        kind: RevisionKind::History,
        switches: LineSwitches::Xen46(COMMITTED),
    },
    Revision {
        name: "patch-v1",
        summary: "the series as posted in the seed thread (old PTE flags converted late)",
        kind: RevisionKind::History,
        switches: LineSwitches::Xen46(Switches {
            pt_iommu_conditions: PtIommuConditions::PatchV1,
            ..COMMITTED
        }),
    },
    Revision {
        name: "committed",
        summary: "after all five upstream commits (= edb9531263)",
        kind: RevisionKind::History,
        switches: LineSwitches::Xen46(COMMITTED),
    },
    Revision {
        name: "fixed",
        summary: "committed plus every hole known to this harness closed",
        kind: RevisionKind::Reference,
        switches: LineSwitches::Xen46(FIXED),
    },
    Revision {
        name: "planted-free-first",
        summary: "fixed, but both p2m flavours free a replaced subtree before the IOMMU step",
        kind: RevisionKind::Planted,
        switches: LineSwitches::Xen46(Switches {
            planted_free_before_flush: true,
            pt_delay_intermediate_free: false,
            ..FIXED
        }),
    },
    Revision {
        name: "planted-split-wrong-frame",
        summary: "fixed, but a p2m superpage split writes every entry one page off",
        kind: RevisionKind::Planted,
        switches: LineSwitches::Xen46(Switches {
            planted_split_wrong_frame: true,
            ..FIXED
        }),
    },
    Revision {
        name: "planted-leak-subtree",
        summary: "fixed, but a replaced p2m subtree is never freed",
        kind: RevisionKind::Planted,
        switches: LineSwitches::Xen46(Switches {
            planted_leak_replaced_subtree: true,
            ..FIXED
        }),
    },
    Revision {
        name: "planted-free-recursion-short",
        summary: "fixed, but freeing a p2m subtree recurses one level too few",
        kind: RevisionKind::Planted,
        switches: LineSwitches::Xen46(Switches {
            planted_free_entry_recurses_short: true,
            ..FIXED
        }),
    },
    Revision {
        name: "planted-free-leaf-frame",
        summary: "fixed, but freeing a replaced superpage leaf frees its guest frame",
        kind: RevisionKind::Planted,
        switches: LineSwitches::Xen46(Switches {
            planted_free_leaf_frame: true,
            ..FIXED
        }),
    },
    Revision {
        name: "planted-flush-first-page",
        summary: "fixed, but a superpage op's shared EPT flush covers only its first page",
        kind: RevisionKind::Planted,
        switches: LineSwitches::Xen46(Switches {
            planted_short_flush: PlantedShortFlush::FirstPage,
            ..FIXED
        }),
    },
    Revision {
        name: "planted-flush-last-page",
        summary: "fixed, but a superpage op's shared EPT flush covers only its last page",
        kind: RevisionKind::Planted,
        switches: LineSwitches::Xen46(Switches {
            planted_short_flush: PlantedShortFlush::LastPage,
            ..FIXED
        }),
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_known() {
        for n in ["xen-4.6-pre", "patch-v1", "committed", "fixed"] {
            assert!(Revision::by_name(n).is_some());
        }
        assert!(Revision::by_name("nope").is_none());
    }

    #[test]
    fn every_switch_name_is_adoptable() {
        let fixed = Switches {
            planted_free_before_flush: true,
            planted_split_wrong_frame: true,
            planted_leak_replaced_subtree: true,
            planted_free_entry_recurses_short: true,
            planted_free_leaf_frame: true,
            planted_short_flush: PlantedShortFlush::FirstPage,
            ..FIXED
        };
        assert_eq!(PRE.differing(&fixed).len(), Switches::NAMES.len());
        let mut s = PRE;
        for n in Switches::NAMES {
            s = s.with_switch_from(n, &fixed).expect("known switch");
        }
        assert_eq!(s, fixed);
        assert!(PRE.with_switch_from("nope", &fixed).is_none());
        assert!(fixed.differing(&fixed).is_empty());
    }
}
