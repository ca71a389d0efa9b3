//! The 4 KiB chunk loop of `p2m_set_entry` (`p2m.c:450-466`) over one level-1 table of
//! p2m-pt, as one step: what shadow mode does for every extent (4 KiB chunks only), and
//! HAP for a misaligned or `INVALID_MFN` one.
//!
//! Each `p2m_pt_set_entry(gfn + i, mfn + i, 0, t, a)` of the loop walks to the same
//! level-1 table, reads its entry, writes the new one and, with separate IOMMU tables,
//! maps or unmaps that one page when its IOMMU view changes (`p2m-pt.c:668-690`). When
//! nothing on the walk can change between the calls, the calls differ only in the entry
//! they read and write, and separate IOMMU tables do not see the p2m, so the writes and
//! the per-page IOMMU calls commute: writing the run at once, then issuing the IOMMU calls
//! in page order (one range call per stretch of pages whose step runs, which the IOMMU
//! model carries out as its per-page loop), leaves the same tables, frames, cache records,
//! invalidations and allocation order. The conditions for that, checked before anything
//! is written (else the caller makes the literal call):
//!
//! - the IOMMU does not walk the p2m (`iommu_hap_pt_share` off: no cache record of an
//!   overwritten entry, no shared flush whose scope depends on the page);
//! - the walk to the table passes present, unmarked pointers only (`do_recalc` and
//!   `p2m_next_level` change nothing), and no entry of the run carries a recalc mark;
//! - the frames advance with the gfn (`INVALID_MFN` stays the same for every chunk, so
//!   it is taken only for an empty entry unmapped from the IOMMU).
//!
//! `tests/pt_run.rs` replays random scenarios with the step and with the literal loop
//! ([`P2mPt::run_fast_path`] off) and compares the whole domain after every op.

use super::*;
use crate::xen46::p2m::{chunk_mfn, for_each_chunk};

impl P2mPt {
    /// `pages` consecutive 4 KiB `p2m_pt_set_entry` calls from `(gfn, mfn)`, all in one
    /// level-1 table, as one step (see the module doc); `None` when a condition fails
    /// and nothing was done.
    pub fn set_entry_run_4k(
        &mut self,
        cx: &mut Cx,
        gfn: u64,
        mfn: Mfn,
        pages: u64,
        p2mt: P2mType,
    ) -> Option<()> {
        if !self.run_fast_path
            || Self::shares_tables(cx)
            || pages < 2
            || gfn / 512 != (gfn + pages - 1) / 512
            || p2mt == P2mType::MapForeign
            || (gfn + pages - 1) >> GFN_BITS != 0
        {
            return None;
        }
        // The walk: present, unmarked pointers down to the level-1 table.
        let mut t = self.root;
        for level in (2..=4u8).rev() {
            let e = self.entry(t, index_of(gfn, level));
            if !e.present() || e.pse() || pt_needs_recalc(e.flags) {
                return None;
            }
            t = e.pfn;
        }
        let l1 = t;
        let idx = index_of(gfn, 1);
        let len = pages as u16;
        let old: Vec<(u16, u16, PtEntry)> = self.tables.get(l1)?.runs_in(idx, idx + len);
        if old
            .iter()
            .any(|(_, _, e)| e.present() && pt_needs_recalc(e.flags))
        {
            return None;
        }
        let cond = cx.sw.pt_iommu_conditions;
        let iommu_pte_flags = p2m_get_iommu_flags(p2mt);
        let content = Self::leaf_4k_content(cx, mfn, p2mt);
        let wrote_empty = content == PtEntry::default();
        let flags = if cx.sw.iommu_flags_require_present_entry && wrote_empty {
            IommuPerm::NONE
        } else {
            iommu_pte_flags
        };
        // `p2m_set_entry` hands every chunk `INVALID_MFN` itself: frames that do not
        // advance with the gfn, so only an empty entry unmapped from the IOMMU is uniform.
        if mfn == INVALID_MFN && (!wrote_empty || !flags.is_none()) {
            return None;
        }
        // Which pages' IOMMU step runs (`p2m-pt.c:668-672`), from the entries they replace.
        let new_flags = iommu_pte_flags.bits();
        let mut step = vec![false; pages as usize];
        for_each_chunk(&old, idx, pages, |k, cur| {
            step[k] = Self::chunk_step(cond, cur, new_flags, mfn, k as u64);
        });
        self.run_steps += 1;
        self.write_run(cx, l1, 1, gfn, len, content);
        if p2mt != P2mType::Invalid {
            self.recalc_state.note_mapped(gfn + pages - 1, 0);
        }
        if cx.iommu.need_iommu {
            cx.iommu_map_stretches(gfn, mfn, &step, flags);
        }
        Some(())
    }

    /// Whether the IOMMU step of the chunk `k` pages into the run runs: the literal call's
    /// decision ([`P2mPt::iommu_step_runs`]) on the entry it would read.
    fn chunk_step(cond: PtIommuConditions, cur: PtEntry, new_flags: u32, mfn: Mfn, k: u64) -> bool {
        let old_flags = iommu_flags_of_raw_type(p2m_flags_to_type(cur.flags)).bits();
        Self::iommu_step_runs(cond, old_flags, cur.pfn, new_flags, chunk_mfn(mfn, k))
    }
}
