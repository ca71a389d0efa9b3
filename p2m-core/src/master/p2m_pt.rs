//! p2m-pt of the master line: `xen/arch/x86/mm/p2m-pt.c` at `c447b7308b`, used by NPT
//! (HAP on AMD) and shadow mode.
//!
//! On master no IOMMU walks these tables (AMD sharing is gone, shadow never shared), so
//! every change `set_entry` makes reaches the IOMMU through `iommu_legacy_map` /
//! `iommu_legacy_unmap`; the lazy type change below never reaches it.
//!
//! Entries keep Xen's "flags" word: bits 0-11 are PTE bits 0-11, bits 12-23 are PTE bits
//! 52-63 (`get_pte_flags`); the p2m type sits in flags bits 12-18.
//!
//! The lazy type change is modelled: `p2m_pt_change_entry_type_range` /
//! `p2m_pt_change_entry_type_global` mark entries by clearing `RECALC_FLAGS`
//! (`_PAGE_USER | _PAGE_ACCESSED`) on them, `p2m_pt_get_entry` reports the recalculated
//! type under a mark, and `do_recalc` (at the start of `set_entry`, or [`P2mPt::recalc`]
//! for an NPT fault / `p2m->recalc`) pushes marks down and rewrites the leaf, through
//! `write_p2m_entry` only (no IOMMU call). `max_mapped_pfn` is kept in
//! [`P2mPt::recalc_state`]; `p2m_pt_get_entry`'s early return above it is not modelled
//! (nothing but empty or `invalid` entries lies there, which read the same).
//! Not modelled: `write_p2m_entry`'s CPU and nested-p2m flushes, the TLB flush of
//! `p2m_pt_change_entry_type_global`, `check_entry`'s debug assertions, `do_recalc`'s
//! "bogus recalc" debug messages.

use crate::frames::{MachineMemory, TableOwner};
use crate::master::domain::Cx;
use crate::master::p2m::{
    cpu_extents_of, p2m_allows_invalid_mfn, p2m_entry_modify_bugs, p2m_get_iommu_flags,
    p2m_is_any_ram, p2m_is_changeable, p2m_is_paging, p2m_is_pod, p2m_is_valid,
    p2m_recalc_type_range, recalc_type_of, type_of_raw, EntryKind, BUG_SPECIAL_TYPE_ABOVE_4K,
    IOREQ_MEM_ACCESS_WRITE, P2M_IOREQ_SERVER,
};
use crate::master::revision::Switches;
use crate::recalc::{overlay_recalc, LogdirtyOverlap, RecalcState};
use crate::stats::bump_if;
use crate::tables::{index_of, pages_per_entry, Pte, TableStore};
use crate::types::*;
use crate::view::{CpuExtent, P2mEntry};

/// `_PAGE_PRESENT` (`asm/page.h:299`).
pub const PAGE_PRESENT: u32 = 0x001;
/// `_PAGE_RW` (`asm/page.h:300`).
pub const PAGE_RW: u32 = 0x002;
/// `_PAGE_USER` (`asm/page.h:301`).
pub const PAGE_USER: u32 = 0x004;
/// `_PAGE_PWT` (`asm/page.h:302`).
pub const PAGE_PWT: u32 = 0x008;
/// `_PAGE_PCD` (`asm/page.h:303`).
pub const PAGE_PCD: u32 = 0x010;
/// `_PAGE_ACCESSED` (`asm/page.h:304`).
pub const PAGE_ACCESSED: u32 = 0x020;
/// `_PAGE_DIRTY` (`asm/page.h:305`).
pub const PAGE_DIRTY: u32 = 0x040;
/// `_PAGE_PSE` (`asm/page.h:307`).
pub const PAGE_PSE: u32 = 0x080;
/// `_PAGE_UCM` (`asm/page.h:326`).
pub const PAGE_UCM: u32 = PAGE_PCD;
/// `_PAGE_UC` (`asm/page.h:327`).
pub const PAGE_UC: u32 = PAGE_PCD | PAGE_PWT;
/// `_PAGE_NX_BIT` (PTE bit 63 as a flag, `asm/x86_64/page.h:128`).
pub const PAGE_NX_BIT: u32 = 1 << 23;
/// `P2M_BASE_FLAGS` (`p2m-pt.c:44-45`).
pub const P2M_BASE_FLAGS: u32 = PAGE_PRESENT | PAGE_USER | PAGE_DIRTY | PAGE_ACCESSED;
/// Mask of the frame field of `p2m_l2e_from_pfn` / `p2m_l3e_from_pfn` (`p2m-pt.c:37-40`):
/// 40 bits without `_PAGE_PSE_PAT`'s frame bit 0.
pub const PSE_PFN_MASK: u64 = PTE_MFN_MASK & !1;

/// `RECALC_FLAGS` (`p2m-pt.c:48`): the bits `set_recalc` clears and `clear_recalc` sets
/// again (`:49-50`).
pub const RECALC_FLAGS: u32 = PAGE_USER | PAGE_ACCESSED;

/// `_needs_recalc(flags)` (`p2m-pt.c:51`): `_PAGE_USER` clear (meaningful on a present
/// entry only).
pub fn needs_recalc(flags: u32) -> bool {
    flags & PAGE_USER == 0
}

/// An `l1_pgentry_t` of the p2m at any level (`asm/x86_64/page.h:65`): frame and the
/// flags word of `get_pte_flags` (`:104`).
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct PtEntry {
    /// `l1e_get_pfn()`: 40-bit frame.
    pub pfn: u64,
    /// `l1e_get_flags()`: 24-bit flags word.
    pub flags: u32,
}

impl PtEntry {
    /// `_PAGE_PRESENT` set (`l1e_get_flags(e) & _PAGE_PRESENT`).
    pub fn present(&self) -> bool {
        self.flags & PAGE_PRESENT != 0
    }
    /// `_PAGE_PSE` set (a superpage at level 2 or 3).
    pub fn pse(&self) -> bool {
        self.flags & PAGE_PSE != 0
    }
    /// `p2m_flags_to_type(l1e_get_flags(e))` as a type.
    pub fn p2mt(&self) -> P2mType {
        type_of_raw(p2m_flags_to_type(self.flags))
    }
}

impl Pte for PtEntry {
    fn nth(&self, k: u64, level: u8) -> Self {
        let leaf = level == 1 || self.pse() || !self.present();
        if leaf && *self != PtEntry::default() {
            PtEntry {
                pfn: self
                    .pfn
                    .wrapping_add(k.wrapping_mul(pages_per_entry(level)))
                    & PTE_MFN_MASK,
                ..*self
            }
        } else {
            *self
        }
    }
}

/// Models `p2m_type_to_flags()` (`p2m-pt.c:55-100`): the type in bits 12-18, then per
/// type: RW for `ram_rw`, `grant_map_rw`, `map_foreign`, `mmio_direct` outside
/// `mmio_ro_ranges`, `p2m_ioreq_server` unless writes are claimed; present without RW for
/// `ram_ro`, `ram_logdirty`, `ram_shared`, `grant_map_ro`; not present for the others.
pub fn p2m_type_to_flags(t: P2mType, mfn: Mfn) -> u32 {
    let flags = ((t as u32) & 0x7f) << 12;
    match t {
        P2mType::GrantMapRo => flags | P2M_BASE_FLAGS | PAGE_NX_BIT,
        P2M_IOREQ_SERVER => {
            let f = flags | P2M_BASE_FLAGS | PAGE_RW | PAGE_NX_BIT;
            if IOREQ_MEM_ACCESS_WRITE {
                f & !PAGE_RW
            } else {
                f
            }
        }
        P2mType::RamRo | P2mType::RamLogdirty | P2mType::RamShared => flags | P2M_BASE_FLAGS,
        P2mType::RamRw => flags | P2M_BASE_FLAGS | PAGE_RW,
        P2mType::GrantMapRw | P2mType::MapForeign => flags | P2M_BASE_FLAGS | PAGE_RW | PAGE_NX_BIT,
        P2mType::MmioDirect => {
            let cache = if in_mmio_ro_ranges(mfn) {
                PAGE_UC
            } else {
                PAGE_RW | PAGE_UCM
            };
            flags | cache | P2M_BASE_FLAGS
        }
        _ => flags | PAGE_NX_BIT,
    }
}

/// Models `p2m_flags_to_type()` (`asm/p2m.h:831-845`): `invalid` for empty flags, else
/// bits 12-18.
pub fn p2m_flags_to_type(flags: u32) -> u32 {
    if flags == 0 {
        P2mType::Invalid as u32
    } else {
        (flags >> 12) & 0x7f
    }
}

