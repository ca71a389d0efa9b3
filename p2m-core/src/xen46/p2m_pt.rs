//! p2m-pt: `xen/arch/x86/mm/p2m-pt.c`, used by NPT (HAP on AMD) and shadow mode.
//!
//! Entries keep Xen's "flags" word: bits 0-11 are PTE bits 0-11, bits 12-23 are
//! PTE bits 52-63. The p2m type sits in flags bits 12-18, the AMD IOMMU next-level
//! field in bits 9-11 and the AMD IR/IW bits in flags bits 21-22 (PTE bits 61-62).
//!
//! The lazy type change is modelled: `p2m_pt_change_entry_type_global` /
//! `p2m_pt_change_entry_type_range` mark entries by clearing [`RECALC_FLAGS`],
//! [`P2mPt::recalc`] (`do_recalc`) resolves the marks on a gfn's path (also at the start
//! of every `set_entry`), `get_entry` reports the recalculated type of a marked entry,
//! and `set_entry` keeps `max_mapped_pfn` in [`P2mPt::recalc_state`].

use crate::cache::note_overwrite;
use crate::frames::{MachineMemory, TableOwner};
use crate::recalc::{LogdirtyOverlap, RecalcState};
use crate::stats::{bump, bump_if};
use crate::tables::{index_of, pages_per_entry, Pte, TableStore};
use crate::types::*;
use crate::view::{fill_cpu_gaps, leaf_run_is_plain, push_cpu_extent, CpuExtent, P2mEntry};
use crate::walk::{IoEntry, IoTables};
use crate::xen46::domain::Cx;
use crate::xen46::policy::{iommu_flags_of_raw_type, p2m_get_iommu_flags};
use crate::xen46::revision::PtIommuConditions;

mod run;

/// `_PAGE_PRESENT`.
pub const PAGE_PRESENT: u32 = 0x001;
/// `_PAGE_RW`.
pub const PAGE_RW: u32 = 0x002;
/// `_PAGE_USER`.
pub const PAGE_USER: u32 = 0x004;
/// `_PAGE_PCD`.
pub const PAGE_PCD: u32 = 0x010;
/// `_PAGE_ACCESSED`.
pub const PAGE_ACCESSED: u32 = 0x020;
/// `_PAGE_DIRTY`.
pub const PAGE_DIRTY: u32 = 0x040;
/// `_PAGE_PSE`.
pub const PAGE_PSE: u32 = 0x080;
/// `_PAGE_NX_BIT` (PTE bit 63 as a flag).
pub const PAGE_NX_BIT: u32 = 1 << 23;
/// `P2M_BASE_FLAGS`.
pub const P2M_BASE_FLAGS: u32 = PAGE_PRESENT | PAGE_USER | PAGE_DIRTY | PAGE_ACCESSED;
/// `RECALC_FLAGS` (`p2m-pt.c:62-67`): both clear marks a present entry as needing its
/// type recalculated (`set_recalc`), both set again clears the mark (`clear_recalc`).
pub const RECALC_FLAGS: u32 = PAGE_USER | PAGE_ACCESSED;

/// `_needs_recalc(flags)` (`p2m-pt.c:65`): `_PAGE_USER` clear (meaningful for a present
/// entry only).
pub fn pt_needs_recalc(flags: u32) -> bool {
    flags & PAGE_USER == 0
}

/// `p2m_is_changeable()` (`asm-x86/p2m.h:122-123,154` at 4.6): `ram_rw` or `ram_logdirty`.
pub fn p2m_is_changeable(t: P2mType) -> bool {
    matches!(t, P2mType::RamRw | P2mType::RamLogdirty)
}

/// `recalc_type()` (`p2m-pt.c:698-705`; `ept_get_entry` inlines the same at
/// `p2m-ept.c:945-948`): a marked changeable type becomes `ram_logdirty` when `gfn` is in
/// a log-dirty range, else `ram_rw`; anything else is reported as stored.
pub fn p2m_recalc_type(recalc: bool, t: P2mType, st: &RecalcState, gfn: u64) -> P2mType {
    if !recalc || !p2m_is_changeable(t) {
        return t;
    }
    if st.is_logdirty_range(gfn, gfn) == LogdirtyOverlap::None {
        P2mType::RamRw
    } else {
        P2mType::RamLogdirty
    }
}

/// An `l1_pgentry_t` of the p2m (any level): frame and flags.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct PtEntry {
    /// `l1e_get_pfn()`: 40-bit frame.
    pub pfn: u64,
    /// `l1e_get_flags()`: 24-bit flags word.
    pub flags: u32,
}

impl PtEntry {
    /// `l1e_from_pfn(pfn, flags)`.
    pub fn from_pfn(pfn: u64, flags: u32) -> Self {
        PtEntry {
            pfn: pfn & PTE_MFN_MASK,
            flags,
        }
    }
    fn present(&self) -> bool {
        self.flags & PAGE_PRESENT != 0
    }
    fn pse(&self) -> bool {
        self.flags & PAGE_PSE != 0
    }
}

impl Pte for PtEntry {
    fn nth(&self, k: u64, level: u8) -> Self {
        let leaf = level == 1 || self.pse() || !self.present();
        if leaf && *self != PtEntry::default() {
            PtEntry {
                pfn: (self.pfn + k * pages_per_entry(level)) & PTE_MFN_MASK,
                ..*self
            }
        } else {
            *self
        }
    }
}

/// Models `p2m_type_to_flags()` (no `mmio_ro_ranges`).
pub fn p2m_type_to_flags(t: P2mType) -> u32 {
    use P2mType::*;
    let flags = ((t as u32) & 0x7f) << 12;
    flags
        | match t {
            GrantMapRo | MmioWriteDm => P2M_BASE_FLAGS | PAGE_NX_BIT,
            RamRo | RamLogdirty | RamShared => P2M_BASE_FLAGS,
            RamRw => P2M_BASE_FLAGS | PAGE_RW,
            GrantMapRw | MapForeign => P2M_BASE_FLAGS | PAGE_RW | PAGE_NX_BIT,
            MmioDirect => P2M_BASE_FLAGS | PAGE_PCD | PAGE_RW,
            Invalid | MmioDm | PopulateOnDemand | RamPagingOut | RamPaged | RamPagingIn
            | RamBroken => PAGE_NX_BIT,
        }
}

/// Models `p2m_flags_to_type()`: 0 for empty flags means `invalid`, else bits 12-18
/// (so `~0` gives 127, which is no type).
pub fn p2m_flags_to_type(flags: u32) -> u32 {
    if flags == 0 {
        P2mType::Invalid as u32
    } else {
        (flags >> 12) & 0x7f
    }
}

/// Models `iommu_nlevel_to_flags(nl, f)`.
pub fn iommu_nlevel_to_flags(nlevel: u32, f: IommuPerm) -> u32 {
    ((nlevel & 7) << 9) | ((f.bits() & 3) << 21)
}

