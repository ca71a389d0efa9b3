//! VT-d separate page tables and the VT-d flush: `xen/drivers/passthrough/vtd/iommu.c` at
//! `c447b7308b` (`addr_to_dma_page_maddr`, `intel_iommu_map_page`, `intel_iommu_unmap_page`,
//! `queue_free_pt`, `iommu_flush_iotlb` and the PSI/DSI helpers below it).
//!
//! One DRHD with 4-level tables (48-bit AGAW, so `min_pt_levels` is 4), Snoop Control on
//! (`iommu_snoop`, so leaves carry SNP), page-selective invalidation supported, the
//! domain's device behind the unit. Caching Mode and the PSI address-mask limit come from
//! [`HwSemantics`](crate::types::HwSemantics).

use crate::cache::Invalidation;
use crate::master::iommu::{FlushFlags, Hd, IoCx, IommuErr, DFN_MASK, INVALID_DFN};
use crate::master::pt_contig_markers::{PteKind, Slips};
use crate::master::x86_iommu::{
    entry_span, iommu_alloc_pgtable, iommu_queue_free_pgtable, iommu_queue_free_root, note_old,
    IoPte, PgTables,
};
use crate::tables::{index_of, pages_per_entry, Pte, ENTRIES};
use crate::types::{GfnRange, IommuPerm, PageSizes, PTE_MFN_MASK};
use crate::walk::IoEntry;

/// `DMA_PTE_READ` (`vtd/iommu.h:264`).
pub const DMA_PTE_READ: u64 = 1;
/// `DMA_PTE_WRITE` (`vtd/iommu.h:265`).
pub const DMA_PTE_WRITE: u64 = 2;
/// `DMA_PTE_PROT` (`vtd/iommu.h:266`).
pub const DMA_PTE_PROT: u64 = DMA_PTE_READ | DMA_PTE_WRITE;
/// `DMA_PTE_SP` (`vtd/iommu.h:267`).
pub const DMA_PTE_SP: u64 = 1 << 7;
/// `DMA_PTE_SNP` (`vtd/iommu.h:268`).
pub const DMA_PTE_SNP: u64 = 1 << 11;
/// `DMA_PTE_CONTIG_MASK` (`vtd/iommu.h:269`): the marker bits 52–55 (kept beside the entry).
pub const DMA_PTE_CONTIG_MASK: u64 = 0xf << 52;
/// The address field, bits 12–51 (`PADDR_MASK & PAGE_MASK_4K`).
pub const DMA_PTE_ADDR_MASK: u64 = PTE_MFN_MASK << 12;
/// `iommu_snoop` (`vtd/iommu.c:63`): on unless a DRHD lacks Snoop Control; modelled on.
pub const IOMMU_SNOOP: bool = true;
/// `agaw_to_level` of a 48-bit AGAW: 4-level tables.
pub const VTD_LEVELS: u8 = 4;
/// `min_pt_levels` (`vtd/iommu.c:67, 1339-1340`): the fewest levels of any DRHD.
pub const MIN_PT_LEVELS: u8 = 4;

/// A `struct dma_pte` (`vtd/iommu.h:261-285`) without its marker bits: r bit 0, w bit 1,
/// SP bit 7, SNP bit 11, address bits 12–51.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct DmaPte(pub u64);

