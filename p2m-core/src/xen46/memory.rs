//! The `XENMAPSPACE_gmfn_range` batch of Xen 4.6 (`edb9531263`): `xenmem_add_to_physmap`
//! (`common/memory.c:582-641`), `guest_remove_page` (`common/memory.c:188-267`), and the
//! x86 pieces it calls — `xenmem_add_to_physmap_one` (`arch/x86/mm.c:4633-4730`),
//! `p2m_remove_page` (`arch/x86/mm/p2m.c:600-632`), `guest_physmap_add_entry`
//! (`p2m.c:646-800`). The M2P is not kept: see [`crate::physmap`].
//!
//! 4.6 processes pages forwards only, with no page limit per call (so, with no
//! preemption, one call does the whole batch), sets `iommu_dont_flush_iotlb` (which only
//! VT-d's separate-table map and unmap honour) and flushes both ranges at the end
//! (`iommu_iotlb_flush`: a VT-d domain flush for more than one page, nothing on AMD).

use crate::callers::Interleave;
use crate::physmap::{
    domain_page, mfn_valid, AddToPhysmapRange, BatchOutcome, PageRefs, PhysmapError,
};
use crate::stats::bump;
use crate::types::{GfnRange, Mfn, P2mAccess, P2mType, INVALID_MFN};
use crate::walk::IoTables;
use crate::xen46::domain::{Cx, P2m};

/// `p2m_is_paging()` of 4.6 (`asm-x86/p2m.h`).
fn p2m_is_paging(t: P2mType) -> bool {
    matches!(
        t,
        P2mType::RamPagingOut | P2mType::RamPaged | P2mType::RamPagingIn
    )
}

/// `get_gfn_query()`: `(mfn, type)`, `(INVALID_MFN, p2m_mmio_dm)` where nothing is mapped.
fn get_gfn_query(p2m: &P2m, gfn: u64) -> (Mfn, P2mType) {
    p2m.get_entry(gfn)
        .map_or((INVALID_MFN, P2mType::MmioDm), |e| (e.mfn, e.p2mt))
}

/// `p2m_set_entry(p2m, gfn, mfn, PAGE_ORDER_4K, t, p2m->default_access)`.
fn set_4k(p2m: &mut P2m, cx: &mut Cx, gfn: u64, mfn: Mfn, t: P2mType) -> Result<(), PhysmapError> {
    cx.log.p2m_changed(GfnRange::of_order(gfn, 0));
    p2m.set_entry(cx, gfn, mfn, 0, t, P2mAccess::Rwx)
        .map_err(PhysmapError::P2m)
}

/// The structure the IOMMU walks: the p2m when `iommu_use_hap_pt(d)`, else its own.
fn io_tables<'a>(p2m: &'a P2m, cx: &'a Cx) -> &'a dyn IoTables {
    if cx.cfg.iommu_use_hap_pt() {
        match p2m {
            P2m::Ept(e) => e,
            P2m::Pt(p) => p,
        }
    } else {
        &cx.iommu.separate
    }
}

/// Frees a guest page the batch let go of, recording what could still reach it.
fn free_guest_page(p2m: &P2m, cx: &mut Cx, (mfn, gfn): (u64, u64)) {
    cx.stats.guest_pages_freed += 1;
    let mut log = std::mem::take(cx.log);
    let io = io_tables(p2m, cx);
    log.free_guest_page(cx.mem, io, cx.iommu.caches.records(), mfn, gfn);
    *cx.log = log;
}

/// `put_page(page)`, freeing the page if that was its last reference.
fn put_page(p2m: &P2m, cx: &mut Cx, refs: &mut PageRefs, mfn: u64, gfn: u64) {
    if let Some(freed) = refs.put(mfn, gfn) {
        free_guest_page(p2m, cx, freed);
    }
}

/// `test_and_clear_bit(_PGC_allocated)` then `put_page`: drops the allocation reference.
fn put_alloc_ref(p2m: &P2m, cx: &mut Cx, refs: &mut PageRefs, mfn: u64, gfn: u64) {
    if let Some(freed) = refs.put_alloc_ref(mfn, gfn) {
        free_guest_page(p2m, cx, freed);
    }
}

