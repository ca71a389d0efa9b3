//! The scenario language: a domain configuration plus a short list of p2m operations.
//!
//! A [`Scenario`] has three faces:
//! - [`Display`](fmt::Display): a Xen-trace look, one line per operation
//!   (`set_entry gfn=0x200 mfn=0x1a00 order=9 ram_ro rwx`);
//! - the text trace ([`trace`]): that display behind a version comment, parsed back by
//!   [`parse_trace`], for reproducers and hand-written seeds;
//! - the byte format ([`bytes`]): what the fuzzer mutates, read by [`decode`] and written by
//!   [`encode`]; see that module for the layout and for which scenarios are *canonical*
//!   (exactly representable in bytes).

use std::fmt;

use p2m_core::callers::{CallerOp, InterleavedBatch};
use p2m_core::physmap::AddToPhysmapRange;
use p2m_core::{Config, P2mAccess, P2mType};

pub mod bytes;
pub mod trace;

pub use bytes::{
    decode, decode_with_mode, encode, is_canonical, try_encode, EncodeError, HEADER_SIZE, OP_SIZE,
    RELATIVE_MARKER,
};
pub use trace::{parse_trace, to_trace, TraceError, TRACE_MAGIC};

/// Guest frames the fuzzer aims at by default: 4 GiB, i.e. four 1 GiB regions.
pub const GFN_WINDOW: u64 = 1 << 20;
/// First machine frame of the pool that plain (kind 0) frames are drawn from.
pub const MFN_POOL_BASE: u64 = 0x100000;
/// Number of machine frames in that pool.
pub const MFN_POOL_SIZE: u64 = 1 << 20;
/// Most pages one `add_to_physmap_range` op moves (what one byte of the op encodes).
pub const MAX_BATCH_SIZE: u16 = 255;
/// Most operations one scenario holds (the decoder drops the rest).
pub const MAX_OPS: usize = 64;
/// Exclusive upper bound of a literal machine frame (the 40-bit frame field of a PTE).
pub const MFN_LITERAL_LIMIT: u64 = 1 << 40;

/// The p2m table levels a [`MfnSel::TableAt`] selector may name (1 holds 4 KiB entries).
pub const TABLE_LEVELS: std::ops::RangeInclusive<u8> = 1..=3;

/// Which frame an op maps.
///
/// The selectors other than `Frame` and `Invalid` are resolved by the runner against the
/// model's state just before the op runs ([`crate::runner::resolve_mfn`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum MfnSel {
    /// A literal machine frame number (below [`MFN_LITERAL_LIMIT`] in a canonical scenario).
    Frame(u64),
    /// Xen's `INVALID_MFN`.
    Invalid,
    /// The k-th page-table frame ever allocated (mod the count), resolved by the runner.
    TableFrame(u16),
    /// `tbl:L`: the p2m table of level L ([`TABLE_LEVELS`]) on the walk to the op's gfn
    /// now (`INVALID_MFN` when an empty or superpage entry ends the walk above it).
    TableAt(u8),
    /// `cur`: the frame the p2m maps at the op's gfn now, as `get_entry` reports it
    /// (`INVALID_MFN` when nothing is mapped there).
    Current,
}

impl MfnSel {
    /// True for the selectors the runner resolves from the model's state (`ptf:`, `tbl:`, `cur`).
    pub fn is_selector(self) -> bool {
        matches!(
            self,
            MfnSel::TableFrame(_) | MfnSel::TableAt(_) | MfnSel::Current
        )
    }
}

impl fmt::Display for MfnSel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MfnSel::Frame(x) => write!(f, "{x:#x}"),
            MfnSel::Invalid => f.write_str("INVALID_MFN"),
            MfnSel::TableFrame(k) => write!(f, "ptf:{k}"),
            MfnSel::TableAt(l) => write!(f, "tbl:{l}"),
            MfnSel::Current => f.write_str("cur"),
        }
    }
}

/// One `p2m_set_entry(gfn, mfn, order, p2mt, access)` call.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct SetEntryOp {
    /// First guest frame of the range.
    pub gfn: u64,
    /// Frame to map at `gfn`.
    pub mfn: MfnSel,
    /// Page order (0, 9 and 18 are valid; anything else must yield `-EINVAL`).
    pub order: u32,
    /// p2m type of the new entry.
    pub p2mt: P2mType,
    /// p2m access of the new entry.
    pub access: P2mAccess,
}

impl fmt::Display for SetEntryOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "set_entry gfn={:#x} mfn={} order={} {} {}",
            self.gfn, self.mfn, self.order, self.p2mt, self.access
        )
    }
}

/// One operation of a scenario.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Op {
    /// `p2m->set_entry(...)`: the internal API, any frame, order, type and access.
    SetEntry(SetEntryOp),
    /// `XENMEM_add_to_physmap` with `XENMAPSPACE_gmfn_range`: a guest's own hypercall.
    AddToPhysmap(AddToPhysmapRange),
    /// A Xen caller of the host p2m (guest, device model, toolstack, introspection).
    Call(CallerOp),
    /// The batch with a second vCPU's caller op inside it (see [`InterleavedBatch`]).
    Interleaved(InterleavedBatch),
    /// Fault injection: the `nth` table allocation (p2m or IOMMU, 1 = the first) of the
    /// next op fails, as Xen's allocators do when the paging pool or the heap runs out;
    /// that op then takes Xen's own error path.
    FailAlloc {
        /// Which allocation of the next op fails (1-based).
        nth: u32,
    },
}

/// Largest `nth` of [`Op::FailAlloc`] the byte format holds.
pub const MAX_FAIL_NTH: u32 = 256;

