//! Per-entry contiguity markers of IOMMU page tables:
//! `xen/arch/x86/include/asm/pt-contig-markers.h` at `c447b7308b`.
//!
//! Every entry of a table carries a 4-bit marker in bits the hardware ignores (VT-d bits
//! 52–55, AMD `ign0`, bits 1–4). Read as a binary tree over the 512 entries, entry `i`'s
//! marker `m` says that the aligned block `[i, i + 2^m)` has been found contiguous; entry 0
//! reaching 9 means the whole table is (all null, or leaves whose frames advance by one
//! entry's size with identical attributes). The markers are *not* a function of the
//! entries: a table prefilled by `iommu_alloc_pgtable` claims everything, a cleared one
//! (a root) nothing, and a VT-d leaf written with `PTE_kind_table` claims nothing. They are
//! stored here beside the entries, one [`Markers`] per table: overrides of the pattern
//! "entry 0 = 9, entry `i` = ctz(`i`)" that a prefilled (or fully contiguous) table holds.
//!
//! [`pt_update_contig_markers`] is the header's function, step by step. The range forms
//! ([`pt_update_contig_markers_run`], [`pt_contig_first_complete`]) give, for a run of
//! entries written one after another with uniform content, the markers and the first
//! "table complete" answer that the per-entry calls would produce, at a cost independent of
//! the run's length; the unit tests below check them against the per-entry function, and
//! the per-entry function against a plain `[u64; 512]` implementation of the algorithm.
//!
//! Why the range form is exact: after any sequence of updates the claims form a tree (a
//! claimed block's halves are claimed, and a claimed block's entries are contiguous), and
//! each update recomputes bottom-up the claims of the blocks containing the written entry
//! from the claims of the other halves (stopping, with the larger blocks unclaimed, at the
//! first failure). So after writing `[a, end)` in order, a block that meets the run holds
//! "both halves claimed and their first entries contiguous" evaluated on the final
//! entries, a block that does not meet it keeps its claim, and the markers of the indices
//! whose blocks straddle a run boundary (at most 20) are all that need computing; inside
//! the run the markers become the prefilled pattern (or 0 when the writes claim nothing).

use std::cell::Cell;

use crate::master::revision::Switches;
use crate::master::x86_iommu::{IoPte, PgTables};
use crate::tables::{Pte, Table, ENTRIES};

/// `CONTIG_LEVEL_SHIFT` (`pt-contig-markers.h:27`): log2 of the entries per table.
pub const CONTIG_LEVEL_SHIFT: u32 = 9;
/// `CONTIG_NR` (`pt-contig-markers.h:28`): entries per table.
pub const CONTIG_NR: u16 = 1 << CONTIG_LEVEL_SHIFT;
/// `PAGE_SHIFT`: the shift of a 4 KiB frame number into an address.
pub const PAGE_SHIFT: u32 = 12;

/// `enum PTE_kind` (`pt-contig-markers.h:45-49`): what the caller just wrote.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum PteKind {
    /// `PTE_kind_null`: a cleared entry.
    Null,
    /// `PTE_kind_leaf`: a leaf (page or superpage).
    Leaf,
    /// `PTE_kind_table`: a pointer to a table (VT-d also passes it for a leaf whose next
    /// superpage size is unsupported, `vtd/iommu.c:2141-2152`).
    Table,
}

/// Synthetic slips of [`pt_update_contig_markers`] and its range forms, for the test-only
/// revisions `deep-coalesce-short` and `deep-free-empty-short` (not Xen history; Xen is
/// [`Slips::XEN`]). Each drops one `IS_CONTIG` test (`pt-contig-markers.h:40-43`, used at
/// `:87` and `:95`) on the last level of the tree only, `b == CONTIG_LEVEL_SHIFT - 1`, where
/// the two 256-entry halves of the table merge: the other half's marker must still say
/// "claimed" (`GET_MARKER(pt[i]) == b`), but its first entry is not compared. The markers
/// say *that* a half is contiguous, never *how* (null or leaves, which frames): only that
/// comparison tells a half of contiguous leaves from an empty half, or from a run of other
/// frames. A half of claimed leaves takes 256 agreeing writes that no single 2 MiB map,
/// unmap or shatter produces (those leave the whole table uniform), so both slips need a
/// deep state: half a table built, or emptied, page by page.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Slips {
    /// `deep-coalesce-short` (switch `coalesce_compares_halves` false): a `PTE_kind_leaf`
    /// update does not compare the halves, so a table whose two halves are each contiguous
    /// (or one of them empty) is reported complete and coalesced into one superpage.
    pub leaf_halves_unchecked: bool,
    /// `deep-free-empty-short` (switch `free_empty_checks_halves` false): a
    /// `PTE_kind_null` update — the free-empty test of the unmap paths — does not check
    /// that the other half is null, so a table whose other half is a claimed run of leaves
    /// is reported empty and freed.
    pub null_halves_unchecked: bool,
}

impl Slips {
    /// Xen's function: every `IS_CONTIG` test made.
    pub const XEN: Slips = Slips {
        leaf_halves_unchecked: false,
        null_halves_unchecked: false,
    };

    /// The slips of a master revision's switches.
    pub fn of(sw: &Switches) -> Slips {
        Slips {
            leaf_halves_unchecked: !sw.coalesce_compares_halves,
            null_halves_unchecked: !sw.free_empty_checks_halves,
        }
    }

