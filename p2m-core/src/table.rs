//! Sparse 512-entry page tables stored by machine frame.
//!
//! A table holds only its non-zero entries, as *runs*: `len` consecutive entries
//! where entry `k` is `base.nth(k, level)` (the same flags, the frame advancing by
//! the entry's size). A split superpage is one run, never 512 stored entries, and a
//! 1 GiB leaf is a single entry.

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

/// One table: its level and its non-zero entries as runs keyed by first index.
#[derive(Clone, Debug)]
pub struct Table<E> {
    /// Level of the table (4 = root of a 4-level structure, 1 = 4 KiB leaves).
    pub level: u8,
    runs: BTreeMap<u16, (u16, E)>,
}

impl<E: Pte> Table<E> {
    /// An all-zero table.
    pub fn new(level: u8) -> Self {
        Table {
            level,
            runs: BTreeMap::new(),
        }
    }

    /// The entry at `idx` (zero when absent).
    pub fn get(&self, idx: u16) -> E {
        match self.runs.range(..=idx).next_back() {
            Some((&s, &(len, e))) if idx < s + len => e.nth((idx - s) as u64, self.level),
            _ => E::default(),
        }
    }

    /// Cuts runs so that `idx` starts a run (if it lies inside one).
    fn cut(&mut self, idx: u16) {
        if let Some((&s, &(len, e))) = self.runs.range(..idx).next_back() {
            if idx < s + len {
                self.runs.insert(s, (idx - s, e));
                self.runs
                    .insert(idx, (s + len - idx, e.nth((idx - s) as u64, self.level)));
            }
        }
    }

    /// Sets `len` entries from `start` to the run starting with `base`.
    pub fn fill(&mut self, start: u16, len: u16, base: E) {
        if len == 0 {
            return;
        }
        let end = start + len;
        self.cut(start);
        if end < ENTRIES {
            self.cut(end);
        }
        let keys: Vec<u16> = self.runs.range(start..end).map(|(&k, _)| k).collect();
        for k in keys {
            self.runs.remove(&k);
        }
        if base != E::default() {
            self.runs.insert(start, (len, base));
        }
    }

    /// Sets one entry.
    pub fn set(&mut self, idx: u16, e: E) {
        self.fill(idx, 1, e);
    }

    /// Runs intersecting `[lo, hi)`, clipped: `(first index, length, first entry)`.
    pub fn runs_in(&self, lo: u16, hi: u16) -> Vec<(u16, u16, E)> {
        let mut out = Vec::new();
        if let Some((&s, &(len, e))) = self.runs.range(..lo).next_back() {
            if lo < s + len {
                let end = (s + len).min(hi);
                out.push((lo, end - lo, e.nth((lo - s) as u64, self.level)));
            }
        }
        for (&s, &(len, e)) in self.runs.range(lo..hi) {
            out.push((s, (s + len).min(hi) - s, e));
        }
        out
    }

    /// Number of stored runs (a cost measure).
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }
}

/// All tables of one structure, keyed by the machine frame that holds them.
#[derive(Clone, Debug, Default)]
pub struct TableStore<E> {
    tables: BTreeMap<u64, Table<E>>,
}

impl<E: Pte> TableStore<E> {
    /// An empty store.
    pub fn new() -> Self {
        TableStore {
            tables: BTreeMap::new(),
        }
    }
    /// Installs a zeroed table at `mfn`.
    pub fn insert(&mut self, mfn: u64, level: u8) {
        self.tables.insert(mfn, Table::new(level));
    }
    /// Drops the table held in `mfn` (its frame is being freed).
    pub fn remove(&mut self, mfn: u64) -> Option<Table<E>> {
        self.tables.remove(&mfn)
    }
    /// The table in `mfn`, if that frame holds one of this structure's tables.
    pub fn get(&self, mfn: u64) -> Option<&Table<E>> {
        self.tables.get(&mfn)
    }
    /// Mutable access to the table in `mfn`.
    pub fn get_mut(&mut self, mfn: u64) -> Option<&mut Table<E>> {
        self.tables.get_mut(&mfn)
    }
    /// Number of tables.
    pub fn len(&self) -> usize {
        self.tables.len()
    }
    /// True when there is no table.
    pub fn is_empty(&self) -> bool {
        self.tables.is_empty()
    }
    /// Frames holding tables, ascending.
    pub fn frames(&self) -> impl Iterator<Item = (u64, &Table<E>)> {
        self.tables.iter().map(|(k, v)| (*k, v))
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
