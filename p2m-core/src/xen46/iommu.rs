//! The IOMMU the p2m must keep in sync: separate VT-d / AMD-Vi tables, the shared
//! flush entry points, and the caches.

use super::iommu_tables::SeparateTables;
use crate::cache::{Invalidation, IommuCaches};
use crate::events::OpLog;
use crate::frames::MachineMemory;
use crate::stats::bump;
use crate::types::{GfnRange, HwSemantics, Vendor};
use crate::xen46::revision::Switches;

/// Counters of what the IOMMU side did (for "did this run exercise anything").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IommuStats {
    /// VT-d page-selective invalidations issued (one per page or per range command).
    pub vtd_psi: u64,
    /// VT-d page-selective invalidations skipped because the old PTE was not present.
    pub vtd_psi_skipped: u64,
    /// VT-d domain-selective invalidations.
    pub vtd_dsi: u64,
    /// AMD `INVALIDATE_IOMMU_PAGES` with order 0.
    pub amd_pages_4k: u64,
    /// AMD `INVALIDATE_IOMMU_PAGES` with order 9 or 18.
    pub amd_pages_large: u64,
    /// AMD all-pages invalidations.
    pub amd_all: u64,
    /// `iommu_map_page` calls (pages).
    pub map_pages: u64,
    /// `iommu_unmap_page` calls (pages).
    pub unmap_pages: u64,
    /// Pages whose map/unmap failed for want of a table (fault injection).
    pub table_alloc_failures: u64,
}

/// One domain's IOMMU: vendor, separate tables (unused while sharing), caches.
#[derive(Clone, Debug)]
pub struct Iommu {
    /// Vendor.
    pub vendor: Vendor,
    /// The IOMMU's own tables (`hd->arch.pgd_maddr` / `hd->arch.root_table`).
    pub separate: SeparateTables,
    /// IOTLB and paging-structure caches.
    pub caches: IommuCaches,
    /// Counters.
    pub stats: IommuStats,
    /// Guest ranges whose translation the current `set_entry` changed beyond its own
    /// range: the spans of AMD entries merged (`iommu_merge_pages`) or split
    /// (`iommu_pde_from_gfn`). Cleared at the start of each `set_entry`.
    pub touched: Vec<GfnRange>,
    /// `this_cpu(iommu_dont_flush_iotlb)`: set by the `XENMAPSPACE_gmfn_range` batch;
    /// only VT-d's `intel_iommu_map_page` / `dma_pte_clear_one` honour it
    /// (`vtd/iommu.c:642,1744`).
    pub dont_flush: bool,
    /// `need_iommu(d)` (`xen/sched.h:843`): `set_entry` keeps the IOMMU in sync only while
    /// it is set. Set from creation unless the device is hot-plugged (`pci=hotplug`), then
    /// by `iommu_construct`.
    pub need_iommu: bool,
    /// `hd->arch.mapped_rmrrs` (VT-d): the RMRR ranges `[base, end)` (frames) mapped
    /// 1:1 for assigned devices, with their reference counts.
    pub mapped_rmrrs: Vec<(u64, u64, u32)>,
}

impl Iommu {
    /// A fresh IOMMU domain with an empty root table, its caches following `hw`.
    pub fn new(vendor: Vendor, hw: HwSemantics, mem: &mut MachineMemory) -> Self {
        Iommu {
            vendor,
            separate: SeparateTables::new(vendor, mem),
            caches: IommuCaches::new(hw),
            stats: IommuStats::default(),
            touched: Vec::new(),
            dont_flush: false,
            need_iommu: true,
            mapped_rmrrs: Vec::new(),
        }
    }

    /// Issues one invalidation command.
    pub fn invalidate(&mut self, cmd: Invalidation) {
        match cmd {
            Invalidation::VtdPsi { .. } => self.stats.vtd_psi += 1,
            Invalidation::VtdDsi => self.stats.vtd_dsi += 1,
            Invalidation::AmdPages { order: 0, .. } => self.stats.amd_pages_4k += 1,
            Invalidation::AmdPages { .. } => self.stats.amd_pages_large += 1,
            Invalidation::AmdAllPages => self.stats.amd_all += 1,
        }
        self.caches.invalidate(cmd);
    }

    /// Issues the order-0 command `per_page` for every page of `range`, as a loop of
    /// per-page flushes would (one command per page; counted per page).
    pub fn invalidate_each_page(&mut self, range: GfnRange, per_page: Invalidation) {
        count_each_page(&mut self.stats, range.len(), per_page);
        self.caches.invalidate_each_page(range, per_page);
    }

