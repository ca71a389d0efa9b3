//! `xen/common/memory.c` at `c447b7308b`: the `XENMAPSPACE_gmfn_range` batch
//! (`xenmem_add_to_physmap`, `memory.c:960-1059`) with its continuations, and
//! `guest_remove_page` (`memory.c:430-555`). The per-page work is
//! [`super::p2m_physmap::xenmem_add_to_physmap_one`].

use crate::callers::Interleave;
use crate::master::domain::{Cx, P2m};
use crate::master::iommu::FlushFlags;
use crate::master::p2m::p2m_is_paging;
use crate::master::p2m_physmap::{
    domain_owns_page, get_gfn_query, io_tables, p2m_add_page, p2m_remove_page,
    xenmem_add_to_physmap_one,
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
    second: &mut SecondVcpu,
) -> (u64, Result<bool, PhysmapError>) {
    let size = op.size as u64;
    let back = op.backwards(true);
    cx.iommu.take_dropped_flags();
    cx.iommu.dont_flush = true;
    let mut done = 0;
    let mut rc = Ok(false);
    while start + done < size {
        if second.due(start + done, false) {
            second.run(p2m, cx, refs);
        }
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
    // A second vCPU due at or before the end of this call acts before its flush.
    let finished = rc.is_err() || start + done >= size;
    if second.due(start + done, finished) {
        second.run(p2m, cx, refs);
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
    // Proposed fix (not Xen): a page that failed after its source was unmapped is in
    // neither range; when the wrappers dropped flags, flush the whole domain with them —
    // before the references go (`batch_holds_failed_page_ref` keeps that page's).
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
    add_to_physmap_range_with(p2m, cx, op, None).0
}

/// A second vCPU's op waiting inside a batch, and what it did once it ran.
#[derive(Default)]
pub struct SecondVcpu {
    /// The op, until it runs.
    pending: Option<Interleave>,
    /// Its outcome, once it ran.
    out: Option<BatchOutcome>,
}

impl SecondVcpu {
    /// Whether the op is due with `moved` pages moved (`last`: the batch moves no more).
    fn due(&self, moved: u64, last: bool) -> bool {
        self.pending
            .is_some_and(|s| last || u64::from(s.after) <= moved)
    }

    /// Runs the op (once) on another CPU: `iommu_dont_flush_iotlb` is per CPU, so it is
    /// clear there; page references are the pages' own, shared with the batch.
    fn run(&mut self, p2m: &mut P2m, cx: &mut Cx, refs: &mut PageRefs) {
        let Some(s) = self.pending.take() else { return };
        let dont_flush = std::mem::replace(&mut cx.iommu.dont_flush, false);
        let batch_reads = std::mem::take(&mut cx.log.xen_frames);
        self.out = Some(crate::master::domain::caller_op(p2m, cx, refs, s.op));
        cx.log.xen_frames_second = std::mem::replace(&mut cx.log.xen_frames, batch_reads);
        cx.iommu.dont_flush = dont_flush;
    }
}

/// [`add_to_physmap_range`] with a second vCPU acting inside it (see [`Interleave`]):
/// the batch's outcome and, if it ran, the second op's (it runs once, before the batch's
/// first page when the checks refuse the batch outright).
pub fn add_to_physmap_range_with(
    p2m: &mut P2m,
    cx: &mut Cx,
    op: AddToPhysmapRange,
    second: Option<Interleave>,
) -> (BatchOutcome, Option<BatchOutcome>) {
    let mut second = SecondVcpu {
        pending: second,
        out: None,
    };
    let mut refs = PageRefs::default();
    let refused = if op.gpfn == u64::MAX {
        Some(PhysmapError::Inval)
    } else if op.wraps() {
        Some(PhysmapError::Overflow)
    } else {
        None
    };
    if let Some(e) = refused {
        second.run(p2m, cx, &mut refs);
        let out = BatchOutcome {
            done: 0,
            rc: Err(e),
        };
        return (out, second.out);
    }
    let mut start = 0;
    loop {
        let (done, rc) = xenmem_add_to_physmap(p2m, cx, &mut refs, op, start, &mut second);
        start += done;
        match rc {
            Ok(true) => {
                bump(&mut cx.stats.physmap_continuations, 1);
                let (io, mut icx) = cx.io();
                io.free_queued_pgtables(&mut icx);
            }
            Ok(false) => {
                let out = BatchOutcome {
                    done: start,
                    rc: Ok(()),
                };
                return (out, second.out);
            }
            Err(e) => {
                let out = BatchOutcome {
                    done: start,
                    rc: Err(e),
                };
                return (out, second.out);
            }
        }
    }
}

/// Largest extent order `XENMEM_populate_physmap` takes from the toolstack building a
/// domain (`max_order` of the control domain, `PAGEALLOC_MAX_ORDER`, `memory.c:88-104`);
/// a guest's own call is limited to 9 (12 with I/O resources).
pub const POPULATE_MAX_ORDER: u32 = 18;

/// Largest extent order a passthrough guest's `XENMEM_decrease_reservation` takes
/// (`max_order` with I/O resources: `ptdom_max_order` = 12, `memory.c:88-104`).
pub const DECREASE_MAX_ORDER: u32 = 12;

/// `XENMEM_populate_physmap`, one extent (`memory.c:243-418`), non-PoD: the allocator's
/// `2^order` pages at `mfn` (the scenario names them; a caller chain needs them free)
/// are added at `gfn` by `guest_physmap_add_page` → `p2m_add_page(..., p2m_ram_rw)`. An
/// order above [`POPULATE_MAX_ORDER`] does nothing. Pages done: the extent or nothing.
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
    match p2m_add_page(p2m, cx, gfn, crate::types::Mfn(mfn), order, P2mType::RamRw) {
        Ok(()) => BatchOutcome {
            done: 1 << order,
            rc: Ok(()),
        },
        Err(e) => BatchOutcome {
            done: 0,
            rc: Err(e),
        },
    }
}

/// `XENMEM_decrease_reservation`, one extent (`memory.c:572-632`): an order above
/// [`DECREASE_MAX_ORDER`] does nothing; `p2m_pod_decrease_reservation` does nothing (no
/// PoD with passthrough); then `guest_remove_page` on each 4 KiB gfn, the first error
/// stopping the op. Pages done: those removed.
pub fn decrease_reservation(
    p2m: &mut P2m,
    cx: &mut Cx,
    refs: &mut PageRefs,
    gfn: u64,
    order: u32,
) -> BatchOutcome {
    if order > DECREASE_MAX_ORDER {
        return BatchOutcome {
            done: 0,
            rc: Ok(()),
        };
    }
    for j in 0..1u64 << order {
        if let Err(e) = guest_remove_page(p2m, cx, refs, gfn + j) {
            return BatchOutcome {
                done: j,
                rc: Err(e),
            };
        }
    }
    BatchOutcome {
        done: 1 << order,
        rc: Ok(()),
    }
}
