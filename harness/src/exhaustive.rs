//! Bounded-exhaustive search: every op sequence up to a length over a small abstract domain.
//!
//! For each distinct normalized configuration of the selected modes (EPT: VT-d, share
//! off/on; NPT: AMD-Vi, share off/on; shadow: either vendor, share off/on — shadow keeps
//! both share values because `p2m_add_iommu_flags` and the pre-c0a85795d8 IOMMU step read
//! the global flag), every sequence of at most `depth` letters of the alphabet below is
//! run from a fresh domain through [`Session`], with the oracle after every op. The search
//! is a depth-first walk that clones the [`Session`] after each prefix (prefix sharing), by
//! iterative deepening: all sequences of length 1, then 2, … so the first divergence a
//! configuration reports is a shortest one (ties broken by alphabet order), and a
//! configuration stops at its first divergence. [`Report::shortest`] is the shortest over
//! all configurations.
//!
//! # The caller alphabet (the default of `p2m-fuzz exhaustive`)
//!
//! [`AbstractDomain::callers`]: the Xen callers over the gfns below (45 letters; see its
//! doc). Depth 3 takes well under a second per configuration; `fixed` and `master-fixed`
//! are clean there (test `caller_alphabet_is_clean_on_the_fixed_revisions_and_finds_batch_holes`).
//! Reduction 2 is off for it (a refused caller op may still change state); the others
//! apply as below ("same"/"other" are the frames `populate_physmap` hands out).
//!
//! # The abstract domain (`--raw`)
//!
//! A letter is `set_entry(gfn, mfn, order, type, rwx)`:
//!
//! - **gfns** [`GFN_1G`] (1 GiB-aligned), [`GFN_2M`] (2 MiB-aligned inside that 1 GiB
//!   page, not its first 2 MiB) and [`GFN_4K`] (inside that 2 MiB page, not its first
//!   4 KiB); an op's gfn is aligned down to its order, so the distinct (gfn, order) pairs
//!   are: order 0 at all three, order 9 at the 1 GiB-aligned and at the 2 MiB gfn, order 18
//!   at the 1 GiB gfn. Between them they realise every structural relation two ops can
//!   have in a 4-level table: the same entry at one level, containment (a 4 KiB or 2 MiB
//!   op inside a 2 MiB or 1 GiB one, i.e. splits and intermediate-entry replacement at
//!   both superpage levels), and siblings in one L1 table (`GFN_2M`/`GFN_4K` at order 0)
//!   and in one L2 table (the two order-9 pairs; order 0 at `GFN_1G` and `GFN_4K` also
//!   sit under different L2 entries). Every decision in `ept_set_entry`,
//!   `p2m_pt_set_entry`, the separate map/unmap paths and the flushes depends on gfns only
//!   through these relations (table indices and ranges are shifts of the gfn), so other
//!   gfns add no new behaviour for sequences this short. Two exceptions, both harmless:
//!   the gfn-width check (all our gfns are far below it), and AMD-Vi's separate tables
//!   growing a level the first time a gfn above 1 GiB is mapped (`update_paging_mode`):
//!   that happens at the first map, before any cache record can exist, and only adds a
//!   table. Relations across L3 or L4 entries (two 1 GiB regions) only share tables that
//!   no op of order ≤ 18 replaces.
//!   Not covered by this argument: AMD-Vi page merging in separate tables (revisions
//!   without `amd_suppress_pte_merging`, i.e. all but `fixed`), which also depends on
//!   the mfn's alignment and on a count of map events per table: one order-9 or
//!   order-18 op merges, but counts reached only through hundreds of 4 KiB ops lie
//!   beyond any depth searched here (`p2m-core/tests/amd_merge.rs` covers them).
//! - **orders** 0, 9 and 18.
//! - **types**: one per class of behaviour the IOMMU side can tell apart ([`TYPES`]).
//!   A type enters the decisions through (a) its `p2m_get_iommu_flags` permission
//!   (`need_modify_vtd_table`, the p2m-pt `iommu_old_flags` tests, map vs unmap, AMD
//!   IR/IW bits written by `p2m_add_iommu_flags`), (b) the r/w bits
//!   `ept_p2m_type_to_flags` gives it, which a VT-d sharing the EPT reads, and (c) whether
//!   an entry is kept for a frame that is not `mfn_valid` (`mmio_direct`, the paging
//!   types, p2m-pt order-9 `populate_on_demand`):
//!   - `ram_rw`: policy rw, shared EPT rw — the rw class (with `grant_map_rw`,
//!     `map_foreign` and, for p2m-pt, `ram_logdirty`);
//!   - `ram_ro`: policy r, shared EPT r — the r class (with `grant_map_ro`);
//!   - `invalid`: policy nothing, no permission in any entry, written empty for an
//!     invalid frame — the no-mapping class (with `mmio_dm`, `ram_broken`,
//!     `populate_on_demand`; a real frame still gives a typed non-present entry);
//!   - `mmio_direct`: policy nothing but shared EPT rw, and kept with `INVALID_MFN` —
//!     the type Xen treats specially in `ept_set_entry` / `p2m_pt_set_entry`.
//!
//!   Transitions between these four realise every combination a decision compares:
//!   policy equal and device permission equal (a type onto itself), policy equal but
//!   device permission different (`mmio_direct` ↔ `invalid`), policy different but device
//!   permission equal (`ram_rw` ↔ `mmio_direct` on shared EPT) and both different
//!   (`ram_rw` ↔ `ram_ro`), plus empty versus non-empty on each side. Left out: types
//!   Xen refuses with an IOMMU (`ram_shared`, the paging types; see
//!   `reference_model::refusals`), and the EPT-only classes `ram_logdirty` (policy rw,
//!   shared r) and `mmio_write_dm` (policy nothing, shared r), which add more instances
//!   of the same two off-diagonal relations; [`AbstractDomain::wide`] has them.
//! - **access** `rwx` only: p2m-pt ignores the access; in EPT an access only narrows the
//!   r/w/x bits of the entry (the policy permission stays the type's), which gives the
//!   relations above again (device permission different from what the policy says, or an
//!   entry that is not present but typed, like `invalid` with a real frame).
//! - **frames** ([`FrameKind`]): "same" (`SAME_BASE + gfn`, the linear mapping, so an op
//!   inside a superpage can rewrite the very frame the superpage maps), "other"
//!   (`OTHER_BASE + gfn`, a different frame for the same gfns), `INVALID_MFN`,
//!   `ptf:0`, the p2m root table frame (1 GiB-aligned, so legal at every order): a guest
//!   mapping of a page-table frame, which a wrong walk can then use as a table; and
//!   `tbl:L` one level below the op's entry (`tbl:1` at order 9, `tbl:2` at order 18, no
//!   letter at order 0), resolved when the op runs: the table that an intermediate entry
//!   at the op's level points to (`INVALID_MFN` when the entry there is a leaf or empty).
//!
//!   Frame decisions compare the new frame with the frame field of the entry being
//!   replaced (`need_modify_vtd_table` in `ept_set_entry`, `old_mfn` in
//!   `p2m_pt_set_entry`), test `mfn_valid` and alignment, and walk table frames. The
//!   replaced entry's frame field is a leaf's frame — equal to the new one when both ops
//!   use "same" (or both "other", or both `ptf:0`) at related gfns, since "same" and
//!   "other" are linear and a split superpage's children keep the offsets — or
//!   `INVALID_MFN`'s field, or the table frame of an intermediate entry: a frame no fixed
//!   letter can name, because which pool frame a table gets depends on the allocations
//!   before it. `tbl:L` names it whatever the history, so "a new leaf whose frame is the
//!   table it replaces" (the hole `ept_need_modify_requires_present_leaf` closes, and the
//!   pre-660fd65d55 p2m-pt flush test `old_mfn != mfn`) is reached at depth 2. The five
//!   kinds realise equal-to-leaf, equal-to-replaced-table, different, invalid and
//!   table-frame (`ptf:0`, and `tbl:L` mapped anywhere it resolves).
//!
//!   Not realised, with reasons: (a) `tbl:2` at order 18 needs a 1 GiB-aligned L2 table,
//!   which the model's allocator (2 MiB stride from `TABLE_POOL_BASE`) hands out only as
//!   its 513th table, beyond these depths (the letters are mostly refused as misaligned);
//!   the decision at stake is the one the order-9 instance reaches, and freeing a
//!   two-level subtree after a 1 GiB op is reached by other letters. (b) The frame field 0 of a zeroed entry: a new frame 0 over an empty EPT
//!   entry also looks unchanged (the other half of that switch's doc: one op,
//!   `mfn=0 ram_rw` with separate tables, under-permissive); frame 0 is no letter.
//!   (c) `cur` (the frame the gfn maps now) adds no relation over the kinds above except
//!   offsets inside a superpage that maps a table frame (table frames again, which matter
//!   only to a walk that reads a leaf as a table); [`AbstractDomain::wide`] has it.
//!
//! Letters that coincide after alignment are enumerated once ([`AbstractDomain::alphabet`]).
//! The standard alphabet has 108 letters: 6 (gfn, order) pairs × 4 types × 4 frame kinds,
//! plus `tbl:L` at the 3 pairs of order 9 or 18 × 4 types.
//!
//! # Reductions (all sound: no divergence reachable in the full enumeration is lost)
//!
//! 1. **Divergent prefixes are not extended.** A run stops at its first divergence, so
//!    every extension reports the same divergence at the same op.
//! 2. **Both sides refused.** When the model and the reference both refuse an op
//!    (e.g. `INVALID_MFN` at order 9 on EPT: misaligned), neither changes state: both
//!    validate their arguments before writing anything (the harness test
//!    `refused_ops_leave_state_unchanged` checks this on the alphabet). The sequence is
//!    judged, but not extended: any extension `p·r·t` behaves exactly like `p·t`, a
//!    shorter sequence that is enumerated itself (only the sequence numbers naming ops in
//!    a report differ).
//! 3. **Frame renaming.** Exchanging the "same" and "other" frame sets (`SAME_BASE + x ↔
//!    OTHER_BASE + x`) maps every run onto a run with the same verdicts: both sets are
//!    `mfn_valid`, 1 GiB-aligned, below the 40-bit field and far above any page-table
//!    frame (the pool would need 2^19 allocations to reach [`SAME_BASE`]), and nothing
//!    but equality, those tests and offsets inside a superpage (linear in both sets)
//!    looks at a frame. `ptf:`, `tbl:` and `cur` resolve from the state, so they map onto
//!    themselves (`cur` resolving to the renamed frame). So only sequences whose first
//!    "same"-or-"other" letter is "same" are enumerated.
//! 4. **Equal states.** Two prefixes that leave equal states (p2m tables, machine memory
//!    with generations and free list, separate IOMMU tables, cache records, the reference,
//!    and the flag of reduction 3) have identical futures, so a prefix whose state was
//!    already extended by at least as many letters is not extended again. States are
//!    compared by a 128-bit fingerprint of their `Debug` text (SipHash twice, salted
//!    differently; counters and the sequence numbers in cache records, which only name
//!    ops in reports, are left out). A collision would need ~2^64 states; depth 3 has
//!    ~10^4 prefixes.
//!
//! # Baseline
//!
//! With a baseline revision ([`Options::baseline`]) a sequence counts only when it
//! diverges under the revision and runs clean under the baseline — the holes that the
//! baseline closed, e.g. `--revision patch-v1 --baseline committed` finds George
//! Dunlap's empty-leaf case rather than a hole both share. Both revisions run in lock
//! step; a prefix on which the baseline diverges is not extended (no extension can be
//! clean there), and reductions 2 and 4 look at both states.
//!
//! [`Options::reduce`] `= false` (`p2m-fuzz exhaustive --no-reduce`) turns reductions
//! 2-4 off to cross-check them: the harness test `reductions_keep_verdicts` compares both
//! at depth 2; at depth 3 `fixed` on EPT is clean either way (2,542,968 sequences plain in
//! ~36 s, 412,404 reduced).
//!
//! # Cost and what depth 3 finds
//!
//! `fixed`, depth 3, one thread, on the 2-core development machine under load (load
//! average 2-3): EPT 412,404 sequences in ~5-6 s, NPT 511,788 in ~8 s, shadow (four
//! configurations) 1,099,200 in ~21 s; all clean. The 12 `tbl:L` letters add ~15% to the
//! sequences of the 96-letter alphabet (358,104 / 445,536 / 951,744, timed alongside at
//! ~6 / ~8.5 / ~20 s) and no measurable time: at order 18 they are refused as misaligned,
//! and where no intermediate entry is replaced they resolve to `INVALID_MFN` and reach
//! states already seen. Time is dominated by 1 GiB ops that split superpages or
//! fill separate IOMMU tables (512 tables each); shared-table configurations are far
//! cheaper. Every hole of the historical revisions has a witness of at most two ops
//! here; `committed` with shared EPT reports the intermediate-entry one first
//! (`set_entry gfn=0x40000 mfn=0x10040000 order=0 ram_rw`, then `mfn=tbl:1 order=9
//! ram_rw`: freed-frame-reachable, blamed on `ept_need_modify_requires_present_leaf`).
//! 960265fbd8 alone closes nothing the search can see (`--revision 6c0e4ad608
//! --baseline 960265fbd8` is clean at depth 3, 1,449,528 sequences in ~64 s): the early free is followed by the flush in the same
//! `set_entry`, and the device view is taken between calls (the model limitation
//! documented in `p2m-core/README.md`).

