//! What a vCPU's own access to guest memory does to the p2m, from
//! `xen/arch/x86/hvm/hvm.c` (`hvm_hap_nested_page_fault`, `hvm.c:1780-2100`) and the
//! fault handlers in front of it (`ept_handle_misconfig`, `p2m-ept.c:767-786`;
//! `p2m_pt_handle_deferred_changes`, `p2m-pt.c:517-536`) at `c447b7308b`.

use crate::master::domain::{Cx, P2m};
use crate::master::p2m_physmap::get_gfn_query;
use crate::master::p2m_typed::{p2m_change_type_one, p2m_recalc};
use crate::physmap::{BatchOutcome, PhysmapError};
use crate::types::{Mode, P2mType};

/// A vCPU of a HAP domain reads (`write` false) or writes `gfn`: a recalc mark on the
/// way makes the access fault into `p2m->recalc` (EPT misconfig / NPT fault) first; a
/// write to a `ram_logdirty` page then faults into `hvm_hap_nested_page_fault`
/// (`hvm.c:2044-2060`), which marks it dirty and retypes it `ram_rw`
/// (`p2m_change_type_one`) — when the page's access allows the write (otherwise the
/// fault is an access violation for `p2m_mem_access_check`, not modelled: nothing
/// changes). PML is modelled as off. In shadow mode the access goes
/// through shadow entries (`sh_page_fault`) and changes nothing in the p2m.
pub fn guest_access(p2m: &mut P2m, cx: &mut Cx, gfn: u64, write: bool) -> BatchOutcome {
    if cx.cfg.mode == Mode::Shadow {
        return BatchOutcome {
            done: 1,
            rc: Ok(()),
        };
    }
    if let Err(e) = p2m_recalc(p2m, cx, gfn) {
        return BatchOutcome {
            done: 0,
            rc: Err(e),
        };
    }
    let e = match p2m {
        P2m::Ept(e) => e.get_entry(gfn),
        P2m::Pt(p) => p.get_entry(gfn),
    };
    // A write the access forbids goes to `p2m_mem_access_check` (introspection) first,
    // which the model does not run: nothing changes.
    let writable = e.is_some_and(|e| access_allows_write(e.access));
    if write && writable && get_gfn_query(p2m, gfn).1 == P2mType::RamLogdirty {
        let rc = p2m_change_type_one(p2m, cx, gfn, P2mType::RamLogdirty, P2mType::RamRw);
        return BatchOutcome {
            done: rc.is_ok() as u64,
            rc: rc.map_err(|e: PhysmapError| e),
        };
    }
    BatchOutcome {
        done: 1,
        rc: Ok(()),
    }
}

/// Whether a p2m access lets a vCPU write (`w`, `wx`, `rw`, `rwx`).
pub fn access_allows_write(a: crate::types::P2mAccess) -> bool {
    use crate::types::P2mAccess::*;
    matches!(a, W | Wx | Rw | Rwx)
}