    /// Whether an update of `kind` skips the `IS_CONTIG` test of the halves (the last
    /// level, where the two halves of the table merge).
    fn halves_unchecked(self, kind: PteKind) -> bool {
        match kind {
            PteKind::Leaf => self.leaf_halves_unchecked,
            PteKind::Null => self.null_halves_unchecked,
            PteKind::Table => false,
        }
    }

    /// Whether the `IS_CONTIG` test at level `b` is made for an update of `kind`.
    fn tests(self, kind: PteKind, b: u32) -> bool {
        !(b == CONTIG_LEVEL_SHIFT - 1 && self.halves_unchecked(kind))
    }
}

/// Sentinel of [`Marker`]: the prefilled value of the entry.
const PREFILLED: u8 = u8::MAX;

/// One stored marker override (the default, [`Marker::default`], is "the prefilled value").
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Marker(u8);

impl Default for Marker {
    fn default() -> Self {
        Marker(PREFILLED)
    }
}

impl Pte for Marker {
    fn nth(&self, _k: u64, _level: u8) -> Self {
        *self
    }
}

/// The markers of one table: overrides of [`prefilled_marker`], stored as runs.
pub type Markers = Table<Marker>;

/// The marker `iommu_alloc_pgtable` writes into entry `i` of a table it prefills
/// (`x86/iommu.c:639-657`): 9 for entry 0, the number of trailing zero bits of `i` otherwise.
pub fn prefilled_marker(i: u16) -> u8 {
    if i == 0 {
        CONTIG_LEVEL_SHIFT as u8
    } else {
        i.trailing_zeros() as u8
    }
}

/// Markers of a table `iommu_alloc_pgtable(hd, contig_mask)` prefills (`x86/iommu.c:639-657`).
pub fn markers_prefilled() -> Markers {
    Table::new(1)
}

/// Markers of a table `iommu_alloc_pgtable(hd, 0)` clears (`x86/iommu.c:659-660`): all 0.
pub fn markers_cleared() -> Markers {
    let mut t = Table::new(1);
    t.fill(0, ENTRIES, Marker(0));
    t
}

/// `GET_MARKER(pt[i])` (`pt-contig-markers.h:36`).
pub fn get_marker(mk: &Markers, i: u16) -> u8 {
    match mk.get(i) {
        Marker(PREFILLED) => prefilled_marker(i),
        Marker(v) => v,
    }
}

/// `SET_MARKER(pt[i], m)` (`pt-contig-markers.h:37-38`): the 4-bit field takes `m`.
pub fn set_marker(mk: &mut Markers, i: u16, m: u8) {
    let m = m & 0xf;
    let stored = if m == prefilled_marker(i) {
        Marker::default()
    } else {
        Marker(m)
    };
    mk.set(i, stored);
}

/// All 512 markers of a table (for tests and snapshots).
pub fn all_markers(mk: &Markers) -> Vec<u8> {
    (0..CONTIG_NR).map(|i| get_marker(mk, i)).collect()
}

/// `(level - 1) * CONTIG_LEVEL_SHIFT + PAGE_SHIFT` (`pt-contig-markers.h:55`): the shift of
/// an entry's address field for a table at `level`.
fn level_shift(level: u8) -> u32 {
    (level.clamp(1, 4) as u32 - 1) * CONTIG_LEVEL_SHIFT + PAGE_SHIFT
}

/// `IS_CONTIG` (`pt-contig-markers.h:40-43`) on entries whose marker bits are masked off:
/// leaves must differ in exactly the address bit of a `2^b`-entry stride; a null update
/// asks whether entry `i` is null.
fn is_contig(kind: PteKind, raw_i: u64, raw_idx: u64, shift: u32, b: u32) -> bool {
    match kind {
        PteKind::Leaf => raw_i ^ raw_idx == 1u64 << (b + shift),
        _ => raw_i == 0,
    }
}

/// `pt_update_contig_markers(pt, idx, level, kind)` (`pt-contig-markers.h:51-101`), called
/// right after entry `idx` was written (the write cleared its marker: callers write entries
/// through a function that does so). `raw(i)` is entry `i` without marker bits. Returns true
/// when the table is now wholly contiguous (for `Null`: empty).
pub fn pt_update_contig_markers(
    raw: &dyn Fn(u16) -> u64,
    mk: &mut Markers,
    idx: u16,
    level: u8,
    kind: PteKind,
) -> bool {
    pt_update_contig_markers_with(raw, mk, idx, level, kind, Slips::XEN)
}

