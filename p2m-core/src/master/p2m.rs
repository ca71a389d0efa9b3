//! The generic p2m layer of the master line: `p2m_set_entry` (`xen/arch/x86/mm/p2m.c`)
//! and the type predicates and IOMMU permission policy of `xen/arch/x86/include/asm/p2m.h`.
//!
//! Line references are at Xen commit `c447b7308b`.

use crate::master::iommu::FlushFlags;
use crate::master::revision::Switches;
use crate::recalc::{LogdirtyOverlap, RecalcState};
use crate::tables::{index_of, pages_per_entry, Pte, TableStore};
use crate::types::{in_mmio_ro_ranges, Config, IommuPerm, Mfn, Mode, P2mAccess, P2mError, P2mType};
use crate::types::{GfnRange, GFN_BITS, INVALID_MFN, PTE_MFN_MASK};
use crate::view::CpuExtent;

/// `p2m_ioreq_server` (`asm/p2m.h:67`): on master, type number 15 (the 4.6 numbering's
/// `mmio_write_dm`) is the ioreq-server type.
pub const P2M_IOREQ_SERVER: P2mType = P2mType::MmioWriteDm;

/// `CONFIG_MEM_PAGING` (`arch/x86/hvm/Kconfig:87-89`): off in the default (supported)
/// build, so `P2M_PAGING_TYPES` is empty (`asm/p2m.h:128-135`) and the paging types are
/// neither "paging" nor allowed an invalid frame. Memory paging is refused for a domain
/// with an IOMMU anyway (`arch_iommu_use_permitted`, `x86/iommu.c:772-783`).
pub const CONFIG_MEM_PAGING: bool = false;

/// `p2m->ioreq.flags & XEN_DMOP_IOREQ_MEM_ACCESS_WRITE` (`p2m-ept.c:96`, `p2m-pt.c:71`):
/// modelled as set, i.e. an ioreq server has claimed writes to `p2m_ioreq_server` pages
/// (the one access `XEN_DMOP_map_mem_type_to_ioreq_server` supports), so those pages
/// are read-only to the CPU.
pub const IOREQ_MEM_ACCESS_WRITE: bool = true;

/// `p2m_is_pod()` (`asm/p2m.h:171`).
pub fn p2m_is_pod(t: P2mType) -> bool {
    t == P2mType::PopulateOnDemand
}

/// `p2m_is_paging()` (`asm/p2m.h:179`), under [`CONFIG_MEM_PAGING`].
pub fn p2m_is_paging(t: P2mType) -> bool {
    CONFIG_MEM_PAGING
        && matches!(
            t,
            P2mType::RamPagingOut | P2mType::RamPaged | P2mType::RamPagingIn
        )
}

/// `p2m_is_ram()` (`asm/p2m.h:80-87`, `P2M_RAM_TYPES`).
pub fn p2m_is_ram(t: P2mType) -> bool {
    use P2mType::*;
    matches!(
        t,
        RamRw | RamLogdirty | RamRo | RamPagingOut | RamPaged | RamPagingIn | RamShared
    ) || t == P2M_IOREQ_SERVER
}

/// `p2m_is_valid()` (`asm/p2m.h:176-177`): RAM types and `mmio_direct` (grants are not).
pub fn p2m_is_valid(t: P2mType) -> bool {
    p2m_is_ram(t) || t == P2mType::MmioDirect
}

/// `p2m_is_any_ram()` (`asm/p2m.h:187-189`): RAM, grant and foreign types.
pub fn p2m_is_any_ram(t: P2mType) -> bool {
    p2m_is_ram(t)
        || matches!(
            t,
            P2mType::GrantMapRw | P2mType::GrantMapRo | P2mType::MapForeign
        )
}

/// `p2m_allows_invalid_mfn()` (`asm/p2m.h:156-159,191`): PoD, `mmio_direct` and (with
/// [`CONFIG_MEM_PAGING`]) the paging types.
pub fn p2m_allows_invalid_mfn(t: P2mType) -> bool {
    p2m_is_pod(t) || t == P2mType::MmioDirect || p2m_is_paging(t)
}

