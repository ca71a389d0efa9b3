//! Shared vocabulary of the Xen callers of the host p2m that a guest, its device model or
//! the toolstack can issue: what each caller op is, how it prints, and what it returns.
//! Each line models the callers in the module named after the Xen file that holds them
//! (`memory` for `common/memory.c`, `dm` / `hvm` for the set-mem-type op, `domctl` for
//! `XEN_DOMCTL_memory_mapping`, `mem_access`, `pci` for device assignment).
//!
//! Unlike the raw `set_entry` op (the internal API), a caller op only reaches the p2m
//! through the checks, order choice and chunking its Xen function applies; what it
//! cannot express is what no guest or toolstack can ask for.

use std::fmt;

use crate::physmap::{AddToPhysmapRange, BatchOutcome};
use crate::types::P2mAccess;

/// Accesses a reserved range is identity-mapped with: VT-d RMRRs `rw`; AMD IVMDs by their
/// IR/IW flags (`rw`, `r`, `w`). A removal carries `x` (Xen's `p2m_access_x`).
pub const IDENTITY_ACCESSES: [P2mAccess; 3] = [P2mAccess::Rw, P2mAccess::R, P2mAccess::W];

/// Most pages one range caller op (`set_mem_type`, `memory_mapping`, `set_mem_access`)
/// covers: one 2 MiB region (the model runs the hypercall's continuations to the end).
pub const MAX_CALL_PAGES: u32 = 512;

/// `HVMMEM_*` memory types of `HVMOP_set_mem_type` (4.6) / `XEN_DMOP_set_mem_type`
/// (master), as the device model names them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum HvmMemType {
    /// `HVMMEM_ram_rw` → `p2m_ram_rw`.
    RamRw,
    /// `HVMMEM_ram_ro` → `p2m_ram_ro`.
    RamRo,
    /// `HVMMEM_mmio_dm` → `p2m_mmio_dm`.
    MmioDm,
    /// `HVMMEM_mmio_write_dm` (4.6) / `HVMMEM_ioreq_server` (master) →
    /// `p2m_mmio_write_dm` / `p2m_ioreq_server` (the same type slot).
    IoreqServer,
}

impl HvmMemType {
    /// Every memory type, in `HVMMEM_*` order.
    pub const ALL: [HvmMemType; 4] = [
        HvmMemType::RamRw,
        HvmMemType::RamRo,
        HvmMemType::MmioDm,
        HvmMemType::IoreqServer,
    ];

    /// The trace name.
    pub fn name(self) -> &'static str {
        match self {
            HvmMemType::RamRw => "ram_rw",
            HvmMemType::RamRo => "ram_ro",
            HvmMemType::MmioDm => "mmio_dm",
            HvmMemType::IoreqServer => "ioreq_server",
        }
    }

    /// The memory type of a trace name.
    pub fn from_name(s: &str) -> Option<HvmMemType> {
        HvmMemType::ALL.into_iter().find(|t| t.name() == s)
    }
}