/// `guest_physmap_remove_page(d, gfn, mfn, 0)` → `p2m_remove_page` (`p2m.c:600-632`):
/// no check beyond an `ASSERT`, an empty entry with the default access.
fn guest_physmap_remove_page(p2m: &mut P2m, cx: &mut Cx, gfn: u64) -> Result<(), PhysmapError> {
    set_4k(p2m, cx, gfn, INVALID_MFN, P2mType::Invalid)
}

/// `guest_physmap_add_entry(d, gfn, mfn, 0, p2m_ram_rw)` (`p2m.c:646-800`): a shared
/// entry cannot be unshared (`-ENOMEM`); a grant or foreign entry crashes the domain
/// (`-EINVAL`); else the entry is written.
fn guest_physmap_add_page(
    p2m: &mut P2m,
    cx: &mut Cx,
    gfn: u64,
    mfn: Mfn,
) -> Result<(), PhysmapError> {
    let (_, ot) = get_gfn_query(p2m, gfn);
    if ot == P2mType::RamShared {
        return Err(PhysmapError::NoMem);
    }
    if crate::physmap::foreign_owned(ot) {
        cx.crashed
            .get_or_insert("guest_physmap_add_entry over a grant/foreign entry");
        return Err(PhysmapError::Inval);
    }
    if mfn_valid(mfn) {
        set_4k(p2m, cx, gfn, mfn, P2mType::RamRw)
    } else {
        set_4k(p2m, cx, gfn, INVALID_MFN, P2mType::Invalid)
    }
}

/// `guest_remove_page(d, gmfn)` of 4.6 (`memory.c:188-267`; its result is ignored by
/// the batch): paging entries are removed (a `paging_out` page freed), `mmio_direct`
/// cleared (`clear_mmio_p2m_entry`); a frame that is not RAM, a shared page (not
/// unshared here) or a page it cannot reference is left alone; else the allocation
/// reference goes and the entry is removed — under `iommu_dont_flush_iotlb` unless
/// `guest_remove_page_flushes`. Returns Xen's result: 1 (true) when handled, 0 when
/// left alone (which stops `decrease_reservation`).
fn guest_remove_page(
    p2m: &mut P2m,
    cx: &mut Cx,
    refs: &mut PageRefs,
    gmfn: u64,
) -> Result<bool, PhysmapError> {
    let (mfn, p2mt) = get_gfn_query(p2m, gmfn);
    let checks_rc = cx.sw.guest_remove_page_checks_remove_rc;
    if p2m_is_paging(p2mt) {
        let rc = guest_physmap_remove_page(p2m, cx, gmfn);
        if checks_rc {
            rc?;
        }
        if p2mt == P2mType::RamPagingOut && domain_page(cx.mem, cx.log, gmfn, mfn, p2mt) {
            put_alloc_ref(p2m, cx, refs, mfn.0, gmfn);
        }
        return Ok(true);
    }
    if p2mt == P2mType::MmioDirect {
        let _ = crate::xen46::p2m::clear_mmio_p2m_entry(p2m, cx, gmfn);
        return Ok(true);
    }
    if !mfn_valid(mfn)
        || p2mt == P2mType::RamShared
        || !domain_page(cx.mem, cx.log, gmfn, mfn, p2mt)
    {
        return Ok(false);
    }
    refs.get(mfn.0);
    if !checks_rc {
        put_alloc_ref(p2m, cx, refs, mfn.0, gmfn);
    }
    let dont_flush = cx.iommu.dont_flush;
    if cx.sw.guest_remove_page_flushes {
        cx.iommu.dont_flush = false;
    }
    let rc = guest_physmap_remove_page(p2m, cx, gmfn);
    cx.iommu.dont_flush = dont_flush;
    // With the XSA-222 fix the allocation reference goes only after a removal that
    // succeeded (`memory.c`, a0cce6048d); 4.6 dropped it before the (void) removal.
    if checks_rc && rc.is_ok() {
        put_alloc_ref(p2m, cx, refs, mfn.0, gmfn);
    }
    put_page(p2m, cx, refs, mfn.0, gmfn);
    if checks_rc {
        rc?;
    }
    Ok(true)
}

