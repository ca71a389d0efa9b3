//! x86 common IOMMU code: `xen/drivers/passthrough/x86/iommu.c` at `c447b7308b` —
//! page-table allocation (`iommu_alloc_pgtable`, markers prefilled or cleared) and the
//! deferred free queue (`iommu_queue_free_pgtable`, the tasklet `free_queued_pgtables`).
//!
//! The separate tables of either vendor are a [`PgTables`]: entries by frame
//! ([`TableStore`], runs of linear entries) plus the contiguity markers of each table
//! ([`Markers`](crate::master::pt_contig_markers::Markers)), which Xen keeps in ignored
//! PTE bits and this model keeps beside them. A queued table stays allocated (and walkable by a device through a stale cached
//! pointer) until the queue is drained; the drain frees through
//! [`OpLog::free_tables`](crate::events::OpLog::free_tables), which records whatever
//! could still reach the frame at that moment.

use crate::cache::note_overwrite;
use crate::frames::{MachineMemory, TableOwner};
use crate::master::iommu::{Hd, IoCx};
use crate::master::pt_contig_markers::{
    all_markers, markers_cleared, set_marker, Marker, PteKind, Slips,
};
use crate::tables::{pages_per_entry, Pte, Table, TableStore, ENTRIES};
use crate::types::GfnRange;
use crate::walk::{IoEntry, IoTables};

/// A vendor page-table entry (`struct dma_pte`, `union amd_iommu_pte`).
pub trait IoPte: Pte + 'static {
    /// The entry as the hardware stores it, with the contiguity-marker bits clear (what
    /// `IS_CONTIG` compares, `pt-contig-markers.h:40-43`).
    fn raw(&self) -> u64;
    /// How the IOMMU hardware reads the entry in a table at `level`.
    fn io_entry(&self, level: u8) -> IoEntry;
}

/// The guest frames an entry at `level` on `dfn`'s path translates.
pub fn entry_span(dfn: u64, level: u8) -> GfnRange {
    let per = pages_per_entry(level);
    GfnRange {
        start: dfn & !(per - 1),
        end: (dfn & !(per - 1)) + per,
    }
}

/// One domain's separate IOMMU tables (`hd->arch.vtd.pgd_maddr` / `hd->arch.amd.root_table`
/// and the pages of `hd->arch.pgtables.list`), with the markers of each table.
#[derive(Clone, Debug)]
pub struct PgTables<E> {
    /// Entries by table frame.
    pub(crate) entries: TableStore<E>,
    /// Contiguity markers by table frame.
    pub(crate) markers: TableStore<Marker>,
    /// Root table frame.
    pub(crate) root: u64,
    /// Level of the root (4).
    pub(crate) root_level: u8,
}

impl<E: IoPte> PgTables<E> {
    /// Tables with a root of `root_level` allocated by `iommu_alloc_pgtable(hd, 0)`
    /// (`vtd/iommu.c:338-343`, `amd/pci_amd_iommu.c:357`): a cleared page, markers all 0.
    pub fn with_root(mem: &mut MachineMemory, root_level: u8) -> Self {
        let mut pt = PgTables {
            entries: TableStore::new(),
            markers: TableStore::new(),
            root: 0,
            root_level,
        };
        // Domain creation: the model's allocations there never fail.
        let root = mem.alloc(TableOwner::Iommu, root_level);
        pt.root = init_pgtable(&mut pt, root, root_level, false);
        pt
    }

    /// No tables at all (shared EPT: the IOMMU walks the p2m).
    pub fn none(root_level: u8) -> Self {
        PgTables {
            entries: TableStore::new(),
            markers: TableStore::new(),
            root: 0,
            root_level,
        }
    }

    /// Root frame and level.
    pub fn root(&self) -> (u64, u8) {
        (self.root, self.root_level)
    }

    /// Tables by frame, ascending.
    pub fn frames(&self) -> impl Iterator<Item = (u64, &Table<E>)> {
        self.entries.frames()
    }

    /// Number of tables.
    pub fn table_count(&self) -> usize {
        self.entries.len()
    }

    /// All 512 markers of the table in `t`.
    pub fn markers_of(&self, t: u64) -> Option<Vec<u8>> {
        self.markers.get(t).map(all_markers)
    }

    /// Entry `idx` of the table in `t` (zero if there is no such table).
    pub(crate) fn entry(&self, t: u64, idx: u16) -> E {
        self.entries
            .get(t)
            .map(|tab| tab.get(idx))
            .unwrap_or_default()
    }

