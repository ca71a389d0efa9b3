//! The generic IOMMU glue: `xen/drivers/passthrough/iommu.c` at `c447b7308b`
//! (`mapping_order`, `iommu_map`, `iommu_unmap`, the `iommu_legacy_*` wrappers and the two
//! flush entry points), plus `struct domain_iommu` ([`Iommu`]).
//!
//! The vendor hooks only OR bits into a [`FlushFlags`]; the caller flushes once. The hooks
//! live in [`super::vtd_iommu`] and [`super::amd_iommu_map`], table allocation and the
//! deferred free queue in [`super::x86_iommu`].
//!
//! **Range fast path.** With 4 KiB pages only (or a misaligned range) `iommu_map` calls
//! `->map_page` once per page: 262,144 calls for 1 GiB. Consecutive order-0 calls that land
//! in one level-1 table are modelled by one call of the vendor's `*_run` function, which
//! walks once (the later calls' walks find the same tables and change nothing), writes the
//! entries as runs, and sets the markers with the exact range forms of
//! [`super::pt_contig_markers`]. A call that completes the table (coalesce or free-empty)
//! ends the run there, exactly as the per-page loop would, and the loop goes on from the
//! next page. `tests/master_iommu.rs` checks the fast path against the literal per-page
//! loop ([`Iommu::set_range_fast_path`]`(false)`) on random op sequences.

use crate::cache::{Invalidation, IommuCaches};
use crate::events::OpLog;
use crate::frames::{MachineMemory, TableOwner};
use crate::master::amd_iommu_map::{self, AmdTables, PAGING_MODE};
use crate::master::revision::Switches;
use crate::master::vtd_iommu::{self, VtdTables, VTD_LEVELS};
use crate::master::x86_iommu::{self, QueuedTable};
use crate::stats::bump;
use crate::stats::ModelStats;
use crate::types::{Config, IommuPerm, Mode, PageSizes, Vendor, GFN_BITS};
use crate::walk::{IoEntry, IoTables};

/// `IOMMU_FLUSHF_added` / `_modified` / `_all` (`xen/include/xen/iommu.h:163-180`).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct FlushFlags {
    /// `IOMMU_FLUSHF_added`: a new present PTE was written.
    pub added: bool,
    /// `IOMMU_FLUSHF_modified`: an existing present PTE changed.
    pub modified: bool,
    /// `IOMMU_FLUSHF_all`: flush the whole domain (a table was unlinked).
    pub all: bool,
}

impl FlushFlags {
    /// No bit set.
    pub fn is_empty(&self) -> bool {
        !self.added && !self.modified && !self.all
    }
}

/// Errors of the vendor hooks and the glue: `-ENOMEM`, `-EFAULT` (allocation never fails
/// in this model, so in practice only AMD's "superpage at mfn 0" path errs).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IommuErr {
    /// `-ENOMEM`.
    NoMem,
    /// `-EFAULT`.
    Fault,
    /// `-EINVAL` (`iommu_iotlb_flush` of `INVALID_DFN`, `iommu.c:488`).
    Inval,
}

/// What an IOMMU call needs from its caller (borrowed from the domain's fields).
pub struct IoCx<'a> {
    /// Machine memory.
    pub mem: &'a mut MachineMemory,
    /// What the current op records for the oracle.
    pub log: &'a mut OpLog,
    /// The revision's switches.
    pub sw: &'a Switches,
    /// Sequence number of the op (tags cache records).
    pub seq: u64,
}