/// `xenmem_add_to_physmap_one(d, XENMAPSPACE_gmfn_range, ..., idx, gpfn)` of 4.6
/// (`mm.c:4633-4730`): the source must be a page of the domain (any type; frame 0 is
/// refused too); whatever valid frame the destination maps is handed to
/// `guest_remove_page` (with `add_to_physmap_keeps_same_page`, only another page); the
/// source entry is removed, the page added at `gpfn`, and the reference dropped.
fn xenmem_add_to_physmap_one(
    p2m: &mut P2m,
    cx: &mut Cx,
    refs: &mut PageRefs,
    idx: u64,
    gpfn: u64,
) -> Result<(), PhysmapError> {
    let (mfn, p2mt) = get_gfn_query(p2m, idx);
    if p2mt == P2mType::RamShared {
        return Err(PhysmapError::NoMem);
    }
    if !domain_page(cx.mem, cx.log, idx, mfn, p2mt) || mfn.0 == 0 {
        return Err(PhysmapError::Inval);
    }
    refs.get(mfn.0);
    let (prev_mfn, _) = get_gfn_query(p2m, gpfn);
    let mut m2p_cleared = false;
    // 4.6 ignores both removals' results. With `guest_remove_page_checks_remove_rc` a
    // removal that fails (a p2m table allocation) ends the page with its error, as
    // a0cce6048d makes `xenmem_add_to_physmap_one` do; a destination that is not the
    // domain's page is still passed over as in 4.6 (a0cce6048d stops there with
    // `-ENXIO` instead of crashing the domain on the grant below: both safe).
    let checks_rc = cx.sw.guest_remove_page_checks_remove_rc;
    let mut rc = Ok(());
    if mfn_valid(prev_mfn) && !(cx.sw.add_to_physmap_keeps_same_page && prev_mfn == mfn) {
        if let Err(e) = guest_remove_page(p2m, cx, refs, gpfn) {
            rc = Err(e);
        }
        // guest_remove_page of the moving page itself clears its M2P entry.
        m2p_cleared = prev_mfn == mfn && get_gfn_query(p2m, gpfn).0 != mfn;
    }
    if rc.is_ok() && !m2p_cleared {
        let removed = guest_physmap_remove_page(p2m, cx, idx);
        cx.log.moved_from.push((mfn.0, idx));
        if checks_rc {
            rc = removed;
        }
    }
    let rc = rc.and_then(|()| guest_physmap_add_page(p2m, cx, gpfn, mfn));
    if rc.is_ok() && cx.sw.batch_holds_page_refs {
        refs.hand_to_batch(mfn.0, gpfn);
    } else {
        put_page(p2m, cx, refs, mfn.0, gpfn);
    }
    rc
}

/// The hypercall `XENMEM_add_to_physmap` with `XENMAPSPACE_gmfn_range` on 4.6
/// (`memory.c:582-641`): every page forwards under `iommu_dont_flush_iotlb`, stopping at
/// the first error, then `iommu_iotlb_flush` of the old and of the new gfns.
pub fn add_to_physmap_range(p2m: &mut P2m, cx: &mut Cx, op: AddToPhysmapRange) -> BatchOutcome {
    add_to_physmap_range_with(p2m, cx, op, None).0
}

