//! The physmap half of `xen/arch/x86/mm/p2m.c` at `c447b7308b` that the
//! `XENMAPSPACE_gmfn_range` batch goes through: `p2m_remove_entry` / `p2m_remove_page`
//! (`p2m.c:537-620`), `p2m_add_page` (`p2m.c:622-780`) and `xenmem_add_to_physmap_one`
//! for `XENMAPSPACE_gmfn` (`p2m.c:1992-2110`). The M2P is not kept: see
//! [`crate::physmap`] for what the model assumes in its place.

use crate::master::domain::{Cx, P2m};
use crate::master::memory::{guest_remove_page, put_page};
use crate::master::p2m::p2m_is_any_ram;
use crate::physmap::{domain_page, foreign_owned, mfn_valid, PageRefs, PhysmapError};
use crate::types::{Mfn, P2mAccess, P2mType, INVALID_MFN};
use crate::walk::IoTables;

/// `p2m->get_entry()` as a query: `(mfn, type)`, Xen's defaults `(INVALID_MFN,
/// p2m_mmio_dm)` where nothing is mapped.
pub fn get_gfn_query(p2m: &P2m, gfn: u64) -> (Mfn, P2mType) {
    let e = match p2m {
        P2m::Ept(e) => e.get_entry(gfn),
        P2m::Pt(p) => p.get_entry(gfn),
    };
    e.map_or((INVALID_MFN, P2mType::MmioDm), |e| (e.mfn, e.p2mt))
}

/// `p2m_set_entry(p2m, gfn, mfn, PAGE_ORDER_4K, t, p2m->default_access)` (default
/// access `rwx`).
pub fn set_4k(
    p2m: &mut P2m,
    cx: &mut Cx,
    gfn: u64,
    mfn: Mfn,
    t: P2mType,
) -> Result<(), PhysmapError> {
    cx.log.p2m_changed(crate::types::GfnRange::of_order(gfn, 0));
    match p2m {
        P2m::Ept(e) => e.set_entry(cx, gfn, mfn, 0, t, P2mAccess::Rwx),
        P2m::Pt(p) => p.set_entry(cx, gfn, mfn, 0, t, P2mAccess::Rwx),
    }
    .map_err(PhysmapError::P2m)
}

/// `p2m_is_hole()` (`asm/p2m.h:92-95,166`): `mmio_dm`, `invalid`, `ram_paging_in`,
/// `ram_paged`.
pub fn p2m_is_hole(t: P2mType) -> bool {
    matches!(
        t,
        P2mType::MmioDm | P2mType::Invalid | P2mType::RamPagingIn | P2mType::RamPaged
    )
}

/// `p2m_is_special()` (`asm/p2m.h:151-153,183`): grant, foreign and `mmio_direct`.
pub fn p2m_is_special(t: P2mType) -> bool {
    foreign_owned(t) || t == P2mType::MmioDirect
}

/// `get_page(page, d)` / `get_page_from_mfn(mfn, d)` (see [`domain_page`]).
pub fn domain_owns_page(cx: &mut Cx, gfn: u64, mfn: Mfn, t: P2mType) -> bool {
    domain_page(cx.mem, cx.log, gfn, mfn, t)
}

/// `p2m_remove_page(d, gfn, mfn, PAGE_ORDER_4K)` → `p2m_remove_entry` (`p2m.c:537-620`):
/// `-EILSEQ` unless the entry is RAM mapping `mfn` (or a hole and `mfn` is
/// `INVALID_MFN`), then an empty entry with the default access.
pub fn p2m_remove_page(p2m: &mut P2m, cx: &mut Cx, gfn: u64, mfn: Mfn) -> Result<(), PhysmapError> {
    let (cur, t) = get_gfn_query(p2m, gfn);
    let bad = if p2m_is_any_ram(t) || t == P2mType::RamBroken {
        !mfn_valid(mfn) || mfn != cur
    } else {
        !p2m_is_hole(t) || mfn != INVALID_MFN
    };
    if bad {
        return Err(PhysmapError::IlSeq);
    }
    set_4k(p2m, cx, gfn, INVALID_MFN, P2mType::Invalid)
}