/// Models `p2m_flags_to_access()` (`p2m-pt.c:538-546`): `n` when not present, else `rw`
/// or `r` by `_PAGE_RW`. Switch `pt_flags_to_access_fixed` false: d1bb6c97c3's inverted
/// presence test (`n` when present).
pub fn p2m_flags_to_access(sw: &Switches, flags: u32) -> P2mAccess {
    let present = flags & PAGE_PRESENT != 0;
    if present != sw.pt_flags_to_access_fixed {
        return P2mAccess::N;
    }
    if flags & PAGE_RW != 0 {
        P2mAccess::Rw
    } else {
        P2mAccess::R
    }
}

/// The IOMMU flags `p2m_pt_set_entry` computes for an old present leaf (`:641-646`,
/// `:687-691`, `:715-720`): `p2m_get_iommu_flags` of its type, reconstructed access and
/// raw frame.
/// With the proposed fix `pt_mmio_old_flags_unknown` (not Xen), an old `mmio_direct` leaf
/// reads as `!0` (unequal to anything): its access, which decided the IOMMU flags it was
/// mapped with, is not in the PTE, so the step must run.
fn old_leaf_iommu_flags(sw: &Switches, e: PtEntry) -> u32 {
    if sw.pt_mmio_old_flags_unknown && e.p2mt() == P2mType::MmioDirect {
        return !0;
    }
    p2m_get_iommu_flags(sw, e.p2mt(), p2m_flags_to_access(sw, e.flags), Mfn(e.pfn)).bits()
}

/// The frame `get_entry` reports for a leaf whose frame field is `field`, `off` pages into
/// it: the field plus the offset, except that a clipped `INVALID_MFN` (all ones, or all
/// ones but bit 0 at 2 MiB / 1 GiB) reads as `INVALID_MFN` (Xen returns the raw field).
fn leaf_mfn(field: u64, off: u64) -> Mfn {
    if field >= PSE_PFN_MASK {
        INVALID_MFN
    } else {
        Mfn(field + off)
    }
}

/// The guest range of the entry covering `gfn` at `level` (`p2m_find_entry`,
/// `p2m-pt.c:168-185`).
fn entry_range(gfn: u64, level: u8) -> GfnRange {
    let per = pages_per_entry(level);
    GfnRange::of_order(gfn / per * per, 9 * (level as u32 - 1))
}

/// What `p2m_pt_set_entry` records about the entry it replaces (`p2m-pt.c:576-594`).
struct Old {
    /// `iommu_old_flags` (`!0` for a present intermediate entry).
    iommu_flags: u32,
    /// `old_mfn`.
    mfn: u64,
    /// `intermediate_entry`: a present non-leaf entry to free.
    intermediate: PtEntry,
}

