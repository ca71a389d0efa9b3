//! Shared vocabulary of the `XENMEM_add_to_physmap` batch with `XENMAPSPACE_gmfn_range`:
//! move `size` guest pages from `idx..` to `gpfn..`, the only caller of
//! `iommu_dont_flush_iotlb`. Each line models the batch in its own `memory` module
//! (4.6: `common/memory.c:582-641` and `arch/x86/mm.c:4633-4730` at `edb9531263`;
//! master: `common/memory.c:960-1059`, `arch/x86/mm/p2m.c:1992-2110` at `c447b7308b`).
//!
//! What the model assumes where Xen consults state it does not keep:
//! - the M2P entry of a moved page names its source gfn (`get_gpfn_from_mfn(mfn) == idx`:
//!   a page the guest populated through `guest_physmap_add_page`), so `-EXDEV` never arises;
//! - a frame is a page of the domain (`get_page(page, d)` succeeds) when it is RAM
//!   (`mfn_valid`), no table lives in it, and the entry mapping it has a RAM type
//!   ([`ram_backed`]; grant, foreign and MMIO frames belong to someone else);
//! - sharing is not modelled: `mem_sharing_unshare_page` fails (`-ENOMEM`);
//! - `hypercall_preempt_check()` never fires: continuations come only from the batch
//!   limit (16 pages on master, none on 4.6).

use std::fmt;

use crate::events::OpLog;
use crate::frames::{FrameState, MachineMemory};
use crate::types::{GfnRange, Mfn, P2mError, P2mType, MAX_PAGE};

/// `XENMEM_add_to_physmap` with `space = XENMAPSPACE_gmfn_range`: one hypercall as a guest
/// issues it (the model runs its continuations to the end).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct AddToPhysmapRange {
    /// `xatp.idx`: the first source gfn.
    pub idx: u64,
    /// `xatp.gpfn`: the first destination gfn.
    pub gpfn: u64,
    /// `xatp.size`: pages to move.
    pub size: u16,
}

impl fmt::Display for AddToPhysmapRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "add_to_physmap_range idx={:#x} gpfn={:#x} size={}",
            self.idx, self.gpfn, self.size
        )
    }
}

/// Why a page of the batch stopped it (the errno Xen returns).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PhysmapError {
    /// `-EINVAL`: no page at the source, or nothing to remove at the destination.
    Inval,
    /// `-EACCES`: master refuses a source that is not `ram_rw` / `ram_logdirty`.
    Acces,
    /// `-ENOMEM`: a shared page could not be unshared.
    NoMem,
    /// `-EPERM`: the destination is `mmio_direct` (master), or `p2m_add_page` found a
    /// grant, foreign or `mmio_direct` entry there (the domain is crashed too).
    Perm,
    /// `-ENXIO`: master `guest_remove_page` could not take a reference on the page.
    NxIo,
    /// `-EILSEQ`: master `p2m_remove_entry` found an entry it cannot remove.
    IlSeq,
    /// `-EOVERFLOW`: a range wraps.
    Overflow,
    /// `-EBUSY`: `p2m_change_type_one` found another type than the caller read.
    Busy,
    /// `-EOPNOTSUPP`: the op needs HAP (or EPT) and the domain has none.
    OpNotSupp,
    /// `-EAGAIN`: a shared or paged page must be unshared or paged in first.
    Again,
    /// `-ENOENT`: 4.6 `set_mmio_p2m_entry` found a grant or foreign entry (and crashed the domain).
    NoEnt,
    /// `-E2BIG`: 4.6 `XEN_DOMCTL_memory_mapping` with more than 64 frames.
    TooBig,
    /// `-EADDRINUSE` (`iommu_identity_mapping`: the range overlaps another, or has
    /// another access).
    AddrInUse,
    /// `set_entry` failed underneath.
    P2m(P2mError),
}