/// The p2m-pt tables of a host p2m.
#[derive(Clone, Debug)]
pub struct P2mPt {
    /// Tables by frame.
    pub tables: TableStore<PtEntry>,
    /// The L4 root.
    pub root: u64,
    /// `logdirty_ranges`, `global_logdirty` and `max_mapped_pfn` of the p2m.
    pub recalc_state: RecalcState,
    /// `p2m_set_entry`'s 4 KiB chunks within one table go as one step
    /// ([`P2mPt::set_entry_run_4k`], the default) or one call each (off): a knob for the
    /// equivalence tests, not a Xen behaviour.
    pub run_fast_path: bool,
    /// Run steps taken (a measure for the tests; not part of the p2m).
    pub run_steps: u64,
}

/// What `p2m_pt_set_entry` learnt about the entry it replaces.
struct OldEntry {
    /// `iommu_old_flags` (or, for the posted patch, the converted old PTE flags).
    iommu_flags: u32,
    /// `old_mfn`.
    mfn: u64,
    /// `intermediate_entry`: a present non-leaf entry to free.
    intermediate: PtEntry,
}

impl P2mPt {
    /// A fresh 4-level p2m with an empty root.
    pub fn new(mem: &mut MachineMemory) -> Self {
        let root = mem.alloc(TableOwner::P2m, 4);
        let mut tables = TableStore::new();
        tables.insert(root, 4);
        P2mPt {
            tables,
            root,
            recalc_state: RecalcState::default(),
            run_fast_path: true,
            run_steps: 0,
        }
    }

    fn entry(&self, t: u64, idx: u16) -> PtEntry {
        self.tables.get(t).map(|x| x.get(idx)).unwrap_or_default()
    }

    /// Models `p2m_add_iommu_flags()`: keyed on the *global* `iommu_hap_pt_share`.
    fn add_iommu_flags(cx: &Cx, e: &mut PtEntry, nlevel: u32, f: IommuPerm) {
        if cx.cfg.iommu_hap_pt_share {
            e.flags |= iommu_nlevel_to_flags(nlevel, f);
        }
    }

    /// Models `p2m->write_p2m_entry()`; when the IOMMU walks these tables the old
    /// content becomes a cache record. The entry's range is logged as changed, and a
    /// replaced intermediate entry's table as unlinked.
    fn write(&mut self, cx: &mut Cx, t: u64, level: u8, gfn: u64, new: PtEntry) {
        self.write_run(cx, t, level, gfn, 1, new);
    }

    /// [`Self::write`] of `len` entries from the one covering `gfn` (same table), set to
    /// the run starting with `new`: one `write_p2m_entry` per entry, logged per stored
    /// run. A pointer rewritten to the same table (a recalc mark set or cleared) unlinks
    /// nothing, and leaves no paging-structure record when the IOMMU reads it unchanged.
    fn write_run(&mut self, cx: &mut Cx, t: u64, level: u8, gfn: u64, len: u16, new: PtEntry) {
        let idx = index_of(gfn, level);
        let per = pages_per_entry(level);
        let start = gfn / per * per;
        let order = 9 * (level as u32 - 1);
        cx.log.p2m_changed(GfnRange {
            start,
            end: start + len as u64 * per,
        });
        let olds = self
            .tables
            .get(t)
            .map(|x| x.runs_in(idx, idx + len))
            .unwrap_or_default();
        let shared = cx.cfg.iommu_use_hap_pt();
        for (s, l, old) in olds {
            let off = (s - idx) as u64;
            let pointer = level > 1 && old.present() && !old.pse();
            let io = amd_io_entry(old, level);
            if pointer || matches!(io, IoEntry::Next { .. }) {
                for k in 0..l as u64 {
                    let o = old.nth(k, level);
                    let n = new.nth(off + k, level);
                    let range = GfnRange::of_order(start + (off + k) * per, order);
                    let same_table = n.present() && !n.pse() && n.pfn == o.pfn;
                    if pointer && !same_table {
                        cx.log
                            .unlink(cx.mem, o.pfn, TableOwner::P2m, level - 1, range);
                    }
                    let io_o = amd_io_entry(o, level);
                    let unchanged_next =
                        matches!(io_o, IoEntry::Next { .. }) && io_o == amd_io_entry(n, level);
                    if shared && !unchanged_next {
                        note_overwrite(
                            &mut cx.iommu.caches,
                            &*self,
                            cx.mem,
                            range,
                            level,
                            io_o,
                            cx.seq,
                        );
                    }
                }
            } else if shared {
                let range = GfnRange {
                    start: start + off * per,
                    end: start + (off + l as u64) * per,
                };
                note_overwrite(
                    &mut cx.iommu.caches,
                    &*self,
                    cx.mem,
                    range,
                    level,
                    io,
                    cx.seq,
                );
            }
        }
        if let Some(tab) = self.tables.get_mut(t) {
            tab.fill(idx, len, new);
        }
    }

    /// Models `p2m_next_level()`: allocates a missing table or splits a superpage,
    /// and returns the next table's frame; `-ENOMEM` (nothing written) when
    /// `p2m_alloc_ptp` fails.
    fn next_level(&mut self, cx: &mut Cx, t: u64, level: u8, gfn: u64) -> Result<u64, P2mError> {
        let idx = index_of(gfn, level);
        let e = self.entry(t, idx);
        let child = level - 1;
        if e.flags == 0 {
            let nt = cx
                .mem
                .try_alloc_for(TableOwner::P2m, child, gfn)
                .ok_or(P2mError::TableNoMem)?;
            self.tables.insert(nt, child);
            let mut ne = PtEntry::from_pfn(nt, P2M_BASE_FLAGS | PAGE_RW);
            Self::add_iommu_flags(cx, &mut ne, child as u32, IommuPerm::RW);
            self.write(cx, t, level, gfn, ne);
            return Ok(nt);
        }
        if e.pse() && (level == 3 || level == 2) {
            let nt = cx
                .mem
                .try_alloc_for(TableOwner::P2m, child, gfn)
                .ok_or(P2mError::TableNoMem)?;
            cx.stats.superpage_splits += 1;
            let per = pages_per_entry(level);
            cx.log.p2m_split(
                GfnRange::of_order(gfn / per * per, 9 * (level as u32 - 1)),
                "p2m_next_level",
            );
            self.tables.insert(nt, child);
            let (mut pfn, mut flags) = (e.pfn, e.flags);
            let mut first;
            if level == 3 {
                // 1 GiB → 512 × 2 MiB: inherited flags, then next-level 1 ORed in.
                first = PtEntry::from_pfn(pfn, flags);
                if !cx.sw.pt_split_1g_keeps_leaf_nlevel {
                    Self::add_iommu_flags(cx, &mut first, 1, IommuPerm::RW);
                }
            } else {
                // 2 MiB → 512 × 4 KiB: `_PAGE_PSE` becomes `_PAGE_PAT` when the
                // frame's low bit (`_PAGE_PSE_PAT`) was set.
                if pfn & 1 != 0 {
                    pfn -= 1;
                } else {
                    flags &= !PAGE_PSE;
                }
                first = PtEntry::from_pfn(pfn, flags);
                Self::add_iommu_flags(cx, &mut first, 0, IommuPerm::NONE);
            }
            if cx.sw.planted_split_wrong_frame {
                first.pfn = (first.pfn + 1) & PTE_MFN_MASK;
            }
            if let Some(tab) = self.tables.get_mut(nt) {
                tab.fill(0, 512, first);
            }
            let mut ne = PtEntry::from_pfn(nt, P2M_BASE_FLAGS | PAGE_RW);
            Self::add_iommu_flags(cx, &mut ne, child as u32, IommuPerm::RW);
            self.write(cx, t, level, gfn, ne);
            return Ok(nt);
        }
        Ok(e.pfn)
    }

