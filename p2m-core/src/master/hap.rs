//! `hap_track_dirty_vram` of `xen/arch/x86/mm/hap/hap.c` at `c447b7308b`
//! (`hap.c:54-163`): the device model's VRAM dirty tracking, the one log-dirty user Xen
//! allows for a domain with a passthrough device (global log-dirty is refused,
//! `paging.c:208-215`), and the caller of `p2m_change_type_range` a guest's device model
//! reaches.

use crate::master::domain::{Cx, P2m};
use crate::master::p2m_typed::{p2m_change_type_one, p2m_change_type_range, recalc_state};
use crate::types::P2mType;

/// `hap_track_dirty_vram(d, begin_pfn, nr_frames, bitmap)` (`hap.c:54-163`), with
/// `nr_frames` > 0: a new range (or the first) moves tracking — the old range goes
/// `ram_logdirty` → `ram_rw`, the new one `ram_rw` → `ram_logdirty`, both by
/// `p2m_change_type_range`; the same range again re-arms it page by page
/// (`p2m_log_dirty_range`, `p2m.c:2192-2218`: `p2m_change_type_one(ram_rw →
/// ram_logdirty)` on each gfn, failures ignored). `nr_frames` = 0 stops tracking
/// (`ram_logdirty` → `ram_rw` over the tracked range). PML is modelled as off, so
/// `p2m_enable_hardware_log_dirty` and `p2m_flush_hardware_cached_dirty` change nothing;
/// the bitmap copy and the TLB flushes have no IOMMU effect.
pub fn hap_track_dirty_vram(p2m: &mut P2m, cx: &mut Cx, begin_pfn: u64, nr_frames: u64) {
    use crate::recalc::{hap_track_dirty_vram_step, VramStep};
    let (rw, logdirty) = (P2mType::RamRw, P2mType::RamLogdirty);
    match hap_track_dirty_vram_step(recalc_state(p2m), begin_pfn, nr_frames) {
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
