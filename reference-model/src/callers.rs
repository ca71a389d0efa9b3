//! The Xen callers of the host p2m as the flat reference sees them: which gfns each one
//! changes to what, where it stops and with which error. Flushes, references and frees
//! are not its business.
//!
//! Read from the Xen tree (4.6 at `edb9531263`, master at `c447b7308b`) and written
//! without `p2m-core`'s model; per page, in gfn order, stopping at the first error:
//!
//! | op | Xen master | Xen 4.6 |
//! |----|-----------|---------|
//! | `populate_physmap` (`memory.c`, `p2m_add_page` / `guest_physmap_add_entry`) | order > 18: nothing; frame not RAM: `-EINVAL`; any old shared page: `-ENOMEM`, any old grant, foreign or `mmio_direct` entry: crash, `-EPERM` (nothing written); else the range maps the extent `ram_rw` | order > 18: nothing; shared: nothing; grant or foreign: crash; else mapped; the extent always counts as done (the result is ignored) |
//! | `populate_physmap … nr=N`, `decrease_reservation … nr=N` (N extents of order 0 at consecutive gfns, consecutive frames) | each extent as above, in order; pages done add up; the first error ends the hypercall | same |
//! | `decrease_reservation` (`guest_remove_page` per page) | order > 12: nothing; a hole `-EINVAL`; `mmio_direct` `-EPERM`; no RAM frame `-EINVAL`; shared `-ENOMEM`; not the domain's page `-ENXIO`; else emptied | order > 18: nothing; paging types emptied; `mmio_direct` cleared; no RAM frame, shared, not the domain's page: stop; else emptied |
//! | `set_mem_type` (`p2m_change_type_one` per page) | `ioreq_server` without HAP `-EOPNOTSUPP`; shared `-EAGAIN`; to `ioreq_server` only from `ram_rw`, from it only to `ram_rw`, any RAM type to the others, a hole only to `mmio_dm` (else `-EINVAL`); the frame kept, access `rwx` | paging or shared `-EAGAIN`; RAM to anything, a hole to `mmio_dm`, `mmio_write_dm` to `ram_rw`; a refusal after a change returns 0 |
//! | `memory_mapping` add | per page `mmio_direct` `rwx`; an old grant, foreign or `mmio_direct` entry of another frame (or type) crashes the domain, `-EPERM`; the same one is kept | more than 64 frames `-E2BIG`; a grant or foreign entry crashes the domain, `-ENOENT`, and the pages mapped so far are cleared |
//! | `memory_mapping` remove | per page: `-EINVAL` (stop) unless `mmio_direct` with a frame; else emptied | same, but every page is tried (the last error returned) |
//! | `set_mem_access` | EPT only (`-EOPNOTSUPP`); per page the same frame and type, the new access | EPT only (`-EINVAL`); same |
//! | `set_broken_page_p2m` | `-EINVAL` unless a RAM frame with a RAM type (`ioreq_server` too); else `ram_broken`, the frame kept | same (`mmio_write_dm` is not RAM) |
//! | `assign_device` | nothing (tables exist from creation) | nothing (the domain has had the IOMMU since creation) |
//! | `identity_map` add (`iommu_identity_mapping` / `rmrr_identity_mapping`) | the same range again: one more user (`-EADDRINUSE` with another access); a range overlapping (or adjoining from below) a listed one `-EADDRINUSE`; else listed, then per page: a hole gets `gfn → gfn` `mmio_direct` with the range's access, the same identity entry is kept, anything else `-EBUSY` (stop; unlisted if at the first page) | VT-d only (`-EOPNOTSUPP` on AMD), access always `rw`, no overlap check, listed only once every page is mapped |
//! | `track_dirty_vram` | HAP: tracking moves (old range back to `ram_rw`, new one to `ram_logdirty`, cut at `max_mapped_pfn`; master marks nothing for one page), the same range re-arms page by page, `nr` 0 stops; shadow: nothing (see [`crate::logdirty`]) | same (a one-page range is marked; from gfn 0 past `max_mapped_pfn` every page is) |
//! | `guest_access` | HAP: a write to `ram_logdirty` the access allows → `ram_rw`, `rwx`; otherwise nothing | same |
//! | `identity_map` remove | the listed range: one user fewer; at the last, every page that is still `gfn → gfn` `mmio_direct` is emptied; an unknown range `-ENOENT` | same |