/// `P2mError::XenBug` text of the `p2m_entry_modify()` `BUG_ON` (`asm/p2m.h:1050`).
pub const BUG_SPECIAL_TYPE_ABOVE_4K: &str =
    "p2m_entry_modify: foreign or ioreq_server entry above 4 KiB, asm/p2m.h:1050";

/// `P2mError::XenBug` text of the `ept_set_entry` `BUG_ON` (`p2m-ept.c:940`).
pub const BUG_PRESENT_INVALID_MFN: &str =
    "ept_set_entry: present entry with INVALID_MFN, p2m-ept.c:940";

/// The `BUG_ON` of `p2m_entry_modify()` (`asm/p2m.h:1050`): a foreign or ioreq-server
/// entry written above 4 KiB crashes the host. `writes_type`: the written entry carries
/// the type (its frame is valid or the type allows an invalid one).
pub fn p2m_entry_modify_bugs(t: P2mType, level: u8, writes_type: bool) -> bool {
    writes_type && level > 1 && (t == P2mType::MapForeign || t == P2M_IOREQ_SERVER)
}

/// `p2m_is_changeable()` (`asm/p2m.h:170`, `P2M_CHANGEABLE_TYPES`): the types a range
/// type change and its recalc may rewrite: `ram_rw`, `ram_logdirty`, `ioreq_server`.
pub fn p2m_is_changeable(t: P2mType) -> bool {
    matches!(t, P2mType::RamRw | P2mType::RamLogdirty | P2M_IOREQ_SERVER)
}

/// `p2m_recalc_type_range()` (`asm/p2m.h:847-860`): a changeable type under a recalc mark
/// becomes `ram_logdirty` when `p2m_is_logdirty_range` is non-zero for `[start, end]`
/// (so a partial overlap, -1, also reads as log-dirty), else `ram_rw`; an `ioreq_server`
/// page keeps its type while a server is mapped (always, in the model: see
/// [`IOREQ_MEM_ACCESS_WRITE`]). `p2m_recalc_type()` is the one-gfn form.
pub fn p2m_recalc_type_range(
    recalc: bool,
    t: P2mType,
    st: &RecalcState,
    start: u64,
    end: u64,
) -> P2mType {
    if !recalc {
        return t;
    }
    recalc_type_of(t, st.is_logdirty_range(start, end) != LogdirtyOverlap::None)
}

/// The type [`p2m_recalc_type_range`] gives a marked entry of type `t` whose range
/// `p2m_is_logdirty_range` answers non-zero for (`logdirty`) or zero.
pub fn recalc_type_of(t: P2mType, logdirty: bool) -> P2mType {
    if !p2m_is_changeable(t) || t == P2M_IOREQ_SERVER {
        t
    } else if logdirty {
        P2mType::RamLogdirty
    } else {
        P2mType::RamRw
    }
}

/// `p2m_access_to_iommu_flags()` (`asm/p2m.h:976-1001`): rw, rwx → RW; r, rx, rx2rw
/// (and `r_pw`, not modelled) → R; w, wx → W only; n, x, n2rwx → nothing.
pub fn p2m_access_to_iommu_flags(a: P2mAccess) -> IommuPerm {
    use P2mAccess::*;
    match a {
        Rw | Rwx => IommuPerm::RW,
        R | Rx | Rx2rw => IommuPerm::R,
        W | Wx => IommuPerm {
            read: false,
            write: true,
        },
        N | X | N2rwx => IommuPerm::NONE,
    }
}

/// `p2m_get_iommu_flags(p2mt, p2ma, mfn)` (`asm/p2m.h:1007-1036`): RW for `ram_rw`,
/// `grant_map_rw`, `ram_logdirty`, `map_foreign`; R for `ram_ro`, `grant_map_ro`; for
/// `mmio_direct` the access's flags without write when the frame is in `mmio_ro_ranges`;
/// nothing otherwise. Switches: `mmio_direct_honours_access` (false: RW whatever the
/// access, d1bb6c97c3 undone) and `mmio_direct_mapped` (false: nothing, 6f6d3b10ec undone).
pub fn p2m_get_iommu_flags(sw: &Switches, t: P2mType, a: P2mAccess, mfn: Mfn) -> IommuPerm {
    use P2mType::*;
    match t {
        RamRw | GrantMapRw | RamLogdirty | MapForeign => IommuPerm::RW,
        RamRo | GrantMapRo => IommuPerm::R,
        MmioDirect if sw.mmio_direct_mapped => {
            let mut f = if sw.mmio_direct_honours_access {
                p2m_access_to_iommu_flags(a)
            } else {
                IommuPerm::RW
            };
            if f.write && in_mmio_ro_ranges(mfn) {
                f.write = false;
            }
            f
        }
        _ => IommuPerm::NONE,
    }
}