impl fmt::Display for HvmMemType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One call of a Xen caller of the host p2m.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum CallerOp {
    /// `XENMEM_populate_physmap`, one extent: the allocator hands out the `2^order`
    /// pages at `mfn` and `guest_physmap_add_page(d, gfn, mfn, order)` maps them `ram_rw`.
    Populate {
        /// First gfn of the extent.
        gfn: u64,
        /// First frame the allocator returned.
        mfn: u64,
        /// Extent order.
        order: u32,
    },
    /// `XENMEM_populate_physmap` with `nr` extents of order 0 at consecutive gfns: how a
    /// guest balloons a region in page by page (`memory.c`'s extent loop, one
    /// `guest_physmap_add_page` each), the allocator handing out consecutive frames from
    /// `mfn` — with `mfn ≡ gfn (mod 512)` the IOMMU may coalesce the region.
    PopulateRun {
        /// First gfn.
        gfn: u64,
        /// Frame of the first extent.
        mfn: u64,
        /// Extents (1..=[`MAX_CALL_PAGES`]).
        nr: u32,
    },
    /// `XENMEM_decrease_reservation` with `nr` extents of order 0 at consecutive gfns: a
    /// region given back page by page (the last page may free its tables).
    DecreaseRun {
        /// First gfn.
        gfn: u64,
        /// Extents (1..=[`MAX_CALL_PAGES`]).
        nr: u32,
    },
    /// `XENMEM_decrease_reservation`, one extent: `guest_remove_page` on each of its
    /// `2^order` gfns.
    DecreaseReservation {
        /// First gfn of the extent.
        gfn: u64,
        /// Extent order.
        order: u32,
    },
    /// `HVMOP_set_mem_type` (4.6) / `XEN_DMOP_set_mem_type` (master): the device model
    /// retypes `nr` pages with `p2m_change_type_one`.
    SetMemType {
        /// First gfn.
        gfn: u64,
        /// Pages (1..=[`MAX_CALL_PAGES`]).
        nr: u32,
        /// The new memory type.
        mem_type: HvmMemType,
    },
    /// `XEN_DOMCTL_memory_mapping`: the toolstack maps (`set_mmio_p2m_entry`) or unmaps
    /// (`clear_mmio_p2m_entry`) `nr` device frames from `mfn` at `gfn`.
    MemoryMapping {
        /// First gfn.
        gfn: u64,
        /// First machine frame of the device range.
        mfn: u64,
        /// Pages (1..=[`MAX_CALL_PAGES`]).
        nr: u32,
        /// `DPCI_ADD_MAPPING` (true) or `DPCI_REMOVE_MAPPING`.
        add: bool,
    },
    /// `p2m_set_mem_access` (`HVMOP_set_mem_access` / `XENMEM_access_op`): an
    /// introspection agent sets the access of `nr` pages.
    SetMemAccess {
        /// First gfn.
        gfn: u64,
        /// Pages (1..=[`MAX_CALL_PAGES`]).
        nr: u32,
        /// The new access.
        access: P2mAccess,
    },
    /// `XEN_DOMCTL_assign_device`: a PCI device is assigned to the domain.
    AssignDevice,
    /// `XEN_DOMCTL_set_broken_page_p2m`: the toolstack marks a RAM page broken
    /// (`p2m_change_type_one` to `ram_broken`; libxc's restore does it for pages the
    /// source host found broken).
    SetBrokenPage {
        /// The gfn.
        gfn: u64,
    },
    /// `iommu_identity_mapping` (master `x86/iommu.c:224-308`) / 4.6
    /// `rmrr_identity_mapping` (`vtd/iommu.c:1814-1870`): assigning (`add`) or
    /// deassigning a device that has a firmware-reserved range (a VT-d RMRR, an AMD IVMD,
    /// whose IR/IW flags give the access) maps (unmaps) its `nr` pages 1:1 as
    /// `mmio_direct` with that access (`set_identity_p2m_entry` /
    /// `clear_identity_p2m_entry`).
    IdentityMap {
        /// First gfn (= machine frame) of the range.
        gfn: u64,
        /// Pages (1..=[`MAX_CALL_PAGES`]).
        nr: u32,
        /// The access (`rw`, or on AMD `r` / `w` from the IVMD flags); ignored on removal,
        /// which Xen requests with `p2m_access_x`.
        access: P2mAccess,
        /// Map (device assigned) or unmap (deassigned).
        add: bool,
    },
    /// `XEN_DMOP_track_dirty_vram` (master) / `HVMOP_track_dirty_vram` (4.6): the device
    /// model tracks writes to `nr` VRAM pages from `gfn` (`hap_track_dirty_vram`: a new
    /// range moves tracking with `p2m_change_type_range`, the same range re-arms it page
    /// by page); `nr` = 0 stops tracking.
    TrackDirtyVram {
        /// First gfn.
        gfn: u64,
        /// Pages (0..=[`MAX_CALL_PAGES`]; 0 stops tracking).
        nr: u32,
    },
    /// A vCPU's own read or write of `gfn`: a pending type change on the way is resolved
    /// (EPT misconfig exit → `resolve_misconfig`; NPT fault → `do_recalc`), and a write to
    /// a `ram_logdirty` page retypes it `ram_rw` (`hvm_hap_nested_page_fault`).
    GuestAccess {
        /// The gfn.
        gfn: u64,
        /// A write (else a read).
        write: bool,
    },
}