use crate::runner::{Divergence, Session};
use crate::scenario::{MfnSel, Op, Scenario, SetEntryOp};
use p2m_core::{Config, Mode, P2mAccess, P2mType, Revision, Vendor};
use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::hash::Hasher;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Guest frame of the abstract domain: 1 GiB-aligned.
pub const GFN_1G: u64 = 0x40000;
/// Guest frame of the abstract domain: 2 MiB-aligned inside the 1 GiB page at [`GFN_1G`],
/// not its first 2 MiB.
pub const GFN_2M: u64 = GFN_1G + 0x200;
/// Guest frame of the abstract domain: 4 KiB inside the 2 MiB page at [`GFN_2M`], not its first.
pub const GFN_4K: u64 = GFN_2M + 1;
/// Extra gfn of the wide domain: the last 4 KiB of the 2 MiB page at [`GFN_2M`].
pub const GFN_4K_LAST: u64 = GFN_2M + 0x1ff;
/// The gfns of the standard domain (an op's gfn is aligned down to its order).
pub const GFNS: [u64; 3] = [GFN_1G, GFN_2M, GFN_4K];
/// The orders of the abstract domain.
pub const ORDERS: [u32; 3] = [0, 9, 18];
/// One p2m type per behaviour class of the standard domain (see the module documentation).
pub const TYPES: [P2mType; 4] = [
    P2mType::RamRw,
    P2mType::Invalid,
    P2mType::RamRo,
    P2mType::MmioDirect,
];
/// Base of the "same" frames: gfn `g` maps frame `SAME_BASE + g` (1 GiB-aligned base).
pub const SAME_BASE: u64 = 1 << 28;
/// Base of the "other" frames: gfn `g` maps frame `OTHER_BASE + g` (1 GiB-aligned base).
pub const OTHER_BASE: u64 = (1 << 28) + (1 << 27);
/// Longest depth the search accepts (depth 7 would be ~10^13 sequences).
pub const MAX_DEPTH: usize = 6;

