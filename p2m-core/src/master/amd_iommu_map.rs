//! AMD-Vi separate page tables and the AMD flush: `xen/drivers/passthrough/amd/iommu_map.c`
//! at `c447b7308b` (`iommu_pde_from_dfn`, `set_iommu_pte_present`, `clear_iommu_pte_present`,
//! `amd_iommu_map_page`, `amd_iommu_unmap_page`, `queue_free_pt`,
//! `amd_iommu_flush_iotlb_pages`) with `invalidate_iommu_pages` of `amd/iommu_cmd.c`.
//!
//! The tables have a fixed height, `paging_mode` 4 (an HVM guest's address width since
//! XSA-311), and the root exists from creation (`amd_iommu_alloc_root`).

use crate::cache::Invalidation;
use crate::master::iommu::{FlushFlags, Hd, IoCx, IommuErr, DFN_MASK};
use crate::master::pt_contig_markers::{PteKind, Slips};
use crate::master::x86_iommu::{
    entry_span, iommu_alloc_pgtable, iommu_queue_free_pgtable, iommu_queue_free_root, note_old,
    IoPte, PgTables,
};
use crate::tables::{index_of, pages_per_entry, Pte, ENTRIES};
use crate::types::{GfnRange, IommuPerm, PTE_MFN_MASK};
use crate::walk::IoEntry;

/// `hd->arch.amd.paging_mode` (`pci_amd_iommu.c:368-383`): 4 levels.
pub const PAGING_MODE: u8 = 4;
/// `pr` (bit 0).
const PR: u64 = 1;
/// `IOMMU_PTE_CONTIG_MASK` (`amd/iommu-defs.h:449`): `ign0`, bits 1–4, the markers (kept
/// beside the entry).
pub const IOMMU_PTE_CONTIG_MASK: u64 = 0x1e;
/// `next_level` (bits 9–11).
const NEXT_LEVEL_SHIFT: u32 = 9;
/// `fc` (bit 60).
const FC: u64 = 1 << 60;
/// `ir` (bit 61).
const IR: u64 = 1 << 61;
/// `iw` (bit 62).
const IW: u64 = 1 << 62;

/// A `union amd_iommu_pte` (`amd/iommu-defs.h:451-469`) without its marker bits: pr bit 0,
/// next_level bits 9–11, mfn bits 12–51, fc bit 60, ir bit 61, iw bit 62.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct AmdPte(pub u64);

impl AmdPte {
    /// `set_iommu_pde_present(pte, next_mfn, next_level, iw, ir)`'s value
    /// (`amd/iommu_map.c:58-78`): present, FC on leaves only.
    pub fn pde(next_mfn: u64, next_level: u8, iw: bool, ir: bool) -> AmdPte {
        let mut v =
            PR | (next_mfn & PTE_MFN_MASK) << 12 | ((next_level as u64) & 7) << NEXT_LEVEL_SHIFT;
        if next_level == 0 {
            v |= FC;
        }
        if iw {
            v |= IW;
        }
        if ir {
            v |= IR;
        }
        AmdPte(v)
    }
    /// `pr`.
    pub fn pr(self) -> bool {
        self.0 & PR != 0
    }
    /// `next_level`.
    pub fn next_level(self) -> u8 {
        ((self.0 >> NEXT_LEVEL_SHIFT) & 7) as u8
    }
    /// `mfn`.
    pub fn mfn(self) -> u64 {
        (self.0 >> 12) & PTE_MFN_MASK
    }
    /// `iw`.
    pub fn iw(self) -> bool {
        self.0 & IW != 0
    }
    /// `ir`.
    pub fn ir(self) -> bool {
        self.0 & IR != 0
    }
    /// The same entry with `pr` clear: how `set_iommu_pte_present` signals that it changed
    /// nothing (`amd/iommu_map.c:104`).
    fn unchanged(self) -> AmdPte {
        AmdPte(self.0 & !PR)
    }
}

