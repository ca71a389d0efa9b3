//! Sparse 512-entry page tables stored by machine frame.
//!
//! A table holds only its non-zero entries, as *runs*: `len` consecutive entries
//! where entry `k` is `base.nth(k, level)` (the same flags, the frame advancing by
//! the entry's size). A split superpage is one run, never 512 stored entries, and a
//! 1 GiB leaf is a single entry.

use crate::frames::{TABLE_POOL_BASE, TABLE_POOL_STRIDE};
use std::collections::BTreeMap;

/// Entries per table (`EPT_PAGETABLE_ENTRIES`, `L1_PAGETABLE_ENTRIES`, `PTE_PER_TABLE_SIZE`).
pub const ENTRIES: u16 = 512;

/// Frames covered by one entry of a table at `level` (level 1 holds 4 KiB entries).
pub fn pages_per_entry(level: u8) -> u64 {
    1u64 << (9 * (level as u32 - 1))
}

/// Frames covered by a whole table at `level`.
pub fn pages_per_table(level: u8) -> u64 {
    1u64 << (9 * level as u32)
}

/// Index of `gfn` in a table at `level`.
pub fn index_of(gfn: u64, level: u8) -> u16 {
    ((gfn >> (9 * (level as u32 - 1))) & 511) as u16
}

/// A page-table entry format that can be stored in runs.
pub trait Pte: Copy + Eq + Default + std::fmt::Debug {
    /// The `k`-th entry of a run starting with `self` in a table at `level`.
    fn nth(&self, k: u64, level: u8) -> Self;
}

/// One stored run of a table: first index, length, first entry.
#[derive(Clone, Copy, Debug, Default)]
struct Run<E> {
    start: u16,
    len: u16,
    first: E,
}

impl<E> Run<E> {
    fn end(&self) -> u16 {
        self.start + self.len
    }
}

/// Runs kept in the table itself up to this count (most tables hold one to three).
const INLINE_RUNS: usize = 3;

/// A sorted list of runs: inline while short, then on the heap.
#[derive(Clone)]
enum RunList<E> {
    /// The first `.0` elements of the array are the runs.
    Inline(u8, [Run<E>; INLINE_RUNS]),
    /// Too many runs to keep inline.
    Heap(Vec<Run<E>>),
}

/// The live runs only (the unused inline slots hold leftovers that mean nothing), so two
/// tables with the same runs print the same whatever their history.
impl<E: std::fmt::Debug> std::fmt::Debug for RunList<E> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let live = match self {
            RunList::Inline(n, a) => &a[..*n as usize],
            RunList::Heap(v) => &v[..],
        };
        f.debug_list().entries(live).finish()
    }
}

impl<E: Pte> RunList<E> {
    fn new() -> Self {
        RunList::Inline(0, [Run::default(); INLINE_RUNS])
    }

    fn as_slice(&self) -> &[Run<E>] {
        match self {
            RunList::Inline(n, a) => &a[..*n as usize],
            RunList::Heap(v) => v,
        }
    }

    fn as_mut_slice(&mut self) -> &mut [Run<E>] {
        match self {
            RunList::Inline(n, a) => &mut a[..*n as usize],
            RunList::Heap(v) => v,
        }
    }

    fn insert(&mut self, pos: usize, r: Run<E>) {
        match self {
            RunList::Inline(n, a) if (*n as usize) < INLINE_RUNS => {
                let len = *n as usize;
                a.copy_within(pos..len, pos + 1);
                a[pos] = r;
                *n += 1;
            }
            RunList::Inline(n, a) => {
                let mut v = Vec::with_capacity(4 * INLINE_RUNS);
                v.extend_from_slice(&a[..*n as usize]);
                v.insert(pos, r);
                *self = RunList::Heap(v);
            }
            RunList::Heap(v) => v.insert(pos, r),
        }
    }

    /// Removes the runs at positions `[a, b)`.
    fn remove_range(&mut self, a: usize, b: usize) {
        if a >= b {
            return;
        }
        match self {
            RunList::Inline(n, arr) => {
                let len = *n as usize;
                arr.copy_within(b..len, a);
                *n -= (b - a) as u8;
            }
            RunList::Heap(v) => {
                v.drain(a..b);
            }
        }
    }
}

/// One table: its level and its non-zero entries as runs sorted by first index.
#[derive(Clone, Debug)]
pub struct Table<E> {
    /// Level of the table (4 = root of a 4-level structure, 1 = 4 KiB leaves).
    pub level: u8,
    /// Non-overlapping runs, ascending by first index (a table holds few runs,
    /// except a table of pointers, which holds one per pointer).
    runs: RunList<E>,
}

