//! The `XENMAPSPACE_gmfn_range` batch as the flat reference sees it: which pages move,
//! where the batch stops, and what each gfn maps afterwards. Flushes, page references and
//! frees are not its business (it flushes on every change and keeps no frames).
//!
//! Read from `xen/common/memory.c` (`xenmem_add_to_physmap`, `guest_remove_page`) and
//! `xenmem_add_to_physmap_one` (4.6: `arch/x86/mm.c`; master: `arch/x86/mm/p2m.c`), written
//! without `p2m-core`'s model. Per page `s → g`, in the batch's order (master runs
//! backwards when `g` overlaps the source from above; 4.6 always forwards), stopping at
//! the first error:
//!
//! | step | Xen master | Xen 4.6 |
//! |------|-----------|---------|
//! | source type | `ram_rw` / `ram_logdirty`, else `-EACCES` (`ram_shared`: `-ENOMEM`) | any; `ram_shared`: `-ENOMEM` |
//! | source page | a page of the domain, else `-EINVAL` | same, and frame 0 is refused |
//! | destination `mmio_direct` | `-EPERM` | removed |
//! | destination holds another RAM frame | `guest_remove_page`: a hole `-EINVAL`, shared `-ENOMEM`, not the domain's page `-ENXIO`, a non-RAM type `-EILSEQ`; else emptied | emptied when it is the domain's page (paging types: always); else left |
//! | source | emptied (unless `s == g`) | emptied |
//! | destination | shared: `-ENOMEM`; grant/foreign/`mmio_direct`: the domain is crashed, `-EPERM` | shared: `-ENOMEM`; grant/foreign: crashed, `-EINVAL` |
//! | then | `g` maps the page as `ram_rw`, access `rwx` | same |
//!
//! A page of the domain is a RAM frame (below `max_page`) mapped with a RAM type (RAM,
//! log-dirty, read-only, paging, shared, `mmio_write_dm`/`ioreq_server`) and not holding a
//! Xen page table (the caller says which frames do). Sharing is not modelled, so
//! unsharing fails. The M2P is taken to name the source gfn.

use p2m_core::physmap::{AddToPhysmapRange, BatchOutcome, PhysmapError};
use p2m_core::{Mfn, Mode, P2mAccess, P2mType, INVALID_MFN, MAX_PAGE};

use crate::model::RefModel;
use crate::permissions::IommuPolicy;

/// A RAM type: its frame can be the domain's own page.
pub(crate) fn ram_type(t: P2mType) -> bool {
    use P2mType::*;
    matches!(
        t,
        RamRw
            | RamLogdirty
            | RamRo
            | RamPagingOut
            | RamPaged
            | RamPagingIn
            | RamShared
            | MmioWriteDm
    )
}

/// Grant and foreign entries: pages of another domain.
pub(crate) fn other_domains(t: P2mType) -> bool {
    matches!(
        t,
        P2mType::GrantMapRw | P2mType::GrantMapRo | P2mType::MapForeign
    )
}

/// Holes: nothing to remove.
pub(crate) fn hole(t: P2mType) -> bool {
    matches!(
        t,
        P2mType::Invalid | P2mType::MmioDm | P2mType::RamPaged | P2mType::RamPagingIn
    )
}

impl RefModel {
    /// The entry at `gfn` as the batch reads it (`get_gfn_query`): the frame of a PoD
    /// entry is never real; on master, `p2m_pt_get_entry` reports nothing for the types
    /// that are not present in its tables — `mmio_dm`, the paging types, `ram_broken` — so
    /// the batch sees a hole there (`ept_get_entry` reads them at 4 KiB, where callers
    /// create them).
    pub(crate) fn batch_read(&self, gfn: u64) -> (Mfn, P2mType) {
        use P2mType::*;
        let (m, t, _) = self.get_entry(gfn);
        if self.frame_hidden(gfn) {
            return (INVALID_MFN, t);
        }
        let pt = self.config().mode != Mode::Ept;
        match t {
            PopulateOnDemand => (INVALID_MFN, t),
            MmioDm | RamPagingOut | RamPaged | RamPagingIn | RamBroken
                if self.policy() == IommuPolicy::Master && pt =>
            {
                (INVALID_MFN, MmioDm)
            }
            _ => (m, t),
        }
    }

    /// Whether `(m, t)`, read at gfn `g`, is a page of the domain; `table(g, m)` says a Xen
    /// table lived in `m` when the batch read `g`.
    pub(crate) fn own_page(g: u64, m: Mfn, t: P2mType, table: &dyn Fn(u64, u64) -> bool) -> bool {
        m.0 < MAX_PAGE && ram_type(t) && !table(g, m.0)
    }

    /// Empties `gfn`.
    pub(crate) fn empty(&mut self, gfn: u64) {
        // Order 0 with INVALID_MFN passes every argument check.
        let _ = self.set_entry(gfn, INVALID_MFN, 0, P2mType::Invalid, P2mAccess::Rwx);
    }

