//! Sparse 512-entry page tables stored by machine frame.
//!
//! A table holds only its non-zero entries, as *runs*: `len` consecutive entries
//! where entry `k` is `base.nth(k, level)` (the same flags, the frame advancing by
//! the entry's size). A split superpage is one run, never 512 stored entries, and a
//! 1 GiB leaf is a single entry.

use crate::machine::{TABLE_POOL_BASE, TABLE_POOL_STRIDE};
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
#[derive(Clone, Copy, Debug)]
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

/// One table: its level and its non-zero entries as runs sorted by first index.
#[derive(Clone, Debug)]
pub struct Table<E> {
    /// Level of the table (4 = root of a 4-level structure, 1 = 4 KiB leaves).
    pub level: u8,
    /// Non-overlapping runs, ascending by first index (a table holds few runs,
    /// except a table of pointers, which holds one per pointer).
    runs: Vec<Run<E>>,
}

impl<E: Pte> Table<E> {
    /// An all-zero table.
    pub fn new(level: u8) -> Self {
        Table {
            level,
            runs: Vec::new(),
        }
    }

    /// Number of runs whose first index is below `idx`.
    fn count_below(&self, idx: u16) -> usize {
        self.runs.partition_point(|r| r.start < idx)
    }

    /// The entry at `idx` (zero when absent).
    pub fn get(&self, idx: u16) -> E {
        let p = self.runs.partition_point(|r| r.start <= idx);
        match p.checked_sub(1).map(|i| self.runs[i]) {
            Some(r) if idx < r.end() => r.first.nth((idx - r.start) as u64, self.level),
            _ => E::default(),
        }
    }

    /// Cuts runs so that `idx` starts a run (if it lies inside one); returns the
    /// number of runs whose first index is below `idx` afterwards.
    fn cut(&mut self, idx: u16) -> usize {
        let p = self.count_below(idx);
        if let Some(i) = p.checked_sub(1) {
            let r = self.runs[i];
            if idx < r.end() {
                self.runs[i].len = idx - r.start;
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
            self.runs.len()
        };
        if base != E::default() {
            let run = Run {
                start,
                len,
                first: base,
            };
            if b > a {
                self.runs[a] = run;
                self.runs.drain(a + 1..b);
            } else {
                self.runs.insert(a, run);
            }
        } else {
            self.runs.drain(a..b);
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
        let p = self.count_below(lo);
        let head = p.checked_sub(1).and_then(|i| {
            let r = self.runs[i];
            (lo < r.end()).then(|| {
                let end = r.end().min(hi);
                (lo, end - lo, r.first.nth((lo - r.start) as u64, self.level))
            })
        });
        let rest = self.runs[p..]
            .iter()
            .take_while(move |r| r.start < hi)
            .map(move |r| (r.start, r.end().min(hi) - r.start, r.first));
        head.into_iter().chain(rest)
    }

    /// Number of stored runs (a cost measure).
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }
}

/// All tables of one structure, keyed by the machine frame that holds them.
///
/// Table frames come from the pool of [`crate::machine`] (fixed base and stride),
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

    #[test]
    fn level_sizes() {
        assert_eq!(pages_per_entry(1), 1);
        assert_eq!(pages_per_entry(2), 512);
        assert_eq!(pages_per_entry(3), 1 << 18);
        assert_eq!(index_of(0x200, 2), 1);
        assert_eq!(index_of(0x40000, 3), 1);
    }
}