/// Counters of the IOMMU side (copied into [`ModelStats`] by [`Iommu::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IommuCounters {
    /// Superpages shattered at level 2 (2 MiB into 4 KiB).
    pub iommu_shatters_2m: u64,
    /// Superpages shattered at level 3 (1 GiB into 2 MiB).
    pub iommu_shatters_1g: u64,
    /// Tables coalesced into a 2 MiB superpage.
    pub iommu_coalesce_2m: u64,
    /// Tables coalesced into a 1 GiB superpage.
    pub iommu_coalesce_1g: u64,
    /// Tables queued because they became empty.
    pub iommu_tables_freed_empty: u64,
    /// Tables queued (`iommu_queue_free_pgtable`).
    pub iommu_tables_queued: u64,
    /// Tables queued while `iommu_dont_flush_iotlb` was set.
    pub iommu_queued_while_dont_flush: u64,
    /// Drains of the queue that freed something.
    pub iommu_drains_nonempty: u64,
    /// VT-d page-selective invalidations issued.
    pub vtd_psi: u64,
    /// VT-d invalidations skipped (non-present flush without Caching Mode).
    pub vtd_psi_skipped: u64,
    /// VT-d domain-selective invalidations issued.
    pub vtd_dsi: u64,
    /// AMD `INVALIDATE_IOMMU_PAGES` of order 0.
    pub amd_pages_4k: u64,
    /// AMD `INVALIDATE_IOMMU_PAGES` of order 9 or 18.
    pub amd_pages_large: u64,
    /// AMD all-pages invalidations.
    pub amd_all: u64,
    /// Pages passed to `->map_page`.
    pub map_pages: u64,
    /// Pages passed to `->unmap_page`.
    pub unmap_pages: u64,
}

impl IommuCounters {
    /// Counts a superpage shattered at `level` (2: 2 MiB, else 1 GiB).
    pub fn shattered(&mut self, level: u8) {
        match level {
            2 => self.iommu_shatters_2m += 1,
            _ => self.iommu_shatters_1g += 1,
        }
    }
}

/// `INVALID_DFN`.
pub const INVALID_DFN: u64 = u64::MAX;

/// Mask of the dfns a 4-level table (48-bit address width) can hold.
pub const DFN_MASK: u64 = (1 << GFN_BITS) - 1;

/// The parts of `struct domain_iommu` a vendor hook touches besides its tables.
pub(crate) struct Hd<'a> {
    /// IOTLB and paging-structure caches.
    pub caches: &'a mut IommuCaches,
    /// The deferred free queue (`free_pgt_list`).
    pub queue: &'a mut Vec<QueuedTable>,
    /// Counters.
    pub ctr: &'a mut IommuCounters,
    /// `domain_crash` reason.
    pub crashed: &'a mut Option<&'static str>,
    /// `hd->platform_ops->page_sizes`.
    pub page_sizes: PageSizes,
    /// `this_cpu(iommu_dont_flush_iotlb)`.
    pub dont_flush: bool,
}

impl Hd<'_> {
    /// `domain_crash(d)`: the first reason is kept.
    pub fn domain_crash(&mut self, why: &'static str) {
        if self.crashed.is_none() {
            *self.crashed = Some(why);
        }
    }

    /// Issues one invalidation command to the caches and counts it.
    pub fn invalidate(&mut self, cmd: Invalidation) {
        match cmd {
            Invalidation::VtdPsi { .. } => self.ctr.vtd_psi += 1,
            Invalidation::VtdDsi => self.ctr.vtd_dsi += 1,
            Invalidation::AmdPages { order: 0, .. } => self.ctr.amd_pages_4k += 1,
            Invalidation::AmdPages { .. } => self.ctr.amd_pages_large += 1,
            Invalidation::AmdAllPages => self.ctr.amd_all += 1,
        }
        self.caches.invalidate(cmd);
    }
}

/// The separate tables of the domain's vendor (none when the EPT is shared).
#[derive(Clone, Debug)]
pub enum SeparateTables {
    /// VT-d tables (`hd->arch.vtd.pgd_maddr`).
    Vtd(VtdTables),
    /// AMD-Vi tables (`hd->arch.amd.root_table`).
    Amd(AmdTables),
    /// Shared EPT: the IOMMU walks the p2m.
    None,
}

