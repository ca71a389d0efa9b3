//! The byte format: the fuzzer's input, decoded into a [`Scenario`].
//!
//! Every byte string of at least [`HEADER_SIZE`] + [`OP_SIZE`] bytes decodes; the decoder
//! biases towards legal, colliding operations (gfns inside [`GFN_WINDOW`], frames from the
//! pool, orders aligned) while keeping an escape for every illegal input Xen must refuse.
//!
//! # Layout
//!
//! Header, 1 byte:
//! - bits 0-1: mode, `value % 3` (0 `ept`, 1 `npt`, 2 `shadow`; 3 reads as `ept`);
//! - bit 2: vendor (0 `vtd`, 1 `amd`); bit 3: `iommu_hap_pt_share`;
//! - bit 4: `allow_under_permissive`;
//! - bits 5-6: IOMMU page sizes (0 and 3: 4 KiB, 2 MiB and 1 GiB; 1: up to 2 MiB; 2: 4 KiB
//!   only — `iommu=no-superpages`); only the master line reads them; bit 7: ignored.
//!
//! `pci=hotplug` is not in the header: a scenario with an `assign_device` op hot-plugs
//! its device there (and one without has it from creation).
//!
//! The hardware semantics are not in the bytes: a decoded scenario has the conservative
//! ones (targets and `hunt` may impose others with `P2M_HW` / `--hw`).
//!
//! The config is then [`Config::normalized`] (EPT forces VT-d, NPT forces AMD-Vi).
//!
//! Then ops of [`OP_SIZE`] = 12 bytes each; a trailing partial op is ignored and ops past
//! [`MAX_OPS`] are dropped:
//! - `b0` bits 0-1: order selector: 0 → order 0, 1 → order 9, 2 → order 18, 3 → raw order
//!   given in bits 2-7 (0..=63, no alignment applied).
//!   For selectors 0-2, bit 2 is "keep misaligned": when clear the decoder aligns the gfn and
//!   a `Frame` mfn down to the order; bits 3-7 are ignored.
//! - `b1..=b3`: 24-bit little-endian gfn field `g`.
//! - `b4` bits 0-1: mfn kind (`b4 % 4`); bit 2: gfn escape; bits 3-7 ignored.
//!   gfn = `g & (GFN_WINDOW - 1)` without the escape, `g << 16` with it (so multiples of
//!   0x10000 up to 2^40 - 0x10000 reach the out-of-range gfns Xen must refuse).
//! - `b5..=b9`: 40-bit little-endian value `v`. Mfn by kind:
//!   0 → `Frame(MFN_POOL_BASE + (v & (MFN_POOL_SIZE - 1)))`, 1 → `Frame(v)`,
//!   2 → `Invalid`, 3 → a selector resolved when the op runs:
//!   - `b9` (the top byte of `v`) equal to [`RELATIVE_MARKER`] (0xf0): a relative
//!     selector chosen by `b5 & 3`: 0 → `Current` (`cur`), 1..=3 → `TableAt(b5 & 3)`
//!     (`tbl:1` … `tbl:3`); `b6..=b8` and `b5` bits 2-7 are ignored;
//!   - any other `b9`: `TableFrame(v as u16)` (`ptf:K`, the low 16 bits; `b7..=b9` ignored).
//!
//!   Before the relative selectors existed `b9` was ignored under kind 3; the marker is
//!   a byte value that no kind-3 op of the committed seed corpora carries there (the
//!   test `committed_corpora_decode_without_relative_selectors` checks it), so every
//!   committed corpus file decodes exactly as before. The encoder writes `b9 = 0` for
//!   `ptf:K`, so a `ptf:` op never reads back as a relative selector.
//! - `b10`: p2m type, `value % 16` (Xen's numbering); `b11`: access, `value % 10`.
//!
//! An op whose `b10` is [`BATCH_MARKER`] (0xb7) is instead an `add_to_physmap_range`
//! (`XENMAPSPACE_gmfn_range`): `idx` = the 24-bit field `b1..=b3` masked to [`GFN_WINDOW`];
//! `size` = `b8`; `gpfn` = `idx` plus the signed 16-bit `b5..=b6` (wrapping inside the
//! window) when `b4` bit 2 is set, else the 24-bit `b5..=b7` masked to the window; `b0`,
//! the rest of `b4`, `b9` and `b11` are ignored. No committed corpus file carries 0xb7 in
//! `b10` (the test `committed_corpora_decode_without_batch_ops` checks it), so they all
//! decode as before. The encoder writes the absolute form.
//!
//! An op whose `b10` is [`CALLER_MARKER`] (0xa7) is a caller op ([`CallerOp`]) of kind
//! `b11 % 7` — 0 `populate_physmap`, 1 `decrease_reservation`, 2 `set_mem_type`,
//! 3 `memory_mapping`, 4 `set_mem_access`, 5 `assign_device`, 6 `set_broken_page_p2m`
//! — with the gfn in `b1..=b3`
//! (masked to the window) and:
//! - `populate_physmap` / `decrease_reservation`: the order from `b0` bits 0-1: 0 → 0 and
//!   1 → 9 (gfn and frame aligned unless bit 2 is set), 2 → 18 (aligned) for a populate
//!   under HAP, else 12; 3 → `(b0 >> 2) % 13`, not aligned. Larger or misaligned extents
//!   (and a 1 GiB populate in shadow mode, which 4.6 writes as 2^18 4 KiB entries) cost
//!   Xen — and the model — one `set_entry` per 4 KiB page: only text traces hold them.
//!   `populate_physmap`'s frame from `b4 & 3` and `b5..=b9` as for `set_entry` kinds 0
//!   and 1 (any other kind reads as 0);
//! - `set_mem_type`, `memory_mapping`, `set_mem_access`: `nr = 1 + (b0 & 15)` when `b0`
//!   bit 7 is clear, else `32 << min(b0 & 7, 4)` (32 … 512) — see [`call_pages`];
//!   the memory type `b5 % 4`, the access `b5 % 10`; `memory_mapping`'s frame is
//!   `MAX_PAGE + (v & 0xffffff)` (device MMIO, `mmio_ro_ranges` included) when `b4 & 1`
//!   is clear, the literal `v` when set, and `b4 bit 4` set means remove.
//! - `b11` from 0xc0 up picks the later kinds instead: 0xc0-0xcf a run of `nr` one-page
//!   extents, `populate_physmap` (frame as a populate's) or, with `b4` bit 4,
//!   `decrease_reservation`; 0xd0-0xd7 `track_dirty_vram`
//!   (`nr` as above, or 0 — stop tracking — when `b4` bit 4 is set), 0xd8-0xdf
//!   `guest_access` (a read when `b4` bit 4 is set, else a write), 0xe0 and up
//!   `identity_map` (the access `b5 % 3` of `rw`, `r`, `w`; `b4` bit 4: remove).
//!
//! An `add_to_physmap_range` with `b4` bit 3 set whose next record is a caller op is an
//! interleaved batch: that caller op runs as a second vCPU after `b9` pages.
//!
//! An op whose `b10` is [`FAULT_MARKER`] (0xa6), in either reading, is a fault injection
//! `fail_alloc nth=b0+1`: the `b0+1`-th table allocation of the next op fails.
//!
//! No committed seed corpus file carries 0xa7 or 0xa6 in `b10` or a batch with the
//! interleave bit (the test `committed_corpora_decode_without_batch_ops` checks that
//! every op they decode to is a `set_entry`).
//!
//! # Canonical scenarios
//!
//! A scenario is *canonical* ([`is_canonical`]) when
//! - its config equals `config.normalized()`,
//! - it has 1 to [`MAX_OPS`] ops, every `add_to_physmap_range` has `idx` and `gpfn` below
//!   [`GFN_WINDOW`] and a size of at most [`MAX_BATCH_SIZE`], and every `set_entry` has
//! - a gfn below [`GFN_WINDOW`], or a multiple of 0x10000 below 2^40,
//! - an order of at most 63,
//! - a `Frame` mfn below 2^40 ([`MFN_LITERAL_LIMIT`]) and a `TableAt` level in
//!   [`TABLE_LEVELS`] (any `Invalid` / `TableFrame` / `Current` is fine).
//!
//! `decode(&encode(s)) == Some(s)` for every canonical `s`. [`super::parse_trace`] only
//! returns canonical scenarios, except that it keeps orders above 63 (`encode` saturates them
//! to 63: Xen refuses both alike).

