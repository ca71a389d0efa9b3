//! `HVMOP_set_mem_type` of Xen 4.6 (`xen/arch/x86/hvm/hvm.c:6602-6686` at `edb9531263`):
//! the device model retypes a range of pages, one `p2m_change_type_one` each.

use crate::callers::HvmMemType;
use crate::physmap::{BatchOutcome, PhysmapError};
use crate::types::P2mType;
use crate::xen46::domain::{Cx, P2m};
use crate::xen46::p2m::{get_gfn_query, p2m_change_type_one, p2m_is_ram};

/// The `memtype[]` table of `HVMOP_set_mem_type` (`hvm.c:6608-6613`).
pub fn memtype(t: HvmMemType) -> P2mType {
    match t {
        HvmMemType::RamRw => P2mType::RamRw,
        HvmMemType::RamRo => P2mType::RamRo,
        HvmMemType::MmioDm => P2mType::MmioDm,
        HvmMemType::IoreqServer => P2mType::MmioWriteDm,
    }
}

/// Whether 4.6 lets a page of type `t` become `nt` (`hvm.c:6658-6664`): any RAM type to
/// anything, a hole (`mmio_dm`, `invalid`) only to `mmio_dm`, `mmio_write_dm` only to
/// `ram_rw`.
pub fn type_change_allowed(t: P2mType, nt: P2mType) -> bool {
    p2m_is_ram(t)
        || (matches!(t, P2mType::MmioDm | P2mType::Invalid) && nt == P2mType::MmioDm)
        || (t == P2mType::MmioWriteDm && nt == P2mType::RamRw)
}

/// `HVMOP_set_mem_type` run to the end (`hvm.c:6602-6686`; its `-ERESTART`
/// continuations resume where they stopped): per page, a paging or shared page is
/// `-EAGAIN`, a change [`type_change_allowed`] refuses stops the op — with `-EINVAL`
/// only while no page has changed, else returning 0 (the `rc` quirk of 4.6) — and
/// `p2m_change_type_one` does the rest. Not modelled: the range check against
/// `domain_get_maximum_gpfn` (every gfn counts as below it).
pub fn hvmop_set_mem_type(
    p2m: &mut P2m,
    cx: &mut Cx,
    gfn: u64,
    nr: u64,
    mem_type: HvmMemType,
) -> BatchOutcome {
    let nt = memtype(mem_type);
    for i in 0..nr {
        let pfn = gfn + i;
        let (_, t) = get_gfn_query(p2m, pfn);
        let rc = if matches!(
            t,
            P2mType::RamPagingOut | P2mType::RamPaged | P2mType::RamPagingIn | P2mType::RamShared
        ) {
            Err(PhysmapError::Again)
        } else if !type_change_allowed(t, nt) {
            if i == 0 {
                Err(PhysmapError::Inval)
            } else {
                return BatchOutcome {
                    done: i,
                    rc: Ok(()),
                };
            }
        } else {
            p2m_change_type_one(p2m, cx, pfn, t, nt)
        };
        if let Err(e) = rc {
            return BatchOutcome {
                done: i,
                rc: Err(e),
            };
        }
    }
    BatchOutcome {
        done: nr,
        rc: Ok(()),
    }
}

/// A vCPU of a HAP domain reads (`write` false) or writes `gfn`: a recalc mark on the
/// way makes the access fault into `p2m->recalc` first (`ept_handle_misconfig` /
/// `p2m_pt_handle_deferred_changes`); a write to RAM then reaches the log-dirty arm of
/// `hvm_hap_nested_page_fault` (`hvm.c:3074-3094`), which retypes a `ram_logdirty` page
/// `ram_rw` (`p2m_change_type_one`; for any other type it fails, ignored) — when the
/// page's access allows the write (else `p2m_mem_access_check`, not modelled, takes it). PML is
/// modelled as off. In shadow mode the access goes through shadow entries and changes
/// nothing in the p2m.
pub fn guest_access(p2m: &mut P2m, cx: &mut Cx, gfn: u64, write: bool) -> BatchOutcome {
    if cx.cfg.mode == crate::types::Mode::Shadow {
        return BatchOutcome {
            done: 1,
            rc: Ok(()),
        };
    }
    if let Err(e) = crate::xen46::p2m::p2m_recalc(p2m, cx, gfn) {
        return BatchOutcome {
            done: 0,
            rc: Err(e),
        };
    }
    // A write the access forbids goes to `p2m_mem_access_check` (introspection) first,
    // which the model does not run: nothing changes.
    let writable = p2m
        .get_entry(gfn)
        .is_some_and(|e| crate::master::hvm::access_allows_write(e.access));
    if write && writable && get_gfn_query(p2m, gfn).1 == P2mType::RamLogdirty {
        if let Err(e) = p2m_change_type_one(p2m, cx, gfn, P2mType::RamLogdirty, P2mType::RamRw) {
            return BatchOutcome {
                done: 0,
                rc: Err(e),
            };
        }
    }
    BatchOutcome {
        done: 1,
        rc: Ok(()),
    }
}