impl IoTables for SeparateTables {
    fn owner(&self) -> TableOwner {
        TableOwner::Iommu
    }
    fn io_root(&self) -> (u64, u8) {
        match self {
            SeparateTables::Vtd(pt) => pt.io_root(),
            SeparateTables::Amd(pt) => pt.io_root(),
            SeparateTables::None => (0, VTD_LEVELS),
        }
    }
    fn for_each_io_run(
        &self,
        t: u64,
        lo: u16,
        hi: u16,
        f: &mut dyn FnMut(u16, u16, IoEntry),
    ) -> bool {
        match self {
            SeparateTables::Vtd(pt) => pt.for_each_io_run(t, lo, hi, f),
            SeparateTables::Amd(pt) => pt.for_each_io_run(t, lo, hi, f),
            SeparateTables::None => false,
        }
    }
}

/// `struct domain_iommu` of one domain.
#[derive(Clone, Debug)]
pub struct Iommu {
    /// Vendor.
    pub vendor: Vendor,
    /// `hd->platform_ops->page_sizes`.
    pub page_sizes: PageSizes,
    /// `hd->hap_pt_share`: the IOMMU walks the EPT.
    pub shared: bool,
    /// `this_cpu(iommu_dont_flush_iotlb)`.
    pub dont_flush: bool,
    /// IOTLB and paging-structure caches.
    pub caches: IommuCaches,
    /// `domain_crash` was called: reason.
    pub crashed: Option<&'static str>,
    /// The separate tables.
    tables: SeparateTables,
    /// The deferred free queue.
    queue: Vec<QueuedTable>,
    /// Counters.
    counters: IommuCounters,
    /// Model runs of 4 KiB calls in one table as one step (see the module comment).
    range_fast_path: bool,
    /// Flush flags the legacy wrappers dropped under `dont_flush` (no Xen counterpart;
    /// read only by the proposed fix `batch_flush_keeps_deferred_flags`).
    dropped: FlushFlags,
    /// `hd->arch.identity_maps` (`x86/iommu.c:215-222`): the ranges mapped 1:1 for
    /// assigned devices, with their access and reference count.
    pub identity_maps: Vec<IdentityMapRange>,
}

/// One `struct identity_map` (`x86/iommu.c:215-222`): a reserved range `[base, end)` in
/// frames, its access and how many assignments use it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdentityMapRange {
    /// First frame.
    pub base: u64,
    /// One past the last frame.
    pub end: u64,
    /// Access of its entries.
    pub access: crate::types::P2mAccess,
    /// Assignments using it.
    pub count: u32,
}

impl Iommu {
    /// `iommu_domain_init` with a device assigned: the tables exist from creation.
    ///
    /// * `page_sizes`: AMD always has 4K|2M|1G (`pci_amd_iommu.c:767`) unless
    ///   `iommu=no-superpages` (`x86/iommu.c:132-133`), so `Up2m` counts as `Up1g` there.
    /// * `shared` is `hap_enabled && iommu_hap_pt_share` (`iommu.c:196`) on VT-d with EPT,
    ///   and `vtd_setup` clears `iommu_hap_pt_share` when VT-d lacks a page size the EPT
    ///   uses (`vtd_ept_page_compatible`, `vtd/iommu.c:2302-2318, 2694-2695`; EPT uses 2M
    ///   and 1G by default): sharing needs `page_sizes == Up1g`.
    /// * The root is `iommu_alloc_pgtable(hd, 0)` (cleared markers); none when shared.
    pub fn new(cfg: &Config, mem: &mut MachineMemory) -> Iommu {
        let vendor = cfg.vendor;
        let page_sizes = match (vendor, cfg.page_sizes) {
            (Vendor::Amd, PageSizes::Only4k) => PageSizes::Only4k,
            (Vendor::Amd, _) => PageSizes::Up1g,
            (Vendor::Vtd, p) => p,
        };
        let shared = vendor == Vendor::Vtd
            && cfg.mode == Mode::Ept
            && cfg.iommu_hap_pt_share
            && page_sizes == PageSizes::Up1g;
        let tables = match (shared, vendor) {
            (true, _) => SeparateTables::None,
            (false, Vendor::Vtd) => SeparateTables::Vtd(VtdTables::with_root(mem, VTD_LEVELS)),
            (false, Vendor::Amd) => SeparateTables::Amd(AmdTables::with_root(mem, PAGING_MODE)),
        };
        Iommu {
            vendor,
            page_sizes,
            shared,
            dont_flush: false,
            caches: IommuCaches::new(cfg.hw),
            crashed: None,
            tables,
            queue: Vec::new(),
            counters: IommuCounters::default(),
            range_fast_path: true,
            dropped: FlushFlags::default(),
            identity_maps: Vec::new(),
        }
    }

