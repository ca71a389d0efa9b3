//! The generic p2m layer of Xen 4.6 (`xen/arch/x86/mm/p2m.c` at `edb9531263`) that the
//! callers reach: `p2m_set_entry` with its chunking (`p2m.c:438-471`),
//! `guest_physmap_add_entry` for a fresh extent (`p2m.c:647-806`), `p2m_change_type_one`
//! (`p2m.c:814-837`), `set_typed_p2m_entry` / `clear_mmio_p2m_entry` with the
//! `XEN_DOMCTL_memory_mapping` loops (`p2m.c:899-1041,2057-2101`, `common/domctl.c:1031-1085`)
//! and `p2m_set_mem_access` (`p2m.c:1779-1840`).

use crate::physmap::{foreign_owned, mfn_valid, BatchOutcome, PhysmapError};
use crate::recalc::RecalcState;
use crate::tables::Pte;
use crate::types::{GfnRange, Mfn, Mode, P2mAccess, P2mType, INVALID_MFN};
use crate::xen46::domain::{Cx, P2m};

/// `p2m->default_access` (`p2m.c:71`): `rwx` (the model never changes it).
pub const DEFAULT_ACCESS: P2mAccess = P2mAccess::Rwx;

/// `p2m_is_ram()` of 4.6 (`asm-x86/p2m.h`, `P2M_RAM_TYPES`): RAM, log-dirty, read-only,
/// the paging types and shared (not `mmio_write_dm`).
pub fn p2m_is_ram(t: P2mType) -> bool {
    use P2mType::*;
    matches!(
        t,
        RamRw | RamLogdirty | RamRo | RamPagingOut | RamPaged | RamPagingIn | RamShared
    )
}

/// The order of one `p2m_set_entry` chunk of 4.6 (`p2m.c:450-458`) with `todo` pages
/// left: under HAP 1 GiB / 2 MiB when `gfn | mfn | todo` is aligned (the hardware has
/// both), else 4 KiB; always 4 KiB in shadow mode. `INVALID_MFN` has every low bit set,
/// so it always goes out 4 KiB at a time.
pub fn p2m_set_entry_order(mode: Mode, gfn: u64, mfn: Mfn, todo: u64) -> u32 {
    let mask = gfn | mfn.0 | todo;
    if mode == Mode::Shadow {
        0
    } else if mask & ((1 << 18) - 1) == 0 {
        18
    } else if mask & ((1 << 9) - 1) == 0 {
        9
    } else {
        0
    }
}

/// `p2m_set_entry(p2m, gfn, mfn, order, t, a)` of 4.6 (`p2m.c:438-471`): chunks as
/// [`p2m_set_entry_order`] says, every chunk written even after one failed, the last
/// failure returned; the changed range is logged.
pub fn p2m_set_entry(
    p2m: &mut P2m,
    cx: &mut Cx,
    gfn: u64,
    mfn: Mfn,
    order: u32,
    t: P2mType,
    a: P2mAccess,
) -> Result<(), PhysmapError> {
    let order = order.min(18);
    cx.log.p2m_changed(GfnRange::of_order(gfn, order));
    let mut todo = 1u64 << order;
    let (mut g, mut m) = (gfn, mfn);
    let mut rc = Ok(());
    while todo != 0 {
        let o = p2m_set_entry_order(cx.cfg.mode, g, m, todo);
        // The 4 KiB chunks left in this level-1 table, as one step when the p2m can
        // (`p2m_pt::run`, `p2m_ept::run`); else one literal call.
        let in_table = todo.min(512 - (g & 511));
        if o == 0 && in_table > 1 {
            let done = match p2m {
                P2m::Pt(pt) => pt.set_entry_run_4k(cx, g, m, in_table, t),
                P2m::Ept(ept) => ept.set_entry_run_4k(cx, g, m, in_table, t, a),
            };
            if done.is_some() {
                g += in_table;
                if m != INVALID_MFN {
                    m = m.plus(in_table);
                }
                todo -= in_table;
                continue;
            }
        }
        if let Err(e) = p2m.set_entry(cx, g, m, o, t, a) {
            rc = Err(PhysmapError::P2m(e));
        }
        g += 1 << o;
        if m != INVALID_MFN {
            m = m.plus(1 << o);
        }
        todo -= 1 << o;
    }
    rc
}

