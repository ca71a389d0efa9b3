//! A master-line domain with a host p2m and an IOMMU.
//!
//! The p2m is chosen as `p2m_initialise` does (`p2m-basic.c:43-46`): EPT only with HAP on
//! VT-d (`Mode::Ept`); NPT and shadow use p2m-pt. The IOMMU is `master::iommu::Iommu`,
//! whose tables exist from domain creation (f89f555827).

use std::fmt;

use crate::cache::CacheRecord;
use crate::callers::{CallerOp, InterleavedBatch, InterleavedOutcome};
use crate::events::OpLog;
use crate::frames::MachineMemory;
use crate::master::iommu::{FlushFlags, IoCx, Iommu, IommuErr};
use crate::master::p2m::{p2m_set_entry, IommuCall, P2mCaps};
use crate::master::p2m_ept::Ept;
use crate::master::p2m_pt::P2mPt;
use crate::master::revision::Switches;
use crate::physmap::{AddToPhysmapRange, BatchOutcome, PageRefs};
use crate::revision::{Revision, Switches as LineSwitches};
use crate::stats::ModelStats;
use crate::types::*;
use crate::view::{CpuExtent, DeviceView, P2mEntry};
use crate::walk::{walk_root, IoTables, WalkResult};

/// Counters of what the p2m side did (no Xen counterpart; for `ModelStats`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct P2mStats {
    /// Superpages split (`ept_split_super_page` per superpage, `p2m_next_level`).
    pub superpage_splits: u64,
    /// Present intermediate entries replaced by a leaf.
    pub intermediate_replaced: u64,
    /// Times `need_modify_vtd_table` was cleared (EPT) or the p2m-pt IOMMU step was
    /// skipped because old flags and mfn were equal.
    pub need_modify_cleared: u64,
    /// IOMMU steps taken by `set_entry` (flush, map or unmap call).
    pub iommu_steps: u64,
    /// Pages the `XENMAPSPACE_gmfn_range` batch moved.
    pub physmap_pages_moved: u64,
    /// Continuations of that batch (each one a point where the free queue drains).
    pub physmap_continuations: u64,
    /// Guest pages freed (`guest_remove_page`, the batch's `put_page`).
    pub guest_pages_freed: u64,
}

/// Context passed down a `set_entry`: the parts of `struct domain` / `struct p2m_domain`
/// (`asm/p2m.h:200`) the p2m code reaches.
pub struct Cx<'a> {
    /// Machine memory.
    pub mem: &'a mut MachineMemory,
    /// The domain's IOMMU.
    pub iommu: &'a mut Iommu,
    /// The revision's switches.
    pub sw: &'a Switches,
    /// The configuration.
    pub cfg: Config,
    /// Sequence number of this op (tags cache records).
    pub seq: u64,
    /// p2m-side counters.
    pub stats: &'a mut P2mStats,
    /// What this op records for the oracle.
    pub log: &'a mut OpLog,
    /// The IOMMU entry points the p2m called during this op, in order.
    pub calls: &'a mut Vec<IommuCall>,
}

/// An IOMMU error as `set_entry` returns it (`rc = iommu_...`, `p2m-ept.c:976-985`,
/// `p2m-pt.c:749-752`).
fn iommu_rc(r: Result<(), IommuErr>) -> Result<(), P2mError> {
    r.map_err(|e| match e {
        IommuErr::NoMem => P2mError::IommuNoMem,
        IommuErr::Fault => P2mError::IommuFault,
        IommuErr::Inval => P2mError::IommuInval,
    })
}

