//! EPT: `xen/arch/x86/mm/p2m-ept.c`.
//!
//! Levels are numbered 1..=4 here (1 holds 4 KiB entries); Xen's EPT level `i`
//! (0..=3) is our level `i + 1`.
//!
//! The lazy type change is modelled: `ept_change_entry_type_global` /
//! `ept_change_entry_type_range` mark entries (`emt = MTRR_NUM_TYPES` plus `recalc`),
//! [`Ept::recalc`] (`resolve_misconfig`) resolves the marks on a gfn's path (also at the
//! start of every `set_entry`), `get_entry` reports the recalculated type of a marked
//! entry, and `set_entry` keeps `max_mapped_pfn` in [`Ept::recalc_state`].

use crate::cache::note_overwrite;
use crate::frames::{MachineMemory, TableOwner};
use crate::recalc::{LogdirtyOverlap, RecalcState};
use crate::stats::{bump, bump_if};
use crate::tables::{index_of, pages_per_entry, Pte, TableStore};
use crate::types::*;
use crate::view::{fill_cpu_gaps, leaf_run_is_plain, push_cpu_extent, CpuExtent, P2mEntry};
use crate::walk::{IoEntry, IoTables};
use crate::xen46::domain::Cx;
use crate::xen46::p2m_pt::{p2m_is_changeable, p2m_recalc_type};
use crate::xen46::policy::p2m_get_iommu_flags;

mod run;

/// An `ept_entry_t` with the fields that matter (ipat, snp, suppress_ve and A/D are
/// summarized away; `emt` is kept because it makes a leaf non-zero). VT-d reading a
/// shared EPT sees only r, w, sp and the frame ([`ept_io_entry`]).
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct EptEntry {
    /// Read bit (also VT-d's read bit when the tables are shared).
    pub r: bool,
    /// Write bit (also VT-d's write bit when the tables are shared).
    pub w: bool,
    /// Execute bit.
    pub x: bool,
    /// Superpage bit.
    pub sp: bool,
    /// 40-bit frame field.
    pub mfn: u64,
    /// `sa_p2mt`: the p2m type kept in software-available bits (0 = `ram_rw`).
    pub sa_p2mt: u8,
    /// `access`.
    pub access: u8,
    /// `emt`: the memory type `epte_get_entry_emt()` chose (0 = UC, 6 = WB).
    pub emt: u8,
    /// `emt == MTRR_NUM_TYPES`: deliberately misconfigured, pending `resolve_misconfig`
    /// (`emt` is then 0).
    pub emt_invalid: bool,
    /// `recalc`: the p2m type of this entry (or of everything below it) must be
    /// recalculated when the misconfiguration is resolved.
    pub recalc: bool,
}

/// `MTRR_TYPE_WRBACK`.
pub const MTRR_TYPE_WRBACK: u8 = 6;
/// `MTRR_TYPE_UNCACHABLE`.
pub const MTRR_TYPE_UNCACHABLE: u8 = 0;

/// Models `epte_get_entry_emt()` for a domain with a passed-through device and WB
/// guest MTRRs: UC for an invalid frame or direct MMIO, WB otherwise. What matters
/// is that a RAM leaf with mfn 0, type `ram_rw` (0) and access `n` (0) is still a
/// non-zero, hence valid, entry.
pub fn epte_get_entry_emt(mfn: Mfn, p2mt: P2mType) -> u8 {
    if !mfn.is_valid() || p2mt == P2mType::MmioDirect {
        MTRR_TYPE_UNCACHABLE
    } else {
        MTRR_TYPE_WRBACK
    }
}

impl EptEntry {
    /// `is_epte_present()`: any of r, w, x.
    pub fn is_present(&self) -> bool {
        self.r || self.w || self.x
    }
    /// `is_epte_valid()`: non-zero and not `p2m_invalid`.
    pub fn is_valid(&self) -> bool {
        *self != EptEntry::default() && self.sa_p2mt != P2mType::Invalid as u8
    }
}

impl Pte for EptEntry {
    fn nth(&self, k: u64, level: u8) -> Self {
        if (self.sp || level == 1) && *self != EptEntry::default() {
            EptEntry {
                mfn: (self.mfn + k * pages_per_entry(level)) & PTE_MFN_MASK,
                ..*self
            }
        } else {
            *self
        }
    }
}

/// Models `ept_p2m_type_to_flags()` (no PML, no `mmio_ro_ranges`): the r/w/x bits.
pub fn ept_p2m_type_to_flags(e: &mut EptEntry, t: P2mType, a: P2mAccess) {
    use P2mType::*;
    let (r, w, x) = match t {
        RamRw => (true, true, true),
        MmioDirect => (true, true, true),
        RamLogdirty | RamRo | RamShared => (true, false, true),
        GrantMapRw | MapForeign => (true, true, false),
        GrantMapRo | MmioWriteDm => (true, false, false),
        Invalid | MmioDm | PopulateOnDemand | RamPagingOut | RamPaged | RamPagingIn | RamBroken => {
            (false, false, false)
        }
    };
    let (mr, mw, mx) = match a {
        P2mAccess::N | P2mAccess::N2rwx => (false, false, false),
        P2mAccess::R => (true, false, false),
        P2mAccess::W => (false, true, false),
        P2mAccess::X => (false, false, true),
        P2mAccess::Rx | P2mAccess::Rx2rw => (true, false, true),
        P2mAccess::Wx => (false, true, true),
        P2mAccess::Rw => (true, true, false),
        P2mAccess::Rwx => (true, true, true),
    };
    e.r = r && mr;
    e.w = w && mw;
    e.x = x && mx;
}

/// The EPT of a host p2m.
#[derive(Clone, Debug)]
pub struct Ept {
    /// Tables by frame.
    pub tables: TableStore<EptEntry>,
    /// `pagetable_get_pfn(p2m_get_pagetable(p2m))`.
    pub root: u64,
    /// `logdirty_ranges`, `global_logdirty` and `max_mapped_pfn` of the p2m.
    pub recalc_state: RecalcState,
    /// `p2m_set_entry`'s 4 KiB chunks within one table go as one step
    /// ([`Ept::set_entry_run_4k`], the default) or one call each (off): a knob for the
    /// equivalence tests, not a Xen behaviour.
    pub run_fast_path: bool,
    /// Run steps taken (a measure for the tests; not part of the p2m).
    pub run_steps: u64,
}