/// The frame `p2m_set_entry` passes to the chunk `k` pages in: `mfn + k`, except that
/// `INVALID_MFN` stays itself (`p2m.c:462-463`).
pub fn chunk_mfn(mfn: Mfn, k: u64) -> u64 {
    if mfn == INVALID_MFN {
        mfn.0
    } else {
        mfn.0.wrapping_add(k)
    }
}

/// Calls `f(k, entry)` for each of the `pages` entries from `idx` of a table, given its
/// runs there (`old`, as `Table::runs_in` gives them): gaps read as empty entries. The
/// run steps judge each chunk of the literal loop this way.
pub(crate) fn for_each_chunk<E: Pte>(
    old: &[(u16, u16, E)],
    idx: u16,
    pages: u64,
    mut f: impl FnMut(usize, E),
) {
    let mut at = 0usize;
    for &(s, l, e) in old {
        let first = (s - idx) as usize;
        for k in at..first {
            f(k, E::default());
        }
        for k in 0..l as usize {
            f(first + k, e.nth(k as u64, 1));
        }
        at = first + l as usize;
    }
    for k in at..pages as usize {
        f(k, E::default());
    }
}

/// `get_gfn_query()`: `(mfn, type)`, `(INVALID_MFN, p2m_mmio_dm)` where nothing is mapped;
/// a PoD entry reads with `INVALID_MFN` (`ept.c:903-907`: `q = 0` does not populate).
pub fn get_gfn_query(p2m: &P2m, gfn: u64) -> (Mfn, P2mType) {
    match p2m.get_entry(gfn) {
        None => (INVALID_MFN, P2mType::MmioDm),
        Some(e) if e.p2mt == P2mType::PopulateOnDemand => (INVALID_MFN, e.p2mt),
        Some(e) => (e.mfn, e.p2mt),
    }
}

/// The p2m's `logdirty_ranges` / `max_mapped_pfn` (`struct p2m_domain`).
pub fn recalc_state(p2m: &mut P2m) -> &mut RecalcState {
    match p2m {
        P2m::Ept(e) => &mut e.recalc_state,
        P2m::Pt(p) => &mut p.recalc_state,
    }
}

/// `p2m_change_type_range(d, start, end_exclusive, ot, nt)` (`p2m.c:840-896`): a range
/// reaching past `max_mapped_pfn` is cut there — from gfn 0, the whole p2m is marked with
/// `change_entry_type_global` instead; what is left is marked with
/// `change_entry_type_range` (a failure crashes the domain). The log-dirty rangeset then
/// gains (`ram_rw` → `ram_logdirty`) or loses (the reverse) `[start, end - 1]` with the
/// cut end (a range starting past `max_mapped_pfn` leaves it as it is: see
/// `RecalcState::add_range`).
pub fn p2m_change_type_range(
    p2m: &mut P2m,
    cx: &mut Cx,
    start: u64,
    end_exclusive: u64,
    ot: P2mType,
    nt: P2mType,
) {
    cx.log.p2m_changed(GfnRange {
        start,
        end: end_exclusive,
    });
    let max_pfn = recalc_state(p2m).max_mapped_pfn;
    let mut gfn = start;
    let mut end = end_exclusive;
    if end > max_pfn {
        if gfn == 0 {
            match p2m {
                P2m::Ept(e) => e.change_entry_type_global(cx, ot, nt),
                P2m::Pt(p) => p.change_entry_type_global(cx, ot, nt),
            }
            gfn = end;
        }
        end = max_pfn + 1;
    }
    let splits_before = cx.log.splits.len();
    if gfn < end {
        let rc = match p2m {
            P2m::Ept(e) => e.change_entry_type_range(cx, ot, nt, gfn, end - 1),
            P2m::Pt(p) => p.change_entry_type_range(cx, ot, nt, gfn, end - 1),
        };
        if rc.is_err() {
            cx.crashed
                .get_or_insert("p2m_change_type_range: change_entry_type_range failed");
        }
    }
    flush_split_superpages(p2m, cx, splits_before);
    let st = recalc_state(p2m);
    match (ot, nt) {
        (P2mType::RamLogdirty, P2mType::RamRw) => st.remove_range(start, end - 1),
        (P2mType::RamRw, P2mType::RamLogdirty) => st.add_range(start, end - 1),
        _ => {}
    }
}

