//! The typed-entry half of `xen/arch/x86/mm/p2m.c` at `c447b7308b` that callers outside
//! the p2m reach: `p2m_change_type_one` (`p2m.c:819-842`), `set_typed_p2m_entry` /
//! `set_mmio_p2m_entry` / `clear_mmio_p2m_entry` (`p2m.c:1059-1243`) and the
//! `XEN_DOMCTL_memory_mapping` loops `map_mmio_regions` / `unmap_mmio_regions` with
//! `mmio_order` (`p2m.c:1683-1781`). Every write goes through [`p2m_set_entry_chunked`],
//! i.e. `p2m_set_entry` with its chunking, and the p2m's default access (`rwx`).

use crate::master::domain::{Cx, P2m};
use crate::master::p2m::{p2m_is_ram, p2m_set_entry, P2mCaps};
use crate::master::p2m_physmap::{get_gfn_query, p2m_is_hole, p2m_is_special};
use crate::physmap::{BatchOutcome, PhysmapError};
use crate::recalc::RecalcState;
use crate::types::{GfnRange, Mfn, P2mAccess, P2mType, INVALID_MFN, MMIO_RO_FRAMES};

/// `p2m->default_access` (`p2m-basic.c:34`): `rwx` (the model never changes it).
pub const DEFAULT_ACCESS: P2mAccess = P2mAccess::Rwx;

/// `p2m_set_entry(p2m, gfn, mfn, order, t, a)` (`p2m.c:422-452`): the range chunked as
/// Xen chunks it, each chunk to the p2m's `set_entry`; the changed range is logged.
pub fn p2m_set_entry_chunked(
    p2m: &mut P2m,
    cx: &mut Cx,
    gfn: u64,
    mfn: Mfn,
    order: u32,
    t: P2mType,
    a: P2mAccess,
) -> Result<(), PhysmapError> {
    cx.log.p2m_changed(GfnRange::of_order(gfn, order.min(18)));
    let caps = P2mCaps::of(&cx.cfg);
    p2m_set_entry(caps, gfn, mfn, order, |g, m, o| match p2m {
        P2m::Ept(e) => e.set_entry(cx, g, m, o, t, a),
        P2m::Pt(p) => p.set_entry(cx, g, m, o, t, a),
    })
    .map_err(PhysmapError::P2m)
}

/// The `page_order` `p2m->get_entry()` reports for `gfn`: the order of the leaf that maps
/// it, or of the empty entry where the walk ended (27 for an empty top-level entry).
pub fn get_entry_order(p2m: &P2m, gfn: u64) -> u32 {
    let table_at = |level| match p2m {
        P2m::Ept(e) => e.table_at(gfn, level),
        P2m::Pt(p) => p.table_at(gfn, level),
    };
    match (1u8..=3).find(|&l| table_at(l).is_some()) {
        Some(l) => 9 * u32::from(l - 1),
        None => 27,
    }
}

/// The "retry with a smaller order" answer of `set_typed_p2m_entry` /
/// `clear_mmio_p2m_entry` (`cur_order + 1`) when the entry at `gfn` is smaller than `order`.
fn retry_smaller(p2m: &P2m, gfn: u64, order: u32) -> Option<u32> {
    let cur_order = get_entry_order(p2m, gfn);
    (cur_order < order).then_some(cur_order + 1)
}

/// `p2m_add_identity_entry(d, gfn, p2ma, flag)` (`p2m.c:1245-1283`, via
/// `set_identity_p2m_entry`, `physmap.c:67-79`): an empty gfn (`invalid` / `mmio_dm`) gets
/// `gfn → gfn` as `mmio_direct` at 4 KiB with access `p2ma` (not the default access); the
/// same identity entry with the same access is left alone; anything else is `-EBUSY`
/// (no `XEN_DOMCTL_DEV_RDM_RELAXED` in the model).
pub fn p2m_add_identity_entry(
    p2m: &mut P2m,
    cx: &mut Cx,
    gfn: u64,
    p2ma: P2mAccess,
) -> Result<(), PhysmapError> {
    let e = match p2m {
        P2m::Ept(e) => e.get_entry(gfn),
        P2m::Pt(p) => p.get_entry(gfn),
    };
    let (mfn, t, a) = e.map_or((INVALID_MFN, P2mType::Invalid, P2mAccess::N), |e| {
        (e.mfn, e.p2mt, e.access)
    });
    if matches!(t, P2mType::Invalid | P2mType::MmioDm) {
        p2m_set_entry_chunked(p2m, cx, gfn, Mfn(gfn), 0, P2mType::MmioDirect, p2ma)
    } else if mfn == Mfn(gfn) && t == P2mType::MmioDirect && a == p2ma {
        Ok(())
    } else {
        Err(PhysmapError::Busy)
    }
}