/// [`pt_update_contig_markers`] with the synthetic `slips` of a test-only revision.
pub fn pt_update_contig_markers_with(
    raw: &dyn Fn(u16) -> u64,
    mk: &mut Markers,
    idx: u16,
    level: u8,
    kind: PteKind,
    slips: Slips,
) -> bool {
    if idx >= CONTIG_NR {
        return false;
    }
    let shift = level_shift(level);
    // Step 1: lower the markers of the blocks above `idx` that claimed to contain it.
    let mut i = idx;
    while i != 0 {
        let b = i.trailing_zeros();
        i &= !(1 << b);
        if get_marker(mk, i) as u32 <= b {
            break;
        }
        set_marker(mk, i, b as u8);
    }
    if kind == PteKind::Table {
        return false;
    }
    // A leaf whose index and address disagree can never join a superpage.
    if kind != PteKind::Null && idx as u64 != (raw(idx) >> shift) & (CONTIG_NR as u64 - 1) {
        return false;
    }
    let raw_idx = raw(idx);
    // Step 2: while `idx` starts a block, take in the claimed upper halves that continue it.
    let mut b = 0u32;
    while b < CONTIG_LEVEL_SHIFT && idx & (1 << b) == 0 {
        let i = idx | 1 << b;
        let contig = !slips.tests(kind, b) || is_contig(kind, raw(i), raw_idx, shift, b);
        if !contig || get_marker(mk, i) as u32 != b {
            break;
        }
        b += 1;
    }
    // Step 3: record the block found, then merge with claimed lower halves going up.
    let mut idx = idx;
    loop {
        set_marker(mk, idx, b as u8);
        if b >= CONTIG_LEVEL_SHIFT {
            break;
        }
        let i = idx ^ 1 << b;
        let contig = !slips.tests(kind, b) || is_contig(kind, raw(i), raw(idx), shift, b);
        if !contig || get_marker(mk, i) as u32 != b {
            break;
        }
        idx &= !(1 << b);
        b += 1;
    }
    b == CONTIG_LEVEL_SHIFT
}

/// True when the writes of a run of `kind` can never claim anything: `PTE_kind_table`, or
/// leaves whose index and address disagree (`pt-contig-markers.h:71-81`).
fn claims_nothing(kind: PteKind, raw_a: u64, a: u16, shift: u32) -> bool {
    match kind {
        PteKind::Table => true,
        PteKind::Leaf => (raw_a >> shift) & (CONTIG_NR as u64 - 1) != a as u64,
        PteKind::Null => false,
    }
}

/// Memo of a straddling block's claim: not yet computed.
const UNKNOWN: u8 = 2;

/// The claims after a run, for [`pt_update_contig_markers_run`].
struct RunClaims<'a> {
    raw: &'a dyn Fn(u16) -> u64,
    mk: &'a Markers,
    a: u32,
    end: u32,
    shift: u32,
    kind: PteKind,
    nothing: bool,
    slips: Slips,
    /// Claims of the blocks straddling the run's start (the block of level `k` holding `a`),
    /// by `k`: 0 false, 1 true, [`UNKNOWN`]. Only the two blocks per level holding `a` or
    /// `end - 1` straddle the run, so with these memos every claim costs O(levels).
    memo_a: [Cell<u8>; CONTIG_LEVEL_SHIFT as usize + 1],
    /// The same for the blocks holding `end - 1`.
    memo_end: [Cell<u8>; CONTIG_LEVEL_SHIFT as usize + 1],
}

impl RunClaims<'_> {
    /// Whether the block `[s, s + 2^k)` is claimed once the run is written.
    fn claim(&self, s: u32, k: u32) -> bool {
        if k == 0 {
            return true;
        }
        let e = s + (1 << k);
        if e <= self.a || s >= self.end {
            return get_marker(self.mk, s as u16) as u32 >= k;
        }
        if self.nothing {
            return false;
        }
        if s >= self.a && e <= self.end {
            return true;
        }
        // The block straddles a run boundary: it holds `a` or `end - 1`.
        let memo = if s == self.a & !((1 << k) - 1) {
            &self.memo_a[k as usize]
        } else {
            &self.memo_end[k as usize]
        };
        if memo.get() != UNKNOWN {
            return memo.get() == 1;
        }
        let h = s + (1 << (k - 1));
        let v = self.claim(s, k - 1) && self.claim(h, k - 1) && self.halves_match(s, h, k - 1);
        memo.set(v as u8);
        v
    }

    /// `IS_CONTIG` between the first entries of two halves of size `2^b` (true where the
    /// slips skip the test).
    fn halves_match(&self, lo: u32, hi: u32, b: u32) -> bool {
        if !self.slips.tests(self.kind, b) {
            return true;
        }
        let (rl, rh) = ((self.raw)(lo as u16), (self.raw)(hi as u16));
        match self.kind {
            PteKind::Leaf => rl ^ rh == 1u64 << (b + self.shift),
            _ => rl == 0 && rh == 0,
        }
    }

    /// The marker of entry `s` once the run is written: its largest claimed block.
    fn marker(&self, s: u32) -> u8 {
        let top = prefilled_marker(s as u16) as u32;
        let mut k = 0;
        while k < top && self.claim(s, k + 1) {
            k += 1;
        }
        k as u8
    }
}

/// The first entries of the blocks (of every level) holding `a` or `end - 1`, ascending and
/// without repeats: the first `.1` elements of `.0`.
fn boundary_starts(a: u16, end: u16) -> ([u16; 2 * (CONTIG_LEVEL_SHIFT as usize + 1)], usize) {
    let mut out = [0u16; 2 * (CONTIG_LEVEL_SHIFT as usize + 1)];
    let mut n = 0;
    // Both sequences rise as the level falls: merge them from the top level down.
    let (mut i, mut j) = (CONTIG_LEVEL_SHIFT as i32, CONTIG_LEVEL_SHIFT as i32);
    let at = |x: u16, k: i32| x & !((1u16 << k) - 1);
    while i >= 0 || j >= 0 {
        let next = if i >= 0 && (j < 0 || at(a, i) <= at(end - 1, j)) {
            i -= 1;
            at(a, i + 1)
        } else {
            j -= 1;
            at(end - 1, j + 1)
        };
        if n == 0 || out[n - 1] != next {
            out[n] = next;
            n += 1;
        }
    }
    (out, n)
}