/// Which frame an abstract op maps.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum FrameKind {
    /// `SAME_BASE + gfn`: the frame a plain linear guest mapping would use.
    Same,
    /// `OTHER_BASE + gfn`: a different frame for the same gfns.
    Other,
    /// `INVALID_MFN`.
    Invalid,
    /// The first page-table frame ever allocated (`ptf:0`, the p2m root: 1 GiB-aligned).
    TableFrame,
    /// `tbl:L` for the level just below the op's entry (`tbl:1` at order 9, `tbl:2` at
    /// order 18; no letter at order 0): the table an intermediate entry the op replaces
    /// points to, `INVALID_MFN` when the entry is not one.
    TableBelow,
    /// `cur`: the frame the p2m maps at the op's gfn when the op runs (wide domain only).
    Current,
}

impl FrameKind {
    /// The selector of this kind for an op of `order` on `gfn`, `None` when the kind has
    /// no letter at that order.
    pub fn selector(self, gfn: u64, order: u32) -> Option<MfnSel> {
        Some(match self {
            FrameKind::Same => MfnSel::Frame(SAME_BASE + gfn),
            FrameKind::Other => MfnSel::Frame(OTHER_BASE + gfn),
            FrameKind::Invalid => MfnSel::Invalid,
            FrameKind::TableFrame => MfnSel::TableFrame(0),
            FrameKind::TableBelow if order >= 9 => MfnSel::TableAt((order / 9) as u8),
            FrameKind::TableBelow => return None,
            FrameKind::Current => MfnSel::Current,
        })
    }
}

