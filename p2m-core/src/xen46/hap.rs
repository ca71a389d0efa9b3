//! `hap_track_dirty_vram` of Xen 4.6 (`xen/arch/x86/mm/hap/hap.c:68-178` at
//! `edb9531263`) and its `HVMOP_track_dirty_vram` entry (`hvm/hvm.c:6455-6495`): the
//! device model's VRAM dirty tracking, allowed for a domain with a passthrough device
//! (only global log-dirty is refused, `paging.c:225-232`).

use crate::physmap::{BatchOutcome, PhysmapError};
use crate::types::{Mode, P2mType};
use crate::xen46::domain::{Cx, P2m};
use crate::xen46::p2m::{p2m_change_type_one, p2m_change_type_range, recalc_state};

/// `HVMOP_track_dirty_vram` (`hvm.c:6472-6490`): more than 1 GiB of frames is
/// `-EINVAL`; shadow mode goes to `shadow_track_dirty_vram` (shadow entries only, the
/// p2m is left as it is); HAP to [`hap_track_dirty_vram`].
pub fn track_dirty_vram(p2m: &mut P2m, cx: &mut Cx, first_pfn: u64, nr: u64) -> BatchOutcome {
    if nr > (1 << 18) {
        return BatchOutcome {
            done: 0,
            rc: Err(PhysmapError::Inval),
        };
    }
    if cx.cfg.mode != Mode::Shadow {
        hap_track_dirty_vram(p2m, cx, first_pfn, nr);
    }
    BatchOutcome {
        done: nr,
        rc: Ok(()),
    }
}

/// `hap_track_dirty_vram(d, begin_pfn, nr, bitmap)` (`hap.c:68-178`) with `nr` > 0: the
/// first call turns on non-global log-dirty mode (`paging_log_dirty_enable(d, 0)`,
/// which only enables PML — modelled as off — and retypes nothing); a new range moves
/// tracking (old range `ram_logdirty` → `ram_rw`, new one `ram_rw` → `ram_logdirty`, by
/// `p2m_change_type_range`); the same range re-arms it page by page
/// (`paging_log_dirty_range`, `paging.c:592-620`: `p2m_change_type_one(ram_rw →
/// ram_logdirty)` per gfn, failures ignored). `nr` = 0 stops tracking (the tracked range
/// back to `ram_rw`).
pub fn hap_track_dirty_vram(p2m: &mut P2m, cx: &mut Cx, begin_pfn: u64, nr: u64) {
    use crate::recalc::{hap_track_dirty_vram_step, VramStep};
    let (rw, logdirty) = (P2mType::RamRw, P2mType::RamLogdirty);
    match hap_track_dirty_vram_step(recalc_state(p2m), begin_pfn, nr) {
        VramStep::Move { old, new } => {
            if let Some(old) = old {
                p2m_change_type_range(p2m, cx, old.start, old.end, logdirty, rw);
            }
            p2m_change_type_range(p2m, cx, new.start, new.end, rw, logdirty);
        }
        VramStep::Rearm(r) => {
            for pfn in r.start..r.end {
                let _ = p2m_change_type_one(p2m, cx, pfn, rw, logdirty);
            }
        }
        VramStep::Stop(old) => p2m_change_type_range(p2m, cx, old.start, old.end, logdirty, rw),
        VramStep::Nothing => {}
    }
}