impl<E: Pte> Table<E> {
    /// An all-zero table.
    pub fn new(level: u8) -> Self {
        Table {
            level,
            runs: RunList::new(),
        }
    }

    /// Number of runs whose first index is at most `idx`. Tries first the run a
    /// single-run table or a table of one run per index would hold `idx` in.
    fn count_upto(&self, idx: u16) -> usize {
        let runs = self.runs.as_slice();
        let n = runs.len();
        if n == 0 {
            return 0;
        }
        let g = (idx as usize).min(n - 1);
        if runs[g].start <= idx && (g + 1 == n || runs[g + 1].start > idx) {
            return g + 1;
        }
        runs.partition_point(|r| r.start <= idx)
    }

    /// Number of runs whose first index is below `idx`.
    fn count_below(&self, idx: u16) -> usize {
        let p = self.count_upto(idx);
        match p.checked_sub(1) {
            Some(i) if self.runs.as_slice()[i].start == idx => i,
            _ => p,
        }
    }

    /// The entry at `idx` (zero when absent).
    pub fn get(&self, idx: u16) -> E {
        let p = self.count_upto(idx);
        match p.checked_sub(1).map(|i| self.runs.as_slice()[i]) {
            Some(r) if idx < r.end() => r.first.nth((idx - r.start) as u64, self.level),
            _ => E::default(),
        }
    }

    /// Cuts runs so that `idx` starts a run (if it lies inside one); returns the
    /// number of runs whose first index is below `idx` afterwards.
    fn cut(&mut self, idx: u16) -> usize {
        let p = self.count_below(idx);
        if let Some(i) = p.checked_sub(1) {
            let r = self.runs.as_slice()[i];
            if idx < r.end() {
                self.runs.as_mut_slice()[i].len = idx - r.start;
                let tail = Run {
                    start: idx,
                    len: r.end() - idx,
                    first: r.first.nth((idx - r.start) as u64, self.level),
                };
                self.runs.insert(p, tail);
            }
        }
        p
    }

    /// Sets `len` entries from `start` to the run starting with `base`.
    pub fn fill(&mut self, start: u16, len: u16, base: E) {
        if len == 0 {
            return;
        }
        let end = start + len;
        let a = self.cut(start);
        let b = if end < ENTRIES {
            self.cut(end)
        } else {
            self.runs.as_slice().len()
        };
        if base != E::default() {
            let run = Run {
                start,
                len,
                first: base,
            };
            if b > a {
                self.runs.as_mut_slice()[a] = run;
                self.runs.remove_range(a + 1, b);
            } else {
                self.runs.insert(a, run);
            }
            self.join_neighbours(a);
        } else {
            self.runs.remove_range(a, b);
        }
    }

    /// Joins the run at position `p` with the run right before and the run right after
    /// it where one continues the other (the next run's first entry is the `len`-th of
    /// the previous one): a table written entry by entry with uniform content stays one
    /// run, so walks and comparisons cost its runs, not its entries. Reading back is
    /// unchanged: `nth` composes (`e.nth(a).nth(b) == e.nth(a + b)`).
    fn join_neighbours(&mut self, p: usize) {
        let level = self.level;
        let continues = |a: &Run<E>, b: &Run<E>| {
            a.end() == b.start && a.first.nth(a.len as u64, level) == b.first
        };
        let runs = self.runs.as_mut_slice();
        let mut p = p;
        if p > 0 && continues(&runs[p - 1], &runs[p]) {
            runs[p - 1].len += runs[p].len;
            self.runs.remove_range(p, p + 1);
            p -= 1;
        }
        let runs = self.runs.as_mut_slice();
        if p + 1 < runs.len() && continues(&runs[p], &runs[p + 1]) {
            runs[p].len += runs[p + 1].len;
            self.runs.remove_range(p + 1, p + 2);
        }
    }

    /// Sets one entry.
    pub fn set(&mut self, idx: u16, e: E) {
        self.fill(idx, 1, e);
    }

    /// Runs intersecting `[lo, hi)`, clipped: `(first index, length, first entry)`.
    pub fn runs_in(&self, lo: u16, hi: u16) -> Vec<(u16, u16, E)> {
        self.iter_runs(lo, hi).collect()
    }