    /// Models `p2m_free_entry()` for the entry `e` of `order` whose guest range is
    /// `span`: frees its subtree through the op log's free-event check (`p2m_free_ptp`
    /// for each table, children first as Xen recurses).
    fn free_entry(&mut self, cx: &mut Cx, e: PtEntry, order: u32, span: GfnRange) {
        let mut frames = Vec::new();
        self.collect_free(cx, e, order, span.start, &mut frames);
        if frames.is_empty() {
            return;
        }
        self.note_orphaned_children(cx, &frames, span);
        let io: &dyn IoTables = if cx.cfg.iommu_use_hap_pt() {
            &*self
        } else {
            &cx.iommu.separate
        };
        cx.log.free_tables_own(
            cx.mem,
            io,
            &*self,
            cx.iommu.caches.records(),
            TableOwner::P2m,
            &frames,
            span,
        );
        for &(f, _) in &frames {
            self.tables.remove(f);
        }
    }

    /// Logs as unlinked every table a table about to be freed still points at: nothing
    /// reaches it once its parent is gone, so it must be freed too (`leaked-table`
    /// otherwise). Reads the freed tables as stored, independently of the recursion
    /// that chose `frames`.
    fn note_orphaned_children(&self, cx: &mut Cx, frames: &[(u64, u8)], span: GfnRange) {
        for &(f, level) in frames {
            let Some(tab) = self.tables.get(f) else {
                continue;
            };
            if level < 2 {
                continue;
            }
            // Each child's own span, from where its parent was linked (the whole freed
            // span when that is unknown).
            let parent = cx.mem.info(f).and_then(|i| i.span);
            let per = pages_per_entry(level);
            for (s, l, c) in tab.iter_runs(0, 512) {
                if !c.present() || c.pse() {
                    continue;
                }
                for k in 0..l {
                    let child = c.nth(k as u64, level).pfn;
                    let cspan = parent.map_or(span, |p| {
                        GfnRange::of_order(p.start + (s + k) as u64 * per, 9 * (level as u32 - 1))
                    });
                    cx.log
                        .unlink(cx.mem, child, TableOwner::P2m, level - 1, cspan);
                }
            }
        }
    }

    /// The frames `p2m_free_entry(e, order)` frees, children first (`base`: the first
    /// gfn `e` translates); a pointer found in a freed table that the recursion does not
    /// follow is logged as unlinked.
    fn collect_free(
        &self,
        cx: &mut Cx,
        e: PtEntry,
        order: u32,
        base: u64,
        out: &mut Vec<(u64, u8)>,
    ) {
        let sw = cx.sw;
        if sw.planted_leak_replaced_subtree {
            return;
        }
        let points_to_table = e.present() && (!e.pse() || sw.planted_free_leaf_frame);
        if order == 0 || !points_to_table {
            return;
        }
        let table_level = (order / 9) as u8;
        // Xen recurses while the freed table holds pointers (order > 9).
        let recurse = order > 9 + 9 * sw.planted_free_entry_recurses_short as u32;
        if table_level > 1 {
            if let Some(tab) = self.tables.get(e.pfn) {
                let per = pages_per_entry(table_level);
                let children: Vec<(u64, PtEntry)> = tab
                    .iter_runs(0, 512)
                    .filter(|(_, _, c)| c.present() && !c.pse())
                    .flat_map(|(s, l, c)| {
                        (0..l).map(move |k| {
                            (base + (s + k) as u64 * per, c.nth(k as u64, table_level))
                        })
                    })
                    .collect();
                for (cb, c) in children {
                    if recurse {
                        self.collect_free(cx, c, order - 9, cb, out);
                    } else {
                        let span = GfnRange::of_order(cb, order - 9);
                        cx.log
                            .unlink(cx.mem, c.pfn, TableOwner::P2m, table_level - 1, span);
                    }
                }
            }
        }
        out.push((e.pfn, table_level));
    }

    /// Reads the old superpage-level entry as `p2m_pt_set_entry` does for orders 9/18.
    fn old_superpage_entry(cond: PtIommuConditions, old: PtEntry) -> OldEntry {
        let mut o = OldEntry {
            iommu_flags: 0,
            mfn: match cond {
                PtIommuConditions::Pre => 0,
                _ => INVALID_MFN.0,
            },
            intermediate: PtEntry::default(),
        };
        if old.present() {
            if old.pse() {
                match cond {
                    PtIommuConditions::Pre => {}
                    PtIommuConditions::PatchV1 => {
                        o.iommu_flags =
                            iommu_flags_of_raw_type(p2m_flags_to_type(old.flags)).bits();
                        o.mfn = old.pfn;
                    }
                    PtIommuConditions::Committed => {
                        o.iommu_flags =
                            iommu_flags_of_raw_type(p2m_flags_to_type(old.flags)).bits();
                        o.mfn = old.pfn;
                    }
                }
            } else {
                o.intermediate = old;
                o.iommu_flags = match cond {
                    PtIommuConditions::Pre => 0,
                    // `old_flags = ~0` converted by p2m_flags_to_type → 127 → nothing.
                    PtIommuConditions::PatchV1 => {
                        iommu_flags_of_raw_type(p2m_flags_to_type(!0)).bits()
                    }
                    PtIommuConditions::Committed => !0,
                };
            }
        }
        o
    }

    /// Models `p2m_pt_set_entry()` for the host p2m of a domain with an IOMMU.
    pub fn set_entry(
        &mut self,
        cx: &mut Cx,
        gfn: u64,
        mfn: Mfn,
        order: u32,
        p2mt: P2mType,
        p2ma: P2mAccess,
    ) -> Result<(), P2mError> {
        let rc = self.set_entry_body(cx, gfn, mfn, order, p2mt, p2ma);
        if rc == Err(P2mError::TableNoMem) && Self::shares_tables(cx) {
            // Proposed fix `flush_covers_split_superpage` (not Xen): a 1 GiB split that
            // `p2m_next_level` installed before the 2 MiB one failed changes no
            // translation but leaves the shared IOTLB's 1 GiB entry for later partial
            // flushes to miss; flush it on the error path too.
            if let Some(r) = cx.split_to_flush(gfn) {
                cx.iommu
                    .amd_iommu_flush_pages(r.start, r.len().trailing_zeros());
            }
        }
        rc
    }