impl DmaPte {
    /// A leaf as `intel_iommu_map_page` builds it (`vtd/iommu.c:2118-2128`).
    pub fn leaf(mfn: u64, perm: IommuPerm, superpage: bool) -> DmaPte {
        let mut v = (mfn & PTE_MFN_MASK) << 12;
        if perm.read {
            v |= DMA_PTE_READ;
        }
        if perm.write {
            v |= DMA_PTE_WRITE;
        }
        if superpage {
            v |= DMA_PTE_SP;
        }
        if IOMMU_SNOOP {
            v |= DMA_PTE_SNP;
        }
        DmaPte(v)
    }
    /// A pointer as `addr_to_dma_page_maddr` installs it (`vtd/iommu.c:360-384`): r/w and
    /// the table's address.
    pub fn table(frame: u64) -> DmaPte {
        DmaPte(DMA_PTE_PROT | (frame & PTE_MFN_MASK) << 12)
    }
    /// `dma_pte_present()` (`vtd/iommu.h:284`): r or w.
    pub fn present(self) -> bool {
        self.0 & DMA_PTE_PROT != 0
    }
    /// `dma_pte_superpage()` (`vtd/iommu.h:285`).
    pub fn superpage(self) -> bool {
        self.0 & DMA_PTE_SP != 0
    }
    /// `dma_pte_addr()` as a frame number.
    pub fn addr(self) -> u64 {
        (self.0 & DMA_PTE_ADDR_MASK) >> 12
    }
    /// The r/w bits.
    pub fn perm(self) -> IommuPerm {
        IommuPerm {
            read: self.0 & DMA_PTE_READ != 0,
            write: self.0 & DMA_PTE_WRITE != 0,
        }
    }
    /// The same entry with another frame.
    fn with_addr(self, frame: u64) -> DmaPte {
        DmaPte((self.0 & !DMA_PTE_ADDR_MASK) | (frame & PTE_MFN_MASK) << 12)
    }
}

impl Pte for DmaPte {
    fn nth(&self, k: u64, level: u8) -> Self {
        if self.0 != 0 && (level == 1 || self.superpage()) {
            self.with_addr(self.addr().wrapping_add(k * pages_per_entry(level)))
        } else {
            *self
        }
    }
}

impl IoPte for DmaPte {
    fn raw(&self) -> u64 {
        self.0
    }
    fn io_entry(&self, level: u8) -> IoEntry {
        if !self.present() {
            IoEntry::NotPresent
        } else if level == 1 || self.superpage() {
            IoEntry::Leaf {
                mfn: self.addr(),
                perm: self.perm(),
            }
        } else {
            IoEntry::Next {
                table: self.addr(),
                level: level - 1,
                perm: self.perm(),
            }
        }
    }
}

/// The VT-d tables of a domain.
pub type VtdTables = PgTables<DmaPte>;

/// The kind `intel_iommu_map_page` passes for a leaf at `level` (`vtd/iommu.c:2147-2152`):
/// `PTE_kind_leaf` only when the next superpage size is in `page_sizes`.
fn leaf_kind(page_sizes: PageSizes, level: u8) -> PteKind {
    if page_sizes.has_order(9 * level as u32) {
        PteKind::Leaf
    } else {
        PteKind::Table
    }
}

/// `addr_to_dma_page_maddr(d, addr, target, flush_flags, alloc)` (`vtd/iommu.c:318-432`):
/// the frame of the table at `target` on `dfn`'s path. A missing table is allocated
/// (markers prefilled) only with `alloc`; without it the walk stops (`None`, Xen's 0). A
/// present superpage above `target` is shattered even without `alloc`: the new table gets
/// the superpage's PTE in each entry (address advancing, SP cleared at 4 KiB) before the
/// pointer is written, and `IOMMU_FLUSHF_modified` is set. `Err` when a table allocation
/// failed.
pub(crate) fn addr_to_dma_page_maddr(
    hd: &mut Hd,
    pt: &mut VtdTables,
    cx: &mut IoCx,
    dfn: u64,
    target: u8,
    ff: &mut FlushFlags,
    alloc: bool,
) -> Result<Option<u64>, IommuErr> {
    let dfn = dfn & DFN_MASK;
    pt.ensure_root();
    let mut level = pt.root_level;
    let mut parent = pt.root;
    if target >= level {
        return Ok(Some(parent));
    }
    loop {
        let offset = index_of(dfn, level);
        let pte = pt.entry(parent, offset);
        let mut next = pte.addr();
        if !pte.present() || pte.superpage() {
            if !alloc && !pte.present() {
                return Ok(None);
            }
            // Xen returns `level - 1` (`< PAGE_SIZE`) when the allocation fails: the map
            // and the unmap both take it as `-ENOMEM` (`:2109-2113`, `:2217-2221`).
            let nt = iommu_alloc_pgtable(pt, cx.mem, level - 1, true).ok_or(IommuErr::NoMem)?;
            let span = entry_span(dfn, level);
            if pte.present() {
                let first = if level - 1 == 1 {
                    DmaPte(pte.0 & !DMA_PTE_SP)
                } else {
                    pte
                };
                pt.fill_entries(nt, 0, ENTRIES, first);
                ff.modified = true;
                hd.ctr.shattered(level);
                cx.log.split(span, "addr_to_dma_page_maddr");
            }
            note_old(hd, pt, cx, span, level, pte);
            pt.write(parent, offset, DmaPte::table(nt));
            cx.mem.set_span(nt, span);
            cx.log.changed(span);
            pt.update_contig(parent, offset, level, PteKind::Table);
            next = nt;
        }
        level -= 1;
        if level == target {
            return Ok(Some(next));
        }
        parent = next;
    }
}