/// [`add_to_physmap_range`] with a second vCPU's op inside it: it runs once the batch
/// has moved `after` pages (or before the flush, if the batch stops earlier), on
/// another CPU (`iommu_dont_flush_iotlb` is per CPU: clear there), sharing the pages'
/// references. Returns the batch's outcome and the second op's.
pub fn add_to_physmap_range_with(
    p2m: &mut P2m,
    cx: &mut Cx,
    op: AddToPhysmapRange,
    second: Option<Interleave>,
) -> (BatchOutcome, Option<BatchOutcome>) {
    let mut second = second;
    let mut second_out = None;
    let mut refs = PageRefs::default();
    let run_second = |p2m: &mut P2m,
                      cx: &mut Cx,
                      refs: &mut PageRefs,
                      second: &mut Option<Interleave>,
                      out: &mut Option<BatchOutcome>| {
        if let Some(s) = second.take() {
            let dont_flush = std::mem::replace(&mut cx.iommu.dont_flush, false);
            let batch_reads = std::mem::take(&mut cx.log.xen_frames);
            *out = Some(caller_op(p2m, cx, refs, s.op));
            cx.log.xen_frames_second = std::mem::replace(&mut cx.log.xen_frames, batch_reads);
            cx.iommu.dont_flush = dont_flush;
        }
    };
    cx.iommu.dont_flush = true;
    let mut done = 0;
    let mut rc = Ok(());
    while done < op.size as u64 {
        if second.is_some_and(|s| u64::from(s.after) <= done) {
            run_second(p2m, cx, &mut refs, &mut second, &mut second_out);
        }
        let (idx, gpfn) = op.page(false, done);
        if let Err(e) = xenmem_add_to_physmap_one(p2m, cx, &mut refs, idx, gpfn) {
            rc = Err(e);
            break;
        }
        bump(&mut cx.stats.physmap_pages_moved, 1);
        done += 1;
    }
    run_second(p2m, cx, &mut refs, &mut second, &mut second_out);
    cx.iommu.dont_flush = false;
    // Not Xen (`batch_flush_covers_failed_page`): the failed page's source may be unmapped.
    let old = done + u64::from(rc.is_err() && cx.sw.batch_flush_covers_failed_page);
    cx.iommu.iommu_iotlb_flush(op.idx, old);
    // With `batch_holds_page_refs` the references go after the first flush.
    for (mfn, gfn) in refs.take_batch() {
        put_page(p2m, cx, &mut refs, mfn, gfn);
    }
    cx.iommu.iommu_iotlb_flush(op.gpfn, done);
    (BatchOutcome { done, rc }, second_out)
}

/// Largest extent order of 4.6 `XENMEM_populate_physmap`: the allocator's `MAX_ORDER`
/// (a guest's own call is limited to 9 unless it has I/O permissions, `memory.c:103-105`).
pub const POPULATE_MAX_ORDER: u32 = 18;

/// `XENMEM_populate_physmap` of 4.6, one extent (`memory.c:140-180`), non-PoD: the
/// allocator's pages at `mfn` (the scenario names them) are added at `gfn` by
/// `guest_physmap_add_entry`, whose result `populate_physmap` ignores: the extent counts
/// as done whatever the p2m did. An order above [`POPULATE_MAX_ORDER`] does nothing.
pub fn populate_physmap(
    p2m: &mut P2m,
    cx: &mut Cx,
    gfn: u64,
    mfn: u64,
    order: u32,
) -> BatchOutcome {
    if order > POPULATE_MAX_ORDER {
        return BatchOutcome {
            done: 0,
            rc: Ok(()),
        };
    }
    let _ = crate::xen46::p2m::guest_physmap_add_entry(p2m, cx, gfn, Mfn(mfn), order);
    BatchOutcome {
        done: 1 << order,
        rc: Ok(()),
    }
}

/// `XENMEM_populate_physmap` with `nr` one-page extents from `(gfn, mfn)`: the extent
/// loop, with the extents that fall in one level-1 table taken as one run step where
/// `guest_physmap_add_entry` would pass every one of them straight to a 4 KiB
/// `p2m_set_entry` (no `ram_shared`, grant or foreign entry there, every frame valid) and
/// the p2m can take the chunks as one step (`p2m_pt::run`, `p2m_ept::run`); else one
/// extent at a time. 4.6's populate reports no error: all `nr` extents are done.
fn populate_run(p2m: &mut P2m, cx: &mut Cx, gfn: u64, mfn: u64, nr: u32) -> BatchOutcome {
    let nr = u64::from(nr);
    let mut i = 0;
    while i < nr {
        let (g, m) = (gfn + i, mfn + i);
        let k = (nr - i).min(512 - (g & 511));
        if k > 1 && populate_run_step(p2m, cx, g, m, k) {
            i += k;
            continue;
        }
        populate_physmap(p2m, cx, g, m, 0);
        i += 1;
    }
    BatchOutcome {
        done: nr,
        rc: Ok(()),
    }
}