impl Pte for AmdPte {
    fn nth(&self, k: u64, level: u8) -> Self {
        if self.0 != 0 && self.next_level() == 0 {
            let mfn = self.mfn().wrapping_add(k * pages_per_entry(level)) & PTE_MFN_MASK;
            AmdPte((self.0 & !(PTE_MFN_MASK << 12)) | mfn << 12)
        } else {
            *self
        }
    }
}

impl IoPte for AmdPte {
    fn raw(&self) -> u64 {
        self.0
    }
    fn io_entry(&self, _level: u8) -> IoEntry {
        let perm = IommuPerm {
            read: self.ir(),
            write: self.iw(),
        };
        if !self.pr() {
            IoEntry::NotPresent
        } else if self.next_level() == 0 {
            IoEntry::Leaf {
                mfn: self.mfn(),
                perm,
            }
        } else {
            IoEntry::Next {
                table: self.mfn(),
                level: self.next_level(),
                perm,
            }
        }
    }
}

/// The AMD tables of a domain.
pub type AmdTables = PgTables<AmdPte>;

/// `iommu_pde_from_dfn(d, dfn, target, &pt_mfn, flush_flags, map)`
/// (`amd/iommu_map.c:267-377`): the frame of the table at `target` on `dfn`'s path, or 0.
/// A present leaf above `target` is shattered (a new table filled with the leaf's pieces
/// and its *old* `iw`/`ir` before the pointer is written, `MODIFIED`), except a leaf at mfn
/// 0, which is never split: the walk ends with 0 there. A missing table is allocated only
/// for a `map`; otherwise the walk ends with 0. `Err` is Xen's return value 1.
///
/// Where a superpage at mfn 0 sits two or more levels above `target`, Xen would go on to
/// read machine frame 0 as a table; the model stops there with 0 (a map into it crashes
/// the domain, an unmap does nothing), as it does one level above `target`.
pub(crate) fn iommu_pde_from_dfn(
    hd: &mut Hd,
    pt: &mut AmdTables,
    cx: &mut IoCx,
    dfn: u64,
    target: u8,
    ff: &mut FlushFlags,
    map: bool,
) -> Result<u64, ()> {
    pt.ensure_root();
    let mut level = pt.root_level;
    if target < 1 || level < target || level > 6 {
        return Err(());
    }
    if dfn >> (9 * level as u32) != 0 {
        return Ok(0);
    }
    let mut next = pt.root;
    while level > target {
        let table = next;
        let idx = index_of(dfn, level);
        let pde = pt.entry(table, idx);
        next = pde.mfn();
        // Proposed fix `amd_split_superpage_at_mfn0` (not Xen): frame 0 is a frame too.
        if pde.pr() && pde.next_level() == 0 && (next != 0 || cx.sw.amd_split_superpage_at_mfn0) {
            let nt = iommu_alloc_pgtable(pt, cx.mem, level - 1, true).ok_or(())?;
            pt.fill_entries(
                nt,
                0,
                ENTRIES,
                AmdPte::pde(pde.mfn(), 0, pde.iw(), pde.ir()),
            );
            let span = entry_span(dfn, level);
            note_old(hd, pt, cx, span, level, pde);
            pt.write(table, idx, AmdPte::pde(nt, level - 1, true, true));
            cx.mem.set_span(nt, span);
            cx.log.split(span, "iommu_pde_from_dfn");
            pt.update_contig(table, idx, level, PteKind::Table);
            ff.modified = true;
            hd.ctr.shattered(level);
            if !cx.sw.amd_shatter_no_flush_all {
                // Before c8a25eb617 the split flushed all pages itself.
                hd.invalidate(Invalidation::AmdAllPages);
            }
            next = nt;
        } else if !pde.pr() {
            if !map {
                return Ok(0);
            }
            if next != 0 {
                return Err(()); // a non-present entry with a frame: Xen treats it as an error
            }
            let nt = iommu_alloc_pgtable(pt, cx.mem, level - 1, true).ok_or(())?;
            let span = entry_span(dfn, level);
            note_old(hd, pt, cx, span, level, pde);
            pt.write(table, idx, AmdPte::pde(nt, level - 1, true, true));
            cx.mem.set_span(nt, span);
            cx.log.changed(span);
            pt.update_contig(table, idx, level, PteKind::Table);
            next = nt;
        } else if pde.next_level() == 0 {
            // A superpage at mfn 0: not split.
            return Ok(0);
        }
        level -= 1;
    }
    Ok(next)
}