/// `p2m->recalc`: EPT `resolve_misconfig` / p2m-pt `do_recalc` for `gfn`, what a CPU
/// access to a marked gfn runs (`ept_handle_misconfig`, `p2m_pt_handle_deferred_changes`).
pub fn p2m_recalc(p2m: &mut P2m, cx: &mut Cx, gfn: u64) -> Result<bool, PhysmapError> {
    let splits_before = cx.log.splits.len();
    let rc = match p2m {
        P2m::Ept(e) => e.recalc(cx, gfn),
        P2m::Pt(p) => p.recalc(cx, gfn),
    };
    flush_split_superpages(p2m, cx, splits_before);
    rc.map_err(PhysmapError::P2m)
}

/// Proposed fix `flush_covers_split_superpage` (not Xen) on the lazy type change's own
/// splits (`ept_invalidate_emt_range`, `resolve_misconfig`, `p2m_next_level` from
/// `p2m_pt_set_recalc_range` / `do_recalc`): with tables shared with the IOMMU, each
/// superpage split since the op log held `from` splits is flushed at its own size
/// (`iommu_pte_flush` / `amd_iommu_flush_pages`). Xen flushes nothing there.
fn flush_split_superpages(p2m: &P2m, cx: &mut Cx, from: usize) {
    if !cx.sw.flush_covers_split_superpage || !cx.cfg.iommu_use_hap_pt() || !cx.iommu.need_iommu {
        return;
    }
    let ranges: Vec<GfnRange> = cx.log.splits[from..].iter().map(|s| s.range).collect();
    for r in ranges {
        let order = r.len().trailing_zeros();
        match p2m {
            P2m::Ept(_) => cx.iommu.iommu_pte_flush(r.start, order, true),
            P2m::Pt(_) => cx.iommu.amd_iommu_flush_pages(r.start, order),
        }
    }
}

/// `guest_physmap_add_entry(d, gfn, mfn, order, p2m_ram_rw)` for a fresh extent
/// (`p2m.c:647-806`): over the old entries in gfn order, a shared one cannot be unshared
/// (`-ENOMEM`) and a grant or foreign one crashes the domain (`-EINVAL`), both before any
/// write; old RAM pages lose only their M2P entry (they stay the domain's, orphaned);
/// the fresh pages have no old gfn. Then `p2m_set_entry` over the range. Costs the runs
/// of the old content, not its pages.
pub fn guest_physmap_add_entry(
    p2m: &mut P2m,
    cx: &mut Cx,
    gfn: u64,
    mfn: Mfn,
    order: u32,
) -> Result<(), PhysmapError> {
    let range = GfnRange::of_order(gfn, order.min(18));
    let old = match p2m {
        P2m::Ept(e) => e.cpu_extents(range),
        P2m::Pt(p) => p.cpu_extents(range),
    };
    for ext in old {
        if ext.p2mt == P2mType::RamShared {
            return Err(PhysmapError::NoMem);
        }
        if foreign_owned(ext.p2mt) {
            cx.crashed
                .get_or_insert("guest_physmap_add_entry over a grant/foreign entry");
            return Err(PhysmapError::Inval);
        }
    }
    if !mfn_valid(mfn) {
        return Ok(());
    }
    p2m_set_entry(p2m, cx, gfn, mfn, order, P2mType::RamRw, DEFAULT_ACCESS)
}

/// `p2m_change_type_one(d, gfn, ot, nt)` (`p2m.c:814-837`): `-EBUSY` unless the entry
/// still has type `ot`; else the same frame at 4 KiB with type `nt` and the default
/// access (a superpage is split; any access setting is lost).
pub fn p2m_change_type_one(
    p2m: &mut P2m,
    cx: &mut Cx,
    gfn: u64,
    ot: P2mType,
    nt: P2mType,
) -> Result<(), PhysmapError> {
    let (mfn, pt) = get_gfn_query(p2m, gfn);
    if pt != ot {
        return Err(PhysmapError::Busy);
    }
    p2m_set_entry(p2m, cx, gfn, mfn, 0, nt, DEFAULT_ACCESS)
}

