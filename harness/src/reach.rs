//! Reachability of a scenario's inputs: whether a Xen caller can issue each op.
//!
//! The scenario language drives the host p2m's `set_entry` directly (the internal API);
//! every real host-p2m change goes through callers that restrict its arguments. This
//! module names, per line, the inputs no caller produces, with the caller that rules them
//! out — so that a report can say "internal API only: <why>" and `hunt --reachable` can
//! look for findings a guest or toolstack can trigger. The rules are read from the Xen
//! tree (4.6 at edb9531263, master at c447b7308b); each names its source.

use crate::scenario::{MfnSel, Op};
use p2m_core::callers::CallerOp;
use p2m_core::{
    Config, GfnRange, Line, Mfn, Mode, P2mAccess, P2mType, INVALID_MFN, MMIO_RO_FRAMES,
};
use reference_model::RefModel;

/// Why a finding would not be a security issue on a real host.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Unreachable {
    /// No Xen caller issues the op: it exists only through the internal API.
    InternalApi(&'static str),
    /// A caller can issue it, but only in a setup Xen's `SUPPORT.md` excludes from
    /// security support.
    OutsideSupport(&'static str),
    /// The configuration does not exist on that line (Xen refuses or overrides it).
    Config(Line, &'static str),
}

impl Unreachable {
    /// The verdict as a phrase for reports.
    pub fn describe(&self) -> String {
        match self {
            Unreachable::InternalApi(why) => format!("internal API only: {why}"),
            Unreachable::OutsideSupport(why) => format!("outside security support: {why}"),
            Unreachable::Config(line, why) => {
                format!("configuration not reachable on {}: {why}", line_name(*line))
            }
        }
    }
}

/// The line's name in reports.
fn line_name(line: Line) -> &'static str {
    match line {
        Line::Xen46 => "Xen 4.6",
        Line::Master => "Xen master",
    }
}

/// Why `cfg` does not exist on `line` (`None`: Xen runs it). Forbidden configurations
/// stay runnable; reports carry this verdict.
pub fn config_verdict(line: Line, cfg: &Config) -> Option<Unreachable> {
    match line {
        Line::Xen46 if cfg.iommu_hap_pt_share && cfg.vendor == p2m_core::Vendor::Amd => {
            Some(Unreachable::Config(
                line,
                "amd_iommu_init sets iommu_hap_pt_share = 0 (amd/iommu_init.c:1262, \
                 c2ba3db31e, 2014): 4.6 never shares tables with an AMD IOMMU",
            ))
        }
        // Master keeps sharing off wherever it does not apply (AMD, shadow, page sizes
        // VT-d lacks: `Config::master_hap_pt_share`); the model does the same.
        _ => None,
    }
}

/// Why no caller chain issues the caller op `op` as written, given the domain's state
/// before it (`refm`: what the domain maps; `dom`: its table frames); `None` when one does.
pub fn caller_verdict(
    op: &CallerOp,
    refm: &RefModel,
    dom: &p2m_core::Domain,
) -> Option<Unreachable> {
    match *op {
        CallerOp::Populate { mfn, order, .. } => {
            if order > 18 {
                return None; // the op does nothing
            }
            if mfn & ((1 << order) - 1) != 0 {
                return Some(Unreachable::InternalApi(
                    "the buddy allocator hands out 2^order-aligned extents",
                ));
            }
            allocator_verdict(GfnRange::of_order(mfn, order), refm, dom)
        }
        // Each extent is a populate of one page: the run's frames are judged together.
        CallerOp::PopulateRun { mfn, nr, .. } => allocator_verdict(
            GfnRange {
                start: mfn,
                end: mfn.saturating_add(nr.into()),
            },
            refm,
            dom,
        ),
        CallerOp::MemoryMapping { mfn, nr, .. } => (mfn < p2m_core::MAX_PAGE
            || mfn.saturating_add(nr.into()) > crate::scenario::MFN_LITERAL_LIMIT)
            .then_some(Unreachable::InternalApi(
                "the toolstack maps device MMIO (BARs, iomem= ranges), never RAM frames",
            )),
        CallerOp::IdentityMap { gfn, nr, add, .. } => {
            // An RMRR / IVMD range is memory the firmware reserved: never a page the
            // domain maps (other than 1:1 through such a range) nor a Xen table.
            let frames = GfnRange {
                start: gfn,
                end: gfn.saturating_add(nr.into()),
            };
            let table = live_table_in(dom, frames);
            let mapped = add
                && refm.extents().any(|(g, e)| {
                    e.mfn != INVALID_MFN
                        && e.mfn.0 < frames.end
                        && e.mfn.0.saturating_add(e.len) > frames.start
                        && !(e.p2mt == p2m_core::P2mType::MmioDirect && e.mfn.0 == g)
                });
            (table || mapped).then_some(Unreachable::InternalApi(
                "RMRR / IVMD ranges are reserved memory: never a guest page or a Xen table",
            ))
        }
        CallerOp::SetMemAccess { .. } => Some(Unreachable::OutsideSupport(
            "p2m_set_mem_access is VM introspection, which SUPPORT.md does not support \
             together with PCI passthrough",
        )),
        // The device model tracks any VRAM range it likes (`XEN_DMOP_track_dirty_vram`
        // is not refused for a domain with a device); a vCPU touches any gfn.
        CallerOp::DecreaseReservation { .. }
        | CallerOp::DecreaseRun { .. }
        | CallerOp::SetMemType { .. }
        | CallerOp::SetBrokenPage { .. }
        | CallerOp::TrackDirtyVram { .. }
        | CallerOp::GuestAccess { .. }
        | CallerOp::AssignDevice => None,
    }
}

/// Whether a live Xen table sits in one of `frames`.
fn live_table_in(dom: &p2m_core::Domain, frames: GfnRange) -> bool {
    dom.mem().ever_allocated().iter().any(|&f| {
        frames.contains(f)
            && dom
                .mem()
                .info(f)
                .is_some_and(|i| i.state != p2m_core::frames::FrameState::Free)
    })
}

/// Why the page allocator never hands out `frames` to a populate, given the domain's
/// state: beyond the RAM or frame 0, a live table, or a page the domain maps.
fn allocator_verdict(
    frames: GfnRange,
    refm: &RefModel,
    dom: &p2m_core::Domain,
) -> Option<Unreachable> {
    if frames.end > p2m_core::MAX_PAGE || frames.start == 0 {
        return Some(Unreachable::InternalApi(
            "the allocator hands out RAM frames only (below max_page, never frame 0)",
        ));
    }
    let table = live_table_in(dom, frames);
    let mapped = refm.extents().any(|(_, e)| {
        e.mfn != INVALID_MFN && e.mfn.0 < frames.end && e.mfn.0.saturating_add(e.len) > frames.start
    });
    (table || mapped).then_some(Unreachable::InternalApi(
        "the allocator never hands out a page in use (a live table or a page the domain maps)",
    ))
}

/// Like [`unreachable_reason`], with the access rule: an access other than the default
/// `rwx` only comes from `p2m_set_mem_access` (VM introspection), and `SUPPORT.md` says
/// passthrough is not security-supported together with introspection.
pub fn verdict(
    line: Line,
    cfg: &Config,
    op: &Op,
    mfn: Mfn,
    table_frame: bool,
) -> Option<Unreachable> {
    if let Some(why) = unreachable_reason(line, cfg, op, mfn, table_frame) {
        return Some(Unreachable::InternalApi(why));
    }
    // A guest issues add_to_physmap_range itself.
    let Op::SetEntry(e) = op else { return None };
    (e.access != P2mAccess::Rwx).then_some(Unreachable::OutsideSupport(
        "p2m access other than the default comes from mem_access (introspection), which \
         SUPPORT.md does not support together with PCI passthrough",
    ))
}

/// Why no caller issues `op` (resolved to frame `mfn`, which `table_frame` says is a live
/// page-table frame) on `line` in `cfg`; `None` when a caller can.
pub fn unreachable_reason(
    line: Line,
    cfg: &Config,
    op: &Op,
    mfn: Mfn,
    table_frame: bool,
) -> Option<&'static str> {
    // XENMEM_add_to_physmap is a guest's own hypercall.
    let Op::SetEntry(e) = op else { return None };
    use P2mType::*;
    if table_frame || matches!(e.mfn, MfnSel::TableFrame(_) | MfnSel::TableAt(_)) {
        return Some(
            "no caller maps a page-table frame into a guest (frames come from the domain's \
             own pages or device MMIO)",
        );
    }
    let maps_memory = matches!(
        e.p2mt,
        RamRw | RamLogdirty | RamRo | GrantMapRw | GrantMapRo | MapForeign | RamShared
    );
    if mfn == Mfn(0) && maps_memory {
        return Some("machine frame 0 is never a guest page (Xen reserves it)");
    }
    if mfn == INVALID_MFN && maps_memory {
        return Some(
            "no caller passes INVALID_MFN with a type that maps memory (p2m_remove_page, \
             guest_physmap_remove_page use p2m_invalid)",
        );
    }
    if e.p2mt == Invalid && mfn != INVALID_MFN {
        return Some(
            "no caller writes p2m_invalid with a frame (p2m_remove_page, clear_mmio_p2m_entry, \
             clear_identity_p2m_entry and teardown pass INVALID_MFN)",
        );
    }
    if mfn == INVALID_MFN && e.p2mt == MmioDirect {
        return Some("set_mmio_p2m_entry always passes the device's frame");
    }
    if mfn != INVALID_MFN && !mfn.is_valid() && e.p2mt != MmioDirect && e.p2mt != Invalid {
        return Some(
            "only mmio_direct (set_mmio_p2m_entry) maps frames beyond the RAM (not mfn_valid)",
        );
    }
    if e.order > 0 && mfn != INVALID_MFN && matches!(e.p2mt, MmioDm | RamBroken) {
        return Some(
            "only p2m_change_type_one gives mmio_dm or ram_broken an entry with a frame, \
             4 KiB at a time (XEN_DMOP_set_mem_type, the MCE handler)",
        );
    }
    if e.order > 0 && matches!(e.p2mt, GrantMapRw | GrantMapRo) {
        return Some(
            "grant mappings are set 4 KiB at a time (create_grant_p2m_mapping, \
             guest_physmap_add_entry with PAGE_ORDER_4K)",
        );
    }
    if e.order > 0 && matches!(e.p2mt, MapForeign | MmioWriteDm) {
        return Some(
            "foreign and ioreq-server entries are set 4 KiB at a time (p2m_entry_modify \
             BUG_ONs above)",
        );
    }
    match line {
        Line::Xen46 => {
            if e.order > 0 && cfg.mode == Mode::Shadow {
                return Some("4.6 p2m_set_entry uses 4 KiB pages in shadow mode (p2m.c:450-458)");
            }
            if e.order > 0 && mfn == INVALID_MFN {
                return Some("4.6 p2m_set_entry uses 4 KiB pages for INVALID_MFN (p2m.c:450-458)");
            }
        }
        Line::Master => {
            let ro = mfn != INVALID_MFN
                && e.order > 0
                && mfn.0 < MMIO_RO_FRAMES.end
                && mfn.0 + (1u64 << e.order) > MMIO_RO_FRAMES.start;
            if e.p2mt == MmioDirect && ro {
                return Some(
                    "set_mmio_p2m_entry refuses superpages overlapping mmio_ro_ranges \
                     (p2m.c:1187-1190)",
                );
            }
            if e.order == 18 && cfg.mode == Mode::Shadow {
                return Some(
                    "master p2m_set_entry gives shadow mode 2 MiB pages at most (f2d947ac07)",
                );
            }
            if e.order > 0 && e.p2mt == MmioDirect {
                // mmio_order never uses 1 GiB (p2m.c:1696-1703).
                if e.order == 18 {
                    return Some("mmio_order never picks 1 GiB pages (p2m.c:1696-1703)");
                }
            }
        }
    }
    if matches!(e.p2mt, RamShared | RamPagingOut | RamPaged | RamPagingIn) {
        return Some(
            "mem_sharing and paging are refused for a domain with an IOMMU \
             (arch_iommu_use_permitted, assign_device)",
        );
    }
    None
}