    /// Turns the range fast path on (the default) or off (the literal per-page loop):
    /// a knob for the equivalence tests, not a Xen behaviour.
    pub fn set_range_fast_path(&mut self, on: bool) {
        self.range_fast_path = on;
    }

    /// The separate tables.
    pub fn separate(&self) -> &SeparateTables {
        &self.tables
    }

    /// The separate tables as the hardware walks them (unused when `shared`).
    pub fn io_tables(&self) -> &dyn IoTables {
        &self.tables
    }

    /// Tables queued and not yet freed, in queue order.
    pub fn queued(&self) -> &[QueuedTable] {
        &self.queue
    }

    /// The counters.
    pub fn counters(&self) -> IommuCounters {
        self.counters
    }

    /// Frames of the separate tables with their level, ascending.
    pub fn table_frames(&self) -> Vec<(u64, u8)> {
        match &self.tables {
            SeparateTables::Vtd(pt) => pt.frames().map(|(f, t)| (f, t.level)).collect(),
            SeparateTables::Amd(pt) => pt.frames().map(|(f, t)| (f, t.level)).collect(),
            SeparateTables::None => Vec::new(),
        }
    }

    /// The 512 markers of the separate table in `frame`.
    pub fn markers_of(&self, frame: u64) -> Option<Vec<u8>> {
        match &self.tables {
            SeparateTables::Vtd(pt) => pt.markers_of(frame),
            SeparateTables::Amd(pt) => pt.markers_of(frame),
            SeparateTables::None => None,
        }
    }

    /// Writes everything of the IOMMU that can influence a later op or oracle check: the
    /// separate tables (entries and markers), the free queue, `dont_flush`, `crashed`
    /// (not the counters, not the cache records).
    pub fn write_state(&self, w: &mut dyn std::fmt::Write) -> std::fmt::Result {
        write!(
            w,
            "{:?}|{:?}|{:?}|{}|{:?}",
            self.tables, self.queue, self.page_sizes, self.dont_flush, self.crashed
        )
    }

    /// Copies the counters into the `iommu_*`, invalidation and page fields of `into`
    /// (assigning, so calling it twice on the same value is harmless).
    pub fn stats(&self, into: &mut ModelStats) {
        let c = &self.counters;
        into.iommu_shatters_2m = c.iommu_shatters_2m;
        into.iommu_shatters_1g = c.iommu_shatters_1g;
        into.iommu_coalesce_2m = c.iommu_coalesce_2m;
        into.iommu_coalesce_1g = c.iommu_coalesce_1g;
        into.iommu_tables_freed_empty = c.iommu_tables_freed_empty;
        into.iommu_tables_queued = c.iommu_tables_queued;
        into.iommu_queued_while_dont_flush = c.iommu_queued_while_dont_flush;
        into.iommu_drains_nonempty = c.iommu_drains_nonempty;
        into.vtd_psi = c.vtd_psi;
        into.vtd_psi_skipped = c.vtd_psi_skipped;
        into.vtd_dsi = c.vtd_dsi;
        into.amd_pages_4k = c.amd_pages_4k;
        into.amd_pages_large = c.amd_pages_large;
        into.amd_all = c.amd_all;
        into.map_pages = c.map_pages;
        into.unmap_pages = c.unmap_pages;
        into.records_created = self.caches.created;
    }

    /// Splits the borrows: the tables and the rest of `struct domain_iommu`.
    fn split(&mut self) -> (&mut SeparateTables, Hd<'_>) {
        (
            &mut self.tables,
            Hd {
                caches: &mut self.caches,
                queue: &mut self.queue,
                ctr: &mut self.counters,
                crashed: &mut self.crashed,
                page_sizes: self.page_sizes,
                dont_flush: self.dont_flush,
            },
        )
    }

