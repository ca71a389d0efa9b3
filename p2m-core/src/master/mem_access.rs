//! `p2m_set_mem_access` of `xen/arch/x86/mm/mem_access.c` at `c447b7308b`
//! (`mem_access.c:275-359`): an introspection agent's access change, page by page.

use crate::master::domain::{Cx, P2m};
use crate::physmap::{BatchOutcome, PhysmapError};
use crate::types::{GfnRange, Mode, P2mAccess, INVALID_MFN};

/// `p2m_set_mem_access(d, gfn, nr, start, mask, access, 0)` run to the end: EPT only
/// (`p2m_mem_access_sanity_check`: HVM, VMX and HAP; else `-EOPNOTSUPP` here); per gfn,
/// the p2m's own `set_entry` at 4 KiB with the frame and type `get_entry` reads and the
/// new access (no `p2m_set_entry` chunking; no type is skipped; a superpage is split).
/// The first error stops the op. A monitor ring is taken to exist.
pub fn p2m_set_mem_access(
    p2m: &mut P2m,
    cx: &mut Cx,
    gfn: u64,
    nr: u64,
    access: P2mAccess,
) -> BatchOutcome {
    let P2m::Ept(e) = p2m else {
        return BatchOutcome {
            done: 0,
            rc: Err(PhysmapError::OpNotSupp),
        };
    };
    debug_assert_eq!(cx.cfg.mode, Mode::Ept);
    for i in 0..nr {
        let g = gfn + i;
        // An empty gfn reads as (INVALID_MFN, mmio_dm): the rewrite stores nothing.
        let (mfn, t) = e
            .get_entry(g)
            .map_or((INVALID_MFN, crate::types::P2mType::MmioDm), |x| {
                (x.mfn, x.p2mt)
            });
        cx.log.p2m_changed(GfnRange::of_order(g, 0));
        if let Err(err) = e.set_entry(cx, g, mfn, 0, t, access) {
            return BatchOutcome {
                done: i,
                rc: Err(PhysmapError::P2m(err)),
            };
        }
    }
    BatchOutcome {
        done: nr,
        rc: Ok(()),
    }
}
