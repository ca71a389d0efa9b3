//! A 4.6 domain with a host p2m and an IOMMU (driven through [`crate::Domain`]).

use crate::cache::CacheRecord;
use crate::events::OpLog;
use crate::frames::MachineMemory;
use crate::physmap::{AddToPhysmapRange, BatchOutcome};
use crate::revision::{Revision, Switches as LineSwitches};
use crate::stats::ModelStats;
use crate::types::*;
use crate::view::{DeviceView, P2mEntry};
use crate::walk::{walk_root, IoTables, WalkResult};
use crate::xen46::iommu::{Iommu, IommuStats};
use crate::xen46::p2m_ept::Ept;
use crate::xen46::p2m_pt::P2mPt;
use crate::xen46::revision::Switches;

/// Counters of what the p2m side did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct P2mStats {
    /// Superpages split (`ept_split_super_page`, `p2m_next_level`).
    pub superpage_splits: u64,
    /// Present intermediate entries replaced by a leaf.
    pub intermediate_replaced: u64,
    /// Times `need_modify_vtd_table` was cleared.
    pub need_modify_cleared: u64,
    /// IOMMU steps taken (map/unmap loop or shared flush decision).
    pub iommu_steps: u64,
    /// Pages the `XENMAPSPACE_gmfn_range` batch moved.
    pub physmap_pages_moved: u64,
    /// Guest pages freed (`guest_remove_page`, the batch's `put_page`).
    pub guest_pages_freed: u64,
}

/// Context passed down a `set_entry`.
pub struct Cx<'a> {
    /// Machine memory.
    pub mem: &'a mut MachineMemory,
    /// The domain's IOMMU.
    pub iommu: &'a mut Iommu,
    /// The revision's switches.
    pub sw: &'a Switches,
    /// The configuration.
    pub cfg: Config,
    /// Sequence number of this `set_entry` (tags cache records).
    pub seq: u64,
    /// Counters.
    pub stats: &'a mut P2mStats,
    /// What this op records for the oracle.
    pub log: &'a mut OpLog,
    /// `domain_crash()` was called (and why).
    pub crashed: &'a mut Option<&'static str>,
}

impl Cx<'_> {
    /// The `iommu_map_page()` loop over `pages` pages with `flags`, or the
    /// `iommu_unmap_page()` loop for no flags (separate tables): return values ignored as
    /// both `set_entry`s do, except that an AMD table allocation failure crashes the domain.
    pub fn iommu_map_or_unmap(&mut self, gfn: u64, pages: u64, mfn: u64, flags: IommuPerm) {
        let crash = if flags.is_none() {
            self.iommu
                .iommu_unmap_pages(self.mem, self.sw, gfn, pages, self.seq)
        } else {
            self.iommu.iommu_map_pages(
                self.mem, self.sw, gfn, pages, mfn, flags, self.seq, self.log,
            )
        };
        if let Some(why) = crash {
            self.crashed.get_or_insert(why);
        }
    }

    /// The IOMMU steps of a run step (`p2m_pt::run`, `p2m_ept::run`): for each stretch of
    /// chunks whose step runs (`step[k]`, chunk `k` at `gfn + k`), the map or unmap the
    /// literal loop issues page by page, as one call over the stretch.
    pub fn iommu_map_stretches(&mut self, gfn: u64, mfn: Mfn, step: &[bool], flags: IommuPerm) {
        let mut k = 0usize;
        while k < step.len() {
            if !step[k] {
                k += 1;
                continue;
            }
            let end = step[k..]
                .iter()
                .position(|s| !s)
                .map_or(step.len(), |p| k + p);
            let n = (end - k) as u64;
            crate::stats::bump(&mut self.stats.iommu_steps, n);
            let m = crate::xen46::p2m::chunk_mfn(mfn, k as u64);
            self.iommu_map_or_unmap(gfn + k as u64, n, m, flags);
            k = end;
        }
    }

    /// The `(gfn, order)` the shared-table flush of an op on `(gfn, order)` covers:
    /// the op's own range in Xen; with `flush_covers_split_superpage`, the largest
    /// superpage the op split around it, if any.
    pub fn shared_flush_scope(&self, gfn: u64, order: u32) -> (u64, u32) {
        match self.split_to_flush(gfn) {
            Some(r) if r.len() > 1u64 << order => (r.start, r.len().trailing_zeros()),
            _ => (gfn, order),
        }
    }

    /// With `flush_covers_split_superpage`: the largest superpage holding `gfn` that this
    /// op split (its IOTLB entry must go even when the op leaves the device view
    /// unchanged). A batch's earlier splits elsewhere do not count.
    pub fn split_to_flush(&self, gfn: u64) -> Option<GfnRange> {
        if !self.sw.flush_covers_split_superpage {
            return None;
        }
        self.log
            .splits
            .iter()
            .map(|s| s.range)
            .filter(|r| r.contains(gfn))
            .max_by_key(|r| r.len())
    }
}