impl Cx<'_> {
    /// Splits the borrows: the IOMMU and the context its calls need.
    pub fn io(&mut self) -> (&mut Iommu, IoCx<'_>) {
        (
            &mut *self.iommu,
            IoCx {
                mem: &mut *self.mem,
                log: &mut *self.log,
                sw: self.sw,
                seq: self.seq,
            },
        )
    }

    /// `need_iommu_pt_sync(d)` (`xen/include/xen/iommu.h:459-463`): `hd->need_sync`,
    /// set for every non-hardware domain whose IOMMU does not walk the p2m
    /// (`iommu_domain_init`, `drivers/passthrough/iommu.c:196`).
    pub fn need_iommu_pt_sync(&self) -> bool {
        !self.iommu.shared
    }

    /// Calls `iommu_iotlb_flush(d, dfn, page_count, flags)`
    /// (`drivers/passthrough/iommu.c:478-505`).
    pub fn iommu_iotlb_flush(
        &mut self,
        dfn: u64,
        page_count: u64,
        flags: FlushFlags,
    ) -> Result<(), P2mError> {
        self.stats.iommu_steps += 1;
        self.calls.push(IommuCall::IotlbFlush {
            dfn,
            page_count,
            flags,
        });
        let (io, mut icx) = self.io();
        iommu_rc(io.iommu_iotlb_flush(&mut icx, dfn, page_count, flags))
    }

    /// Calls `iommu_legacy_map(d, dfn, mfn, page_count, flags)` (`iommu.c:384-397`).
    pub fn iommu_legacy_map(
        &mut self,
        dfn: u64,
        mfn: u64,
        page_count: u64,
        perm: IommuPerm,
    ) -> Result<(), P2mError> {
        self.stats.iommu_steps += 1;
        self.calls.push(IommuCall::LegacyMap {
            dfn,
            mfn,
            page_count,
            perm,
        });
        let (io, mut icx) = self.io();
        iommu_rc(io.iommu_legacy_map(&mut icx, dfn, mfn, page_count, perm))
    }

    /// Calls `iommu_legacy_unmap(d, dfn, page_count)` (`iommu.c:456-465`).
    pub fn iommu_legacy_unmap(&mut self, dfn: u64, page_count: u64) -> Result<(), P2mError> {
        self.stats.iommu_steps += 1;
        self.calls.push(IommuCall::LegacyUnmap { dfn, page_count });
        let (io, mut icx) = self.io();
        iommu_rc(io.iommu_legacy_unmap(&mut icx, dfn, page_count))
    }
}

/// Whether `(gfn, mfn, order)` is an aligned `mmio_direct` superpage that covers a frame
/// of `mmio_ro_ranges` (`set_mmio_p2m_entry` refuses those, `p2m.c:1187-1190`).
fn mmio_ro_overlap(gfn: u64, mfn: Mfn, order: u32, t: P2mType) -> bool {
    let pages = 1u64 << order.min(18);
    t == P2mType::MmioDirect
        && (order == 9 || order == 18)
        && mfn != INVALID_MFN
        && (gfn | mfn.0) & (pages - 1) == 0
        && mfn.0 < MMIO_RO_FRAMES.end
        && mfn.0.saturating_add(pages) > MMIO_RO_FRAMES.start
}

/// The pieces of an `mmio_direct` superpage over `mmio_ro_ranges` under the proposed fix
/// `mmio_ro_superpage_split`: 2 MiB pieces, and 4 KiB pages for a 2 MiB piece that still
/// covers a read-only frame (at most 1,023 pieces for 1 GiB).
fn mmio_ro_pieces(gfn: u64, mfn: Mfn, order: u32) -> Vec<(u64, Mfn, u32)> {
    let mut out = Vec::new();
    let step = if order == 18 { 512 } else { 1 << order };
    let mut off = 0;
    while off < 1u64 << order {
        let (g, m) = (gfn + off, mfn.plus(off));
        if order == 18 && !mmio_ro_overlap(g, m, 9, P2mType::MmioDirect) {
            out.push((g, m, 9));
        } else {
            out.extend((0..step).map(|i| (g + i, m.plus(i), 0)));
        }
        off += step;
    }
    out
}

/// The host p2m implementation in use (`p2m_initialise`, `p2m-basic.c:43-46`).
#[derive(Clone, Debug)]
pub enum P2m {
    /// `p2m-ept.c` (HAP on VT-d).
    Ept(Ept),
    /// `p2m-pt.c` (NPT or shadow).
    Pt(P2mPt),
}