impl fmt::Display for PhysmapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PhysmapError::Inval => f.write_str("-EINVAL"),
            PhysmapError::Acces => f.write_str("-EACCES"),
            PhysmapError::NoMem => f.write_str("-ENOMEM"),
            PhysmapError::Perm => f.write_str("-EPERM"),
            PhysmapError::NxIo => f.write_str("-ENXIO"),
            PhysmapError::IlSeq => f.write_str("-EILSEQ"),
            PhysmapError::Overflow => f.write_str("-EOVERFLOW"),
            PhysmapError::Busy => f.write_str("-EBUSY"),
            PhysmapError::OpNotSupp => f.write_str("-EOPNOTSUPP"),
            PhysmapError::Again => f.write_str("-EAGAIN"),
            PhysmapError::NoEnt => f.write_str("-ENOENT"),
            PhysmapError::TooBig => f.write_str("-E2BIG"),
            PhysmapError::AddrInUse => f.write_str("-EADDRINUSE"),
            PhysmapError::P2m(e) => e.fmt(f),
        }
    }
}

/// What the whole batch did: pages moved, and the error that stopped it, if any.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct BatchOutcome {
    /// Pages moved.
    pub done: u64,
    /// The error that ended the batch early (`Ok` when every page moved).
    pub rc: Result<(), PhysmapError>,
}

impl fmt::Display for BatchOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rc {
            Ok(()) => write!(f, "{} pages moved", self.done),
            Err(e) => write!(f, "{} pages moved, then {e}", self.done),
        }
    }
}

/// `mfn_valid(mfn)` for a guest page: RAM below `max_page`.
pub fn mfn_valid(mfn: Mfn) -> bool {
    mfn.0 < MAX_PAGE
}

/// Whether a page mapped with type `t` belongs to another domain (grant and foreign
/// entries): `get_page(page, d)` fails on it.
pub fn foreign_owned(t: P2mType) -> bool {
    matches!(
        t,
        P2mType::GrantMapRw | P2mType::GrantMapRo | P2mType::MapForeign
    )
}

/// Types whose frame is the domain's own RAM (`p2m_is_ram` of 4.6 and master with
/// `p2m_mmio_write_dm` / `p2m_ioreq_server`): only such a frame can be a page the
/// domain owns; grant, foreign and MMIO entries map frames it does not own.
pub fn ram_backed(t: P2mType) -> bool {
    matches!(
        t,
        P2mType::RamRw
            | P2mType::RamLogdirty
            | P2mType::RamRo
            | P2mType::RamPagingOut
            | P2mType::RamPaged
            | P2mType::RamPagingIn
            | P2mType::RamShared
            | P2mType::MmioWriteDm
    )
}

/// `get_page(page, d)`: whether `mfn`, mapped with type `t`, is a page of this domain —
/// RAM ([`mfn_valid`]), mapped with a [`ram_backed`] type, and no table lives in it now.
/// `gfn` is where the batch read the entry; a frame refused for holding a table is noted
/// as `(gfn, mfn)` in `log.xen_frames` (the reference, which keeps no tables, is told which
/// frames Xen owned when the batch looked at them).
pub fn domain_page(mem: &MachineMemory, log: &mut OpLog, gfn: u64, mfn: Mfn, t: P2mType) -> bool {
    if !mfn_valid(mfn) || !ram_backed(t) {
        return false;
    }
    let table = matches!(
        mem.info(mfn.0).map(|i| i.state),
        Some(FrameState::Table { .. })
    );
    if table && !log.xen_frames.contains(&(gfn, mfn.0)) {
        log.xen_frames.push((gfn, mfn.0));
    }
    !table
}

/// Guest page references a batch takes and drops (`get_page`, `put_page`,
/// `put_page_alloc_ref`): a page whose allocation reference is gone is freed when its
/// last extra reference goes. The methods return the page to free, `(mfn, gfn)`; the
/// line frees it and records the free for the oracle.
#[derive(Debug, Default)]
pub struct PageRefs {
    /// Extra references held: `(mfn, count)`.
    extra: Vec<(u64, u32)>,
    /// Pages handed to the batch (`extra.ppage`), dropped after its first flush.
    batch: Vec<(u64, u64)>,
    /// Pages whose allocation reference was dropped while an extra one was held.
    unallocated: Vec<(u64, u64)>,
}