/// What `set_iommu_pte_present` does with an entry holding `old` asked to hold `new`
/// (`amd/iommu_map.c:92-108`): whether it writes, and whether the `old` it returns is
/// present (what makes the caller set `MODIFIED`). It writes when pr, next_level, mfn, iw
/// or ir differ (always, with `identical_pte_short_circuit == false`); with
/// `amd_pte_change_checks_perms == false` only an mfn change is reported.
fn pte_decision(sw: &crate::master::revision::Switches, old: AmdPte, new: AmdPte) -> (bool, bool) {
    let changed = !old.pr()
        || old.next_level() != 0
        || old.mfn() != new.mfn()
        || old.iw() != new.iw()
        || old.ir() != new.ir();
    let write = changed || !sw.identical_pte_short_circuit;
    let reported = write && old.pr() && (sw.amd_pte_change_checks_perms || old.mfn() != new.mfn());
    (write, reported)
}

/// `set_iommu_pte_present(pt_mfn, dfn, next_mfn, level, iw, ir, &contig)`
/// (`amd/iommu_map.c:80-111`): writes a leaf at `level` unless nothing changes; returns the
/// old entry (not present for "no change") and whether the table is now contiguous.
#[allow(clippy::too_many_arguments)]
fn set_iommu_pte_present(
    hd: &mut Hd,
    pt: &mut AmdTables,
    cx: &mut IoCx,
    table: u64,
    dfn: u64,
    next_mfn: u64,
    level: u8,
    perm: IommuPerm,
) -> (AmdPte, bool) {
    let idx = index_of(dfn, level);
    let old = pt.entry(table, idx);
    let new = AmdPte::pde(next_mfn, 0, perm.write, perm.read);
    let (write, reported) = pte_decision(cx.sw, old, new);
    if !write {
        return (old.unchanged(), false);
    }
    let span = entry_span(dfn, level);
    note_old(hd, pt, cx, span, level, old);
    pt.write(table, idx, new);
    cx.log.changed(span);
    let contig = pt.update_contig_with(table, idx, level, PteKind::Leaf, Slips::of(cx.sw));
    (if reported { old } else { old.unchanged() }, contig)
}

/// `clear_iommu_pte_present(l1_mfn, dfn, level, &free)` (`amd/iommu_map.c:37-56`): writes 0
/// whether or not the entry was present; returns the old entry and whether the table is
/// now empty.
fn clear_iommu_pte_present(
    hd: &mut Hd,
    pt: &mut AmdTables,
    cx: &mut IoCx,
    table: u64,
    dfn: u64,
    level: u8,
) -> (AmdPte, bool) {
    let idx = index_of(dfn, level);
    let old = pt.entry(table, idx);
    let span = entry_span(dfn, level);
    note_old(hd, pt, cx, span, level, old);
    pt.write(table, idx, AmdPte(0));
    cx.log.changed(span);
    let free = pt.update_contig_with(table, idx, level, PteKind::Null, Slips::of(cx.sw));
    (old, free)
}