/// Runs one caller op on the p2m (inside an op: see `Domain::call`); `refs` are the page
/// references held around it (a batch's, when a second vCPU acts inside one).
pub fn caller_op(p2m: &mut P2m, cx: &mut Cx, refs: &mut PageRefs, op: CallerOp) -> BatchOutcome {
    use crate::master::{dm, mem_access, memory, p2m_typed};
    match op {
        CallerOp::Populate { gfn, mfn, order } => {
            memory::populate_physmap(p2m, cx, gfn, mfn, order)
        }
        CallerOp::DecreaseReservation { gfn, order } => {
            memory::decrease_reservation(p2m, cx, refs, gfn, order)
        }
        CallerOp::PopulateRun { gfn, mfn, nr } => crate::callers::run_extents(nr, |i| {
            memory::populate_physmap(p2m, cx, gfn + i, mfn + i, 0)
        }),
        CallerOp::DecreaseRun { gfn, nr } => crate::callers::run_extents(nr, |i| {
            memory::decrease_reservation(p2m, cx, refs, gfn + i, 0)
        }),
        CallerOp::SetMemType { gfn, nr, mem_type } => {
            dm::set_mem_type(p2m, cx, gfn, nr.into(), mem_type)
        }
        CallerOp::MemoryMapping { gfn, mfn, nr, add } => {
            crate::callers::domctl_memory_mapping(gfn, mfn, nr.into(), || {
                p2m_typed::memory_mapping(p2m, cx, gfn, mfn, nr.into(), add)
            })
        }
        CallerOp::SetMemAccess { gfn, nr, access } => {
            mem_access::p2m_set_mem_access(p2m, cx, gfn, nr.into(), access)
        }
        // `assign_device` (`pci.c:1593-1677`): the IOMMU tables exist from creation and
        // mirror every p2m write since; the model's machine has no RMRR/IVMD ranges, so
        // nothing is mapped (and sharing, paging and PoD, which it refuses, are absent).
        // From here on the device walks the tables.
        CallerOp::AssignDevice => {
            cx.iommu.caches.set_attached(true);
            BatchOutcome {
                done: 0,
                rc: Ok(()),
            }
        }
        CallerOp::SetBrokenPage { gfn } => p2m_typed::set_broken_page_p2m(p2m, cx, gfn),
        CallerOp::IdentityMap {
            gfn,
            nr,
            access,
            add,
        } => crate::master::x86_iommu::iommu_identity_mapping(p2m, cx, gfn, nr.into(), access, add),
        CallerOp::TrackDirtyVram { gfn, nr } => dm::track_dirty_vram(p2m, cx, gfn, nr.into()),
        CallerOp::GuestAccess { gfn, write } => {
            crate::master::hvm::guest_access(p2m, cx, gfn, write)
        }
    }
}

/// One master-line domain: configuration, revision, machine memory, p2m and IOMMU
/// (`struct domain_iommu`, `xen/include/xen/iommu.h:419`).
#[derive(Clone, Debug)]
pub struct Domain {
    /// Configuration (normalized).
    pub cfg: Config,
    /// Revision being modelled.
    pub revision: Revision,
    /// Its switch values.
    pub switches: Switches,
    /// Machine memory.
    pub mem: MachineMemory,
    /// The host p2m.
    pub p2m: P2m,
    /// The IOMMU (`struct domain_iommu`).
    pub iommu: Iommu,
    /// p2m-side counters.
    pub stats: P2mStats,
    /// What the last op recorded for the oracle.
    pub log: OpLog,
    /// The IOMMU entry points the p2m called during the last op, in order.
    pub calls: Vec<IommuCall>,
    seq: u64,
}

impl Domain {
    /// A fresh domain with passthrough enabled (IOMMU tables built at creation).
    /// `revision` must be of the master line (a programming error otherwise: panics, as
    /// the 4.6 line does; `crate::Domain` dispatches by line so it never happens there).
    pub fn new(cfg: Config, revision: Revision) -> Self {
        let LineSwitches::Master(switches) = revision.switches else {
            panic!("{} is not a master revision", revision.name)
        };
        let cfg = cfg.normalized();
        let mut mem = MachineMemory::new();
        let p2m = match cfg.mode {
            Mode::Ept => {
                let mut e = Ept::new(&mut mem);
                e.reads_nonpresent_superpage = switches.ept_get_entry_reads_nonpresent_superpage;
                P2m::Ept(e)
            }
            Mode::Npt | Mode::Shadow => P2m::Pt(P2mPt::new(&mut mem)),
        };
        let mut iommu = Iommu::new(&cfg, &mut mem);
        // Hot-plug: the tables mirror the p2m from creation (`XEN_DOMCTL_CDF_iommu`), but
        // no device walks them before `assign_device`.
        iommu.caches.set_attached(!cfg.pci_hotplug);
        Domain {
            cfg,
            revision,
            switches,
            mem,
            p2m,
            iommu,
            stats: P2mStats::default(),
            log: OpLog::default(),
            calls: Vec::new(),
            seq: 0,
        }
    }

    /// Sequence number the next op will get (the first is 1).
    pub fn next_seq(&self) -> u64 {
        self.seq + 1
    }

    /// The HAP capabilities `p2m_set_entry` uses for this domain.
    pub fn caps(&self) -> P2mCaps {
        P2mCaps::of(&self.cfg)
    }