/// `set_mmio_p2m_entry(d, gfn, mfn, access)` → `set_typed_p2m_entry` (`p2m.c:899-956`):
/// a grant or foreign entry crashes the domain (`-ENOENT`); anything else (RAM, whose
/// page is orphaned, another MMIO frame) is overwritten by a 4 KiB `mmio_direct` entry.
pub fn set_mmio_p2m_entry(
    p2m: &mut P2m,
    cx: &mut Cx,
    gfn: u64,
    mfn: Mfn,
) -> Result<(), PhysmapError> {
    let (_, ot) = get_gfn_query(p2m, gfn);
    if foreign_owned(ot) {
        cx.crashed
            .get_or_insert("set_typed_p2m_entry over a grant/foreign entry");
        return Err(PhysmapError::NoEnt);
    }
    p2m_set_entry(p2m, cx, gfn, mfn, 0, P2mType::MmioDirect, DEFAULT_ACCESS)
}

/// `clear_mmio_p2m_entry(d, gfn, mfn)` (`p2m.c:1009-1041`): `-EINVAL` unless the entry is
/// `mmio_direct` (another frame is only warned about); else a 4 KiB `INVALID_MFN` /
/// `p2m_invalid` entry. Its `INVALID_MFN == actual_mfn` test (`:1024`) holds only where
/// nothing is mapped: a present entry reads back its raw frame field
/// (`p2m_pt_get_entry`'s `l1e_get_pfn`, `p2m-pt.c:50-56,867-872`; `ept_get_entry`'s
/// `ept_entry->mfn`), and the clipped all-ones field of frame `2^40 - 1` (or of an
/// `INVALID_MFN` written through the internal API) is not `~0UL`; so the model's
/// `get_entry`, which reports that field as `INVALID_MFN`, is not asked for the frame.
pub fn clear_mmio_p2m_entry(p2m: &mut P2m, cx: &mut Cx, gfn: u64) -> Result<(), PhysmapError> {
    let (_, t) = get_gfn_query(p2m, gfn);
    if t != P2mType::MmioDirect {
        return Err(PhysmapError::Inval);
    }
    p2m_set_entry(
        p2m,
        cx,
        gfn,
        INVALID_MFN,
        0,
        P2mType::Invalid,
        DEFAULT_ACCESS,
    )
}

/// `set_identity_p2m_entry(d, gfn, p2ma, flag)` of 4.6 (`p2m.c:958-1006`): an empty gfn
/// gets `gfn → gfn` as `mmio_direct` at 4 KiB with access `p2ma`; the same identity entry
/// with the same access is left alone; anything else is `-EBUSY` (no
/// `XEN_DOMCTL_DEV_RDM_RELAXED` in the model).
pub fn set_identity_p2m_entry(
    p2m: &mut P2m,
    cx: &mut Cx,
    gfn: u64,
    p2ma: P2mAccess,
) -> Result<(), PhysmapError> {
    let (mfn, t, a) = p2m
        .get_entry(gfn)
        .map_or((INVALID_MFN, P2mType::Invalid, P2mAccess::N), |e| {
            (e.mfn, e.p2mt, e.access)
        });
    if matches!(t, P2mType::Invalid | P2mType::MmioDm) {
        p2m_set_entry(p2m, cx, gfn, Mfn(gfn), 0, P2mType::MmioDirect, p2ma)
    } else if mfn == Mfn(gfn) && t == P2mType::MmioDirect && a == p2ma {
        Ok(())
    } else {
        Err(PhysmapError::Busy)
    }
}

/// `clear_identity_p2m_entry(d, gfn)` of 4.6 (`p2m.c:1043-1077`): an `mmio_direct` entry
/// mapping `gfn` to itself is cleared; anything else is left alone (0).
pub fn clear_identity_p2m_entry(p2m: &mut P2m, cx: &mut Cx, gfn: u64) -> Result<(), PhysmapError> {
    let (mfn, t) = get_gfn_query(p2m, gfn);
    if t == P2mType::MmioDirect && mfn == Mfn(gfn) {
        p2m_set_entry(
            p2m,
            cx,
            gfn,
            INVALID_MFN,
            0,
            P2mType::Invalid,
            DEFAULT_ACCESS,
        )
    } else {
        Ok(())
    }
}

