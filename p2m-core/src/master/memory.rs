//! `xen/common/memory.c` at `c447b7308b`: the `XENMAPSPACE_gmfn_range` batch
//! (`xenmem_add_to_physmap`, `memory.c:960-1059`) with its continuations, and
//! `guest_remove_page` (`memory.c:430-555`). The per-page work is
//! [`super::p2m_physmap::xenmem_add_to_physmap_one`].

use crate::master::domain::{Cx, P2m};
use crate::master::iommu::FlushFlags;
use crate::master::p2m::p2m_is_paging;
use crate::master::p2m_physmap::{
    domain_owns_page, get_gfn_query, io_tables, p2m_remove_page, xenmem_add_to_physmap_one,
};
use crate::physmap::{mfn_valid, AddToPhysmapRange, BatchOutcome, PageRefs, PhysmapError};
use crate::stats::bump;
use crate::types::P2mType;

/// `ARRAY_SIZE(pages)` of `xenmem_add_to_physmap` (`memory.c:966`): pages whose
/// references one call holds, hence pages per continuation.
pub const GMFN_RANGE_PAGES_PER_CALL: u64 = 16;

/// Frees a guest page the batch let go of (its allocation reference went in
/// `guest_remove_page`): the oracle learns what could still reach it.
pub fn free_guest_page(p2m: &P2m, cx: &mut Cx, (mfn, gfn): (u64, u64)) {
    cx.stats.guest_pages_freed += 1;
    let mut log = std::mem::take(cx.log);
    let io = io_tables(p2m, cx);
    log.free_guest_page(cx.mem, io, cx.iommu.caches.records(), mfn, gfn);
    *cx.log = log;
}

/// `put_page(page)` on `(mfn, gfn)`, freeing the page if that was its last reference.
pub fn put_page(p2m: &P2m, cx: &mut Cx, refs: &mut PageRefs, mfn: u64, gfn: u64) {
    if let Some(freed) = refs.put(mfn, gfn) {
        free_guest_page(p2m, cx, freed);
    }
}

/// `guest_remove_page(d, gmfn)` (`memory.c:430-555`) under `CONFIG_MEM_PAGING=n`: refuses
/// holes (`-EINVAL`), `mmio_direct` (`-EPERM`), frames that are not RAM (`-EINVAL`), shared
/// pages (unsharing is not modelled: `-ENOMEM`) and pages it cannot take a reference on
/// (`-ENXIO`); else removes the entry with `iommu_dont_flush_iotlb` cleared around it
/// (`guest_remove_page_flushes`, dea460d869) and drops the page's allocation reference.
pub fn guest_remove_page(
    p2m: &mut P2m,
    cx: &mut Cx,
    refs: &mut PageRefs,
    gmfn: u64,
) -> Result<(), PhysmapError> {
    let (mfn, p2mt) = get_gfn_query(p2m, gmfn);
    if matches!(p2mt, P2mType::Invalid | P2mType::MmioDm) {
        return Err(PhysmapError::Inval);
    }
    debug_assert!(!p2m_is_paging(p2mt), "CONFIG_MEM_PAGING is off");
    if p2mt == P2mType::MmioDirect {
        return Err(PhysmapError::Perm);
    }
    if !mfn_valid(mfn) {
        return Err(PhysmapError::Inval);
    }
    if p2mt == P2mType::RamShared {
        return Err(PhysmapError::NoMem);
    }
    if !domain_owns_page(cx, gmfn, mfn, p2mt) {
        return Err(PhysmapError::NxIo);
    }
    refs.get(mfn.0);
    let dont_flush = cx.iommu.dont_flush;
    if cx.sw.guest_remove_page_flushes {
        cx.iommu.dont_flush = false;
    }
    let rc = p2m_remove_page(p2m, cx, gmfn, mfn);
    cx.iommu.dont_flush = dont_flush;
    if rc.is_ok() {
        if let Some(freed) = refs.put_alloc_ref(mfn.0, gmfn) {
            free_guest_page(p2m, cx, freed);
        }
    }
    put_page(p2m, cx, refs, mfn.0, gmfn);
    rc
}