/// `intel_iommu_map_page(d, dfn, mfn, flags, flush_flags)` (`vtd/iommu.c:2072-2189`; the
/// shared-EPT early return is in the caller): writes the leaf at level `order / 9 + 1`
/// unless the entry already holds it, coalesces wholly contiguous tables upwards while the
/// next size is supported, sets `ADDED` (and `MODIFIED` if the old entry was present), and
/// queues the subtree a superpage replaced.
#[allow(clippy::too_many_arguments)]
pub(crate) fn intel_iommu_map_page(
    hd: &mut Hd,
    pt: &mut VtdTables,
    cx: &mut IoCx,
    dfn: u64,
    mfn: u64,
    order: u32,
    perm: IommuPerm,
    ff: &mut FlushFlags,
) -> Result<(), IommuErr> {
    let dfn = dfn & DFN_MASK;
    let level = (order / 9 + 1) as u8;
    let Some(pg) = addr_to_dma_page_maddr(hd, pt, cx, dfn, level, ff, true)? else {
        return Err(IommuErr::NoMem);
    };
    let idx = index_of(dfn, level);
    let old = pt.entry(pg, idx);
    let new = DmaPte::leaf(mfn, perm, order > 0);
    if cx.sw.identical_pte_short_circuit && old == new {
        return Ok(());
    }
    let span = entry_span(dfn, level);
    note_old(hd, pt, cx, span, level, old);
    pt.write(pg, idx, new);
    cx.log.changed(span);
    let slips = Slips::of(cx.sw);
    if pt.update_contig_with(pg, idx, level, leaf_kind(hd.page_sizes, level), slips) {
        coalesce(hd, pt, cx, dfn, pg, level, new, ff);
    }
    ff.added = true;
    if old.present() {
        ff.modified = true;
        if order > 0 && !old.superpage() {
            queue_free_pt(hd, pt, cx, old.addr(), level - 1, span.start);
        }
    }
    Ok(())
}