/// The p2m type held in a raw type field (`sa_p2mt`, or `p2m_flags_to_type()`); a number
/// that is no type (never written by the model) reads as `invalid`.
pub fn type_of_raw(raw: u32) -> P2mType {
    u8::try_from(raw)
        .ok()
        .and_then(P2mType::from_raw)
        .unwrap_or(P2mType::Invalid)
}

/// The access held in a raw access field; `p2m_access_r_pw` (10) is not modelled and
/// reads as `r`, which it equals for every device-visible decision.
pub fn access_of_raw(raw: u8) -> P2mAccess {
    P2mAccess::from_raw(raw).unwrap_or(P2mAccess::R)
}

/// The HAP capabilities `p2m_set_entry` looks at (`hap_enabled(d)`, `hap_has_1gb`,
/// `hap_has_2mb`, `asm/hvm/hvm.h:438-439`).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct P2mCaps {
    /// `hap_enabled(d)`: EPT or NPT (false in shadow mode).
    pub hap: bool,
    /// `hap_has_1gb`.
    pub hap_has_1gb: bool,
    /// `hap_has_2mb`.
    pub hap_has_2mb: bool,
}

impl P2mCaps {
    /// The capabilities of a domain with configuration `cfg`: HAP unless in shadow mode;
    /// the hardware is modelled as supporting 2 MiB and 1 GiB HAP pages (every EPT and
    /// NPT implementation of the last decade does).
    pub fn of(cfg: &Config) -> P2mCaps {
        P2mCaps {
            hap: cfg.mode != Mode::Shadow,
            hap_has_1gb: true,
            hap_has_2mb: true,
        }
    }
}

/// Largest `page_order` the model's [`p2m_set_entry`] accepts: one 1 GiB page. Xen's
/// callers in scope never pass more; larger orders would only repeat 1 GiB chunks.
pub const P2M_SET_ENTRY_MAX_ORDER: u32 = 18;

/// Models `p2m_set_entry()` (`p2m.c:422-452`): splits `[gfn, gfn + 2^page_order)` into
/// chunks and calls `set_entry(gfn, mfn, order)` on each. A chunk is 1 GiB when
/// `gfn | mfn | remaining` is 1 GiB-aligned under HAP with `hap_has_1gb`, else 2 MiB when
/// 2 MiB-aligned and (shadow mode, or HAP with `hap_has_2mb`; shadow since f2d947ac07),
/// else 4 KiB. `INVALID_MFN` contributes nothing to the alignment (efa9596e9d: it is no
/// longer forced to 4 KiB) and does not advance. A failed chunk does not stop the loop:
/// the result is the error of the **last** failed chunk (`rc = set_rc` on each failure).
/// `page_order` above [`P2M_SET_ENTRY_MAX_ORDER`] is refused with `BadOrder` before any
/// chunk.
pub fn p2m_set_entry(
    caps: P2mCaps,
    gfn: u64,
    mfn: Mfn,
    page_order: u32,
    mut set_entry: impl FnMut(u64, Mfn, u32) -> Result<(), P2mError>,
) -> Result<(), P2mError> {
    if page_order > P2M_SET_ENTRY_MAX_ORDER {
        return Err(P2mError::BadOrder);
    }
    let mut todo = 1u64 << page_order;
    let (mut gfn, mut mfn) = (gfn, mfn);
    let mut rc = Ok(());
    while todo != 0 {
        let order = p2m_set_entry_order(caps, gfn, mfn, todo);
        if let Err(e) = set_entry(gfn, mfn, order) {
            rc = Err(e);
        }
        gfn = gfn.wrapping_add(1 << order);
        if mfn != INVALID_MFN {
            mfn = mfn.plus(1 << order);
        }
        todo -= 1 << order;
    }
    rc
}

