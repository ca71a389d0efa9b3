//! Separate IOMMU page tables, driven by the vendor's `map_page` / `unmap_page`.
//!
//! A loop of identical per-page calls over a range is modelled as one range
//! operation with the same observable result (same tables, same invalidations,
//! same cache records), one 512-entry table at a time: cost scales with tables
//! touched, never with pages.
//!
//! Not modelled (see the fidelity table): AMD page merging
//! (`iommu_update_pde_count` / `iommu_merge_pages`) and hence the superpage split
//! in `iommu_pde_from_gfn`; leaves are always 4 KiB here.

use super::cache::Invalidation;
use super::walk::{IoEntry, IoTables};
use super::{note_overwrite, Iommu};
use crate::machine::{MachineMemory, TableOwner};
use crate::revision::Switches;
use crate::table::{index_of, pages_per_entry, pages_per_table, Pte, TableStore, ENTRIES};
use crate::types::{GfnRange, IommuPerm, Vendor};

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
}

impl Pte for IoPte {
    fn nth(&self, k: u64, level: u8) -> Self {
        if self.next_level == 0 && *self != IoPte::default() {
            IoPte {
                addr: self.addr + k * crate::table::pages_per_entry(level),
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
        }
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
            let new_root = mem.alloc(TableOwner::Iommu, self.root_level + 1);
            self.tables.insert(new_root, self.root_level + 1);
            let e = IoPte {
                present: true,
                next_level: self.root_level,
                addr: self.root,
                perm: IommuPerm::RW,
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
                let nt = mem.alloc(TableOwner::Iommu, level - 1);
                self.tables.insert(nt, level - 1);
                let ne = IoPte {
                    present: true,
                    next_level: level - 1,
                    addr: nt,
                    perm: IommuPerm::RW,
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
    ) {
        if pages == 0 {
            return;
        }
        let vendor = self.vendor();
        if vendor == Vendor::Amd {
            self.update_paging_mode(iommu, mem, gfn + pages - 1);
        }
        // Leaf writes allocate nothing, so all tables can be found (and allocated,
        // in the same order) before the leaves are written.
        let chunks = self.l1_chunks(mem, gfn, pages, true);
        let mut pieces: Vec<(u16, u16, IoPte)> = Vec::new();
        let mut flush: Vec<GfnRange> = Vec::new();
        for (l1, chunk) in chunks {
            let lo = index_of(chunk.start, 1);
            let hi = lo + chunk.len() as u16;
            let new_at = |idx: u16| IoPte {
                present: true,
                next_level: 0,
                addr: mfn.wrapping_add(chunk.start - gfn + (idx - lo) as u64),
                perm,
            };
            // Gaps between stored runs are zero entries.
            pieces.clear();
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
            flush.clear();
            for &(s, l, old) in &pieces {
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
                if old.present {
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
                match vendor {
                    // `__intel_iommu_iotlb_flush(d, gfn, dma_pte_present(old), 1)`: PSI of
                    // the page, skipped for a non-present old PTE (no caching mode).
                    Vendor::Vtd => {
                        if old.present {
                            flush.push(range);
                        } else {
                            iommu.stats.vtd_psi_skipped += range.len();
                        }
                    }
                    // `set_iommu_pde_present` reports a flush only when the address
                    // changes; a zero (cleared) entry has address 0.
                    Vendor::Amd => {
                        let flush_perm = sw.amd_map_flush_on_perm_change && old.present;
                        if old.present && !linear_same_addr || flush_perm {
                            flush.push(range);
                        } else if !old.present {
                            // Old address 0: only a new address of 0 compares equal.
                            // The new addresses advance by one per page from `n.addr`.
                            let k = old.addr.wrapping_sub(n.addr);
                            let zero_at = (k < l as u64).then_some(k as u16);
                            match zero_at {
                                None => flush.push(range),
                                Some(k) => {
                                    if k > 0 {
                                        flush.push(GfnRange {
                                            start: range.start,
                                            end: range.start + k as u64,
                                        });
                                    }
                                    if k + 1 < l {
                                        flush.push(GfnRange {
                                            start: range.start + k as u64 + 1,
                                            end: range.end,
                                        });
                                    }
                                }
                            }
                        }
                    }
                }
                if let Some(t) = self.tables.get_mut(l1) {
                    t.fill(s, l, n);
                }
            }
            for &r in &flush {
                let per_page = match vendor {
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
    }

    /// The `unmap_page` loop (`intel_iommu_unmap_page` → `dma_pte_clear_one`;
    /// `amd_iommu_unmap_page`).
    pub fn unmap_pages(
        &mut self,
        iommu: &mut Iommu,
        mem: &mut MachineMemory,
        gfn: u64,
        pages: u64,
        seq: u64,
    ) {
        if pages == 0 {
            return;
        }
        let vendor = self.vendor();
        if vendor == Vendor::Amd {
            self.update_paging_mode(iommu, mem, gfn + pages - 1);
        }
        // VT-d looks the table up without allocating; AMD's iommu_pde_from_gfn
        // allocates missing levels even to unmap. Clearing leaves allocates nothing,
        // so all tables can be found first.
        let chunks = self.l1_chunks(mem, gfn, pages, vendor == Vendor::Amd);
        for (l1, chunk) in chunks {
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
                if vendor == Vendor::Vtd {
                    // dma_pte_clear_one: flush only pages that were present.
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