impl Ept {
    /// A fresh, empty 4-level EPT (`ept_get_wl() == 3`).
    pub fn new(mem: &mut MachineMemory) -> Self {
        let root = mem.alloc(TableOwner::P2m, 4);
        let mut tables = TableStore::new();
        tables.insert(root, 4);
        Ept {
            tables,
            root,
            recalc_state: RecalcState::default(),
            run_fast_path: true,
            run_steps: 0,
        }
    }

    fn entry(&self, t: u64, idx: u16) -> EptEntry {
        self.tables.get(t).map(|x| x.get(idx)).unwrap_or_default()
    }

    /// Models `atomic_write_ept_entry()`; with shared tables the old content
    /// becomes a cache record. The entry's range is logged as changed, and a replaced
    /// intermediate entry's table as unlinked.
    fn write(&mut self, cx: &mut Cx, t: u64, level: u8, gfn: u64, new: EptEntry) {
        self.write_run(cx, t, level, gfn, 1, new);
    }

    /// [`Self::write`] of `len` entries from the one covering `gfn` (same table), set to
    /// the run starting with `new`: one `atomic_write_ept_entry` per entry, logged per
    /// stored run. A pointer rewritten to the same table (EMT/recalc marks set or
    /// cleared) unlinks nothing, and leaves no paging-structure record when VT-d reads it
    /// unchanged.
    fn write_run(&mut self, cx: &mut Cx, t: u64, level: u8, gfn: u64, len: u16, new: EptEntry) {
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
        let shared = cx.cfg.iommu_hap_pt_share;
        for (s, l, old) in olds {
            let off = (s - idx) as u64;
            if level > 1 && old.is_present() && !old.sp {
                for k in 0..l as u64 {
                    let o = old.nth(k, level);
                    let n = new.nth(off + k, level);
                    let range = GfnRange::of_order(start + (off + k) * per, order);
                    if !(n.is_present() && !n.sp && n.mfn == o.mfn) {
                        cx.log
                            .unlink(cx.mem, o.mfn, TableOwner::P2m, level - 1, range);
                    }
                    let io_o = ept_io_entry(o, level);
                    let unchanged_next =
                        matches!(io_o, IoEntry::Next { .. }) && io_o == ept_io_entry(n, level);
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
                    ept_io_entry(old, level),
                    cx.seq,
                );
            }
        }
        if let Some(tab) = self.tables.get_mut(t) {
            tab.fill(idx, len, new);
        }
    }

    /// Models `ept_set_middle_entry()`: a new zeroed table and an rwx entry to it.
    /// `None` when `p2m_alloc_ptp` fails (nothing is written).
    fn set_middle_entry(&mut self, cx: &mut Cx, t: u64, level: u8, gfn: u64) -> Option<u64> {
        let nt = cx.mem.try_alloc_for(TableOwner::P2m, level - 1, gfn)?;
        self.tables.insert(nt, level - 1);
        let e = EptEntry {
            r: true,
            w: true,
            x: true,
            mfn: nt,
            access: P2mAccess::Rwx as u8,
            ..Default::default()
        };
        self.write(cx, t, level, gfn, e);
        Some(nt)
    }

    /// Models `ept_split_super_page()`: builds the subtree under a new middle entry
    /// (split down to `target`) and returns that entry; not yet installed.
    /// `base` is the first gfn the superpage translates. The flag is `false` when an
    /// allocation failed: the entry is then `sp` itself if the first one did, else the
    /// new middle entry over the part built so far (the child whose split failed left a
    /// copy of its superpage, the later ones empty), as Xen installs it in its local copy.
    fn split_super_page(
        &mut self,
        cx: &mut Cx,
        sp: EptEntry,
        level: u8,
        target: u8,
        base: u64,
    ) -> (EptEntry, bool) {
        cx.stats.superpage_splits += 1;
        let Some(nt) = cx.mem.try_alloc_for(TableOwner::P2m, level - 1, base) else {
            return (sp, false);
        };
        self.tables.insert(nt, level - 1);
        let child_level = level - 1;
        let mut child = EptEntry {
            sp: child_level > 1,
            ..sp
        };
        if cx.sw.planted_split_wrong_frame && child != EptEntry::default() {
            child.mfn = (child.mfn + 1) & PTE_MFN_MASK;
        }
        let t = P2mType::from_raw(sp.sa_p2mt).unwrap_or(P2mType::Invalid);
        let a = P2mAccess::from_raw(sp.access).unwrap_or(P2mAccess::N);
        ept_p2m_type_to_flags(&mut child, t, a);
        let mut done = true;
        if child_level == target {
            if let Some(tab) = self.tables.get_mut(nt) {
                tab.fill(0, 512, child);
            }
        } else {
            for i in 0..512u16 {
                let c = child.nth(i as u64, child_level);
                let cb = base + i as u64 * pages_per_entry(child_level);
                let (sub, ok) = self.split_super_page(cx, c, child_level, target, cb);
                if let Some(tab) = self.tables.get_mut(nt) {
                    tab.set(i, sub);
                }
                if !ok {
                    done = false;
                    break;
                }
            }
        }
        let middle = EptEntry {
            r: true,
            w: true,
            x: true,
            mfn: nt,
            access: P2mAccess::Rwx as u8,
            ..Default::default()
        };
        (middle, done)
    }