/// One call of `xenmem_add_to_physmap(d, xatp, start)` for `XENMAPSPACE_gmfn_range`
/// (`memory.c:996-1059`): pages from `start` on, in the batch's order, with
/// `iommu_dont_flush_iotlb` set; stops after an error or, when pages are handed to the
/// batch, after 16 pages (a continuation). Then clears `dont_flush`, flushes the old
/// gfns (`MODIFIED`), drops the page references, flushes the new gfns
/// (`ADDED | MODIFIED`). Returns the pages done and whether a continuation follows.
pub fn xenmem_add_to_physmap(
    p2m: &mut P2m,
    cx: &mut Cx,
    refs: &mut PageRefs,
    op: AddToPhysmapRange,
    start: u64,
) -> (u64, Result<bool, PhysmapError>) {
    let size = op.size as u64;
    let back = op.backwards(true);
    cx.iommu.take_dropped_flags();
    cx.iommu.dont_flush = true;
    let mut done = 0;
    let mut rc = Ok(false);
    while start + done < size {
        let (idx, gpfn) = op.page(back, start + done);
        if let Err(e) = xenmem_add_to_physmap_one(p2m, cx, refs, idx, gpfn) {
            rc = Err(e);
            break;
        }
        bump(&mut cx.stats.physmap_pages_moved, 1);
        done += 1;
        if start + done < size && done >= GMFN_RANGE_PAGES_PER_CALL && cx.sw.batch_holds_page_refs {
            rc = Ok(true);
            break;
        }
    }
    cx.iommu.dont_flush = false;
    // The gfns of the pages done, lowest first, whichever way the batch ran.
    let first = |base: u64| {
        if back {
            base.wrapping_add(size - start - done)
        } else {
            base.wrapping_add(start)
        }
    };
    let dropped = cx.iommu.take_dropped_flags();
    let modified = FlushFlags {
        modified: true,
        // Proposed fix (not Xen): keep what the wrappers dropped (e.g. `all`).
        all: cx.sw.batch_flush_keeps_deferred_flags && dropped.all,
        ..FlushFlags::default()
    };
    let r1 = cx.iommu_iotlb_flush(first(op.idx), done, modified);
    for (mfn, gfn) in refs.take_batch() {
        put_page(p2m, cx, refs, mfn, gfn);
    }
    let r2 = cx.iommu_iotlb_flush(
        first(op.gpfn),
        done,
        FlushFlags {
            added: true,
            ..modified
        },
    );
    // Proposed fix (not Xen): a page that failed after its source was unmapped is in
    // neither range; when the wrappers dropped flags, flush the whole domain with them.
    if cx.sw.batch_flush_keeps_deferred_flags && rc.is_err() && !dropped.is_empty() {
        let (io, mut icx) = cx.io();
        let _ = io.iommu_iotlb_flush_all(
            &mut icx,
            FlushFlags {
                modified: true,
                ..dropped
            },
        );
    }
    if rc.is_ok() {
        if let Err(e) = r1.and(r2) {
            rc = Err(PhysmapError::P2m(e));
        }
    }
    (done, rc)
}

/// The whole hypercall `XENMEM_add_to_physmap` with `XENMAPSPACE_gmfn_range`
/// (`memory.c:960-995` checks, then [`xenmem_add_to_physmap`] and its continuations;
/// the deferred-free tasklet runs at each continuation point).
pub fn add_to_physmap_range(p2m: &mut P2m, cx: &mut Cx, op: AddToPhysmapRange) -> BatchOutcome {
    if op.gpfn == u64::MAX {
        return BatchOutcome {
            done: 0,
            rc: Err(PhysmapError::Inval),
        };
    }
    if op.wraps() {
        return BatchOutcome {
            done: 0,
            rc: Err(PhysmapError::Overflow),
        };
    }
    let mut refs = PageRefs::default();
    let mut start = 0;
    loop {
        let (done, rc) = xenmem_add_to_physmap(p2m, cx, &mut refs, op, start);
        start += done;
        match rc {
            Ok(true) => {
                bump(&mut cx.stats.physmap_continuations, 1);
                let (io, mut icx) = cx.io();
                io.free_queued_pgtables(&mut icx);
            }
            Ok(false) => {
                return BatchOutcome {
                    done: start,
                    rc: Ok(()),
                }
            }
            Err(e) => {
                return BatchOutcome {
                    done: start,
                    rc: Err(e),
                }
            }
        }
    }
}