/// `XEN_DOMCTL_set_broken_page_p2m` of 4.6 (`x86/domctl.c:993-1006`): `-EINVAL` unless
/// the entry maps a RAM frame with a RAM type; else `p2m_change_type_one` to
/// `ram_broken` on the same frame.
pub fn set_broken_page_p2m(p2m: &mut P2m, cx: &mut Cx, gfn: u64) -> BatchOutcome {
    let (mfn, pt) = get_gfn_query(p2m, gfn);
    let rc = if !mfn_valid(mfn) || !p2m_is_ram(pt) {
        Err(PhysmapError::Inval)
    } else {
        p2m_change_type_one(p2m, cx, gfn, pt, P2mType::RamBroken)
    };
    BatchOutcome {
        done: u64::from(rc.is_ok()),
        rc,
    }
}

/// Most frames one 4.6 `XEN_DOMCTL_memory_mapping` takes (`domctl.c:1045-1048`).
pub const MEMORY_MAPPING_MAX: u64 = 64;

/// `XEN_DOMCTL_memory_mapping` of 4.6 (`domctl.c:1031-1085`): more than 64 frames is
/// `-E2BIG`. Add: `map_mmio_regions` (`p2m.c:2057-2080`) maps page by page; an error
/// unmaps the pages already mapped and is returned. Remove: `unmap_mmio_regions`
/// (`p2m.c:2082-2101`) clears every page, the last error returned. Pages done: those
/// the loop got through before an error (add), or cleared (remove).
pub fn memory_mapping(
    p2m: &mut P2m,
    cx: &mut Cx,
    gfn: u64,
    mfn: u64,
    nr: u64,
    add: bool,
) -> BatchOutcome {
    if nr > MEMORY_MAPPING_MAX {
        return BatchOutcome {
            done: 0,
            rc: Err(PhysmapError::TooBig),
        };
    }
    if add {
        for i in 0..nr {
            if let Err(e) = set_mmio_p2m_entry(p2m, cx, gfn + i, Mfn(mfn + i)) {
                for k in 0..i {
                    let _ = clear_mmio_p2m_entry(p2m, cx, gfn + k);
                }
                return BatchOutcome {
                    done: i,
                    rc: Err(e),
                };
            }
        }
        return BatchOutcome {
            done: nr,
            rc: Ok(()),
        };
    }
    let (mut done, mut rc) = (0, Ok(()));
    for i in 0..nr {
        match clear_mmio_p2m_entry(p2m, cx, gfn + i) {
            Ok(()) => done += 1,
            Err(e) => rc = Err(e),
        }
    }
    BatchOutcome { done, rc }
}

/// `p2m_set_mem_access(d, gfn, nr, start, mask, access)` of 4.6 (`p2m.c:1779-1840`,
/// reached by `XENMEM_access_op` only): EPT only (`-EINVAL` otherwise); per gfn, the
/// p2m's own `set_entry` at 4 KiB with the frame and type it reads and the new access;
/// no type is skipped; the first error stops the op. A monitor ring is taken to exist.
pub fn p2m_set_mem_access(
    p2m: &mut P2m,
    cx: &mut Cx,
    gfn: u64,
    nr: u64,
    access: P2mAccess,
) -> BatchOutcome {
    if !matches!(p2m, P2m::Ept(_)) {
        return BatchOutcome {
            done: 0,
            rc: Err(PhysmapError::Inval),
        };
    }
    for i in 0..nr {
        let g = gfn + i;
        let (mfn, t) = get_gfn_query(p2m, g);
        cx.log.p2m_changed(GfnRange::of_order(g, 0));
        if let Err(e) = p2m.set_entry(cx, g, mfn, 0, t, access) {
            return BatchOutcome {
                done: i,
                rc: Err(PhysmapError::P2m(e)),
            };
        }
    }
    BatchOutcome {
        done: nr,
        rc: Ok(()),
    }
}