    /// Models `ept_free_entry()`: frees the subtree under the non-leaf entry `e` at
    /// `level` whose guest range is `span`, through the op log's free-event check
    /// (`p2m_free_ptp` for each table, children first as Xen recurses).
    fn free_entry(&mut self, cx: &mut Cx, e: EptEntry, level: u8, span: GfnRange) {
        let mut frames = Vec::new();
        self.collect_free(cx, e, level, span.start, &mut frames);
        if frames.is_empty() {
            return;
        }
        self.note_orphaned_children(cx, &frames, span);
        let io: &dyn IoTables = if cx.cfg.iommu_hap_pt_share {
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
                if !c.is_present() || c.sp {
                    continue;
                }
                for k in 0..l {
                    let child = c.nth(k as u64, level).mfn;
                    let cspan = parent.map_or(span, |p| {
                        GfnRange::of_order(p.start + (s + k) as u64 * per, 9 * (level as u32 - 1))
                    });
                    cx.log
                        .unlink(cx.mem, child, TableOwner::P2m, level - 1, cspan);
                }
            }
        }
    }

    /// The frames `ept_free_entry(e, level)` frees, children first (`base`: the first
    /// gfn `e` translates); a pointer found in a freed table that the recursion does not
    /// follow is logged as unlinked.
    fn collect_free(
        &self,
        cx: &mut Cx,
        e: EptEntry,
        level: u8,
        base: u64,
        out: &mut Vec<(u64, u8)>,
    ) {
        let sw = cx.sw;
        if sw.planted_leak_replaced_subtree {
            return;
        }
        let points_to_table = e.is_present() && (!e.sp || sw.planted_free_leaf_frame);
        if level == 1 || !points_to_table {
            return;
        }
        let table_level = level - 1;
        // Xen recurses while the freed table holds pointers (level > 2).
        let recurse = level > 2 + sw.planted_free_entry_recurses_short as u8;
        if table_level > 1 {
            if let Some(tab) = self.tables.get(e.mfn) {
                let per = pages_per_entry(table_level);
                let children: Vec<(u64, EptEntry)> = tab
                    .iter_runs(0, 512)
                    .filter(|(_, _, c)| c.is_present() && !c.sp)
                    .flat_map(|(s, l, c)| {
                        (0..l).map(move |k| {
                            (base + (s + k) as u64 * per, c.nth(k as u64, table_level))
                        })
                    })
                    .collect();
                for (cb, c) in children {
                    if recurse {
                        self.collect_free(cx, c, table_level, cb, out);
                    } else {
                        let span = GfnRange::of_order(cb, 9 * (table_level as u32 - 1));
                        cx.log
                            .unlink(cx.mem, c.mfn, TableOwner::P2m, table_level - 1, span);
                    }
                }
            }
        }
        out.push((e.mfn, table_level));
    }

    /// Models `ept_set_entry()` for the host p2m of a domain with an IOMMU.
    pub fn set_entry(
        &mut self,
        cx: &mut Cx,
        gfn: u64,
        mfn: Mfn,
        order: u32,
        p2mt: P2mType,
        p2ma: P2mAccess,
    ) -> Result<(), P2mError> {
        let sw = *cx.sw;
        if !PAGE_ORDERS.contains(&order) {
            return Err(P2mError::BadOrder);
        }
        if (gfn | mfn.0) & ((1u64 << order) - 1) != 0 {
            return Err(P2mError::Misaligned);
        }
        if gfn >> GFN_BITS != 0 {
            return Err(P2mError::GfnOutOfRange);
        }
        // Pending type changes on the walk to `gfn` first (`p2m-ept.c:692-700`).
        self.recalc(cx, gfn)?;
        let is_foreign = p2mt == P2mType::MapForeign;
        let foreign_not_present = matches!(p2ma, P2mAccess::N | P2mAccess::N2rwx | P2mAccess::X);
        if is_foreign && (order != 0 || !mfn.is_valid() || foreign_not_present) {
            // ASSERT(!p2m_is_foreign(p2mt) || target == 0), the -EINVAL of
            // atomic_write_ept_entry for a non-present foreign entry, and (a simplification,
            // see `P2mError::ForeignRejected`) a foreign entry without a valid frame.
            return Err(P2mError::ForeignRejected);
        }
        let target = (order / 9) as u8 + 1;
        let iommu_flags = p2m_get_iommu_flags(p2mt);
        let mut need_modify_vtd_table = true;

        // Walk down, creating middle entries, stopping at a superpage or PoD entry.
        let mut t = self.root;
        let mut level = 4u8;
        while level > target {
            let e = self.entry(t, index_of(gfn, level));
            if !e.is_present() {
                if e.sa_p2mt == P2mType::PopulateOnDemand as u8 {
                    break;
                }
                if sw.ept_split_nonpresent_superpage && e.sp && e.is_valid() {
                    // Split it like a present superpage, keeping the other entries.
                    break;
                }
                // `ept_next_level` fails: `rc = -ENOENT; goto out` (no IOMMU step).
                let Some(nt) = self.set_middle_entry(cx, t, level, gfn) else {
                    return Err(P2mError::TableNoEnt);
                };
                t = nt;
            } else if e.sp {
                break;
            } else {
                t = e.mfn;
            }
            level -= 1;
        }
        let mut cur = self.entry(t, index_of(gfn, level));
        // Proposed fix `shared_flush_on_valid_old_entry` (not Xen): with shared tables a
        // valid entry a recalc made non-present may still be in the IOTLB.
        let vtd_pte_present = cur.is_present()
            || (sw.shared_flush_on_valid_old_entry && cx.cfg.iommu_hap_pt_share && cur.is_valid());
        let mut old_entry = EptEntry::default();
        if level == target {
            old_entry = cur;
        } else {
            let per = pages_per_entry(level);
            let (split, ok) = self.split_super_page(cx, cur, level, target, gfn / per * per);
            if !ok {
                // `ept_free_entry` on the local copy, `rc = -ENOMEM; goto out`: the
                // superpage stays, nothing reaches the IOMMU.
                let span = GfnRange::of_order(gfn / per * per, 9 * (level as u32 - 1));
                self.free_entry(cx, split, level, span);
                return Err(P2mError::TableNoMem);
            }
            cx.log.p2m_split(
                GfnRange::of_order(gfn / per * per, 9 * (level as u32 - 1)),
                "ept_split_super_page",
            );
            self.write(cx, t, level, gfn, split);
            while level > target {
                t = self.entry(t, index_of(gfn, level)).mfn;
                level -= 1;
            }
            cur = self.entry(t, index_of(gfn, level));
        }

        let mut new_entry = EptEntry::default();
        let keeps_frame = mfn.is_valid()
            || p2mt == P2mType::MmioDirect
            || p2mt == P2mType::RamPaged
            || p2mt == P2mType::RamPagingIn;
        if keeps_frame {
            new_entry.sp = target > 1;
            new_entry.sa_p2mt = p2mt as u8;
            new_entry.access = p2ma as u8;
            new_entry.mfn = mfn.0 & PTE_MFN_MASK;
            new_entry.emt = epte_get_entry_emt(mfn, p2mt);
            ept_p2m_type_to_flags(&mut new_entry, p2mt, p2ma);
            if Self::vtd_table_unchanged(cx, cur, level, new_entry, iommu_flags) {
                need_modify_vtd_table = false;
                bump(&mut cx.stats.need_modify_cleared, 1);
            }
        }
        self.write(cx, t, level, gfn, new_entry);
        // `max_mapped_pfn` after the write succeeded (`p2m-ept.c:817-823`).
        if p2mt != P2mType::Invalid {
            self.recalc_state.note_mapped(gfn, order);
        }
        bump_if(
            &mut cx.stats.intermediate_replaced,
            is_replaced_intermediate(old_entry, target),
        );

        let per = pages_per_entry(target);
        let span = GfnRange::of_order(gfn / per * per, order);
        if sw.planted_free_before_flush {
            self.free_entry(cx, old_entry, target, span);
            old_entry = EptEntry::default();
        }

        let shared = cx.cfg.iommu_hap_pt_share;
        // `need_iommu(d)` (`p2m-ept.c:831`): no IOMMU step before a hot-plugged device.
        let need_iommu = cx.iommu.need_iommu;
        if need_iommu && shared && (need_modify_vtd_table || cx.split_to_flush(gfn).is_some()) {
            bump(&mut cx.stats.iommu_steps, 1);
            let (fg, fo) = cx.shared_flush_scope(gfn, order);
            let (fg, fo) = sw.planted_short_flush.narrow(order, fg, fo);
            cx.iommu.iommu_pte_flush(fg, fo, vtd_pte_present);
        } else if need_iommu && need_modify_vtd_table && !shared {
            bump(&mut cx.stats.iommu_steps, 1);
            {
                let flags = if sw.iommu_flags_require_present_entry && !keeps_frame {
                    IommuPerm::NONE
                } else {
                    iommu_flags
                };
                cx.iommu_map_or_unmap(gfn, 1 << order, mfn.0, flags);
            }
        }

        // Release the old intermediate tables last, after the IOMMU step.
        self.free_entry(cx, old_entry, target, span);
        Ok(())
    }

    /// Whether `ept_set_entry` clears `need_modify_vtd_table` (`p2m-ept.c:785-798`) when the
    /// frame-keeping entry `new` (its type's IOMMU flags `iommu_flags`) replaces `cur` at
    /// `level`: the same frame (and, since 6c0e4ad608, the same IOMMU flags); with
    /// `ept_need_modify_requires_present_leaf`, also a present leaf and, with shared
    /// tables, the same r/w bits. The literal call and the run steps both decide here.
    fn vtd_table_unchanged(
        cx: &Cx,
        cur: EptEntry,
        level: u8,
        new: EptEntry,
        iommu_flags: IommuPerm,
    ) -> bool {
        let sw = cx.sw;
        let same_mfn = cur.mfn == new.mfn;
        let old_flags =
            p2m_get_iommu_flags(P2mType::from_raw(cur.sa_p2mt).unwrap_or(P2mType::Invalid));
        if sw.ept_need_modify_requires_present_leaf {
            let leaf = level == 1 || cur.sp;
            // With shared tables the IOTLB may also hold a W a recalc took away unflushed
            // (`ram_logdirty` keeps RW in `p2m_get_iommu_flags`): the flags must agree as
            // well as the bits.
            // Nor do equal bits clear a `ram_logdirty` leaf: the recalc that made it one
            // may have taken a W the IOTLB still holds, which equal bits do not show.
            let shared = cx.cfg.iommu_hap_pt_share;
            let old_logdirty = cur.sa_p2mt == P2mType::RamLogdirty as u8;
            let same_device_view = old_flags == iommu_flags
                && (!shared || ((cur.r, cur.w) == (new.r, new.w) && !old_logdirty));
            cur.is_present() && leaf && same_mfn && same_device_view
        } else {
            same_mfn && (!sw.ept_need_modify_checks_iommu_flags || old_flags == iommu_flags)
        }
    }

    /// Models `ept_invalidate_emt()` (`p2m-ept.c:385-411`) on table `t` of `level` whose
    /// first gfn is `base`: every valid present entry gets `emt = MTRR_NUM_TYPES` and, with
    /// `recalc`, the recalc mark (skipping entries already so marked); whether it wrote.
    fn invalidate_emt(&mut self, cx: &mut Cx, t: u64, level: u8, base: u64, recalc: bool) -> bool {
        let runs = self
            .tables
            .get(t)
            .map(|x| x.runs_in(0, 512))
            .unwrap_or_default();
        let per = pages_per_entry(level);
        let mut changed = false;
        for (s, l, e) in runs {
            if !e.is_valid() || !e.is_present() || (e.emt_invalid && (e.recalc || !recalc)) {
                continue;
            }
            let marked = EptEntry {
                emt: 0,
                emt_invalid: true,
                recalc: e.recalc || recalc,
                ..e
            };
            self.write_run(cx, t, level, base + s as u64 * per, l, marked);
            changed = true;
        }
        changed
    }

    /// Models `ept_invalidate_emt_range()` (`p2m-ept.c:420-484`): walks read-only to
    /// `target` (1..=4), splitting the superpage (or PoD entry) it meets above it
    /// (`ept_split_super_page`, `-ENOMEM` freeing the partial subtree), then marks
    /// (`emt = MTRR_NUM_TYPES`, `recalc`) the valid present entries of `first..=last`
    /// there (one table's worth). `Ok(false)` when the walk meets a non-present entry.
    fn invalidate_emt_range(
        &mut self,
        cx: &mut Cx,
        target: u8,
        first: u64,
        last: u64,
    ) -> Result<bool, P2mError> {
        let mut t = self.root;
        let mut level = 4u8;
        while level > target {
            let e = self.entry(t, index_of(first, level));
            if !e.is_present() {
                if e.sa_p2mt == P2mType::PopulateOnDemand as u8 {
                    break;
                }
                return Ok(false);
            }
            if e.sp {
                break;
            }
            t = e.mfn;
            level -= 1;
        }
        if level > target {
            let cur = self.entry(t, index_of(first, level));
            let per = pages_per_entry(level);
            let span = GfnRange::of_order(first / per * per, 9 * (level as u32 - 1));
            let (split, ok) = self.split_super_page(cx, cur, level, target, span.start);
            if !ok {
                self.free_entry(cx, split, level, span);
                return Err(P2mError::TableNoMem);
            }
            cx.log.p2m_split(span, "ept_split_super_page");
            self.write(cx, t, level, first, split);
            while level > target {
                t = self.entry(t, index_of(first, level)).mfn;
                level -= 1;
            }
        }
        let per = pages_per_entry(level);
        let base = first / (per * 512) * (per * 512);
        let runs = self
            .tables
            .get(t)
            .map(|x| x.runs_in(index_of(first, level), index_of(last, level) + 1))
            .unwrap_or_default();
        let mut changed = false;
        for (s, l, e) in runs {
            if e.is_valid() && e.is_present() && (!e.emt_invalid || !e.recalc) {
                let marked = EptEntry {
                    emt: 0,
                    emt_invalid: true,
                    recalc: true,
                    ..e
                };
                self.write_run(cx, t, level, base + s as u64 * per, l, marked);
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Models `ept_change_entry_type_range()` (`p2m-ept.c:1039-1084`): marks
    /// `first_gfn..=last_gfn` with as few entries as the alignment allows, working in from
    /// both ends one level at a time (`ot`/`nt` unused, as in Xen; `ept_sync_domain` is
    /// CPU-only, no IOMMU call). The caller updates the log-dirty rangeset afterwards
    /// (`p2m_change_type_range`). Errors: `-ENOMEM` from an edge split (the marks set so
    /// far stay). A range beyond the guest address width is refused (`GfnOutOfRange`;
    /// Xen's callers clamp it to `max_mapped_pfn`), an empty one does nothing.
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
            self.invalidate_emt_range(cx, level, first, last)
                .map(|_| ())
        })
    }

    /// Models `ept_change_entry_type_global()` (`p2m-ept.c:1027-1037`): marks every valid
    /// present root entry (`ept_invalidate_emt(root, 1)`; `ot`/`nt` unused, as in Xen). The
    /// caller sets `global_logdirty` afterwards.
    pub fn change_entry_type_global(&mut self, cx: &mut Cx, _ot: P2mType, _nt: P2mType) {
        let root = self.root;
        self.invalidate_emt(cx, root, 4, 0, true);
    }

    /// Models `resolve_misconfig()` (`p2m-ept.c:498-633`) for `gfn`: a marked intermediate
    /// entry on the walk passes its marks to the valid present entries below
    /// (`ept_invalidate_emt`) and loses them; at the leaf level, a marked 4 KiB entry
    /// resolves its whole table (every valid present entry gets its EMT back and, when
    /// marked and changeable, `ram_logdirty` or `ram_rw` with its r/w/x); a marked
    /// superpage gets the type of its range, or is split one level when the range is
    /// partly log-dirty (children inherit the marks) and the walk goes on. With shared
    /// EPT the r/w bits change under VT-d with no IOTLB flush; with separate tables nothing
    /// reaches the IOMMU. `Ok(true)` when a mark was resolved (Xen's `rc > 0`).
    pub fn recalc(&mut self, cx: &mut Cx, gfn: u64) -> Result<bool, P2mError> {
        let mut t = self.root;
        let mut level = 4u8;
        let mut changed = false;
        loop {
            let e = self.entry(t, index_of(gfn, level));
            if level == 1 || e.sp {
                if !e.emt_invalid {
                    break;
                }
                if level == 1 {
                    self.resolve_leaf_table(cx, t, gfn & !511);
                    return Ok(true);
                }
                let per = pages_per_entry(level);
                let base = gfn / per * per;
                let ty = P2mType::from_raw(e.sa_p2mt).unwrap_or(P2mType::Invalid);
                let mut ne = e;
                let mut split = false;
                if e.recalc && p2m_is_changeable(ty) {
                    match self.recalc_state.is_logdirty_range(base, base + per - 1) {
                        LogdirtyOverlap::None => {
                            ne.sa_p2mt = P2mType::RamRw as u8;
                            ne.recalc = false;
                        }
                        LogdirtyOverlap::All => {
                            ne.sa_p2mt = P2mType::RamLogdirty as u8;
                            ne.recalc = false;
                        }
                        LogdirtyOverlap::Partial => split = true,
                    }
                }
                if split {
                    let span = GfnRange::of_order(base, 9 * (level as u32 - 1));
                    let (sub, ok) = self.split_super_page(cx, e, level, level - 1, base);
                    if !ok {
                        self.free_entry(cx, sub, level, span);
                        return Err(P2mError::TableNoMem);
                    }
                    cx.log.p2m_split(span, "ept_split_super_page");
                    self.write(cx, t, level, gfn, sub);
                    changed = true;
                    t = sub.mfn;
                    level -= 1;
                    continue;
                }
                ne.emt = epte_get_entry_emt(Mfn(e.mfn), ty);
                ne.emt_invalid = false;
                ne.recalc = false;
                let nty = P2mType::from_raw(ne.sa_p2mt).unwrap_or(P2mType::Invalid);
                if e.recalc && p2m_is_changeable(nty) {
                    let a = P2mAccess::from_raw(ne.access).unwrap_or(P2mAccess::N);
                    ept_p2m_type_to_flags(&mut ne, nty, a);
                }
                self.write(cx, t, level, gfn, ne);
                return Ok(true);
            }
            if e.emt_invalid {
                let per = pages_per_entry(level);
                let child_base = gfn / per * per;
                self.invalidate_emt(cx, e.mfn, level - 1, child_base, e.recalc);
                let cleared = EptEntry {
                    emt: 0,
                    emt_invalid: false,
                    recalc: false,
                    ..e
                };
                self.write(cx, t, level, gfn, cleared);
                changed = true;
            } else if !(e.is_present() && e.emt == 0) {
                break;
            }
            t = e.mfn;
            level -= 1;
        }
        Ok(changed)
    }

    /// The level-0 branch of `resolve_misconfig()` (`p2m-ept.c:525-548`) on the 4 KiB
    /// table `t` whose first gfn is `base`: every valid present entry gets
    /// `epte_get_entry_emt()` and no marks; a marked changeable one gets `ram_logdirty` or
    /// `ram_rw` by its gfn, with its r/w/x. Entries left as they were are not rewritten
    /// (Xen rewrites them with the same content). Cost: per run and rangeset piece.
    fn resolve_leaf_table(&mut self, cx: &mut Cx, t: u64, base: u64) {
        let runs = self
            .tables
            .get(t)
            .map(|x| x.runs_in(0, 512))
            .unwrap_or_default();
        for (s, l, e) in runs {
            let probe = EptEntry {
                emt: if e.emt_invalid { 0 } else { e.emt },
                emt_invalid: false,
                ..e
            };
            if !probe.is_valid() || !probe.is_present() {
                continue;
            }
            let ty = P2mType::from_raw(e.sa_p2mt).unwrap_or(P2mType::Invalid);
            let retype = e.recalc && p2m_is_changeable(ty);
            // Cut the run where the EMT (frame validity) or the recalculated type changes.
            let run = GfnRange {
                start: base + s as u64,
                end: base + (s + l) as u64,
            };
            let mut cuts = vec![0u64, l as u64];
            for edge in [MAX_PAGE, PTE_MFN_MASK + 1] {
                if e.mfn < edge && edge - e.mfn < l as u64 {
                    cuts.push(edge - e.mfn);
                }
            }
            let pieces = if retype {
                self.recalc_state.logdirty_pieces(run)
            } else {
                vec![(run, false)]
            };
            for (p, _) in &pieces {
                cuts.push(p.start - run.start);
            }
            cuts.sort_unstable();
            cuts.dedup();
            for w in cuts.windows(2) {
                let (a, b) = (w[0], w[1]);
                let g = run.start + a;
                let ek = e.nth(a, 1);
                let mut ne = EptEntry {
                    emt: epte_get_entry_emt(Mfn(ek.mfn), ty),
                    emt_invalid: false,
                    recalc: false,
                    ..ek
                };
                if retype {
                    let nty = p2m_recalc_type(true, ty, &self.recalc_state, g);
                    ne.sa_p2mt = nty as u8;
                    let acc = P2mAccess::from_raw(ne.access).unwrap_or(P2mAccess::N);
                    ept_p2m_type_to_flags(&mut ne, nty, acc);
                }
                if ne != ek {
                    self.write_run(cx, t, 1, g, (b - a) as u16, ne);
                }
            }
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
            if !e.is_present() || e.sp {
                return None;
            }
            t = e.mfn;
        }
        Some(t)
    }

    /// Models `ept_get_entry()` (query only): the entry covering `gfn`, if valid; the type
    /// of a changeable entry with a recalc mark on its walk (its own included) is
    /// reported recalculated (`p2m-ept.c:897-898,945-950`).
    pub fn get_entry(&self, gfn: u64) -> Option<P2mEntry> {
        let mut t = self.root;
        let mut level = 4u8;
        let mut recalc = false;
        loop {
            let e = self.entry(t, index_of(gfn, level));
            recalc |= e.recalc;
            if level == 1 || e.sp || !e.is_present() {
                if !e.is_valid() {
                    return None;
                }
                let off = gfn & (pages_per_entry(level) - 1);
                let mfn = if e.mfn == PTE_MFN_MASK {
                    INVALID_MFN
                } else {
                    Mfn(e.mfn + off)
                };
                let p2mt = P2mType::from_raw(e.sa_p2mt).unwrap_or(P2mType::Invalid);
                return Some(P2mEntry {
                    mfn,
                    p2mt: p2m_recalc_type(recalc, p2mt, &self.recalc_state, gfn),
                    access: P2mAccess::from_raw(e.access).unwrap_or(P2mAccess::N),
                });
            }
            t = e.mfn;
            level -= 1;
        }
    }
}