/// The markers that calling [`pt_update_contig_markers`] for each entry of `[a, end)` in
/// ascending order would leave, for a run whose entries have *already been written* (so
/// `raw` reads the final entries) while `mk` still holds the markers from before the run.
/// The run must be uniform: `Null` entries all null; `Leaf` entries each one stride above
/// the previous with equal attributes; `Table` anything. Returns what the call for the last
/// entry would return.
pub fn pt_update_contig_markers_run(
    raw: &dyn Fn(u16) -> u64,
    mk: &mut Markers,
    a: u16,
    end: u16,
    level: u8,
    kind: PteKind,
) -> bool {
    pt_update_contig_markers_run_with(raw, mk, a, end, level, kind, Slips::XEN)
}

/// [`pt_update_contig_markers_run`] with the synthetic `slips` of a test-only revision.
pub fn pt_update_contig_markers_run_with(
    raw: &dyn Fn(u16) -> u64,
    mk: &mut Markers,
    a: u16,
    end: u16,
    level: u8,
    kind: PteKind,
    slips: Slips,
) -> bool {
    if a >= end || end > CONTIG_NR {
        return false;
    }
    if end == a + 1 {
        // One entry: its write clears its marker, then the per-entry update (the same
        // result in O(levels)).
        set_marker(mk, a, 0);
        return pt_update_contig_markers_with(raw, mk, a, level, kind, slips);
    }
    let shift = level_shift(level);
    let nothing = claims_nothing(kind, raw(a), a, shift);
    // The only entries whose blocks straddle a run boundary: the block starts above `a`
    // and above `end - 1`, ascending and without repeats.
    let (starts, n) = boundary_starts(a, end);
    let mut values = [0u8; 2 * (CONTIG_LEVEL_SHIFT as usize + 1)];
    {
        let rc = RunClaims {
            raw,
            mk,
            a: a as u32,
            end: end as u32,
            shift,
            kind,
            nothing,
            slips,
            memo_a: std::array::from_fn(|_| Cell::new(UNKNOWN)),
            memo_end: std::array::from_fn(|_| Cell::new(UNKNOWN)),
        };
        for (v, &s) in values.iter_mut().zip(&starts[..n]) {
            *v = rc.marker(s as u32);
        }
    }
    if nothing {
        mk.fill(a, end - a, Marker(0));
    } else {
        mk.fill(a, end - a, Marker::default());
    }
    for (&s, &v) in starts[..n].iter().zip(&values) {
        if get_marker(mk, s) != v {
            set_marker(mk, s, v);
        }
    }
    !nothing && get_marker(mk, 0) as u32 == CONTIG_LEVEL_SHIFT
}

/// The first entry `w` of `[a, e)` at which writing the entries `expect(a)`, `expect(a+1)`,
/// … one after another (each followed by [`pt_update_contig_markers`]) would make the call
/// return true, or `None`. Evaluated *before* any of the writes, on the current entries
/// `raw` and markers `mk`; `expect(i)` must give, for every `i` of the table, the entry a
/// wholly contiguous table would hold there (null for `Null`; the run's leaves extended to
/// the whole table for `Leaf`). Once the first `w` is known, the run up to `w` goes through
/// [`pt_update_contig_markers_run`] and the caller acts on the answer as Xen would.
pub fn pt_contig_first_complete(
    raw: &dyn Fn(u16) -> u64,
    mk: &Markers,
    a: u16,
    e: u16,
    level: u8,
    kind: PteKind,
    expect: &dyn Fn(u16) -> u64,
) -> Option<u16> {
    pt_contig_first_complete_with(raw, mk, a, e, level, kind, expect, Slips::XEN)
}