    /// Whether the IOMMU walks these tables (`iommu_use_hap_pt(d)`, or the global flag
    /// before c0a85795d8).
    fn shares_tables(cx: &Cx) -> bool {
        if cx.sw.pt_shadow_ignores_share {
            cx.cfg.iommu_use_hap_pt()
        } else {
            cx.cfg.iommu_hap_pt_share
        }
    }

    /// [`Self::set_entry`] up to its error returns.
    fn set_entry_body(
        &mut self,
        cx: &mut Cx,
        gfn: u64,
        mfn: Mfn,
        order: u32,
        p2mt: P2mType,
        _p2ma: P2mAccess,
    ) -> Result<(), P2mError> {
        let sw = *cx.sw;
        if p2mt == P2mType::MapForeign {
            return Err(P2mError::ForeignOnP2mPt);
        }
        if !PAGE_ORDERS.contains(&order) {
            return Err(P2mError::BadOrder);
        }
        let mask = (1u64 << order) - 1;
        if gfn & mask != 0 || (mfn != INVALID_MFN && mfn.0 & mask != 0) {
            return Err(P2mError::Misaligned);
        }
        if gfn >> GFN_BITS != 0 {
            return Err(P2mError::GfnOutOfRange);
        }
        // Pending type changes on the walk to `gfn` first (`p2m-pt.c:536-539`).
        self.recalc(cx, gfn)?;
        let cond = sw.pt_iommu_conditions;
        let iommu_pte_flags = p2m_get_iommu_flags(p2mt);
        let type_flags = p2m_type_to_flags(p2mt);
        let l4 = self.root;
        let l3 = self.next_level(cx, l4, 4, gfn)?;

        let (old, wrote_empty) = if order == 18 {
            let cur = self.entry(l3, index_of(gfn, 3));
            let mut o = Self::old_superpage_entry(cond, cur);
            if sw.planted_free_leaf_frame && cur.present() && cur.pse() {
                o.intermediate = cur;
            }
            let mut content = if mfn.is_valid() {
                PtEntry::from_pfn(mfn.0, type_flags | PAGE_PSE)
            } else {
                PtEntry::default()
            };
            if content != PtEntry::default() {
                Self::add_iommu_flags(cx, &mut content, 0, iommu_pte_flags);
                if cond == PtIommuConditions::Pre {
                    o.mfn = cur.pfn;
                }
            }
            self.write(cx, l3, 3, gfn, content);
            self.maybe_free_now(cx, &mut o, gfn, order);
            (o, content == PtEntry::default())
        } else {
            let l2 = self.next_level(cx, l3, 3, gfn)?;
            if order == 0 {
                let l1 = self.next_level(cx, l2, 2, gfn)?;
                let cur = self.entry(l1, index_of(gfn, 1));
                let mut o = OldEntry {
                    iommu_flags: 0,
                    mfn: 0,
                    intermediate: PtEntry::default(),
                };
                if cond != PtIommuConditions::Pre {
                    o.iommu_flags = iommu_flags_of_raw_type(p2m_flags_to_type(cur.flags)).bits();
                    o.mfn = cur.pfn;
                }
                let content = Self::leaf_4k_content(cx, mfn, p2mt);
                if content != PtEntry::default() && cond == PtIommuConditions::Pre {
                    o.mfn = cur.pfn;
                }
                self.write(cx, l1, 1, gfn, content);
                (o, content == PtEntry::default())
            } else {
                let cur = self.entry(l2, index_of(gfn, 2));
                let mut o = Self::old_superpage_entry(cond, cur);
                if sw.planted_free_leaf_frame && cur.present() && cur.pse() {
                    o.intermediate = cur;
                }
                let mut content = if mfn.is_valid() || p2mt == P2mType::PopulateOnDemand {
                    PtEntry::from_pfn(mfn.0, type_flags | PAGE_PSE)
                } else {
                    PtEntry::default()
                };
                if content != PtEntry::default() {
                    Self::add_iommu_flags(cx, &mut content, 0, iommu_pte_flags);
                    if cond == PtIommuConditions::Pre {
                        o.mfn = cur.pfn;
                    }
                }
                self.write(cx, l2, 2, gfn, content);
                self.maybe_free_now(cx, &mut o, gfn, order);
                (o, content == PtEntry::default())
            }
        };
        bump_if(
            &mut cx.stats.intermediate_replaced,
            old.intermediate.present(),
        );

        // `max_mapped_pfn` (`p2m-pt.c:663-666`), before the IOMMU step.
        if p2mt != P2mType::Invalid {
            self.recalc_state.note_mapped(gfn, order);
        }

        // The IOMMU step.
        let shared = Self::shares_tables(cx);
        let new_flags = iommu_pte_flags.bits();
        let run_step = Self::iommu_step_runs(cond, old.iommu_flags, old.mfn, new_flags, mfn.0);
        let split_flush = shared && cx.split_to_flush(gfn).is_some();
        // `iommu_enabled && need_iommu(d)` (`p2m-pt.c:668`).
        if cx.iommu.need_iommu && (run_step || split_flush) {
            bump(&mut cx.stats.iommu_steps, 1);
            if shared {
                let flush = split_flush
                    || match cond {
                        PtIommuConditions::Pre => old.mfn != 0 && old.mfn != mfn.0,
                        PtIommuConditions::PatchV1 => true,
                        PtIommuConditions::Committed => old.iommu_flags != 0,
                    };
                if flush {
                    let (fg, fo) = cx.shared_flush_scope(gfn, order);
                    cx.iommu.amd_iommu_flush_pages(fg, fo);
                }
            } else {
                let flags = if sw.iommu_flags_require_present_entry && wrote_empty {
                    IommuPerm::NONE
                } else {
                    iommu_pte_flags
                };
                cx.iommu_map_or_unmap(gfn, 1 << order, mfn.0, flags);
            }
        }

        // Free old intermediate tables last (960265fbd8), after the IOMMU step.
        if sw.pt_delay_intermediate_free {
            self.free_entry(cx, old.intermediate, order, GfnRange::of_order(gfn, order));
        }
        Ok(())
    }