    /// One page of the batch on the master line.
    fn master_page(
        &mut self,
        s: u64,
        g: u64,
        table: &dyn Fn(u64, u64) -> bool,
    ) -> Result<(), PhysmapError> {
        let (m, t) = self.batch_read(s);
        if t != P2mType::RamRw && t != P2mType::RamLogdirty {
            return Err(if t == P2mType::RamShared {
                PhysmapError::NoMem
            } else {
                PhysmapError::Acces
            });
        }
        if !Self::own_page(s, m, t, table) {
            return Err(PhysmapError::Inval);
        }
        let (pm, pt) = self.batch_read(g);
        if pt == P2mType::MmioDirect {
            return Err(PhysmapError::Perm);
        }
        if pm.0 < MAX_PAGE && pm != m {
            if hole(pt) && !matches!(pt, P2mType::RamPaged | P2mType::RamPagingIn) {
                return Err(PhysmapError::Inval);
            }
            if pt == P2mType::RamShared {
                return Err(PhysmapError::NoMem);
            }
            if !Self::own_page(g, pm, pt, table) {
                return Err(PhysmapError::NxIo);
            }
            self.empty(g);
        }
        if s != g {
            self.empty(s);
        }
        self.add_page(g, m, PhysmapError::Perm)
    }

    /// One page of the batch on the 4.6 line.
    fn xen46_page(
        &mut self,
        s: u64,
        g: u64,
        table: &dyn Fn(u64, u64) -> bool,
    ) -> Result<(), PhysmapError> {
        let (m, t) = self.batch_read(s);
        if t == P2mType::RamShared {
            return Err(PhysmapError::NoMem);
        }
        if !Self::own_page(s, m, t, table) || m.0 == 0 {
            return Err(PhysmapError::Inval);
        }
        let (pm, pt) = self.batch_read(g);
        if pm.0 < MAX_PAGE && pm != m {
            let paging = matches!(
                pt,
                P2mType::RamPagingOut | P2mType::RamPaged | P2mType::RamPagingIn
            );
            if paging
                || pt == P2mType::MmioDirect
                || pt != P2mType::RamShared && Self::own_page(g, pm, pt, table)
            {
                self.empty(g);
            }
        }
        self.empty(s);
        self.add_page(g, m, PhysmapError::Inval)
    }

    /// Adding the page at `g`: refused over a shared entry, crashes the domain over a
    /// grant, foreign (or, on master, `mmio_direct`) entry (`crash` is the errno).
    fn add_page(&mut self, g: u64, m: Mfn, crash: PhysmapError) -> Result<(), PhysmapError> {
        let (_, ot) = self.batch_read(g);
        if ot == P2mType::RamShared {
            return Err(PhysmapError::NoMem);
        }
        let special = other_domains(ot)
            || (self.policy() == IommuPolicy::Master && ot == P2mType::MmioDirect);
        if special {
            return Err(crash);
        }
        self.set_entry(g, m, 0, P2mType::RamRw, P2mAccess::Rwx)
            .map_err(PhysmapError::P2m)
    }

    /// Runs the batch `op`; `table(g, m)` says whether a Xen page table lived in frame `m`
    /// when the batch read gfn `g` (such a frame is never the domain's page). After a crash
    /// the caller stops.
    pub fn add_to_physmap_range(
        &mut self,
        op: AddToPhysmapRange,
        table: &dyn Fn(u64, u64) -> bool,
    ) -> BatchOutcome {
        self.add_to_physmap_range_with(op, table, &mut |_: &mut RefModel, _: u64| {})
    }

    /// [`Self::add_to_physmap_range`] calling `between(self, done)` before each page and
    /// once the batch has stopped (where a second vCPU may act).
    pub fn add_to_physmap_range_with(
        &mut self,
        op: AddToPhysmapRange,
        table: &dyn Fn(u64, u64) -> bool,
        between: &mut dyn FnMut(&mut RefModel, u64),
    ) -> BatchOutcome {
        let out = self.batch_pages(op, table, between);
        between(self, out.done);
        out
    }

    /// The pages of the batch (see [`Self::add_to_physmap_range_with`]).
    fn batch_pages(
        &mut self,
        op: AddToPhysmapRange,
        table: &dyn Fn(u64, u64) -> bool,
        between: &mut dyn FnMut(&mut RefModel, u64),
    ) -> BatchOutcome {
        let master = self.policy() == IommuPolicy::Master;
        if master && op.gpfn == u64::MAX {
            return BatchOutcome {
                done: 0,
                rc: Err(PhysmapError::Inval),
            };
        }
        if master && op.wraps() {
            return BatchOutcome {
                done: 0,
                rc: Err(PhysmapError::Overflow),
            };
        }
        let back = op.backwards(master);
        let mut done = 0;
        while done < op.size as u64 {
            between(self, done);
            let (s, g) = op.page(back, done);
            let rc = if master {
                self.master_page(s, g, table)
            } else {
                self.xen46_page(s, g, table)
            };
            if let Err(e) = rc {
                return BatchOutcome { done, rc: Err(e) };
            }
            done += 1;
        }
        BatchOutcome { done, rc: Ok(()) }
    }
}