/// [`pt_contig_first_complete`] with the synthetic `slips` of a test-only revision: where
/// the halves are not compared, a half the run does not write needs only to be claimed
/// (its marker), whatever it holds.
#[allow(clippy::too_many_arguments)]
pub fn pt_contig_first_complete_with(
    raw: &dyn Fn(u16) -> u64,
    mk: &Markers,
    a: u16,
    e: u16,
    level: u8,
    kind: PteKind,
    expect: &dyn Fn(u16) -> u64,
    slips: Slips,
) -> Option<u16> {
    if a >= e || e > CONTIG_NR {
        return None;
    }
    let shift = level_shift(level);
    if claims_nothing(kind, expect(a), a, shift) {
        return None;
    }
    const HALF: u16 = CONTIG_NR / 2;
    let half_k = CONTIG_LEVEL_SHIFT - 1;
    let loose_halves = !slips.tests(kind, half_k);
    // A claimed block whose first entry is the expected one holds only expected entries.
    // With the halves not compared, a whole half the run does not write (the only blocks of
    // 256 entries the prefix or a suffix holds) only has to be claimed.
    let block_ok = |s: u16, k: u32| {
        get_marker(mk, s) as u32 >= k && (raw(s) == expect(s) || loose_halves && k == half_k)
    };
    // The entries below the run are never written by it: their maximal blocks must be
    // claimed and expected already.
    let mut s = 0u16;
    for k in (0..CONTIG_LEVEL_SHIFT).rev() {
        if a & (1 << k) != 0 {
            if !block_ok(s, k) {
                return None;
            }
            s += 1 << k;
        }
    }
    // After writing `[a, w]` the table is complete iff the entries from `w + 1` on are, and
    // that only gets easier as `w` grows: find the smallest such `w`.
    let suffix_ok = |x: u16| {
        let mut s = x;
        while s < CONTIG_NR {
            let k = s.trailing_zeros();
            if !block_ok(s, k) {
                return false;
            }
            s += 1 << k;
        }
        true
    };
    // The smallest `x` of `[lo, hi]` with `suffix_ok(x)`, where that is monotone.
    let first_ok = |lo: u16, hi: u16| {
        if lo > hi || !suffix_ok(hi) {
            return None;
        }
        let (mut lo, mut hi) = (lo, hi);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if suffix_ok(mid) {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Some(lo)
    };
    // With loose halves the answer is monotone only within a half: ending the run in the
    // lower half leaves the upper half unwritten (only its claim counts), going on into it
    // makes its entries count. Try the lower half first.
    if loose_halves && a < HALF && e > HALF {
        if let Some(x) = first_ok(a + 1, HALF) {
            return Some(x - 1);
        }
        return first_ok(HALF + 1, e).map(|x| x - 1);
    }
    first_ok(a + 1, e).map(|x| x - 1)
}

/// The marker updates of a vendor's tables with the slips of the revision: the plain forms
/// ([`PgTables::update_contig`] and its neighbours in `x86_iommu.rs`, Xen's) when there are
/// none. The map and unmap paths of both vendors call these where a slip can apply
/// (`PTE_kind_leaf` and `PTE_kind_null` updates).
impl<E: IoPte> PgTables<E> {
    /// `pt_update_contig_markers(table t, idx, level, kind)` with `slips`.
    pub(crate) fn update_contig_with(
        &mut self,
        t: u64,
        idx: u16,
        level: u8,
        kind: PteKind,
        slips: Slips,
    ) -> bool {
        let (Some(tab), Some(mk)) = (self.entries.get(t), self.markers.get_mut(t)) else {
            return false;
        };
        pt_update_contig_markers_with(&|i| tab.get(i).raw(), mk, idx, level, kind, slips)
    }

    /// The markers `pt_update_contig_markers` leaves after each entry of `[a, end)` of the
    /// table in `t` (already written) was updated in turn, under `slips`; what the last
    /// call returns.
    pub(crate) fn update_contig_run_with(
        &mut self,
        t: u64,
        a: u16,
        end: u16,
        level: u8,
        kind: PteKind,
        slips: Slips,
    ) -> bool {
        let (Some(tab), Some(mk)) = (self.entries.get(t), self.markers.get_mut(t)) else {
            return false;
        };
        pt_update_contig_markers_run_with(&|i| tab.get(i).raw(), mk, a, end, level, kind, slips)
    }

    /// The first entry of `[a, e)` whose per-entry update under `slips` would report the
    /// table complete (see [`pt_contig_first_complete`]).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn first_complete_with(
        &self,
        t: u64,
        a: u16,
        e: u16,
        level: u8,
        kind: PteKind,
        expect: &dyn Fn(u16) -> u64,
        slips: Slips,
    ) -> Option<u16> {
        let (Some(tab), Some(mk)) = (self.entries.get(t), self.markers.get(t)) else {
            return None;
        };
        pt_contig_first_complete_with(&|i| tab.get(i).raw(), mk, a, e, level, kind, expect, slips)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Lcg;

    /// Marker bits of a VT-d `dma_pte` (bits 52–55) and of an AMD PTE (`ign0`, bits 1–4).
    const VTD_MASK: u64 = 0xf << 52;
    const AMD_MASK: u64 = 0x1e;

    /// A literal implementation of the algorithm on a plain array whose entries carry their
    /// markers in the bits of `mask`, written from the description in the module comment.
    struct Plain {
        pt: [u64; 512],
        mask: u64,
        /// The synthetic slips, written literally: at `b == 8` the `IS_CONTIG` of the
        /// kind they name is not evaluated.
        slips: Slips,
    }

    impl Plain {
        fn new(mask: u64, prefill: bool) -> Self {
            let mut p = Plain {
                pt: [0; 512],
                mask,
                slips: Slips::XEN,
            };
            if prefill {
                for i in 0..512 {
                    let m = if i == 0 {
                        9
                    } else {
                        (i as u32).trailing_zeros() as u64
                    };
                    p.pt[i] = p.put(0, m);
                }
            }
            p
        }
        fn shift_of_mask(&self) -> u32 {
            self.mask.trailing_zeros()
        }
        fn get(&self, i: usize) -> u64 {
            (self.pt[i] & self.mask) >> self.shift_of_mask()
        }
        fn put(&self, e: u64, m: u64) -> u64 {
            (e & !self.mask) | ((m << self.shift_of_mask()) & self.mask)
        }
        fn set(&mut self, i: usize, m: u64) {
            self.pt[i] = self.put(self.pt[i], m);
        }
        /// Writes `e` (no marker bits) as a whole entry: the marker field ends up 0.
        fn write(&mut self, i: usize, e: u64) {
            self.pt[i] = e & !self.mask;
        }
        fn contig(&self, kind: PteKind, i: usize, idx: usize, shift: u32, b: u32) -> bool {
            let skipped = match kind {
                PteKind::Leaf => self.slips.leaf_halves_unchecked,
                PteKind::Null => self.slips.null_halves_unchecked,
                PteKind::Table => false,
            };
            if b == 8 && skipped {
                return true;
            }
            if kind == PteKind::Leaf {
                (self.pt[i] ^ self.pt[idx]) & !self.mask == 1u64 << (b + shift)
            } else {
                self.pt[i] & !self.mask == 0
            }
        }
        fn update(&mut self, idx: usize, level: u32, kind: PteKind) -> bool {
            let shift = (level - 1) * 9 + 12;
            assert_eq!(self.get(idx), 0);
            let mut i = idx;
            while i != 0 {
                let b = i.trailing_zeros();
                i &= !(1usize << b);
                if self.get(i) <= b as u64 {
                    break;
                }
                self.set(i, b as u64);
            }
            if kind == PteKind::Table {
                return false;
            }
            if kind != PteKind::Null && idx as u64 != ((self.pt[idx] & !self.mask) >> shift) & 511 {
                return false;
            }
            let mut b = 0u32;
            while b < 9 && idx & (1 << b) == 0 {
                let i = idx | 1 << b;
                if !self.contig(kind, i, idx, shift, b) || self.get(i) != b as u64 {
                    break;
                }
                b += 1;
            }
            let mut idx = idx;
            loop {
                self.set(idx, b as u64);
                if b >= 9 {
                    break;
                }
                let i = idx ^ 1 << b;
                if !self.contig(kind, i, idx, shift, b) || self.get(i) != b as u64 {
                    break;
                }
                idx &= !(1 << b);
                b += 1;
            }
            b == 9
        }
    }

    /// The model's table: entries beside a marker store.
    #[derive(Clone)]
    struct Model {
        e: Vec<u64>,
        mk: Markers,
        slips: Slips,
    }

    impl Model {
        fn new(prefill: bool) -> Self {
            Model {
                e: vec![0; 512],
                mk: if prefill {
                    markers_prefilled()
                } else {
                    markers_cleared()
                },
                slips: Slips::XEN,
            }
        }
        fn write(&mut self, i: u16, e: u64) {
            self.e[i as usize] = e;
            set_marker(&mut self.mk, i, 0);
        }
        fn update(&mut self, idx: u16, level: u8, kind: PteKind) -> bool {
            let e = &self.e;
            let slips = self.slips;
            pt_update_contig_markers_with(&|i| e[i as usize], &mut self.mk, idx, level, kind, slips)
        }
    }

    /// Entries used by the tests, without marker bits, for a table at `level` under the
    /// `mask` encoding: congruent leaves (two attribute sets; and, as 6, from another
    /// base), a leaf off by one entry (index and address disagree), a table pointer, null.
    fn content(c: u8, idx: u16, level: u8, vtd: bool) -> (u64, PteKind) {
        let shift = level_shift(level);
        let attr = |alt: bool| -> u64 {
            match (vtd, alt) {
                (true, false) => 3 | 1 << 11,
                (true, true) => 1 | 1 << 11,
                (false, false) => 1 | 1 << 60 | 3 << 61,
                (false, true) => 1 | 1 << 60 | 1 << 61,
            }
        };
        let base = 0x4_0000u64 << 12;
        match c {
            0 => (0, PteKind::Null),
            1 => (
                (base + ((idx as u64) << shift)) | attr(false),
                PteKind::Leaf,
            ),
            2 => ((base + ((idx as u64) << shift)) | attr(true), PteKind::Leaf),
            3 => (
                (base + ((idx as u64 + 1) << shift)) | attr(false),
                PteKind::Leaf,
            ),
            4 => (
                (base + ((idx as u64) << shift)) | attr(false),
                PteKind::Table,
            ),
            6 => (
                (2 * base + ((idx as u64) << shift)) | attr(false),
                PteKind::Leaf,
            ),
            _ if vtd => (0x5_0000u64 << 12 | 3, PteKind::Table),
            _ => (
                0x5_0000u64 << 12 | 1 | (level as u64 - 1) << 9 | 3 << 61,
                PteKind::Table,
            ),
        }
    }

    fn check_same(p: &Plain, m: &Model, upto: usize, what: &str) {
        for i in 0..upto {
            assert_eq!(
                p.get(i),
                get_marker(&m.mk, i as u16) as u64,
                "{what}: marker {i}"
            );
            assert_eq!(p.pt[i] & !p.mask, m.e[i], "{what}: entry {i}");
        }
    }

    /// Every sequence of three updates of entries 0..8 with every content, from both
    /// prefills, over a background of null or wholly contiguous entries, for both
    /// encodings and two levels: the marker function equals the array implementation.
    #[test]
    fn exhaustive_small_patterns_match_plain_array() {
        let mut cases = 0u64;
        let mut completes = [0u64; 2];
        for (n, slips) in [Slips::XEN, BOTH].into_iter().enumerate() {
            for vtd in [true, false] {
                let mask = if vtd { VTD_MASK } else { AMD_MASK };
                for level in [1u8, 2] {
                    for prefill in [true, false] {
                        for background in 0..4u8 {
                            let (c, k) =
                                exhaustive_small(slips, vtd, mask, level, prefill, background);
                            cases += c;
                            completes[n] += k;
                        }
                    }
                }
            }
        }
        assert_eq!(cases, 2 * 2 * 2 * 2 * 4 * 48 * 48 * 48);
        // The halves that differ (backgrounds 2 and 3) complete only with the slips.
        assert!(completes[1] > completes[0], "{completes:?}");
    }

    /// Both slips.
    const BOTH: Slips = Slips {
        leaf_halves_unchecked: true,
        null_halves_unchecked: true,
    };
    /// Every combination of slips.
    const ALL_SLIPS: [Slips; 4] = [
        Slips::XEN,
        Slips {
            leaf_halves_unchecked: true,
            null_halves_unchecked: false,
        },
        Slips {
            leaf_halves_unchecked: false,
            null_halves_unchecked: true,
        },
        BOTH,
    ];

    /// One setup of [`exhaustive_small_patterns_match_plain_array`]: entries 8.. hold the
    /// `background` (0 null, 1 contiguous leaves, 2 contiguous leaves whose upper half has
    /// other attributes, 3 null below 256 and contiguous leaves above: the halves differ,
    /// which only the last level's test sees), then every three updates of entries 0..8.
    fn exhaustive_small(
        slips: Slips,
        vtd: bool,
        mask: u64,
        level: u8,
        prefill: bool,
        background: u8,
    ) -> (u64, u64) {
        let (mut cases, mut completes) = (0, 0);
        let mut p0 = Plain::new(mask, prefill);
        p0.slips = slips;
        let mut m0 = Model::new(prefill);
        m0.slips = slips;
        for i in 8..512u16 {
            let c = match (background, i < 256) {
                (2, false) => 2,
                (2, true) => 1,
                (3, true) => 0,
                (3, false) => 1,
                (c, _) => c,
            };
            let (e, _) = content(c, i, level, vtd);
            p0.pt[i as usize] = p0.put(e, p0.get(i as usize));
            m0.e[i as usize] = e;
        }
        let steps: Vec<(u16, u8)> = (0..8u16)
            .flat_map(|i| (0..6u8).map(move |c| (i, c)))
            .collect();
        for s1 in &steps {
            for s2 in &steps {
                for s3 in &steps {
                    let mut p = Plain {
                        pt: p0.pt,
                        mask,
                        slips,
                    };
                    let mut m = m0.clone();
                    for &(i, c) in [s1, s2, s3] {
                        let (e, kind) = content(c, i, level, vtd);
                        p.write(i as usize, e);
                        m.write(i, e);
                        let rp = p.update(i as usize, level as u32, kind);
                        let rm = m.update(i, level, kind);
                        assert_eq!(rp, rm, "{slips:?} {s1:?} {s2:?} {s3:?}");
                        completes += rp as u64;
                    }
                    check_same(&p, &m, 8, "small");
                    cases += 1;
                }
            }
        }
        // Whole-table check once per setup.
        check_same(&p0, &m0, 512, "background");
        (cases, completes)
    }

    /// Long random sequences over the whole table, biased towards neighbouring entries.
    #[test]
    fn random_sequences_match_plain_array() {
        let mut rng = Lcg(11);
        for case in 0..400 {
            let vtd = case % 2 == 0;
            let slips = ALL_SLIPS[(case / 2) % 4];
            let mask = if vtd { VTD_MASK } else { AMD_MASK };
            let level = 1 + rng.below(3) as u8;
            let prefill = rng.below(4) != 0;
            let mut p = Plain::new(mask, prefill);
            p.slips = slips;
            let mut m = Model::new(prefill);
            m.slips = slips;
            let mut at = rng.below(512) as u16;
            for step in 0..400 {
                at = if rng.below(4) == 0 {
                    rng.below(512) as u16
                } else {
                    (at + 1) % 512
                };
                let c = [0, 0, 1, 1, 1, 2, 3, 4, 5, 6][rng.below(10) as usize];
                let (e, kind) = content(c, at, level, vtd);
                p.write(at as usize, e);
                m.write(at, e);
                let rp = p.update(at as usize, level as u32, kind);
                let rm = m.update(at, level, kind);
                assert_eq!(rp, rm, "case {case} step {step}");
            }
            check_same(&p, &m, 512, "random");
        }
    }

    /// A random table state reached by per-entry updates, for the range-form tests.
    fn random_state(rng: &mut Lcg, level: u8, vtd: bool, slips: Slips) -> Model {
        let mut m = Model::new(rng.below(5) != 0);
        m.slips = slips;
        let n = match rng.below(4) {
            0 => {
                // A shattered table: wholly contiguous leaves, prefilled markers.
                m = Model::new(true);
                m.slips = slips;
                for i in 0..512 {
                    m.e[i as usize] = content(1, i, level, vtd).0;
                }
                rng.below(6)
            }
            1 => rng.below(6),
            2 => {
                // Halves written entry by entry with different contents (null, leaves of
                // two attribute sets or two bases), one half after the other: what only
                // the last level's test tells apart.
                let halves = [0u16, 256];
                let first = rng.below(2) as usize;
                for h in [halves[first], halves[1 - first]] {
                    let c = [0u8, 1, 2, 6][rng.below(4) as usize];
                    for i in h..h + 256 {
                        let (e, kind) = content(c, i, level, vtd);
                        m.write(i, e);
                        m.update(i, level, kind);
                    }
                }
                rng.below(4)
            }
            _ => rng.below(700),
        };
        let mut at = rng.below(512) as u16;
        for _ in 0..n {
            at = if rng.below(3) == 0 {
                rng.below(512) as u16
            } else {
                (at + 1) % 512
            };
            let c = [0, 0, 0, 1, 1, 1, 1, 2, 3, 4, 5][rng.below(11) as usize];
            let (e, kind) = content(c, at, level, vtd);
            m.write(at, e);
            m.update(at, level, kind);
        }
        m
    }

    /// The range forms equal the per-entry function: markers after a run, what the last
    /// call returns, and the first call that returns true.
    #[test]
    fn run_forms_equal_per_entry_updates() {
        let mut rng = Lcg(5);
        let mut completes = [0u32; 4];
        let mut slip_only = [0u32; 4];
        for case in 0..6000 {
            let vtd = case % 2 == 0;
            let sl = (case / 2) % 4;
            let slips = ALL_SLIPS[sl];
            let level = 1 + rng.below(2) as u8;
            let m0 = random_state(&mut rng, level, vtd, slips);
            let a = rng.below(512) as u16;
            let len = match rng.below(4) {
                0 => 1,
                1 => 1 + rng.below(16) as u16,
                _ => 1 + rng.below(512 - a as u64) as u16,
            }
            .min(512 - a);
            let e = a + len;
            let c = [0u8, 0, 1, 1, 2, 3, 4, 6][rng.below(8) as usize];
            let (_, kind) = content(c, a, level, vtd);
            let expect = |i: u16| content(c, i, level, vtd).0;
            // Per entry.
            let mut seq = m0.clone();
            let mut first = None;
            let mut last = false;
            for i in a..e {
                seq.write(i, expect(i));
                last = seq.update(i, level, kind);
                if last && first.is_none() {
                    first = Some(i);
                }
            }
            // The same writes through Xen's function, to count what the slips change.
            let mut xen = m0.clone();
            xen.slips = Slips::XEN;
            let first_xen = (a..e).find(|&i| {
                xen.write(i, expect(i));
                xen.update(i, level, kind)
            });
            slip_only[sl] += (first.is_some() && first_xen != first) as u32;
            // First completion, evaluated before the writes.
            let f = {
                let ent = &m0.e;
                let get = |i: u16| ent[i as usize];
                pt_contig_first_complete_with(&get, &m0.mk, a, e, level, kind, &expect, slips)
            };
            assert_eq!(
                f, first,
                "case {case}: first complete of {a}..{e} kind {kind:?} {slips:?}"
            );
            completes[sl] += first.is_some() as u32;
            // Up to the first completion (or the end), as a run.
            let end = first.map_or(e, |w| w + 1);
            let mut seq_end = m0.clone();
            let mut last_end = false;
            for i in a..end {
                seq_end.write(i, expect(i));
                last_end = seq_end.update(i, level, kind);
            }
            let mut run = m0.clone();
            for i in a..end {
                run.e[i as usize] = expect(i);
            }
            let r = {
                let ent = &run.e;
                let get = |i: u16| ent[i as usize];
                pt_update_contig_markers_run_with(&get, &mut run.mk, a, end, level, kind, slips)
            };
            assert_eq!(
                r, last_end,
                "case {case}: run {a}..{end} kind {kind:?} {slips:?}"
            );
            assert_eq!(
                all_markers(&run.mk),
                all_markers(&seq_end.mk),
                "case {case}: run {a}..{end} kind {kind:?} {slips:?}"
            );
            if first.is_none() {
                assert_eq!(last, last_end);
            }
        }
        for sl in 0..4 {
            assert!(
                completes[sl] > 50,
                "too few completions exercised with {:?}: {completes:?}",
                ALL_SLIPS[sl]
            );
        }
        assert_eq!(slip_only[0], 0);
        for sl in 1..4 {
            assert!(
                slip_only[sl] >= 5,
                "the slips {:?} changed too few answers: {slip_only:?}",
                ALL_SLIPS[sl]
            );
        }
    }

    #[test]
    fn boundary_starts_are_the_sorted_block_starts() {
        // Every run of a table: the merge equals sorting and deduplicating the block starts.
        for a in 0..CONTIG_NR {
            for end in a + 1..=CONTIG_NR {
                let mut want: Vec<u16> = (0..=CONTIG_LEVEL_SHIFT)
                    .flat_map(|k| [a & !((1 << k) - 1), (end - 1) & !((1 << k) - 1)])
                    .collect();
                want.sort_unstable();
                want.dedup();
                let (got, n) = boundary_starts(a, end);
                assert_eq!(&got[..n], &want[..], "a={a} end={end}");
            }
        }
    }

    #[test]
    fn prefilled_and_cleared() {
        let p = markers_prefilled();
        assert_eq!(get_marker(&p, 0), 9);
        assert_eq!(get_marker(&p, 256), 8);
        assert_eq!(get_marker(&p, 3), 0);
        assert_eq!(get_marker(&p, 12), 2);
        let c = markers_cleared();
        assert!(all_markers(&c).iter().all(|&m| m == 0));
        let mut q = markers_prefilled();
        set_marker(&mut q, 12, 2);
        assert_eq!(q.run_count(), 0, "the prefilled value is not stored");
    }
}