    /// The 4 KiB leaf `p2m_pt_set_entry` writes for `(mfn, p2mt)` (`p2m-pt.c:626-640`): the
    /// frame with the type's flags and, with shared tables, the IOMMU bits — or an empty
    /// entry, unless the frame is valid or the type keeps one (`mmio_direct`, paging).
    fn leaf_4k_content(cx: &Cx, mfn: Mfn, p2mt: P2mType) -> PtEntry {
        let keeps = mfn.is_valid()
            || p2mt == P2mType::MmioDirect
            || matches!(
                p2mt,
                P2mType::RamPagingOut | P2mType::RamPaged | P2mType::RamPagingIn
            );
        if !keeps {
            return PtEntry::default();
        }
        let mut content = PtEntry::from_pfn(mfn.0, p2m_type_to_flags(p2mt));
        if content != PtEntry::default() {
            Self::add_iommu_flags(cx, &mut content, 0, p2m_get_iommu_flags(p2mt));
        }
        content
    }

    /// Whether `p2m_pt_set_entry` takes its IOMMU step (`p2m-pt.c:668-672`): always before
    /// 660fd65d55's analogue (`Pre`), else when the old entry's IOMMU flags or frame differ
    /// from the new ones. The literal call and the run steps both decide here.
    fn iommu_step_runs(
        cond: PtIommuConditions,
        old_flags: u32,
        old_mfn: u64,
        new_flags: u32,
        new_mfn: u64,
    ) -> bool {
        match cond {
            PtIommuConditions::Pre => true,
            _ => old_flags != new_flags || old_mfn != new_mfn,
        }
    }

    /// Before 960265fbd8 the replaced subtree was freed right after the write.
    fn maybe_free_now(&mut self, cx: &mut Cx, o: &mut OldEntry, gfn: u64, order: u32) {
        if !cx.sw.pt_delay_intermediate_free {
            self.free_entry(cx, o.intermediate, order, GfnRange::of_order(gfn, order));
        }
    }

    /// Marks (`set_recalc`) every present unmarked entry of the run `(s, l, e)` of table
    /// `t` at `level` whose first gfn is `base`; whether it wrote.
    fn set_recalc_run(
        &mut self,
        cx: &mut Cx,
        t: u64,
        level: u8,
        base: u64,
        (s, l, e): (u16, u16, PtEntry),
    ) -> bool {
        if !e.present() || pt_needs_recalc(e.flags) {
            return false;
        }
        let marked = PtEntry {
            flags: e.flags & !RECALC_FLAGS,
            ..e
        };
        let gfn = base + s as u64 * pages_per_entry(level);
        self.write_run(cx, t, level, gfn, l, marked);
        true
    }

    /// Models `do_recalc()` (`p2m-pt.c:360-467`): on the walk to `gfn`, a marked
    /// intermediate entry passes its mark to every present entry of the table below and
    /// loses it; a marked superpage that is partly log-dirty is split (`p2m_next_level`,
    /// the children inheriting the mark); the marked leaf reached gets
    /// `p2m_type_to_flags(ram_logdirty or ram_rw)` — with, when the tables are shared,
    /// `p2m_add_iommu_flags(level, ram_rw ? RW : 0)`, i.e. next-level = the leaf's Xen
    /// level (1 for 2 MiB, 2 for 1 GiB) and no IR/IW for log-dirty — or, when not
    /// changeable, just loses the mark. No IOMMU call, no flush. `Ok(true)` when it wrote.
    pub fn recalc(&mut self, cx: &mut Cx, gfn: u64) -> Result<bool, P2mError> {
        let mut t = self.root;
        let mut level = 4u8;
        let mut changed = false;
        while level > 1 {
            let e = self.entry(t, index_of(gfn, level));
            if !e.present() {
                return Ok(changed);
            }
            if e.pse() {
                let per = pages_per_entry(level);
                let base = gfn / per * per;
                let ty = P2mType::from_raw(p2m_flags_to_type(e.flags) as u8);
                if !pt_needs_recalc(e.flags)
                    || !ty.is_some_and(p2m_is_changeable)
                    || self.recalc_state.is_logdirty_range(base, base + per - 1)
                        != LogdirtyOverlap::Partial
                {
                    break;
                }
            }
            let nt = self.next_level(cx, t, level, gfn)?;
            changed |= self.entry(t, index_of(gfn, level)) != e;
            let e = self.entry(t, index_of(gfn, level));
            if pt_needs_recalc(e.flags) {
                let child = level - 1;
                let base = gfn / pages_per_entry(level) * pages_per_entry(level);
                let runs = self
                    .tables
                    .get(nt)
                    .map(|x| x.runs_in(0, 512))
                    .unwrap_or_default();
                for run in runs {
                    self.set_recalc_run(cx, nt, child, base, run);
                }
                let cleared = PtEntry {
                    flags: e.flags | RECALC_FLAGS,
                    ..e
                };
                self.write(cx, t, level, gfn, cleared);
                changed = true;
            }
            t = nt;
            level -= 1;
        }
        let e = self.entry(t, index_of(gfn, level));
        if !e.present() || !pt_needs_recalc(e.flags) {
            return Ok(changed);
        }
        let ty = P2mType::from_raw(p2m_flags_to_type(e.flags) as u8);
        let new = if ty.is_some_and(p2m_is_changeable) {
            let per = pages_per_entry(level);
            let base = gfn / per * per;
            let p2mt = match self.recalc_state.is_logdirty_range(base, base + per - 1) {
                LogdirtyOverlap::None => P2mType::RamRw,
                _ => P2mType::RamLogdirty,
            };
            let mut pfn = e.pfn;
            let mut flags = p2m_type_to_flags(p2mt);
            if level > 1 {
                // `_PAGE_PAT` (= `_PAGE_PSE`) is never in the type's flags: the frame's
                // `_PAGE_PSE_PAT` bit is cleared.
                pfn &= !1;
                flags |= PAGE_PSE;
            }
            let mut ne = PtEntry::from_pfn(pfn, flags);
            if cx.sw.pt_recalc_keeps_iommu_flags {
                // Proposed fix (not Xen): the leaf's IOMMU bits as `set_entry` writes
                // them — the type's permission, next-level 0.
                Self::add_iommu_flags(cx, &mut ne, 0, p2m_get_iommu_flags(p2mt));
            } else {
                let perm = if p2mt == P2mType::RamRw {
                    IommuPerm::RW
                } else {
                    IommuPerm::NONE
                };
                Self::add_iommu_flags(cx, &mut ne, (level - 1) as u32, perm);
            }
            ne
        } else {
            PtEntry {
                flags: e.flags | RECALC_FLAGS,
                ..e
            }
        };
        self.write(cx, t, level, gfn, new);
        Ok(true)
    }