/// The host p2m implementation in use.
#[derive(Clone, Debug)]
pub enum P2m {
    /// `p2m-ept.c`.
    Ept(Ept),
    /// `p2m-pt.c` (NPT or shadow).
    Pt(P2mPt),
}

impl P2m {
    /// `p2m->set_entry()`.
    pub fn set_entry(
        &mut self,
        cx: &mut Cx,
        gfn: u64,
        mfn: Mfn,
        order: u32,
        p2mt: P2mType,
        access: P2mAccess,
    ) -> Result<(), P2mError> {
        match self {
            P2m::Ept(e) => e.set_entry(cx, gfn, mfn, order, p2mt, access),
            P2m::Pt(p) => p.set_entry(cx, gfn, mfn, order, p2mt, access),
        }
    }

    /// `p2m->get_entry()` (query only).
    pub fn get_entry(&self, gfn: u64) -> Option<P2mEntry> {
        match self {
            P2m::Ept(e) => e.get_entry(gfn),
            P2m::Pt(p) => p.get_entry(gfn),
        }
    }

    /// The stored content of `range` as extents (see [`crate::view::CpuExtent`]).
    pub fn cpu_extents(&self, range: GfnRange) -> Vec<crate::view::CpuExtent> {
        match self {
            P2m::Ept(e) => e.cpu_extents(range),
            P2m::Pt(p) => p.cpu_extents(range),
        }
    }
}

/// One domain: configuration, revision, machine memory, p2m and IOMMU.
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
    /// The IOMMU.
    pub iommu: Iommu,
    /// p2m-side counters.
    pub stats: P2mStats,
    /// What the last op recorded for the oracle.
    pub log: OpLog,
    /// `domain_crash()` was called (and why): the domain runs no further op.
    pub crashed: Option<&'static str>,
    seq: u64,
}

impl Domain {
    /// A fresh domain with passthrough (`need_iommu(d)`) enabled.
    /// `revision` must be of the 4.6 line.
    pub fn new(cfg: Config, revision: Revision) -> Self {
        let LineSwitches::Xen46(switches) = revision.switches else {
            panic!("{} is not a 4.6 revision", revision.name)
        };
        let cfg = cfg.normalized();
        let mut mem = MachineMemory::new();
        let p2m = match cfg.mode {
            Mode::Ept => P2m::Ept(Ept::new(&mut mem)),
            Mode::Npt | Mode::Shadow => P2m::Pt(P2mPt::new(&mut mem)),
        };
        let mut iommu = Iommu::new(cfg.vendor, cfg.hw, &mut mem);
        if cfg.pci_hotplug {
            // Hot-plug: `need_iommu(d) == 0` and no device until `assign_device`.
            iommu.need_iommu = false;
            iommu.caches.set_attached(false);
        }
        Domain {
            cfg,
            revision,
            switches,
            mem,
            p2m,
            iommu,
            stats: P2mStats::default(),
            log: OpLog::default(),
            crashed: None,
            seq: 0,
        }
    }

    /// Sequence number the next `set_entry` will get (the first is 1).
    pub fn next_seq(&self) -> u64 {
        self.seq + 1
    }