    /// `mapping_order(hd, dfn, mfn, nr)` (`iommu.c:301-324`): the largest order in
    /// `page_sizes` to which `dfn | mfn` is aligned and which `nr` pages can fill.
    pub fn mapping_order(&self, dfn: u64, mfn: u64, nr: u64) -> u32 {
        let res = dfn | mfn;
        let mut order = 0;
        for next in [9u32, 18] {
            if !self.page_sizes.has_order(next) {
                break;
            }
            let mask = (1u64 << next) - 1;
            if nr <= mask || res & mask != 0 {
                break;
            }
            order = next;
        }
        order
    }

    /// One `->map_page(d, dfn, mfn, flags | IOMMUF_order(order), flush_flags)` call, or
    /// (fast path, `order == 0`) the consecutive 4 KiB calls up to the end of `dfn`'s
    /// level-1 table: returns how many pages were done.
    #[allow(clippy::too_many_arguments)]
    fn map_step(
        &mut self,
        cx: &mut IoCx,
        dfn: u64,
        mfn: u64,
        order: u32,
        remaining: u64,
        perm: IommuPerm,
        ff: &mut FlushFlags,
    ) -> Result<u64, IommuErr> {
        let fast = order == 0 && self.range_fast_path;
        let n = if fast {
            remaining.min(512 - (dfn & 511))
        } else {
            1 << order
        };
        let (tables, mut hd) = self.split();
        let r = match tables {
            // The VT-d hook returns at once when the EPT is shared (`vtd/iommu.c:2086`).
            SeparateTables::None => Ok(n),
            SeparateTables::Vtd(pt) if fast => {
                vtd_iommu::intel_iommu_map_run(&mut hd, pt, cx, dfn, mfn, n, perm, ff)
            }
            SeparateTables::Vtd(pt) => {
                vtd_iommu::intel_iommu_map_page(&mut hd, pt, cx, dfn, mfn, order, perm, ff)
                    .map(|()| n)
            }
            SeparateTables::Amd(pt) if fast => {
                amd_iommu_map::amd_iommu_map_run(&mut hd, pt, cx, dfn, mfn, n, perm, ff)
            }
            SeparateTables::Amd(pt) => {
                amd_iommu_map::amd_iommu_map_page(&mut hd, pt, cx, dfn, mfn, order, perm, ff)
                    .map(|()| n)
            }
        };
        hd.ctr.map_pages += match r {
            Ok(done) => done,
            Err(_) => 1 << order,
        };
        r
    }

    /// One `->unmap_page(d, dfn, IOMMUF_order(order), flush_flags)` call, or (fast path)
    /// the consecutive 4 KiB calls in `dfn`'s level-1 table: returns how many pages.
    fn unmap_step(
        &mut self,
        cx: &mut IoCx,
        dfn: u64,
        order: u32,
        remaining: u64,
        ff: &mut FlushFlags,
    ) -> Result<u64, IommuErr> {
        let fast = order == 0 && self.range_fast_path;
        let n = if fast {
            remaining.min(512 - (dfn & 511))
        } else {
            1 << order
        };
        let (tables, mut hd) = self.split();
        let r = match tables {
            SeparateTables::None => Ok(n),
            SeparateTables::Vtd(pt) if fast => {
                vtd_iommu::intel_iommu_unmap_run(&mut hd, pt, cx, dfn, n, ff)
            }
            SeparateTables::Vtd(pt) => {
                vtd_iommu::intel_iommu_unmap_page(&mut hd, pt, cx, dfn, order, ff).map(|()| n)
            }
            SeparateTables::Amd(pt) if fast => {
                amd_iommu_map::amd_iommu_unmap_run(&mut hd, pt, cx, dfn, n, ff)
            }
            SeparateTables::Amd(pt) => {
                amd_iommu_map::amd_iommu_unmap_page(&mut hd, pt, cx, dfn, order, ff).map(|()| n)
            }
        };
        hd.ctr.unmap_pages += match r {
            Ok(done) => done,
            Err(_) => 1 << order,
        };
        r
    }

