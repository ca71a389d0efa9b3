//! `XEN_DMOP_set_mem_type` of `xen/arch/x86/hvm/dm.c` at `c447b7308b` (`dm.c:218-300`):
//! the device model retypes a range of pages, one `p2m_change_type_one` each.

use crate::callers::HvmMemType;
use crate::master::domain::{Cx, P2m};
use crate::master::hap::hap_track_dirty_vram;
use crate::master::p2m::P2M_IOREQ_SERVER;
use crate::master::p2m_physmap::get_gfn_query;
use crate::master::p2m_typed::{allow_p2m_type_change, p2m_change_type_one};
use crate::physmap::{BatchOutcome, PhysmapError};
use crate::types::{Mode, P2mType};

/// The `memtype[]` table of `set_mem_type` (`dm.c:227-233`).
pub fn memtype(t: HvmMemType) -> P2mType {
    match t {
        HvmMemType::RamRw => P2mType::RamRw,
        HvmMemType::RamRo => P2mType::RamRo,
        HvmMemType::MmioDm => P2mType::MmioDm,
        HvmMemType::IoreqServer => P2M_IOREQ_SERVER,
    }
}

/// `set_mem_type(d, data)` (`dm.c:218-300`) run to the end (its `-ERESTART`
/// continuations resume where they stopped): `ioreq_server` needs HAP (`-EOPNOTSUPP`;
/// an ioreq server is taken to be mapped, as [`crate::master::p2m::IOREQ_MEM_ACCESS_WRITE`]
/// says); per page, a shared page is `-EAGAIN`, a change `allow_p2m_type_change` refuses
/// `-EINVAL`, else `p2m_change_type_one`; the first error stops the op. Not modelled:
/// the range check against `domain_get_maximum_gpfn` (every gfn counts as below it).
pub fn set_mem_type(
    p2m: &mut P2m,
    cx: &mut Cx,
    gfn: u64,
    nr: u64,
    mem_type: HvmMemType,
) -> BatchOutcome {
    let nt = memtype(mem_type);
    if nt == P2M_IOREQ_SERVER && cx.cfg.mode == Mode::Shadow {
        return BatchOutcome {
            done: 0,
            rc: Err(PhysmapError::OpNotSupp),
        };
    }
    for i in 0..nr {
        let pfn = gfn + i;
        let (_, t) = get_gfn_query(p2m, pfn);
        let rc = if t == P2mType::RamShared {
            Err(PhysmapError::Again)
        } else if !allow_p2m_type_change(t, nt) {
            Err(PhysmapError::Inval)
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

/// `track_dirty_vram(d, first_pfn, nr_frames, buf)` (`dm.c:47-66`,
/// `XEN_DMOP_track_dirty_vram`): more than 1 GiB of frames is `-EINVAL`; a shadow-mode
/// domain goes to `shadow_track_dirty_vram`, which tracks through shadow entries and
/// leaves the p2m as it is; a HAP domain to [`hap_track_dirty_vram`]. Not refused for a
/// domain with a passthrough device (only global log-dirty is, `paging.c:208-215`).
pub fn track_dirty_vram(
    p2m: &mut P2m,
    cx: &mut Cx,
    first_pfn: u64,
    nr_frames: u64,
) -> BatchOutcome {
    if nr_frames > (1 << 18) {
        return BatchOutcome {
            done: 0,
            rc: Err(PhysmapError::Inval),
        };
    }
    if cx.cfg.mode != Mode::Shadow {
        hap_track_dirty_vram(p2m, cx, first_pfn, nr_frames);
    }
    BatchOutcome {
        done: nr_frames,
        rc: Ok(()),
    }
}