/// The frame kinds of the standard domain, in enumeration order.
pub const FRAMES: [FrameKind; 5] = [
    FrameKind::Same,
    FrameKind::Invalid,
    FrameKind::Other,
    FrameKind::TableFrame,
    FrameKind::TableBelow,
];

/// One letter of the search alphabet: an op and the frame kind it was built from.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Letter {
    /// The op.
    pub op: Op,
    /// Its frame kind (needed by the frame-renaming symmetry).
    pub frame: FrameKind,
}

/// The gfns, types and frame kinds letters are built from (orders and access are fixed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbstractDomain {
    /// Guest frames (aligned down to each order).
    pub gfns: Vec<u64>,
    /// p2m types.
    pub types: Vec<P2mType>,
    /// Frame kinds, in enumeration order.
    pub frames: Vec<FrameKind>,
}

impl AbstractDomain {
    /// The standard domain: [`GFNS`], [`TYPES`] and [`FRAMES`].
    pub fn standard() -> Self {
        AbstractDomain {
            gfns: GFNS.to_vec(),
            types: TYPES.to_vec(),
            frames: FRAMES.to_vec(),
        }
    }

    /// A wider domain for shallow runs: also [`GFN_4K_LAST`], every type that can
    /// arise in a domain with an IOMMU (`map_foreign` only for EPT) and the `cur` frame.
    pub fn wide(mode: Mode) -> Self {
        let mut gfns = GFNS.to_vec();
        gfns.push(GFN_4K_LAST);
        let mut types = TYPES.to_vec();
        for &t in P2mType::ALL {
            let usable = reference_model::still_arises_with_iommu(t)
                && (mode == Mode::Ept || t != P2mType::MapForeign);
            if usable && !types.contains(&t) {
                types.push(t);
            }
        }
        let mut frames = FRAMES.to_vec();
        frames.push(FrameKind::Current);
        AbstractDomain {
            gfns,
            types,
            frames,
        }
    }