/// `amd_iommu_map_page(d, dfn, mfn, flags, flush_flags)` (`amd/iommu_map.c:399-483`):
/// walks (allocating, shattering); a failed walk or a superpage at mfn 0 crashes the domain
/// (`-EFAULT`); writes the leaf at level `order / 9 + 1`, coalesces contiguous tables
/// upwards while `++level < paging_mode` whatever `page_sizes` says; `ADDED` always,
/// `MODIFIED` if the old entry was (reported) present, and queues the subtree a superpage
/// replaced.
#[allow(clippy::too_many_arguments)]
pub(crate) fn amd_iommu_map_page(
    hd: &mut Hd,
    pt: &mut AmdTables,
    cx: &mut IoCx,
    dfn: u64,
    mfn: u64,
    order: u32,
    perm: IommuPerm,
    ff: &mut FlushFlags,
) -> Result<(), IommuErr> {
    let level = (order / 9 + 1) as u8;
    let pt_mfn = match iommu_pde_from_dfn(hd, pt, cx, dfn, level, ff, true) {
        Ok(t) if t != 0 => t,
        _ => {
            hd.domain_crash("amd_iommu_map_page: invalid IO pagetable entry");
            return Err(IommuErr::Fault);
        }
    };
    let (old, contig) = set_iommu_pte_present(hd, pt, cx, pt_mfn, dfn, mfn, level, perm);
    if contig {
        coalesce(hd, pt, cx, dfn, mfn, pt_mfn, level, perm, ff);
    }
    ff.added = true;
    if old.pr() {
        ff.modified = true;
        if order > 0 && old.next_level() != 0 {
            let base = entry_span(dfn, level).start;
            queue_free_pt(hd, pt, cx, old.mfn(), old.next_level(), base);
        }
    }
    Ok(())
}

/// The coalesce loop of `amd_iommu_map_page` (`amd/iommu_map.c:452-469`), entered after the
/// table `pg` at `level` on `dfn`'s path was found contiguous: while `++level <
/// paging_mode`, the entry one level up becomes a leaf at `mfn` rounded down to that
/// level, `MODIFIED | ALL`, the table is queued; again while that table is contiguous.
#[allow(clippy::too_many_arguments)]
fn coalesce(
    hd: &mut Hd,
    pt: &mut AmdTables,
    cx: &mut IoCx,
    dfn: u64,
    mfn: u64,
    mut pg: u64,
    mut level: u8,
    perm: IommuPerm,
    ff: &mut FlushFlags,
) {
    loop {
        level += 1;
        if level >= PAGING_MODE {
            return;
        }
        let parent = match iommu_pde_from_dfn(hd, pt, cx, dfn, level, ff, false) {
            Ok(t) if t != 0 => t,
            _ => return, // BUG in Xen: the path was just walked.
        };
        let next_mfn = mfn & !(pages_per_entry(level) - 1);
        let (_, contig) = set_iommu_pte_present(hd, pt, cx, parent, dfn, next_mfn, level, perm);
        ff.modified = true;
        ff.all = true;
        match level {
            2 => hd.ctr.iommu_coalesce_2m += 1,
            _ => hd.ctr.iommu_coalesce_1g += 1,
        }
        iommu_queue_free_pgtable(hd, pt, cx, pg, level - 1, entry_span(dfn, level));
        if !contig {
            return;
        }
        pg = parent;
    }
}

/// `amd_iommu_unmap_page(d, dfn, order, flush_flags)` (`amd/iommu_map.c:485-550`): walks
/// without allocating (shattering on the way); where the path exists clears the entry
/// (present or not) and frees emptied tables upwards with `ALL` and *no* `MODIFIED`;
/// `MODIFIED` only if the old entry was present, and the subtree a superpage-order unmap of
/// a pointer removed is queued.
pub(crate) fn amd_iommu_unmap_page(
    hd: &mut Hd,
    pt: &mut AmdTables,
    cx: &mut IoCx,
    dfn: u64,
    order: u32,
    ff: &mut FlushFlags,
) -> Result<(), IommuErr> {
    let level = (order / 9 + 1) as u8;
    let Ok(pt_mfn) = iommu_pde_from_dfn(hd, pt, cx, dfn, level, ff, false) else {
        hd.domain_crash("amd_iommu_unmap_page: invalid IO pagetable entry");
        return Err(IommuErr::Fault);
    };
    let mut old = AmdPte(0);
    let mut freed = false;
    if pt_mfn != 0 {
        let (o, free) = clear_iommu_pte_present(hd, pt, cx, pt_mfn, dfn, level);
        old = o;
        if free {
            free_empty(hd, pt, cx, dfn, pt_mfn, level, ff);
            freed = true;
        }
    }
    if old.pr() {
        // Planted `deep-last-unmap-noflush`: not when the free loop ran.
        if !freed || cx.sw.emptying_unmap_sets_modified {
            ff.modified = true;
        }
        if order > 0 && old.next_level() != 0 {
            let base = entry_span(dfn, level).start;
            queue_free_pt(hd, pt, cx, old.mfn(), old.next_level(), base);
        }
    }
    Ok(())
}