    /// `*pte = new` / `write_atomic(&pte->raw, new)`: the whole entry is written, so its
    /// marker field becomes 0.
    pub(crate) fn write(&mut self, t: u64, idx: u16, e: E) {
        if let Some(tab) = self.entries.get_mut(t) {
            tab.set(idx, e);
        }
        if let Some(mk) = self.markers.get_mut(t) {
            set_marker(mk, idx, 0);
        }
    }

    /// Writes the entries `[start, start + len)` as the run starting with `first`, leaving
    /// the markers alone (a fill of a prefilled page, or a run whose markers the caller
    /// sets with [`Self::update_contig_run_with`]).
    pub(crate) fn fill_entries(&mut self, t: u64, start: u16, len: u16, first: E) {
        if let Some(tab) = self.entries.get_mut(t) {
            tab.fill(start, len, first);
        }
    }

    /// `pt_update_contig_markers(table t, idx, level, kind)`.
    pub(crate) fn update_contig(&mut self, t: u64, idx: u16, level: u8, kind: PteKind) -> bool {
        self.update_contig_with(t, idx, level, kind, Slips::XEN)
    }

    /// The stored runs of `[lo, hi)` of the table in `t` with the gaps between them as
    /// zero entries: `(start, len, first)`, ascending and covering `[lo, hi)`.
    pub(crate) fn pieces(&self, t: u64, lo: u16, hi: u16) -> Vec<(u16, u16, E)> {
        let mut out = Vec::new();
        let mut at = lo;
        if let Some(tab) = self.entries.get(t) {
            for (s, l, e) in tab.iter_runs(lo, hi) {
                if s > at {
                    out.push((at, s - at, E::default()));
                }
                out.push((s, l, e));
                at = s + l;
            }
        }
        if at < hi {
            out.push((at, hi - at, E::default()));
        }
        out
    }

    /// Forgets the table in `t` (its frame was freed).
    pub(crate) fn remove(&mut self, t: u64) {
        self.entries.remove(t);
        self.markers.remove(t);
    }

    /// Makes sure the root has a table. Only a planted revision (`no-min-pt-levels`) can
    /// free the root while it is in use; Xen would then go on writing into the freed page,
    /// which this model does by giving the root frame an empty table again.
    pub(crate) fn ensure_root(&mut self) {
        if self.root != 0 && self.entries.get(self.root).is_none() {
            self.entries.insert(self.root, self.root_level);
            self.markers.insert(self.root, self.root_level);
            if let Some(mk) = self.markers.get_mut(self.root) {
                *mk = markers_cleared();
            }
        }
    }
}

impl<E: IoPte> IoTables for PgTables<E> {
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
        let Some(tab) = self.entries.get(t) else {
            return false;
        };
        let level = tab.level;
        for (s, l, e) in tab.iter_runs(lo, hi.min(ENTRIES)) {
            f(s, l, e.io_entry(level));
        }
        true
    }
}

/// `iommu_identity_mapping(d, p2ma, base, end, flag)` (`x86/iommu.c:224-308`) for the
/// frames `[base, base + nr)`: `add` is an assignment (`p2ma` the range's access),
/// otherwise a deassignment (Xen's `p2m_access_x`). The same range again: another
/// reference (`-EADDRINUSE` with another access), or on removal one reference fewer and,
/// at the last, `p2m_remove_identity_entry` on every page (any failure: `-ENXIO`). A range
/// overlapping another one: `-EADDRINUSE`; removing an unknown one: `-ENOENT`. A new range
/// is listed before its pages are mapped, so a failure after the first page keeps it
/// listed with the pages mapped so far (a failure at the first page unlists it).
pub fn iommu_identity_mapping(
    p2m: &mut crate::master::domain::P2m,
    cx: &mut crate::master::domain::Cx,
    base: u64,
    nr: u64,
    p2ma: crate::types::P2mAccess,
    add: bool,
) -> crate::physmap::BatchOutcome {
    use crate::master::iommu::IdentityMapRange;
    use crate::master::p2m_typed::{p2m_add_identity_entry, p2m_remove_identity_entry};
    use crate::physmap::{BatchOutcome, PhysmapError};
    let end = base.saturating_add(nr);
    let out = |done: u64, rc: Result<(), PhysmapError>| BatchOutcome { done, rc };
    let maps = &mut cx.iommu.identity_maps;
    if let Some(k) = maps.iter().position(|m| m.base == base && m.end == end) {
        if add {
            if maps[k].access != p2ma {
                return out(0, Err(PhysmapError::AddrInUse));
            }
            maps[k].count += 1;
            return out(0, Ok(()));
        }
        maps[k].count -= 1;
        if maps[k].count > 0 {
            return out(0, Ok(()));
        }
        maps.remove(k);
        let mut rc = Ok(());
        for pfn in base..end {
            if p2m_remove_identity_entry(p2m, cx, pfn).is_err() {
                rc = Err(PhysmapError::NxIo);
            }
        }
        return out(nr, rc);
    }
    // Xen's test `end >= map->base && map->end >= base` on byte addresses, with `end` the
    // last byte of the new range: frames overlapping (or adjoining from below).
    if maps.iter().any(|m| end > m.base && m.end >= base) {
        return out(0, Err(PhysmapError::AddrInUse));
    }
    if !add {
        return out(0, Err(PhysmapError::NoEnt));
    }
    maps.push(IdentityMapRange {
        base,
        end,
        access: p2ma,
        count: 1,
    });
    for pfn in base..end {
        if let Err(e) = p2m_add_identity_entry(p2m, cx, pfn, p2ma) {
            if pfn == base {
                cx.iommu
                    .identity_maps
                    .retain(|m| m.base != base || m.end != end);
            }
            return out(pfn - base, Err(e));
        }
    }
    out(nr, Ok(()))
}

