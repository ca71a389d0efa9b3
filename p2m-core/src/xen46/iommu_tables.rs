//! Separate IOMMU page tables, driven by the vendor's `map_page` / `unmap_page`.
//!
//! A loop of identical per-page calls over a range is modelled as one range
//! operation with the same observable result (same tables, same invalidations,
//! same cache records), one 512-entry table at a time: cost scales with tables
//! touched, never with pages.
//!
//! AMD page merging (Xen 4.6 until XSA-275): after a map that changed a PTE,
//! `amd_iommu_map_page` bumps a count in the parent PDE's ignored bits
//! (`iommu_update_pde_count`) when the mfn is contiguous with the address in entry 0
//! of the table below (aligned to the PDE's size); the 512th such event turns the PDE
//! into a superpage with the map's permission (`iommu_merge_pages`, flush-all) and
//! frees the table below, and so on up the levels. `iommu_pde_from_gfn` splits a
//! superpage again into 512 read/write entries (flush-all) when a later map or unmap
//! lands in it. With merging, the AMD loop walks once per level-1 chunk and finds the
//! page (if any) whose event merges by counting events per run, so the cost stays per
//! table; switch `amd_suppress_pte_merging` turns merging off.

use super::iommu::Iommu;
use crate::cache::{note_overwrite, Invalidation};
use crate::events::OpLog;
use crate::frames::{MachineMemory, TableOwner};
use crate::stats::bump;
use crate::tables::{index_of, pages_per_entry, pages_per_table, Pte, TableStore, ENTRIES};
use crate::types::{GfnRange, IommuPerm, Vendor};
use crate::walk::{IoEntry, IoTables};
use crate::xen46::revision::Switches;

/// A VT-d `dma_pte` or AMD-Vi PTE/PDE, with the fields that matter.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct IoPte {
    /// AMD present bit; for VT-d, `dma_pte_present()` is `r || w`.
    pub present: bool,
    /// AMD next-level field (0 = leaf); VT-d: 0 at level 1, else the next level.
    pub next_level: u8,
    /// Address field (frame).
    pub addr: u64,
    /// Read / write bits.
    pub perm: IommuPerm,
    /// AMD PDE count in the ignored bits 1-8 and 63 (`get_pde_count` / `set_pde_count`).
    pub count: u16,
}

impl Pte for IoPte {
    fn nth(&self, k: u64, level: u8) -> Self {
        if self.next_level == 0 && *self != IoPte::default() {
            IoPte {
                addr: self.addr + k * crate::tables::pages_per_entry(level),
                ..*self
            }
        } else {
            *self
        }
    }
}

/// The IOMMU's own tables.
#[derive(Clone, Debug, Default)]
pub struct SeparateTables {
    vendor: Option<Vendor>,
    tables: TableStore<IoPte>,
    root: u64,
    root_level: u8,
    /// Pages of the current map/unmap loop whose table allocation failed (each one page's
    /// `->map_page` returning an error; the next page's walk allocates again). Taken by
    /// [`SeparateTables::take_failed_pages`] at the end of the loop.
    failed_pages: Vec<u64>,
}

impl SeparateTables {
    /// A domain's empty tables: VT-d 4 levels (48-bit AGAW); AMD HVM starts with
    /// 2 levels and grows (`update_paging_mode`).
    pub fn new(vendor: Vendor, mem: &mut MachineMemory) -> Self {
        let root_level = match vendor {
            Vendor::Vtd => 4,
            Vendor::Amd => 2,
        };
        let root = mem.alloc(TableOwner::Iommu, root_level);
        let mut tables = TableStore::new();
        tables.insert(root, root_level);
        SeparateTables {
            vendor: Some(vendor),
            tables,
            root,
            root_level,
            failed_pages: Vec::new(),
        }
    }