use p2m_core::callers::{CallerOp, HvmMemType, InterleavedBatch, InterleavedOutcome};
use p2m_core::physmap::{BatchOutcome, PhysmapError};
use p2m_core::{GfnRange, Mfn, Mode, P2mAccess, P2mType, INVALID_MFN, MAX_PAGE};

use crate::model::RefModel;
use crate::permissions::IommuPolicy;
use crate::physmap::{hole, other_domains};

/// The default access callers write.
const RWX: P2mAccess = P2mAccess::Rwx;

/// Grant, foreign and `mmio_direct` entries (master's `p2m_is_special`).
fn special(t: P2mType) -> bool {
    other_domains(t) || t == P2mType::MmioDirect
}

/// A RAM type in the sense of the set-mem-type checks (`p2m_is_ram`): master counts
/// `ioreq_server` (the `mmio_write_dm` slot) in, 4.6 does not.
fn is_ram(master: bool, t: P2mType) -> bool {
    use P2mType::*;
    matches!(
        t,
        RamRw | RamLogdirty | RamRo | RamPagingOut | RamPaged | RamPagingIn | RamShared
    ) || (master && t == MmioWriteDm)
}

/// What `t` (`HVMMEM_*`) means as a p2m type.
fn memtype(t: HvmMemType) -> P2mType {
    match t {
        HvmMemType::RamRw => P2mType::RamRw,
        HvmMemType::RamRo => P2mType::RamRo,
        HvmMemType::MmioDm => P2mType::MmioDm,
        HvmMemType::IoreqServer => P2mType::MmioWriteDm,
    }
}

/// `nr` extents one after the other (`one(i)` the `i`-th): pages done add up, the first
/// error ends the hypercall.
fn extents(nr: u32, mut one: impl FnMut(u64) -> BatchOutcome) -> BatchOutcome {
    let mut done = 0;
    for i in 0..u64::from(nr) {
        let o = one(i);
        done += o.done;
        if let Err(e) = o.rc {
            return err(done, e);
        }
    }
    ok(done)
}

/// `n` pages done, no error.
fn ok(n: u64) -> BatchOutcome {
    BatchOutcome {
        done: n,
        rc: Ok(()),
    }
}

/// `n` pages done, then `e`.
fn err(n: u64, e: PhysmapError) -> BatchOutcome {
    BatchOutcome {
        done: n,
        rc: Err(e),
    }
}

impl RefModel {
    /// Writes `range` as `mfn + i` with type `t` and access `a`, as a caller's chunked
    /// `p2m_set_entry` leaves it (empty where Xen writes an empty entry).
    fn write_range(&mut self, range: GfnRange, mfn: Mfn, t: P2mType, a: P2mAccess) {
        // Each page is judged by its own frame: the part beyond the RAM (not
        // `mfn_valid`) gets what Xen writes for such a frame.
        if mfn != INVALID_MFN && mfn.0 < MAX_PAGE && mfn.0 + range.len() > MAX_PAGE {
            let cut = range.start + (MAX_PAGE - mfn.0);
            self.write_run(
                GfnRange {
                    start: range.start,
                    end: cut,
                },
                mfn,
                t,
                a,
            );
            self.write_run(
                GfnRange {
                    start: cut,
                    end: range.end,
                },
                Mfn(MAX_PAGE),
                t,
                a,
            );
            return;
        }
        self.write_run(range, mfn, t, a);
    }