/// `k` one-page extents of `populate_physmap` in one level-1 table as one run step, when
/// each would reach `p2m_set_entry` unchanged (see [`populate_run`]); whether it did.
fn populate_run_step(p2m: &mut P2m, cx: &mut Cx, gfn: u64, mfn: u64, k: u64) -> bool {
    if !mfn_valid(Mfn(mfn)) || !mfn_valid(Mfn(mfn + k - 1)) {
        return false;
    }
    let range = GfnRange {
        start: gfn,
        end: gfn + k,
    };
    let old = match p2m {
        P2m::Ept(e) => e.cpu_extents(range),
        P2m::Pt(p) => p.cpu_extents(range),
    };
    if old
        .iter()
        .any(|e| e.p2mt == P2mType::RamShared || crate::physmap::foreign_owned(e.p2mt))
    {
        return false;
    }
    let rw = P2mType::RamRw;
    let done = match p2m {
        P2m::Pt(pt) => pt.set_entry_run_4k(cx, gfn, Mfn(mfn), k, rw),
        P2m::Ept(ept) => {
            ept.set_entry_run_4k(cx, gfn, Mfn(mfn), k, rw, crate::xen46::p2m::DEFAULT_ACCESS)
        }
    };
    if done.is_some() {
        cx.log.p2m_changed(range);
    }
    done.is_some()
}

/// `XENMEM_decrease_reservation` of 4.6, one extent (`memory.c:277-321`): an order above
/// 18 does nothing; `p2m_pod_decrease_reservation` does nothing (no PoD entries); then
/// `guest_remove_page` on each 4 KiB gfn, a 0 result stopping the op (`-EINVAL` here:
/// Xen returns only the extents done). Pages done: those handled.
pub fn decrease_reservation(
    p2m: &mut P2m,
    cx: &mut Cx,
    refs: &mut PageRefs,
    gfn: u64,
    order: u32,
) -> BatchOutcome {
    if order > 18 {
        return BatchOutcome {
            done: 0,
            rc: Ok(()),
        };
    }
    for j in 0..1u64 << order {
        if guest_remove_page(p2m, cx, refs, gfn + j) != Ok(true) {
            return BatchOutcome {
                done: j,
                rc: Err(PhysmapError::Inval),
            };
        }
    }
    BatchOutcome {
        done: 1 << order,
        rc: Ok(()),
    }
}

/// Runs one caller op on the 4.6 p2m; `refs` are the page references held around it.
pub fn caller_op(
    p2m: &mut P2m,
    cx: &mut Cx,
    refs: &mut PageRefs,
    op: crate::callers::CallerOp,
) -> BatchOutcome {
    use crate::callers::CallerOp;
    use crate::xen46::{hvm, p2m as xp2m};
    match op {
        CallerOp::Populate { gfn, mfn, order } => populate_physmap(p2m, cx, gfn, mfn, order),
        CallerOp::DecreaseReservation { gfn, order } => {
            decrease_reservation(p2m, cx, refs, gfn, order)
        }
        CallerOp::PopulateRun { gfn, mfn, nr } => populate_run(p2m, cx, gfn, mfn, nr),
        CallerOp::DecreaseRun { gfn, nr } => {
            crate::callers::run_extents(nr, |i| decrease_reservation(p2m, cx, refs, gfn + i, 0))
        }
        CallerOp::SetMemType { gfn, nr, mem_type } => {
            hvm::hvmop_set_mem_type(p2m, cx, gfn, nr.into(), mem_type)
        }
        CallerOp::MemoryMapping { gfn, mfn, nr, add } => {
            crate::callers::domctl_memory_mapping(gfn, mfn, nr.into(), || {
                xp2m::memory_mapping(p2m, cx, gfn, mfn, nr.into(), add)
            })
        }
        CallerOp::SetMemAccess { gfn, nr, access } => {
            xp2m::p2m_set_mem_access(p2m, cx, gfn, nr.into(), access)
        }
        CallerOp::AssignDevice => crate::xen46::pci::assign_device(p2m, cx),
        CallerOp::IdentityMap { gfn, nr, add, .. } => {
            crate::xen46::pci::rmrr_identity_mapping(p2m, cx, gfn, nr.into(), add)
        }
        CallerOp::SetBrokenPage { gfn } => xp2m::set_broken_page_p2m(p2m, cx, gfn),
        CallerOp::TrackDirtyVram { gfn, nr } => {
            crate::xen46::hap::track_dirty_vram(p2m, cx, gfn, nr.into())
        }
        CallerOp::GuestAccess { gfn, write } => hvm::guest_access(p2m, cx, gfn, write),
    }
}