    /// The caller alphabet (`p2m-fuzz exhaustive`'s default): the Xen callers a guest,
    /// its device model or the toolstack issue, over the same gfns — `populate_physmap`
    /// at each (gfn, order 0 or 9) pair with the "same" and the "other" frames,
    /// `decrease_reservation` there, `set_mem_type` of one page (at the 4 KiB and at the
    /// 2 MiB gfn) to each memory type, `memory_mapping` of one page of device MMIO
    /// (inside `mmio_ro_ranges` too) and its removal, `set_broken_page_p2m`,
    /// `add_to_physmap_range` of one page both ways between the 4 KiB and the 2 MiB gfn, the
    /// same batch with a second vCPU giving the moved page back (XSA-346's shape), an
    /// identity map of one reserved page (RMRR `rw`, read-only IVMD, removal), VRAM
    /// tracking (two pages, the whole 2 MiB region, stop), a vCPU reading or writing
    /// the 4 KiB gfn, the 2 MiB region populated and emptied page by page (512 one-page
    /// extents each), and fault injection (`fail_alloc`, allocations 1 to 3 of the next op). Left out:
    /// `set_mem_access` (outside security support with passthrough), `assign_device`
    /// (hot-plug is a configuration the search does not enumerate) and 1 GiB extents (their
    /// 512 tables make every sequence slow; the random search has them).
    pub fn callers() -> Vec<Letter> {
        use p2m_core::callers::{CallerOp, HvmMemType, Interleave, InterleavedBatch};
        use p2m_core::physmap::AddToPhysmapRange;
        let mut v: Vec<Letter> = Vec::new();
        let mut push = |op: Op, frame: FrameKind| {
            if !v.iter().any(|l| l.op == op) {
                v.push(Letter { op, frame });
            }
        };
        let pairs: Vec<(u64, u32)> = [0u32, 9]
            .iter()
            .flat_map(|&o| GFNS.iter().map(move |&g| (g & !((1u64 << o) - 1), o)))
            .collect();
        for &(gfn, order) in &pairs {
            for (base, frame) in [(SAME_BASE, FrameKind::Same), (OTHER_BASE, FrameKind::Other)] {
                let mfn = base + gfn;
                push(Op::Call(CallerOp::Populate { gfn, mfn, order }), frame);
            }
            push(
                Op::Call(CallerOp::DecreaseReservation { gfn, order }),
                FrameKind::Invalid,
            );
        }
        for gfn in [GFN_4K, GFN_2M] {
            for mem_type in HvmMemType::ALL {
                let op = CallerOp::SetMemType {
                    gfn,
                    nr: 1,
                    mem_type,
                };
                push(Op::Call(op), FrameKind::Invalid);
            }
        }
        for mfn in [p2m_core::MAX_PAGE + 0x40, p2m_core::MMIO_RO_FRAMES.start] {
            for add in [true, false] {
                let op = CallerOp::MemoryMapping {
                    gfn: GFN_4K,
                    mfn,
                    nr: 1,
                    add,
                };
                push(Op::Call(op), FrameKind::Invalid);
            }
        }
        push(
            Op::Call(CallerOp::SetBrokenPage { gfn: GFN_4K }),
            FrameKind::Invalid,
        );
        for (idx, gpfn) in [(GFN_4K, GFN_2M), (GFN_2M, GFN_4K)] {
            let batch = AddToPhysmapRange { idx, gpfn, size: 1 };
            push(Op::AddToPhysmap(batch), FrameKind::Invalid);
            let second = Interleave {
                after: 1,
                op: CallerOp::DecreaseReservation {
                    gfn: gpfn,
                    order: 0,
                },
            };
            push(
                Op::Interleaved(InterleavedBatch { batch, second }),
                FrameKind::Invalid,
            );
        }
        // A device with a one-page reserved range at the 4 KiB gfn: assigned with an RMRR
        // (`rw`) or a read-only IVMD, and deassigned.
        for (access, add) in [
            (P2mAccess::Rw, true),
            (P2mAccess::R, true),
            (P2mAccess::X, false),
        ] {
            let op = CallerOp::IdentityMap {
                gfn: GFN_4K,
                nr: 1,
                access,
                add,
            };
            push(Op::Call(op), FrameKind::Invalid);
        }
        // VRAM tracking over two pages inside the 2 MiB region (split edges) or over the
        // whole region, its end, and a vCPU reading or writing the 4 KiB gfn.
        for (gfn, nr) in [(GFN_4K, 2), (GFN_2M, 512), (GFN_4K, 0)] {
            push(
                Op::Call(CallerOp::TrackDirtyVram { gfn, nr }),
                FrameKind::Invalid,
            );
        }
        for write in [false, true] {
            push(
                Op::Call(CallerOp::GuestAccess { gfn: GFN_4K, write }),
                FrameKind::Invalid,
            );
        }
        // The 2 MiB region ballooned in page by page (frames congruent to the gfns: the
        // IOMMU may coalesce it) and given back page by page.
        let run = CallerOp::PopulateRun {
            gfn: GFN_2M,
            mfn: SAME_BASE + GFN_2M,
            nr: 512,
        };
        push(Op::Call(run), FrameKind::Same);
        push(
            Op::Call(CallerOp::DecreaseRun {
                gfn: GFN_2M,
                nr: 512,
            }),
            FrameKind::Invalid,
        );
        for nth in 1..=3 {
            push(Op::FailAlloc { nth }, FrameKind::Invalid);
        }
        v
    }