    /// Runs one caller op; `table(g, m)` says whether a Xen table lived in frame `m` when
    /// gfn `g` was read (such a frame is never the domain's page). A crash is the
    /// model's to report; the reference only stops.
    pub fn call(&mut self, op: CallerOp, table: &dyn Fn(u64, u64) -> bool) -> BatchOutcome {
        let master = self.policy() == IommuPolicy::Master;
        match op {
            CallerOp::Populate { gfn, mfn, order } => self.populate(master, gfn, mfn, order),
            CallerOp::DecreaseReservation { gfn, order } => {
                self.decrease(master, gfn, order, table)
            }
            CallerOp::PopulateRun { gfn, mfn, nr } => {
                extents(nr, |i| self.populate(master, gfn + i, mfn + i, 0))
            }
            CallerOp::DecreaseRun { gfn, nr } => {
                extents(nr, |i| self.decrease(master, gfn + i, 0, table))
            }
            CallerOp::SetMemType { gfn, nr, mem_type } => {
                self.set_mem_type(master, gfn, nr.into(), memtype(mem_type))
            }
            CallerOp::MemoryMapping { gfn, mfn, nr, add } => {
                self.memory_mapping(master, gfn, mfn, nr.into(), add)
            }
            CallerOp::SetMemAccess { gfn, nr, access } => {
                if self.config().mode != Mode::Ept {
                    let e = if master {
                        PhysmapError::OpNotSupp
                    } else {
                        PhysmapError::Inval
                    };
                    return err(0, e);
                }
                for i in 0..u64::from(nr) {
                    // As `get_entry` reads it (a PoD entry has no frame); a hole reads as
                    // `ept_get_entry`'s default type, `mmio_dm` (master `p2m-ept.c:1023`,
                    // 4.6 `:877`), whose write leaves the entry empty but still raises
                    // `max_mapped_pfn` (master `:963-966`, 4.6 `:820-823`).
                    let (m, t) = match self.batch_read(gfn + i) {
                        (m, P2mType::Invalid) => (m, P2mType::MmioDm),
                        read => read,
                    };
                    if let Err(e) = self.set_entry(gfn + i, m, 0, t, access) {
                        return err(i, PhysmapError::P2m(e));
                    }
                }
                ok(nr.into())
            }
            CallerOp::TrackDirtyVram { gfn, nr } => {
                self.track_dirty_vram(gfn, nr.into());
                ok(nr.into())
            }
            CallerOp::GuestAccess { gfn, write } => {
                self.guest_access(gfn, write);
                ok(1)
            }
            CallerOp::AssignDevice => {
                self.assign_device();
                ok(0)
            }
            CallerOp::IdentityMap {
                gfn,
                nr,
                access,
                add,
            } => self.identity_map(master, gfn, nr.into(), access, add),
            CallerOp::SetBrokenPage { gfn } => {
                let (m, t) = self.batch_read(gfn);
                if m.0 >= MAX_PAGE || !is_ram(master, t) {
                    return err(0, PhysmapError::Inval);
                }
                self.write_range(GfnRange::of_order(gfn, 0), m, P2mType::RamBroken, RWX);
                ok(1)
            }
        }
    }

    /// After an `identity_map` add that took an error path in Xen (an allocation failed
    /// at page `done`): the list as Xen leaves it — master unlists a range that failed at
    /// its first page and keeps one that failed later; 4.6 lists a range only once every
    /// page is mapped. (The pages themselves come from [`RefModel::resync`].)
    pub fn identity_map_failed(&mut self, base: u64, nr: u64, done: u64) {
        let master = self.policy() == IommuPolicy::Master;
        let end = base.saturating_add(nr);
        if let Some(k) = self
            .identity
            .iter()
            .position(|m| m.0 == base && m.1 == end && m.3 == 1)
        {
            if !master || done == 0 {
                self.identity.remove(k);
            }
        }
    }

    /// `identity_map` (see the table above).
    fn identity_map(
        &mut self,
        master: bool,
        base: u64,
        nr: u64,
        access: P2mAccess,
        add: bool,
    ) -> BatchOutcome {
        if !master && self.config().vendor != p2m_core::Vendor::Vtd {
            return err(0, PhysmapError::OpNotSupp);
        }
        let access = if master { access } else { P2mAccess::Rw };
        let end = base.saturating_add(nr);
        if let Some(k) = self.identity.iter().position(|m| m.0 == base && m.1 == end) {
            if add {
                if master && self.identity[k].2 != access {
                    return err(0, PhysmapError::AddrInUse);
                }
                self.identity[k].3 += 1;
                return ok(0);
            }
            self.identity[k].3 -= 1;
            if self.identity[k].3 > 0 {
                return ok(0);
            }
            self.identity.remove(k);
            for g in base..end {
                let (m, t) = self.batch_read(g);
                if t == P2mType::MmioDirect && m == Mfn(g) {
                    self.write_range(GfnRange::of_order(g, 0), INVALID_MFN, P2mType::Invalid, RWX);
                }
            }
            return ok(nr);
        }
        if master && self.identity.iter().any(|m| end > m.0 && m.1 >= base) {
            return err(0, PhysmapError::AddrInUse);
        }
        if !add {
            return err(0, PhysmapError::NoEnt);
        }
        if master {
            self.identity.push((base, end, access, 1));
        }
        // `get_entry` of p2m-pt reports every access as `rwx`.
        let ept = self.config().mode == Mode::Ept;
        for g in base..end {
            // As Xen's `get_entry` reads it (see `batch_read`).
            let (m, t) = self.batch_read(g);
            let a = if ept { self.get_entry(g).2 } else { RWX };
            if matches!(t, P2mType::Invalid | P2mType::MmioDm) {
                self.write_range(
                    GfnRange::of_order(g, 0),
                    Mfn(g),
                    P2mType::MmioDirect,
                    access,
                );
            } else if !(m == Mfn(g) && t == P2mType::MmioDirect && a == access) {
                if master && g == base {
                    self.identity.retain(|x| x.0 != base || x.1 != end);
                }
                return err(g - base, PhysmapError::Busy);
            }
        }
        if !master {
            self.identity.push((base, end, access, 1));
        }
        ok(nr)
    }