    /// `iommu_map(d, dfn0, mfn0, page_count, flags, flush_flags)` (`iommu.c:326-382`): maps
    /// in the largest chunks `mapping_order` allows. On a failure it unmaps what it mapped,
    /// crashes the domain (ours are never the hardware domain) and, for more than one page,
    /// flushes everything with the flags so far and clears them.
    pub fn iommu_map(
        &mut self,
        cx: &mut IoCx,
        dfn0: u64,
        mfn0: u64,
        page_count: u64,
        flags: IommuPerm,
        flush_flags: &mut FlushFlags,
    ) -> Result<(), IommuErr> {
        if self.shared {
            // Every `->map_page` call returns at once (`vtd/iommu.c:2086`).
            bump(&mut self.counters.map_pages, page_count);
            return Ok(());
        }
        let mut rc = Ok(());
        let mut i = 0u64;
        while i < page_count {
            let dfn = dfn0.wrapping_add(i);
            let mfn = mfn0.wrapping_add(i);
            let order = self.mapping_order(dfn, mfn, page_count - i);
            match self.map_step(cx, dfn, mfn, order, page_count - i, flags, flush_flags) {
                Ok(done) => i += done,
                Err(e) => {
                    // Xen ignores the unmap's result here (`iommu.c:364-365`).
                    let _ = self.iommu_unmap(cx, dfn0, i, flush_flags);
                    self.domain_crash("iommu_map: ->map_page failed");
                    rc = Err(e);
                    break;
                }
            }
        }
        if page_count > 1 && rc.is_err() && self.iommu_iotlb_flush_all(cx, *flush_flags).is_ok() {
            *flush_flags = FlushFlags::default();
        }
        rc
    }

    /// `iommu_legacy_map(d, dfn, mfn, page_count, flags)` (`iommu.c:384-397`): `iommu_map`,
    /// then the flush unless `iommu_dont_flush_iotlb` is set — in which case the flags,
    /// `IOMMU_FLUSHF_all` included, are dropped.
    pub fn iommu_legacy_map(
        &mut self,
        cx: &mut IoCx,
        dfn: u64,
        mfn: u64,
        page_count: u64,
        flags: IommuPerm,
    ) -> Result<(), IommuErr> {
        let mut ff = FlushFlags::default();
        let rc = self.iommu_map(cx, dfn, mfn, page_count, flags, &mut ff);
        if !self.dont_flush && rc.is_ok() {
            return self.iommu_iotlb_flush(cx, dfn, page_count, ff);
        }
        self.note_dropped(ff);
        rc
    }

    /// `iommu_unmap(d, dfn0, page_count, flags, flush_flags)` (`iommu.c:399-454`): unmaps in
    /// the largest chunks `mapping_order(dfn, 0, ..)` allows; on a failure crashes the domain
    /// and stops, flushing everything for more than one page.
    pub fn iommu_unmap(
        &mut self,
        cx: &mut IoCx,
        dfn0: u64,
        page_count: u64,
        flush_flags: &mut FlushFlags,
    ) -> Result<(), IommuErr> {
        if self.shared {
            bump(&mut self.counters.unmap_pages, page_count);
            return Ok(());
        }
        let mut rc = Ok(());
        let mut i = 0u64;
        while i < page_count {
            let dfn = dfn0.wrapping_add(i);
            let order = self.mapping_order(dfn, 0, page_count - i);
            match self.unmap_step(cx, dfn, order, page_count - i, flush_flags) {
                Ok(done) => i += done,
                Err(e) => {
                    if rc.is_ok() {
                        rc = Err(e);
                    }
                    self.domain_crash("iommu_unmap: ->unmap_page failed");
                    break;
                }
            }
        }
        if page_count > 1 && rc.is_err() && self.iommu_iotlb_flush_all(cx, *flush_flags).is_ok() {
            *flush_flags = FlushFlags::default();
        }
        rc
    }