    /// Like [`Self::runs_in`], without allocating.
    pub fn iter_runs(&self, lo: u16, hi: u16) -> impl Iterator<Item = (u16, u16, E)> + '_ {
        let runs = self.runs.as_slice();
        let p = self.count_below(lo);
        let head = p.checked_sub(1).and_then(|i| {
            let r = runs[i];
            (lo < r.end()).then(|| {
                let end = r.end().min(hi);
                (lo, end - lo, r.first.nth((lo - r.start) as u64, self.level))
            })
        });
        let rest = runs[p..]
            .iter()
            .take_while(move |r| r.start < hi)
            .map(move |r| (r.start, r.end().min(hi) - r.start, r.first));
        head.into_iter().chain(rest)
    }

    /// Number of stored runs (a cost measure).
    pub fn run_count(&self) -> usize {
        self.runs.as_slice().len()
    }
}

/// All tables of one structure, keyed by the machine frame that holds them.
///
/// Table frames come from the pool of [`crate::frames`] (fixed base and stride),
/// so they are stored in a vector indexed by pool slot; any other frame goes to
/// an ordered map.
#[derive(Clone, Debug, Default)]
pub struct TableStore<E> {
    slots: Vec<Option<Table<E>>>,
    others: BTreeMap<u64, Table<E>>,
    count: usize,
}

/// Pool slot of `mfn`, if it is a frame of the table pool.
pub(crate) fn pool_slot(mfn: u64) -> Option<usize> {
    let off = mfn.checked_sub(TABLE_POOL_BASE)?;
    if off % TABLE_POOL_STRIDE != 0 {
        return None;
    }
    usize::try_from(off / TABLE_POOL_STRIDE).ok()
}

/// Frame of pool slot `slot`.
fn slot_frame(slot: usize) -> u64 {
    TABLE_POOL_BASE + slot as u64 * TABLE_POOL_STRIDE
}