/// `iommu_alloc_pgtable(hd, contig_mask)` (`x86/iommu.c:621-674`): a new table frame at
/// `level`, its markers prefilled (`contig`, `:639-657`) or cleared (`:659-660`), entries
/// all null; `None` when the allocation fails (`:631-633`).
pub(crate) fn iommu_alloc_pgtable<E: IoPte>(
    pt: &mut PgTables<E>,
    mem: &mut MachineMemory,
    level: u8,
    contig: bool,
) -> Option<u64> {
    let t = mem.try_alloc(TableOwner::Iommu, level)?;
    Some(init_pgtable(pt, t, level, contig))
}

/// Sets up the freshly allocated frame `t` as a table at `level` (see
/// [`iommu_alloc_pgtable`]).
fn init_pgtable<E: IoPte>(pt: &mut PgTables<E>, t: u64, level: u8, contig: bool) -> u64 {
    pt.entries.insert(t, level);
    pt.markers.insert(t, level);
    if !contig {
        if let Some(mk) = pt.markers.get_mut(t) {
            *mk = markers_cleared();
        }
    }
    t
}

/// A table on the per-CPU `free_pgt_list` (`x86/iommu.c:682`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct QueuedTable {
    /// Its frame.
    pub frame: u64,
    /// Its level.
    pub level: u8,
    /// Allocation generation of the frame when it was queued.
    pub generation: u32,
    /// Guest frames it translated.
    pub span: GfnRange,
}

/// Turns the old content of an entry about to be overwritten into cache records
/// ([`note_overwrite`]); an old pointer to a table (as the hardware reads it) unlinks that
/// table, which must then be freed or queued by the end of the op (`leaked-table`). The
/// leak check sees this independently of the vendor's `queue_free_pt` decision.
pub(crate) fn note_old<E: IoPte>(
    hd: &mut Hd,
    pt: &PgTables<E>,
    cx: &mut IoCx,
    span: GfnRange,
    level: u8,
    old: E,
) {
    if let IoEntry::Next {
        table, level: l, ..
    } = old.io_entry(level)
    {
        cx.log.unlink(cx.mem, table, TableOwner::Iommu, l, span);
    }
    note_overwrite(
        hd.caches,
        pt,
        cx.mem,
        span,
        level,
        old.io_entry(level),
        cx.seq,
    );
}

/// A table was unlinked from its parent (the pointer overwritten or cleared), then
/// `iommu_queue_free_pgtable(hd, pg)` (`x86/iommu.c:707-718`): onto the queue, freed when
/// the queue is drained; with `free_queue_deferred == false` (planted) freed at once.
pub(crate) fn iommu_queue_free_pgtable<E: IoPte>(
    hd: &mut Hd,
    pt: &mut PgTables<E>,
    cx: &mut IoCx,
    frame: u64,
    level: u8,
    span: GfnRange,
) {
    cx.log.unlink(cx.mem, frame, TableOwner::Iommu, level, span);
    queue_table(hd, pt, cx, frame, level, span);
}

/// Queues the root table itself without unlinking it: only the planted
/// `free_loop_level_bound == false` gets here (the context / device table entries still
/// point at the root).
pub(crate) fn iommu_queue_free_root<E: IoPte>(hd: &mut Hd, pt: &mut PgTables<E>, cx: &mut IoCx) {
    let (root, level) = (pt.root, pt.root_level);
    let span = GfnRange {
        start: 0,
        end: crate::tables::pages_per_table(level),
    };
    hd.ctr.iommu_tables_freed_empty += 1;
    queue_table(hd, pt, cx, root, level, span);
}