impl Ept {
    /// The CPU view of `range` as extents, consistent with [`Ept::get_entry`] at every
    /// gfn; cost proportional to the runs it visits.
    pub fn cpu_extents(&self, range: GfnRange) -> Vec<CpuExtent> {
        let mut out = Vec::new();
        self.extents_in(self.root, 4, 0, range, false, &mut out);
        fill_cpu_gaps(range, out)
    }

    /// `recalc`: an entry above this table carries the recalc mark.
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
            if level == 1 || e.sp || !e.is_present() {
                // A leaf run: one extent (its frames advance with the gfns), unless it
                // holds the all-ones frame field `get_entry` reports as INVALID_MFN.
                if !e.is_valid() {
                    continue;
                }
                let first = (clip.start - run.start) / per;
                let last = (clip.end - 1 - run.start) / per;
                let step = if level == 1 || e.sp { per } else { 0 };
                // Entries that do not advance (non-present, not SP) are handled one by one.
                let has_invalid = if step == 0 {
                    e.mfn == PTE_MFN_MASK || last > first
                } else {
                    !leaf_run_is_plain(e.mfn, step, first, last, &[PTE_MFN_MASK])
                };
                let p2mt = P2mType::from_raw(e.sa_p2mt).unwrap_or(P2mType::Invalid);
                let access = P2mAccess::from_raw(e.access).unwrap_or(P2mAccess::N);
                // A marked changeable leaf reports its recalculated type, gfn by gfn.
                let retyped = (recalc || e.recalc) && p2m_is_changeable(p2mt);
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
                    let mfn = if ek.mfn == PTE_MFN_MASK {
                        INVALID_MFN
                    } else {
                        Mfn(ek.mfn + (piece.start - (run.start + k * per)))
                    };
                    if !retyped {
                        push_cpu_extent(
                            out,
                            CpuExtent {
                                range: piece,
                                mfn,
                                p2mt,
                                access,
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
                                access,
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
                        let below = recalc || e.recalc;
                        self.extents_in(e.nth(k, level).mfn, level - 1, eb, c, below, out);
                    }
                }
            }
        }
    }
}