    /// `iommu_legacy_unmap(d, dfn, page_count)` (`iommu.c:456-465`): like
    /// [`Self::iommu_legacy_map`].
    pub fn iommu_legacy_unmap(
        &mut self,
        cx: &mut IoCx,
        dfn: u64,
        page_count: u64,
    ) -> Result<(), IommuErr> {
        let mut ff = FlushFlags::default();
        let rc = self.iommu_unmap(cx, dfn, page_count, &mut ff);
        if !self.dont_flush && rc.is_ok() {
            return self.iommu_iotlb_flush(cx, dfn, page_count, ff);
        }
        self.note_dropped(ff);
        rc
    }

    /// Remembers flush flags a legacy wrapper dropped under `iommu_dont_flush_iotlb` (read
    /// only by the proposed fix `batch_flush_keeps_deferred_flags`; Xen forgets them).
    pub(crate) fn note_dropped(&mut self, ff: FlushFlags) {
        if self.dont_flush {
            self.dropped.added |= ff.added;
            self.dropped.modified |= ff.modified;
            self.dropped.all |= ff.all;
        }
    }

    /// Takes the flags dropped under `dont_flush` since the last call.
    pub fn take_dropped_flags(&mut self) -> FlushFlags {
        std::mem::take(&mut self.dropped)
    }

    /// `iommu_iotlb_flush(d, dfn, page_count, flush_flags)` (`iommu.c:478-505`): nothing for
    /// no pages or no flags, `-EINVAL` for `INVALID_DFN`, else the vendor's `->iotlb_flush`.
    pub fn iommu_iotlb_flush(
        &mut self,
        cx: &mut IoCx,
        dfn: u64,
        page_count: u64,
        flush_flags: FlushFlags,
    ) -> Result<(), IommuErr> {
        if page_count == 0 || flush_flags.is_empty() {
            return Ok(());
        }
        if dfn == INVALID_DFN {
            return Err(IommuErr::Inval);
        }
        let (dfn, page_count) = split_flush_scope(cx, dfn, page_count);
        self.iotlb_flush_hook(dfn, page_count, flush_flags);
        Ok(())
    }

    /// `iommu_iotlb_flush_all(d, flush_flags)` (`iommu.c:507-530`): nothing for no flags,
    /// else `->iotlb_flush(d, INVALID_DFN, 0, flags | IOMMU_FLUSHF_all)`.
    pub fn iommu_iotlb_flush_all(
        &mut self,
        _cx: &mut IoCx,
        flush_flags: FlushFlags,
    ) -> Result<(), IommuErr> {
        if flush_flags.is_empty() {
            return Ok(());
        }
        self.iotlb_flush_hook(
            INVALID_DFN,
            0,
            FlushFlags {
                all: true,
                ..flush_flags
            },
        );
        Ok(())
    }

    /// `hd->platform_ops->iotlb_flush`: `iommu_flush_iotlb` (VT-d, also with the EPT shared)
    /// or `amd_iommu_flush_iotlb_pages`. Flush timeouts are not modelled, so it never fails.
    fn iotlb_flush_hook(&mut self, dfn: u64, page_count: u64, ff: FlushFlags) {
        let vendor = self.vendor;
        let (_, mut hd) = self.split();
        match vendor {
            Vendor::Vtd => vtd_iommu::iommu_flush_iotlb(&mut hd, dfn, page_count, ff),
            Vendor::Amd => amd_iommu_map::amd_iommu_flush_iotlb_pages(&mut hd, dfn, page_count, ff),
        }
    }

    /// The tasklet `free_queued_pgtables` (`x86/iommu.c:684-705`): frees every queued table
    /// through `cx.log.free_tables` (so a stale record reaching one is reported). The domain
    /// calls it after each hypercall returns and at each continuation point of a batch,
    /// never inside one.
    pub fn free_queued_pgtables(&mut self, cx: &mut IoCx) {
        let (tables, mut hd) = self.split();
        match tables {
            SeparateTables::Vtd(pt) => x86_iommu::free_queued_pgtables(&mut hd, pt, cx),
            SeparateTables::Amd(pt) => x86_iommu::free_queued_pgtables(&mut hd, pt, cx),
            SeparateTables::None => {}
        }
    }