/// The queueing half of [`iommu_queue_free_pgtable`].
fn queue_table<E: IoPte>(
    hd: &mut Hd,
    pt: &mut PgTables<E>,
    cx: &mut IoCx,
    frame: u64,
    level: u8,
    span: GfnRange,
) {
    hd.ctr.iommu_tables_queued += 1;
    if hd.dont_flush {
        hd.ctr.iommu_queued_while_dont_flush += 1;
    }
    let q = QueuedTable {
        frame,
        level,
        generation: cx.mem.info(frame).map_or(0, |i| i.generation),
        span,
    };
    if cx.sw.free_queue_deferred {
        hd.queue.push(q);
    } else {
        free_pgtable(hd, pt, cx, q);
    }
}

/// `free_domheap_page` of one queued table (`x86/iommu.c:692`), through the op log's
/// free check; the table's entries and markers go with the frame.
fn free_pgtable<E: IoPte>(hd: &mut Hd, pt: &mut PgTables<E>, cx: &mut IoCx, q: QueuedTable) {
    let same = cx.mem.info(q.frame).map(|i| i.generation) == Some(q.generation);
    if same {
        note_orphaned_children(pt, cx, q);
    }
    cx.log.free_tables(
        cx.mem,
        &*pt,
        hd.caches.records(),
        TableOwner::Iommu,
        &[(q.frame, q.level)],
        q.span,
    );
    if same {
        pt.remove(q.frame);
    }
}

/// The tables a table about to be freed still points at (as the hardware reads its
/// entries) are unlinked with it: nothing reaches them once it is gone, so each must be
/// freed or queued too (`leaked-table` otherwise). Walks the table's entries as stored,
/// independently of the vendor's `queue_free_pt` recursion.
fn note_orphaned_children<E: IoPte>(pt: &PgTables<E>, cx: &mut IoCx, q: QueuedTable) {
    let per = pages_per_entry(q.level);
    for (s, l, e) in pt.pieces(q.frame, 0, ENTRIES) {
        if let IoEntry::Next { table, level, .. } = e.io_entry(q.level) {
            for i in s..s + l {
                let start = q.span.start + i as u64 * per;
                let span = GfnRange::of_order(start, 9 * (q.level as u32 - 1));
                cx.log.unlink(cx.mem, table, TableOwner::Iommu, level, span);
            }
        }
    }
}

/// The tasklet `free_queued_pgtables` (`x86/iommu.c:684-705`): frees every queued table, in
/// the order queued.
pub(crate) fn free_queued_pgtables<E: IoPte>(hd: &mut Hd, pt: &mut PgTables<E>, cx: &mut IoCx) {
    if hd.queue.is_empty() {
        return;
    }
    crate::stats::bump(&mut hd.ctr.iommu_drains_nonempty, 1);
    let queued = std::mem::take(hd.queue);
    for q in queued {
        free_pgtable(hd, pt, cx, q);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::vtd_iommu::DmaPte;
    use crate::types::IommuPerm;

    #[test]
    fn alloc_prefills_or_clears_markers() {
        let mut mem = MachineMemory::new();
        let mut pt: PgTables<DmaPte> = PgTables::with_root(&mut mem, 4);
        let root = pt.root().0;
        assert!(pt.markers_of(root).unwrap().iter().all(|&m| m == 0));
        let t = iommu_alloc_pgtable(&mut pt, &mut mem, 1, true).expect("no failure armed");
        let mk = pt.markers_of(t).unwrap();
        assert_eq!((mk[0], mk[1], mk[2], mk[4], mk[256]), (9, 0, 1, 2, 8));
        assert!(mem.is_live_table(t, TableOwner::Iommu));
        assert_eq!(pt.table_count(), 2);
    }

    #[test]
    fn pieces_cover_the_range_with_gaps_as_null() {
        let mut mem = MachineMemory::new();
        let mut pt: PgTables<DmaPte> = PgTables::with_root(&mut mem, 4);
        let t = iommu_alloc_pgtable(&mut pt, &mut mem, 1, true).expect("no failure armed");
        pt.fill_entries(t, 10, 5, DmaPte::leaf(0x100, IommuPerm::RW, false));
        pt.write(t, 20, DmaPte::leaf(0x900, IommuPerm::R, false));
        let p = pt.pieces(t, 8, 22);
        let starts: Vec<(u16, u16)> = p.iter().map(|&(s, l, _)| (s, l)).collect();
        assert_eq!(starts, vec![(8, 2), (10, 5), (15, 5), (20, 1), (21, 1)]);
        assert_eq!(p[0].2, DmaPte(0));
        assert_eq!(pt.entry(t, 12).addr(), 0x102);
        assert_eq!(
            pt.markers_of(t).unwrap()[20],
            0,
            "a write clears the marker"
        );
        assert_eq!(entry_span(0x40205, 2), GfnRange::of_order(0x40200, 9));
    }
}