    /// Models `p2m_pt_set_recalc_range()` (`p2m-pt.c:295-352`): walks to `level` (1..=4)
    /// through present entries, splitting superpages on the way (`p2m_next_level`), and
    /// marks the present unmarked entries of `first..=last` there (one table's worth).
    fn set_recalc_range(
        &mut self,
        cx: &mut Cx,
        level: u8,
        first: u64,
        last: u64,
    ) -> Result<bool, P2mError> {
        let mut t = self.root;
        for l in (level + 1..=4).rev() {
            if !self.entry(t, index_of(first, l)).present() {
                return Ok(false);
            }
            t = self.next_level(cx, t, l, first)?;
        }
        let per = pages_per_entry(level);
        let base = first / (per * 512) * (per * 512);
        let runs = self
            .tables
            .get(t)
            .map(|x| x.runs_in(index_of(first, level), index_of(last, level) + 1))
            .unwrap_or_default();
        let mut marked = false;
        for run in runs {
            marked |= self.set_recalc_run(cx, t, level, base, run);
        }
        Ok(marked)
    }

    /// Models `p2m_pt_change_entry_type_range()` (`p2m-pt.c:907-946`): marks
    /// `first_gfn..=last_gfn` with as few entries as the alignment allows, working in
    /// from both ends one level at a time (`ot`/`nt` are unused, as in Xen). The caller
    /// updates the log-dirty rangeset afterwards (`p2m_change_type_range`). Errors:
    /// `-ENOMEM` from a split on the way (the marks set so far stay). A range reaching
    /// beyond the guest address width is refused (`GfnOutOfRange`; Xen's callers clamp
    /// it to `max_mapped_pfn`), an empty one does nothing.
    pub fn change_entry_type_range(
        &mut self,
        cx: &mut Cx,
        _ot: P2mType,
        _nt: P2mType,
        first_gfn: u64,
        last_gfn: u64,
    ) -> Result<(), P2mError> {
        if last_gfn >> GFN_BITS != 0 {
            return Err(P2mError::GfnOutOfRange);
        }
        if first_gfn > last_gfn {
            return Ok(());
        }
        crate::recalc::for_each_range_piece(first_gfn, last_gfn, |level, first, last| {
            self.set_recalc_range(cx, level, first, last).map(|_| ())
        })
    }

    /// Models `p2m_pt_change_entry_type_global()` (`p2m-pt.c:875-905`): marks every
    /// present unmarked L4 entry (`ot`/`nt` unused, as in Xen; the CPU TLB flush is not
    /// modelled, no IOMMU call). The caller sets `global_logdirty` afterwards.
    pub fn change_entry_type_global(&mut self, cx: &mut Cx, _ot: P2mType, _nt: P2mType) {
        let root = self.root;
        let runs = self
            .tables
            .get(root)
            .map(|x| x.runs_in(0, 512))
            .unwrap_or_default();
        for run in runs {
            self.set_recalc_run(cx, root, 4, 0, run);
        }
    }

    /// The frame of the level-`level` table (1..=4) on the walk to `gfn`, if every
    /// entry above it is a present non-superpage entry (query only).
    pub fn table_at(&self, gfn: u64, level: u8) -> Option<u64> {
        if !(1..=4).contains(&level) {
            return None;
        }
        let mut t = self.root;
        for l in (level + 1..=4).rev() {
            let e = self.entry(t, index_of(gfn, l));
            if !e.present() || e.pse() {
                return None;
            }
            t = e.pfn;
        }
        Some(t)
    }

    /// Models `p2m_pt_get_entry()` (query only): the entry covering `gfn`, if any; the
    /// type of a leaf marked for recalculation (its own mark or one above it on the walk)
    /// is reported recalculated (`recalc_type`, `p2m-pt.c:760,792,801-802,831,840-841,868`).
    pub fn get_entry(&self, gfn: u64) -> Option<P2mEntry> {
        let mut t = self.root;
        let mut level = 4u8;
        let mut recalc = false;
        loop {
            let e = self.entry(t, index_of(gfn, level));
            if level == 1 || e.pse() || !e.present() {
                if e.flags == 0 {
                    return None;
                }
                let raw = p2m_flags_to_type(e.flags);
                let p2mt = P2mType::from_raw(raw as u8).unwrap_or(P2mType::Invalid);
                let p2mt = p2m_recalc_type(
                    recalc || pt_needs_recalc(e.flags),
                    p2mt,
                    &self.recalc_state,
                    gfn,
                );
                if p2mt == P2mType::Invalid {
                    return None;
                }
                let off = gfn & (pages_per_entry(level) - 1);
                let mfn = if e.pfn == PTE_MFN_MASK || e.pfn == PTE_MFN_MASK - 1 {
                    INVALID_MFN
                } else {
                    Mfn(e.pfn + off)
                };
                return Some(P2mEntry {
                    mfn,
                    p2mt,
                    access: P2mAccess::Rwx,
                });
            }
            recalc |= pt_needs_recalc(e.flags);
            t = e.pfn;
            level -= 1;
        }
    }
}

impl P2mPt {
    /// The CPU view of `range` as extents, consistent with [`P2mPt::get_entry`] at every
    /// gfn; cost proportional to the runs it visits.
    pub fn cpu_extents(&self, range: GfnRange) -> Vec<CpuExtent> {
        let mut out = Vec::new();
        self.extents_in(self.root, 4, 0, range, false, &mut out);
        fill_cpu_gaps(range, out)
    }

    /// `recalc`: a present entry above this table is marked.
    fn extents_in(
        &self,
        t: u64,
        level: u8,
        base: u64,
        range: GfnRange,
        recalc: bool,
        out: &mut Vec<CpuExtent>,
    ) {
        let Some(tab) = self.tables.get(t) else {
            return;
        };
        let per = pages_per_entry(level);
        let span = GfnRange {
            start: base,
            end: base + per * 512,
        };
        let Some(r) = range.intersect(&span) else {
            return;
        };
        let lo = index_of(r.start, level);
        let hi = index_of(r.end - 1, level) + 1;
        for (s, l, e) in tab.iter_runs(lo, hi) {
            let run = GfnRange {
                start: base + s as u64 * per,
                end: base + (s + l) as u64 * per,
            };
            let Some(clip) = run.intersect(&r) else {
                continue;
            };
            if level == 1 || e.pse() || !e.present() {
                // A leaf run: one extent (its frames advance with the gfns), unless it
                // holds a frame field `get_entry` reports as INVALID_MFN.
                if e.flags == 0 {
                    continue;
                }
                let raw = p2m_flags_to_type(e.flags);
                let p2mt = P2mType::from_raw(raw as u8).unwrap_or(P2mType::Invalid);
                if p2mt == P2mType::Invalid {
                    continue;
                }
                // A marked changeable leaf reports its recalculated type, gfn by gfn.
                let retyped = (recalc || pt_needs_recalc(e.flags)) && p2m_is_changeable(p2mt);
                let first = (clip.start - run.start) / per;
                let last = (clip.end - 1 - run.start) / per;
                let bad = |m: u64| m == PTE_MFN_MASK || m == PTE_MFN_MASK - 1;
                let has_invalid =
                    !leaf_run_is_plain(e.pfn, per, first, last, &[PTE_MFN_MASK - 1, PTE_MFN_MASK]);
                for k in if has_invalid {
                    first..=last
                } else {
                    first..=first
                } {
                    let piece = if has_invalid {
                        GfnRange {
                            start: run.start + k * per,
                            end: run.start + (k + 1) * per,
                        }
                        .intersect(&clip)
                        .unwrap_or(clip)
                    } else {
                        clip
                    };
                    let ek = e.nth(k, level);
                    let mfn = if bad(ek.pfn) {
                        INVALID_MFN
                    } else {
                        Mfn(ek.pfn + (piece.start - (run.start + k * per)))
                    };
                    if !retyped {
                        push_cpu_extent(
                            out,
                            CpuExtent {
                                range: piece,
                                mfn,
                                p2mt,
                                access: P2mAccess::Rwx,
                            },
                        );
                        continue;
                    }
                    for (sub, ld) in self.recalc_state.logdirty_pieces(piece) {
                        let m = if mfn == INVALID_MFN {
                            INVALID_MFN
                        } else {
                            Mfn(mfn.0 + (sub.start - piece.start))
                        };
                        let p2mt = if ld {
                            P2mType::RamLogdirty
                        } else {
                            P2mType::RamRw
                        };
                        push_cpu_extent(
                            out,
                            CpuExtent {
                                range: sub,
                                mfn: m,
                                p2mt,
                                access: P2mAccess::Rwx,
                            },
                        );
                    }
                }
            } else {
                for k in 0..l as u64 {
                    let eb = run.start + k * per;
                    let er = GfnRange {
                        start: eb,
                        end: eb + per,
                    };
                    if let Some(c) = er.intersect(&clip) {
                        let below = recalc || pt_needs_recalc(e.flags);
                        self.extents_in(e.nth(k, level).pfn, level - 1, eb, c, below, out);
                    }
                }
            }
        }
    }
}