/// Types whose entries map the domain's own RAM.
fn maps_own_ram(t: P2mType) -> bool {
    use P2mType::*;
    matches!(
        t,
        RamRw | RamLogdirty | RamRo | RamShared | RamPagingOut | RamBroken | MmioWriteDm
    )
}

/// Why `op` cannot come from a caller given what `refm` maps now: a RAM entry for frames
/// the domain already maps as RAM or as a foreign page at other gfns (Xen keeps one gfn per
/// page — the M2P, and `guest_physmap_add_entry` / `p2m_add_page` remove the old alias — and
/// a foreign page is another domain's), or a foreign entry for frames the domain maps as its
/// own RAM (`p2m_add_foreign` refuses `tdom == fdom`). Costs the stored extents (a scenario
/// holds a few dozen).
pub fn alias_reason(refm: &RefModel, op: &Op, mfn: Mfn) -> Option<&'static str> {
    let Op::SetEntry(e) = op else { return None };
    let new_ram = maps_own_ram(e.p2mt);
    if !new_ram && e.p2mt != P2mType::MapForeign {
        return None;
    }
    if mfn == INVALID_MFN || !mfn.is_valid() || e.order > 18 {
        return None;
    }
    let frames = GfnRange::of_order(mfn.0, e.order);
    let own = GfnRange::of_order(e.gfn, e.order);
    refm.extents().find_map(|(start, ext)| {
        let clash = if new_ram {
            maps_own_ram(ext.p2mt) || ext.p2mt == P2mType::MapForeign
        } else {
            maps_own_ram(ext.p2mt)
        };
        if !clash || ext.mfn == INVALID_MFN {
            return None;
        }
        let mapped = GfnRange {
            start: ext.mfn.0,
            end: ext.mfn.0.saturating_add(ext.len),
        };
        let both = mapped.intersect(&frames)?;
        let gfns = GfnRange {
            start: start + (both.start - ext.mfn.0),
            end: start + (both.end - ext.mfn.0),
        };
        (gfns.intersect(&own) != Some(gfns)).then_some(if new_ram {
            "a RAM page mapped at two gfns at once, or as this domain's RAM and another's \
             foreign page: Xen keeps one gfn per page (M2P; guest_physmap_add_entry / \
             p2m_add_page remove the old alias)"
        } else {
            "p2m_add_foreign refuses to map the domain's own pages (tdom == fdom)"
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::SetEntryOp;
    use p2m_core::{P2mAccess, Vendor};

    fn op(mfn: MfnSel, order: u32, p2mt: P2mType) -> Op {
        Op::SetEntry(SetEntryOp {
            gfn: 0,
            mfn,
            order,
            p2mt,
            access: P2mAccess::Rwx,
        })
    }

    #[test]
    fn rules() {
        let ept = Config::new(Mode::Ept, Vendor::Vtd, true);
        let npt = Config::new(Mode::Npt, Vendor::Amd, true);
        let ram = op(MfnSel::Frame(0x100000), 9, P2mType::RamRw);
        assert_eq!(
            unreachable_reason(Line::Master, &ept, &ram, Mfn(0x100000), false),
            None
        );
        assert!(unreachable_reason(Line::Xen46, &npt, &ram, Mfn(0x100000), false).is_none());
        assert!(config_verdict(Line::Xen46, &npt)
            .unwrap()
            .describe()
            .starts_with("configuration not reachable on Xen 4.6"));
        assert_eq!(config_verdict(Line::Master, &npt), None);
        assert_eq!(config_verdict(Line::Xen46, &ept), None);
        let inv = op(MfnSel::Invalid, 0, P2mType::Invalid);
        assert_eq!(
            unreachable_reason(Line::Master, &ept, &inv, INVALID_MFN, false),
            None
        );
        let inv_frame = op(MfnSel::Frame(0x100000), 0, P2mType::Invalid);
        assert!(
            unreachable_reason(Line::Master, &ept, &inv_frame, Mfn(0x100000), false)
                .unwrap()
                .contains("p2m_invalid with a frame")
        );
        let inv_ram = op(MfnSel::Invalid, 0, P2mType::RamRw);
        assert!(unreachable_reason(Line::Master, &ept, &inv_ram, INVALID_MFN, false).is_some());
        let ro = op(MfnSel::Frame(MMIO_RO_FRAMES.start), 9, P2mType::MmioDirect);
        assert!(
            unreachable_reason(Line::Master, &ept, &ro, Mfn(MMIO_RO_FRAMES.start), false)
                .unwrap()
                .contains("mmio_ro_ranges")
        );
        let tbl = op(MfnSel::TableAt(1), 9, P2mType::RamRw);
        assert!(unreachable_reason(Line::Master, &ept, &tbl, Mfn(0x40800), true).is_some());
    }
}
