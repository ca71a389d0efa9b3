//! EPT of the master line: `xen/arch/x86/mm/p2m-ept.c` at `c447b7308b`.
//!
//! Levels are numbered 1..=4 here (1 holds 4 KiB entries); Xen's EPT level `i` (0..=3) is
//! our level `i + 1`. The lazy type change is modelled (`ept_change_entry_type_range` /
//! `_global` marking entries, `resolve_misconfig` resolving them, `ept_get_entry` reading
//! through marks; see [`crate::recalc`]). Not modelled (no IOMMU effect in scope, or a
//! state the model never reaches): the EMT value itself (only "invalid or not"),
//! `ept_sync_domain` (CPU only), PML (modelled as off), A/D bits, `suppress_ve`, altp2m
//! propagation, and `ept_get_entry`'s early return above `max_mapped_pfn` (nothing is
//! mapped there; `max_mapped_pfn` itself is kept, for `p2m_change_type_range`).

use crate::cache::note_overwrite;
use crate::frames::{MachineMemory, TableOwner};
use crate::master::domain::Cx;
use crate::master::iommu::FlushFlags;
use crate::master::p2m::{
    access_of_raw, cpu_extents_of, linear_pieces, p2m_allows_invalid_mfn, p2m_entry_modify_bugs,
    p2m_get_iommu_flags, p2m_is_changeable, p2m_is_pod, p2m_recalc_type_range, recalc_type_of,
    type_of_raw, EntryKind, BUG_PRESENT_INVALID_MFN, BUG_SPECIAL_TYPE_ABOVE_4K,
    IOREQ_MEM_ACCESS_WRITE, P2M_IOREQ_SERVER,
};
use crate::recalc::{overlay_recalc, LogdirtyOverlap, RecalcState};
use crate::stats::bump;
use crate::tables::{index_of, pages_per_entry, Pte, TableStore};
use crate::types::*;
use crate::view::{CpuExtent, P2mEntry};
use crate::walk::{IoEntry, IoTables};

/// `vmx.exec_sp` (`p2m-ept.c:189`): executable superpages allowed (hardware not affected
/// by CVE-2018-12207). Only the x bit depends on it, which neither the CPU view (type,
/// access, frame) nor the IOMMU (r/w) reads.
pub const EXEC_SP: bool = true;

/// `is_iommu_enabled(d) && iommu_snoop` (`p2m-ept.c:275,920`; `iommu_snoop` defaults to
/// true, `vtd/iommu.c:63`): the `snp` bit of every leaf `ept_set_entry` or a split writes.
pub const EPT_SNP: bool = true;

/// An `ept_entry_t` (`asm/hvm/vmx/vmx.h:22-42`) with the fields that matter: r/w/x, sp,
/// the 40-bit frame, `sa_p2mt`, `access`, `snp` (which keeps a written leaf non-zero,
/// hence `is_epte_valid`, even when it has no permission), and the two marks of the lazy
/// type change (an invalid EMT, `recalc`). The EMT value itself, ipat, A/D and
/// `suppress_ve` are left out.
#[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
pub struct EptEntry {
    /// Read bit (VT-d's read bit when shared).
    pub r: bool,
    /// Write bit (VT-d's write bit when shared).
    pub w: bool,
    /// Execute bit.
    pub x: bool,
    /// Superpage bit.
    pub sp: bool,
    /// 40-bit frame field.
    pub mfn: u64,
    /// `sa_p2mt`: the p2m type (0 = `ram_rw`).
    pub sa_p2mt: u8,
    /// `access` (0 = `n`).
    pub access: u8,
    /// `snp`: snoop control.
    pub snp: bool,
    /// `emt == MTRR_NUM_TYPES`: the deliberate misconfiguration a range type change or
    /// `ept_invalidate_emt_subtree` leaves for `resolve_misconfig` (the CPU faults on it;
    /// VT-d, which ignores EMT in the entries it walks, does not).
    pub emt_misconfig: bool,
    /// `recalc`: the type must be recalculated (`p2m_recalc_type`) when the mark is
    /// resolved.
    pub recalc: bool,
}

impl EptEntry {
    /// `is_epte_present()` (`p2m-ept.c:31`): any of r, w, x.
    pub fn is_present(&self) -> bool {
        self.r || self.w || self.x
    }
    /// `is_epte_valid()` (`p2m-ept.c:34-38`): non-zero and not `p2m_invalid`.
    pub fn is_valid(&self) -> bool {
        *self != EptEntry::default() && self.sa_p2mt != P2mType::Invalid as u8
    }
    /// The type in `sa_p2mt`.
    pub fn p2mt(&self) -> P2mType {
        type_of_raw(self.sa_p2mt as u32)
    }
}

impl Pte for EptEntry {
    fn nth(&self, k: u64, level: u8) -> Self {
        if (self.sp || level == 1) && *self != EptEntry::default() {
            EptEntry {
                mfn: self
                    .mfn
                    .wrapping_add(k.wrapping_mul(pages_per_entry(level)))
                    & PTE_MFN_MASK,
                ..*self
            }
        } else {
            *self
        }
    }
}

