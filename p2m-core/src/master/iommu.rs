//! TEMPORARY: replaced by the IOMMU half.
//!
//! A stand-in for `drivers/passthrough/iommu.c` with exactly the types and method
//! signatures of the master interface (`notes/master-interface.md`), so that the p2m half
//! compiles and its tests run. Separate tables are an empty root that nothing ever maps
//! into; `iommu_legacy_map` / `iommu_legacy_unmap` only count pages; the deferred-free
//! queue stays empty. The one behaviour kept is the VT-d flush of shared tables
//! (`iommu_iotlb_flush` → `iommu_flush_iotlb`, `vtd/iommu.c:726-780`), because the
//! shared-EPT path of the p2m calls it directly and the p2m tests check its effect on the
//! caches. The p2m code relies on nothing here beyond the interface.

// TEMPORARY: replaced by the IOMMU half

use std::fmt;

use crate::cache::{Invalidation, IommuCaches};
use crate::events::OpLog;
use crate::frames::{MachineMemory, TableOwner};
use crate::master::revision::Switches;
use crate::stats::ModelStats;
use crate::types::{Config, IommuPerm, Mode, PageSizes, Vendor};
use crate::walk::{IoEntry, IoTables};

/// `IOMMU_FLUSHF_added` / `_modified` / `_all` (`xen/include/xen/iommu.h:163-180`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct FlushFlags {
    /// `IOMMU_FLUSHF_added`: a new present PTE.
    pub added: bool,
    /// `IOMMU_FLUSHF_modified`: an existing present PTE changed.
    pub modified: bool,
    /// `IOMMU_FLUSHF_all`: whole-domain flush.
    pub all: bool,
}

impl FlushFlags {
    /// No flag set (`iommu_iotlb_flush` is then a no-op).
    pub fn is_empty(&self) -> bool {
        !self.added && !self.modified && !self.all
    }
}

/// Errors of the vendor hooks and the glue (`-ENOMEM`, `-EFAULT`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IommuErr {
    /// `-ENOMEM`.
    NoMem,
    /// `-EFAULT`.
    Fault,
}

/// What an IOMMU call needs from its caller (borrowed from the domain's fields).
pub struct IoCx<'a> {
    /// Machine memory.
    pub mem: &'a mut MachineMemory,
    /// The op log.
    pub log: &'a mut OpLog,
    /// The revision's switches.
    pub sw: &'a Switches,
    /// Op sequence number (tags cache records).
    pub seq: u64,
}

/// Stand-in separate tables: an empty root.
#[derive(Clone, Debug)]
struct StandInTables {
    root: u64,
}

impl IoTables for StandInTables {
    fn owner(&self) -> TableOwner {
        TableOwner::Iommu
    }
    fn io_root(&self) -> (u64, u8) {
        (self.root, 4)
    }
    fn for_each_io_run(
        &self,
        t: u64,
        lo: u16,
        hi: u16,
        f: &mut dyn FnMut(u16, u16, IoEntry),
    ) -> bool {
        if t != self.root {
            return false;
        }
        if hi > lo {
            f(lo, hi - lo, IoEntry::NotPresent);
        }
        true
    }
}

/// `struct domain_iommu` of one domain (stand-in).
#[derive(Clone, Debug)]
pub struct Iommu {
    /// Vendor.
    pub vendor: Vendor,
    /// `page_sizes`.
    pub page_sizes: PageSizes,
    /// `hd->hap_pt_share`: the IOMMU walks the EPT.
    pub shared: bool,
    /// `this_cpu(iommu_dont_flush_iotlb)`.
    pub dont_flush: bool,
    /// IOTLB and paging-structure caches.
    pub caches: IommuCaches,
    /// `domain_crash` was called: reason.
    pub crashed: Option<&'static str>,
    separate: StandInTables,
    map_pages: u64,
    unmap_pages: u64,
    vtd_psi: u64,
    vtd_psi_skipped: u64,
    vtd_dsi: u64,
}

impl Iommu {
    /// A fresh IOMMU domain (stand-in: sharing for VT-d + EPT + the share flag).
    pub fn new(cfg: &Config, mem: &mut MachineMemory) -> Iommu {
        let shared = cfg.mode == Mode::Ept && cfg.vendor == Vendor::Vtd && cfg.iommu_hap_pt_share;
        let root = mem.alloc(TableOwner::Iommu, 4);
        Iommu {
            vendor: cfg.vendor,
            page_sizes: cfg.page_sizes,
            shared,
            dont_flush: false,
            caches: IommuCaches::new(cfg.hw),
            crashed: None,
            separate: StandInTables { root },
            map_pages: 0,
            unmap_pages: 0,
            vtd_psi: 0,
            vtd_psi_skipped: 0,
            vtd_dsi: 0,
        }
    }