/// The free loop of `amd_iommu_unmap_page` (`amd/iommu_map.c:523-536`), entered after the
/// table `pg` at `level` on `dfn`'s path became empty: while `++level < paging_mode`, clear
/// the parent entry, `ALL` (no `MODIFIED`), queue the table; again while the parent is
/// empty. With `free_loop_level_bound == false` (planted) an emptied root is queued.
#[allow(clippy::too_many_arguments)]
fn free_empty(
    hd: &mut Hd,
    pt: &mut AmdTables,
    cx: &mut IoCx,
    dfn: u64,
    mut pg: u64,
    mut level: u8,
    ff: &mut FlushFlags,
) {
    loop {
        if cx.sw.free_loop_level_bound {
            level += 1;
            if level >= PAGING_MODE {
                return;
            }
        } else {
            if pg == pt.root {
                iommu_queue_free_root(hd, pt, cx);
                return;
            }
            level += 1;
        }
        let parent = match iommu_pde_from_dfn(hd, pt, cx, dfn, level, ff, false) {
            Ok(t) if t != 0 => t,
            _ => return, // BUG in Xen.
        };
        let (_, free) = clear_iommu_pte_present(hd, pt, cx, parent, dfn, level);
        ff.all = true;
        hd.ctr.iommu_tables_freed_empty += 1;
        iommu_queue_free_pgtable(hd, pt, cx, pg, level - 1, entry_span(dfn, level));
        if !free {
            return;
        }
        pg = parent;
    }
}

/// `queue_free_pt(hd, mfn, level)` (`amd/iommu_map.c:379-397`): queues the table in `frame`
/// (at `level`, translating from `base`) after every table below it, depth first.
fn queue_free_pt(hd: &mut Hd, pt: &mut AmdTables, cx: &mut IoCx, frame: u64, level: u8, base: u64) {
    if level > 1 {
        let per = pages_per_entry(level);
        let children: Vec<(u64, u64, u8)> = pt
            .pieces(frame, 0, ENTRIES)
            .into_iter()
            .filter(|(_, _, e)| e.pr() && e.next_level() != 0 && e.next_level() < level)
            .flat_map(|(s, l, e)| {
                (s..s + l).map(move |i| (base + i as u64 * per, e.mfn(), e.next_level()))
            })
            .collect();
        for (cbase, child, clevel) in children {
            queue_free_pt(hd, pt, cx, child, clevel, cbase);
        }
    }
    let span = GfnRange::of_order(base, 9 * level as u32);
    iommu_queue_free_pgtable(hd, pt, cx, frame, level, span);
}

