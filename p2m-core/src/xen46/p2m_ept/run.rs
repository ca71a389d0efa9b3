//! The 4 KiB chunk loop of `p2m_set_entry` (`p2m.c:450-466`) over one level-1 EPT table,
//! as one step: what HAP does for a misaligned or `INVALID_MFN` extent (the same idea as
//! `p2m_pt::run`, whose module doc gives the argument).
//!
//! Each `ept_set_entry(gfn + i, mfn + i, 0, t, a)` walks to the same level-1 table, reads
//! its entry, computes `need_modify_vtd_table` from it and, with separate VT-d/AMD tables,
//! maps or unmaps that one page when it is set (`p2m-ept.c:826-853`). The step takes the
//! loop when:
//!
//! - the IOMMU does not walk the EPT (`iommu_hap_pt_share` off);
//! - the walk passes present, non-superpage entries without a misconfiguration mark
//!   (`resolve_misconfig` and `ept_next_level` change nothing), and no entry of the run
//!   carries one;
//! - the frames advance with the gfn and share one memory type (`epte_get_entry_emt`:
//!   both ends of the run valid, or both not), or the entry is empty and unmapped from the
//!   IOMMU (`INVALID_MFN` stays itself);
//! - the type is not `map_foreign` (its own checks).
//!
//! `harness/tests/run_steps.rs` compares it with the literal loop ([`Ept::run_fast_path`]).

use super::*;
use crate::xen46::p2m::for_each_chunk;

impl Ept {
    /// `pages` consecutive 4 KiB `ept_set_entry` calls from `(gfn, mfn)`, all in one
    /// level-1 table, as one step (see the module doc); `None` when a condition fails and
    /// nothing was done.
    pub fn set_entry_run_4k(
        &mut self,
        cx: &mut Cx,
        gfn: u64,
        mfn: Mfn,
        pages: u64,
        p2mt: P2mType,
        p2ma: P2mAccess,
    ) -> Option<()> {
        let last = gfn + pages - 1;
        if !self.run_fast_path
            || cx.cfg.iommu_hap_pt_share
            || pages < 2
            || gfn / 512 != last / 512
            || p2mt == P2mType::MapForeign
            || last >> GFN_BITS != 0
        {
            return None;
        }
        let mut t = self.root;
        for level in (2..=4u8).rev() {
            let e = self.entry(t, index_of(gfn, level));
            if !e.is_present() || e.sp || e.emt_invalid {
                return None;
            }
            t = e.mfn;
        }
        let idx = index_of(gfn, 1);
        let len = pages as u16;
        let old: Vec<(u16, u16, EptEntry)> = self.tables.get(t)?.runs_in(idx, idx + len);
        if old.iter().any(|(_, _, e)| e.emt_invalid) {
            return None;
        }
        let keeps_frame = mfn.is_valid()
            || p2mt == P2mType::MmioDirect
            || p2mt == P2mType::RamPaged
            || p2mt == P2mType::RamPagingIn;
        let iommu_flags = p2m_get_iommu_flags(p2mt);
        let flags = if cx.sw.iommu_flags_require_present_entry && !keeps_frame {
            IommuPerm::NONE
        } else {
            iommu_flags
        };
        if mfn == INVALID_MFN && (keeps_frame || !flags.is_none()) {
            return None;
        }
        if mfn != INVALID_MFN && mfn.is_valid() != Mfn(mfn.0.wrapping_add(pages - 1)).is_valid() {
            return None;
        }
        let mut new_entry = EptEntry::default();
        if keeps_frame {
            new_entry.sa_p2mt = p2mt as u8;
            new_entry.access = p2ma as u8;
            new_entry.mfn = mfn.0 & PTE_MFN_MASK;
            new_entry.emt = epte_get_entry_emt(mfn, p2mt);
            ept_p2m_type_to_flags(&mut new_entry, p2mt, p2ma);
        }
        // `need_modify_vtd_table` of each chunk, from the entry it replaces.
        let mut modify = vec![true; pages as usize];
        if keeps_frame {
            let mut cleared = 0;
            let mut page = |k: usize, cur: EptEntry, cx: &Cx| {
                let new = new_entry.nth(k as u64, 1);
                if !Self::vtd_table_unchanged(cx, cur, 1, new, iommu_flags) {
                    return;
                }
                modify[k] = false;
                cleared += 1;
            };
            for_each_chunk(&old, idx, pages, |k, cur| page(k, cur, cx));
            bump(&mut cx.stats.need_modify_cleared, cleared);
        }
        self.run_steps += 1;
        self.write_run(cx, t, 1, gfn, len, new_entry);
        if p2mt != P2mType::Invalid {
            self.recalc_state.note_mapped(last, 0);
        }
        if cx.iommu.need_iommu {
            cx.iommu_map_stretches(gfn, mfn, &modify, flags);
        }
        Some(())
    }
}