/// The order of one `p2m_set_entry` chunk (`p2m.c:431-441`) with `todo` pages left.
pub fn p2m_set_entry_order(caps: P2mCaps, gfn: u64, mfn: Mfn, todo: u64) -> u32 {
    let fn_mask = if mfn != INVALID_MFN { mfn.0 } else { 0 } | gfn | todo;
    if fn_mask & ((1 << 18) - 1) == 0 && caps.hap && caps.hap_has_1gb {
        18
    } else if fn_mask & ((1 << 9) - 1) == 0 && (!caps.hap || caps.hap_has_2mb) {
        9
    } else {
        0
    }
}

/// One IOMMU entry point the p2m called during an op, with its arguments (what
/// `ept_set_entry` / `p2m_pt_set_entry` asked of the IOMMU, in order).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum IommuCall {
    /// `iommu_iotlb_flush(d, dfn, page_count, flags)` (shared EPT).
    IotlbFlush {
        /// First dfn.
        dfn: u64,
        /// Pages.
        page_count: u64,
        /// Flags passed.
        flags: FlushFlags,
    },
    /// `iommu_legacy_map(d, dfn, mfn, page_count, flags)`.
    LegacyMap {
        /// First dfn.
        dfn: u64,
        /// First mfn (as passed, possibly `INVALID_MFN`).
        mfn: u64,
        /// Pages.
        page_count: u64,
        /// Permission.
        perm: IommuPerm,
    },
    /// `iommu_legacy_unmap(d, dfn, page_count)`.
    LegacyUnmap {
        /// First dfn.
        dfn: u64,
        /// Pages.
        page_count: u64,
    },
}

/// Pieces `[k0, k1)` of a run of `len` entries whose 40-bit frame fields are
/// `(first + k * per) & PTE_MFN_MASK`, such that inside a piece the field grows linearly
/// (no wrap at 2^40, as Xen's 40-bit `mfn` bit-field arithmetic wraps) and crosses none of
/// the field values in `cuts` (a cut starts a new piece at the first entry whose field is
/// at or above it). Used to store split children as runs and to read runs back linearly.
pub fn linear_pieces(first: u64, per: u64, len: u64, cuts: &[u64]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut k = 0;
    while k < len {
        let field = first.wrapping_add(k.wrapping_mul(per)) & PTE_MFN_MASK;
        // Entries k.. whose field stays at or below the 40-bit maximum.
        let mut end = len.min(k + (PTE_MFN_MASK - field) / per + 1);
        for &c in cuts {
            if c > field {
                let j = (c - field).div_ceil(per);
                end = end.min(k + j);
            }
        }
        out.push((k, end));
        k = end;
    }
    out
}

/// What one p2m entry is to the CPU view (see [`cpu_extents_of`]).
pub enum EntryKind {
    /// A pointer to the next-level table in this frame.
    Table(u64),
    /// Nothing mapped.
    Empty,
    /// A leaf: its frame field, type and access.
    Leaf {
        /// The frame field of the entry.
        field: u64,
        /// The largest frame field: consecutive entries' fields wrap there, and a field at
        /// or above it (a clipped `INVALID_MFN`) reads as `INVALID_MFN`.
        mask: u64,
        /// Its type.
        p2mt: P2mType,
        /// Its access.
        access: P2mAccess,
    },
}

/// The stored content of a 4-level p2m (EPT or p2m-pt) over `range` as runs: the CPU view
/// the oracle compares, each entry classified by `kind(entry, level)`. Gfns beyond the
/// 4-level address width read as unmapped. Cost: the table runs the range meets, never its
/// pages.
pub fn cpu_extents_of<E: Pte>(
    tables: &TableStore<E>,
    root: u64,
    range: GfnRange,
    kind: &dyn Fn(E, u8) -> EntryKind,
) -> Vec<CpuExtent> {
    let mut out = Vec::new();
    let limit = 1u64 << GFN_BITS;
    let inside = GfnRange {
        start: range.start.min(limit),
        end: range.end.min(limit),
    };
    if !inside.is_empty() {
        extents_in(tables, kind, root, 4, 0, inside, &mut out);
    }
    push_extent(
        &mut out,
        unmapped_extent(GfnRange {
            start: inside.end.max(range.start),
            end: range.end,
        }),
    );
    out
}