    /// `iommu_map` (stand-in: counts pages).
    pub fn iommu_map(
        &mut self,
        _cx: &mut IoCx,
        _dfn0: u64,
        _mfn0: u64,
        page_count: u64,
        _flags: IommuPerm,
        _flush_flags: &mut FlushFlags,
    ) -> Result<(), IommuErr> {
        self.map_pages += page_count;
        Ok(())
    }

    /// `iommu_unmap` (stand-in: counts pages).
    pub fn iommu_unmap(
        &mut self,
        _cx: &mut IoCx,
        _dfn0: u64,
        page_count: u64,
        _flush_flags: &mut FlushFlags,
    ) -> Result<(), IommuErr> {
        self.unmap_pages += page_count;
        Ok(())
    }

    /// `iommu_legacy_map` (stand-in).
    pub fn iommu_legacy_map(
        &mut self,
        cx: &mut IoCx,
        dfn: u64,
        mfn: u64,
        page_count: u64,
        flags: IommuPerm,
    ) -> Result<(), IommuErr> {
        let mut ff = FlushFlags::default();
        self.iommu_map(cx, dfn, mfn, page_count, flags, &mut ff)
    }

    /// `iommu_legacy_unmap` (stand-in).
    pub fn iommu_legacy_unmap(
        &mut self,
        cx: &mut IoCx,
        dfn: u64,
        page_count: u64,
    ) -> Result<(), IommuErr> {
        let mut ff = FlushFlags::default();
        self.iommu_unmap(cx, dfn, page_count, &mut ff)
    }

    /// `iommu_iotlb_flush` → VT-d `iommu_flush_iotlb` (the one behaviour kept).
    pub fn iommu_iotlb_flush(
        &mut self,
        _cx: &mut IoCx,
        dfn: u64,
        page_count: u64,
        flush_flags: FlushFlags,
    ) -> Result<(), IommuErr> {
        if page_count == 0 || flush_flags.is_empty() {
            return Ok(());
        }
        let dsi = flush_flags.all
            || !page_count.is_power_of_two()
            || dfn & (page_count - 1) != 0
            || page_count.trailing_zeros() > self.caches.hw().vtd_max_amask as u32;
        if dsi {
            self.vtd_dsi += 1;
            self.caches.invalidate(Invalidation::VtdDsi);
        } else if !flush_flags.modified && !self.caches.hw().vtd_caching_mode {
            self.vtd_psi_skipped += 1;
        } else {
            self.vtd_psi += 1;
            self.caches.invalidate(Invalidation::VtdPsi {
                gfn: dfn,
                order: page_count.trailing_zeros(),
                ih: false,
            });
        }
        Ok(())
    }

    /// `iommu_iotlb_flush_all` (stand-in: a DSI when any flag is set).
    pub fn iommu_iotlb_flush_all(
        &mut self,
        _cx: &mut IoCx,
        flush_flags: FlushFlags,
    ) -> Result<(), IommuErr> {
        if !flush_flags.is_empty() {
            self.vtd_dsi += 1;
            self.caches.invalidate(Invalidation::VtdDsi);
        }
        Ok(())
    }

    /// `free_queued_pgtables` (stand-in: the queue is always empty).
    pub fn free_queued_pgtables(&mut self, _cx: &mut IoCx) {}

    /// The separate tables as the hardware walks them (stand-in: an empty root).
    pub fn io_tables(&self) -> &dyn IoTables {
        &self.separate
    }

    /// Counters for `ModelStats`.
    pub fn stats(&self, into: &mut ModelStats) {
        into.map_pages += self.map_pages;
        into.unmap_pages += self.unmap_pages;
        into.vtd_psi += self.vtd_psi;
        into.vtd_psi_skipped += self.vtd_psi_skipped;
        into.vtd_dsi += self.vtd_dsi;
    }

    /// Not in the interface file (proposed addition): writes the IOMMU state that can
    /// influence a later op — separate tables, the deferred-free queue — leaving out
    /// counters and the cache records (the domain writes `shared`, `dont_flush` and
    /// `crashed` itself).
    pub fn write_state(&self, w: &mut dyn fmt::Write) -> fmt::Result {
        write!(w, "{:?}", self.separate)
    }
}