    /// The batch with a second vCPU's op run once `after` pages are moved (or when the
    /// batch stops earlier); `table` answers for the batch's reads, `table_second` for
    /// the second op's.
    pub fn add_to_physmap_interleaved(
        &mut self,
        ib: InterleavedBatch,
        table: &dyn Fn(u64, u64) -> bool,
        table_second: &dyn Fn(u64, u64) -> bool,
    ) -> InterleavedOutcome {
        let mut second = None;
        let mut pending = Some(ib.second);
        let mut between = |r: &mut RefModel, done: u64| {
            if let Some(s) = pending.filter(|s| u64::from(s.after) <= done) {
                pending = None;
                second = Some(r.call(s.op, table_second));
            }
        };
        let batch = self.add_to_physmap_range_with(ib.batch, table, &mut between);
        // A batch that stopped early ran the second op when it stopped.
        if let Some(s) = pending {
            second = Some(self.call(s.op, table_second));
        }
        InterleavedOutcome {
            batch,
            second: second.unwrap_or(ok(0)),
        }
    }

    /// `XENMEM_populate_physmap`, one extent.
    fn populate(&mut self, master: bool, gfn: u64, mfn: u64, order: u32) -> BatchOutcome {
        if order > 18 {
            return ok(0);
        }
        let range = GfnRange::of_order(gfn, order);
        if master && mfn >= MAX_PAGE {
            return err(0, PhysmapError::Inval);
        }
        let done = if master { 0 } else { range.len() };
        for (_, _, t, _) in self.cpu_extents(range) {
            if t == P2mType::RamShared {
                return if master {
                    err(0, PhysmapError::NoMem)
                } else {
                    ok(done)
                };
            }
            if (master && special(t)) || other_domains(t) {
                return if master {
                    err(0, PhysmapError::Perm)
                } else {
                    ok(done)
                };
            }
        }
        if mfn < MAX_PAGE {
            self.write_range(range, Mfn(mfn), P2mType::RamRw, RWX);
        }
        ok(range.len())
    }

    /// `XENMEM_decrease_reservation`, one extent: `guest_remove_page` per page.
    fn decrease(
        &mut self,
        master: bool,
        gfn: u64,
        order: u32,
        table: &dyn Fn(u64, u64) -> bool,
    ) -> BatchOutcome {
        if order > if master { 12 } else { 18 } {
            return ok(0);
        }
        for j in 0..1u64 << order {
            let g = gfn + j;
            let (m, t) = self.batch_read(g);
            let rc = if master {
                if matches!(t, P2mType::Invalid | P2mType::MmioDm) {
                    Err(PhysmapError::Inval)
                } else if t == P2mType::MmioDirect {
                    Err(PhysmapError::Perm)
                } else if m.0 >= MAX_PAGE {
                    Err(PhysmapError::Inval)
                } else if t == P2mType::RamShared {
                    Err(PhysmapError::NoMem)
                } else if !Self::own_page(g, m, t, table) {
                    Err(PhysmapError::NxIo)
                } else {
                    self.empty(g);
                    Ok(())
                }
            } else if matches!(
                t,
                P2mType::RamPagingOut | P2mType::RamPaged | P2mType::RamPagingIn
            ) {
                self.empty(g);
                Ok(())
            } else if t == P2mType::MmioDirect {
                // `clear_mmio_p2m_entry`: any `mmio_direct` entry, whatever its frame.
                self.empty(g);
                Ok(())
            } else if m.0 >= MAX_PAGE || t == P2mType::RamShared || !Self::own_page(g, m, t, table)
            {
                Err(PhysmapError::Inval)
            } else {
                self.empty(g);
                Ok(())
            };
            if let Err(e) = rc {
                return err(j, e);
            }
        }
        ok(1 << order)
    }