use arbitrary::{Arbitrary, Unstructured};
use p2m_core::{Config, HwSemantics, Mode, P2mAccess, P2mType, PageSizes, Vendor};

use p2m_core::callers::{
    CallerOp, HvmMemType, Interleave, InterleavedBatch, IDENTITY_ACCESSES, MAX_CALL_PAGES,
};
use p2m_core::physmap::AddToPhysmapRange;
use p2m_core::MAX_PAGE;

use super::{
    MfnSel, Op, Scenario, SetEntryOp, GFN_WINDOW, MAX_BATCH_SIZE, MAX_OPS, MFN_LITERAL_LIMIT,
    MFN_POOL_BASE, MFN_POOL_SIZE, TABLE_LEVELS,
};

/// Size of the header in bytes.
pub const HEADER_SIZE: usize = 1;
/// Size of one encoded op in bytes.
pub const OP_SIZE: usize = 12;
/// Shift applied to the 24-bit gfn field when the gfn escape bit is set.
pub const GFN_ESCAPE_SHIFT: u32 = 16;
/// Value of `b9` that turns mfn kind 3 into a relative selector (`cur` / `tbl:L`).
pub const RELATIVE_MARKER: u8 = 0xf0;
/// Value of `b10` that makes the op an `add_to_physmap_range`.
pub const BATCH_MARKER: u8 = 0xb7;
/// Value of `b10` that makes the op a caller op.
pub const CALLER_MARKER: u8 = 0xa7;
/// Value of `b10` that makes the op a fault injection ([`Op::FailAlloc`]).
pub const FAULT_MARKER: u8 = 0xa6;
/// `b4` bit of a batch whose next record is its second vCPU's caller op.
const B4_INTERLEAVE: u8 = 1 << 3;
/// `b0` bit selecting a caller op's larger page counts.
const B0_NR_LARGE: u8 = 1 << 7;
/// `b4` bit making `memory_mapping` a remove.
const B4_REMOVE: u8 = 1 << 4;
/// Frames of device MMIO a `memory_mapping` reaches without the literal bit.
const MMIO_WINDOW: u64 = 1 << 24;

const HDR_AMD: u8 = 1 << 2;
const HDR_SHARE: u8 = 1 << 3;
const HDR_ALLOW: u8 = 1 << 4;
const HDR_SIZES_SHIFT: u8 = 5;
const B0_KEEP_MISALIGNED: u8 = 1 << 2;
const B4_GFN_ESCAPE: u8 = 1 << 2;
const MAX_RAW_ORDER: u32 = 63;
const ORDERS: [u32; 3] = [0, 9, 18];

/// Why [`try_encode`] refused a scenario.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EncodeError {
    /// Index of the offending op, `None` for the config or the op count.
    pub op: Option<usize>,
    /// What cannot be represented, on one line.
    pub msg: String,
}

impl std::fmt::Display for EncodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.op {
            Some(i) => write!(f, "op {i}: {}", self.msg),
            None => f.write_str(&self.msg),
        }
    }
}

impl std::error::Error for EncodeError {}

/// Whether `ops` assign the device (then the scenario is `pci=hotplug`).
pub fn has_assign_device(ops: &[Op]) -> bool {
    ops.iter().any(|op| match op {
        Op::Call(c) => *c == CallerOp::AssignDevice,
        Op::Interleaved(ib) => ib.second.op == CallerOp::AssignDevice,
        _ => false,
    })
}

/// True when `gfn` has the escaped form: a multiple of 2^16 below 2^40.
pub(super) fn gfn_escape_ok(gfn: u64) -> bool {
    gfn & ((1 << GFN_ESCAPE_SHIFT) - 1) == 0 && gfn >> GFN_ESCAPE_SHIFT < 1 << 24
}