impl<E: Pte> TableStore<E> {
    /// An empty store.
    pub fn new() -> Self {
        TableStore {
            slots: Vec::new(),
            others: BTreeMap::new(),
            count: 0,
        }
    }
    /// Installs a zeroed table at `mfn`.
    pub fn insert(&mut self, mfn: u64, level: u8) {
        let old = match pool_slot(mfn) {
            Some(s) if s < (1 << 24) => {
                if s >= self.slots.len() {
                    self.slots.resize_with(s + 1, || None);
                }
                self.slots[s].replace(Table::new(level))
            }
            _ => self.others.insert(mfn, Table::new(level)),
        };
        if old.is_none() {
            self.count += 1;
        }
    }
    /// Drops the table held in `mfn` (its frame is being freed).
    pub fn remove(&mut self, mfn: u64) -> Option<Table<E>> {
        let old = match pool_slot(mfn) {
            Some(s) if s < (1 << 24) => self.slots.get_mut(s).and_then(Option::take),
            _ => self.others.remove(&mfn),
        };
        if old.is_some() {
            self.count -= 1;
        }
        old
    }
    /// The table in `mfn`, if that frame holds one of this structure's tables.
    pub fn get(&self, mfn: u64) -> Option<&Table<E>> {
        match pool_slot(mfn) {
            Some(s) if s < (1 << 24) => self.slots.get(s)?.as_ref(),
            _ => self.others.get(&mfn),
        }
    }
    /// Mutable access to the table in `mfn`.
    pub fn get_mut(&mut self, mfn: u64) -> Option<&mut Table<E>> {
        match pool_slot(mfn) {
            Some(s) if s < (1 << 24) => self.slots.get_mut(s)?.as_mut(),
            _ => self.others.get_mut(&mfn),
        }
    }
    /// Number of tables.
    pub fn len(&self) -> usize {
        self.count
    }
    /// True when there is no table.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
    /// Frames holding tables, ascending.
    pub fn frames(&self) -> impl Iterator<Item = (u64, &Table<E>)> {
        let mut pool = self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(s, t)| Some((slot_frame(s), t.as_ref()?)))
            .peekable();
        let mut others = self.others.iter().map(|(k, v)| (*k, v)).peekable();
        std::iter::from_fn(move || match (pool.peek(), others.peek()) {
            (Some(a), Some(b)) if b.0 < a.0 => others.next(),
            (Some(_), _) => pool.next(),
            (None, _) => others.next(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, PartialEq, Eq, Default, Debug)]
    struct T(u64);
    impl Pte for T {
        fn nth(&self, k: u64, level: u8) -> Self {
            if self.0 == 0 {
                T(0)
            } else {
                T(self.0 + k * pages_per_entry(level))
            }
        }
    }

    #[test]
    fn runs_split_and_read_back() {
        let mut t: Table<T> = Table::new(1);
        t.fill(0, 512, T(0x1000));
        assert_eq!(t.run_count(), 1);
        assert_eq!(t.get(7), T(0x1007));
        t.set(7, T(0x9999));
        assert_eq!(t.get(6), T(0x1006));
        assert_eq!(t.get(7), T(0x9999));
        assert_eq!(t.get(8), T(0x1008));
        assert_eq!(t.run_count(), 3);
        t.set(8, T::default());
        assert_eq!(t.get(8), T(0));
        assert_eq!(t.get(9), T(0x1009));
        let r = t.runs_in(5, 12);
        assert_eq!(r[0], (5, 2, T(0x1005)));
        assert_eq!(r[1], (7, 1, T(0x9999)));
        assert_eq!(r[2], (9, 3, T(0x1009)));
    }

    /// The per-entry form: what a table is, 512 entries.
    struct Flat([T; 512]);

    impl Flat {
        fn fill(&mut self, start: u16, len: u16, base: T, level: u8) {
            for k in 0..len {
                self.0[(start + k) as usize] = base.nth(k as u64, level);
            }
        }
    }

    /// Expands runs to entries.
    fn expand(runs: &[(u16, u16, T)], lo: u16, hi: u16, level: u8) -> Vec<T> {
        let mut out = vec![T(0); (hi - lo) as usize];
        for &(s, l, e) in runs {
            for k in 0..l {
                out[(s + k - lo) as usize] = e.nth(k as u64, level);
            }
        }
        out
    }

    /// The run form against the per-entry form over 100,000 random fills per level, with
    /// fills that continue their neighbours (so runs join) as often as fills that do not:
    /// same entries everywhere, and joined as far as possible (no run continues the next).
    #[test]
    fn runs_equal_entries_and_stay_joined() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for level in [1u8, 2] {
            let mut t: Table<T> = Table::new(level);
            let mut f = Flat([T(0); 512]);
            for step in 0..100_000 {
                // Mostly short fills, so that tables grow past the inline runs.
                let start = next(512) as u16;
                let max = if next(8) == 0 {
                    512 - start
                } else {
                    (512 - start).min(4)
                };
                let len = next(max as u64 + 1) as u16;
                let base = match next(4) {
                    0 => T(0),
                    // The entry a linear mapping from frame 0x1000 has there: joins.
                    1 | 2 => T(0x1000 + start as u64 * pages_per_entry(level)),
                    _ => T(next(1 << 20) + 1),
                };
                t.fill(start, len, base);
                f.fill(start, len, base, level);
                let lo = next(512) as u16;
                let hi = lo + next((512 - lo) as u64 + 1) as u16;
                assert_eq!(
                    expand(&t.runs_in(lo, hi), lo, hi, level),
                    f.0[lo as usize..hi as usize].to_vec(),
                    "step {step}"
                );
                let idx = next(512) as u16;
                assert_eq!(t.get(idx), f.0[idx as usize], "step {step}");
                let runs = t.runs_in(0, 512);
                for w in runs.windows(2) {
                    let (a, b) = (w[0], w[1]);
                    assert!(
                        a.0 + a.1 != b.0 || a.2.nth(a.1 as u64, level) != b.2,
                        "step {step}: runs {a:?} and {b:?} not joined"
                    );
                }
                if next(500) == 0 {
                    t.fill(0, 512, T(0));
                    f.fill(0, 512, T(0), level);
                }
            }
            // A table written entry by entry with a linear mapping is one run.
            let mut t: Table<T> = Table::new(level);
            for i in (0..512u16).rev() {
                t.set(i, T(0x1000 + i as u64 * pages_per_entry(level)));
            }
            assert_eq!(t.run_count(), 1);
        }
    }

    #[test]
    fn store_frames_ascending() {
        let mut s: TableStore<T> = TableStore::new();
        let pool = |k: u64| TABLE_POOL_BASE + k * TABLE_POOL_STRIDE;
        for f in [pool(3), 7, pool(0), pool(1) + 1, pool(9), u64::MAX] {
            s.insert(f, 1);
        }
        assert_eq!(s.len(), 6);
        let frames: Vec<u64> = s.frames().map(|(f, _)| f).collect();
        assert_eq!(
            frames,
            [7, pool(0), pool(1) + 1, pool(3), pool(9), u64::MAX]
        );
        assert!(s.get(pool(2)).is_none() && s.get(pool(100)).is_none());
        assert!(s.remove(pool(3)).is_some() && s.remove(pool(3)).is_none());
        assert!(s.remove(7).is_some());
        assert_eq!(s.len(), 4);
        assert!(s.get_mut(pool(9)).is_some());
    }

    #[test]
    fn level_sizes() {
        assert_eq!(pages_per_entry(1), 1);
        assert_eq!(pages_per_entry(2), 512);
        assert_eq!(pages_per_entry(3), 1 << 18);
        assert_eq!(index_of(0x200, 2), 1);
        assert_eq!(index_of(0x40000, 3), 1);
    }
}