    /// `XEN_DMOP_set_mem_type` / `HVMOP_set_mem_type`.
    fn set_mem_type(&mut self, master: bool, gfn: u64, nr: u64, nt: P2mType) -> BatchOutcome {
        let ioreq = P2mType::MmioWriteDm;
        if master && nt == ioreq && self.config().mode == Mode::Shadow {
            return err(0, PhysmapError::OpNotSupp);
        }
        for i in 0..nr {
            let g = gfn + i;
            let (m, t) = self.batch_read(g);
            let paging = matches!(
                t,
                P2mType::RamPagingOut | P2mType::RamPaged | P2mType::RamPagingIn
            );
            let allowed = if master {
                if nt == ioreq {
                    t == P2mType::RamRw
                } else if t == ioreq {
                    nt == P2mType::RamRw
                } else {
                    is_ram(true, t) || (hole(t) && nt == P2mType::MmioDm)
                }
            } else {
                is_ram(false, t)
                    || (matches!(t, P2mType::MmioDm | P2mType::Invalid) && nt == P2mType::MmioDm)
                    || (t == ioreq && nt == P2mType::RamRw)
            };
            if t == P2mType::RamShared || (!master && paging) {
                return err(i, PhysmapError::Again);
            }
            if !allowed {
                return if master || i == 0 {
                    err(i, PhysmapError::Inval)
                } else {
                    ok(i)
                };
            }
            self.write_range(GfnRange::of_order(g, 0), m, nt, RWX);
        }
        ok(nr)
    }

    /// `XEN_DOMCTL_memory_mapping`.
    fn memory_mapping(
        &mut self,
        master: bool,
        gfn: u64,
        mfn: u64,
        nr: u64,
        add: bool,
    ) -> BatchOutcome {
        // The domctl's own checks come first (both lines): frames below 2^40 (`paddr_bits`
        // 52), no wrap of either range, at least one page.
        let last = |x: u64| x.checked_add(nr.wrapping_sub(1));
        if nr == 0 || last(mfn).is_none_or(|e| e >> 40 != 0) || last(gfn).is_none() {
            return err(0, PhysmapError::Inval);
        }
        if !master && nr > 64 {
            return err(0, PhysmapError::TooBig);
        }
        // `clear_mmio_p2m_entry` clears any `mmio_direct` entry: a present entry never reads
        // back as `INVALID_MFN` there (its raw frame field, all ones at most).
        let is_mmio = |r: &RefModel, g: u64| r.get_entry(g).1 == P2mType::MmioDirect;
        if !add {
            let (mut done, mut rc) = (0, Ok(()));
            for i in 0..nr {
                if is_mmio(self, gfn + i) {
                    self.empty(gfn + i);
                    done += 1;
                } else if master {
                    return err(i, PhysmapError::Inval);
                } else {
                    rc = Err(PhysmapError::Inval);
                }
            }
            return BatchOutcome { done, rc };
        }
        for i in 0..nr {
            let (g, m) = (gfn + i, Mfn(mfn + i));
            let (om, ot, oa) = self.get_entry(g);
            // p2m-pt keeps no access: its `get_entry` reports `rwx`.
            let oa = if self.config().mode == Mode::Ept {
                oa
            } else {
                RWX
            };
            if master && special(ot) {
                if om != m || ot != P2mType::MmioDirect {
                    return err(i, PhysmapError::Perm);
                }
                if oa == RWX {
                    continue;
                }
            }
            if !master && other_domains(ot) {
                for k in 0..i {
                    if is_mmio(self, gfn + k) {
                        self.empty(gfn + k);
                    }
                }
                return err(i, PhysmapError::NoEnt);
            }
            self.write_range(GfnRange::of_order(g, 0), m, P2mType::MmioDirect, RWX);
        }
        ok(nr)
    }
}