/// The p2m-pt tables of a host p2m (`p2m->phys_table`, `asm/p2m.h:233`; `p2m_pt_init`,
/// `p2m-pt.c:1167`).
#[derive(Clone, Debug)]
pub struct P2mPt {
    /// Tables by frame.
    pub tables: TableStore<PtEntry>,
    /// The L4 root.
    pub root: u64,
    /// `p2m->logdirty_ranges`, `global_logdirty` and `max_mapped_pfn`: what `do_recalc`
    /// and `p2m_pt_get_entry` recalculate marked entries from.
    pub recalc_state: RecalcState,
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
        }
    }

    /// The entry `idx` of the table in frame `t` (zero when there is no such table).
    /// The frame of the table of `level` on the walk to `gfn` (for the `tbl:L` frame
    /// selector): `None` when an empty or superpage entry above it ends the walk.
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

    fn entry(&self, t: u64, idx: u16) -> PtEntry {
        self.tables.get(t).map(|x| x.get(idx)).unwrap_or_default()
    }

    /// Models `write_p2m_entry()` (`p2m-pt.c:108-163`; its `p2m_entry_modify` refusal is
    /// checked before the op starts): logs the entry's range as changed and a replaced
    /// pointer as unlinked. No IOMMU ever walks these tables on master.
    fn write(&mut self, cx: &mut Cx, t: u64, level: u8, gfn: u64, new: PtEntry) {
        let first = entry_range(gfn, level).start;
        self.write_run(cx, t, level, first, 1, new);
    }

    /// [`Self::write`] of the `len` consecutive entries from the one of `first` (all in
    /// the table `t`), the `k`-th set to `new.nth(k)`: what Xen does as `len`
    /// `write_p2m_entry` calls, at the cost of the runs. A pointer rewritten to the same
    /// table (a recalc mark set or cleared) is not an unlink.
    fn write_run(&mut self, cx: &mut Cx, t: u64, level: u8, first: u64, len: u16, new: PtEntry) {
        let per = pages_per_entry(level);
        let idx = index_of(first, level);
        // Rewriting an entry with its own value (a pointer whose recalc flag was already
        // clear) changes nothing anyone sees: the oracle need not look there.
        let same = len == 1 && self.tables.get(t).is_some_and(|tab| tab.get(idx) == new);
        if !same {
            cx.log.p2m_changed(GfnRange {
                start: first,
                end: first + len as u64 * per,
            });
        }
        let is_ptr = |e: PtEntry| level > 1 && e.present() && (level == 4 || !e.pse());
        if level > 1 {
            let old = self
                .tables
                .get(t)
                .into_iter()
                .flat_map(|tab| tab.iter_runs(idx, idx + len));
            for (s, l, o) in old {
                for k in 0..l {
                    let o = o.nth(k as u64, level);
                    if !is_ptr(o) {
                        break;
                    }
                    let i = (s + k - idx) as u64;
                    let n = new.nth(i, level);
                    if is_ptr(n) && n.pfn == o.pfn {
                        continue;
                    }
                    let range = GfnRange::of_order(first + i * per, 9 * (level as u32 - 1));
                    cx.log
                        .unlink(cx.mem, o.pfn, TableOwner::P2m, level - 1, range);
                }
            }
            for k in 0..len as u64 {
                let n = new.nth(k, level);
                if !is_ptr(n) {
                    break;
                }
                let range = GfnRange::of_order(first + k * per, 9 * (level as u32 - 1));
                cx.mem.set_span(n.pfn, range);
            }
        }
        if let Some(tab) = self.tables.get_mut(t) {
            tab.fill(idx, len, new);
        }
    }

    /// Models `p2m_next_level()` (`p2m-pt.c:213-318`) on the entry covering `gfn` in the
    /// table `t` at `level`: allocates a missing table (empty flags only: a non-present
    /// PoD entry is not empty), or splits a PSE entry (1 GiB → 2 MiB with the flags kept,
    /// 2 MiB → 4 KiB with `_PAGE_PSE` dropped), filling the new table before installing
    /// it; no IOMMU effect. Returns the next table's frame, or `-ENOMEM` (nothing written)
    /// when `p2m_alloc_ptp` fails (`:233-236`, `:272-274`).
    fn next_level(&mut self, cx: &mut Cx, t: u64, level: u8, gfn: u64) -> Result<u64, P2mError> {
        let e = self.entry(t, index_of(gfn, level));
        let child = level - 1;
        if e.flags == 0 {
            let nt = cx
                .mem
                .try_alloc(TableOwner::P2m, child)
                .ok_or(P2mError::TableNoMem)?;
            self.tables.insert(nt, child);
            self.write(
                cx,
                t,
                level,
                gfn,
                PtEntry {
                    pfn: nt,
                    flags: P2M_BASE_FLAGS | PAGE_RW,
                },
            );
            return Ok(nt);
        }
        if e.pse() && (level == 3 || level == 2) {
            let nt = cx
                .mem
                .try_alloc(TableOwner::P2m, child)
                .ok_or(P2mError::TableNoMem)?;
            cx.stats.superpage_splits += 1;
            cx.log.p2m_split(entry_range(gfn, level), "p2m_next_level");
            let (mut pfn, mut flags) = (e.pfn, e.flags);
            if level == 2 {
                // `_PAGE_PSE` becomes `_PAGE_PAT` when the frame's `_PAGE_PSE_PAT` bit was set.
                if pfn & 1 != 0 {
                    pfn -= 1;
                } else {
                    flags &= !PAGE_PSE;
                }
            }
            self.tables.insert(nt, child);
            let stride = pages_per_entry(child);
            if let Some(tab) = self.tables.get_mut(nt) {
                if pfn & (511 * stride) == 0 {
                    // `pfn | (i << shift)` is `pfn + i * stride`: one run.
                    tab.fill(0, 512, PtEntry { pfn, flags });
                } else {
                    for i in 0..512u16 {
                        let c = PtEntry {
                            pfn: pfn | (i as u64 * stride),
                            flags,
                        };
                        tab.set(i, c);
                    }
                }
            }
            self.write(
                cx,
                t,
                level,
                gfn,
                PtEntry {
                    pfn: nt,
                    flags: P2M_BASE_FLAGS | PAGE_RW,
                },
            );
            return Ok(nt);
        }
        // Present intermediate entry (a PSE root entry cannot exist).
        Ok(e.pfn)
    }

    /// Models `p2m_free_entry()` (`p2m-pt.c:187-206`) on the entry `e` of `order` whose
    /// guest range is `span`: frees its subtree (children first, as Xen recurses) through
    /// the op log's free check.
    fn free_entry(&mut self, cx: &mut Cx, e: PtEntry, order: u32, span: GfnRange) {
        let mut frames = Vec::new();
        self.collect_free(e, order, &mut frames);
        if frames.is_empty() {
            return;
        }
        let Cx {
            mem, iommu, log, ..
        } = cx;
        log.free_tables(
            mem,
            iommu.io_tables(),
            iommu.caches.records(),
            TableOwner::P2m,
            &frames,
            span,
        );
        for &(f, _) in &frames {
            self.tables.remove(f);
        }
    }

    /// The `(frame, level)` of every table `p2m_free_entry(e, order)` frees, children
    /// first: none at 4 KiB, for a non-present entry or a PSE leaf; otherwise the table,
    /// after recursing into it above 2 MiB.
    fn collect_free(&self, e: PtEntry, order: u32, out: &mut Vec<(u64, u8)>) {
        if order == 0 || !e.present() || e.pse() {
            return;
        }
        let tl = (order / 9) as u8;
        if order > 9 {
            if let Some(tab) = self.tables.get(e.pfn) {
                for (_, l, c) in tab.iter_runs(0, 512) {
                    if c.present() && !c.pse() {
                        for k in 0..l {
                            self.collect_free(c.nth(k as u64, tl), order - 9, out);
                        }
                    }
                }
            }
        }
        out.push((e.pfn, tl));
    }

    /// The old values of a 2 MiB / 1 GiB target entry (`:637-652`, `:711-726`): a present
    /// PSE leaf gives its frame and IOMMU flags; a present intermediate entry gives
    /// `iommu_old_flags = ~0` and is kept to be freed; anything else leaves 0 and
    /// `INVALID_MFN`.
    fn superpage_old(sw: &Switches, cur: PtEntry) -> Old {
        let mut o = Old {
            iommu_flags: 0,
            mfn: INVALID_MFN.0,
            intermediate: PtEntry::default(),
        };
        if cur.present() {
            if cur.pse() {
                o.mfn = cur.pfn;
                o.iommu_flags = old_leaf_iommu_flags(sw, cur);
            } else {
                o.iommu_flags = !0;
                o.intermediate = cur;
            }
        }
        o
    }

    /// Models `p2m_pt_set_entry()` (`p2m-pt.c:566-765`) on the host p2m.
    ///
    /// Xen checks nothing here; the model refuses what no caller passes and Xen would
    /// turn into garbage: an order other than 0, 9, 18 (`BadOrder`), a `gfn` (or `mfn`,
    /// unless `INVALID_MFN`) not aligned to it (`Misaligned`), and a gfn beyond four
    /// levels (`GfnOutOfRange`; Xen's `p2m_find_entry` gives `-ENOENT` before any change);
    /// and the `p2m_entry_modify` `BUG_ON` (`XenBug`). Then: `do_recalc(gfn)` (an error,
    /// `-ENOMEM` from a split, is returned), walk with `p2m_next_level`, record the old
    /// values, write the leaf (content only for a valid frame or a type allowing an invalid
    /// one), raise `max_mapped_pfn` for a type other than `invalid`, the IOMMU step of
    /// `:747-752` (switches
    /// `pt_step_checks_iommu_flags`, `pt_syncs_iommu`), then `p2m_free_entry` of a
    /// replaced intermediate entry.
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
        let mask = (1u64 << order) - 1;
        if gfn & mask != 0 || (mfn != INVALID_MFN && mfn.0 & mask != 0) {
            return Err(P2mError::Misaligned);
        }
        if gfn >> GFN_BITS != 0 {
            return Err(P2mError::GfnOutOfRange);
        }
        let level = (order / 9) as u8 + 1;
        let writes_type = mfn.is_valid() || p2m_allows_invalid_mfn(p2mt);
        if p2m_entry_modify_bugs(p2mt, level, writes_type) {
            return Err(P2mError::XenBug(BUG_SPECIAL_TYPE_ABOVE_4K));
        }
        // `:616-619`: pending type changes on the way to `gfn` first.
        self.recalc(cx, gfn)?;
        // Proposed fix `iommu_flags_require_present_entry` (not Xen): an entry written
        // without a frame grants the device nothing, also in the comparison below.
        let iommu_pte_flags =
            if sw.iommu_flags_require_present_entry && (!writes_type || mfn == INVALID_MFN) {
                IommuPerm::NONE
            } else {
                p2m_get_iommu_flags(&sw, p2mt, p2ma, mfn)
            };
        let type_flags = p2m_type_to_flags(p2mt, mfn);
        let superpage = |pfn: u64| PtEntry {
            pfn: pfn & PSE_PFN_MASK,
            flags: type_flags | PAGE_PSE,
        };

        let l3 = self.next_level(cx, self.root, 4, gfn)?;
        let old = if order == 18 {
            let o = Self::superpage_old(&sw, self.entry(l3, index_of(gfn, 3)));
            let content = if writes_type {
                superpage(mfn.0)
            } else {
                PtEntry::default()
            };
            self.write(cx, l3, 3, gfn, content);
            o
        } else {
            let l2 = self.next_level(cx, l3, 3, gfn)?;
            if order == 0 {
                let l1 = self.next_level(cx, l2, 2, gfn)?;
                // `:687-691`: a 4 KiB entry is always evaluated, present or not.
                let cur = self.entry(l1, index_of(gfn, 1));
                let o = Old {
                    iommu_flags: old_leaf_iommu_flags(&sw, cur),
                    mfn: cur.pfn,
                    intermediate: PtEntry::default(),
                };
                let content = if writes_type {
                    PtEntry {
                        pfn: mfn.0 & PTE_MFN_MASK,
                        flags: type_flags,
                    }
                } else {
                    PtEntry::default()
                };
                self.write(cx, l1, 1, gfn, content);
                o
            } else {
                let o = Self::superpage_old(&sw, self.entry(l2, index_of(gfn, 2)));
                let content = if writes_type {
                    superpage(mfn.0)
                } else {
                    PtEntry::default()
                };
                self.write(cx, l2, 2, gfn, content);
                o
            }
        };
        bump_if(
            &mut cx.stats.intermediate_replaced,
            old.intermediate.present(),
        );
        // `:742-745`: `max_mapped_pfn`.
        if p2mt != P2mType::Invalid {
            self.recalc_state.note_mapped(gfn, order);
        }

        // `:747-752`: the IOMMU step.
        let differ = if sw.pt_step_checks_iommu_flags {
            old.iommu_flags != iommu_pte_flags.bits() || old.mfn != mfn.0
        } else {
            old.mfn != mfn.0
        };
        let mut rc = Ok(());
        // `pt_syncs_iommu == false` (854a49a748 undone): no IOMMU step at all.
        if cx.need_iommu_pt_sync() && differ && sw.pt_syncs_iommu {
            let empty =
                sw.iommu_flags_require_present_entry && (!writes_type || mfn == INVALID_MFN);
            rc = if !iommu_pte_flags.is_none() && !empty {
                cx.iommu_legacy_map(gfn, mfn.0, 1 << order, iommu_pte_flags)
            } else {
                cx.iommu_legacy_unmap(gfn, 1 << order)
            };
        }
        count_unchanged_iommu_step(cx, differ);

        // `:754-760`: free the replaced intermediate tables after the IOMMU call.
        self.free_entry(cx, old.intermediate, order, GfnRange::of_order(gfn, order));
        rc
    }

    /// `set_recalc` on every present entry not yet marked among the entries
    /// `lo..hi` of the table `t` at `level` whose first gfn is `base` (the loops of
    /// `p2m_pt_set_recalc_range`, `p2m-pt.c:358-374`, `do_recalc`, `:435-452`, and
    /// `p2m_pt_change_entry_type_global`, `:950-969`): one `write_p2m_entry` per entry in
    /// Xen, one write per run here. Returns whether any entry was marked.
    fn mark_entries(
        &mut self,
        cx: &mut Cx,
        t: u64,
        level: u8,
        base: u64,
        lo: u16,
        hi: u16,
    ) -> bool {
        let runs: Vec<(u16, u16, PtEntry)> = match self.tables.get(t) {
            Some(tab) => tab
                .iter_runs(lo, hi)
                .filter(|&(_, _, e)| e.present() && !needs_recalc(e.flags))
                .collect(),
            None => return false,
        };
        let per = pages_per_entry(level);
        for &(s, l, e) in &runs {
            let marked = PtEntry {
                flags: e.flags & !RECALC_FLAGS,
                ..e
            };
            self.write_run(cx, t, level, base + s as u64 * per, l, marked);
        }
        !runs.is_empty()
    }

    /// Models `p2m_pt_set_recalc_range()` (`p2m-pt.c:320-382`): walks from the root to the
    /// table of `level` holding `first..=last` (which lie in one such table), stopping
    /// quietly at a non-present entry and splitting a superpage on the way
    /// (`p2m_next_level`, `-ENOMEM` when that fails), then marks the present entries of
    /// the range there. A gfn beyond four levels: `GfnOutOfRange` (Xen's `-EINVAL` /
    /// `-EIO` from `p2m_find_entry`).
    fn set_recalc_range(
        &mut self,
        cx: &mut Cx,
        level: u8,
        first: u64,
        last: u64,
    ) -> Result<(), P2mError> {
        if first >> GFN_BITS != 0 || last >> GFN_BITS != 0 {
            return Err(P2mError::GfnOutOfRange);
        }
        let mut t = self.root;
        for l in (level + 1..=4).rev() {
            if !self.entry(t, index_of(first, l)).present() {
                return Ok(());
            }
            t = self.next_level(cx, t, l, first)?;
        }
        let span = pages_per_entry(level) * 512;
        let base = first / span * span;
        let (lo, hi) = (index_of(first, level), index_of(last, level) + 1);
        self.mark_entries(cx, t, level, base, lo, hi);
        Ok(())
    }

    /// Models `p2m_pt_change_entry_type_range()` (`p2m-pt.c:976-1014`) over
    /// `first_gfn..=last_gfn` (`ot` and `nt` are unused, as in Xen: the new type comes from
    /// the rangeset when the mark is resolved). From 4 KiB upwards, the unaligned head and
    /// tail of the range are marked at the lowest level that fits them
    /// ([`Self::set_recalc_range`]: a superpage over a partly covered edge is split here,
    /// not at recalc time), the aligned middle at the level above. A range of the whole
    /// 2^36-page space marks nothing (the loop runs out of levels). The first error stops
    /// it, with what was marked before kept.
    pub fn change_entry_type_range(
        &mut self,
        cx: &mut Cx,
        ot: P2mType,
        nt: P2mType,
        first_gfn: u64,
        last_gfn: u64,
    ) -> Result<(), P2mError> {
        let _ = (ot, nt);
        crate::recalc::for_each_range_piece(first_gfn, last_gfn, |level, first, last| {
            self.set_recalc_range(cx, level, first, last).map(|_| ())
        })
    }

    /// Models `p2m_pt_change_entry_type_global()` (`p2m-pt.c:936-974`; `ot`, `nt` unused):
    /// marks every present, unmarked L4 entry. The TLB flush is not modelled.
    pub fn change_entry_type_global(&mut self, cx: &mut Cx, ot: P2mType, nt: P2mType) {
        let _ = (ot, nt);
        self.mark_entries(cx, self.root, 4, 0, 0, 512);
    }

    /// Models `do_recalc(p2m, gfn)` (`p2m-pt.c:390-515`; what
    /// `p2m_pt_handle_deferred_changes`, `:517-536`, runs on an NPT fault, `p2m->recalc`,
    /// and the start of `p2m_pt_set_entry`). Walking down to `gfn`: a non-present entry
    /// ends it; a superpage stops the walk unless it is marked, changeable and only partly
    /// log-dirty (`p2m_is_logdirty_range` < 0), when `p2m_next_level` splits it (children
    /// inherit the mark); a marked pointer has its mark pushed onto every present entry of
    /// the table below, then cleared. The leaf reached, if present and marked, gets the
    /// type `p2m_recalc_type_range` gives over its whole range — rewritten with
    /// `p2m_type_to_flags` (a superpage keeps `_PAGE_PSE` and loses the `_PAGE_PSE_PAT`
    /// frame bit) when it differs, else just unmarked. Every write is a plain
    /// `write_p2m_entry`: no IOMMU call. `Ok(true)` when an entry was written; `Err` (only
    /// `TableNoMem`, from a split) keeps what was written before it. A gfn beyond four
    /// levels: `Ok(false)`.
    pub fn recalc(&mut self, cx: &mut Cx, gfn: u64) -> Result<bool, P2mError> {
        if gfn >> GFN_BITS != 0 {
            return Ok(false);
        }
        let mut done = false;
        let mut t = self.root;
        let mut level = 4u8;
        while level > 1 {
            let idx = index_of(gfn, level);
            let e = self.entry(t, idx);
            if !e.present() {
                return Ok(done);
            }
            if e.pse() {
                let r = entry_range(gfn, level);
                let overlap = self.recalc_state.is_logdirty_range(r.start, r.end - 1);
                if !needs_recalc(e.flags)
                    || !p2m_is_changeable(e.p2mt())
                    || overlap != LogdirtyOverlap::Partial
                {
                    break;
                }
            }
            let child = self.next_level(cx, t, level, gfn)?;
            let e = self.entry(t, idx);
            if needs_recalc(e.flags) {
                let span = pages_per_entry(level);
                self.mark_entries(cx, child, level - 1, gfn / span * span, 0, 512);
                let cleared = PtEntry {
                    flags: e.flags | RECALC_FLAGS,
                    ..e
                };
                self.write(cx, t, level, gfn, cleared);
                done = true;
            }
            t = child;
            level -= 1;
        }
        let e = self.entry(t, index_of(gfn, level));
        if e.present() && needs_recalc(e.flags) {
            let r = entry_range(gfn, level);
            let ot = e.p2mt();
            let nt = p2m_recalc_type_range(true, ot, &self.recalc_state, r.start, r.end - 1);
            let new = if nt != ot {
                let flags = p2m_type_to_flags(nt, Mfn(e.pfn));
                if level > 1 {
                    // `_PAGE_PAT` (= `_PAGE_PSE`) is never in `p2m_type_to_flags`' result.
                    PtEntry {
                        pfn: e.pfn & !1,
                        flags: flags | PAGE_PSE,
                    }
                } else {
                    PtEntry { pfn: e.pfn, flags }
                }
            } else {
                PtEntry {
                    flags: e.flags | RECALC_FLAGS,
                    ..e
                }
            };
            self.write(cx, t, level, gfn, new);
            done = true;
        }
        Ok(done)
    }

    /// Models `p2m_pt_get_entry()` (`p2m-pt.c:767-934`) for a query without `P2M_ALLOC`
    /// (access is always `rwx` on p2m-pt): a non-present entry gives Xen's defaults
    /// (`None`) unless it is PoD (`populate_on_demand`, `INVALID_MFN`) or, at 4 KiB, a
    /// paging type; a present leaf under a mark (its own or a pointer's on the way) reports
    /// `p2m_recalc_type(gfn)`, computed without writing; a superpage leaf reports its frame
    /// only for `p2m_is_valid` types, a 4 KiB leaf for `p2m_is_valid` or `p2m_is_any_ram`
    /// ones (grants: `INVALID_MFN` at 2 MiB / 1 GiB, their frame at 4 KiB).
    pub fn get_entry(&self, gfn: u64) -> Option<P2mEntry> {
        if gfn >> GFN_BITS != 0 {
            return None;
        }
        let l4e = self.entry(self.root, index_of(gfn, 4));
        if !l4e.present() {
            return None;
        }
        let mut recalc = needs_recalc(l4e.flags);
        let mut t = l4e.pfn;
        for level in [3u8, 2] {
            let e = self.entry(t, index_of(gfn, level));
            if !e.present() {
                return p2m_is_pod(e.p2mt()).then_some(POD_READING);
            }
            recalc |= needs_recalc(e.flags);
            if e.pse() {
                let p2mt = p2m_recalc_type_range(recalc, e.p2mt(), &self.recalc_state, gfn, gfn);
                let off = gfn & (pages_per_entry(level) - 1);
                let mfn = if p2m_is_valid(p2mt) {
                    leaf_mfn(e.pfn, off)
                } else {
                    INVALID_MFN
                };
                return Some(P2mEntry {
                    mfn,
                    p2mt,
                    access: P2mAccess::Rwx,
                });
            }
            t = e.pfn;
        }
        let e = self.entry(t, index_of(gfn, 1));
        let l1t = e.p2mt();
        if !e.present() && !p2m_is_paging(l1t) {
            return p2m_is_pod(l1t).then_some(POD_READING);
        }
        let recalc = recalc || needs_recalc(e.flags);
        let p2mt = p2m_recalc_type_range(recalc, l1t, &self.recalc_state, gfn, gfn);
        let mfn = if p2m_is_valid(p2mt) || p2m_is_any_ram(p2mt) {
            leaf_mfn(e.pfn, 0)
        } else {
            INVALID_MFN
        };
        Some(P2mEntry {
            mfn,
            p2mt,
            access: P2mAccess::Rwx,
        })
    }

    /// The CPU view of `range` as runs, consistent with [`Self::get_entry`] at every gfn:
    /// the stored entries, then, where a mark covers a changeable type, that type
    /// recalculated per piece of the log-dirty rangeset. Cost: the table runs the range
    /// meets (twice), the marked ranges and the rangeset ranges they meet; never its pages.
    pub fn cpu_extents(&self, range: GfnRange) -> Vec<CpuExtent> {
        let raw = cpu_extents_of(&self.tables, self.root, range, &|e: PtEntry, level| {
            let p2mt = e.p2mt();
            if e.present() && (level == 4 || (level > 1 && !e.pse())) {
                EntryKind::Table(e.pfn)
            } else if e.flags == 0 || p2mt == P2mType::Invalid {
                EntryKind::Empty
            } else {
                EntryKind::Leaf {
                    field: e.pfn,
                    mask: PSE_PFN_MASK,
                    p2mt,
                    access: P2mAccess::Rwx,
                }
            }
        });
        let limit = 1u64 << GFN_BITS;
        let inside = GfnRange {
            start: range.start.min(limit),
            end: range.end.min(limit),
        };
        let mut marked = Vec::new();
        if !inside.is_empty() {
            self.marked_in(self.root, 4, 0, inside, &mut marked);
        }
        if marked.is_empty() {
            return raw;
        }
        overlay_recalc(raw, &marked, &self.recalc_state, &recalc_type_of)
    }

    /// Appends to `out` (sorted, merged) the part of `range` under a present marked entry
    /// of the table `t` at `level` whose first gfn is `base`, or of a table below it.
    fn marked_in(&self, t: u64, level: u8, base: u64, range: GfnRange, out: &mut Vec<GfnRange>) {
        let Some(tab) = self.tables.get(t) else {
            return;
        };
        let per = pages_per_entry(level);
        let lo = index_of(range.start, level);
        let hi = index_of(range.end - 1, level) + 1;
        for (s, l, e) in tab.iter_runs(lo, hi) {
            if !e.present() {
                continue;
            }
            let run = GfnRange {
                start: base + s as u64 * per,
                end: base + (s + l) as u64 * per,
            };
            let Some(hit) = run.intersect(&range) else {
                continue;
            };
            if needs_recalc(e.flags) {
                match out.last_mut() {
                    Some(last) if last.end == hit.start => last.end = hit.end,
                    _ => out.push(hit),
                }
            } else if level == 4 || (level > 1 && !e.pse()) {
                for k in 0..l as u64 {
                    let er = GfnRange {
                        start: run.start + k * per,
                        end: run.start + (k + 1) * per,
                    };
                    if let Some(sub) = er.intersect(&hit) {
                        self.marked_in(e.nth(k, level).pfn, level - 1, er.start, sub, out);
                    }
                }
            }
        }
    }
}