/// Models `ept_p2m_type_to_flags()` (`p2m-ept.c:69-193`): r/w/x from `sa_p2mt` (w cleared
/// for `mmio_direct` frames in `mmio_ro_ranges`, for `ram_logdirty` without PML, for
/// `p2m_ioreq_server` while writes are claimed), then restricted by `access`.
pub fn ept_p2m_type_to_flags(e: &mut EptEntry) {
    let (r, w, x) = match e.p2mt() {
        P2mType::RamRw => (true, true, true),
        P2M_IOREQ_SERVER => (true, !IOREQ_MEM_ACCESS_WRITE, false),
        P2mType::MmioDirect => (true, !in_mmio_ro_ranges(Mfn(e.mfn)), true),
        // PML is modelled as off: log-dirty pages are write-protected.
        P2mType::RamLogdirty | P2mType::RamRo | P2mType::RamShared => (true, false, true),
        P2mType::GrantMapRw | P2mType::MapForeign => (true, true, false),
        P2mType::GrantMapRo => (true, false, false),
        _ => (false, false, false),
    };
    let (mr, mw, mx) = match access_of_raw(e.access) {
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
    e.x = x && mx && (EXEC_SP || !e.sp);
}

/// The middle entry `ept_set_middle_entry()` builds (`p2m-ept.c:199-227`): rwx, the new
/// table's frame, `p2m->default_access` (rwx, `p2m-basic.c:34`), `sa_p2mt` 0.
fn middle_entry(table: u64) -> EptEntry {
    EptEntry {
        r: true,
        w: true,
        x: true,
        mfn: table,
        access: P2mAccess::Rwx as u8,
        ..Default::default()
    }
}

/// The frame `get_entry` reports for a leaf whose frame field is `field`, `off` pages into
/// it: the field plus the offset, except that the clipped `INVALID_MFN` (the all-ones
/// 40-bit field) reads as `INVALID_MFN` (Xen returns the raw field).
fn leaf_mfn(field: u64, off: u64) -> Mfn {
    if field == PTE_MFN_MASK {
        INVALID_MFN
    } else {
        Mfn(field + off)
    }
}

/// The guest range of the entry covering `gfn` at `level` (`ept_next_level`'s index
/// arithmetic, `p2m-ept.c:323-328`).
fn entry_range(gfn: u64, level: u8) -> GfnRange {
    let per = pages_per_entry(level);
    GfnRange::of_order(gfn / per * per, 9 * (level as u32 - 1))
}

/// The EPT of a host p2m (`struct ept_data`, `asm/hvm/vmx/vmcs.h:34`, and its tables).
#[derive(Clone, Debug)]
pub struct Ept {
    /// Tables by frame.
    pub tables: TableStore<EptEntry>,
    /// Root (level-4) table frame.
    pub root: u64,
    /// The proposed fix `ept_get_entry_reads_nonpresent_superpage` (not Xen), copied from
    /// the revision's switches (`get_entry` takes no context).
    pub reads_nonpresent_superpage: bool,
    /// `p2m->logdirty_ranges`, `global_logdirty`, `max_mapped_pfn`.
    pub recalc_state: RecalcState,
}

impl Ept {
    /// A fresh, empty 4-level EPT (`ept_p2m_init`, `ept->wl = 3`, `p2m-ept.c:1463`).
    pub fn new(mem: &mut MachineMemory) -> Self {
        let root = mem.alloc(TableOwner::P2m, 4);
        let mut tables = TableStore::new();
        tables.insert(root, 4);
        Ept {
            tables,
            root,
            reads_nonpresent_superpage: false,
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
            if !e.is_present() || e.sp {
                return None;
            }
            t = e.mfn;
        }
        Some(t)
    }

    fn entry(&self, t: u64, idx: u16) -> EptEntry {
        self.tables.get(t).map(|x| x.get(idx)).unwrap_or_default()
    }

    /// Models `atomic_write_ept_entry()` (`p2m-ept.c:41-67`; its `p2m_entry_modify` refusal
    /// is checked before the op starts): logs the entry's range as changed and a replaced
    /// pointer as unlinked, and, when VT-d walks the EPT, turns the old content into cache
    /// records.
    fn write(&mut self, cx: &mut Cx, t: u64, level: u8, gfn: u64, new: EptEntry) {
        let idx = index_of(gfn, level);
        let old = self.entry(t, idx);
        let range = entry_range(gfn, level);
        cx.log.p2m_changed(range);
        if level > 1 && old.is_present() && !old.sp {
            cx.log
                .unlink(cx.mem, old.mfn, TableOwner::P2m, level - 1, range);
        }
        if level > 1 && new.is_present() && !new.sp {
            cx.mem.set_span(new.mfn, range);
        }
        if cx.iommu.shared {
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
        if let Some(tab) = self.tables.get_mut(t) {
            tab.set(idx, new);
        }
    }

    /// Models `ept_next_level()` creating a missing table (`p2m-ept.c:339-352`, with
    /// `ept_set_middle_entry`): allocates a zeroed table, installs the middle entry and
    /// returns the table's frame; `None` (nothing written) when `p2m_alloc_ptp` fails.
    fn set_middle_entry(&mut self, cx: &mut Cx, t: u64, level: u8, gfn: u64) -> Option<u64> {
        let nt = cx.mem.try_alloc(TableOwner::P2m, level - 1)?;
        self.tables.insert(nt, level - 1);
        self.write(cx, t, level, gfn, middle_entry(nt));
        Some(nt)
    }

    /// Models `ept_split_super_page()` (`p2m-ept.c:247-300`): builds, in new tables, the
    /// subtree that splits the superpage `sp` at `level` down to `target` and returns the
    /// middle entry pointing at it; the caller installs it (the subtree is filled first).
    /// Each child copies the superpage with `snp` set and its frame advanced, and gets
    /// `ept_p2m_type_to_flags` again (so `mmio_direct` children in `mmio_ro_ranges` lose w).
    /// The flag is `false` when an allocation failed: the entry is then `sp` itself if the
    /// first one did, else the middle entry over the part built so far (`:293-296`).
    fn split_super_page(
        &mut self,
        cx: &mut Cx,
        sp: EptEntry,
        level: u8,
        target: u8,
    ) -> (EptEntry, bool) {
        cx.stats.superpage_splits += 1;
        let cl = level - 1;
        let Some(nt) = cx.mem.try_alloc(TableOwner::P2m, cl) else {
            return (sp, false);
        };
        self.tables.insert(nt, cl);
        let per = pages_per_entry(cl);
        // Xen adds `i * trunk` to the 40-bit frame field (`:274`), so the children of a
        // superpage written with `INVALID_MFN` (the all-ones field) hold frames 0, 1, …
        // Proposed fix `ept_split_keeps_invalid_mfn` (not Xen): they keep the field (PoD
        // children, which never reach the IOMMU, stay as Xen makes them).
        let keep_invalid =
            cx.sw.ept_split_keeps_invalid_mfn && sp.mfn == PTE_MFN_MASK && !p2m_is_pod(sp.p2mt());
        let child = |k: u64| {
            let mut c = EptEntry {
                sp: cl > 1,
                snp: EPT_SNP,
                mfn: if keep_invalid {
                    PTE_MFN_MASK
                } else {
                    sp.mfn.wrapping_add(k * per) & PTE_MFN_MASK
                },
                ..sp
            };
            ept_p2m_type_to_flags(&mut c);
            c
        };
        if cl == target && keep_invalid {
            // No run: every entry holds the same field (internal API only, so rare).
            if let Some(tab) = self.tables.get_mut(nt) {
                for k in 0..512u16 {
                    tab.set(k, child(k as u64));
                }
            }
        } else if cl == target {
            let ro = [MMIO_RO_FRAMES.start, MMIO_RO_FRAMES.end];
            for (k0, k1) in linear_pieces(sp.mfn, per, 512, &ro) {
                if let Some(tab) = self.tables.get_mut(nt) {
                    tab.fill(k0 as u16, (k1 - k0) as u16, child(k0));
                }
            }
        } else {
            for i in 0..512u16 {
                let (sub, ok) = self.split_super_page(cx, child(i as u64), cl, target);
                if let Some(tab) = self.tables.get_mut(nt) {
                    tab.set(i, sub);
                }
                if !ok {
                    return (middle_entry(nt), false);
                }
            }
        }
        (middle_entry(nt), true)
    }

    /// Models `ept_free_entry()` (`p2m-ept.c:229-245`) on the entry `e` at `level` whose
    /// guest range is `span`: frees the tables under it (children first, as Xen recurses)
    /// through the op log's free check, against the structure the IOMMU walks.
    fn free_entry(&mut self, cx: &mut Cx, e: EptEntry, level: u8, span: GfnRange) {
        let mut frames = Vec::new();
        self.collect_free(e, level, &mut frames);
        if frames.is_empty() {
            return;
        }
        let Cx {
            mem, iommu, log, ..
        } = cx;
        let io: &dyn IoTables = if iommu.shared {
            &*self
        } else {
            iommu.io_tables()
        };
        log.free_tables(
            mem,
            io,
            iommu.caches.records(),
            TableOwner::P2m,
            &frames,
            span,
        );
        for &(f, _) in &frames {
            self.tables.remove(f);
        }
    }

    /// The `(frame, level)` of every table `ept_free_entry(e)` frees, children first: none
    /// for a 4 KiB entry, a non-present entry or a superpage; otherwise the subtree,
    /// recursing while the freed table holds pointers.
    fn collect_free(&self, e: EptEntry, level: u8, out: &mut Vec<(u64, u8)>) {
        if level == 1 || !e.is_present() || e.sp {
            return;
        }
        let tl = level - 1;
        if tl > 1 {
            if let Some(tab) = self.tables.get(e.mfn) {
                for (_, l, c) in tab.iter_runs(0, 512) {
                    if c.is_present() && !c.sp {
                        for k in 0..l {
                            self.collect_free(c.nth(k as u64, tl), tl, out);
                        }
                    }
                }
            }
        }
        out.push((e.mfn, tl));
    }

    /// Models `ept_set_entry()` (`p2m-ept.c:794-1003`) on the host p2m.
    ///
    /// `-EINVAL` (`:823-826`) for a misaligned `gfn` (and `mfn`, unless `INVALID_MFN`), a
    /// gfn beyond 48 bits, an order not a multiple of 9; the model also refuses orders
    /// above 18 (`BadOrder`; Xen only asserts) and the two `BUG_ON`s (`XenBug`): a foreign
    /// or ioreq-server leaf above 4 KiB (`p2m_entry_modify`), a present leaf with
    /// `INVALID_MFN` (`:940`, e.g. `mmio_direct` without a frame). Then: walk down with
    /// `ept_next_level` (creating middle entries, stopping at a superpage or a PoD entry);
    /// sample `vtd_pte_present`; split a superpage above the target (the split subtree is
    /// filled, then installed); build the new entry only for a valid frame or a type
    /// allowing an invalid one, clearing `need_modify_vtd_table` when the target entry's
    /// frame and `p2m_get_iommu_flags(sa_p2mt, access, mfn)` are unchanged (an
    /// intermediate entry reads as `ram_rw`/rwx with the table's frame); write it; then the
    /// IOMMU step of `:972-986`; then `ept_free_entry` of a replaced intermediate entry,
    /// last.
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
        // `order % EPT_TABLE_ORDER` is -EINVAL; above 18 Xen only asserts.
        if !PAGE_ORDERS.contains(&order) {
            return Err(P2mError::BadOrder);
        }
        let fn_mask = if mfn != INVALID_MFN { gfn | mfn.0 } else { gfn };
        if fn_mask & ((1u64 << order) - 1) != 0 {
            return Err(P2mError::Misaligned);
        }
        if gfn >> GFN_BITS != 0 {
            return Err(P2mError::GfnOutOfRange);
        }
        let target = (order / 9) as u8 + 1;
        let writes_type = mfn.is_valid() || p2m_allows_invalid_mfn(p2mt);
        if p2m_entry_modify_bugs(p2mt, target, writes_type) {
            return Err(P2mError::XenBug(BUG_SPECIAL_TYPE_ABOVE_4K));
        }
        // The leaf `:915-943` builds (its content depends on the arguments only).
        let mut new_leaf = EptEntry {
            sp: target > 1,
            sa_p2mt: p2mt as u8,
            access: p2ma as u8,
            snp: EPT_SNP,
            mfn: mfn.0 & PTE_MFN_MASK,
            ..Default::default()
        };
        ept_p2m_type_to_flags(&mut new_leaf);
        if writes_type && new_leaf.is_present() && mfn == INVALID_MFN {
            return Err(P2mError::XenBug(BUG_PRESENT_INVALID_MFN));
        }
        // Proposed fix `iommu_flags_require_present_entry` (not Xen): an entry written
        // without a frame grants the device nothing, also in the comparison below.
        let iommu_flags =
            if sw.iommu_flags_require_present_entry && (!writes_type || mfn == INVALID_MFN) {
                IommuPerm::NONE
            } else {
                p2m_get_iommu_flags(&sw, p2mt, p2ma, mfn)
            };
        let mut need_modify_vtd_table = true;

        // Pending type changes first (`:828-830`; run here, after the checks that only
        // read the arguments, so that a `BUG_ON` still finds the p2m unchanged).
        self.resolve_misconfig(cx, gfn)?;

        // The walk (`:841-852`): ept_next_level with read_only = 0.
        let mut t = self.root;
        let mut level = 4u8;
        while level > target {
            let e = self.entry(t, index_of(gfn, level));
            if !e.is_present() {
                if p2m_is_pod(e.p2mt()) {
                    break;
                }
                if sw.ept_split_nonpresent_superpage && e.sp && e.is_valid() {
                    // Proposed fix (not Xen): split it like a present superpage.
                    break;
                }
                // `ept_next_level` fails: `rc = -ENOMEM; goto out` (`:846-848`).
                let Some(nt) = self.set_middle_entry(cx, t, level, gfn) else {
                    return Err(P2mError::TableNoMem);
                };
                t = nt;
            } else if e.sp {
                break;
            } else {
                t = e.mfn;
            }
            level -= 1;
        }
        let stopped = self.entry(t, index_of(gfn, level));
        // Proposed fix `shared_flush_on_valid_old_entry` (not Xen): with shared tables a
        // valid entry a recalc made non-present may still be in the IOTLB.
        let vtd_pte_present = stopped.is_present()
            || (sw.shared_flush_on_valid_old_entry && cx.iommu.shared && stopped.is_valid());
        let mut old_entry = EptEntry::default();
        if level == target {
            old_entry = stopped;
        } else {
            // `:883-911`: split, install, walk down the new subtree.
            let (split, ok) = self.split_super_page(cx, stopped, level, target);
            if !ok {
                // `ept_free_entry` on the local copy, `rc = -ENOMEM; goto out`.
                self.free_entry(cx, split, level, entry_range(gfn, level));
                return Err(P2mError::TableNoMem);
            }
            cx.log
                .p2m_split(entry_range(gfn, level), "ept_split_super_page");
            self.write(cx, t, level, gfn, split);
            while level > target {
                t = self.entry(t, index_of(gfn, level)).mfn;
                level -= 1;
            }
        }
        let ept_entry = self.entry(t, index_of(gfn, target));

        // `:915-942`: the new entry and `need_modify_vtd_table`.
        let mut new_entry = EptEntry::default();
        if writes_type {
            new_entry = new_leaf;
            let old_flags = p2m_get_iommu_flags(
                &sw,
                ept_entry.p2mt(),
                access_of_raw(ept_entry.access),
                Mfn(ept_entry.mfn),
            );
            let same_flags = !sw.ept_need_modify_checks_iommu_flags || old_flags == iommu_flags;
            let unchanged = if sw.ept_need_modify_requires_present_leaf {
                // Proposed fix (not Xen): only a present leaf with the same frame and the
                // same device-visible permission leaves the IOMMU alone.
                let leaf = target == 1 || ept_entry.sp;
                // With shared tables the IOTLB may also hold a W a recalc took away
                // unflushed (`ram_logdirty` keeps RW in `p2m_get_iommu_flags`): the
                // flags must agree as well as the bits, and an old `ram_logdirty` leaf
                // never counts as unchanged (its bits are those after the recalc).
                let old_logdirty = ept_entry.p2mt() == P2mType::RamLogdirty;
                let same_view = old_flags == iommu_flags
                    && (!cx.iommu.shared
                        || ((ept_entry.r, ept_entry.w) == (new_entry.r, new_entry.w)
                            && !old_logdirty));
                ept_entry.is_present() && leaf && ept_entry.mfn == new_entry.mfn && same_view
            } else {
                ept_entry.mfn == new_entry.mfn && same_flags
            };
            if unchanged {
                need_modify_vtd_table = false;
                bump(&mut cx.stats.need_modify_cleared, 1);
            }
        }
        self.write(cx, t, target, gfn, new_entry);
        if p2mt != P2mType::Invalid {
            // `:962-966`: the highest gfn ever mapped.
            self.recalc_state.note_mapped(gfn, order);
        }
        note_intermediate_replaced(cx, old_entry, target);
        let span = entry_range(gfn, target);
        if !sw.ept_free_entry_last {
            // ept-free-first: the replaced subtree goes before the IOMMU step.
            self.free_entry(cx, old_entry, target, span);
            old_entry = EptEntry::default();
        }

        // `:972-986`: the IOMMU step (rc is 0 here: the write cannot fail in the model).
        let mut rc = Ok(());
        // Proposed fix (not Xen): a split superpage must leave the IOTLB even when the op
        // changes nothing the device sees.
        let split_needs_flush = sw.flush_covers_split_superpage
            && cx.iommu.shared
            && vtd_pte_present
            && !cx.log.splits.is_empty();
        if need_modify_vtd_table || split_needs_flush {
            let flush_now = !cx.iommu.dont_flush || !sw.shared_ept_honours_dont_flush;
            let flags = FlushFlags {
                added: !iommu_flags.is_none(),
                modified: vtd_pte_present,
                all: false,
            };
            if cx.iommu.shared && flush_now {
                rc = cx.iommu_iotlb_flush(gfn, 1 << order, flags);
            } else if cx.iommu.shared {
                // Skipped under `dont_flush`: remembered for the proposed fix
                // `batch_flush_keeps_deferred_flags` only.
                cx.iommu.note_dropped(flags);
            } else if cx.need_iommu_pt_sync() && need_modify_vtd_table {
                let empty =
                    sw.iommu_flags_require_present_entry && (!writes_type || mfn == INVALID_MFN);
                rc = if !iommu_flags.is_none() && !empty {
                    cx.iommu_legacy_map(gfn, mfn.0, 1 << order, iommu_flags)
                } else {
                    cx.iommu_legacy_unmap(gfn, 1 << order)
                };
            }
        }

        // `:988-995`: release the replaced intermediate tables last.
        self.free_entry(cx, old_entry, target, span);
        rc
    }

    /// Models `ept_get_entry()` (`p2m-ept.c:1008-1117`) for a query without `P2M_ALLOC`:
    /// walking with `read_only = 1`, a non-present entry above 4 KiB ends the walk with
    /// Xen's defaults (`None`) — even a valid one, e.g. a 2 MiB `ram_rw` page with access
    /// `n` — unless it is PoD; PoD reads as `populate_on_demand`, `INVALID_MFN`, access `n`;
    /// a valid leaf gives its type, access and frame (plus the offset in a superpage).
    /// With `reads_nonpresent_superpage` (proposed fix, not Xen) a valid non-present
    /// superpage reads like a 4 KiB one.
    pub fn get_entry(&self, gfn: u64) -> Option<P2mEntry> {
        if gfn >> GFN_BITS != 0 {
            return None;
        }
        let mut t = self.root;
        let mut level = 4u8;
        // `:1042-1043`: a `recalc` mark anywhere on the walk recalculates the type.
        let mut recalc = false;
        let e = loop {
            let e = self.entry(t, index_of(gfn, level));
            recalc |= e.recalc;
            if level == 1 || e.sp {
                break e;
            }
            if !e.is_present() {
                return p2m_is_pod(e.p2mt()).then_some(POD_READING);
            }
            t = e.mfn;
            level -= 1;
        };
        if level > 1 && !e.is_present() && !(self.reads_nonpresent_superpage && e.sp) {
            return p2m_is_pod(e.p2mt()).then_some(POD_READING);
        }
        if p2m_is_pod(e.p2mt()) {
            return Some(POD_READING);
        }
        e.is_valid().then(|| P2mEntry {
            mfn: leaf_mfn(e.mfn, gfn & (pages_per_entry(level) - 1)),
            p2mt: p2m_recalc_type_range(recalc, e.p2mt(), &self.recalc_state, gfn, gfn),
            access: access_of_raw(e.access),
        })
    }

    /// The p2m's content over `range` as runs: every valid entry with the type, access and
    /// frame it stores — the state the oracle compares with the reference. Unlike
    /// [`Self::get_entry`], which models the query with Xen's quirks (a non-present
    /// superpage or PoD reads as no frame), it does not hide what a split or a walk
    /// dropped. Cost: the table runs the range meets, never its pages.
    pub fn cpu_extents(&self, range: GfnRange) -> Vec<CpuExtent> {
        let stored = cpu_extents_of(&self.tables, self.root, range, &|e: EptEntry, level| {
            if level > 1 && !e.sp && e.is_present() {
                EntryKind::Table(e.mfn)
            } else if !e.is_valid() {
                EntryKind::Empty
            } else {
                EntryKind::Leaf {
                    field: e.mfn,
                    mask: PTE_MFN_MASK,
                    p2mt: e.p2mt(),
                    access: access_of_raw(e.access),
                }
            }
        });
        let st = &self.recalc_state;
        overlay_recalc(stored, &self.recalc_marked(range), st, &recalc_type_of)
    }
}

/// The lazy type change: `ept_change_entry_type_range` / `_global` mark entries, and
/// `resolve_misconfig` rewrites what a mark covers when the CPU next walks there or a
/// `set_entry` starts below it. None of it calls the IOMMU: separate tables keep what
/// they had, and a VT-d unit sharing the EPT sees the new r/w bits with no IOTLB flush
/// (`atomic_write_ept_entry`'s comment, `p2m-ept.c:53-62`, accepts that for these types).
impl Ept {
    /// Sets the marks on `len` entries from `idx` of table `t` (whose first gfn is
    /// `base`) in place: a write that changes no translation, so nothing is unlinked and
    /// no cache record is made; the range is logged as changed.
    fn mark_run(&mut self, cx: &mut Cx, t: u64, base: u64, idx: u16, len: u16, first: EptEntry) {
        let Some(tab) = self.tables.get_mut(t) else {
            return;
        };
        let per = pages_per_entry(tab.level);
        tab.fill(idx, len, first);
        cx.log.p2m_changed(GfnRange {
            start: base + idx as u64 * per,
            end: base + (idx + len) as u64 * per,
        });
        self.recalc_state.marks_set = true;
    }

    /// Models `ept_invalidate_emt_subtree(p2m, mfn, recalc, level)` (`p2m-ept.c:371-404`):
    /// every valid, present entry of the table in frame `t` (first gfn `base`) gets the
    /// invalid EMT, and `recalc` when asked, unless it already has both (or the EMT mark
    /// and no recalc is asked). Returns whether an entry changed.
    fn invalidate_emt_subtree(&mut self, cx: &mut Cx, t: u64, base: u64, recalc: bool) -> bool {
        let Some(tab) = self.tables.get(t) else {
            return false;
        };
        let runs: Vec<_> = tab.iter_runs(0, 512).collect();
        let mut changed = false;
        for (s, l, e) in runs {
            if !e.is_valid() || !e.is_present() || (e.emt_misconfig && (e.recalc || !recalc)) {
                continue;
            }
            let marked = EptEntry {
                emt_misconfig: true,
                recalc: e.recalc || recalc,
                ..e
            };
            self.mark_run(cx, t, base, s, l, marked);
            changed = true;
        }
        changed
    }

    /// Models `ept_invalidate_emt_range(p2m, target, first_gfn, last_gfn)`
    /// (`p2m-ept.c:413-480`): walks read-only to `target` (nothing to do past a missing
    /// table), splitting a superpage met above it (`-ENOMEM`, with the partial subtree
    /// freed, when that fails), then marks (invalid EMT and `recalc`) the valid, present
    /// entries `first_gfn..=last_gfn` cover at `target` (within one table).
    fn invalidate_emt_range(
        &mut self,
        cx: &mut Cx,
        target: u8,
        first_gfn: u64,
        last_gfn: u64,
    ) -> Result<bool, P2mError> {
        let mut t = self.root;
        let mut level = 4u8;
        while level > target {
            let e = self.entry(t, index_of(first_gfn, level));
            if !e.is_present() {
                if p2m_is_pod(e.p2mt()) && e.sp {
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
            let e = self.entry(t, index_of(first_gfn, level));
            let span = entry_range(first_gfn, level);
            let (split, ok) = self.split_super_page(cx, e, level, target);
            if !ok {
                self.free_entry(cx, split, level, span);
                return Err(P2mError::TableNoMem);
            }
            cx.log.p2m_split(span, "ept_split_super_page");
            self.write(cx, t, level, first_gfn, split);
            while level > target {
                t = self.entry(t, index_of(first_gfn, level)).mfn;
                level -= 1;
            }
        }
        let per = pages_per_entry(target);
        let base = first_gfn / (per * 512) * (per * 512);
        let lo = index_of(first_gfn, target);
        let hi = index_of(last_gfn, target) + 1;
        let runs: Vec<_> = match self.tables.get(t) {
            Some(tab) => tab.iter_runs(lo, hi).collect(),
            None => return Ok(false),
        };
        let mut changed = false;
        for (s, l, e) in runs {
            if e.is_valid() && e.is_present() && (!e.emt_misconfig || !e.recalc) {
                let marked = EptEntry {
                    emt_misconfig: true,
                    recalc: true,
                    ..e
                };
                self.mark_run(cx, t, base, s, l, marked);
                changed = true;
            }
        }
        Ok(changed)
    }

    /// Models `ept_change_entry_type_global()` (`p2m-ept.c:1170-1180`): marks every
    /// entry of the root table for recalculation (`ot`/`nt` unused, as in Xen).
    pub fn change_entry_type_global(&mut self, cx: &mut Cx, _ot: P2mType, _nt: P2mType) {
        let root = self.root;
        self.invalidate_emt_subtree(cx, root, 0, true);
    }

    /// Models `ept_change_entry_type_range()` (`p2m-ept.c:1182-1226`): covers
    /// `first_gfn..=last_gfn` with marks at the largest levels that fit, peeling
    /// unaligned edges level by level (each piece within one table); `ot`/`nt` unused.
    pub fn change_entry_type_range(
        &mut self,
        cx: &mut Cx,
        _ot: P2mType,
        _nt: P2mType,
        first_gfn: u64,
        last_gfn: u64,
    ) -> Result<(), P2mError> {
        crate::recalc::for_each_range_piece(first_gfn, last_gfn, |level, first, last| {
            self.invalidate_emt_range(cx, level, first, last)
                .map(|_| ())
        })
    }

    /// Models `resolve_misconfig(p2m, gfn)` (`p2m-ept.c:623-765`), run by an EPT
    /// misconfig exit on `gfn` and at the start of `ept_set_entry`. Down the walk, a
    /// marked intermediate entry pushes its marks one level down
    /// (`ept_invalidate_emt_subtree`) and is cleared. At the leaf: a marked 4 KiB table
    /// gets every valid, present entry's type recalculated (`p2m_recalc_type`, flags
    /// rewritten when it changes) and the marks cleared; a marked superpage gets the type
    /// its whole range has, or, when the log-dirty ranges cover it in part, is split one
    /// level and the walk goes on (`-ENOMEM` if the split fails). Returns whether
    /// anything changed. The IOMMU is not told.
    pub fn resolve_misconfig(&mut self, cx: &mut Cx, gfn: u64) -> Result<bool, P2mError> {
        if gfn >> GFN_BITS != 0 {
            return Ok(false);
        }
        let mut t = self.root;
        let mut level = 4u8;
        let mut rc = false;
        loop {
            let e = self.entry(t, index_of(gfn, level));
            if level == 1 || e.sp {
                if !e.emt_misconfig {
                    break;
                }
                if level == 1 {
                    self.recalc_leaf_table(cx, t, gfn & !511);
                } else {
                    let span = entry_range(gfn, level);
                    let mut ne = e;
                    let recalc = e.recalc;
                    let mut force_split = false;
                    if recalc && p2m_is_changeable(e.p2mt()) {
                        match self
                            .recalc_state
                            .is_logdirty_range(span.start, span.end - 1)
                        {
                            LogdirtyOverlap::None => ne.sa_p2mt = P2mType::RamRw as u8,
                            LogdirtyOverlap::All => ne.sa_p2mt = P2mType::RamLogdirty as u8,
                            LogdirtyOverlap::Partial => force_split = true,
                        }
                    }
                    if force_split {
                        let (split, ok) = self.split_super_page(cx, e, level, level - 1);
                        if !ok {
                            self.free_entry(cx, split, level, span);
                            return Err(P2mError::TableNoMem);
                        }
                        cx.log.p2m_split(span, "ept_split_super_page");
                        self.write(cx, t, level, gfn, split);
                        t = split.mfn;
                        level -= 1;
                        continue;
                    }
                    ne.emt_misconfig = false;
                    ne.recalc = false;
                    if recalc && p2m_is_changeable(ne.p2mt()) {
                        ept_p2m_type_to_flags(&mut ne);
                    }
                    self.write(cx, t, level, gfn, ne);
                }
                rc = true;
                break;
            }
            if e.emt_misconfig {
                let base = entry_range(gfn, level).start;
                self.invalidate_emt_subtree(cx, e.mfn, base, e.recalc);
                let cleared = EptEntry {
                    emt_misconfig: false,
                    recalc: false,
                    ..e
                };
                let table_base = gfn & !(pages_per_entry(level) * 512 - 1);
                self.mark_run(cx, t, table_base, index_of(gfn, level), 1, cleared);
                rc = true;
            } else if !e.is_present() {
                break;
            }
            t = e.mfn;
            level -= 1;
        }
        Ok(rc)
    }

    /// The 4 KiB arm of `resolve_misconfig` (`p2m-ept.c:660-678`) on the leaf table `t`
    /// whose first gfn is `base`: every valid, present entry loses its marks and, when it
    /// had `recalc`, gets `p2m_recalc_type` for its gfn (r/w/x rewritten when the type
    /// changes). Runs are cut where the log-dirty ranges start or end.
    fn recalc_leaf_table(&mut self, cx: &mut Cx, t: u64, base: u64) {
        let Some(tab) = self.tables.get(t) else {
            return;
        };
        let runs: Vec<_> = tab.iter_runs(0, 512).collect();
        for (s, l, e) in runs {
            if !e.is_valid() || !e.is_present() {
                continue;
            }
            let run = GfnRange {
                start: base + s as u64,
                end: base + (s + l) as u64,
            };
            for (piece, _) in self.recalc_state.logdirty_pieces(run) {
                let k = piece.start - run.start;
                let first = e.nth(k, 1);
                let mut ne = EptEntry {
                    emt_misconfig: false,
                    recalc: false,
                    ..first
                };
                let nt = p2m_recalc_type_range(
                    e.recalc,
                    e.p2mt(),
                    &self.recalc_state,
                    piece.start,
                    piece.start,
                );
                if nt != e.p2mt() {
                    ne.sa_p2mt = nt as u8;
                    ept_p2m_type_to_flags(&mut ne);
                }
                let idx = (piece.start - base) as u16;
                let len = piece.len() as u16;
                if ept_io_entry(ne, 1) != ept_io_entry(first, 1) && cx.iommu.shared {
                    for j in 0..len {
                        let g = piece.start + j as u64;
                        note_overwrite(
                            &mut cx.iommu.caches,
                            &*self,
                            cx.mem,
                            GfnRange::of_order(g, 0),
                            1,
                            ept_io_entry(first.nth(j as u64, 1), 1),
                            cx.seq,
                        );
                    }
                }
                if let Some(tab) = self.tables.get_mut(t) {
                    tab.fill(idx, len, ne);
                }
                cx.log.p2m_changed(piece);
            }
        }
    }

    /// The gfn ranges in `range` whose walk meets a `recalc` mark (what `ept_get_entry`
    /// recalculates on the fly), sorted and merged; empty when no mark was ever set.
    fn recalc_marked(&self, range: GfnRange) -> Vec<GfnRange> {
        let mut out = Vec::new();
        if self.recalc_state.marks_set {
            self.marked_in(self.root, 4, 0, range, &mut out);
        }
        out
    }

    /// [`Self::recalc_marked`] within table `t` at `level` whose first gfn is `base`.
    fn marked_in(&self, t: u64, level: u8, base: u64, range: GfnRange, out: &mut Vec<GfnRange>) {
        let Some(tab) = self.tables.get(t) else {
            return;
        };
        let per = pages_per_entry(level);
        let lo = ((range.start.max(base) - base) / per) as u16;
        let hi = ((range.end.min(base + per * 512) - base).div_ceil(per)) as u16;
        for (s, l, e) in tab.iter_runs(lo, hi) {
            let run = GfnRange {
                start: base + s as u64 * per,
                end: base + (s + l) as u64 * per,
            };
            let Some(hit) = run.intersect(&range) else {
                continue;
            };
            if e.recalc && e.is_valid() {
                crate::recalc::push_marked(out, hit);
            } else if level > 1 && e.is_present() && !e.sp {
                for k in 0..l as u64 {
                    let child = GfnRange::of_order(run.start + k * per, 9 * (level as u32 - 1));
                    if let Some(sub) = child.intersect(&hit) {
                        self.marked_in(e.nth(k, level).mfn, level - 1, child.start, sub, out);
                    }
                }
            }
        }
    }
}

/// What `ept_get_entry` returns for PoD without `P2M_ALLOC` (`p2m-ept.c:1023-1024`,
/// `:1054`, `:1079`): `populate_on_demand`, `INVALID_MFN`, access `n` (the initial value).
const POD_READING: P2mEntry = P2mEntry {
    mfn: INVALID_MFN,
    p2mt: P2mType::PopulateOnDemand,
    access: P2mAccess::N,
};

/// How VT-d reads an EPT entry at `level` when it shares the EPT (`domain_pgd_maddr`,
/// `vtd/iommu.c:434-481`, hands it the p2m root): present when r or w is set (x alone is
/// not a DMA permission), a leaf at level 1 or with the superpage bit.
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

/// The EPT as a shared VT-d unit walks it (`vtd/iommu.c:434-481`).
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
        let per = pages_per_entry(level);
        for (s, l, e) in tab.iter_runs(lo, hi) {
            match ept_io_entry(e, level) {
                IoEntry::NotPresent => f(s, l, IoEntry::NotPresent),
                IoEntry::Leaf { .. } => {
                    // Split where the 40-bit frame field wraps: the walk adds linearly.
                    for (k0, k1) in linear_pieces(e.mfn, per, l as u64, &[]) {
                        let first = ept_io_entry(e.nth(k0, level), level);
                        f(s + k0 as u16, (k1 - k0) as u16, first);
                    }
                }
                IoEntry::Next { .. } => {
                    for k in 0..l {
                        f(s + k, 1, ept_io_entry(e.nth(k as u64, level), level));
                    }
                }
            }
        }
        true
    }
}

/// Counts a present intermediate entry replaced by a leaf (the `ept_free_entry` case of
/// `ept_set_entry`): bookkeeping only.
fn note_intermediate_replaced(cx: &mut Cx, old: EptEntry, target: u8) {
    if old.is_present() && !old.sp && target > 1 {
        cx.stats.intermediate_replaced += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::ReachVia;
    use crate::master::domain::{Domain, P2m};
    use crate::master::p2m::IommuCall;
    use crate::revision::Revision;

    fn dom(share: bool, rev: &str) -> Domain {
        Domain::new(
            Config::new(Mode::Ept, Vendor::Vtd, share),
            Revision::by_name(rev).unwrap(),
        )
    }

    fn ept(d: &Domain) -> &Ept {
        match &d.p2m {
            P2m::Ept(e) => e,
            P2m::Pt(_) => unreachable!(),
        }
    }

    const RW: P2mAccess = P2mAccess::Rwx;

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

    fn flush(dfn: u64, page_count: u64, added: bool, modified: bool) -> IommuCall {
        IommuCall::IotlbFlush {
            dfn,
            page_count,
            flags: FlushFlags {
                added,
                modified,
                all: false,
            },
        }
    }

    #[test]
    fn type_to_flags() {
        let f = |t: P2mType, a: P2mAccess, mfn: u64, sp: bool| {
            let mut e = EptEntry {
                sa_p2mt: t as u8,
                access: a as u8,
                mfn,
                sp,
                ..Default::default()
            };
            ept_p2m_type_to_flags(&mut e);
            (e.r, e.w, e.x)
        };
        let ro = MMIO_RO_FRAMES.start;
        assert_eq!(f(P2mType::RamRw, RW, 5, false), (true, true, true));
        assert_eq!(
            f(P2mType::RamRw, P2mAccess::R, 5, false),
            (true, false, false)
        );
        assert_eq!(
            f(P2mType::RamRw, P2mAccess::W, 5, false),
            (false, true, false)
        );
        assert_eq!(
            f(P2mType::RamRw, P2mAccess::N2rwx, 5, false),
            (false, false, false)
        );
        assert_eq!(f(P2mType::RamLogdirty, RW, 5, false), (true, false, true));
        assert_eq!(f(P2M_IOREQ_SERVER, RW, 5, false), (true, false, false));
        assert_eq!(
            f(P2mType::MmioDirect, RW, MAX_PAGE, true),
            (true, true, true)
        );
        assert_eq!(f(P2mType::MmioDirect, RW, ro, false), (true, false, true));
        assert_eq!(f(P2mType::GrantMapRw, RW, 5, false), (true, true, false));
        assert_eq!(f(P2mType::GrantMapRo, RW, 5, false), (true, false, false));
        assert_eq!(
            f(P2mType::RamShared, P2mAccess::Wx, 5, false),
            (false, false, true)
        );
        for t in [
            P2mType::Invalid,
            P2mType::MmioDm,
            P2mType::PopulateOnDemand,
            P2mType::RamPaged,
            P2mType::RamBroken,
        ] {
            assert_eq!(f(t, RW, 5, false), (false, false, false), "{t}");
        }
    }

    #[test]
    fn map_split_and_views() {
        let mut d = dom(false, "xen-master");
        d.set_entry(0x200, Mfn(0x1000), 9, P2mType::RamRw, RW)
            .unwrap();
        assert_eq!(
            d.calls,
            [IommuCall::LegacyMap {
                dfn: 0x200,
                mfn: 0x1000,
                page_count: 512,
                perm: IommuPerm::RW
            }]
        );
        let tables_before = ept(&d).tables.len();
        d.set_entry(0x205, Mfn(0x9000), 0, P2mType::RamRo, RW)
            .unwrap();
        assert_eq!(p2m_splits(&d).len(), 1);
        assert_eq!(p2m_splits(&d)[0], GfnRange::of_order(0x200, 9));
        assert_eq!(ept(&d).tables.len(), tables_before + 1);
        assert_eq!(d.stats.superpage_splits, 1);
        assert_eq!(d.get_entry(0x204).unwrap().mfn, Mfn(0x1004));
        assert_eq!(
            d.get_entry(0x205).unwrap(),
            P2mEntry {
                mfn: Mfn(0x9000),
                p2mt: P2mType::RamRo,
                access: RW
            }
        );
        assert_eq!(d.get_entry(0x206).unwrap().mfn, Mfn(0x1006));
        let x = d.cpu_extents(GfnRange::of_order(0x200, 9));
        assert_eq!(x.len(), 3);
        assert_eq!(
            x[0].range,
            GfnRange {
                start: 0x200,
                end: 0x205
            }
        );
        assert_eq!(x[2].mfn, Mfn(0x1006));
        // The split keeps the old entry's frame at 0x205, so the IOMMU is told.
        assert_eq!(
            d.calls,
            [IommuCall::LegacyMap {
                dfn: 0x205,
                mfn: 0x9000,
                page_count: 1,
                perm: IommuPerm::R
            }]
        );
    }

    #[test]
    fn split_1g_to_4k_builds_513_tables_as_runs() {
        let mut d = dom(true, "xen-master");
        d.set_entry(0, Mfn(0x40000 * 8), 18, P2mType::RamRw, RW)
            .unwrap();
        let before = ept(&d).tables.len();
        d.set_entry(0x12345, Mfn(7), 0, P2mType::RamRw, RW).unwrap();
        assert_eq!(ept(&d).tables.len(), before + 513);
        assert_eq!(d.stats.superpage_splits, 513);
        assert!(ept(&d).tables.frames().all(|(_, t)| t.run_count() <= 512));
        let l1_runs: usize = ept(&d)
            .tables
            .frames()
            .filter(|(_, t)| t.level == 1)
            .map(|(_, t)| t.run_count())
            .sum();
        assert_eq!(
            l1_runs,
            512 + 2,
            "one run per split table, three in the changed one"
        );
        assert_eq!(
            d.get_entry(0x12344).unwrap().mfn,
            Mfn(0x40000 * 8 + 0x12344)
        );
        assert_eq!(d.get_entry(0x12345).unwrap().mfn, Mfn(7));
        // The split sampled a present superpage: flush with MODIFIED, exactly the op's range.
        assert_eq!(d.calls, [flush(0x12345, 1, true, true)]);
    }

    #[test]
    fn split_mmio_over_ro_frames_removes_write_per_child() {
        let mut d = dom(true, "xen-master");
        d.set_entry(0x200, Mfn(MAX_PAGE), 9, P2mType::MmioDirect, RW)
            .unwrap();
        d.set_entry(0x200, Mfn(MAX_PAGE), 0, P2mType::MmioDirect, RW)
            .unwrap();
        let ro = d.get_entry(0x300).unwrap();
        assert_eq!(ro.mfn, Mfn(MMIO_RO_FRAMES.start));
        let view = d.current_view(GfnRange::of_order(0x200, 9));
        let perm_at = |g: u64| {
            view.translations
                .iter()
                .find(|t| t.range.contains(g))
                .map(|t| t.perm)
        };
        assert_eq!(perm_at(0x2ff), Some(IommuPerm::RW));
        assert_eq!(perm_at(0x300), Some(IommuPerm::R));
        assert_eq!(perm_at(0x3ff), Some(IommuPerm::R));
    }

    #[test]
    fn need_modify_decisions() {
        for share in [false, true] {
            let mut d = dom(share, "xen-master");
            d.set_entry(0x10, Mfn(0x500), 0, P2mType::RamRw, RW)
                .unwrap();
            // Same frame, same IOMMU flags: no IOMMU step.
            d.set_entry(0x10, Mfn(0x500), 0, P2mType::RamRw, RW)
                .unwrap();
            assert!(d.calls.is_empty(), "share={share}");
            // Access-only change on ram_rw: the flags ignore access, so none (by design).
            d.set_entry(0x10, Mfn(0x500), 0, P2mType::RamRw, P2mAccess::R)
                .unwrap();
            assert!(d.calls.is_empty(), "share={share}");
            // ram_rw -> ram_ro on the same frame: the flags differ.
            d.set_entry(0x10, Mfn(0x500), 0, P2mType::RamRo, RW)
                .unwrap();
            let want = if share {
                flush(0x10, 1, true, true)
            } else {
                IommuCall::LegacyMap {
                    dfn: 0x10,
                    mfn: 0x500,
                    page_count: 1,
                    perm: IommuPerm::R,
                }
            };
            assert_eq!(d.calls, [want], "share={share}");
            // ept-perm-noflush: the frame alone decides.
            let mut u = dom(share, "ept-perm-noflush");
            u.set_entry(0x10, Mfn(0x500), 0, P2mType::RamRw, RW)
                .unwrap();
            u.set_entry(0x10, Mfn(0x500), 0, P2mType::RamRo, RW)
                .unwrap();
            assert!(u.calls.is_empty(), "share={share}");
        }
    }

    #[test]
    fn empty_entry_reads_as_ram_rw_frame_0() {
        // An empty entry is sa_p2mt 0 (ram_rw) with frame 0: mapping frame 0 as ram_rw
        // there clears need_modify_vtd_table, so the IOMMU is not told.
        let mut d = dom(false, "xen-master");
        d.set_entry(0x10, Mfn(0), 0, P2mType::RamRw, RW).unwrap();
        assert!(d.calls.is_empty());
        assert_eq!(d.stats.need_modify_cleared, 1);
        // An intermediate entry reads as ram_rw with the table's frame.
        let mut d = dom(false, "xen-master");
        d.set_entry(0x200, Mfn(0x1000), 0, P2mType::RamRw, RW)
            .unwrap();
        let l2 = ept(&d).entry(ept(&d).root, 0);
        let l2 = ept(&d).entry(l2.mfn, 0);
        let table = ept(&d).entry(l2.mfn, 1).mfn;
        d.set_entry(0x200, Mfn(table), 9, P2mType::RamRw, RW)
            .unwrap();
        assert!(
            d.calls.is_empty(),
            "leaf over a table with the table's frame"
        );
        assert_eq!(p2m_frees(&d).len(), 1);
    }

    #[test]
    fn shared_flush_flags_and_dont_flush() {
        let mut d = dom(true, "xen-master");
        d.set_entry(0x10, Mfn(0x500), 0, P2mType::RamRw, RW)
            .unwrap();
        assert_eq!(d.calls, [flush(0x10, 1, true, false)]);
        d.set_entry(0x10, Mfn(0x600), 0, P2mType::RamRw, RW)
            .unwrap();
        assert_eq!(d.calls, [flush(0x10, 1, true, true)]);
        d.set_entry(0x10, INVALID_MFN, 0, P2mType::Invalid, RW)
            .unwrap();
        assert_eq!(d.calls, [flush(0x10, 1, false, true)]);
        d.iommu.dont_flush = true;
        d.set_entry(0x10, Mfn(0x700), 0, P2mType::RamRw, RW)
            .unwrap();
        assert!(
            d.calls.is_empty(),
            "the batch flushes afterwards (83432adeb8)"
        );
        let mut u = dom(true, "83432adeb8-undone");
        u.iommu.dont_flush = true;
        u.set_entry(0x10, Mfn(0x700), 0, P2mType::RamRw, RW)
            .unwrap();
        assert_eq!(u.calls, [flush(0x10, 1, true, false)]);
    }

    #[test]
    fn separate_map_and_unmap_calls() {
        let mut d = dom(false, "xen-master");
        d.iommu.dont_flush = true;
        d.set_entry(0x400, Mfn(0x800), 9, P2mType::GrantMapRo, RW)
            .unwrap();
        assert_eq!(
            d.calls,
            [IommuCall::LegacyMap {
                dfn: 0x400,
                mfn: 0x800,
                page_count: 512,
                perm: IommuPerm::R
            }]
        );
        d.set_entry(0x400, INVALID_MFN, 9, P2mType::Invalid, RW)
            .unwrap();
        assert_eq!(
            d.calls,
            [IommuCall::LegacyUnmap {
                dfn: 0x400,
                page_count: 512
            }]
        );
        assert_eq!(d.get_entry(0x400), None);
        // A RAM type with an invalid frame writes an empty entry but still maps it
        // (the flags come from the type).
        d.set_entry(0x10, INVALID_MFN, 0, P2mType::RamRw, RW)
            .unwrap();
        assert_eq!(
            d.calls,
            [IommuCall::LegacyMap {
                dfn: 0x10,
                mfn: INVALID_MFN.0,
                page_count: 1,
                perm: IommuPerm::RW
            }]
        );
        assert_eq!(d.get_entry(0x10), None);
        // W-only mmio_direct is mapped W-only.
        d.set_entry(
            0x11,
            Mfn(MAX_PAGE + 1),
            0,
            P2mType::MmioDirect,
            P2mAccess::W,
        )
        .unwrap();
        assert_eq!(
            d.calls,
            [IommuCall::LegacyMap {
                dfn: 0x11,
                mfn: MAX_PAGE + 1,
                page_count: 1,
                perm: IommuPerm {
                    read: false,
                    write: true
                }
            }]
        );
    }

    /// Shared EPT, 4 KiB maps then a 2 MiB leaf over their table: the table is freed after
    /// the flush, so nothing reaches it; freed first (`ept-free-first`), the cached
    /// pointer to it still does.
    #[test]
    fn shared_leaf_over_intermediate_frees_after_flush() {
        for (rev, reached) in [("xen-master", false), ("ept-free-first", true)] {
            let mut d = dom(true, rev);
            for g in 0x200..0x204 {
                d.set_entry(g, Mfn(0x1000 + g), 0, P2mType::RamRw, RW)
                    .unwrap();
            }
            d.set_entry(0x200, Mfn(0x4000), 9, P2mType::RamRw, RW)
                .unwrap();
            assert_eq!(d.calls, [flush(0x200, 512, true, true)], "{rev}");
            assert_eq!(p2m_frees(&d).len(), 1, "{rev}");
            let ev = p2m_frees(&d)[0];
            assert_eq!(ev.span, GfnRange::of_order(0x200, 9));
            assert_eq!(!ev.reaches.is_empty(), reached, "{rev}: {:?}", ev.reaches);
            if reached {
                assert!(ev
                    .reaches
                    .iter()
                    .all(|r| matches!(r.via, ReachVia::CachedWalk { .. })));
            }
            assert_eq!(p2m_unlinked(&d), 1);
            assert!(d.log.leaked(&d.mem).next().is_none());
            assert!(d.log.bad_frees.is_empty());
            assert_eq!(d.stats.intermediate_replaced, 1);
            assert_eq!(d.get_entry(0x203).unwrap().mfn, Mfn(0x4003));
        }
    }

    /// A 1 GiB leaf over a two-level subtree frees it children first, every table once.
    #[test]
    fn free_entry_recurses() {
        let mut d = dom(false, "xen-master");
        d.set_entry(0x10, Mfn(0x10), 0, P2mType::RamRw, RW).unwrap();
        d.set_entry(0x400, Mfn(0x400), 0, P2mType::RamRw, RW)
            .unwrap();
        d.set_entry(0x800, Mfn(0x800), 9, P2mType::RamRw, RW)
            .unwrap();
        d.set_entry(0, Mfn(0x40000 * 4), 18, P2mType::RamRw, RW)
            .unwrap();
        let levels: Vec<_> = p2m_frees(&d)
            .iter()
            .map(|f| match f.what {
                crate::events::Freed::Table { level, .. } => level,
                crate::events::Freed::GuestPage { .. } => 0,
            })
            .collect();
        assert_eq!(levels, [1, 1, 2]);
        assert!(d.log.bad_frees.is_empty());
        assert!(d.log.leaked(&d.mem).next().is_none());
    }

    #[test]
    fn get_entry_quirks() {
        let mut d = dom(false, "xen-master");
        // A valid but non-present 2 MiB page reads as nothing (read-only walk fails).
        d.set_entry(0x200, Mfn(0x1000), 9, P2mType::RamRw, P2mAccess::N)
            .unwrap();
        assert_eq!(d.get_entry(0x201), None);
        // At 4 KiB it reads back.
        d.set_entry(0x10, Mfn(0x1000), 0, P2mType::RamRw, P2mAccess::N)
            .unwrap();
        assert_eq!(d.get_entry(0x10).unwrap().access, P2mAccess::N);
        // PoD reads as populate_on_demand with no frame and access n.
        d.set_entry(0x400, INVALID_MFN, 9, P2mType::PopulateOnDemand, RW)
            .unwrap();
        assert_eq!(d.get_entry(0x4ff), Some(POD_READING));
        // mmio_direct without a frame: BUG_ON when present; not present (access n), the
        // clipped field reads as INVALID_MFN.
        assert_eq!(
            d.set_entry(0x11, INVALID_MFN, 0, P2mType::MmioDirect, RW),
            Err(P2mError::XenBug(BUG_PRESENT_INVALID_MFN))
        );
        d.set_entry(0x11, INVALID_MFN, 0, P2mType::MmioDirect, P2mAccess::N)
            .unwrap();
        assert_eq!(d.get_entry(0x11).unwrap().mfn, INVALID_MFN);
        assert_eq!(d.get_entry(1 << 40), None);
        let x = d.cpu_extents(GfnRange {
            start: 0x3ff,
            end: 0x601,
        });
        assert_eq!(x.len(), 3);
        assert_eq!(x[1].p2mt, P2mType::PopulateOnDemand);
    }

    #[test]
    fn errors_leave_the_domain_unchanged() {
        let mut d = dom(true, "xen-master");
        let mut before = String::new();
        d.write_state(&mut before).unwrap();
        let bad = [
            (0x201, Mfn(0x200), 9, P2mType::RamRw, P2mError::Misaligned),
            (0x200, Mfn(0x201), 9, P2mType::RamRw, P2mError::Misaligned),
            (0, Mfn(0), 27, P2mType::RamRw, P2mError::BadOrder),
            (0, Mfn(0), 3, P2mType::RamRw, P2mError::BadOrder),
            (1 << 36, Mfn(0), 0, P2mType::RamRw, P2mError::GfnOutOfRange),
            (
                0x200,
                Mfn(0x200),
                9,
                P2mType::MapForeign,
                P2mError::XenBug(BUG_SPECIAL_TYPE_ABOVE_4K),
            ),
            (
                0x200,
                Mfn(0x200),
                9,
                P2M_IOREQ_SERVER,
                P2mError::XenBug(BUG_SPECIAL_TYPE_ABOVE_4K),
            ),
            (
                0x200,
                INVALID_MFN,
                9,
                P2mType::MmioDirect,
                P2mError::XenBug(BUG_PRESENT_INVALID_MFN),
            ),
        ];
        for (g, m, o, t, e) in bad {
            assert_eq!(d.set_entry(g, m, o, t, RW), Err(e));
        }
        let mut after = String::new();
        d.write_state(&mut after).unwrap();
        assert_eq!(before, after);
        // INVALID_MFN only needs an aligned gfn; foreign / ioreq_server without a frame
        // write an empty entry, so no BUG_ON.
        assert_eq!(
            d.set_entry(0x200, INVALID_MFN, 9, P2mType::MapForeign, RW),
            Ok(())
        );
        assert_eq!(
            d.set_entry(0x200, INVALID_MFN, 9, P2mType::MmioDirect, P2mAccess::N2rwx),
            Ok(())
        );
        assert_eq!(
            d.set_entry(0x10, Mfn(3), 0, P2mType::MapForeign, P2mAccess::N),
            Ok(())
        );
    }
}