/// `p2m_add_page(d, gfn, mfn, order, t)` (`p2m.c:622-812`) for a RAM type: over the old
/// entries in gfn order, a shared one cannot be unshared (`-ENOMEM`) and a grant,
/// foreign or `mmio_direct` one crashes the domain (`-EPERM`), both before any write;
/// old RAM pages lose only their M2P entry (they stay the domain's). The page's own old
/// gfn was removed by the caller (the batch) or never existed (a fresh page), so the
/// M2P alias loop removes nothing. Then `p2m_set_entry` over the range (chunked).
/// Costs the runs of the old content, not its pages.
pub fn p2m_add_page(
    p2m: &mut P2m,
    cx: &mut Cx,
    gfn: u64,
    mfn: Mfn,
    order: u32,
    t: P2mType,
) -> Result<(), PhysmapError> {
    if !mfn_valid(mfn) || t == P2mType::MmioDirect {
        return Err(PhysmapError::Inval);
    }
    let range = crate::types::GfnRange::of_order(gfn, order.min(18));
    let old = match p2m {
        P2m::Ept(e) => e.cpu_extents(range),
        P2m::Pt(p) => p.cpu_extents(range),
    };
    for ext in old {
        if ext.p2mt == P2mType::RamShared {
            return Err(PhysmapError::NoMem);
        }
        if p2m_is_special(ext.p2mt) {
            cx.iommu
                .crashed
                .get_or_insert("p2m_add_page over a grant/foreign/mmio_direct entry");
            return Err(PhysmapError::Perm);
        }
    }
    if order == 0 {
        return set_4k(p2m, cx, gfn, mfn, t);
    }
    crate::master::p2m_typed::p2m_set_entry_chunked(
        p2m,
        cx,
        gfn,
        mfn,
        order,
        t,
        crate::master::p2m_typed::DEFAULT_ACCESS,
    )
}

/// `xenmem_add_to_physmap_one(d, XENMAPSPACE_gmfn, extra, idx, gfn)`
/// (`p2m.c:1992-2110`): the source must be `ram_rw` or `ram_logdirty` and a page of the
/// domain; a populated destination is removed (`-EPERM` for `mmio_direct`,
/// `guest_remove_page` for another page); the source entry is removed; the page is
/// added at `gfn` as `ram_rw`. On success the page reference moves to the batch
/// (`extra.ppage`) when `batch_holds_page_refs`, else it is dropped here.
pub fn xenmem_add_to_physmap_one(
    p2m: &mut P2m,
    cx: &mut Cx,
    refs: &mut PageRefs,
    idx: u64,
    gfn: u64,
) -> Result<(), PhysmapError> {
    let (mfn, p2mt) = get_gfn_query(p2m, idx);
    if p2mt != P2mType::RamRw && p2mt != P2mType::RamLogdirty {
        return Err(if p2mt == P2mType::RamShared {
            PhysmapError::NoMem
        } else {
            PhysmapError::Acces
        });
    }
    if !domain_owns_page(cx, idx, mfn, p2mt) {
        return Err(PhysmapError::Inval);
    }
    refs.get(mfn.0);
    let (prev_mfn, prev_t) = get_gfn_query(p2m, gfn);
    // The model's M2P names `idx` for the page (see `crate::physmap`): no -EXDEV.
    let mut rc = Ok(());
    if prev_t == P2mType::MmioDirect {
        rc = Err(PhysmapError::Perm);
    } else if mfn_valid(prev_mfn) && prev_mfn != mfn {
        rc = guest_remove_page(p2m, cx, refs, gfn);
    }
    let mut source_unmapped = false;
    if rc.is_ok() && idx != gfn {
        rc = p2m_remove_page(p2m, cx, idx, mfn);
        if rc.is_ok() {
            cx.log.moved_from.push((mfn.0, idx));
            source_unmapped = true;
        }
    }
    if rc.is_ok() {
        rc = p2m_add_page(p2m, cx, gfn, mfn, 0, P2mType::RamRw);
    }
    // Proposed fix `batch_holds_failed_page_ref` (not Xen): a page that failed after its
    // source was unmapped is held until after the batch's flushes too.
    let held = rc.is_ok() || (source_unmapped && cx.sw.batch_holds_failed_page_ref);
    if held && cx.sw.batch_holds_page_refs {
        refs.hand_to_batch(mfn.0, gfn);
    } else {
        put_page(p2m, cx, refs, mfn.0, gfn);
    }
    rc
}

/// The structure the IOMMU walks for this domain (the EPT when shared).
pub fn io_tables<'a>(p2m: &'a P2m, cx: &'a Cx) -> &'a dyn IoTables {
    match p2m {
        P2m::Ept(e) if cx.iommu.shared => e,
        _ => cx.iommu.io_tables(),
    }
}