/// The coalesce loop of `intel_iommu_map_page` (`vtd/iommu.c:2147-2173`), entered after the
/// table `pg` at `level` (holding `new` on `dfn`'s path) was found wholly contiguous: the
/// entry one level up becomes a superpage, `MODIFIED | ALL`, the table is queued; again
/// while the table above is contiguous and its next size supported.
#[allow(clippy::too_many_arguments)]
fn coalesce(
    hd: &mut Hd,
    pt: &mut VtdTables,
    cx: &mut IoCx,
    dfn: u64,
    mut pg: u64,
    mut level: u8,
    mut new: DmaPte,
    ff: &mut FlushFlags,
) {
    loop {
        let level_bits = 12 + 9 * (level as u32 - 1);
        new = DmaPte((new.0 & !(511u64 << level_bits)) | DMA_PTE_SP);
        level += 1;
        let Ok(Some(parent)) = addr_to_dma_page_maddr(hd, pt, cx, dfn, level, ff, false) else {
            return; // BUG_ON in Xen: the path was just walked.
        };
        let idx = index_of(dfn, level);
        let old = pt.entry(parent, idx);
        let span = entry_span(dfn, level);
        note_old(hd, pt, cx, span, level, old);
        pt.write(parent, idx, new);
        cx.log.changed(span);
        ff.modified = true;
        ff.all = true;
        match level {
            2 => hd.ctr.iommu_coalesce_2m += 1,
            _ => hd.ctr.iommu_coalesce_1g += 1,
        }
        iommu_queue_free_pgtable(hd, pt, cx, pg, level - 1, span);
        let kind = leaf_kind(hd.page_sizes, level);
        if !pt.update_contig_with(parent, idx, level, kind, Slips::of(cx.sw)) {
            return;
        }
        pg = parent;
    }
}

/// `intel_iommu_unmap_page(d, dfn, order, flush_flags)` (`vtd/iommu.c:2191-2270`): walks
/// without allocating (a superpage on the way is shattered); a missing table or a
/// non-present entry is left alone with no flags; otherwise clears the entry, frees
/// emptied tables upwards, sets `MODIFIED`, and queues the subtree a superpage-order unmap
/// of a pointer removed.
pub(crate) fn intel_iommu_unmap_page(
    hd: &mut Hd,
    pt: &mut VtdTables,
    cx: &mut IoCx,
    dfn: u64,
    order: u32,
    ff: &mut FlushFlags,
) -> Result<(), IommuErr> {
    let dfn = dfn & DFN_MASK;
    let level = (order / 9 + 1) as u8;
    let Some(pg) = addr_to_dma_page_maddr(hd, pt, cx, dfn, level, ff, false)? else {
        return Ok(());
    };
    let idx = index_of(dfn, level);
    let old = pt.entry(pg, idx);
    if !old.present() {
        return Ok(());
    }
    let span = entry_span(dfn, level);
    note_old(hd, pt, cx, span, level, old);
    pt.write(pg, idx, DmaPte(0));
    cx.log.changed(span);
    if pt.update_contig_with(pg, idx, level, PteKind::Null, Slips::of(cx.sw)) {
        free_empty(hd, pt, cx, dfn, pg, level, ff);
        // Planted `deep-last-unmap-noflush`: no MODIFIED when the free loop ran (harmless
        // here: the loop's ALL is a domain-selective flush on VT-d).
        if cx.sw.emptying_unmap_sets_modified {
            ff.modified = true;
        }
    } else {
        ff.modified = true;
    }
    if order > 0 && !old.superpage() {
        queue_free_pt(hd, pt, cx, old.addr(), level - 1, span.start);
    }
    Ok(())
}

/// The free loop of `intel_iommu_unmap_page` (`vtd/iommu.c:2238-2257`), entered after the
/// table `pg` at `level` on `dfn`'s path became empty: while `++level < min_pt_levels`,
/// clear the parent entry, `ALL`, queue the table; again while the parent is empty. With
/// `free_loop_level_bound == false` (planted) the bound is gone: an emptied root is queued.
#[allow(clippy::too_many_arguments)]
fn free_empty(
    hd: &mut Hd,
    pt: &mut VtdTables,
    cx: &mut IoCx,
    dfn: u64,
    mut pg: u64,
    mut level: u8,
    ff: &mut FlushFlags,
) {
    loop {
        if cx.sw.free_loop_level_bound {
            level += 1;
            if level >= MIN_PT_LEVELS {
                return;
            }
        } else {
            if pg == pt.root {
                iommu_queue_free_root(hd, pt, cx);
                return;
            }
            level += 1;
        }
        let Ok(Some(parent)) = addr_to_dma_page_maddr(hd, pt, cx, dfn, level, ff, false) else {
            return; // BUG_ON in Xen.
        };
        let idx = index_of(dfn, level);
        let old = pt.entry(parent, idx);
        let span = entry_span(dfn, level);
        note_old(hd, pt, cx, span, level, old);
        pt.write(parent, idx, DmaPte(0));
        cx.log.changed(span);
        ff.all = true;
        hd.ctr.iommu_tables_freed_empty += 1;
        iommu_queue_free_pgtable(hd, pt, cx, pg, level - 1, span);
        if !pt.update_contig_with(parent, idx, level, PteKind::Null, Slips::of(cx.sw)) {
            return;
        }
        pg = parent;
    }
}