    /// The pages of the last map/unmap loop whose `->map_page` / `->unmap_page` failed
    /// for want of a table (emptied by the call).
    pub fn take_failed_pages(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.failed_pages)
    }

    /// Number of tables.
    pub fn table_count(&self) -> usize {
        self.tables.len()
    }

    fn vendor(&self) -> Vendor {
        self.vendor.unwrap_or(Vendor::Vtd)
    }

    /// Models `update_paging_mode`: adds root levels until `last_gfn` fits, then
    /// flushes all pages.
    fn update_paging_mode(&mut self, iommu: &mut Iommu, mem: &mut MachineMemory, last_gfn: u64) {
        let mut grew = false;
        while last_gfn >= pages_per_table(self.root_level) && self.root_level < 6 {
            let Some(new_root) = mem.try_alloc(TableOwner::Iommu, self.root_level + 1) else {
                // That page's `amd_iommu_map_page` crashes the domain with `-EFAULT`; the
                // next page grows the root again. The model maps that page all the same:
                // the domain is crashed, so its device view is no longer judged.
                let reach = pages_per_table(self.root_level);
                self.failed_pages.push(reach);
                continue;
            };
            self.tables.insert(new_root, self.root_level + 1);
            let e = IoPte {
                present: true,
                next_level: self.root_level,
                addr: self.root,
                perm: IommuPerm::RW,
                count: 0,
            };
            if let Some(t) = self.tables.get_mut(new_root) {
                t.set(0, e);
            }
            self.root = new_root;
            self.root_level += 1;
            grew = true;
        }
        if grew {
            iommu.invalidate(Invalidation::AmdAllPages);
        }
    }

    /// Walks to the level-1 tables for `range`, allocating missing tables when
    /// `alloc` (`addr_to_dma_page_maddr` / `iommu_pde_from_gfn`, once per page in
    /// Xen). New non-leaf entries replace non-present ones, which are never cached.
    ///
    /// Pushes `(level-1 table, chunk)` for each chunk of `range` that falls in one
    /// level-1 table, in ascending order; each table on the way is visited once,
    /// and tables are allocated in the order a per-page loop would allocate them.
    /// `range` lies inside one entry of the table above `t` (or is the whole
    /// range at the root).
    fn l1_table(
        &mut self,
        mem: &mut MachineMemory,
        t: u64,
        level: u8,
        range: GfnRange,
        alloc: bool,
        out: &mut Vec<(u64, GfnRange)>,
    ) {
        if level == 1 {
            out.push((t, range));
            return;
        }
        let per = pages_per_entry(level);
        let mut s = range.start;
        while s < range.end {
            let e_end = ((s / per + 1) * per).min(range.end);
            let idx = index_of(s, level);
            let Some(tab) = self.tables.get(t) else {
                // Every page below `t` finds no table: nothing to do for any of them.
                return;
            };
            let e = tab.get(idx);
            let child = if e.present && e.next_level != 0 {
                Some(e.addr)
            } else if alloc {
                let Some(nt) = mem.try_alloc_for(TableOwner::Iommu, level - 1, s) else {
                    // Page `s`'s walk fails (`-ENOMEM` / `-EFAULT`); the next page's walk
                    // allocates the table again.
                    self.failed_pages.push(s);
                    s += 1;
                    continue;
                };
                self.tables.insert(nt, level - 1);
                let ne = IoPte {
                    present: true,
                    next_level: level - 1,
                    addr: nt,
                    perm: IommuPerm::RW,
                    count: 0,
                };
                if let Some(tab) = self.tables.get_mut(t) {
                    tab.set(idx, ne);
                }
                Some(nt)
            } else {
                None
            };
            if let Some(c) = child {
                self.l1_table(
                    mem,
                    c,
                    level - 1,
                    GfnRange {
                        start: s,
                        end: e_end,
                    },
                    alloc,
                    out,
                );
            }
            s = e_end;
        }
    }

    /// The level-1 tables and chunks of `[gfn, gfn+pages)` (see [`Self::l1_table`]).
    fn l1_chunks(
        &mut self,
        mem: &mut MachineMemory,
        gfn: u64,
        pages: u64,
        alloc: bool,
    ) -> Vec<(u64, GfnRange)> {
        let mut out = Vec::new();
        let range = GfnRange {
            start: gfn,
            end: gfn + pages,
        };
        self.l1_table(mem, self.root, self.root_level, range, alloc, &mut out);
        out
    }

    /// The `map_page` loop (`intel_iommu_map_page` / `amd_iommu_map_page`).
    #[allow(clippy::too_many_arguments)]
    pub fn map_pages(
        &mut self,
        iommu: &mut Iommu,
        mem: &mut MachineMemory,
        sw: &Switches,
        gfn: u64,
        pages: u64,
        mfn: u64,
        perm: IommuPerm,
        seq: u64,
        log: &mut OpLog,
    ) {
        if pages == 0 {
            return;
        }
        let amd = self.vendor() == Vendor::Amd;
        if amd {
            self.update_paging_mode(iommu, mem, gfn + pages - 1);
        }
        let mut plan = MapPlan::default();
        if !amd || sw.amd_suppress_pte_merging {
            // Without merging nothing is freed or split during the loop, and leaf
            // writes allocate nothing, so all tables can be found (and allocated, in the
            // same order) before the leaves are written.
            for (l1, chunk) in self.l1_chunks(mem, gfn, pages, true) {
                let m = mfn.wrapping_add(chunk.start - gfn);
                self.plan_map(&mut plan, sw, l1, chunk, m, perm);
                self.apply_map(iommu, mem, l1, chunk, &plan, seq);
            }
            return;
        }
        // AMD: one walk per level-1 chunk, as a merge frees (and a split allocates)
        // tables between the pages of the loop.
        let end = gfn + pages;
        let mut s = gfn;
        while s < end {
            let Some(pt) = self.amd_pde_from_gfn(iommu, mem, s, seq) else {
                self.failed_pages.push(s);
                s += 1;
                continue;
            };
            let chunk = l1_chunk(s, end);
            let m = mfn.wrapping_add(s - gfn);
            s = match self.amd_map_chunk(iommu, mem, sw, &mut plan, &pt, chunk, m, perm, seq, log) {
                // The next page finds a superpage and splits it again.
                Some(merged) => merged + 1,
                None => chunk.end,
            };
        }
    }

    /// What the `map_page` loop does to the level-1 table `l1` for `chunk` (whose first
    /// page maps to `mfn`): the entries it rewrites and the pages it flushes.
    fn plan_map(
        &self,
        plan: &mut MapPlan,
        sw: &Switches,
        l1: u64,
        chunk: GfnRange,
        mfn: u64,
        perm: IommuPerm,
    ) {
        let vendor = self.vendor();
        let lo = index_of(chunk.start, 1);
        let hi = lo + chunk.len() as u16;
        let new_at = |idx: u16| IoPte {
            present: true,
            next_level: 0,
            addr: mfn.wrapping_add((idx - lo) as u64),
            perm,
            count: 0,
        };
        // Gaps between stored runs are zero entries.
        plan.clear();
        let pieces = &mut plan.pieces;
        let mut at = lo;
        if let Some(t) = self.tables.get(l1) {
            for (s, l, e) in t.iter_runs(lo, hi) {
                if s > at {
                    pieces.push((at, s - at, IoPte::default()));
                }
                pieces.push((s, l, e));
                at = s + l;
            }
        }
        if at < hi {
            pieces.push((at, hi - at, IoPte::default()));
        }
        for i in 0..plan.pieces.len() {
            let (s, l, old) = plan.pieces[i];
            let n = new_at(s);
            let range = GfnRange {
                start: chunk.start + (s - lo) as u64,
                end: chunk.start + (s - lo + l) as u64,
            };
            let linear_same_addr = old.present && old.addr == n.addr;
            let same = linear_same_addr && old.perm == n.perm;
            if same {
                // VT-d: `old.val == new.val` returns early; AMD rewrites the same value.
                continue;
            }
            plan.writes.push((s, l, old, n));
            match vendor {
                // `__intel_iommu_iotlb_flush(d, gfn, dma_pte_present(old), 1)`: PSI of
                // the page, skipped for a non-present old PTE (no caching mode).
                Vendor::Vtd => {
                    if old.present {
                        plan.flush.push(range);
                    } else {
                        plan.skipped += range.len();
                    }
                }
                // `set_iommu_pde_present` reports a flush only when the address
                // changes; a zero (cleared) entry has address 0.
                Vendor::Amd => {
                    let flush_perm = sw.amd_map_flush_on_perm_change && old.present;
                    if old.present && !linear_same_addr || flush_perm {
                        plan.flush.push(range);
                    } else if !old.present {
                        // Old address 0: only a new address of 0 compares equal.
                        // The new addresses advance by one per page from `n.addr`.
                        let k = old.addr.wrapping_sub(n.addr);
                        let zero_at = (k < l as u64).then_some(k as u16);
                        match zero_at {
                            None => plan.flush.push(range),
                            Some(k) => {
                                if k > 0 {
                                    plan.flush.push(GfnRange {
                                        start: range.start,
                                        end: range.start + k as u64,
                                    });
                                }
                                if k + 1 < l {
                                    plan.flush.push(GfnRange {
                                        start: range.start + k as u64 + 1,
                                        end: range.end,
                                    });
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Writes the entries of `plan` into `l1` (old present leaves become IOTLB records),
    /// then issues its per-page flushes.
    fn apply_map(
        &mut self,
        iommu: &mut Iommu,
        mem: &MachineMemory,
        l1: u64,
        chunk: GfnRange,
        plan: &MapPlan,
        seq: u64,
    ) {
        let lo = index_of(chunk.start, 1);
        for &(s, l, old, n) in &plan.writes {
            if old.present {
                let range = GfnRange {
                    start: chunk.start + (s - lo) as u64,
                    end: chunk.start + (s - lo + l) as u64,
                };
                note_overwrite(
                    &mut iommu.caches,
                    &*self,
                    mem,
                    range,
                    1,
                    IoEntry::Leaf {
                        mfn: old.addr,
                        perm: old.perm,
                    },
                    seq,
                );
            }
            if let Some(t) = self.tables.get_mut(l1) {
                t.fill(s, l, n);
            }
        }
        bump(&mut iommu.stats.vtd_psi_skipped, plan.skipped);
        // intel_iommu_map_page: no flush under iommu_dont_flush_iotlb.
        let flushes = if iommu.dont_flush && self.vendor() == Vendor::Vtd {
            &[][..]
        } else {
            &plan.flush[..]
        };
        for &r in flushes {
            let per_page = match self.vendor() {
                Vendor::Vtd => Invalidation::VtdPsi {
                    gfn: r.start,
                    order: 0,
                    ih: false,
                },
                Vendor::Amd => Invalidation::AmdPages {
                    gfn: r.start,
                    order: 0,
                },
            };
            iommu.invalidate_each_page(r, per_page);
        }
    }

    /// `amd_iommu_map_page` for the pages of `chunk` (one level-1 table `pt[1]`, first
    /// page to `mfn`): leaves, flushes and the merge loop. Returns the page whose map
    /// merged the table into a superpage, if one did (the rest of `chunk` is not mapped).
    #[allow(clippy::too_many_arguments)]
    fn amd_map_chunk(
        &mut self,
        iommu: &mut Iommu,
        mem: &mut MachineMemory,
        sw: &Switches,
        plan: &mut MapPlan,
        pt: &PtMfn,
        chunk: GfnRange,
        mfn: u64,
        perm: IommuPerm,
        seq: u64,
        log: &mut OpLog,
    ) -> Option<u64> {
        let l1 = pt[1];
        self.plan_map(plan, sw, l1, chunk, mfn, perm);
        // iommu_update_pde_count at level 2 runs once per page whose map flushed. It
        // reads the address of entry 0 of the level-1 table: the first page's new
        // address when the chunk starts there, else a value the chunk does not change.
        // The mfns advance with the gfns, so contiguity is the same for every page.
        let first_mfn = if index_of(chunk.start, 1) == 0 {
            mfn
        } else {
            self.tables.get(l1).map_or(0, |t| t.get(0).addr)
        };
        let pde_idx = index_of(chunk.start, 2);
        let pde = self
            .tables
            .get(pt[2])
            .map(|t| t.get(pde_idx))
            .unwrap_or_default();
        let count = pde.count as u64;
        let events: u64 = plan.flush.iter().map(|r| r.len()).sum();
        let contiguous =
            first_mfn & 511 == 0 && (chunk.start & 511 | first_mfn) == mfn && first_mfn != 0;
        // A count of 511 plus one more contiguous event merges.
        let merge_at = (first_mfn != 0 && contiguous && events >= ENTRIES as u64 - count)
            .then(|| nth_page(&plan.flush, ENTRIES as u64 - count));
        if let Some(g) = merge_at {
            plan.truncate(chunk.start, g + 1);
        }
        self.apply_map(iommu, mem, l1, chunk, plan, seq);
        match merge_at {
            None => {
                let new_count = if first_mfn == 0 || events == 0 {
                    count
                } else if contiguous {
                    count + events
                } else {
                    0
                };
                if new_count != count {
                    if let Some(t) = self.tables.get_mut(pt[2]) {
                        t.set(
                            pde_idx,
                            IoPte {
                                count: new_count as u16,
                                ..pde
                            },
                        );
                    }
                }
                None
            }
            Some(g) => {
                let m = mfn.wrapping_add(g - chunk.start);
                let mut level = 2;
                loop {
                    self.amd_merge_pages(iommu, mem, pt[level as usize], g, level, perm, seq);
                    // Deallocate lower level page table (after the flush-all of the merge),
                    // without its own lower tables: those leak, as in Xen.
                    let lower = pt[level as usize - 1];
                    let span = GfnRange::of_order(
                        g & !(pages_per_entry(level) - 1),
                        9 * (level as u32 - 1),
                    );
                    self.amd_free_merged_table(iommu, mem, log, lower, level - 1, span);
                    level += 1;
                    if level > self.root_level
                        || !self.amd_update_pde_count(pt[level as usize], g, m, level)
                    {
                        break;
                    }
                }
                Some(g)
            }
        }
    }

    /// Models `free_amd_iommu_pgtable` of the table `t` (at `level`, translating `span`)
    /// that a merge replaced: the frame goes back through the op log's free-event check;
    /// pointers it still held are logged as unlinked.
    fn amd_free_merged_table(
        &mut self,
        iommu: &Iommu,
        mem: &mut MachineMemory,
        log: &mut OpLog,
        t: u64,
        level: u8,
        span: GfnRange,
    ) {
        if level > 1 {
            let per = pages_per_entry(level);
            let children: Vec<(u64, u64)> = self
                .tables
                .get(t)
                .into_iter()
                .flat_map(|tab| tab.iter_runs(0, ENTRIES))
                .filter(|(_, _, e)| e.present && e.next_level != 0)
                .flat_map(|(s, l, e)| {
                    (0..l).map(move |k| (span.start + (s + k) as u64 * per, e.addr))
                })
                .collect();
            for (base, child) in children {
                let cspan = GfnRange::of_order(base, 9 * (level as u32 - 1));
                log.unlink(mem, child, TableOwner::Iommu, level - 1, cspan);
            }
        }
        log.free_tables(
            mem,
            &*self,
            iommu.caches.records(),
            TableOwner::Iommu,
            &[(t, level)],
            span,
        );
        self.tables.remove(t);
    }

    /// Models `iommu_update_pde_count` for the PDE of `gfn` in table `t` at `level`:
    /// true when the count was already 511 and `mfn` is contiguous with the first
    /// mfn of the next-level table (aligned to the PDE's size).
    fn amd_update_pde_count(&mut self, t: u64, gfn: u64, mfn: u64, level: u8) -> bool {
        let idx = index_of(gfn, level);
        let Some(pde) = self.tables.get(t).map(|tab| tab.get(idx)) else {
            return false;
        };
        let first_mfn = self.tables.get(pde.addr).map_or(0, |nt| nt.get(0).addr);
        if first_mfn == 0 {
            return false;
        }
        let mask = pages_per_entry(level) - 1;
        let count = if first_mfn & mask == 0 && (gfn & mask | first_mfn) == mfn {
            if pde.count as u64 == ENTRIES as u64 - 1 {
                return true;
            }
            pde.count + 1
        } else {
            0
        };
        if let Some(tab) = self.tables.get_mut(t) {
            tab.set(idx, IoPte { count, ..pde });
        }
        false
    }

    /// Models `iommu_merge_pages`: the PDE of `gfn` in table `t` at `level` becomes a
    /// superpage at the first mfn of its next-level table, then all pages are flushed.
    #[allow(clippy::too_many_arguments)]
    fn amd_merge_pages(
        &mut self,
        iommu: &mut Iommu,
        mem: &MachineMemory,
        t: u64,
        gfn: u64,
        level: u8,
        perm: IommuPerm,
        seq: u64,
    ) {
        let idx = index_of(gfn, level);
        let Some(pde) = self.tables.get(t).map(|tab| tab.get(idx)) else {
            return;
        };
        let first_mfn = self.tables.get(pde.addr).map_or(0, |nt| nt.get(0).addr);
        let span = pages_per_entry(level);
        let span_range = GfnRange::of_order(gfn & !(span - 1), 9 * (level as u32 - 1));
        iommu.touched.push(span_range);
        note_overwrite(
            &mut iommu.caches,
            &*self,
            mem,
            GfnRange::of_order(gfn & !(span - 1), 9 * (level as u32 - 1)),
            level,
            IoEntry::Next {
                table: pde.addr,
                level: level - 1,
                perm: pde.perm,
            },
            seq,
        );
        if let Some(tab) = self.tables.get_mut(t) {
            tab.set(
                idx,
                IoPte {
                    present: true,
                    next_level: 0,
                    addr: first_mfn,
                    perm,
                    count: 0,
                },
            );
        }
        iommu.invalidate(Invalidation::AmdAllPages);
    }

    /// Models `iommu_pde_from_gfn`: walks to `gfn`'s level-1 table, installing missing
    /// tables and splitting a superpage on the way into a new table of 512 read/write
    /// entries (then flushing all pages). Returns `pt_mfn[]`: the table at each level, or
    /// `None` when a table allocation failed (the tables linked before it stay).
    fn amd_pde_from_gfn(
        &mut self,
        iommu: &mut Iommu,
        mem: &mut MachineMemory,
        gfn: u64,
        seq: u64,
    ) -> Option<PtMfn> {
        let mut pt = [0u64; 7];
        let mut t = self.root;
        let mut level = self.root_level;
        while level > 1 {
            pt[level as usize] = t;
            let idx = index_of(gfn, level);
            let e = self
                .tables
                .get(t)
                .map(|tab| tab.get(idx))
                .unwrap_or_default();
            let next = if e.present && e.next_level != 0 {
                e.addr
            } else {
                let nt = mem.try_alloc_for(TableOwner::Iommu, level - 1, gfn)?;
                self.tables.insert(nt, level - 1);
                let superpage = e.present && e.addr != 0;
                if superpage {
                    // `set_iommu_pte_present(.., !!IOMMUF_writable, !!IOMMUF_readable)`
                    // for each of the 512 pieces: read/write whatever the superpage had.
                    if let Some(ntab) = self.tables.get_mut(nt) {
                        ntab.fill(
                            0,
                            ENTRIES,
                            IoPte {
                                present: true,
                                next_level: 0,
                                addr: e.addr,
                                perm: IommuPerm::RW,
                                count: 0,
                            },
                        );
                    }
                    let span = pages_per_entry(level);
                    iommu.touched.push(GfnRange::of_order(
                        gfn & !(span - 1),
                        9 * (level as u32 - 1),
                    ));
                    note_overwrite(
                        &mut iommu.caches,
                        &*self,
                        mem,
                        GfnRange::of_order(gfn & !(span - 1), 9 * (level as u32 - 1)),
                        level,
                        IoEntry::Leaf {
                            mfn: e.addr,
                            perm: e.perm,
                        },
                        seq,
                    );
                }
                if let Some(tab) = self.tables.get_mut(t) {
                    tab.set(
                        idx,
                        IoPte {
                            present: true,
                            next_level: level - 1,
                            addr: nt,
                            perm: IommuPerm::RW,
                            count: 0,
                        },
                    );
                }
                if superpage {
                    iommu.invalidate(Invalidation::AmdAllPages);
                }
                nt
            };
            t = next;
            level -= 1;
        }
        pt[1] = t;
        Some(pt)
    }

    /// The `unmap_page` loop (`intel_iommu_unmap_page` → `dma_pte_clear_one`;
    /// `amd_iommu_unmap_page`).
    pub fn unmap_pages(
        &mut self,
        iommu: &mut Iommu,
        mem: &mut MachineMemory,
        sw: &Switches,
        gfn: u64,
        pages: u64,
        seq: u64,
    ) {
        if pages == 0 {
            return;
        }
        let amd = self.vendor() == Vendor::Amd;
        if amd {
            self.update_paging_mode(iommu, mem, gfn + pages - 1);
        }
        if !amd || sw.amd_suppress_pte_merging {
            // VT-d looks the table up without allocating; AMD's iommu_pde_from_gfn
            // allocates missing levels even to unmap. Without merging there is no
            // superpage to split, and clearing leaves allocates nothing, so all tables
            // can be found first.
            for (l1, chunk) in self.l1_chunks(mem, gfn, pages, amd) {
                self.clear_chunk(iommu, mem, l1, chunk, seq);
            }
            return;
        }
        // AMD with merging: iommu_pde_from_gfn may split a superpage in the way.
        let end = gfn + pages;
        let mut s = gfn;
        while s < end {
            let Some(pt) = self.amd_pde_from_gfn(iommu, mem, s, seq) else {
                self.failed_pages.push(s);
                s += 1;
                continue;
            };
            let chunk = l1_chunk(s, end);
            self.clear_chunk(iommu, mem, pt[1], chunk, seq);
            s = chunk.end;
        }
    }

    /// Clears the entries of `chunk` in the level-1 table `l1` (`dma_pte_clear_one` /
    /// `clear_iommu_pte_present`) with the vendor's flushes.
    fn clear_chunk(
        &mut self,
        iommu: &mut Iommu,
        mem: &MachineMemory,
        l1: u64,
        chunk: GfnRange,
        seq: u64,
    ) {
        let vendor = self.vendor();
        let lo = index_of(chunk.start, 1);
        let hi = lo + chunk.len() as u16;
        let old_runs = self
            .tables
            .get(l1)
            .into_iter()
            .flat_map(|t| t.iter_runs(lo, hi));
        for (s, l, old) in old_runs {
            if !old.present {
                continue;
            }
            let range = GfnRange {
                start: chunk.start + (s - lo) as u64,
                end: chunk.start + (s - lo + l) as u64,
            };
            note_overwrite(
                &mut iommu.caches,
                self,
                mem,
                range,
                1,
                IoEntry::Leaf {
                    mfn: old.addr,
                    perm: old.perm,
                },
                seq,
            );
            if vendor == Vendor::Vtd && !iommu.dont_flush {
                // dma_pte_clear_one: flush only pages that were present (and not
                // under iommu_dont_flush_iotlb).
                iommu.invalidate_each_page(
                    range,
                    Invalidation::VtdPsi {
                        gfn: range.start,
                        order: 0,
                        ih: false,
                    },
                );
            }
        }
        if let Some(t) = self.tables.get_mut(l1) {
            t.fill(lo, hi - lo, IoPte::default());
        }
        if vendor == Vendor::Amd {
            // amd_iommu_unmap_page flushes every page, present or not.
            iommu.invalidate_each_page(
                chunk,
                Invalidation::AmdPages {
                    gfn: chunk.start,
                    order: 0,
                },
            );
        }
    }
}

/// `pt_mfn[]` of `iommu_pde_from_gfn`: the table frame at each level (index = level).
type PtMfn = [u64; 7];

/// What the map loop does to one level-1 table: writes `(index, len, old, new first)`,
/// pages flushed (in ascending order), VT-d flushes skipped.
/// `pieces` is scratch space: the old runs and gaps of the chunk.
#[derive(Default)]
struct MapPlan {
    writes: Vec<(u16, u16, IoPte, IoPte)>,
    flush: Vec<GfnRange>,
    skipped: u64,
    pieces: Vec<(u16, u16, IoPte)>,
}

impl MapPlan {
    /// Empties the plan, keeping the buffers.
    fn clear(&mut self) {
        self.writes.clear();
        self.flush.clear();
        self.skipped = 0;
        self.pieces.clear();
    }

    /// Keeps only what concerns pages below `end` of the chunk starting at `start`.
    fn truncate(&mut self, start: u64, end: u64) {
        let lo = index_of(start, 1);
        let li = lo + (end - start) as u16;
        self.writes.retain(|w| w.0 < li);
        for w in &mut self.writes {
            w.1 = w.1.min(li - w.0);
        }
        self.flush.retain(|r| r.start < end);
        for r in &mut self.flush {
            r.end = r.end.min(end);
        }
    }
}

/// The `k`-th page (from 1) of the ascending ranges `rs`; it exists by the caller's count.
fn nth_page(rs: &[GfnRange], mut k: u64) -> u64 {
    for r in rs {
        if k <= r.len() {
            return r.start + k - 1;
        }
        k -= r.len();
    }
    unreachable!("fewer pages than counted")
}

impl IoTables for SeparateTables {
    fn owner(&self) -> TableOwner {
        TableOwner::Iommu
    }
    fn io_root(&self) -> (u64, u8) {
        (self.root, self.root_level)
    }
    fn for_each_io_run(
        &self,
        t: u64,
        lo: u16,
        hi: u16,
        f: &mut dyn FnMut(u16, u16, IoEntry),
    ) -> bool {
        let Some(table) = self.tables.get(t) else {
            return false;
        };
        let level = table.level;
        let vtd = self.vendor() == Vendor::Vtd;
        for (s, l, e) in table.iter_runs(lo, hi.min(ENTRIES)) {
            let io = if !e.present || e.perm.is_none() && vtd {
                IoEntry::NotPresent
            } else if e.next_level == 0 || level == 1 {
                IoEntry::Leaf {
                    mfn: e.addr,
                    perm: e.perm,
                }
            } else {
                IoEntry::Next {
                    table: e.addr,
                    level: e.next_level,
                    perm: e.perm,
                }
            };
            f(s, l, io);
        }
        true
    }
}

/// The part of `[s, end)` that one level-1 table covers (512 pages, from `s` up to the
/// next 2 MiB boundary).
fn l1_chunk(s: u64, end: u64) -> GfnRange {
    GfnRange {
        start: s,
        end: ((s / ENTRIES as u64 + 1) * ENTRIES as u64).min(end),
    }
}