/// How a shared AMD IOMMU reads a p2m-pt entry at `level`: present bit, next-level
/// field (0 = leaf of this level's size), IR/IW bits.
pub fn amd_io_entry(e: PtEntry, level: u8) -> IoEntry {
    if !e.present() {
        return IoEntry::NotPresent;
    }
    let nl = ((e.flags >> 9) & 7) as u8;
    let perm = IommuPerm::from_bits((e.flags >> 21) & 3);
    if nl == 0 {
        IoEntry::Leaf { mfn: e.pfn, perm }
    } else if level == 1 || nl >= level {
        // Next-level 7 (or any value not below this level) is not a valid walk.
        IoEntry::NotPresent
    } else {
        IoEntry::Next {
            table: e.pfn,
            level: nl,
            perm,
        }
    }
}

impl IoTables for P2mPt {
    fn owner(&self) -> TableOwner {
        TableOwner::P2m
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
        let Some(tab) = self.tables.get(t) else {
            return false;
        };
        let level = tab.level;
        for (s, l, e) in tab.iter_runs(lo, hi) {
            // A run of pointers (split 1 GiB with next-level bits) must be
            // expanded: each entry points at a different frame.
            let io = amd_io_entry(e, level);
            match io {
                IoEntry::Next { .. } if l > 1 => {
                    for k in 0..l {
                        f(s + k, 1, amd_io_entry(e.nth(k as u64, level), level));
                    }
                }
                _ => f(s, l, io),
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revision::Revision;
    use crate::walk::WalkFault;
    use crate::xen46::domain::{Domain, P2m};

    fn dom(share: bool) -> Domain {
        let cfg = Config::new(Mode::Npt, Vendor::Amd, share);
        Domain::new(cfg, Revision::by_name("committed").expect("committed"))
    }

    /// Runs `f` on the p2m-pt as one op, the way `Domain` runs its ops.
    fn with_pt<R>(d: &mut Domain, f: impl FnOnce(&mut P2mPt, &mut Cx) -> R) -> R {
        d.op(|p2m, cx| match p2m {
            P2m::Pt(x) => f(x, cx),
            P2m::Ept(_) => panic!("not P2mPt"),
        })
    }

    fn pt(d: &Domain) -> &P2mPt {
        match &d.p2m {
            P2m::Pt(p) => p,
            P2m::Ept(_) => panic!("not p2m-pt"),
        }
    }

    /// The stored leaf entry translating `gfn` and its level.
    fn raw(d: &Domain, gfn: u64) -> (PtEntry, u8) {
        let p = pt(d);
        for level in 1..=3u8 {
            if let Some(t) = p.table_at(gfn, level) {
                let x = p.entry(t, index_of(gfn, level));
                if level == 1 || x.pse() {
                    return (x, level);
                }
            }
        }
        panic!("no leaf for {gfn:#x}")
    }

    fn stored(d: &Domain, gfn: u64) -> u32 {
        p2m_flags_to_type(raw(d, gfn).0.flags)
    }

    fn ty(d: &Domain, gfn: u64) -> P2mType {
        d.get_entry(gfn).expect("mapped").p2mt
    }

    fn assert_extents_match(d: &Domain, range: GfnRange) {
        for x in d.cpu_extents(range) {
            for g in [x.range.start, x.range.end - 1] {
                if let Some(e) = d.get_entry(g) {
                    assert_eq!(x.p2mt, e.p2mt, "gfn {g:#x}");
                }
            }
        }
    }

    fn populate(d: &mut Domain) {
        for (g, t) in [
            (0x1000, P2mType::RamRw),
            (0x1001, P2mType::RamRo),
            (0x1002, P2mType::RamRw),
            (0x1003, P2mType::RamRw),
        ] {
            d.set_entry(g, Mfn(0x100000 + g), 0, t, P2mAccess::Rwx)
                .expect("map 4k");
        }
        d.set_entry(0x200, Mfn(0x100200), 9, P2mType::RamRw, P2mAccess::Rwx)
            .expect("map 2M");
    }

    fn add_range(d: &mut Domain, first: u64, last: u64) {
        if let P2m::Pt(p) = &mut d.p2m {
            p.recalc_state.add_range(first, last);
        }
    }

    #[test]
    fn range_change_marks_then_recalc_retypes_separate_tables() {
        let mut d = dom(false);
        populate(&mut d);
        assert_eq!(pt(&d).recalc_state.max_mapped_pfn, 0x1003);
        let before = d.iommu_stats();
        with_pt(&mut d, |p, cx| {
            p.change_entry_type_range(cx, P2mType::RamRw, P2mType::RamLogdirty, 0x300, 0x1002)
        })
        .expect("mark");
        // The 2 MiB page is split at the range's edge when marking (`p2m_next_level`).
        assert_eq!(d.log.splits[0].range, GfnRange::of_order(0x200, 9));
        add_range(&mut d, 0x300, 0x1002);
        assert!(pt_needs_recalc(raw(&d, 0x1000).0.flags));
        assert!(pt_needs_recalc(raw(&d, 0x300).0.flags));
        assert!(!pt_needs_recalc(raw(&d, 0x2ff).0.flags));
        assert_eq!(stored(&d, 0x1000), P2mType::RamRw as u32);
        assert_eq!(ty(&d, 0x300), P2mType::RamLogdirty);
        assert_eq!(ty(&d, 0x2ff), P2mType::RamRw);
        assert_eq!(ty(&d, 0x1000), P2mType::RamLogdirty);
        assert_eq!(ty(&d, 0x1001), P2mType::RamRo);
        assert_eq!(ty(&d, 0x1003), P2mType::RamRw);
        assert_extents_match(
            &d,
            GfnRange {
                start: 0,
                end: 0x2000,
            },
        );

        // do_recalc rewrites only the leaf on the walk.
        assert_eq!(with_pt(&mut d, |p, cx| p.recalc(cx, 0x1000)), Ok(true));
        let (e, _) = raw(&d, 0x1000);
        assert_eq!(p2m_flags_to_type(e.flags), P2mType::RamLogdirty as u32);
        assert!(e.flags & PAGE_RW == 0 && !pt_needs_recalc(e.flags));
        assert!(pt_needs_recalc(raw(&d, 0x1002).0.flags));
        // ram_ro only loses its mark.
        assert_eq!(with_pt(&mut d, |p, cx| p.recalc(cx, 0x1001)), Ok(true));
        let (ro, _) = raw(&d, 0x1001);
        assert_eq!(p2m_flags_to_type(ro.flags), P2mType::RamRo as u32);
        assert!(!pt_needs_recalc(ro.flags));
        assert_eq!(with_pt(&mut d, |p, cx| p.recalc(cx, 0x1001)), Ok(false));
        assert_eq!(d.iommu_stats().map_pages, before.map_pages);
        assert_eq!(d.iommu_stats().unmap_pages, before.unmap_pages);
        assert!(d.log.invalidations.is_empty());

        // set_entry on a marked gfn resolves it first.
        d.set_entry(0x1002, Mfn(0x555000), 0, P2mType::RamRw, P2mAccess::Rwx)
            .expect("map");
        assert_eq!(stored(&d, 0x1002), P2mType::RamRw as u32);
        assert!(!pt_needs_recalc(raw(&d, 0x1002).0.flags));
        d.set_entry(0x351, Mfn(0x556000), 0, P2mType::RamRo, P2mAccess::Rwx)
            .expect("map");
        assert_eq!(stored(&d, 0x351), P2mType::RamRo as u32);
        assert!(pt_needs_recalc(raw(&d, 0x350).0.flags));
        assert_eq!(ty(&d, 0x350), P2mType::RamLogdirty);
        assert_extents_match(
            &d,
            GfnRange {
                start: 0,
                end: 0x2000,
            },
        );
    }

    #[test]
    fn global_change_then_recalc_splits_partly_logdirty_superpage() {
        let mut d = dom(false);
        with_pt(&mut d, |p, cx| {
            p.change_entry_type_range(cx, P2mType::RamRw, P2mType::RamLogdirty, 0x300, 0x3ff)
        })
        .expect("nothing mapped yet");
        add_range(&mut d, 0x300, 0x3ff);
        populate(&mut d);
        with_pt(&mut d, |p, cx| {
            p.change_entry_type_global(cx, P2mType::RamLogdirty, P2mType::RamRw)
        });
        let root = pt(&d).root;
        assert!(pt_needs_recalc(pt(&d).entry(root, 0).flags));
        assert_eq!(ty(&d, 0x250), P2mType::RamRw);
        assert_eq!(ty(&d, 0x350), P2mType::RamLogdirty);
        assert_eq!(ty(&d, 0x1001), P2mType::RamRo);
        assert_extents_match(
            &d,
            GfnRange {
                start: 0,
                end: 0x2000,
            },
        );
        assert_eq!(with_pt(&mut d, |p, cx| p.recalc(cx, 0x350)), Ok(true));
        assert_eq!(d.log.splits[0].range, GfnRange::of_order(0x200, 9));
        let (e, level) = raw(&d, 0x350);
        assert_eq!(level, 1);
        assert_eq!(p2m_flags_to_type(e.flags), P2mType::RamLogdirty as u32);
        // The split's other children inherited the mark.
        assert!(pt_needs_recalc(raw(&d, 0x250).0.flags));
        assert_eq!(ty(&d, 0x250), P2mType::RamRw);
        assert!(!pt_needs_recalc(pt(&d).entry(root, 0).flags));
        assert_extents_match(
            &d,
            GfnRange {
                start: 0,
                end: 0x2000,
            },
        );
    }

    /// 4.6 `do_recalc` with a shared AMD IOMMU (`p2m-pt.c:452-455`): the rewritten leaf
    /// gets next-level = its Xen level and IR/IW only for `ram_rw`, with no flush.
    #[test]
    fn shared_amd_recalc_writes_level_as_next_level_and_no_ir_iw() {
        let mut d = dom(true);
        populate(&mut d);
        with_pt(&mut d, |p, cx| {
            p.change_entry_type_range(cx, P2mType::RamRw, P2mType::RamLogdirty, 0x200, 0x3ff)
        })
        .expect("mark 2M");
        with_pt(&mut d, |p, cx| {
            p.change_entry_type_range(cx, P2mType::RamRw, P2mType::RamLogdirty, 0x1000, 0x1000)
        })
        .expect("mark 4k");
        add_range(&mut d, 0x200, 0x3ff);
        add_range(&mut d, 0x1000, 0x1000);
        assert!(d
            .current_view(GfnRange::of_order(0x200, 9))
            .faults
            .is_empty());
        let io = d.iommu_stats();
        assert_eq!(with_pt(&mut d, |p, cx| p.recalc(cx, 0x280)), Ok(true));
        assert_eq!(with_pt(&mut d, |p, cx| p.recalc(cx, 0x1000)), Ok(true));
        assert!(d.log.invalidations.is_empty());
        assert_eq!(d.iommu_stats(), io);
        // 2 MiB leaf: next-level 1, so the IOMMU walks the data frame as a table.
        let (e, level) = raw(&d, 0x280);
        assert_eq!(level, 2);
        assert_eq!((e.flags >> 9) & 7, 1);
        assert_eq!((e.flags >> 21) & 3, 0);
        let w = d.current_view(GfnRange::of_order(0x200, 9));
        assert!(w
            .faults
            .iter()
            .any(|f| matches!(f, WalkFault::NonTableFrame { frame, .. } if *frame == 0x100200)));
        // 4 KiB log-dirty leaf: no IR/IW (set_entry would give it RW).
        let t = d.current_view(GfnRange::of_order(0x1000, 0));
        assert!(t.translations.iter().all(|x| x.perm.is_none()));
        // ram_rw leaves keep RW.
        let t = d.current_view(GfnRange::of_order(0x1002, 0));
        assert_eq!(t.translations[0].perm, IommuPerm::RW);
    }
}