    /// Models `iommu_iotlb_flush(d, gfn, page_count)` (`iommu.c:269-277`): VT-d's
    /// `intel_iommu_iotlb_flush` is a domain-selective flush for more than one page, else
    /// a page-selective one (`vtd/iommu.c:561-605`); AMD has no `->iotlb_flush` in 4.6.
    pub fn iommu_iotlb_flush(&mut self, gfn: u64, page_count: u64) {
        match self.vendor {
            Vendor::Vtd if page_count > 1 => self.invalidate(Invalidation::VtdDsi),
            Vendor::Vtd => self.invalidate(Invalidation::VtdPsi {
                gfn,
                order: 0,
                ih: false,
            }),
            Vendor::Amd => {}
        }
    }

    /// Models `iommu_iotlb_flush_all(d)` (`iommu.c:279-287`): VT-d's
    /// `intel_iommu_iotlb_flush_all` is a domain-selective flush (`vtd/iommu.c:607-610`);
    /// AMD has no `->iotlb_flush_all` in 4.6.
    pub fn iommu_iotlb_flush_all(&mut self) {
        if self.vendor == Vendor::Vtd {
            self.invalidate(Invalidation::VtdDsi);
        }
    }

    /// Models `iommu_pte_flush()` (VT-d with EPT shared): a page-selective flush of
    /// `(gfn, order)` with `flush_non_present_entry = !present`, which the
    /// register/queued flush skips when the old entry was not present (no caching mode).
    /// Always a PSI: `iommu_flush_iotlb_psi` falls back to a domain-selective flush on a
    /// unit without page-selective invalidation or with `order > cap_max_amask_val`
    /// (`vtd/iommu.c:523-528`), which only flushes more — the model is the conservative
    /// (least-flushing) unit here.
    pub fn iommu_pte_flush(&mut self, gfn: u64, order: u32, present: bool) {
        if !present {
            bump(&mut self.stats.vtd_psi_skipped, 1);
            return;
        }
        self.invalidate(Invalidation::VtdPsi {
            gfn,
            order,
            ih: false,
        });
    }

    /// Models `amd_iommu_flush_pages()` (AMD with NPT shared).
    pub fn amd_iommu_flush_pages(&mut self, gfn: u64, order: u32) {
        self.invalidate(Invalidation::AmdPages { gfn, order });
    }

    /// Models the `iommu_map_page()` loop over `pages` pages (separate tables only).
    #[allow(clippy::too_many_arguments)]
    pub fn iommu_map_pages(
        &mut self,
        mem: &mut MachineMemory,
        sw: &Switches,
        gfn: u64,
        pages: u64,
        mfn: u64,
        perm: crate::types::IommuPerm,
        seq: u64,
        log: &mut OpLog,
    ) -> Option<&'static str> {
        self.stats.map_pages += pages;
        let mut sep = std::mem::take(&mut self.separate);
        sep.map_pages(self, mem, sw, gfn, pages, mfn, perm, seq, log);
        self.separate = sep;
        self.table_alloc_failures(sw)
    }

    /// After a map/unmap loop: the `domain_crash()` reason if a page's table allocation
    /// failed on AMD (`amd_iommu_map_page` / `amd_iommu_unmap_page` crash the domain and
    /// return `-EFAULT`, `amd/iommu_map.c:657-671`). VT-d's `intel_iommu_map_page` returns
    /// `-ENOMEM` (`vtd/iommu.c:1714-1718`), which `iommu_map_page` passes up and both
    /// `set_entry`s ignore: that page stays unmapped and the loop goes on — unless
    /// `iommu_map_failure_crashes_domu`.
    fn table_alloc_failures(&mut self, sw: &Switches) -> Option<&'static str> {
        let failed = self.separate.take_failed_pages();
        self.stats.table_alloc_failures += failed.len() as u64;
        match self.vendor {
            _ if failed.is_empty() => None,
            Vendor::Amd => Some("amd_iommu_map_page: IO page table allocation failed"),
            Vendor::Vtd if sw.iommu_map_failure_crashes_domu => {
                Some("iommu_map_page: intel_iommu_map_page returned -ENOMEM")
            }
            Vendor::Vtd => None,
        }
    }

    /// Models the `iommu_unmap_page()` loop over `pages` pages (separate tables only).
    pub fn iommu_unmap_pages(
        &mut self,
        mem: &mut MachineMemory,
        sw: &Switches,
        gfn: u64,
        pages: u64,
        seq: u64,
    ) -> Option<&'static str> {
        self.stats.unmap_pages += pages;
        let mut sep = std::mem::take(&mut self.separate);
        sep.unmap_pages(self, mem, sw, gfn, pages, seq);
        self.separate = sep;
        self.table_alloc_failures(sw)
    }
}
/// Counts the commands of a per-page loop (one per page; a domain-wide one once):
/// bookkeeping only.
fn count_each_page(stats: &mut IommuStats, pages: u64, per_page: Invalidation) {
    match per_page {
        Invalidation::VtdPsi { .. } => stats.vtd_psi += pages,
        Invalidation::AmdPages { .. } => stats.amd_pages_4k += pages,
        Invalidation::VtdDsi => stats.vtd_dsi += 1,
        Invalidation::AmdAllPages => stats.amd_all += 1,
    }
}