impl CallerOp {
    /// The name of the Xen entry point, as the trace writes it.
    pub fn name(&self) -> &'static str {
        match self {
            CallerOp::Populate { .. } | CallerOp::PopulateRun { .. } => "populate_physmap",
            CallerOp::DecreaseReservation { .. } | CallerOp::DecreaseRun { .. } => {
                "decrease_reservation"
            }
            CallerOp::SetMemType { .. } => "set_mem_type",
            CallerOp::MemoryMapping { .. } => "memory_mapping",
            CallerOp::SetMemAccess { .. } => "set_mem_access",
            CallerOp::AssignDevice => "assign_device",
            CallerOp::SetBrokenPage { .. } => "set_broken_page_p2m",
            CallerOp::IdentityMap { .. } => "identity_map",
            CallerOp::TrackDirtyVram { .. } => "track_dirty_vram",
            CallerOp::GuestAccess { .. } => "guest_access",
        }
    }

    /// Who issues it: `guest`, `device model`, `toolstack` or `introspection`.
    pub fn issuer(&self) -> &'static str {
        match self {
            CallerOp::Populate { .. }
            | CallerOp::DecreaseReservation { .. }
            | CallerOp::PopulateRun { .. }
            | CallerOp::DecreaseRun { .. }
            | CallerOp::GuestAccess { .. } => "guest",
            CallerOp::SetMemType { .. } | CallerOp::TrackDirtyVram { .. } => "device model",
            CallerOp::MemoryMapping { .. }
            | CallerOp::AssignDevice
            | CallerOp::SetBrokenPage { .. }
            | CallerOp::IdentityMap { .. } => "toolstack",
            CallerOp::SetMemAccess { .. } => "introspection",
        }
    }

    /// The first gfn the op names (0 for `assign_device`).
    pub fn gfn(&self) -> u64 {
        match *self {
            CallerOp::Populate { gfn, .. }
            | CallerOp::DecreaseReservation { gfn, .. }
            | CallerOp::SetMemType { gfn, .. }
            | CallerOp::MemoryMapping { gfn, .. }
            | CallerOp::SetMemAccess { gfn, .. }
            | CallerOp::IdentityMap { gfn, .. }
            | CallerOp::TrackDirtyVram { gfn, .. }
            | CallerOp::GuestAccess { gfn, .. }
            | CallerOp::PopulateRun { gfn, .. }
            | CallerOp::DecreaseRun { gfn, .. }
            | CallerOp::SetBrokenPage { gfn } => gfn,
            CallerOp::AssignDevice => 0,
        }
    }

    /// Pages the op names from [`CallerOp::gfn`] on (0 for `assign_device`, which names
    /// the whole domain). Orders above 18 read as 2^18 (the callers refuse them).
    pub fn pages(&self) -> u64 {
        match *self {
            CallerOp::Populate { order, .. } | CallerOp::DecreaseReservation { order, .. } => {
                1 << order.min(18)
            }
            CallerOp::SetMemType { nr, .. }
            | CallerOp::MemoryMapping { nr, .. }
            | CallerOp::SetMemAccess { nr, .. }
            | CallerOp::IdentityMap { nr, .. }
            | CallerOp::PopulateRun { nr, .. }
            | CallerOp::DecreaseRun { nr, .. }
            | CallerOp::TrackDirtyVram { nr, .. } => nr as u64,
            CallerOp::SetBrokenPage { .. } | CallerOp::GuestAccess { .. } => 1,
            CallerOp::AssignDevice => 0,
        }
    }
}