/// [`cpu_extents_of`] within the table `t` at `level` whose first gfn is `base`.
fn extents_in<E: Pte>(
    tables: &TableStore<E>,
    kind: &dyn Fn(E, u8) -> EntryKind,
    t: u64,
    level: u8,
    base: u64,
    range: GfnRange,
    out: &mut Vec<CpuExtent>,
) {
    let Some(tab) = tables.get(t) else {
        push_extent(out, unmapped_extent(range));
        return;
    };
    let per = pages_per_entry(level);
    let lo = index_of(range.start, level);
    let hi = index_of(range.end - 1, level) + 1;
    let mut cursor = range.start;
    for (s, l, e) in tab.iter_runs(lo, hi) {
        let run_start = base + s as u64 * per;
        let run = GfnRange {
            start: run_start,
            end: run_start + l as u64 * per,
        };
        let Some(hit) = run.intersect(&range) else {
            continue;
        };
        push_extent(
            out,
            unmapped_extent(GfnRange {
                start: cursor,
                end: hit.start,
            }),
        );
        cursor = hit.end;
        match kind(e, level) {
            EntryKind::Table(_) => {
                for k in 0..l as u64 {
                    let EntryKind::Table(next) = kind(e.nth(k, level), level) else {
                        continue;
                    };
                    let er = GfnRange {
                        start: run_start + k * per,
                        end: run_start + (k + 1) * per,
                    };
                    if let Some(sub) = er.intersect(&hit) {
                        extents_in(tables, kind, next, level - 1, er.start, sub, out);
                    }
                }
            }
            EntryKind::Empty => push_extent(out, unmapped_extent(hit)),
            EntryKind::Leaf {
                field,
                mask,
                p2mt,
                access,
            } => {
                for (k0, k1) in linear_pieces(field, per, l as u64, &[mask]) {
                    let pr = GfnRange {
                        start: run_start + k0 * per,
                        end: run_start + k1 * per,
                    };
                    let Some(ph) = pr.intersect(&hit) else {
                        continue;
                    };
                    let EntryKind::Leaf { field: f0, .. } = kind(e.nth(k0, level), level) else {
                        continue;
                    };
                    push_extent(
                        out,
                        CpuExtent {
                            range: ph,
                            mfn: if f0 >= mask {
                                INVALID_MFN
                            } else {
                                Mfn(f0 + (ph.start - pr.start))
                            },
                            p2mt,
                            access,
                        },
                    );
                }
            }
        }
    }
    push_extent(
        out,
        unmapped_extent(GfnRange {
            start: cursor,
            end: range.end,
        }),
    );
}

/// The CPU-view extent of a gfn range `get_entry` reads as "nothing here"
/// (`INVALID_MFN`, `invalid`, `rwx`: the convention of [`CpuExtent`]).
pub fn unmapped_extent(range: GfnRange) -> CpuExtent {
    CpuExtent {
        range,
        mfn: INVALID_MFN,
        p2mt: P2mType::Invalid,
        access: P2mAccess::Rwx,
    }
}