    /// The deduplicated alphabet: every (gfn aligned to order, order, type, frame), rwx,
    /// ordered by order, gfn, type, frame.
    pub fn alphabet(&self) -> Vec<Letter> {
        let mut v: Vec<Letter> = Vec::new();
        for &order in &ORDERS {
            let mask = !((1u64 << order) - 1);
            for &g in &self.gfns {
                let gfn = g & mask;
                for &p2mt in &self.types {
                    for &frame in &self.frames {
                        let Some(mfn) = frame.selector(gfn, order) else {
                            continue;
                        };
                        let op = Op::SetEntry(SetEntryOp {
                            gfn,
                            mfn,
                            order,
                            p2mt,
                            access: P2mAccess::Rwx,
                        });
                        if !v.iter().any(|l| l.op == op) {
                            v.push(Letter { op, frame });
                        }
                    }
                }
            }
        }
        v
    }
}

/// The distinct normalized configurations of `modes`, in a fixed order.
pub fn configs(modes: &[Mode]) -> Vec<Config> {
    let mut v: Vec<Config> = Vec::new();
    for &mode in modes {
        for vendor in [Vendor::Vtd, Vendor::Amd] {
            for share in [false, true] {
                let c = Config::new(mode, vendor, share).normalized();
                if !v.contains(&c) {
                    v.push(c);
                }
            }
        }
    }
    v
}

/// What to search.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Revision modelled.
    pub revision: Revision,
    /// Only count sequences that run clean under this revision (see the module docs).
    pub baseline: Option<Revision>,
    /// Longest sequence (1 to [`MAX_DEPTH`]; 0 searches nothing, more is capped).
    pub depth: usize,
    /// Use [`AbstractDomain::wide`] instead of the standard domain.
    pub wide: bool,
    /// Configurations searched at once on separate threads (0 and 1: one at a time).
    /// Results do not depend on it.
    pub jobs: usize,
    /// Apply reductions 2-4 (off: the plain enumeration, to cross-check them).
    pub reduce: bool,
    /// Pass over divergences whose inputs no Xen caller produces (`harness::reach`:
    /// internal API only, configuration or support excluded) and keep searching, as
    /// `hunt --reachable` does; their sequences are not extended (an extension keeps the
    /// unreachable op).
    pub reachable: bool,
    /// Search the caller alphabet ([`AbstractDomain::callers`]) instead of raw `set_entry`
    /// letters (`wide` is then ignored).
    pub callers: bool,
}

impl Options {
    /// Standard domain, no baseline.
    pub fn new(revision: Revision, depth: usize) -> Options {
        Options {
            revision,
            baseline: None,
            depth,
            wide: false,
            jobs: 1,
            reduce: true,
            reachable: false,
            callers: false,
        }
    }
}

/// What the search of one configuration did and found.
#[derive(Clone, Debug)]
pub struct ConfigResult {
    /// The configuration.
    pub config: Config,
    /// Letters in the alphabet.
    pub alphabet: usize,
    /// Distinct sequences the oracle judged (each once, at the iteration of its length).
    pub sequences: u64,
    /// `set_entry` ops executed under the revision, counting the re-execution of
    /// iterative deepening (a baseline runs as many again).
    pub ops: u64,
    /// Sequences not extended because both sides refused their last op.
    pub pruned_refused: u64,
    /// Letters skipped by the frame-renaming symmetry.
    pub pruned_symmetry: u64,
    /// Prefixes not extended because an equal state was already extended as far.
    pub pruned_duplicate: u64,
    /// Prefixes not extended because the baseline diverged on them.
    pub pruned_baseline: u64,
    /// Divergences passed over as not reachable ([`Options::reachable`]).
    pub passed_unreachable: u64,
    /// Longest sequence length fully searched.
    pub depth_done: usize,
    /// Wall time.
    pub elapsed: Duration,
    /// The first shortest divergence and its scenario, if any.
    pub found: Option<(Divergence, Scenario)>,
}