impl Op {
    /// The `set_entry` op, if this is one.
    pub fn as_set_entry(&self) -> Option<&SetEntryOp> {
        match self {
            Op::SetEntry(e) => Some(e),
            _ => None,
        }
    }

    /// The frame selector of the op (`Invalid` for an op that takes none).
    pub fn mfn_sel(&self) -> MfnSel {
        match self {
            Op::SetEntry(e) => e.mfn,
            _ => MfnSel::Invalid,
        }
    }

    /// The first gfn the op names.
    pub fn gfn(&self) -> u64 {
        match self {
            Op::SetEntry(e) => e.gfn,
            Op::AddToPhysmap(b) => b.idx,
            Op::Call(c) => c.gfn(),
            Op::Interleaved(i) => i.batch.idx,
            Op::FailAlloc { .. } => 0,
        }
    }

    /// True for an op some Xen caller issues as written (everything but the raw
    /// `set_entry`, the internal API); an injected allocation failure is the host's
    /// memory running out, which any caller can meet.
    pub fn is_caller_op(&self) -> bool {
        !matches!(self, Op::SetEntry(_))
    }
}

impl Scenario {
    /// The scenario with `pci=hotplug` set exactly when an op assigns the device (the
    /// byte format derives it so; traces must spell it).
    pub fn with_hotplug_derived(mut self) -> Scenario {
        self.config.pci_hotplug = bytes::has_assign_device(&self.ops);
        self
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::SetEntry(s) => s.fmt(f),
            Op::AddToPhysmap(b) => b.fmt(f),
            Op::Call(c) => c.fmt(f),
            Op::Interleaved(i) => i.fmt(f),
            Op::FailAlloc { nth } => write!(f, "fail_alloc nth={nth}"),
        }
    }
}

/// A configuration, an oracle flag and the operations to run on a fresh domain.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Scenario {
    /// Domain configuration (normalized in every scenario the parsers return).
    pub config: Config,
    /// Tolerate under-permissive IOMMU views (Xen documents them as intended here).
    pub allow_under_permissive: bool,
    /// The operations, in order.
    pub ops: Vec<Op>,
}

impl Scenario {
    /// The header line: `config mode=npt vendor=amd share=on[ allow-under-permissive]`.
    pub fn config_line(&self) -> String {
        let mut s = format!("config {}", self.config);
        if self.allow_under_permissive {
            s.push_str(" allow-under-permissive");
        }
        s
    }
}

/// The config line, then one op per line (no trailing newline).
impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.config_line())?;
        for op in &self.ops {
            write!(f, "\n{op}")?;
        }
        Ok(())
    }
}

/// Reads like the text trace, so libFuzzer's `Debug` dump of a crashing input is a trace.
impl fmt::Debug for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use p2m_core::{Mode, Vendor};

    fn op(gfn: u64, mfn: MfnSel, order: u32, p2mt: P2mType, access: P2mAccess) -> Op {
        Op::SetEntry(SetEntryOp {
            gfn,
            mfn,
            order,
            p2mt,
            access,
        })
    }

    #[test]
    fn op_display_matches_trace_look() {
        let o = op(
            0x200,
            MfnSel::Frame(0x1a00),
            9,
            P2mType::RamRo,
            P2mAccess::Rwx,
        );
        assert_eq!(
            o.to_string(),
            "set_entry gfn=0x200 mfn=0x1a00 order=9 ram_ro rwx"
        );
        let o = op(0, MfnSel::Invalid, 18, P2mType::Invalid, P2mAccess::N);
        assert_eq!(
            o.to_string(),
            "set_entry gfn=0x0 mfn=INVALID_MFN order=18 invalid n"
        );
        let o = op(
            0x1234,
            MfnSel::TableFrame(3),
            0,
            P2mType::MmioDirect,
            P2mAccess::Rx2rw,
        );
        assert_eq!(
            o.to_string(),
            "set_entry gfn=0x1234 mfn=ptf:3 order=0 mmio_direct rx2rw"
        );
        let o = op(0x200, MfnSel::TableAt(1), 9, P2mType::RamRw, P2mAccess::Rwx);
        assert_eq!(
            o.to_string(),
            "set_entry gfn=0x200 mfn=tbl:1 order=9 ram_rw rwx"
        );
        let o = op(0x201, MfnSel::Current, 0, P2mType::RamRo, P2mAccess::Rwx);
        assert_eq!(
            o.to_string(),
            "set_entry gfn=0x201 mfn=cur order=0 ram_ro rwx"
        );
        assert!(MfnSel::Current.is_selector() && MfnSel::TableAt(2).is_selector());
        assert!(MfnSel::TableFrame(0).is_selector());
        assert!(!MfnSel::Invalid.is_selector() && !MfnSel::Frame(0).is_selector());
    }

    #[test]
    fn scenario_display_matches_trace_look() {
        let mut s = Scenario {
            config: Config::new(Mode::Npt, Vendor::Amd, true),
            allow_under_permissive: false,
            ops: vec![
                op(
                    0x200,
                    MfnSel::Frame(0x100200),
                    0,
                    P2mType::RamRw,
                    P2mAccess::Rwx,
                ),
                op(0x200, MfnSel::Invalid, 9, P2mType::Invalid, P2mAccess::Rwx),
            ],
        };
        assert_eq!(
            s.to_string(),
            "config mode=npt vendor=amd share=on\n\
             set_entry gfn=0x200 mfn=0x100200 order=0 ram_rw rwx\n\
             set_entry gfn=0x200 mfn=INVALID_MFN order=9 invalid rwx"
        );
        s.allow_under_permissive = true;
        s.config = Config::new(Mode::Shadow, Vendor::Vtd, false);
        assert_eq!(
            s.config_line(),
            "config mode=shadow vendor=vtd share=off allow-under-permissive"
        );
    }
}