    /// Runs one op: clears the log, runs `body` on the p2m, then — the hypercall has
    /// returned — drains the IOMMU's deferred-free queue (`free_queued_pgtables`) and
    /// moves the invalidations issued into the log.
    pub(crate) fn op<R>(&mut self, body: impl FnOnce(&mut P2m, &mut Cx) -> R) -> R {
        self.seq += 1;
        self.log.clear();
        self.calls.clear();
        self.mem.begin_op();
        let sw = self.switches;
        let mut cx = Cx {
            mem: &mut self.mem,
            iommu: &mut self.iommu,
            sw: &sw,
            cfg: self.cfg,
            seq: self.seq,
            stats: &mut self.stats,
            log: &mut self.log,
            calls: &mut self.calls,
        };
        let rc = body(&mut self.p2m, &mut cx);
        let (io, mut icx) = cx.io();
        io.free_queued_pgtables(&mut icx);
        self.mem.end_op();
        self.iommu.caches.take_issued(&mut self.log.invalidations);
        rc
    }

    /// Models the host p2m's `p2m->set_entry()` (the internal API: any order, frame,
    /// type and access; `ept_set_entry` or `p2m_pt_set_entry`) as one hypercall.
    pub fn set_entry(
        &mut self,
        gfn: u64,
        mfn: Mfn,
        order: u32,
        p2mt: P2mType,
        access: P2mAccess,
    ) -> Result<(), P2mError> {
        let one = |p2m: &mut P2m, cx: &mut Cx, g: u64, m: Mfn, o: u32| match p2m {
            P2m::Ept(e) => e.set_entry(cx, g, m, o, p2mt, access),
            P2m::Pt(p) => p.set_entry(cx, g, m, o, p2mt, access),
        };
        if self.switches.mmio_ro_superpage_split && mmio_ro_overlap(gfn, mfn, order, p2mt) {
            // Proposed fix (not Xen): the overlapping part as smaller pages.
            return self.op(|p2m, cx| {
                let mut rc = Ok(());
                for (g, m, o) in mmio_ro_pieces(gfn, mfn, order) {
                    let r = one(p2m, cx, g, m, o);
                    if rc.is_ok() {
                        rc = r;
                    }
                }
                rc
            });
        }
        self.op(|p2m, cx| one(p2m, cx, gfn, mfn, order))
    }

    /// Models the hypercall `XENMEM_add_to_physmap` with `XENMAPSPACE_gmfn_range`
    /// (`memory.c:960-1059`, [`crate::master::memory`]), continuations included.
    pub fn add_to_physmap_range(&mut self, op: AddToPhysmapRange) -> BatchOutcome {
        self.op(|p2m, cx| crate::master::memory::add_to_physmap_range(p2m, cx, op))
    }

    /// Models one call of a Xen caller of the host p2m ([`CallerOp`]) as one hypercall.
    pub fn call(&mut self, op: CallerOp) -> BatchOutcome {
        self.op(|p2m, cx| caller_op(p2m, cx, &mut PageRefs::default(), op))
    }

    /// Models the batch with a second vCPU's caller op inside it, as one op (the
    /// deferred-free queue drains at the batch's continuations and at its end).
    pub fn add_to_physmap_interleaved(&mut self, ib: InterleavedBatch) -> InterleavedOutcome {
        let (batch, second) = self.op(|p2m, cx| {
            crate::master::memory::add_to_physmap_range_with(p2m, cx, ib.batch, Some(ib.second))
        });
        InterleavedOutcome {
            batch,
            second: second.unwrap_or(BatchOutcome {
                done: 0,
                rc: Ok(()),
            }),
        }
    }

    /// Models `p2m_set_entry()` (`p2m.c:422-452`, what every caller goes through): the
    /// range is chunked as Xen chunks it and each chunk goes to the p2m's `set_entry`; one
    /// hypercall (the deferred-free queue drains once, at the end).
    pub fn p2m_set_entry(
        &mut self,
        gfn: u64,
        mfn: Mfn,
        page_order: u32,
        p2mt: P2mType,
        access: P2mAccess,
    ) -> Result<(), P2mError> {
        let caps = self.caps();
        self.op(|p2m, cx| {
            p2m_set_entry(caps, gfn, mfn, page_order, |g, m, o| match p2m {
                P2m::Ept(e) => e.set_entry(cx, g, m, o, p2mt, access),
                P2m::Pt(p) => p.set_entry(cx, g, m, o, p2mt, access),
            })
        })
    }