impl fmt::Display for CallerOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.name();
        match *self {
            CallerOp::Populate { gfn, mfn, order } => {
                write!(f, "{n} gfn={gfn:#x} mfn={mfn:#x} order={order}")
            }
            CallerOp::DecreaseReservation { gfn, order } => {
                write!(f, "{n} gfn={gfn:#x} order={order}")
            }
            CallerOp::PopulateRun { gfn, mfn, nr } => {
                write!(f, "{n} gfn={gfn:#x} mfn={mfn:#x} order=0 nr={nr}")
            }
            CallerOp::DecreaseRun { gfn, nr } => write!(f, "{n} gfn={gfn:#x} order=0 nr={nr}"),
            CallerOp::SetMemType { gfn, nr, mem_type } => {
                write!(f, "{n} gfn={gfn:#x} nr={nr} {mem_type}")
            }
            CallerOp::MemoryMapping { gfn, mfn, nr, add } => write!(
                f,
                "{n} gfn={gfn:#x} mfn={mfn:#x} nr={nr} {}",
                if add { "add" } else { "remove" }
            ),
            CallerOp::SetMemAccess { gfn, nr, access } => {
                write!(f, "{n} gfn={gfn:#x} nr={nr} {access}")
            }
            CallerOp::AssignDevice => f.write_str(n),
            CallerOp::SetBrokenPage { gfn } => write!(f, "{n} gfn={gfn:#x}"),
            CallerOp::IdentityMap {
                gfn,
                nr,
                access,
                add,
            } => {
                if add {
                    write!(f, "{n} gfn={gfn:#x} nr={nr} {access} add")
                } else {
                    write!(f, "{n} gfn={gfn:#x} nr={nr} remove")
                }
            }
            CallerOp::TrackDirtyVram { gfn, nr } => write!(f, "{n} gfn={gfn:#x} nr={nr}"),
            CallerOp::GuestAccess { gfn, write } => {
                write!(
                    f,
                    "{n} gfn={gfn:#x} {}",
                    if write { "write" } else { "read" }
                )
            }
        }
    }
}

/// The extent loop of `XENMEM_populate_physmap` / `XENMEM_decrease_reservation` over
/// `nr` extents, `one(i)` doing extent `i`: pages done add up; the first error stops the
/// hypercall (4.6's populate never reports one).
pub fn run_extents(nr: u32, mut one: impl FnMut(u64) -> BatchOutcome) -> BatchOutcome {
    let mut done = 0;
    for i in 0..u64::from(nr) {
        let o = one(i);
        done += o.done;
        if o.rc.is_err() {
            return BatchOutcome { done, rc: o.rc };
        }
    }
    BatchOutcome { done, rc: Ok(()) }
}

/// A second vCPU's caller op inside an `add_to_physmap_range` batch: it runs once the
/// batch has moved `after` pages (or all it will move, if fewer) — the p2m lock is not
/// held between pages — and before the flush of the call that moved them, on another
/// CPU (so `iommu_dont_flush_iotlb`, a per-CPU flag, is clear for it).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Interleave {
    /// Pages the batch has moved when the second vCPU acts.
    pub after: u16,
    /// What the second vCPU does.
    pub op: CallerOp,
}

/// A batch with a second vCPU acting inside it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct InterleavedBatch {
    /// The batch.
    pub batch: AddToPhysmapRange,
    /// The second vCPU.
    pub second: Interleave,
}

impl fmt::Display for InterleavedBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} | after {}: {}",
            self.batch, self.second.after, self.second.op
        )
    }
}

/// What a batch with a second vCPU did: the batch's outcome and the second op's.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct InterleavedOutcome {
    /// The batch.
    pub batch: BatchOutcome,
    /// The second vCPU's op.
    pub second: BatchOutcome,
}