/// What `p2m_pt_get_entry` returns for PoD without `P2M_ALLOC`: `populate_on_demand`,
/// `INVALID_MFN`, access `rwx` (`p2m-pt.c:790-792`, `:843`).
const POD_READING: P2mEntry = P2mEntry {
    mfn: INVALID_MFN,
    p2mt: P2mType::PopulateOnDemand,
    access: P2mAccess::Rwx,
};

/// Counts a `p2m_pt_set_entry` whose IOMMU step found nothing to change: bookkeeping only.
fn count_unchanged_iommu_step(cx: &mut Cx, differ: bool) {
    if !differ {
        cx.stats.need_modify_cleared += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::domain::{Domain, P2m};
    use crate::master::p2m::IommuCall;
    use crate::revision::{Revision, Switches as LineSwitches};

    fn dom(mode: Mode, rev: &str) -> Domain {
        Domain::new(
            Config::new(mode, Vendor::Amd, true),
            Revision::by_name(rev).unwrap(),
        )
    }

    fn pt(d: &Domain) -> &P2mPt {
        match &d.p2m {
            P2m::Pt(p) => p,
            P2m::Ept(_) => unreachable!(),
        }
    }

    fn map(dfn: u64, mfn: u64, page_count: u64, perm: IommuPerm) -> IommuCall {
        IommuCall::LegacyMap {
            dfn,
            mfn,
            page_count,
            perm,
        }
    }

    const RWX: P2mAccess = P2mAccess::Rwx;

    /// The p2m's own free events (the IOMMU's drain may add its own).
    fn p2m_frees(d: &Domain) -> Vec<&crate::events::FreeEvent> {
        d.log
            .frees
            .iter()
            .filter(|f| {
                matches!(
                    f.what,
                    crate::events::Freed::Table {
                        owner: crate::frames::TableOwner::P2m,
                        ..
                    }
                )
            })
            .collect()
    }

    /// The p2m's own unlinked tables.
    fn p2m_unlinked(d: &Domain) -> usize {
        d.log
            .unlinked
            .iter()
            .filter(|u| u.owner == crate::frames::TableOwner::P2m)
            .count()
    }

    /// The p2m's own splits (the IOMMU may log its shatters too).
    fn p2m_splits(d: &Domain) -> Vec<GfnRange> {
        d.log
            .splits
            .iter()
            .filter(|s| s.by == "ept_split_super_page" || s.by == "p2m_next_level")
            .map(|s| s.range)
            .collect()
    }

    #[test]
    fn type_flags_and_access_reconstruction() {
        let master = match Revision::by_name("xen-master").unwrap().switches {
            LineSwitches::Master(s) => s,
            _ => unreachable!(),
        };
        let inverted = Switches {
            pt_flags_to_access_fixed: false,
            ..master
        };
        let rw = p2m_type_to_flags(P2mType::RamRw, Mfn(5));
        assert_eq!(rw & (PAGE_PRESENT | PAGE_RW), PAGE_PRESENT | PAGE_RW);
        assert_eq!(p2m_flags_to_type(rw), 0);
        let ro_mmio = p2m_type_to_flags(P2mType::MmioDirect, Mfn(MMIO_RO_FRAMES.start));
        assert_eq!(ro_mmio & PAGE_RW, 0);
        assert_eq!(ro_mmio & PAGE_UC, PAGE_UC);
        let ioreq = p2m_type_to_flags(P2M_IOREQ_SERVER, Mfn(5));
        assert_eq!(ioreq & (PAGE_PRESENT | PAGE_RW), PAGE_PRESENT);
        assert_eq!(
            p2m_type_to_flags(P2mType::PopulateOnDemand, Mfn(5)) & PAGE_PRESENT,
            0
        );
        assert_eq!(p2m_flags_to_type(0), P2mType::Invalid as u32);
        assert_eq!(p2m_flags_to_access(&master, 0), P2mAccess::N);
        assert_eq!(p2m_flags_to_access(&master, rw), P2mAccess::Rw);
        assert_eq!(p2m_flags_to_access(&master, ro_mmio), P2mAccess::R);
        assert_eq!(p2m_flags_to_access(&inverted, rw), P2mAccess::N);
        assert_eq!(p2m_flags_to_access(&inverted, PAGE_RW), P2mAccess::Rw);
    }

    #[test]
    fn splits_and_views() {
        for mode in [Mode::Npt, Mode::Shadow] {
            let mut d = dom(mode, "xen-master");
            d.set_entry(0, Mfn(0x40000 * 4), 18, P2mType::RamRw, RWX)
                .unwrap();
            assert_eq!(d.calls, [map(0, 0x40000 * 4, 1 << 18, IommuPerm::RW)]);
            let before = pt(&d).tables.len();
            d.set_entry(0x12345, Mfn(7), 0, P2mType::RamRo, RWX)
                .unwrap();
            // 1 GiB -> 2 MiB -> 4 KiB: two tables, each a run or three.
            assert_eq!(pt(&d).tables.len(), before + 2);
            assert_eq!(p2m_splits(&d).len(), 2);
            assert_eq!(d.stats.superpage_splits, 2);
            assert!(pt(&d).tables.frames().all(|(_, t)| t.run_count() <= 3));
            assert_eq!(d.calls, [map(0x12345, 7, 1, IommuPerm::R)]);
            let e = d.get_entry(0x12344).unwrap();
            assert_eq!(
                (e.mfn, e.p2mt, e.access),
                (Mfn(0x40000 * 4 + 0x12344), P2mType::RamRw, RWX)
            );
            assert_eq!(d.get_entry(0x12345).unwrap().mfn, Mfn(7));
            assert_eq!(d.get_entry(0x3ffff).unwrap().mfn, Mfn(0x40000 * 5 - 1));
            let x = d.cpu_extents(GfnRange::of_order(0, 18));
            assert_eq!(x.len(), 3, "{x:?}");
        }
    }

    #[test]
    fn step_rules() {
        let mut d = dom(Mode::Npt, "xen-master");
        d.set_entry(0x10, Mfn(0x500), 0, P2mType::RamRw, RWX)
            .unwrap();
        d.set_entry(0x10, Mfn(0x500), 0, P2mType::RamRw, RWX)
            .unwrap();
        assert!(d.calls.is_empty());
        d.set_entry(0x10, Mfn(0x500), 0, P2mType::RamRo, RWX)
            .unwrap();
        assert_eq!(d.calls, [map(0x10, 0x500, 1, IommuPerm::R)]);
        // An empty 4 KiB entry reads as frame 0, flags 0: removing nothing is no step,
        // mapping frame 0 is one (the flags differ).
        d.set_entry(0x11, INVALID_MFN, 0, P2mType::Invalid, RWX)
            .unwrap();
        assert_eq!(
            d.calls,
            [IommuCall::LegacyUnmap {
                dfn: 0x11,
                page_count: 1
            }]
        );
        d.set_entry(0x12, Mfn(0), 0, P2mType::Invalid, RWX).unwrap();
        assert!(d.calls.is_empty());
        // pt-perm-noflush: only the frame decides.
        let mut u = dom(Mode::Shadow, "pt-perm-noflush");
        u.set_entry(0x10, Mfn(0x500), 0, P2mType::RamRw, RWX)
            .unwrap();
        u.set_entry(0x10, Mfn(0x500), 0, P2mType::RamRo, RWX)
            .unwrap();
        assert!(u.calls.is_empty());
        // pt-no-sync: never.
        let mut n = dom(Mode::Npt, "pt-no-sync");
        n.set_entry(0x10, Mfn(0x500), 0, P2mType::RamRw, RWX)
            .unwrap();
        assert!(n.calls.is_empty());
    }

    /// A present intermediate entry gives `~0` old flags: the step always runs, then the
    /// subtree is freed after it.
    #[test]
    fn leaf_over_intermediate() {
        let mut d = dom(Mode::Npt, "xen-master");
        d.set_entry(0x200, Mfn(0x4000), 0, P2mType::RamRw, RWX)
            .unwrap();
        d.set_entry(0x200, INVALID_MFN, 9, P2mType::Invalid, RWX)
            .unwrap();
        assert_eq!(
            d.calls,
            [IommuCall::LegacyUnmap {
                dfn: 0x200,
                page_count: 512
            }]
        );
        assert_eq!(p2m_frees(&d).len(), 1);
        assert!(p2m_frees(&d)[0].reaches.is_empty());
        assert_eq!(p2m_unlinked(&d), 1);
        assert!(d.log.leaked(&d.mem).next().is_none());
        assert_eq!(d.stats.intermediate_replaced, 1);
        assert_eq!(d.get_entry(0x200), None);
        // A 1 GiB leaf over two levels frees children first.
        d.set_entry(0x40000 + 0x10, Mfn(0x10), 0, P2mType::RamRw, RWX)
            .unwrap();
        d.set_entry(0x40000 + 0x400, Mfn(0x800), 9, P2mType::RamRw, RWX)
            .unwrap();
        d.set_entry(0x40000, Mfn(0x40000 * 8), 18, P2mType::RamRw, RWX)
            .unwrap();
        let levels: Vec<_> = p2m_frees(&d)
            .iter()
            .map(|f| match f.what {
                crate::events::Freed::Table { level, .. } => level,
                crate::events::Freed::GuestPage { .. } => 0,
            })
            .collect();
        assert_eq!(levels, [1, 2]);
    }

    /// With e70a9a043a undone, an old present `mmio_direct` entry reconstructs access `n`
    /// (flags 0): a same-frame change to access `n` is then skipped and the IOMMU keeps
    /// the earlier mapping; fixed, the old access reads `rw` and the unmap happens.
    #[test]
    fn flags_to_access_inversion_skips_mmio_unmap() {
        for (rev, unmapped) in [("xen-master", true), ("e70a9a043a-undone", false)] {
            let mut d = dom(Mode::Npt, rev);
            let m = Mfn(MAX_PAGE + 0x10);
            d.set_entry(0x10, m, 0, P2mType::MmioDirect, RWX).unwrap();
            d.set_entry(0x10, m, 0, P2mType::MmioDirect, P2mAccess::N)
                .unwrap();
            let want: &[IommuCall] = if unmapped {
                &[IommuCall::LegacyUnmap {
                    dfn: 0x10,
                    page_count: 1,
                }]
            } else {
                &[]
            };
            assert_eq!(d.calls, want, "{rev}");
        }
    }

    #[test]
    fn get_entry_quirks() {
        let mut d = dom(Mode::Npt, "xen-master");
        d.set_entry(0x200, Mfn(0x1000), 9, P2mType::GrantMapRw, RWX)
            .unwrap();
        let g = d.get_entry(0x201).unwrap();
        assert_eq!((g.mfn, g.p2mt), (INVALID_MFN, P2mType::GrantMapRw));
        d.set_entry(0x10, Mfn(0x1000), 0, P2mType::GrantMapRw, RWX)
            .unwrap();
        assert_eq!(d.get_entry(0x10).unwrap().mfn, Mfn(0x1000));
        d.set_entry(0x400, Mfn(0), 9, P2mType::PopulateOnDemand, RWX)
            .unwrap();
        assert_eq!(d.get_entry(0x5ff), Some(POD_READING));
        for t in [
            P2mType::MmioDm,
            P2mType::RamBroken,
            P2mType::RamPaged,
            P2mType::Invalid,
        ] {
            d.set_entry(0x11, Mfn(0x1000), 0, t, RWX).unwrap();
            assert_eq!(d.get_entry(0x11), None, "{t}");
        }
        d.set_entry(0x12, INVALID_MFN, 0, P2mType::MmioDirect, RWX)
            .unwrap();
        assert_eq!(d.get_entry(0x12).unwrap().mfn, INVALID_MFN);
        d.set_entry(0x600, INVALID_MFN, 9, P2mType::MmioDirect, RWX)
            .unwrap();
        assert_eq!(d.get_entry(0x601).unwrap().mfn, INVALID_MFN);
        // Splitting that clipped superpage gives fields 2^40-2 | i: all read as INVALID_MFN.
        d.set_entry(0x601, Mfn(9), 0, P2mType::RamRw, RWX).unwrap();
        assert_eq!(d.get_entry(0x602).unwrap().mfn, INVALID_MFN);
        assert_eq!(d.get_entry(0x603).unwrap().mfn, INVALID_MFN);
        let x = d.cpu_extents(GfnRange::of_order(0x600, 9));
        assert_eq!(x.len(), 3, "{x:?}");
    }

    #[test]
    fn errors_leave_the_domain_unchanged() {
        let mut d = dom(Mode::Shadow, "xen-master");
        let mut before = String::new();
        d.write_state(&mut before).unwrap();
        let bad = [
            (0x201, Mfn(0x200), 9, P2mType::RamRw, P2mError::Misaligned),
            (0x200, Mfn(0x201), 9, P2mType::RamRw, P2mError::Misaligned),
            (0, Mfn(0), 27, P2mType::RamRw, P2mError::BadOrder),
            (1 << 36, Mfn(0), 0, P2mType::RamRw, P2mError::GfnOutOfRange),
            (
                0x200,
                Mfn(0x200),
                9,
                P2mType::MapForeign,
                P2mError::XenBug(BUG_SPECIAL_TYPE_ABOVE_4K),
            ),
        ];
        for (g, m, o, t, e) in bad {
            assert_eq!(d.set_entry(g, m, o, t, RWX), Err(e));
        }
        let mut after = String::new();
        d.write_state(&mut after).unwrap();
        assert_eq!(before, after);
        // Foreign at 4 KiB is accepted on master's p2m-pt.
        assert_eq!(
            d.set_entry(0x10, Mfn(3), 0, P2mType::MapForeign, RWX),
            Ok(())
        );
        assert_eq!(d.get_entry(0x10).unwrap().mfn, Mfn(3));
    }

    /// Runs `f` on the p2m-pt of `d` with a context, as one op would (log and calls
    /// cleared first).
    fn with_cx<R>(d: &mut Domain, f: impl FnOnce(&mut P2mPt, &mut Cx) -> R) -> R {
        d.op(|p2m, cx| match p2m {
            P2m::Pt(x) => f(x, cx),
            P2m::Ept(_) => panic!("not P2mPt"),
        })
    }

    /// The stored entry of `level` on the walk to `gfn`.
    fn raw(d: &Domain, gfn: u64, level: u8) -> PtEntry {
        let p = pt(d);
        p.entry(p.table_at(gfn, level).unwrap(), index_of(gfn, level))
    }

    fn io_state(d: &Domain) -> String {
        let mut s = String::new();
        d.iommu.write_state(&mut s).unwrap();
        s
    }

    /// `cpu_extents` agrees with `get_entry` at every gfn of `range`.
    fn views_agree(d: &Domain, range: GfnRange) {
        let x = d.cpu_extents(range);
        assert_eq!(x.first().unwrap().range.start, range.start);
        assert_eq!(x.last().unwrap().range.end, range.end);
        for e in &x {
            for g in e.range.start..e.range.end {
                let want = d
                    .get_entry(g)
                    .map_or((INVALID_MFN, P2mType::Invalid), |p| (p.mfn, p.p2mt));
                let mfn = if e.mfn == INVALID_MFN {
                    INVALID_MFN
                } else {
                    Mfn(e.mfn.0 + (g - e.range.start))
                };
                assert_eq!((mfn, e.p2mt), want, "gfn {g:#x}");
            }
        }
    }

    fn typ(d: &Domain, gfn: u64) -> (Mfn, P2mType) {
        let e = d.get_entry(gfn).unwrap();
        (e.mfn, e.p2mt)
    }

    #[test]
    fn recalc_types() {
        use P2mType::*;
        let mut st = RecalcState::default();
        st.add_range(0x10, 0x1f);
        assert!(p2m_is_changeable(RamRw) && p2m_is_changeable(RamLogdirty));
        assert!(p2m_is_changeable(P2M_IOREQ_SERVER) && !p2m_is_changeable(RamRo));
        assert_eq!(p2m_recalc_type_range(false, RamRw, &st, 0x10, 0x10), RamRw);
        assert_eq!(
            p2m_recalc_type_range(true, RamRw, &st, 0x10, 0x10),
            RamLogdirty
        );
        assert_eq!(p2m_recalc_type_range(true, RamLogdirty, &st, 0, 0), RamRw);
        // Partly log-dirty reads as log-dirty.
        assert_eq!(
            p2m_recalc_type_range(true, RamRw, &st, 0, 0x1ff),
            RamLogdirty
        );
        assert_eq!(p2m_recalc_type_range(true, RamRo, &st, 0x10, 0x10), RamRo);
        let ioreq = p2m_recalc_type_range(true, P2M_IOREQ_SERVER, &st, 0x10, 0x10);
        assert_eq!(ioreq, P2M_IOREQ_SERVER);
    }

    /// (a) A range change marks, `get_entry` / `cpu_extents` report the new types at once,
    /// `recalc` rewrites the leaves; the superpage over the range's tail is split by the
    /// marking itself; the IOMMU is never called.
    #[test]
    fn range_change_then_recalc() {
        let mut d = dom(Mode::Npt, "xen-master");
        for i in 0..512 {
            d.set_entry(0x200 + i, Mfn(0x10000 + i), 0, P2mType::RamRw, RWX)
                .unwrap();
        }
        d.set_entry(0x400, Mfn(0x20000), 9, P2mType::RamRw, RWX)
            .unwrap();
        d.set_entry(0x9000, INVALID_MFN, 0, P2mType::Invalid, RWX)
            .unwrap();
        assert_eq!(pt(&d).recalc_state.max_mapped_pfn, 0x5ff);
        let io_before = io_state(&d);
        let rw = p2m_type_to_flags(P2mType::RamRw, Mfn(0));
        with_cx(&mut d, |p, cx| {
            p.change_entry_type_range(cx, P2mType::RamRw, P2mType::RamLogdirty, 0x300, 0x4ff)
                .unwrap();
            p.recalc_state.add_range(0x300, 0x4ff);
        });
        assert!(d.calls.is_empty());
        assert_eq!(p2m_splits(&d), [GfnRange::of_order(0x400, 9)]);
        assert_eq!(p2m_frees(&d).len() + p2m_unlinked(&d), 0);
        // Marked, not rewritten: the stored type is still ram_rw.
        for g in [0x300, 0x3ff, 0x400, 0x4ff] {
            let e = raw(&d, g, 1);
            assert!(
                needs_recalc(e.flags) && e.p2mt() == P2mType::RamRw,
                "{g:#x}"
            );
        }
        assert!(!needs_recalc(raw(&d, 0x2ff, 1).flags));
        assert!(!needs_recalc(raw(&d, 0x500, 1).flags));
        let ld = P2mType::RamLogdirty;
        assert_eq!(typ(&d, 0x2ff), (Mfn(0x100ff), P2mType::RamRw));
        assert_eq!(typ(&d, 0x300), (Mfn(0x10100), ld));
        assert_eq!(typ(&d, 0x4ff), (Mfn(0x200ff), ld));
        assert_eq!(typ(&d, 0x500), (Mfn(0x20100), P2mType::RamRw));
        let whole = GfnRange {
            start: 0x200,
            end: 0x600,
        };
        let x = d.cpu_extents(whole);
        let kinds: Vec<_> = x.iter().map(|e| (e.range.start, e.mfn, e.p2mt)).collect();
        assert_eq!(
            kinds,
            [
                (0x200, Mfn(0x10000), P2mType::RamRw),
                (0x300, Mfn(0x10100), ld),
                (0x400, Mfn(0x20000), ld),
                (0x500, Mfn(0x20100), P2mType::RamRw),
            ]
        );
        views_agree(&d, whole);
        let mut changed = 0;
        for g in whole.start..whole.end {
            changed += with_cx(&mut d, |p, cx| p.recalc(cx, g)).unwrap() as u32;
            assert!(d.calls.is_empty());
        }
        assert_eq!(changed, 0x200);
        let logdirty = p2m_type_to_flags(ld, Mfn(0));
        assert_eq!(raw(&d, 0x300, 1).flags, logdirty);
        assert_eq!(
            raw(&d, 0x4ff, 1),
            PtEntry {
                pfn: 0x200ff,
                flags: logdirty
            }
        );
        assert_eq!(raw(&d, 0x2ff, 1).flags, rw);
        assert_eq!(raw(&d, 0x500, 1).flags, rw);
        assert_eq!(d.cpu_extents(whole), x);
        assert_eq!(with_cx(&mut d, |p, cx| p.recalc(cx, 0x300)), Ok(false));
        assert_eq!(io_state(&d), io_before);
    }

    /// (b) `set_entry` resolves the marks on its walk first: the gfn's own leaf, and a
    /// pointer's mark pushed down onto its siblings.
    #[test]
    fn set_entry_recalcs_first() {
        let mut d = dom(Mode::Npt, "xen-master");
        d.set_entry(0x10, Mfn(0x500), 0, P2mType::RamRw, RWX)
            .unwrap();
        d.set_entry(0x11, Mfn(0x501), 0, P2mType::RamRw, RWX)
            .unwrap();
        d.set_entry(0x200, Mfn(0x1000), 9, P2mType::RamRw, RWX)
            .unwrap();
        with_cx(&mut d, |p, cx| {
            p.change_entry_type_range(cx, P2mType::RamRw, P2mType::RamLogdirty, 0x10, 0x11)
                .unwrap();
            p.recalc_state.add_range(0x10, 0x11);
        });
        // The fault handler's `p2m_change_type_one(logdirty → rw)`: recalc makes it
        // ram_logdirty (IOMMU flags RW, as ram_rw's), so the IOMMU step sees no change.
        d.set_entry(0x10, Mfn(0x500), 0, P2mType::RamRw, RWX)
            .unwrap();
        assert!(d.calls.is_empty());
        assert_eq!(
            raw(&d, 0x10, 1).flags,
            p2m_type_to_flags(P2mType::RamRw, Mfn(0))
        );
        assert!(needs_recalc(raw(&d, 0x11, 1).flags));
        assert_eq!(typ(&d, 0x11).1, P2mType::RamLogdirty);

        with_cx(&mut d, |p, cx| {
            p.change_entry_type_global(cx, P2mType::RamRw, P2mType::RamLogdirty)
        });
        assert!(needs_recalc(raw(&d, 0, 4).flags));
        d.set_entry(0x12, Mfn(0x502), 0, P2mType::RamRo, RWX)
            .unwrap();
        assert_eq!(d.calls, [map(0x12, 0x502, 1, IommuPerm::R)]);
        for l in [4, 3, 2] {
            assert!(!needs_recalc(raw(&d, 0x12, l).flags), "L{l}");
        }
        // Pushed down: the 2 MiB sibling and the 4 KiB one.
        assert!(needs_recalc(raw(&d, 0x200, 2).flags));
        assert!(needs_recalc(raw(&d, 0x10, 1).flags));
        assert_eq!(typ(&d, 0x10).1, P2mType::RamLogdirty);
        assert_eq!(typ(&d, 0x200).1, P2mType::RamRw);
        assert_eq!(typ(&d, 0x12).1, P2mType::RamRo);
        views_agree(
            &d,
            GfnRange {
                start: 0,
                end: 0x400,
            },
        );
    }

    /// (c) A global change marks the L4 entries; with the rangeset covering part of a
    /// 2 MiB page, `recalc` splits it; a range over whole 2 MiB entries marks them
    /// without a split.
    #[test]
    fn global_change_then_recalc() {
        let mut d = dom(Mode::Npt, "xen-master");
        d.set_entry(0x10, Mfn(0x500), 0, P2mType::RamRw, RWX)
            .unwrap();
        d.set_entry(0x400, Mfn(0x20000), 9, P2mType::RamRw, RWX)
            .unwrap();
        let io_before = io_state(&d);
        with_cx(&mut d, |p, cx| {
            p.recalc_state.add_range(0x480, 0x4ff);
            p.change_entry_type_global(cx, P2mType::RamLogdirty, P2mType::RamRw);
        });
        let all = GfnRange {
            start: 0,
            end: 0x800,
        };
        assert!(p2m_splits(&d).is_empty());
        assert_eq!(typ(&d, 0x47f).1, P2mType::RamRw);
        assert_eq!(typ(&d, 0x480), (Mfn(0x20080), P2mType::RamLogdirty));
        assert_eq!(d.cpu_extents(all).len(), 7);
        views_agree(&d, all);
        assert_eq!(with_cx(&mut d, |p, cx| p.recalc(cx, 0x480)), Ok(true));
        assert_eq!(p2m_splits(&d), [GfnRange::of_order(0x400, 9)]);
        assert!(d.calls.is_empty());
        assert_eq!(raw(&d, 0x480, 1).p2mt(), P2mType::RamLogdirty);
        assert!(!needs_recalc(raw(&d, 0x480, 1).flags));
        // The split copies inherit the mark; the other path got it pushed down.
        assert!(needs_recalc(raw(&d, 0x400, 1).flags));
        assert!(needs_recalc(raw(&d, 0x10, 2).flags));
        views_agree(&d, all);
        assert_eq!(with_cx(&mut d, |p, cx| p.recalc(cx, 0x10)), Ok(true));
        assert_eq!(
            raw(&d, 0x10, 1).flags,
            p2m_type_to_flags(P2mType::RamRw, Mfn(0))
        );
        assert_eq!(with_cx(&mut d, |p, cx| p.recalc(cx, 0x10)), Ok(false));
        assert_eq!(io_state(&d), io_before);

        // Whole 2 MiB entries: marked at L2, no split; fully log-dirty, recalc rewrites the
        // superpage in place.
        let mut e = dom(Mode::Npt, "xen-master");
        e.set_entry(0x400, Mfn(0x20000), 9, P2mType::RamRw, RWX)
            .unwrap();
        with_cx(&mut e, |p, cx| {
            p.change_entry_type_range(cx, P2mType::RamRw, P2mType::RamLogdirty, 0, 0x7ff)
                .unwrap();
            p.recalc_state.add_range(0, 0x7ff);
        });
        assert!(p2m_splits(&e).is_empty());
        assert!(needs_recalc(raw(&e, 0x400, 2).flags));
        assert_eq!(with_cx(&mut e, |p, cx| p.recalc(cx, 0x5ff)), Ok(true));
        assert!(p2m_splits(&e).is_empty());
        let want = PtEntry {
            pfn: 0x20000,
            flags: p2m_type_to_flags(P2mType::RamLogdirty, Mfn(0)) | PAGE_PSE,
        };
        assert_eq!(raw(&e, 0x400, 2), want);
        assert!(e.calls.is_empty());

        // A 2 MiB `set_entry` rewriting a marked, partly log-dirty superpage unchanged:
        // its `do_recalc` splits it first, so the entry replaced is an intermediate one
        // (`iommu_old_flags = ~0`) and the IOMMU step runs; unmarked, it would not.
        let mut f = dom(Mode::Npt, "xen-master");
        f.set_entry(0x400, Mfn(0x20000), 9, P2mType::RamRw, RWX)
            .unwrap();
        with_cx(&mut f, |p, cx| {
            p.recalc_state.add_range(0x480, 0x4ff);
            p.change_entry_type_global(cx, P2mType::RamLogdirty, P2mType::RamRw);
        });
        f.set_entry(0x400, Mfn(0x20000), 9, P2mType::RamRw, RWX)
            .unwrap();
        assert_eq!(p2m_splits(&f), [GfnRange::of_order(0x400, 9)]);
        assert_eq!(f.calls, [map(0x400, 0x20000, 512, IommuPerm::RW)]);
        assert_eq!(p2m_frees(&f).len(), 1);
        assert!(f.log.leaked(&f.mem).next().is_none());
        f.set_entry(0x400, Mfn(0x20000), 9, P2mType::RamRw, RWX)
            .unwrap();
        assert!(f.calls.is_empty());
    }

    /// (d) `ram_ro` and `p2m_ioreq_server` leaves keep their type: the mark is cleared and
    /// nothing else changes.
    #[test]
    fn unchangeable_types_stay() {
        let mut d = dom(Mode::Npt, "xen-master");
        d.set_entry(0x20, Mfn(0x600), 0, P2mType::RamRo, RWX)
            .unwrap();
        d.set_entry(0x21, Mfn(0x601), 0, P2M_IOREQ_SERVER, RWX)
            .unwrap();
        d.set_entry(0x22, Mfn(0x602), 0, P2mType::RamRw, RWX)
            .unwrap();
        let before: Vec<_> = (0x20..0x23).map(|g| raw(&d, g, 1)).collect();
        with_cx(&mut d, |p, cx| {
            p.change_entry_type_range(cx, P2mType::RamRw, P2mType::RamLogdirty, 0x20, 0x22)
                .unwrap();
            p.recalc_state.add_range(0x20, 0x22);
        });
        assert_eq!(typ(&d, 0x20), (Mfn(0x600), P2mType::RamRo));
        assert_eq!(typ(&d, 0x21), (Mfn(0x601), P2M_IOREQ_SERVER));
        assert_eq!(typ(&d, 0x22), (Mfn(0x602), P2mType::RamLogdirty));
        views_agree(
            &d,
            GfnRange {
                start: 0,
                end: 0x200,
            },
        );
        for g in 0x20..0x23 {
            assert!(needs_recalc(raw(&d, g, 1).flags));
            assert_eq!(with_cx(&mut d, |p, cx| p.recalc(cx, g)), Ok(true));
            assert!(d.calls.is_empty());
        }
        assert_eq!(raw(&d, 0x20, 1), before[0]);
        assert_eq!(raw(&d, 0x21, 1), before[1]);
        assert_eq!(raw(&d, 0x22, 1).p2mt(), P2mType::RamLogdirty);
    }
}