    /// Runs one op: clears the log, runs `body` on the p2m, then moves the invalidations
    /// issued and the IOMMU ranges touched into the log.
    pub(crate) fn op<R>(&mut self, body: impl FnOnce(&mut P2m, &mut Cx) -> R) -> R {
        self.seq += 1;
        self.iommu.touched.clear();
        self.log.clear();
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
            crashed: &mut self.crashed,
        };
        let rc = body(&mut self.p2m, &mut cx);
        self.mem.end_op();
        self.iommu.caches.take_issued(&mut self.log.invalidations);
        self.log.changed.extend_from_slice(&self.iommu.touched);
        rc
    }

    /// Models `p2m->set_entry()` on the host p2m.
    pub fn set_entry(
        &mut self,
        gfn: u64,
        mfn: Mfn,
        order: u32,
        p2mt: P2mType,
        access: P2mAccess,
    ) -> Result<(), P2mError> {
        self.op(|p2m, cx| p2m.set_entry(cx, gfn, mfn, order, p2mt, access))
    }

    /// Models the hypercall `XENMEM_add_to_physmap` with `XENMAPSPACE_gmfn_range`
    /// ([`crate::xen46::memory`]).
    pub fn add_to_physmap_range(&mut self, op: AddToPhysmapRange) -> BatchOutcome {
        self.op(|p2m, cx| crate::xen46::memory::add_to_physmap_range(p2m, cx, op))
    }

    /// Models one call of a Xen caller of the host p2m as one hypercall.
    pub fn call(&mut self, op: crate::callers::CallerOp) -> BatchOutcome {
        self.op(|p2m, cx| {
            crate::xen46::memory::caller_op(p2m, cx, &mut crate::physmap::PageRefs::default(), op)
        })
    }

    /// Models the batch with a second vCPU's caller op inside it, as one op.
    pub fn add_to_physmap_interleaved(
        &mut self,
        ib: crate::callers::InterleavedBatch,
    ) -> crate::callers::InterleavedOutcome {
        let (batch, second) = self.op(|p2m, cx| {
            crate::xen46::memory::add_to_physmap_range_with(p2m, cx, ib.batch, Some(ib.second))
        });
        crate::callers::InterleavedOutcome {
            batch,
            second: second.unwrap_or(BatchOutcome {
                done: 0,
                rc: Ok(()),
            }),
        }
    }

    /// Writes everything that can influence a later op or oracle check (tables, machine
    /// memory, separate IOMMU tables), leaving out counters and cache records.
    pub fn write_state(&self, w: &mut dyn std::fmt::Write) -> std::fmt::Result {
        write!(w, "{:?}|{:?}|{:?}", self.p2m, self.mem, self.iommu.separate)
    }

    /// Counters in the shared vocabulary.
    pub fn model_stats(&self) -> ModelStats {
        let io = self.iommu.stats;
        ModelStats {
            superpage_splits: self.stats.superpage_splits,
            intermediate_replaced: self.stats.intermediate_replaced,
            tables_freed: self.mem.free_count(),
            need_modify_cleared: self.stats.need_modify_cleared,
            iommu_steps: self.stats.iommu_steps,
            physmap_pages_moved: self.stats.physmap_pages_moved,
            guest_pages_freed: self.stats.guest_pages_freed,
            vtd_psi: io.vtd_psi,
            vtd_psi_skipped: io.vtd_psi_skipped,
            vtd_dsi: io.vtd_dsi,
            amd_pages_4k: io.amd_pages_4k,
            amd_pages_large: io.amd_pages_large,
            amd_all: io.amd_all,
            map_pages: io.map_pages,
            unmap_pages: io.unmap_pages,
            records_created: self.iommu.caches.created,
            ..ModelStats::default()
        }
    }

    /// The CPU view of `range` as extents (see [`crate::view::CpuExtent`]).
    pub fn cpu_extents(&self, range: GfnRange) -> Vec<crate::view::CpuExtent> {
        self.p2m.cpu_extents(range)
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

    /// Models `p2m->get_entry()` (query only).
    pub fn get_entry(&self, gfn: u64) -> Option<P2mEntry> {
        match &self.p2m {
            P2m::Ept(e) => e.get_entry(gfn),
            P2m::Pt(p) => p.get_entry(gfn),
        }
    }

    /// The frame of the p2m table of `level` (1..=4) on the walk to `gfn` now, `None`
    /// when the walk stops above it (an empty or superpage entry) or `level` is out of range.
    pub fn p2m_table_at(&self, gfn: u64, level: u8) -> Option<u64> {
        match &self.p2m {
            P2m::Ept(e) => e.table_at(gfn, level),
            P2m::Pt(p) => p.table_at(gfn, level),
        }
    }

    /// The structure the IOMMU hardware walks: the p2m when `iommu_use_hap_pt(d)`,
    /// else its own tables.
    pub fn io_tables(&self) -> &dyn IoTables {
        if self.cfg.iommu_use_hap_pt() {
            match &self.p2m {
                P2m::Ept(e) => e,
                P2m::Pt(p) => p,
            }
        } else {
            &self.iommu.separate
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

    /// Everything a device could reach for `range`: the current tables, every
    /// IOTLB record covering it, and walks from every paging-structure record
    /// covering it through the tables as they are now.
    pub fn device_view(&self, range: GfnRange) -> DeviceView {
        if !self.iommu.caches.attached() {
            return DeviceView::default();
        }
        crate::view::device_view(self.io_tables(), &self.mem, self.cache_records(), range)
    }

    /// IOMMU-side counters.
    pub fn iommu_stats(&self) -> IommuStats {
        self.iommu.stats
    }

    /// Frames currently holding tables (p2m and IOMMU).
    pub fn live_table_frames(&self) -> usize {
        self.mem.live_tables()
    }
}