    /// `domain_crash(d)` (the first reason is kept).
    pub fn domain_crash(&mut self, why: &'static str) {
        if self.crashed.is_none() {
            self.crashed = Some(why);
        }
    }
}

/// With the proposed fix `flush_covers_split_superpage` (not Xen): the range a flush of
/// `(dfn, page_count)` must cover when this op split a superpage overlapping it — the
/// smallest range covering both the asked range and the largest such superpage; else the
/// range as asked.
fn split_flush_scope(cx: &IoCx, dfn: u64, page_count: u64) -> (u64, u64) {
    use crate::types::GfnRange;
    if !cx.sw.flush_covers_split_superpage {
        return (dfn, page_count);
    }
    let asked = GfnRange {
        start: dfn,
        end: dfn.saturating_add(page_count),
    };
    cx.log
        .splits
        .iter()
        .map(|s| s.range)
        .filter(|r| r.intersect(&asked).is_some() && r.len() > page_count)
        .max_by_key(|r| r.len())
        .map_or((dfn, page_count), |r| {
            let start = r.start.min(asked.start);
            (start, r.end.max(asked.end) - start)
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::HwSemantics;

    fn iommu(vendor: Vendor, page_sizes: PageSizes) -> Iommu {
        let mode = match vendor {
            Vendor::Vtd => Mode::Ept,
            Vendor::Amd => Mode::Npt,
        };
        let cfg = Config {
            page_sizes,
            hw: HwSemantics::CONSERVATIVE,
            ..Config::new(mode, vendor, false)
        };
        Iommu::new(&cfg, &mut MachineMemory::new())
    }

    #[test]
    fn mapping_order_picks_the_largest_allowed_chunk() {
        let big = iommu(Vendor::Vtd, PageSizes::Up1g);
        assert_eq!(big.mapping_order(0x40000, 0x80000, 1 << 18), 18);
        assert_eq!(big.mapping_order(0x40000, 0x80000, (1 << 18) - 1), 9);
        assert_eq!(big.mapping_order(0x40200, 0x80200, 1 << 18), 9);
        assert_eq!(big.mapping_order(0x40200, 0x80201, 1 << 18), 0);
        assert_eq!(big.mapping_order(0x40200, 0, 511), 0);
        let two = iommu(Vendor::Vtd, PageSizes::Up2m);
        assert_eq!(two.mapping_order(0x40000, 0x80000, 1 << 18), 9);
        let four = iommu(Vendor::Vtd, PageSizes::Only4k);
        assert_eq!(four.mapping_order(0x40000, 0x80000, 1 << 18), 0);
        // AMD has no 2M-only configuration.
        assert_eq!(
            iommu(Vendor::Amd, PageSizes::Up2m).page_sizes,
            PageSizes::Up1g
        );
        assert_eq!(
            iommu(Vendor::Amd, PageSizes::Only4k).page_sizes,
            PageSizes::Only4k
        );
    }

    #[test]
    fn sharing_needs_every_ept_page_size() {
        let cfg = |p| Config {
            page_sizes: p,
            ..Config::new(Mode::Ept, Vendor::Vtd, true)
        };
        let mut mem = MachineMemory::new();
        assert!(Iommu::new(&cfg(PageSizes::Up1g), &mut mem).shared);
        assert!(!Iommu::new(&cfg(PageSizes::Up2m), &mut mem).shared);
        assert_eq!(mem.live_tables(), 1, "only the unshared IOMMU has a root");
        let shadow = Config::new(Mode::Shadow, Vendor::Vtd, true);
        assert!(!Iommu::new(&shadow, &mut mem).shared);
    }

    #[test]
    fn flush_flags_empty() {
        assert!(FlushFlags::default().is_empty());
        assert!(!FlushFlags {
            all: true,
            ..Default::default()
        }
        .is_empty());
    }
}