/// The consecutive order-0 `amd_iommu_map_page` calls for `n` pages from `dfn` (mapped from
/// `mfn`), all in one level-1 table, as one step (the range fast path of [`super::iommu`]):
/// one walk; entries `set_iommu_pte_present` would leave alone are skipped; each stretch of
/// written entries becomes one run with its markers from the exact range form; `ADDED` for
/// every call. A write that completes the table coalesces it and ends the step there:
/// returns the pages done.
#[allow(clippy::too_many_arguments)]
pub(crate) fn amd_iommu_map_run(
    hd: &mut Hd,
    pt: &mut AmdTables,
    cx: &mut IoCx,
    dfn: u64,
    mfn: u64,
    n: u64,
    perm: IommuPerm,
    ff: &mut FlushFlags,
) -> Result<u64, IommuErr> {
    let l1 = match iommu_pde_from_dfn(hd, pt, cx, dfn, 1, ff, true) {
        Ok(t) if t != 0 => t,
        _ => {
            hd.domain_crash("amd_iommu_map_page: invalid IO pagetable entry");
            return Err(IommuErr::Fault);
        }
    };
    let lo = index_of(dfn, 1);
    let hi = lo + n as u16;
    let page = |i: u16| dfn + (i - lo) as u64;
    let new_at = |i: u16| AmdPte::pde(mfn.wrapping_add((i - lo) as u64), 0, perm.write, perm.read);
    let expect = |i: u16| {
        AmdPte::pde(
            mfn.wrapping_sub(lo as u64).wrapping_add(i as u64),
            0,
            perm.write,
            perm.read,
        )
        .0
    };
    let sw = cx.sw;
    ff.added = true;
    let pieces = pt.pieces(l1, lo, hi);
    let decision = |p: &(u16, u16, AmdPte)| pte_decision(sw, p.2, new_at(p.0));
    let mut i = 0;
    while i < pieces.len() {
        if !decision(&pieces[i]).0 {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < pieces.len() && decision(&pieces[j]).0 {
            j += 1;
        }
        let (a, e) = (pieces[i].0, pieces[j - 1].0 + pieces[j - 1].1);
        let w = pt.first_complete_with(l1, a, e, 1, PteKind::Leaf, &expect, Slips::of(sw));
        let end = w.map_or(e, |w| w + 1);
        for p in &pieces[i..j] {
            let (s, l, old) = *p;
            if s >= end {
                break;
            }
            let l = l.min(end - s);
            let span = GfnRange {
                start: page(s),
                end: page(s) + l as u64,
            };
            note_old(hd, pt, cx, span, 1, old);
            if decision(p).1 {
                ff.modified = true;
            }
        }
        pt.fill_entries(l1, a, end - a, new_at(a));
        cx.log.changed(GfnRange {
            start: page(a),
            end: page(end),
        });
        let contig = pt.update_contig_run_with(l1, a, end, 1, PteKind::Leaf, Slips::of(sw));
        if let Some(w) = w {
            if contig {
                let (wd, wm) = (page(w), mfn.wrapping_add((w - lo) as u64));
                coalesce(hd, pt, cx, wd, wm, l1, 1, perm, ff);
            }
            return Ok((end - lo) as u64);
        }
        i = j;
    }
    Ok(n)
}

/// The consecutive order-0 `amd_iommu_unmap_page` calls for `n` pages from `dfn`, all in
/// one level-1 table, as one step: one walk (no path: nothing to do for any of them); every
/// entry is cleared, present or not, as one run with its markers from the exact range form;
/// a clear that empties the table runs the free loop and ends the step there. Returns the
/// pages done.
pub(crate) fn amd_iommu_unmap_run(
    hd: &mut Hd,
    pt: &mut AmdTables,
    cx: &mut IoCx,
    dfn: u64,
    n: u64,
    ff: &mut FlushFlags,
) -> Result<u64, IommuErr> {
    let l1 = match iommu_pde_from_dfn(hd, pt, cx, dfn, 1, ff, false) {
        Ok(0) => return Ok(n),
        Ok(t) => t,
        Err(()) => {
            hd.domain_crash("amd_iommu_unmap_page: invalid IO pagetable entry");
            return Err(IommuErr::Fault);
        }
    };
    let lo = index_of(dfn, 1);
    let hi = lo + n as u16;
    let page = |i: u16| dfn + (i - lo) as u64;
    let slips = Slips::of(cx.sw);
    let w = pt.first_complete_with(l1, lo, hi, 1, PteKind::Null, &|_| 0, slips);
    let end = w.map_or(hi, |w| w + 1);
    // Whether an entry before the last one was present, and the last one.
    let (mut earlier_pr, mut last_pr) = (false, false);
    for (s, l, old) in pt.pieces(l1, lo, end) {
        let span = GfnRange {
            start: page(s),
            end: page(s) + l as u64,
        };
        note_old(hd, pt, cx, span, 1, old);
        if old.pr() {
            earlier_pr |= s + l < end || l > 1;
            last_pr |= s + l == end;
        }
    }
    pt.fill_entries(l1, lo, end - lo, AmdPte(0));
    cx.log.changed(GfnRange {
        start: page(lo),
        end: page(end),
    });
    let free = pt.update_contig_run_with(l1, lo, end, 1, PteKind::Null, slips);
    // Planted `deep-last-unmap-noflush`: the call that emptied the table adds no MODIFIED.
    let emptied = w.is_some() && free;
    if earlier_pr || last_pr && (!emptied || cx.sw.emptying_unmap_sets_modified) {
        ff.modified = true;
    }
    if let Some(w) = w {
        if free {
            free_empty(hd, pt, cx, page(w), l1, 1, ff);
        }
        return Ok((end - lo) as u64);
    }
    Ok(n)
}

/// `flush_count(dfn, page_count, order)` (`amd/iommu_map.c:596-604`): how many
/// `2^order`-aligned blocks the range touches.
fn flush_count(dfn: u64, page_count: u64, order: u32) -> u64 {
    let start = dfn >> order;
    let end = (dfn.wrapping_add(page_count).wrapping_sub(1) >> order) + 1;
    end.wrapping_sub(start)
}

/// `amd_iommu_flush_iotlb_pages(d, dfn, page_count, flush_flags)`
/// (`amd/iommu_map.c:606-647`): nothing unless `MODIFIED`; all pages for `ALL` or a
/// wrapping range; one page: order 0 (`S=0, PDE=0`, `iommu_cmd.c:104-157`); a range inside
/// one 2 MiB block: order 9; inside one 1 GiB block: order 18; otherwise all pages.
pub(crate) fn amd_iommu_flush_iotlb_pages(hd: &mut Hd, dfn: u64, page_count: u64, ff: FlushFlags) {
    if !ff.modified {
        return;
    }
    if ff.all || dfn.wrapping_add(page_count) < dfn {
        return hd.invalidate(Invalidation::AmdAllPages);
    }
    let gfn = dfn & DFN_MASK;
    let cmd = if page_count == 1 {
        Invalidation::AmdPages { gfn, order: 0 }
    } else if flush_count(dfn, page_count, 9) == 1 {
        Invalidation::AmdPages { gfn, order: 9 }
    } else if flush_count(dfn, page_count, 18) == 1 {
        Invalidation::AmdPages { gfn, order: 18 }
    } else {
        Invalidation::AmdAllPages
    };
    hd.invalidate(cmd);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amd_pte_encoding() {
        let l = AmdPte::pde(0x12345, 0, true, false);
        assert_eq!(l.0, 1 | 0x12345 << 12 | 1 << 60 | 1 << 62);
        assert_eq!(l.0 & IOMMU_PTE_CONTIG_MASK, 0);
        assert!(l.pr() && l.iw() && !l.ir() && l.next_level() == 0);
        let p = AmdPte::pde(0x40000, 1, true, true);
        assert_eq!(p.0, 1 | 1 << 9 | 0x40000 << 12 | 3 << 61);
        assert_eq!(
            p.io_entry(2),
            IoEntry::Next {
                table: 0x40000,
                level: 1,
                perm: IommuPerm::RW
            }
        );
        assert_eq!(l.nth(3, 2).mfn(), 0x12345 + 3 * 512);
        assert_eq!(p.nth(3, 2), p);
        assert_eq!(flush_count(0x1ff, 2, 9), 2);
        assert_eq!(flush_count(0x200, 512, 9), 1);
    }
}