/// The argument checks of `XEN_DOMCTL_memory_mapping` (master `common/domctl.c:436-439`,
/// 4.6 `:1040-1043`), before anything else: `-EINVAL` when the frame range wraps or
/// reaches past `paddr_bits` (52 on the model's machine: frames below 2^40, the width of
/// the PTE frame field), or the gfn range wraps. `nr == 0` fails too (`mfn_end` is
/// `mfn - 1`).
pub fn memory_mapping_args_ok(gfn: u64, mfn: u64, nr: u64) -> bool {
    let mfn_end = mfn.wrapping_add(nr).wrapping_sub(1);
    let gfn_end = gfn.wrapping_add(nr).wrapping_sub(1);
    mfn_end >= mfn && (mfn | mfn_end) >> 40 == 0 && gfn_end >= gfn
}

/// `XEN_DOMCTL_memory_mapping` as both lines enter it: the argument checks of
/// [`memory_mapping_args_ok`] (`-EINVAL`, nothing done), then the line's own `map`.
pub fn domctl_memory_mapping(
    gfn: u64,
    mfn: u64,
    nr: u64,
    map: impl FnOnce() -> BatchOutcome,
) -> BatchOutcome {
    if memory_mapping_args_ok(gfn, mfn, nr) {
        map()
    } else {
        BatchOutcome {
            done: 0,
            rc: Err(crate::physmap::PhysmapError::Inval),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_mapping_args_follow_the_domctl_checks() {
        let top = (1u64 << 40) - 1;
        assert!(memory_mapping_args_ok(0, top, 1));
        assert!(memory_mapping_args_ok(0x1000, top - 255, 256));
        assert!(!memory_mapping_args_ok(0, top - 254, 256));
        assert!(!memory_mapping_args_ok(0, 0x100, 0));
        assert!(!memory_mapping_args_ok(u64::MAX, 0x100, 2));
        assert!(!memory_mapping_args_ok(0, u64::MAX, 2));
    }

    #[test]
    fn display_names_the_xen_entry_point() {
        let ops = [
            (
                CallerOp::Populate {
                    gfn: 0x200,
                    mfn: 0x100200,
                    order: 9,
                },
                "populate_physmap gfn=0x200 mfn=0x100200 order=9",
            ),
            (
                CallerOp::DecreaseReservation {
                    gfn: 0x201,
                    order: 0,
                },
                "decrease_reservation gfn=0x201 order=0",
            ),
            (
                CallerOp::SetMemType {
                    gfn: 0x10,
                    nr: 2,
                    mem_type: HvmMemType::RamRo,
                },
                "set_mem_type gfn=0x10 nr=2 ram_ro",
            ),
            (
                CallerOp::MemoryMapping {
                    gfn: 0x10,
                    mfn: 0xfe000,
                    nr: 1,
                    add: false,
                },
                "memory_mapping gfn=0x10 mfn=0xfe000 nr=1 remove",
            ),
            (
                CallerOp::SetMemAccess {
                    gfn: 0x10,
                    nr: 1,
                    access: P2mAccess::R,
                },
                "set_mem_access gfn=0x10 nr=1 r",
            ),
            (CallerOp::AssignDevice, "assign_device"),
        ];
        for (op, text) in ops {
            assert_eq!(op.to_string(), text);
        }
        for t in HvmMemType::ALL {
            assert_eq!(HvmMemType::from_name(t.name()), Some(t));
        }
        let b = InterleavedBatch {
            batch: AddToPhysmapRange {
                idx: 0x1000,
                gpfn: 0x2000,
                size: 1,
            },
            second: Interleave {
                after: 1,
                op: CallerOp::DecreaseReservation {
                    gfn: 0x2000,
                    order: 0,
                },
            },
        };
        assert_eq!(
            b.to_string(),
            "add_to_physmap_range idx=0x1000 gpfn=0x2000 size=1 | after 1: \
             decrease_reservation gfn=0x2000 order=0"
        );
        assert_eq!(CallerOp::AssignDevice.pages(), 0);
        assert_eq!(
            CallerOp::DecreaseReservation { gfn: 0, order: 40 }.pages(),
            1 << 18
        );
    }
}