/// `p2m_remove_identity_entry(d, gfn)` (`p2m.c:1285-1322`, via
/// `clear_identity_p2m_entry`): an `mmio_direct` entry mapping `gfn` to itself is
/// cleared (`p2m_invalid`, default access); anything else is left as it is (0).
pub fn p2m_remove_identity_entry(p2m: &mut P2m, cx: &mut Cx, gfn: u64) -> Result<(), PhysmapError> {
    let (mfn, t) = get_gfn_query(p2m, gfn);
    if t == P2mType::MmioDirect && mfn == Mfn(gfn) {
        p2m_set_entry_chunked(
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

/// `p2m_change_type_one(d, gfn, ot, nt)` (`p2m.c:819-842`): `-EBUSY` unless the entry
/// still has type `ot`; else the same frame at 4 KiB with type `nt` and the default
/// access (a superpage is split; any `mem_access` setting is lost).
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
    p2m_set_entry_chunked(p2m, cx, gfn, mfn, 0, nt, DEFAULT_ACCESS)
}

/// The p2m's `logdirty_ranges` / `max_mapped_pfn` (`struct p2m_domain`).
pub fn recalc_state(p2m: &mut P2m) -> &mut RecalcState {
    match p2m {
        P2m::Ept(e) => &mut e.recalc_state,
        P2m::Pt(p) => &mut p.recalc_state,
    }
}

/// `p2m_change_type_range(d, start, end_exclusive, ot, nt)` (`p2m.c:934-972`) with
/// `change_type_range` (`:845-932`) on the host p2m (no altp2m, no nested p2m in the
/// model): the end is clipped to `max_mapped_pfn` (nothing at all when the range starts
/// above it); when it still spans more than one gfn, the p2m's
/// `change_entry_type_global` (the range is `[0, max_mapped_pfn]`) or
/// `change_entry_type_range` marks it — a failure crashes the domain; then the
/// log-dirty rangeset gains (`ram_rw` → `ram_logdirty`) or loses (the reverse) the range.
/// Note Xen's `invalidate_start < invalidate_end`: a one-gfn range is never marked, only
/// added to the rangeset.
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
    let end = end_exclusive.wrapping_sub(1).min(max_pfn);
    if start > end {
        return;
    }
    let splits_before = cx.log.splits.len();
    if start < end {
        let rc = if start == 0 && end == max_pfn {
            match p2m {
                P2m::Ept(e) => e.change_entry_type_global(cx, ot, nt),
                P2m::Pt(p) => p.change_entry_type_global(cx, ot, nt),
            }
            Ok(())
        } else {
            match p2m {
                P2m::Ept(e) => e.change_entry_type_range(cx, ot, nt, start, end),
                P2m::Pt(p) => p.change_entry_type_range(cx, ot, nt, start, end),
            }
        };
        if rc.is_err() {
            cx.iommu
                .domain_crash("change_type_range: change_entry_type_range failed");
        }
    }
    flush_split_superpages(cx, splits_before);
    let st = recalc_state(p2m);
    match (ot, nt) {
        (P2mType::RamLogdirty, P2mType::RamRw) => st.remove_range(start, end),
        (P2mType::RamRw, P2mType::RamLogdirty) => st.add_range(start, end),
        _ => {}
    }
}

/// `p2m->recalc(p2m, gfn)`: EPT `resolve_misconfig`, p2m-pt `do_recalc` — what a CPU
/// access to a marked `gfn` runs (`ept_handle_misconfig`,
/// `p2m_pt_handle_deferred_changes`). An error (a split that found no memory) leaves the
/// access to fault again; the model reports it and changes nothing further.
pub fn p2m_recalc(p2m: &mut P2m, cx: &mut Cx, gfn: u64) -> Result<bool, PhysmapError> {
    let splits_before = cx.log.splits.len();
    let rc = match p2m {
        P2m::Ept(e) => e.resolve_misconfig(cx, gfn),
        P2m::Pt(p) => p.recalc(cx, gfn),
    };
    flush_split_superpages(cx, splits_before);
    rc.map_err(PhysmapError::P2m)
}

/// Proposed fix `flush_covers_split_superpage` (not Xen) on the paths outside
/// `set_entry` that split a shared-EPT superpage (`ept_invalidate_emt_range`,
/// `resolve_misconfig`): each superpage split since the op log held `from` splits leaves
/// the IOTLB at its own size. Xen flushes nothing there.
fn flush_split_superpages(cx: &mut Cx, from: usize) {
    if !cx.sw.flush_covers_split_superpage || !cx.iommu.shared {
        return;
    }
    let ranges: Vec<GfnRange> = cx.log.splits[from..].iter().map(|s| s.range).collect();
    for r in ranges {
        let flags = crate::master::iommu::FlushFlags {
            added: false,
            modified: true,
            all: false,
        };
        let _ = cx.iommu_iotlb_flush(r.start, r.len(), flags);
    }
}

/// `set_typed_p2m_entry(d, gfn, mfn, order, gfn_p2mt, access)` (`p2m.c:1059-1172`):
/// `Ok(k > 0)` asks the caller to retry with order `k - 1` (the entry there is smaller);
/// a special entry (grant, foreign, `mmio_direct`) with another frame or type crashes
/// the domain (`-EPERM`), the same one with the same access is left alone; RAM is
/// overwritten (its page stays the domain's, orphaned).
pub fn set_typed_p2m_entry(
    p2m: &mut P2m,
    cx: &mut Cx,
    gfn: u64,
    mfn: Mfn,
    order: u32,
    t: P2mType,
    a: P2mAccess,
) -> Result<u32, PhysmapError> {
    if let Some(k) = retry_smaller(p2m, gfn, order) {
        return Ok(k);
    }
    let old = match p2m {
        P2m::Ept(e) => e.get_entry(gfn),
        P2m::Pt(p) => p.get_entry(gfn),
    };
    let (omfn, ot, oa) = old.map_or((INVALID_MFN, P2mType::MmioDm, DEFAULT_ACCESS), |e| {
        (e.mfn, e.p2mt, e.access)
    });
    if p2m_is_special(ot) {
        if omfn != mfn || ot != t {
            cx.iommu
                .crashed
                .get_or_insert("set_typed_p2m_entry over another special entry");
            return Err(PhysmapError::Perm);
        }
        if oa == a {
            return Ok(0);
        }
    }
    p2m_set_entry_chunked(p2m, cx, gfn, mfn, order, t, a).map(|()| 0)
}

/// `set_mmio_p2m_entry(d, gfn, mfn, order)` (`p2m.c:1184-1194`): a superpage over
/// `mmio_ro_ranges` is "retry at 4 KiB" (`Ok(1)`); else an `mmio_direct` entry with the
/// default access.
pub fn set_mmio_p2m_entry(
    p2m: &mut P2m,
    cx: &mut Cx,
    gfn: u64,
    mfn: Mfn,
    order: u32,
) -> Result<u32, PhysmapError> {
    let end = mfn.0.saturating_add(1 << order.min(18));
    if order > 0 && mfn.0 < MMIO_RO_FRAMES.end && end > MMIO_RO_FRAMES.start {
        return Ok(1);
    }
    set_typed_p2m_entry(
        p2m,
        cx,
        gfn,
        mfn,
        order,
        P2mType::MmioDirect,
        DEFAULT_ACCESS,
    )
}

/// `clear_mmio_p2m_entry(d, gfn, mfn, order)` (`p2m.c:1203-1243`): retry smaller when the
/// entry is; `-EINVAL` unless it is `mmio_direct` (a different frame is only warned about);
/// else `INVALID_MFN` / `p2m_invalid` at `order`. Its `mfn_eq(actual_mfn, INVALID_MFN)`
/// test (`:1226`) holds only where nothing is mapped: a present entry reads back its raw
/// frame field (`p2m_pt_get_entry`'s `l1e_get_mfn`, `p2m-pt.c:928-933`; `ept_get_entry`'s
/// `ept_entry->mfn`), and the
/// clipped all-ones field is not `INVALID_MFN`; the model's `get_entry` reports that field
/// as `INVALID_MFN`, so only the type is asked here.
pub fn clear_mmio_p2m_entry(
    p2m: &mut P2m,
    cx: &mut Cx,
    gfn: u64,
    order: u32,
) -> Result<u32, PhysmapError> {
    if let Some(k) = retry_smaller(p2m, gfn, order) {
        return Ok(k);
    }
    let (_, t) = get_gfn_query(p2m, gfn);
    if t != P2mType::MmioDirect {
        return Err(PhysmapError::Inval);
    }
    p2m_set_entry_chunked(
        p2m,
        cx,
        gfn,
        INVALID_MFN,
        order,
        P2mType::Invalid,
        DEFAULT_ACCESS,
    )
    .map(|()| 0)
}

/// `mmio_order(d, start_fn, nr)` (`p2m.c:1683-1709`): 4 KiB without HAP, for a start not
/// 2 MiB-aligned or fewer than 512 frames; else 2 MiB (the 1 GiB branch is disabled).
pub fn mmio_order(cfg: &crate::types::Config, start_fn: u64, nr: u64) -> u32 {
    let caps = P2mCaps::of(cfg);
    if !caps.hap || start_fn & 511 != 0 || nr >> 9 == 0 {
        0
    } else if caps.hap_has_2mb {
        9
    } else {
        0
    }
}

/// `map_mmio_regions` / `unmap_mmio_regions` (`p2m.c:1713-1781`) as libxc's loop
/// (`xc_domain_memory_mapping`) drives them to the end: per step the order `mmio_order`
/// gives, retried smaller while the callee asks; an error stops (an add is then undone
/// by libxc's unmap of the whole region, whose result is ignored). Returns pages done.
pub fn memory_mapping(
    p2m: &mut P2m,
    cx: &mut Cx,
    gfn: u64,
    mfn: u64,
    nr: u64,
    add: bool,
) -> BatchOutcome {
    let mut i = 0;
    let mut rc = Ok(());
    while i < nr {
        let mut order = mmio_order(&cx.cfg, (gfn + i) | (mfn + i), nr - i);
        let step = loop {
            let r = if add {
                set_mmio_p2m_entry(p2m, cx, gfn + i, Mfn(mfn + i), order)
            } else {
                clear_mmio_p2m_entry(p2m, cx, gfn + i, order)
            };
            match r {
                Ok(k) if k > 0 && k - 1 < order => order = k - 1,
                other => break other,
            }
        };
        if let Err(e) = step {
            rc = Err(e);
            break;
        }
        i += 1 << order;
    }
    if add && rc.is_err() && cx.iommu.crashed.is_none() {
        let _ = memory_mapping(p2m, cx, gfn, mfn, nr, false);
    }
    BatchOutcome { done: i, rc }
}

/// `XEN_DOMCTL_set_broken_page_p2m` (`x86/domctl.c:1127-1143`): `-EINVAL` unless the
/// entry maps a RAM frame with a RAM type (`p2m_is_ram`, `ioreq_server` included); else
/// `p2m_change_type_one` to `ram_broken` on the same frame.
pub fn set_broken_page_p2m(p2m: &mut P2m, cx: &mut Cx, gfn: u64) -> BatchOutcome {
    let (mfn, pt) = get_gfn_query(p2m, gfn);
    let rc = if !crate::physmap::mfn_valid(mfn) || !p2m_is_ram(pt) {
        Err(PhysmapError::Inval)
    } else {
        p2m_change_type_one(p2m, cx, gfn, pt, P2mType::RamBroken)
    };
    BatchOutcome {
        done: u64::from(rc.is_ok()),
        rc,
    }
}

/// `allow_p2m_type_change(ot, nt)` (`hvm/dm.c:206-216`): to `ioreq_server` only from
/// `ram_rw`, from `ioreq_server` only to `ram_rw`; else any RAM type, and a hole only
/// to `mmio_dm`.
pub fn allow_p2m_type_change(ot: P2mType, nt: P2mType) -> bool {
    use crate::master::p2m::P2M_IOREQ_SERVER;
    if nt == P2M_IOREQ_SERVER {
        return ot == P2mType::RamRw;
    }
    if ot == P2M_IOREQ_SERVER {
        return nt == P2mType::RamRw;
    }
    p2m_is_ram(ot) || (p2m_is_hole(ot) && nt == P2mType::MmioDm)
}