/// Appends `e` to `out`, merging it into the last extent when it continues it (adjacent,
/// same type and access, and the frame either `INVALID_MFN` in both or continuing
/// linearly), so that the CPU view has one canonical form.
pub fn push_extent(out: &mut Vec<CpuExtent>, e: CpuExtent) {
    if e.range.is_empty() {
        return;
    }
    if let Some(last) = out.last_mut() {
        let follows = last.range.end == e.range.start
            && last.p2mt == e.p2mt
            && last.access == e.access
            && if last.mfn == INVALID_MFN || e.mfn == INVALID_MFN {
                last.mfn == e.mfn
            } else {
                last.mfn.0.wrapping_add(last.range.len()) == e.mfn.0
            };
        if follows {
            last.range.end = e.range.end;
            return;
        }
    }
    out.push(e);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::master::revision::REVISIONS;
    use crate::revision::Switches as LineSwitches;
    use crate::types::{MAX_PAGE, MMIO_RO_FRAMES};

    fn sw(name: &str) -> Switches {
        let r = REVISIONS.iter().find(|r| r.name == name).unwrap();
        let LineSwitches::Master(s) = r.switches else {
            unreachable!()
        };
        s
    }

    fn chunks(caps: P2mCaps, gfn: u64, mfn: Mfn, order: u32) -> Vec<(u64, Mfn, u32)> {
        let mut v = Vec::new();
        p2m_set_entry(caps, gfn, mfn, order, |g, m, o| {
            v.push((g, m, o));
            Ok(())
        })
        .unwrap();
        v
    }

    const HAP: P2mCaps = P2mCaps {
        hap: true,
        hap_has_1gb: true,
        hap_has_2mb: true,
    };
    const SHADOW: P2mCaps = P2mCaps {
        hap: false,
        hap_has_1gb: true,
        hap_has_2mb: true,
    };

    #[test]
    fn order_choice() {
        assert_eq!(
            chunks(HAP, 0x40000, Mfn(0x80000), 18),
            [(0x40000, Mfn(0x80000), 18)]
        );
        // Shadow never gets 1 GiB, but gets 2 MiB (f2d947ac07).
        let s = chunks(SHADOW, 0x40000, Mfn(0x80000), 18);
        assert_eq!(s.len(), 512);
        assert!(s.iter().all(|c| c.2 == 9));
        assert_eq!(s[1], (0x40200, Mfn(0x80200), 9));
        // INVALID_MFN is not forced to 4 KiB (efa9596e9d) and does not advance.
        assert_eq!(
            chunks(HAP, 0x200, INVALID_MFN, 9),
            [(0x200, INVALID_MFN, 9)]
        );
        assert_eq!(
            chunks(SHADOW, 0x200, INVALID_MFN, 9),
            [(0x200, INVALID_MFN, 9)]
        );
        // A misaligned mfn forces 4 KiB.
        let c = chunks(HAP, 0x200, Mfn(0x201), 9);
        assert_eq!(c.len(), 512);
        assert_eq!(c[511], (0x3ff, Mfn(0x400), 0));
        // No hap_has_2mb: 4 KiB chunks under HAP.
        let no2m = P2mCaps {
            hap_has_2mb: false,
            hap_has_1gb: false,
            ..HAP
        };
        assert_eq!(chunks(no2m, 0x200, Mfn(0x400), 9).len(), 512);
        // 1 GiB capability without 2 MiB: 1 GiB chunks still taken.
        let only1g = P2mCaps {
            hap_has_2mb: false,
            ..HAP
        };
        assert_eq!(chunks(only1g, 0, Mfn(0), 18), [(0, Mfn(0), 18)]);
        // Odd order: 2 MiB pieces then 4 KiB.
        let c = chunks(HAP, 0x400, Mfn(0x400), 10);
        assert_eq!(c, [(0x400, Mfn(0x400), 9), (0x600, Mfn(0x600), 9)]);
        let c = chunks(HAP, 0x200, Mfn(0x200), 9 + 1);
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn remaining_count_limits_order() {
        // todo = 2^10 at an aligned start: the remaining count, not the order, decides.
        let c = chunks(HAP, 0x40000, Mfn(0x40000), 10);
        assert_eq!(c, [(0x40000, Mfn(0x40000), 9), (0x40200, Mfn(0x40200), 9)]);
        assert_eq!(
            chunks(HAP, 0, INVALID_MFN, 1),
            [(0, INVALID_MFN, 0), (1, INVALID_MFN, 0)]
        );
    }

    #[test]
    fn continues_after_error_and_keeps_the_last() {
        let mut seen = Vec::new();
        let rc = p2m_set_entry(HAP, 0, Mfn(0), 2, |g, _, _| {
            seen.push(g);
            match g {
                1 => Err(P2mError::Misaligned),
                2 => Err(P2mError::GfnOutOfRange),
                _ => Ok(()),
            }
        });
        assert_eq!(seen, [0, 1, 2, 3]);
        assert_eq!(rc, Err(P2mError::GfnOutOfRange));
        assert_eq!(
            p2m_set_entry(HAP, 0, Mfn(0), 19, |_, _, _| Ok(())),
            Err(P2mError::BadOrder)
        );
    }

    #[test]
    fn iommu_flags_every_type_access_and_frame() {
        let master = sw("xen-master");
        let ram = Mfn(0x1000);
        let ro = Mfn(MMIO_RO_FRAMES.start);
        let mmio = Mfn(MAX_PAGE + 0x10);
        let w_only = IommuPerm {
            read: false,
            write: true,
        };
        for &t in P2mType::ALL {
            for &a in P2mAccess::ALL {
                for m in [ram, ro, mmio, INVALID_MFN] {
                    let want = match t {
                        P2mType::RamRw
                        | P2mType::GrantMapRw
                        | P2mType::RamLogdirty
                        | P2mType::MapForeign => IommuPerm::RW,
                        P2mType::RamRo | P2mType::GrantMapRo => IommuPerm::R,
                        P2mType::MmioDirect => {
                            let f = match a {
                                P2mAccess::Rw | P2mAccess::Rwx => IommuPerm::RW,
                                P2mAccess::R | P2mAccess::Rx | P2mAccess::Rx2rw => IommuPerm::R,
                                P2mAccess::W | P2mAccess::Wx => w_only,
                                _ => IommuPerm::NONE,
                            };
                            IommuPerm {
                                write: f.write && m != ro,
                                ..f
                            }
                        }
                        _ => IommuPerm::NONE,
                    };
                    assert_eq!(p2m_get_iommu_flags(&master, t, a, m), want, "{t} {a} {m}");
                    // xsa378-access: mmio_direct RW whatever the access, ro check kept.
                    let x = p2m_get_iommu_flags(&sw("xsa378-access"), t, a, m);
                    if t == P2mType::MmioDirect {
                        let rw = IommuPerm {
                            write: m != ro,
                            ..IommuPerm::RW
                        };
                        assert_eq!(x, rw, "{t} {a} {m}");
                    } else {
                        assert_eq!(x, want);
                    }
                    // mmio-nobreak: mmio_direct gets nothing.
                    let n = p2m_get_iommu_flags(&sw("mmio-nobreak"), t, a, m);
                    if t == P2mType::MmioDirect {
                        assert_eq!(n, IommuPerm::NONE);
                    } else {
                        assert_eq!(n, want);
                    }
                }
            }
        }
    }

    #[test]
    fn type_predicates() {
        assert!(p2m_allows_invalid_mfn(P2mType::PopulateOnDemand));
        assert!(p2m_allows_invalid_mfn(P2mType::MmioDirect));
        assert!(!p2m_allows_invalid_mfn(P2mType::RamPaged));
        assert!(p2m_is_valid(P2M_IOREQ_SERVER));
        assert!(!p2m_is_valid(P2mType::GrantMapRw));
        assert!(p2m_is_any_ram(P2mType::GrantMapRw));
        assert!(p2m_entry_modify_bugs(P2mType::MapForeign, 2, true));
        assert!(!p2m_entry_modify_bugs(P2mType::MapForeign, 1, true));
        assert!(!p2m_entry_modify_bugs(P2M_IOREQ_SERVER, 3, false));
        assert_eq!(type_of_raw(127), P2mType::Invalid);
        assert_eq!(access_of_raw(10), P2mAccess::R);
    }

    #[test]
    fn pieces() {
        assert_eq!(linear_pieces(0x1000, 1, 512, &[]), [(0, 512)]);
        // Wrap at 2^40: the entry at the maximum is its own piece end.
        let m = PTE_MFN_MASK;
        assert_eq!(linear_pieces(m, 1, 4, &[]), [(0, 1), (1, 4)]);
        assert_eq!(linear_pieces(m - 1, 1, 4, &[m]), [(0, 1), (1, 2), (2, 4)]);
        // Cuts at an interval inside the run.
        let ro = [MMIO_RO_FRAMES.start, MMIO_RO_FRAMES.end];
        assert_eq!(
            linear_pieces(MAX_PAGE, 1, 512, &ro),
            [(0, 0x100), (0x100, 512)]
        );
        assert_eq!(
            linear_pieces(MAX_PAGE + 0x80, 1, 512, &ro),
            [(0, 0x80), (0x80, 0x180), (0x180, 512)]
        );
        // Superpage steps: a cut between two entries starts at the next one.
        assert_eq!(linear_pieces(0, 512, 4, &[513]), [(0, 2), (2, 4)]);
    }
}