/// How VT-d reads an EPT entry at `level` when it shares the tables: present when
/// r or w is set, a leaf at level 1 or with the superpage bit.
pub fn ept_io_entry(e: EptEntry, level: u8) -> IoEntry {
    let perm = IommuPerm {
        read: e.r,
        write: e.w,
    };
    if perm.is_none() {
        IoEntry::NotPresent
    } else if level == 1 || e.sp {
        IoEntry::Leaf { mfn: e.mfn, perm }
    } else {
        IoEntry::Next {
            table: e.mfn,
            level: level - 1,
            perm,
        }
    }
}

impl IoTables for Ept {
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
            f(s, l, ept_io_entry(e, level));
        }
        true
    }
}

/// A present intermediate entry replaced by a leaf (counted only).
fn is_replaced_intermediate(old: EptEntry, target: u8) -> bool {
    old.is_present() && !old.sp && target > 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::revision::Revision;
    use crate::view::ViewSource;
    use crate::xen46::domain::{Domain, P2m};

    fn dom(share: bool) -> Domain {
        let cfg = Config::new(Mode::Ept, Vendor::Vtd, share);
        Domain::new(cfg, Revision::by_name("committed").expect("committed"))
    }

    /// Runs `f` on the EPT as one op, the way `Domain` runs its ops.
    fn with_ept<R>(d: &mut Domain, f: impl FnOnce(&mut Ept, &mut Cx) -> R) -> R {
        d.op(|p2m, cx| match p2m {
            P2m::Ept(x) => f(x, cx),
            P2m::Pt(_) => panic!("not Ept"),
        })
    }

    fn ept(d: &Domain) -> &Ept {
        match &d.p2m {
            P2m::Ept(e) => e,
            P2m::Pt(_) => panic!("not EPT"),
        }
    }

    /// The stored leaf entry translating `gfn` (4 KiB or superpage).
    fn raw(d: &Domain, gfn: u64) -> EptEntry {
        let e = ept(d);
        for level in 1..=3u8 {
            if let Some(t) = e.table_at(gfn, level) {
                let x = e.entry(t, index_of(gfn, level));
                if level == 1 || x.sp {
                    return x;
                }
            }
        }
        panic!("no leaf for {gfn:#x}")
    }

    fn ty(d: &Domain, gfn: u64) -> P2mType {
        d.get_entry(gfn).expect("mapped").p2mt
    }

    /// Every gfn of `range`: `cpu_extents` agrees with `get_entry`.
    fn assert_extents_match(d: &Domain, range: GfnRange) {
        for x in d.cpu_extents(range) {
            for g in [x.range.start, x.range.end - 1] {
                let want = d.get_entry(g).map(|e| e.p2mt);
                let got = (x.p2mt != P2mType::Invalid).then_some(x.p2mt);
                if want.is_some() {
                    assert_eq!(got, want, "gfn {g:#x}");
                }
            }
        }
    }

    /// 4 KiB pages 0x1000..=0x1003 (0x1001 `ram_ro`) and a 2 MiB page at 0x200, all
    /// mapped before any type change.
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

    #[test]
    fn range_change_marks_then_recalc_retypes_separate_tables() {
        let mut d = dom(false);
        populate(&mut d);
        assert_eq!(ept(&d).recalc_state.max_mapped_pfn, 0x1003);
        let before = d.iommu_stats();
        let rc = with_ept(&mut d, |e, cx| {
            e.change_entry_type_range(cx, P2mType::RamRw, P2mType::RamLogdirty, 0x300, 0x1002)
        });
        assert_eq!(rc, Ok(()));
        // The 2 MiB page is split at the range's edge when marking.
        assert_eq!(d.log.splits.len(), 1);
        assert_eq!(d.log.splits[0].range, GfnRange::of_order(0x200, 9));
        // `p2m_change_type_range` updates the rangeset after marking.
        if let P2m::Ept(e) = &mut d.p2m {
            e.recalc_state.add_range(0x300, 0x1002);
        }
        // Before any recalc: stored types unchanged, reported types recalculated.
        assert!(raw(&d, 0x1000).emt_invalid && raw(&d, 0x1000).recalc);
        assert_eq!(raw(&d, 0x1000).sa_p2mt, P2mType::RamRw as u8);
        assert!(raw(&d, 0x300).recalc && !raw(&d, 0x2ff).recalc);
        assert_eq!(ty(&d, 0x300), P2mType::RamLogdirty);
        assert_eq!(ty(&d, 0x3ff), P2mType::RamLogdirty);
        assert_eq!(ty(&d, 0x2ff), P2mType::RamRw);
        assert_eq!(ty(&d, 0x1000), P2mType::RamLogdirty);
        assert_eq!(ty(&d, 0x1001), P2mType::RamRo);
        assert_eq!(ty(&d, 0x1002), P2mType::RamLogdirty);
        assert_eq!(ty(&d, 0x1003), P2mType::RamRw);
        assert_extents_match(
            &d,
            GfnRange {
                start: 0,
                end: 0x2000,
            },
        );

        // Resolving 0x1000 rewrites its whole 4 KiB table.
        let rc = with_ept(&mut d, |e, cx| e.recalc(cx, 0x1000));
        assert_eq!(rc, Ok(true));
        for g in [0x1000, 0x1002] {
            let x = raw(&d, g);
            assert_eq!(x.sa_p2mt, P2mType::RamLogdirty as u8);
            assert!(x.r && !x.w && !x.emt_invalid && !x.recalc);
            assert_eq!(x.emt, MTRR_TYPE_WRBACK);
        }
        let ro = raw(&d, 0x1001);
        assert_eq!(ro.sa_p2mt, P2mType::RamRo as u8);
        assert!(!ro.emt_invalid && !ro.recalc && !ro.w);
        assert_eq!(raw(&d, 0x1003).sa_p2mt, P2mType::RamRw as u8);
        assert!(raw(&d, 0x1003).w);
        // Separate tables: nothing reaches the IOMMU.
        assert_eq!(d.iommu_stats().map_pages, before.map_pages);
        assert_eq!(d.iommu_stats().unmap_pages, before.unmap_pages);
        assert!(d.log.invalidations.is_empty());
        // Nothing left to resolve there.
        assert_eq!(with_ept(&mut d, |e, cx| e.recalc(cx, 0x1000)), Ok(false));

        // set_entry on a marked gfn resolves it first.
        d.set_entry(0x350, Mfn(0x555000), 0, P2mType::RamRw, P2mAccess::Rwx)
            .expect("map");
        assert_eq!(raw(&d, 0x351).sa_p2mt, P2mType::RamLogdirty as u8);
        assert!(!raw(&d, 0x351).emt_invalid);
        assert_eq!(raw(&d, 0x350).sa_p2mt, P2mType::RamRw as u8);
        assert_eq!(raw(&d, 0x2ff).sa_p2mt, P2mType::RamRw as u8);
        assert_eq!(ty(&d, 0x350), P2mType::RamRw);
        assert_eq!(ty(&d, 0x351), P2mType::RamLogdirty);
        assert_extents_match(
            &d,
            GfnRange {
                start: 0,
                end: 0x2000,
            },
        );
    }

    #[test]
    fn shared_ept_recalc_drops_write_without_iotlb_flush() {
        let mut d = dom(true);
        populate(&mut d);
        let g = GfnRange::of_order(0x1000, 0);
        let perm = |d: &Domain| d.current_view(g).translations[0].perm;
        assert_eq!(perm(&d), IommuPerm::RW);
        with_ept(&mut d, |e, cx| {
            e.change_entry_type_range(cx, P2mType::RamRw, P2mType::RamLogdirty, 0x1000, 0x1000)
        })
        .expect("mark");
        if let P2m::Ept(e) = &mut d.p2m {
            e.recalc_state.add_range(0x1000, 0x1000);
        }
        // Marking leaves the device view alone.
        assert_eq!(perm(&d), IommuPerm::RW);
        let psi = d.iommu_stats().vtd_psi;
        assert_eq!(with_ept(&mut d, |e, cx| e.recalc(cx, 0x1000)), Ok(true));
        assert_eq!(perm(&d), IommuPerm::R);
        assert!(d.log.invalidations.is_empty(), "{:?}", d.log.invalidations);
        assert_eq!(d.iommu_stats().vtd_psi, psi);
        // The old RW translation may still sit in the IOTLB.
        let dv = d.device_view(g);
        assert!(dv
            .translations
            .iter()
            .any(|(t, s)| t.perm.write && matches!(s, ViewSource::Cached { .. })));
        // The neighbours keep RW.
        assert_eq!(
            d.current_view(GfnRange::of_order(0x1002, 0)).translations[0].perm,
            IommuPerm::RW
        );
    }

    #[test]
    fn global_change_then_recalc_splits_partly_logdirty_superpage() {
        let mut d = dom(false);
        // A log-dirty range over part of a region mapped later as one 2 MiB page.
        with_ept(&mut d, |e, cx| {
            e.change_entry_type_range(cx, P2mType::RamRw, P2mType::RamLogdirty, 0x300, 0x3ff)
        })
        .expect("nothing mapped yet");
        if let P2m::Ept(e) = &mut d.p2m {
            e.recalc_state.add_range(0x300, 0x3ff);
        }
        populate(&mut d);
        assert!(!raw(&d, 0x300).recalc);
        with_ept(&mut d, |e, cx| {
            e.change_entry_type_global(cx, P2mType::RamLogdirty, P2mType::RamRw)
        });
        let root = ept(&d).root;
        assert!(ept(&d).entry(root, 0).emt_invalid);
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
        let splits = d.stats.superpage_splits;
        assert_eq!(with_ept(&mut d, |e, cx| e.recalc(cx, 0x250)), Ok(true));
        assert_eq!(d.stats.superpage_splits, splits + 1);
        assert_eq!(d.log.splits[0].range, GfnRange::of_order(0x200, 9));
        assert_eq!(raw(&d, 0x250).sa_p2mt, P2mType::RamRw as u8);
        assert!(!raw(&d, 0x250).sp && !raw(&d, 0x250).emt_invalid);
        assert_eq!(raw(&d, 0x350).sa_p2mt, P2mType::RamLogdirty as u8);
        assert!(!raw(&d, 0x350).w);
        // The pointer to the other 4 KiB table got the mark passed down to it.
        let l2 = ept(&d).table_at(0x1000, 2).expect("L2");
        assert!(ept(&d).entry(l2, index_of(0x1000, 2)).recalc);
        assert!(!raw(&d, 0x1001).emt_invalid);
        assert_eq!(ty(&d, 0x1000), P2mType::RamRw);
        assert_eq!(with_ept(&mut d, |e, cx| e.recalc(cx, 0x1001)), Ok(true));
        assert_eq!(raw(&d, 0x1001).sa_p2mt, P2mType::RamRo as u8);
        assert_eq!(raw(&d, 0x1000).sa_p2mt, P2mType::RamRw as u8);
        assert!(!raw(&d, 0x1000).emt_invalid);
        assert_extents_match(
            &d,
            GfnRange {
                start: 0,
                end: 0x2000,
            },
        );
    }

    #[test]
    fn range_split_allocation_failure_frees_the_partial_subtree() {
        let mut d = dom(false);
        d.set_entry(0, Mfn(0x140000), 18, P2mType::RamRw, P2mAccess::Rwx)
            .expect("map 1G");
        let live = d.live_table_frames();
        // 1 GiB → 512 × 2 MiB succeeds, the 2 MiB → 4 KiB split under it fails.
        d.mem.arm_alloc_failure(2);
        let rc = with_ept(&mut d, |e, cx| {
            e.change_entry_type_range(cx, P2mType::RamRw, P2mType::RamLogdirty, 5, 6)
        });
        assert_eq!(rc, Err(P2mError::TableNoMem));
        assert_eq!(d.live_table_frames(), live);
        assert!(raw(&d, 5).sp && !raw(&d, 5).emt_invalid);
    }
}