/// What a visitor tells the search about a divergence.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Control {
    /// Report this divergence as the configuration's finding and stop.
    Stop,
    /// Pass over it (the divergent sequence is not extended) and keep searching.
    Continue,
}

/// A 128-bit fingerprint of text written to it (two SipHash streams, differently salted).
struct Fingerprint(DefaultHasher, DefaultHasher);

impl Fingerprint {
    /// An empty fingerprint.
    fn new() -> Self {
        let a = DefaultHasher::new();
        let mut b = DefaultHasher::new();
        b.write(b"p2m-fuzz exhaustive second stream");
        Fingerprint(a, b)
    }
    /// The 128-bit value.
    fn finish(&self) -> u128 {
        (self.0.finish() as u128) << 64 | self.1.finish() as u128
    }
}

impl std::fmt::Write for Fingerprint {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.write(s.as_bytes());
        self.1.write(s.as_bytes());
        Ok(())
    }
}

/// Writes everything in a session that can influence a later op or oracle check: p2m
/// tables, machine memory, separate IOMMU tables, the reference, and the cache records
/// without the sequence numbers that only name ops in reports. Counters are left out.
fn write_state(h: &mut Fingerprint, s: &Session) {
    let d = s.domain();
    // Writing to a Fingerprint never fails.
    let _ = d.write_state(h);
    let _ = write!(h, "|{:?}|", s.reference());
    for r in d.cache_records() {
        let _ = write!(h, "{:?}{:?};", r.range, r.kind);
    }
}

/// One node of the search: the revision's session and, with a baseline, the baseline's.
#[derive(Clone)]
struct Node {
    /// Under the revision.
    main: Session,
    /// Under the baseline revision.
    base: Option<Session>,
    /// A "same" letter was used (reduction 3).
    same_used: bool,
}

impl Node {
    /// Fingerprint of the node's state (reduction 4).
    fn key(&self) -> u128 {
        let mut h = Fingerprint::new();
        let _ = write!(h, "{}|", self.same_used);
        write_state(&mut h, &self.main);
        if let Some(b) = &self.base {
            let _ = write!(h, "baseline|");
            write_state(&mut h, b);
        }
        h.finish()
    }
}

/// The DFS state of one configuration's search.
struct Search<'a> {
    alphabet: &'a [Letter],
    /// Apply reductions 2-4.
    reduce: bool,
    /// The caller alphabet: reduction 2 is off (a refused caller op may still have
    /// changed state, e.g. crashed the domain or split a superpage).
    callers: bool,
    res: ConfigResult,
    /// Fingerprints of prefix states already extended, with the longest extension searched.
    seen: HashMap<u128, usize>,
    visit: &'a mut dyn FnMut(&Session, &Divergence) -> Control,
    stopped: bool,
}

impl Search<'_> {
    /// Extends `node` by every letter; sequences `left` letters longer are judged.
    fn dfs(&mut self, node: &Node, left: usize) {
        for l in self.alphabet {
            if self.stopped {
                return;
            }
            if self.reduce && !node.same_used && l.frame == FrameKind::Other {
                self.res.pruned_symmetry += 1;
                continue;
            }
            let mut n = node.clone();
            n.same_used |= l.frame == FrameKind::Same;
            let out = n.main.step_outcome(&l.op);
            self.res.ops += 1;
            let base = n.base.as_mut().map(|b| b.step_outcome(&l.op));
            let base_diverged = base.as_ref().is_some_and(|b| b.finding.is_some());
            let refused = self.reduce
                && !self.callers
                && out.both_refused
                && !matches!(&base, Some(b) if !b.both_refused);
            if left == 1 {
                self.res.sequences += 1;
                match out.finding {
                    Some(f) if !base_diverged => {
                        let d = n.main.divergence(f);
                        if (self.visit)(&n.main, &d) == Control::Stop {
                            self.res.found = Some((d, n.main.scenario()));
                            self.stopped = true;
                        }
                    }
                    Some(_) => {}
                    None if base_diverged => self.res.pruned_baseline += 1,
                    None if refused => self.res.pruned_refused += 1,
                    None => {}
                }
                continue;
            }
            // This prefix was judged at an earlier iteration (and counted there).
            if out.finding.is_some() || base_diverged || refused || out.crashed.is_some() {
                continue;
            }
            if !self.reduce {
                self.dfs(&n, left - 1);
                continue;
            }
            let key = n.key();
            match self.seen.get(&key) {
                Some(&done) if done >= left - 1 => {
                    self.res.pruned_duplicate += 1;
                    continue;
                }
                _ => {
                    self.seen.insert(key, left - 1);
                }
            }
            self.dfs(&n, left - 1);
        }
    }
}