    /// `p2m->max_mapped_pfn`: the highest gfn any `set_entry` has written with a type
    /// other than `p2m_invalid` (never lowered, also when the op later failed or rolled
    /// back).
    pub fn max_mapped_pfn(&self) -> u64 {
        match &self.p2m {
            P2m::Ept(e) => e.recalc_state.max_mapped_pfn,
            P2m::Pt(p) => p.recalc_state.max_mapped_pfn,
        }
    }

    /// Models `p2m->get_entry()` (a query without `P2M_ALLOC`); `None` where Xen returns
    /// its defaults for "nothing here" (`INVALID_MFN`, `p2m_mmio_dm`).
    pub fn get_entry(&self, gfn: u64) -> Option<P2mEntry> {
        match &self.p2m {
            P2m::Ept(e) => e.get_entry(gfn),
            P2m::Pt(p) => p.get_entry(gfn),
        }
    }

    /// The CPU view of `range` as runs, consistent with [`Self::get_entry`] at every gfn
    /// (a `None` gfn reads as `INVALID_MFN`, `invalid`, `rwx`).
    /// The frame of the host p2m's table of `level` on the walk to `gfn`, if any.
    pub fn p2m_table_at(&self, gfn: u64, level: u8) -> Option<u64> {
        match &self.p2m {
            P2m::Ept(e) => e.table_at(gfn, level),
            P2m::Pt(p) => p.table_at(gfn, level),
        }
    }

    /// The p2m's stored content over `range` (see `Ept::cpu_extents`).
    pub fn cpu_extents(&self, range: GfnRange) -> Vec<CpuExtent> {
        match &self.p2m {
            P2m::Ept(e) => e.cpu_extents(range),
            P2m::Pt(p) => p.cpu_extents(range),
        }
    }

    /// The structure the IOMMU hardware walks: the EPT when shared, else the IOMMU's own.
    pub fn io_tables(&self) -> &dyn IoTables {
        match &self.p2m {
            P2m::Ept(e) if self.iommu.shared => e,
            _ => self.iommu.io_tables(),
        }
    }

    /// Live cache records.
    pub fn cache_records(&self) -> &[CacheRecord] {
        self.iommu.caches.records()
    }

    /// The current tables' translations for `range` (no caches).
    pub fn current_view(&self, range: GfnRange) -> WalkResult {
        if !self.iommu.caches.attached() {
            // No device yet (`pci=hotplug`): nothing reaches the tables.
            return WalkResult::default();
        }
        walk_root(self.io_tables(), &self.mem, range)
    }

    /// Everything a device could reach for `range`: the current tables, every IOTLB
    /// record covering it, and walks from every paging-structure record covering it.
    pub fn device_view(&self, range: GfnRange) -> DeviceView {
        if !self.iommu.caches.attached() {
            return DeviceView::default();
        }
        crate::view::device_view(self.io_tables(), &self.mem, self.cache_records(), range)
    }

    /// Counters in the shared vocabulary (p2m side, frees, records, and the IOMMU's).
    pub fn model_stats(&self) -> ModelStats {
        let mut s = ModelStats {
            superpage_splits: self.stats.superpage_splits,
            intermediate_replaced: self.stats.intermediate_replaced,
            tables_freed: self.mem.free_count(),
            need_modify_cleared: self.stats.need_modify_cleared,
            iommu_steps: self.stats.iommu_steps,
            physmap_pages_moved: self.stats.physmap_pages_moved,
            physmap_continuations: self.stats.physmap_continuations,
            guest_pages_freed: self.stats.guest_pages_freed,
            records_created: self.iommu.caches.created,
            ..ModelStats::default()
        };
        self.iommu.stats(&mut s);
        s
    }

    /// Writes everything that can influence a later op or oracle check: the p2m tables,
    /// machine memory, the IOMMU's sharing / `dont_flush` / crash state and its own
    /// tables and deferred-free queue; no counters, no cache records.
    pub fn write_state(&self, w: &mut dyn fmt::Write) -> fmt::Result {
        write!(
            w,
            "{:?}|{:?}|shared={} dont_flush={} crashed={:?}|",
            self.p2m, self.mem, self.iommu.shared, self.iommu.dont_flush, self.iommu.crashed
        )?;
        self.iommu.write_state(w)
    }

    /// Frames currently holding tables (p2m and IOMMU).
    pub fn live_table_frames(&self) -> usize {
        self.mem.live_tables()
    }
}