impl PageRefs {
    /// `get_page(page, d)`.
    pub fn get(&mut self, mfn: u64) {
        match self.extra.iter_mut().find(|(m, _)| *m == mfn) {
            Some((_, n)) => *n += 1,
            None => self.extra.push((mfn, 1)),
        }
    }

    /// `*extra.ppage = page`: the reference now belongs to the batch.
    pub fn hand_to_batch(&mut self, mfn: u64, gfn: u64) {
        self.batch.push((mfn, gfn));
    }

    /// The pages handed to the batch, to be put now.
    pub fn take_batch(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(&mut self.batch)
    }

    /// `put_page(page)`: the page to free if that was its last reference.
    pub fn put(&mut self, mfn: u64, gfn: u64) -> Option<(u64, u64)> {
        let k = self.extra.iter().position(|(m, _)| *m == mfn)?;
        self.extra[k].1 -= 1;
        if self.extra[k].1 > 0 {
            return None;
        }
        self.extra.swap_remove(k);
        let u = self.unallocated.iter().position(|(m, _)| *m == mfn)?;
        let (_, g) = self.unallocated.swap_remove(u);
        let _ = gfn;
        Some((mfn, g))
    }

    /// `put_page_alloc_ref(page)` (4.6: clearing `_PGC_allocated`): the page to free
    /// now, unless an extra reference is held.
    pub fn put_alloc_ref(&mut self, mfn: u64, gfn: u64) -> Option<(u64, u64)> {
        if self.extra.iter().any(|(m, _)| *m == mfn) {
            self.unallocated.push((mfn, gfn));
            None
        } else {
            Some((mfn, gfn))
        }
    }
}

impl AddToPhysmapRange {
    /// Whether the batch runs backwards: the destination overlaps the source from above
    /// and the line processes such overlaps backwards (master, `memory.c:1004-1016`).
    pub fn backwards(&self, backwards_on_overlap: bool) -> bool {
        backwards_on_overlap
            && self.gpfn > self.idx
            && self.gpfn < self.idx.wrapping_add(self.size as u64)
    }

    /// `(source, destination)` of the `k`-th page processed.
    pub fn page(&self, backwards: bool, k: u64) -> (u64, u64) {
        let i = if backwards {
            self.size as u64 - 1 - k
        } else {
            k
        };
        (self.idx.wrapping_add(i), self.gpfn.wrapping_add(i))
    }

    /// The source and destination ranges.
    pub fn ranges(&self) -> Vec<GfnRange> {
        let n = self.size as u64;
        vec![
            GfnRange {
                start: self.idx,
                end: self.idx.saturating_add(n),
            },
            GfnRange {
                start: self.gpfn,
                end: self.gpfn.saturating_add(n),
            },
        ]
    }

    /// `-EOVERFLOW` check of master (`memory.c:983-994`): a range wraps.
    pub fn wraps(&self) -> bool {
        let n = self.size as u64;
        self.gpfn.checked_add(n).is_none() || self.idx.checked_add(n).is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_order() {
        let op = AddToPhysmapRange {
            idx: 0x10,
            gpfn: 0x12,
            size: 4,
        };
        assert_eq!(
            op.to_string(),
            "add_to_physmap_range idx=0x10 gpfn=0x12 size=4"
        );
        assert!(op.backwards(true) && !op.backwards(false));
        assert_eq!(op.page(true, 0), (0x13, 0x15));
        assert_eq!(op.page(false, 0), (0x10, 0x12));
        let down = AddToPhysmapRange { gpfn: 0xe, ..op };
        assert!(!down.backwards(true));
        let apart = AddToPhysmapRange { gpfn: 0x14, ..op };
        assert!(!apart.backwards(true));
        assert!(
            AddToPhysmapRange {
                idx: u64::MAX - 1,
                ..op
            }
            .wraps()
                && !op.wraps()
        );
        assert!(mfn_valid(Mfn(0)) && !mfn_valid(Mfn(MAX_PAGE)));
        assert!(foreign_owned(P2mType::MapForeign) && !foreign_owned(P2mType::RamRw));
        let o = BatchOutcome {
            done: 3,
            rc: Err(PhysmapError::Perm),
        };
        assert_eq!(o.to_string(), "3 pages moved, then -EPERM");
    }
}