/// Searches one configuration by iterative deepening, calling `visit` on every
/// divergence (shortest first, then in alphabet order) until it says [`Control::Stop`].
pub fn search_config_with(
    config: Config,
    opts: &Options,
    visit: &mut dyn FnMut(&Session, &Divergence) -> Control,
) -> ConfigResult {
    let start = Instant::now();
    let alphabet = if opts.callers {
        AbstractDomain::callers()
    } else if opts.wide {
        AbstractDomain::wide(config.mode).alphabet()
    } else {
        AbstractDomain::standard().alphabet()
    };
    let root = Node {
        main: Session::new(config, opts.revision),
        base: opts.baseline.map(|b| Session::new(config, b)),
        same_used: false,
    };
    let mut search = Search {
        alphabet: &alphabet,
        reduce: opts.reduce,
        callers: opts.callers,
        res: ConfigResult {
            config: root.main.config(),
            alphabet: alphabet.len(),
            sequences: 0,
            ops: 0,
            pruned_refused: 0,
            pruned_symmetry: 0,
            pruned_duplicate: 0,
            pruned_baseline: 0,
            passed_unreachable: 0,
            depth_done: 0,
            elapsed: Duration::ZERO,
            found: None,
        },
        seen: HashMap::new(),
        visit,
        stopped: false,
    };
    for d in 1..=opts.depth.min(MAX_DEPTH) {
        search.dfs(&root, d);
        if search.stopped {
            break;
        }
        search.res.depth_done = d;
    }
    let mut res = search.res;
    res.elapsed = start.elapsed();
    res
}

/// Searches one configuration, stopping at its first shortest divergence.
pub fn search_config(config: Config, opts: &Options) -> ConfigResult {
    let mut passed = 0;
    let mut res = search_config_with(config, opts, &mut |_, d| {
        if opts.reachable && !d.is_reachable() {
            passed += 1;
            Control::Continue
        } else {
            Control::Stop
        }
    });
    res.passed_unreachable = passed;
    res
}

/// The result of searching several configurations.
#[derive(Clone, Debug)]
pub struct Report {
    /// Revision searched.
    pub revision: &'static str,
    /// Baseline revision, if any.
    pub baseline: Option<&'static str>,
    /// Maximum sequence length.
    pub depth: usize,
    /// One result per configuration, in [`configs`] order.
    pub configs: Vec<ConfigResult>,
    /// Total wall time.
    pub elapsed: Duration,
}

impl Report {
    /// The shortest divergence over all configurations (the first configuration on a tie).
    pub fn shortest(&self) -> Option<&(Divergence, Scenario)> {
        self.configs
            .iter()
            .filter_map(|c| c.found.as_ref())
            .min_by_key(|(_, s)| s.ops.len())
    }
    /// Sequences judged in all configurations.
    pub fn sequences(&self) -> u64 {
        self.configs.iter().map(|c| c.sequences).sum()
    }
    /// Ops executed in all configurations.
    pub fn ops(&self) -> u64 {
        self.configs.iter().map(|c| c.ops).sum()
    }
}

/// Searches every configuration of `modes`, each up to its first shortest divergence
/// (`opts.jobs` configurations at a time; the report is the same for any value).
pub fn explore(modes: &[Mode], opts: &Options) -> Report {
    let start = Instant::now();
    let cfgs = configs(modes);
    let jobs = opts.jobs.clamp(1, cfgs.len().max(1));
    let results: Vec<ConfigResult> = if jobs == 1 {
        cfgs.iter().map(|&c| search_config(c, opts)).collect()
    } else {
        let next = AtomicUsize::new(0);
        let slots: Mutex<Vec<Option<ConfigResult>>> = Mutex::new(vec![None; cfgs.len()]);
        std::thread::scope(|scope| {
            for _ in 0..jobs {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&c) = cfgs.get(i) else { break };
                    let r = search_config(c, opts);
                    if let Ok(mut v) = slots.lock() {
                        v[i] = Some(r);
                    }
                });
            }
        });
        let slots = slots.into_inner().unwrap_or_else(|e| e.into_inner());
        // Every slot is filled: a panicking thread would have made `scope` panic.
        slots
            .into_iter()
            .zip(&cfgs)
            .map(|(r, &c)| r.unwrap_or_else(|| search_config(c, opts)))
            .collect()
    };
    Report {
        revision: opts.revision.name,
        baseline: opts.baseline.map(|b| b.name),
        depth: opts.depth,
        configs: results,
        elapsed: start.elapsed(),
    }
}