/// `queue_free_pt(hd, mfn, level)` (`vtd/iommu.c:782-798`): queues the table in `frame` (at
/// `level`, translating from `base`) after every table below it, depth first.
fn queue_free_pt(hd: &mut Hd, pt: &mut VtdTables, cx: &mut IoCx, frame: u64, level: u8, base: u64) {
    if level > 1 {
        let per = pages_per_entry(level);
        let children: Vec<(u64, u64)> = pt
            .pieces(frame, 0, ENTRIES)
            .into_iter()
            .filter(|(_, _, e)| e.present() && !e.superpage())
            .flat_map(|(s, l, e)| (s..s + l).map(move |i| (base + i as u64 * per, e.addr())))
            .collect();
        for (cbase, child) in children {
            queue_free_pt(hd, pt, cx, child, level - 1, cbase);
        }
    }
    let span = GfnRange::of_order(base, 9 * level as u32);
    iommu_queue_free_pgtable(hd, pt, cx, frame, level, span);
}

/// The consecutive order-0 `intel_iommu_map_page` calls for `n` pages from `dfn` (mapped
/// from `mfn`), all in one level-1 table, as one step (the range fast path of
/// [`super::iommu`]): one walk (the later walks find the same tables and change nothing);
/// entries equal to the new ones are skipped as the short-circuit skips them; each
/// stretch of written entries becomes one run with its markers from the exact range form.
/// A write that completes the table coalesces it and ends the step there: returns the
/// number of pages done.
#[allow(clippy::too_many_arguments)]
pub(crate) fn intel_iommu_map_run(
    hd: &mut Hd,
    pt: &mut VtdTables,
    cx: &mut IoCx,
    dfn: u64,
    mfn: u64,
    n: u64,
    perm: IommuPerm,
    ff: &mut FlushFlags,
) -> Result<u64, IommuErr> {
    let dfn = dfn & DFN_MASK;
    let Some(l1) = addr_to_dma_page_maddr(hd, pt, cx, dfn, 1, ff, true)? else {
        return Err(IommuErr::NoMem);
    };
    let lo = index_of(dfn, 1);
    let hi = lo + n as u16;
    let page = |i: u16| dfn + (i - lo) as u64;
    // The leaf the per-page loop writes at index `i` (for `i >= lo`), and the one a wholly
    // contiguous table would hold there (for any `i`).
    let new_at = |i: u16| DmaPte::leaf(mfn.wrapping_add((i - lo) as u64), perm, false);
    let expect = |i: u16| {
        DmaPte::leaf(
            mfn.wrapping_sub(lo as u64).wrapping_add(i as u64),
            perm,
            false,
        )
        .0
    };
    let kind = leaf_kind(hd.page_sizes, 1);
    let short_circuit = cx.sw.identical_pte_short_circuit;
    let pieces = pt.pieces(l1, lo, hi);
    let written = |p: &(u16, u16, DmaPte)| !short_circuit || p.2 != new_at(p.0);
    let mut i = 0;
    while i < pieces.len() {
        if !written(&pieces[i]) {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < pieces.len() && written(&pieces[j]) {
            j += 1;
        }
        let (a, e) = (pieces[i].0, pieces[j - 1].0 + pieces[j - 1].1);
        let w = pt.first_complete_with(l1, a, e, 1, kind, &expect, Slips::of(cx.sw));
        let end = w.map_or(e, |w| w + 1);
        for &(s, l, old) in &pieces[i..j] {
            if s >= end {
                break;
            }
            let l = l.min(end - s);
            let span = GfnRange {
                start: page(s),
                end: page(s) + l as u64,
            };
            note_old(hd, pt, cx, span, 1, old);
            if old.present() {
                ff.modified = true;
            }
        }
        pt.fill_entries(l1, a, end - a, new_at(a));
        cx.log.changed(GfnRange {
            start: page(a),
            end: page(end),
        });
        let contig = pt.update_contig_run_with(l1, a, end, 1, kind, Slips::of(cx.sw));
        ff.added = true;
        if let Some(w) = w {
            if contig {
                coalesce(hd, pt, cx, page(w), l1, 1, new_at(w), ff);
            }
            return Ok((end - lo) as u64);
        }
        i = j;
    }
    Ok(n)
}

/// The consecutive order-0 `intel_iommu_unmap_page` calls for `n` pages from `dfn`, all in
/// one level-1 table, as one step: one walk (a missing table skips them all); the present
/// entries are cleared as runs with their markers from the exact range form; a clear that
/// empties the table runs the free loop and ends the step there. Returns the pages done.
pub(crate) fn intel_iommu_unmap_run(
    hd: &mut Hd,
    pt: &mut VtdTables,
    cx: &mut IoCx,
    dfn: u64,
    n: u64,
    ff: &mut FlushFlags,
) -> Result<u64, IommuErr> {
    let dfn = dfn & DFN_MASK;
    let Some(l1) = addr_to_dma_page_maddr(hd, pt, cx, dfn, 1, ff, false)? else {
        return Ok(n);
    };
    let lo = index_of(dfn, 1);
    let hi = lo + n as u16;
    let page = |i: u16| dfn + (i - lo) as u64;
    let pieces = pt.pieces(l1, lo, hi);
    let mut i = 0;
    while i < pieces.len() {
        if !pieces[i].2.present() {
            i += 1;
            continue;
        }
        let mut j = i;
        while j < pieces.len() && pieces[j].2.present() {
            j += 1;
        }
        let (a, e) = (pieces[i].0, pieces[j - 1].0 + pieces[j - 1].1);
        let slips = Slips::of(cx.sw);
        let w = pt.first_complete_with(l1, a, e, 1, PteKind::Null, &|_| 0, slips);
        let end = w.map_or(e, |w| w + 1);
        for &(s, l, old) in &pieces[i..j] {
            if s >= end {
                break;
            }
            let l = l.min(end - s);
            let span = GfnRange {
                start: page(s),
                end: page(s) + l as u64,
            };
            note_old(hd, pt, cx, span, 1, old);
        }
        pt.fill_entries(l1, a, end - a, DmaPte(0));
        cx.log.changed(GfnRange {
            start: page(a),
            end: page(end),
        });
        let free = pt.update_contig_run_with(l1, a, end, 1, PteKind::Null, slips);
        // Planted `deep-last-unmap-noflush`: the call that emptied the table adds no
        // MODIFIED (the ones before it in this run did).
        let emptied = w.is_some() && free;
        if end - a > 1 || !emptied || cx.sw.emptying_unmap_sets_modified {
            ff.modified = true;
        }
        if let Some(w) = w {
            if free {
                free_empty(hd, pt, cx, page(w), l1, 1, ff);
            }
            return Ok((end - lo) as u64);
        }
        i = j;
    }
    Ok(n)
}

/// `iommu_flush_iotlb(d, dfn, page_count, flush_flags)` (`vtd/iommu.c:726-780`): with
/// `ALL`, or a count that is not a power of two, or a misaligned dfn, a domain-selective
/// flush (always issued); otherwise a page-selective flush of order log2(count) marked
/// "non-present" unless `MODIFIED`.
pub(crate) fn iommu_flush_iotlb(hd: &mut Hd, dfn: u64, page_count: u64, ff: FlushFlags) {
    let (dfn, count) = if ff.all {
        (INVALID_DFN, 0)
    } else {
        (dfn, page_count)
    };
    if count == 0 || !count.is_power_of_two() || dfn == INVALID_DFN || dfn % count != 0 {
        iommu_flush_iotlb_dsi(hd, false);
    } else {
        iommu_flush_iotlb_psi(hd, dfn, count.trailing_zeros(), !ff.modified);
    }
}

/// `iommu_flush_iotlb_dsi(iommu, did, flush_non_present_entry)` (`vtd/iommu.c:645-660`).
fn iommu_flush_iotlb_dsi(hd: &mut Hd, non_present: bool) {
    vtd_flush_iotlb_reg(hd, Invalidation::VtdDsi, non_present);
}

/// `iommu_flush_iotlb_psi(iommu, did, addr, order, flush_non_present_entry)`
/// (`vtd/iommu.c:662-686`): falls back to a domain-selective flush above the unit's
/// `cap_max_amask_val` ([`HwSemantics::vtd_max_amask`](crate::types::HwSemantics)). An order
/// beyond the 48-bit address width covers the whole domain and is also issued as a DSI.
fn iommu_flush_iotlb_psi(hd: &mut Hd, dfn: u64, order: u32, non_present: bool) {
    if order > hd.caches.hw().vtd_max_amask as u32 || order > crate::types::GFN_BITS {
        return iommu_flush_iotlb_dsi(hd, non_present);
    }
    let cmd = Invalidation::VtdPsi {
        gfn: dfn & DFN_MASK,
        order,
        ih: false,
    };
    vtd_flush_iotlb_reg(hd, cmd, non_present);
}

/// `vtd_flush_iotlb_reg` / `flush_iotlb_qi` (`vtd/iommu.c:570-626`, `qinval.c:453-487`): a
/// non-present flush is skipped unless the unit has Caching Mode; a PSI never sets the
/// invalidation hint, so paging-structure caches for the range go too (`vtd/iommu.c:609`).
fn vtd_flush_iotlb_reg(hd: &mut Hd, cmd: Invalidation, non_present: bool) {
    if non_present && !hd.caches.hw().vtd_caching_mode {
        hd.ctr.vtd_psi_skipped += 1;
        return;
    }
    hd.invalidate(cmd);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dma_pte_encoding() {
        let l = DmaPte::leaf(0x12345, IommuPerm::R, true);
        assert_eq!(l.0, 0x12345 << 12 | 1 | 1 << 7 | 1 << 11);
        assert!(l.present() && l.superpage());
        assert_eq!(l.addr(), 0x12345);
        assert_eq!(l.raw() & DMA_PTE_CONTIG_MASK, 0);
        let t = DmaPte::table(0x40000);
        assert_eq!(t.0, 0x40000 << 12 | 3);
        assert_eq!(
            t.io_entry(2),
            IoEntry::Next {
                table: 0x40000,
                level: 1,
                perm: IommuPerm::RW
            }
        );
        assert_eq!(l.nth(2, 2).addr(), 0x12345 + 1024);
        assert_eq!(t.nth(2, 2), t);
        let w = DmaPte::leaf(
            7,
            IommuPerm {
                read: false,
                write: true,
            },
            false,
        );
        assert_eq!(
            w.io_entry(1),
            IoEntry::Leaf {
                mfn: 7,
                perm: IommuPerm {
                    read: false,
                    write: true
                }
            }
        );
        assert_eq!(
            DmaPte::leaf(7, IommuPerm::NONE, false).io_entry(1),
            IoEntry::NotPresent
        );
    }
}