/// Why `s` is not canonical (see the module docs), or `Ok` when it is.
fn check(s: &Scenario) -> Result<(), EncodeError> {
    let whole = |msg: String| EncodeError { op: None, msg };
    if s.config != s.config.normalized() {
        return Err(whole(format!("config `{}` is not normalized", s.config)));
    }
    if s.config.hw != HwSemantics::CONSERVATIVE {
        return Err(whole(format!(
            "config `{}`: hardware semantics are not in the bytes",
            s.config
        )));
    }
    if s.config.pci_hotplug != has_assign_device(&s.ops) {
        return Err(whole(format!(
            "config `{}`: pci=hotplug goes with an assign_device op and only with one",
            s.config
        )));
    }
    if s.ops.is_empty() || s.ops.len() > MAX_OPS {
        return Err(whole(format!(
            "{} ops (1..={MAX_OPS} allowed)",
            s.ops.len()
        )));
    }
    let records: usize = s.ops.iter().map(records_of).sum();
    if records > MAX_OPS {
        return Err(whole(format!(
            "{records} op records (an interleaved batch takes two; at most {MAX_OPS})"
        )));
    }
    for (i, op) in s.ops.iter().enumerate() {
        let bad = |msg: String| EncodeError { op: Some(i), msg };
        let check_batch = |b: &AddToPhysmapRange| {
            if b.idx >= GFN_WINDOW || b.gpfn >= GFN_WINDOW {
                return Err(bad(format!("{b}: gfns must be below {GFN_WINDOW:#x}")));
            }
            if b.size > MAX_BATCH_SIZE {
                return Err(bad(format!("{b}: size above {MAX_BATCH_SIZE}")));
            }
            Ok(())
        };
        let e = match op {
            Op::SetEntry(e) => e,
            Op::AddToPhysmap(b) => {
                check_batch(b)?;
                continue;
            }
            Op::Call(c) => {
                check_call(c, s.config.mode).map_err(bad)?;
                continue;
            }
            Op::Interleaved(ib) => {
                check_batch(&ib.batch)?;
                if ib.second.after > 255 {
                    return Err(bad(format!("{ib}: `after` above 255")));
                }
                check_call(&ib.second.op, s.config.mode).map_err(bad)?;
                continue;
            }
            Op::FailAlloc { nth } => {
                if !(1..=super::MAX_FAIL_NTH).contains(nth) {
                    return Err(bad(format!(
                        "{op}: nth outside 1..={}",
                        super::MAX_FAIL_NTH
                    )));
                }
                continue;
            }
        };
        if e.gfn >= GFN_WINDOW && !gfn_escape_ok(e.gfn) {
            return Err(bad(format!("gfn {:#x} not representable", e.gfn)));
        }
        if e.order > MAX_RAW_ORDER {
            return Err(bad(format!("order {} above {MAX_RAW_ORDER}", e.order)));
        }
        match e.mfn {
            MfnSel::Frame(x) if x >= MFN_LITERAL_LIMIT => {
                return Err(bad(format!("mfn {x:#x} does not fit 40 bits")));
            }
            MfnSel::TableAt(l) if !TABLE_LEVELS.contains(&l) => {
                return Err(bad(format!("table level {l} outside 1..=3")));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Whether `nr` is a page count the byte format holds: 1..=16, 32, 64, 128, 256, 512
/// (the small counts a device model retypes, and whole tables up to 2 MiB).
pub fn call_pages(nr: u32) -> bool {
    (1..=16).contains(&nr) || (nr.is_power_of_two() && (32..=MAX_CALL_PAGES).contains(&nr))
}

/// Largest caller-op order the bytes hold besides an aligned 1 GiB populate under HAP.
pub const MAX_CALL_ORDER: u32 = 12;

/// `(order, align)` of a populate (`populate`) or decrease order byte in `mode`.
fn call_order_of(b0: u8, populate: bool, mode: Mode) -> (u32, bool) {
    let keep = b0 & B0_KEEP_MISALIGNED != 0;
    match b0 & 3 {
        0 => (0, !keep),
        1 => (9, !keep),
        2 if populate && mode != Mode::Shadow => (18, true),
        2 => (MAX_CALL_ORDER, !keep),
        _ => (u32::from(b0 >> 2) % (MAX_CALL_ORDER + 1), false),
    }
}

/// The order byte of a canonical populate or decrease (see [`call_order_of`]).
fn call_order_byte(order: u32, misaligned: bool) -> u8 {
    match order {
        0 | 9 => (order / 9) as u8 | if misaligned { B0_KEEP_MISALIGNED } else { 0 },
        18 => 2,
        o => 3 | (o.min(MAX_CALL_ORDER) as u8) << 2,
    }
}

/// Byte records an op takes (an interleaved batch: two).
fn records_of(op: &Op) -> usize {
    match op {
        Op::Interleaved(_) => 2,
        _ => 1,
    }
}

/// Why a caller op is not representable in bytes, if it is not.
pub(super) fn check_call(c: &CallerOp, mode: Mode) -> Result<(), String> {
    if c.gfn() >= GFN_WINDOW {
        return Err(format!("{c}: gfn must be below {GFN_WINDOW:#x}"));
    }
    match *c {
        CallerOp::Populate { gfn, mfn, order } => {
            let huge = order == 18 && mode != Mode::Shadow && (gfn | mfn) & ((1 << 18) - 1) == 0;
            if order > MAX_CALL_ORDER && !huge {
                return Err(format!(
                    "{c}: the bytes hold orders up to {MAX_CALL_ORDER}, and 18 aligned under HAP"
                ));
            }
            if mfn >= MFN_LITERAL_LIMIT {
                return Err(format!("{c}: mfn does not fit 40 bits"));
            }
        }
        CallerOp::DecreaseReservation { order, .. } if order > MAX_CALL_ORDER => {
            return Err(format!("{c}: the bytes hold orders up to {MAX_CALL_ORDER}"));
        }
        CallerOp::IdentityMap { access, add, .. }
            if add != IDENTITY_ACCESSES.contains(&access) || (!add && access != P2mAccess::X) =>
        {
            return Err(format!(
                "{c}: an identity map adds with rw, r or w and removes with x"
            ));
        }
        CallerOp::SetMemType { nr, .. }
        | CallerOp::SetMemAccess { nr, .. }
        | CallerOp::MemoryMapping { nr, .. }
        | CallerOp::IdentityMap { nr, .. }
        | CallerOp::PopulateRun { nr, .. }
        | CallerOp::DecreaseRun { nr, .. }
            if !call_pages(nr) =>
        {
            return Err(format!("{c}: nr not one of 1..=16, 32, 64, 128, 256, 512"));
        }
        CallerOp::MemoryMapping { mfn, .. } | CallerOp::PopulateRun { mfn, .. }
            if mfn >= MFN_LITERAL_LIMIT =>
        {
            return Err(format!("{c}: mfn does not fit 40 bits"));
        }
        CallerOp::TrackDirtyVram { nr, .. } if nr != 0 && !call_pages(nr) => {
            return Err(format!(
                "{c}: nr not one of 0 (stop), 1..=16, 32, 64, 128, 256, 512"
            ));
        }
        _ => {}
    }
    Ok(())
}

/// True when `decode(&encode(s)) == Some(s)` is guaranteed (see the module docs).
pub fn is_canonical(s: &Scenario) -> bool {
    check(s).is_ok()
}

/// [`encode`] for canonical scenarios only; says what is not representable otherwise.
pub fn try_encode(s: &Scenario) -> Result<Vec<u8>, EncodeError> {
    check(s)?;
    Ok(encode(s))
}

/// The bytes that [`decode`] reads back as `s`, when `s` is canonical.
///
/// Non-canonical input is encoded lossily, never panicking: the config as
/// [`Config::normalized`] does, ops past [`MAX_OPS`] dropped (an empty op list gives a
/// header-only string, which `decode` refuses), orders above 63 saturated to 63,
/// unrepresentable gfns rounded down to a multiple of 0x10000 (saturated to the largest
/// escaped gfn from 2^40 up), `Frame` mfns truncated to 40 bits, `TableAt` levels clamped
/// to 1..=3.
pub fn encode(s: &Scenario) -> Vec<u8> {
    let c = s.config.normalized();
    let mut out = Vec::with_capacity(HEADER_SIZE + OP_SIZE * s.ops.len().min(MAX_OPS));
    let mut h = c.mode as u8;
    if c.vendor == Vendor::Amd {
        h |= HDR_AMD;
    }
    if c.iommu_hap_pt_share {
        h |= HDR_SHARE;
    }
    if s.allow_under_permissive {
        h |= HDR_ALLOW;
    }

    h |= match c.page_sizes {
        PageSizes::Up1g => 0,
        PageSizes::Up2m => 1,
        PageSizes::Only4k => 2,
    } << HDR_SIZES_SHIFT;
    out.push(h);
    let mut records = 0;
    for op in s.ops.iter() {
        records += records_of(op);
        if records > MAX_OPS {
            break;
        }
        match op {
            Op::SetEntry(e) => out.extend_from_slice(&encode_set_entry(e)),
            Op::AddToPhysmap(b) => out.extend_from_slice(&encode_batch(b)),
            Op::Call(c) => out.extend_from_slice(&encode_call(c, c.gfn())),
            Op::Interleaved(ib) => {
                let mut b = encode_batch(&ib.batch);
                b[4] |= B4_INTERLEAVE;
                b[9] = ib.second.after.min(255) as u8;
                out.extend_from_slice(&b);
                out.extend_from_slice(&encode_call(&ib.second.op, ib.second.op.gfn()));
            }
            Op::FailAlloc { nth } => {
                let mut b = [0u8; OP_SIZE];
                b[0] = (nth.clamp(&1, &super::MAX_FAIL_NTH) - 1) as u8;
                b[10] = FAULT_MARKER;
                out.extend_from_slice(&b);
            }
        }
    }
    out
}

/// The order byte `b0` of an op with an order and a first frame (`None`: no frame).
fn order_byte(order: u32, gfn: u64, frame: Option<u64>) -> u8 {
    match ORDERS.iter().position(|&o| o == order) {
        Some(sel) => {
            let mask = (1u64 << order) - 1;
            let misaligned = gfn & mask != 0 || frame.is_some_and(|x| x & mask != 0);
            sel as u8 | if misaligned { B0_KEEP_MISALIGNED } else { 0 }
        }
        None => 3 | (order.min(MAX_RAW_ORDER) as u8) << 2,
    }
}

/// `(order, align)` from an order byte.
fn order_of(b0: u8) -> (u32, bool) {
    let sel = b0 & 3;
    if sel < 3 {
        (ORDERS[sel as usize], b0 & B0_KEEP_MISALIGNED == 0)
    } else {
        (u32::from(b0 >> 2), false)
    }
}

fn encode_call(c: &CallerOp, _gfn: u64) -> [u8; OP_SIZE] {
    let mut o = [0u8; OP_SIZE];
    o[10] = CALLER_MARKER;
    o[1..4].copy_from_slice(&(c.gfn() & (GFN_WINDOW - 1)).to_le_bytes()[..3]);
    let nr_bytes = |o: &mut [u8; OP_SIZE], nr: u32| {
        o[0] = if nr <= 16 {
            (nr.max(1) - 1) as u8
        } else {
            let k = (nr.min(MAX_CALL_PAGES) / 32).max(1).ilog2().min(4) as u8;
            B0_NR_LARGE | k
        };
    };
    match *c {
        CallerOp::Populate { gfn, mfn, order } => {
            o[11] = 0;
            let mask = (1u64 << order.min(63)) - 1;
            o[0] = call_order_byte(order, (gfn | mfn) & mask != 0);
            call_frame_bytes(&mut o, mfn);
        }
        CallerOp::DecreaseReservation { gfn, order } => {
            o[11] = 1;
            let mask = (1u64 << order.min(63)) - 1;
            o[0] = call_order_byte(order, gfn & mask != 0);
        }
        CallerOp::SetMemType { nr, mem_type, .. } => {
            o[11] = 2;
            nr_bytes(&mut o, nr);
            o[5] = HvmMemType::ALL
                .iter()
                .position(|&t| t == mem_type)
                .unwrap_or(0) as u8;
        }
        CallerOp::MemoryMapping { mfn, nr, add, .. } => {
            o[11] = 3;
            nr_bytes(&mut o, nr);
            let mfn = mfn & (MFN_LITERAL_LIMIT - 1);
            let v = if (MAX_PAGE..MAX_PAGE + MMIO_WINDOW).contains(&mfn) {
                mfn - MAX_PAGE
            } else {
                o[4] |= 1;
                mfn
            };
            o[5..10].copy_from_slice(&v.to_le_bytes()[..5]);
            if !add {
                o[4] |= B4_REMOVE;
            }
        }
        CallerOp::SetMemAccess { nr, access, .. } => {
            o[11] = 4;
            nr_bytes(&mut o, nr);
            o[5] = access as u8;
        }
        CallerOp::AssignDevice => o[11] = 5,
        CallerOp::SetBrokenPage { .. } => o[11] = 6,
        CallerOp::PopulateRun { mfn, nr, .. } => {
            o[11] = RUN_KIND;
            nr_bytes(&mut o, nr);
            call_frame_bytes(&mut o, mfn);
        }
        CallerOp::DecreaseRun { nr, .. } => {
            o[11] = RUN_KIND;
            nr_bytes(&mut o, nr);
            o[4] |= B4_REMOVE;
        }
        CallerOp::TrackDirtyVram { nr, .. } => {
            o[11] = TRACK_KIND;
            nr_bytes(&mut o, nr);
            if nr == 0 {
                o[4] |= B4_REMOVE;
            }
        }
        CallerOp::GuestAccess { write, .. } => {
            o[11] = ACCESS_KIND;
            if !write {
                o[4] |= B4_REMOVE;
            }
        }
        CallerOp::IdentityMap {
            nr, access, add, ..
        } => {
            o[11] = IDENTITY_KIND;
            nr_bytes(&mut o, nr);
            o[5] = IDENTITY_ACCESSES
                .iter()
                .position(|&a| a == access)
                .unwrap_or(0) as u8;
            if !add {
                o[4] |= B4_REMOVE;
            }
        }
    }
    o
}

/// `b11` of an `identity_map` record: any value from here up (older caller records,
/// `b11 % 7`, never carry one: the encoder wrote 0..=6 and no committed corpus holds a
/// caller record).
const IDENTITY_KIND: u8 = 0xe0;

/// A populate's frame in `b4 & 3` and `b5..=b9`: 0 and the offset in the pool, or 1 and
/// the literal frame (see [`call_frame_of`]).
fn call_frame_bytes(o: &mut [u8; OP_SIZE], mfn: u64) {
    let mfn = mfn & (MFN_LITERAL_LIMIT - 1);
    let (kind, v) = if (MFN_POOL_BASE..MFN_POOL_BASE + MFN_POOL_SIZE).contains(&mfn) {
        (0u8, mfn - MFN_POOL_BASE)
    } else {
        (1, mfn)
    };
    o[4] |= kind;
    o[5..10].copy_from_slice(&v.to_le_bytes()[..5]);
}

/// The frame [`call_frame_bytes`] wrote, `v` being `b5..=b9`.
fn call_frame_of(b: &[u8; OP_SIZE], v: u64) -> u64 {
    match b[4] & 3 {
        1 => v,
        _ => MFN_POOL_BASE + (v & (MFN_POOL_SIZE - 1)),
    }
}

/// `b11` of a run of one-page extents: `0xc0..=0xcf`, a `populate_physmap` (frame as a
/// populate's) or, with `b4` bit 4, a `decrease_reservation`.
const RUN_KIND: u8 = 0xc0;

/// `b11` of a `track_dirty_vram` record: `0xd0..=0xd7` (`b4` bit 4: `nr` = 0, stop).
const TRACK_KIND: u8 = 0xd0;

/// `b11` of a `guest_access` record: `0xd8..=0xdf` (`b4` bit 4: a read).
const ACCESS_KIND: u8 = 0xd8;

fn decode_call(b: &[u8; OP_SIZE], mode: Mode) -> CallerOp {
    let gfn = le(&b[1..4]) & (GFN_WINDOW - 1);
    let nr = if b[0] & B0_NR_LARGE == 0 {
        1 + u32::from(b[0] & 15)
    } else {
        32 << u32::from(b[0] & 7).min(4)
    };
    let v = le(&b[5..10]);
    if b[11] >= IDENTITY_KIND {
        let add = b[4] & B4_REMOVE == 0;
        return CallerOp::IdentityMap {
            gfn,
            nr,
            access: if add {
                IDENTITY_ACCESSES[usize::from(b[5] % 3)]
            } else {
                P2mAccess::X
            },
            add,
        };
    }
    if (RUN_KIND..TRACK_KIND).contains(&b[11]) {
        return if b[4] & B4_REMOVE != 0 {
            CallerOp::DecreaseRun { gfn, nr }
        } else {
            CallerOp::PopulateRun {
                gfn,
                mfn: call_frame_of(b, v),
                nr,
            }
        };
    }
    if b[11] >= TRACK_KIND {
        let remove = b[4] & B4_REMOVE != 0;
        return if b[11] >= ACCESS_KIND {
            CallerOp::GuestAccess {
                gfn,
                write: !remove,
            }
        } else {
            CallerOp::TrackDirtyVram {
                gfn,
                nr: if remove { 0 } else { nr },
            }
        };
    }
    let kind = b[11] % 7;
    match kind {
        0 | 1 => {
            let (order, align) = call_order_of(b[0], kind == 0, mode);
            let mask = if align && order < 64 {
                (1u64 << order) - 1
            } else {
                0
            };
            let gfn = gfn & !mask;
            if kind == 1 {
                return CallerOp::DecreaseReservation { gfn, order };
            }
            let mfn = call_frame_of(b, v);
            CallerOp::Populate {
                gfn,
                mfn: mfn & !mask,
                order,
            }
        }
        2 => CallerOp::SetMemType {
            gfn,
            nr,
            mem_type: HvmMemType::ALL[usize::from(b[5] % 4)],
        },
        3 => CallerOp::MemoryMapping {
            gfn,
            mfn: if b[4] & 1 != 0 {
                v
            } else {
                MAX_PAGE + (v & (MMIO_WINDOW - 1))
            },
            nr,
            add: b[4] & B4_REMOVE == 0,
        },
        4 => CallerOp::SetMemAccess {
            gfn,
            nr,
            access: P2mAccess::from_raw(b[5] % 10).expect("10 p2m accesses"),
        },
        5 => CallerOp::AssignDevice,
        _ => CallerOp::SetBrokenPage { gfn },
    }
}

fn encode_batch(b: &AddToPhysmapRange) -> [u8; OP_SIZE] {
    let mut o = [0u8; OP_SIZE];
    let window = GFN_WINDOW - 1;
    o[1..4].copy_from_slice(&(b.idx & window).to_le_bytes()[..3]);
    o[5..8].copy_from_slice(&(b.gpfn & window).to_le_bytes()[..3]);
    o[8] = b.size.min(MAX_BATCH_SIZE) as u8;
    o[10] = BATCH_MARKER;
    o
}

fn decode_batch(b: &[u8; OP_SIZE]) -> AddToPhysmapRange {
    let window = GFN_WINDOW - 1;
    let idx = le(&b[1..4]) & window;
    let gpfn = if b[4] & B4_GFN_ESCAPE != 0 {
        let delta = i16::from_le_bytes([b[5], b[6]]) as i64 as u64;
        idx.wrapping_add(delta) & window
    } else {
        le(&b[5..8]) & window
    };
    AddToPhysmapRange {
        idx,
        gpfn,
        size: u16::from(b[8]),
    }
}

fn encode_set_entry(e: &SetEntryOp) -> [u8; OP_SIZE] {
    let mut b = [0u8; OP_SIZE];
    // gfn
    let (g, escape) = if e.gfn < GFN_WINDOW {
        (e.gfn, false)
    } else {
        ((e.gfn >> GFN_ESCAPE_SHIFT).min((1 << 24) - 1), true)
    };
    b[1..4].copy_from_slice(&g.to_le_bytes()[..3]);
    let gfn = if escape { g << GFN_ESCAPE_SHIFT } else { g };
    // mfn
    let (kind, v, frame) = match e.mfn {
        MfnSel::Frame(x) => {
            let x = x & (MFN_LITERAL_LIMIT - 1);
            if (MFN_POOL_BASE..MFN_POOL_BASE + MFN_POOL_SIZE).contains(&x) {
                (0u8, x - MFN_POOL_BASE, Some(x))
            } else {
                (1, x, Some(x))
            }
        }
        MfnSel::Invalid => (2, 0, None),
        MfnSel::TableFrame(k) => (3, u64::from(k), None),
        MfnSel::Current => (3, u64::from(RELATIVE_MARKER) << 32, None),
        MfnSel::TableAt(l) => (
            3,
            u64::from(RELATIVE_MARKER) << 32 | u64::from(l.clamp(1, 3)),
            None,
        ),
    };
    b[4] = kind | if escape { B4_GFN_ESCAPE } else { 0 };
    b[5..10].copy_from_slice(&v.to_le_bytes()[..5]);
    b[0] = order_byte(e.order, gfn, frame);
    b[10] = e.p2mt as u8;
    b[11] = e.access as u8;
    b
}

/// The scenario `data` describes, or `None` when it holds less than a header and one op.
pub fn decode(data: &[u8]) -> Option<Scenario> {
    decode_as(data, None, false)
}

/// The caller-ops-only reading of `data` (`P2M_API=callers`): every record that is not a
/// batch is a caller op (its `b10` ignored), so every scenario is a caller chain.
pub fn decode_callers(data: &[u8], mode: Option<Mode>) -> Option<Scenario> {
    decode_as(data, mode, true)
}

/// [`decode`], with the header's mode replaced by `mode` when given (the caller ops are
/// read for that mode), and every non-batch record a caller op when `callers`.
fn decode_as(data: &[u8], mode: Option<Mode>, callers: bool) -> Option<Scenario> {
    let (&h, rest) = data.split_first()?;
    if rest.len() < OP_SIZE {
        return None;
    }
    let mut config = Config::new(
        match mode {
            Some(m) => m,
            None => Mode::from_raw((h & 3) % 3)?,
        },
        if h & HDR_AMD != 0 {
            Vendor::Amd
        } else {
            Vendor::Vtd
        },
        h & HDR_SHARE != 0,
    )
    .normalized();
    config.page_sizes = match (h >> HDR_SIZES_SHIFT) & 3 {
        1 => PageSizes::Up2m,
        2 => PageSizes::Only4k,
        _ => PageSizes::Up1g,
    };
    let records: Vec<&[u8; OP_SIZE]> = rest
        .chunks_exact(OP_SIZE)
        .take(MAX_OPS)
        .map(|c| c.try_into().expect("chunk of OP_SIZE"))
        .collect();
    let mut ops = Vec::with_capacity(records.len());
    let mut k = 0;
    while k < records.len() {
        let c = records[k];
        k += 1;
        ops.push(match c[10] {
            BATCH_MARKER => {
                let batch = decode_batch(c);
                match records.get(k) {
                    Some(n)
                        if c[4] & B4_INTERLEAVE != 0
                            && (callers || n[10] == CALLER_MARKER)
                            && n[10] != BATCH_MARKER =>
                    {
                        k += 1;
                        Op::Interleaved(InterleavedBatch {
                            batch,
                            second: Interleave {
                                after: u16::from(c[9]),
                                op: decode_call(n, config.mode),
                            },
                        })
                    }
                    _ => Op::AddToPhysmap(batch),
                }
            }
            FAULT_MARKER => Op::FailAlloc {
                nth: u32::from(c[0]) + 1,
            },
            _ if callers || c[10] == CALLER_MARKER => Op::Call(decode_call(c, config.mode)),
            _ => Op::SetEntry(decode_set_entry(c)),
        });
    }
    config.pci_hotplug = has_assign_device(&ops);
    Some(Scenario {
        config,
        allow_under_permissive: h & HDR_ALLOW != 0,
        ops,
    })
}

/// [`decode`], with the header's mode replaced by `mode` (for per-mode fuzz targets).
pub fn decode_with_mode(data: &[u8], mode: Mode) -> Option<Scenario> {
    decode_as(data, Some(mode), false)
}

fn le(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |acc, &b| acc << 8 | u64::from(b))
}

fn decode_set_entry(b: &[u8; OP_SIZE]) -> SetEntryOp {
    let (order, align) = order_of(b[0]);
    let g = le(&b[1..4]);
    let mut gfn = if b[4] & B4_GFN_ESCAPE != 0 {
        g << GFN_ESCAPE_SHIFT
    } else {
        g & (GFN_WINDOW - 1)
    };
    let v = le(&b[5..10]);
    let mut mfn = match b[4] & 3 {
        0 => MfnSel::Frame(MFN_POOL_BASE + (v & (MFN_POOL_SIZE - 1))),
        1 => MfnSel::Frame(v),
        2 => MfnSel::Invalid,
        _ if b[9] == RELATIVE_MARKER => match b[5] & 3 {
            0 => MfnSel::Current,
            l => MfnSel::TableAt(l),
        },
        _ => MfnSel::TableFrame(v as u16),
    };
    if align {
        let mask = (1u64 << order) - 1;
        gfn &= !mask;
        if let MfnSel::Frame(x) = &mut mfn {
            *x &= !mask;
        }
    }
    SetEntryOp {
        gfn,
        mfn,
        order,
        p2mt: P2mType::from_raw(b[10] % 16).expect("16 p2m types"),
        access: P2mAccess::from_raw(b[11] % 10).expect("10 p2m accesses"),
    }
}

/// [`decode`] (or, with `mode`, [`decode_with_mode`]) as `P2M_API` asks: the caller-ops
/// reading by default, the raw one with `P2M_API=raw` (see [`crate::callers_api`]; a bad
/// value reads as raw here — the targets and the CLI report it).
pub fn decode_for_api(data: &[u8], mode: Option<Mode>) -> Option<Scenario> {
    if crate::callers_api().unwrap_or(false) {
        decode_callers(data, mode)
    } else {
        decode_as(data, mode, false)
    }
}

/// Reads the whole remaining input with [`decode_for_api`]; too short an input is
/// `IncorrectFormat`.
impl<'a> Arbitrary<'a> for Scenario {
    fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
        let data = u.bytes(u.len())?;
        decode_for_api(data, None).ok_or(arbitrary::Error::IncorrectFormat)
    }

    fn arbitrary_take_rest(u: Unstructured<'a>) -> arbitrary::Result<Self> {
        decode_for_api(u.take_rest(), None).ok_or(arbitrary::Error::IncorrectFormat)
    }

    fn size_hint(_depth: usize) -> (usize, Option<usize>) {
        (HEADER_SIZE + OP_SIZE, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            let mut x = self.0;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            self.0 = x;
            x
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    fn op(gfn: u64, mfn: MfnSel, order: u32) -> Op {
        Op::SetEntry(SetEntryOp {
            gfn,
            mfn,
            order,
            p2mt: P2mType::RamRw,
            access: P2mAccess::Rwx,
        })
    }

    #[test]
    fn short_inputs_are_refused() {
        assert_eq!(decode(&[]), None);
        assert_eq!(decode(&[0; HEADER_SIZE + OP_SIZE - 1]), None);
        let s = decode(&[0; HEADER_SIZE + OP_SIZE + OP_SIZE - 1]).unwrap();
        assert_eq!(s.ops.len(), 1, "trailing partial op ignored");
        let Op::SetEntry(e) = s.ops[0] else {
            panic!("a set_entry op")
        };
        assert_eq!(
            (e.gfn, e.mfn, e.order, e.p2mt, e.access),
            (
                0,
                MfnSel::Frame(MFN_POOL_BASE),
                0,
                P2mType::RamRw,
                P2mAccess::N
            ),
            "all-zero op: 4K ram_rw map, access n, of the pool's first frame at gfn 0"
        );
    }

    #[test]
    fn ops_truncated_at_max() {
        let data = vec![0u8; HEADER_SIZE + OP_SIZE * (MAX_OPS + 5)];
        assert_eq!(decode(&data).unwrap().ops.len(), MAX_OPS);
    }

    #[test]
    fn header_fields() {
        let mut data = vec![0u8; HEADER_SIZE + OP_SIZE];
        for h in 0..=255u8 {
            data[0] = h;
            let s = decode(&data).unwrap();
            assert_eq!(s.config, s.config.normalized());
            assert_eq!(s.config.mode as u8, (h & 3) % 3);
            assert_eq!(s.config.iommu_hap_pt_share, h & 8 != 0);
            assert_eq!(s.allow_under_permissive, h & 16 != 0);
            if s.config.mode == Mode::Shadow {
                assert_eq!(s.config.vendor == Vendor::Amd, h & 4 != 0);
            }
        }
        let s = decode_with_mode(&data, Mode::Ept).unwrap();
        assert_eq!((s.config.mode, s.config.vendor), (Mode::Ept, Vendor::Vtd));
        data[0] = 0;
        let s = decode_with_mode(&data, Mode::Npt).unwrap();
        assert_eq!((s.config.mode, s.config.vendor), (Mode::Npt, Vendor::Amd));
    }

    #[test]
    fn op_fields() {
        let mut b = [0u8; OP_SIZE];
        // order 9, aligned: gfn 0x12345 -> 0x12200, pool value 0x3ff -> 0x100200.
        b[0] = 1;
        b[1..4].copy_from_slice(&[0x45, 0x23, 0xf1]); // masked to 20 bits: 0x12345
        b[5..10].copy_from_slice(&[0xff, 0x03, 0, 0, 0]);
        b[10] = 16 + 3;
        b[11] = 10 + 7;
        let e = decode_set_entry(&b);
        assert_eq!(
            (e.gfn, e.mfn, e.order, e.p2mt, e.access),
            (
                0x12200,
                MfnSel::Frame(0x100200),
                9,
                P2mType::RamRo,
                P2mAccess::Rwx
            )
        );
        // keep misaligned.
        b[0] = 1 | 4;
        let e = decode_set_entry(&b);
        assert_eq!((e.gfn, e.mfn), (0x12345, MfnSel::Frame(0x1003ff)));
        // raw order 33, raw mfn, gfn escape.
        b[0] = 3 | 33 << 2;
        b[4] = 1 | 4 | 0xf0;
        b[5..10].copy_from_slice(&[1, 2, 3, 4, 0xff]);
        let e = decode_set_entry(&b);
        assert_eq!(e.order, 33);
        assert_eq!(e.gfn, 0xf12345 << 16);
        assert_eq!(e.mfn, MfnSel::Frame(0xff04030201));
        b[4] = 2;
        assert_eq!(decode_set_entry(&b).mfn, MfnSel::Invalid);
        b[4] = 3;
        assert_eq!(decode_set_entry(&b).mfn, MfnSel::TableFrame(0x0201));
        // Relative selectors: kind 3 with the marker in b9; b5 & 3 picks, the rest is ignored.
        b[9] = RELATIVE_MARKER;
        for (b5, want) in [
            (0u8, MfnSel::Current),
            (1, MfnSel::TableAt(1)),
            (2, MfnSel::TableAt(2)),
            (3, MfnSel::TableAt(3)),
            (0xfc, MfnSel::Current),
            (0x41, MfnSel::TableAt(1)),
        ] {
            b[5] = b5;
            assert_eq!(decode_set_entry(&b).mfn, want, "b5 {b5:#x}");
        }
        b[9] = RELATIVE_MARKER ^ 1;
        b[5] = 1;
        assert_eq!(decode_set_entry(&b).mfn, MfnSel::TableFrame(0x0201));
        // The marker means nothing under the other kinds.
        b[9] = RELATIVE_MARKER;
        b[4] = 2;
        assert_eq!(decode_set_entry(&b).mfn, MfnSel::Invalid);
        b[4] = 1;
        assert_eq!(decode_set_entry(&b).mfn, MfnSel::Frame(0xf004030201));
    }

    /// Every file of the committed seed corpora decodes without a relative selector: the
    /// marker byte is new, so these files decode exactly as before it existed.
    #[test]
    fn committed_corpora_decode_without_relative_selectors() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
        let mut files = 0;
        for target in ["ept", "npt", "shadow", "mixed"] {
            let Ok(rd) = std::fs::read_dir(root.join(target)) else {
                continue;
            };
            for f in rd {
                let path = f.expect("dir entry").path();
                let data = std::fs::read(&path).expect("read");
                let Some(s) = decode(&data) else { continue };
                files += 1;
                for op in &s.ops {
                    assert!(
                        !matches!(op.mfn_sel(), MfnSel::TableAt(_) | MfnSel::Current),
                        "{}: {op}",
                        path.display()
                    );
                }
            }
        }
        if root.join("mixed").exists() {
            assert!(files > 0, "no corpus file decoded");
        }
    }

    /// Every committed corpus file older than the batch op decodes without one (the
    /// seeds written for it are named `seed-batch-*`).
    #[test]
    fn committed_corpora_decode_without_batch_ops() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../corpus");
        for target in ["ept", "npt", "shadow", "mixed"] {
            let Ok(rd) = std::fs::read_dir(root.join(target)) else {
                continue;
            };
            for f in rd {
                let path = f.expect("dir entry").path();
                let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
                if name.is_some_and(|n| n.starts_with("seed-batch-")) {
                    continue;
                }
                let data = std::fs::read(&path).expect("read");
                let Some(s) = decode(&data) else { continue };
                for op in &s.ops {
                    assert!(matches!(op, Op::SetEntry(_)), "{}: {op}", path.display());
                }
            }
        }
    }

    #[test]
    fn batch_op_layout() {
        let mut b = [0u8; OP_SIZE];
        b[10] = BATCH_MARKER;
        b[1..4].copy_from_slice(&[0x45, 0x23, 0xf1]);
        b[5..8].copy_from_slice(&[0x10, 0x00, 0x02]);
        b[8] = 40;
        let want = AddToPhysmapRange {
            idx: 0x12345 | (0xf1 << 16) & (GFN_WINDOW - 1),
            gpfn: 0x20010,
            size: 40,
        };
        assert_eq!(decode_batch(&b), want);
        // Relative destination: idx + the signed 16-bit b5..b6.
        b[4] = B4_GFN_ESCAPE;
        b[5..7].copy_from_slice(&(-3i16).to_le_bytes());
        assert_eq!(decode_batch(&b).gpfn, want.idx - 3);
        b[5..7].copy_from_slice(&7i16.to_le_bytes());
        assert_eq!(decode_batch(&b).gpfn, want.idx + 7);
        let mut data = vec![0u8];
        data.extend_from_slice(&encode_batch(&want));
        let s = decode(&data).unwrap();
        assert_eq!(s.ops, [Op::AddToPhysmap(want)]);
        assert!(is_canonical(&s));
    }

    #[test]
    fn decode_never_panics_and_reencodes() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        for i in 0..100_000 {
            let len = rng.below(if i % 100 == 0 { 1000 } else { 64 }) as usize;
            let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
            let mode = Mode::ALL[i % 3];
            let _ = decode_with_mode(&data, mode);
            if let Some(s) = decode(&data) {
                assert!(is_canonical(&s), "{s}");
                assert!(s.ops.len() == (len - 1) / OP_SIZE || s.ops.len() == MAX_OPS);
                assert_eq!(decode(&encode(&s)).as_ref(), Some(&s));
                // The targets read inputs as `P2M_API` asks (caller ops by default).
                let api = decode_for_api(&data, None).expect("same length rule");
                let u = Unstructured::new(&data);
                assert_eq!(Scenario::arbitrary_take_rest(u).unwrap(), api);
                let mut u = Unstructured::new(&data);
                assert_eq!(Scenario::arbitrary(&mut u).unwrap(), api);
                assert!(u.is_empty());
            } else {
                assert!(len < HEADER_SIZE + OP_SIZE);
                let u = Unstructured::new(&data);
                assert!(Scenario::arbitrary_take_rest(u).is_err());
            }
        }
    }

    fn random_canonical(rng: &mut XorShift) -> Scenario {
        let config = Config::new(
            Mode::ALL[rng.below(3) as usize],
            Vendor::ALL[rng.below(2) as usize],
            rng.below(2) == 1,
        )
        .normalized();
        let n = 1 + rng.below(MAX_OPS as u64) as usize;
        let ops = (0..n)
            .map(|_| {
                if rng.below(8) == 0 {
                    return Op::AddToPhysmap(AddToPhysmapRange {
                        idx: rng.below(GFN_WINDOW),
                        gpfn: rng.below(GFN_WINDOW),
                        size: rng.below(u64::from(MAX_BATCH_SIZE) + 1) as u16,
                    });
                }
                let order = match rng.below(5) {
                    0 => 0,
                    1 => 9,
                    2 => 18,
                    _ => rng.below(64) as u32,
                };
                let gfn = match rng.below(4) {
                    0 => rng.below(1 << 24) << 16,
                    1 => rng.below(GFN_WINDOW) & !((1 << order.min(18)) - 1),
                    _ => rng.below(GFN_WINDOW),
                };
                let mfn = match rng.below(7) {
                    0 => MfnSel::Invalid,
                    1 => MfnSel::TableFrame(rng.next() as u16),
                    5 => MfnSel::Current,
                    6 => MfnSel::TableAt(1 + rng.below(3) as u8),
                    2 => MfnSel::Frame(rng.below(MFN_LITERAL_LIMIT)),
                    _ => MfnSel::Frame(MFN_POOL_BASE + rng.below(MFN_POOL_SIZE)),
                };
                Op::SetEntry(SetEntryOp {
                    gfn,
                    mfn,
                    order,
                    p2mt: P2mType::ALL[rng.below(16) as usize],
                    access: P2mAccess::ALL[rng.below(10) as usize],
                })
            })
            .collect();
        Scenario {
            config,
            allow_under_permissive: rng.below(2) == 1,
            ops,
        }
    }

    #[test]
    fn canonical_round_trip() {
        let mut rng = XorShift(0x1234_5678_9abc_def1);
        for _ in 0..20_000 {
            let s = random_canonical(&mut rng);
            assert!(is_canonical(&s));
            let b = try_encode(&s).unwrap();
            assert_eq!(b.len(), HEADER_SIZE + OP_SIZE * s.ops.len());
            assert_eq!(decode(&b).as_ref(), Some(&s), "{s}");
            let t = super::super::to_trace(&s);
            assert_eq!(super::super::parse_trace(&t).as_ref(), Ok(&s), "{t}");
        }
    }

    #[test]
    fn non_canonical_is_reported_and_encoded_lossily() {
        let base = Scenario {
            config: Config::new(Mode::Ept, Vendor::Vtd, false),
            allow_under_permissive: false,
            ops: vec![op(0, MfnSel::Invalid, 0)],
        };
        assert!(is_canonical(&base));
        let mut s = base.clone();
        s.config.vendor = Vendor::Amd;
        assert_eq!(try_encode(&s).unwrap_err().op, None);
        assert_eq!(decode(&encode(&s)).unwrap().config, base.config);
        let mut s = base.clone();
        s.ops.clear();
        assert!(try_encode(&s).is_err());
        assert_eq!(decode(&encode(&s)), None);
        for (o, back) in [
            (
                op(0x123456, MfnSel::Invalid, 0),
                op(0x120000, MfnSel::Invalid, 0),
            ),
            (
                op(u64::MAX, MfnSel::Invalid, 0),
                op(0xffffff << 16, MfnSel::Invalid, 0),
            ),
            (op(0, MfnSel::Invalid, 1000), op(0, MfnSel::Invalid, 63)),
            (
                op(0, MfnSel::Frame(u64::MAX), 0),
                op(0, MfnSel::Frame(MFN_LITERAL_LIMIT - 1), 0),
            ),
            (op(0, MfnSel::TableAt(0), 0), op(0, MfnSel::TableAt(1), 0)),
            (op(0, MfnSel::TableAt(9), 0), op(0, MfnSel::TableAt(3), 0)),
        ] {
            let mut s = base.clone();
            s.ops = vec![o];
            let e = try_encode(&s).unwrap_err();
            assert_eq!(e.op, Some(0), "{e}");
            assert_eq!(decode(&encode(&s)).unwrap().ops, vec![back]);
        }
        let mut s = base.clone();
        s.ops = vec![op(0, MfnSel::Invalid, 0); MAX_OPS + 1];
        assert!(try_encode(&s).is_err());
        assert_eq!(decode(&encode(&s)).unwrap().ops.len(), MAX_OPS);
    }
}
