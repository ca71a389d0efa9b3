//! IOTLB and paging-structure caches, kept conservatively.
//!
//! Rule: *any translation that was reachable at any instant since the last
//! invalidation covering it may still be cached.* A translation that is still in
//! the current tables needs no record (the device view reads the tables); the moment
//! an IOMMU-visible entry is overwritten, its old content (and, for a non-leaf entry,
//! everything reachable below it at that instant) becomes a record. Non-present
//! entries are never cached.
//!
//! What each invalidation command removes (record kinds: 4 KiB leaves, large-page
//! leaves, non-leaf entries):
//!
//! | command | 4 KiB leaves | large leaves | non-leaf | source |
//! |---|---|---|---|---|
//! | VT-d page-selective (PSI) `addr`/`AM=order`, `IH=0` | those intersecting the `2^order`-aligned range | same | same | VT-d spec §6.5.1.2 (IOTLB invalidate descriptor: IH clear also invalidates paging-structure caches for the range); Xen 4.6 `flush_iotlb_reg` / `flush_iotlb_qi` never set IH |
//! | VT-d PSI with `IH=1` | intersecting | intersecting | kept | same section |
//! | VT-d domain-selective (DSI) / global | all | all | all | same section |
//! | AMD `INVALIDATE_IOMMU_PAGES` order 0 (`S=0, PDE=0`) | the 4 KiB page | those containing it | kept | AMD IOMMU spec §2.4.3 (S: size, PDE: also page-directory entries) |
//! | AMD `INVALIDATE_IOMMU_PAGES` order 9/18 (`S=1, PDE=1`) | intersecting the range | intersecting | intersecting | same section |
//! | AMD all pages (`S=1, PDE=1`, all-ones address) | all | all | all | same section |
//!
//! A large-page leaf record is removed by an invalidation of any address it
//! translates (the hardware looks the address up and drops the entry that hits).

use std::fmt;

use crate::frames::MachineMemory;
use crate::types::{GfnRange, HwSemantics, IommuPerm};
use crate::walk::{walk, IoEntry, IoTables, WalkResult};

/// An invalidation command as Xen issues it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Invalidation {
    /// VT-d page-selective-within-domain invalidation (`DMA_TLB_PSI_FLUSH`).
    VtdPsi {
        /// First gfn (aligned down to the order by the hardware).
        gfn: u64,
        /// Address mask (`AM`).
        order: u32,
        /// Invalidation hint: keep paging-structure caches.
        ih: bool,
    },
    /// VT-d domain-selective invalidation (`DMA_TLB_DSI_FLUSH`).
    VtdDsi,
    /// AMD `INVALIDATE_IOMMU_PAGES` for `2^order` pages (order 0: `S=0, PDE=0`).
    AmdPages {
        /// First gfn.
        gfn: u64,
        /// 0, 9 or 18.
        order: u32,
    },
    /// AMD `INVALIDATE_IOMMU_PAGES` with the all-pages address (`amd_iommu_flush_all_pages`).
    AmdAllPages,
}

impl Invalidation {
    /// Which records it removes: `(range or None for all, leaves, non-leaves)`.
    pub fn scope(&self) -> (Option<GfnRange>, bool) {
        match *self {
            Invalidation::VtdPsi { gfn, order, ih } => {
                let start = gfn & !((1u64 << order) - 1);
                (Some(GfnRange::of_order(start, order)), !ih)
            }
            Invalidation::VtdDsi | Invalidation::AmdAllPages => (None, true),
            Invalidation::AmdPages { gfn, order } => {
                let start = gfn & !((1u64 << order) - 1);
                (Some(GfnRange::of_order(start, order)), order != 0)
            }
        }
    }
}

impl fmt::Display for Invalidation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Invalidation::VtdPsi { gfn, order, ih } => {
                write!(f, "VT-d PSI dfn {gfn:#x} AM={order} IH={}", ih as u8)
            }
            Invalidation::VtdDsi => f.write_str("VT-d DSI"),
            Invalidation::AmdPages { gfn, order } => {
                let sp = (order != 0) as u8;
                write!(
                    f,
                    "AMD INVALIDATE_IOMMU_PAGES dfn {gfn:#x} order {order} S={sp} PDE={sp}"
                )
            }
            Invalidation::AmdAllPages => f.write_str("AMD INVALIDATE_IOMMU_PAGES all S=1 PDE=1"),
        }
    }
}

/// One command as issued: `pages > 1` is the same per-page command repeated for each
/// page of `[gfn, gfn + pages)` (a per-page flush loop), counted as one entry.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Issued {
    /// The (first) command.
    pub cmd: Invalidation,
    /// How many pages the loop covered (1 for a single command).
    pub pages: u64,
}

impl fmt::Display for Issued {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.pages > 1 {
            write!(f, "{} (once per page, {} pages)", self.cmd, self.pages)
        } else {
            self.cmd.fmt(f)
        }
    }
}

/// What a cache record holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum RecordKind {
    /// IOTLB: leaves of `leaf_pages` frames each, mapping `range` linearly from `mfn`.
    Leaf {
        /// Frame of `range.start`.
        mfn: u64,
        /// Permission.
        perm: IommuPerm,
        /// Size of each cached leaf in frames.
        leaf_pages: u64,
    },
    /// Paging-structure cache: `range` is translated by the table in `table`.
    NonLeaf {
        /// Frame of the next-level table.
        table: u64,
        /// Its level.
        level: u8,
        /// Its allocation generation when the pointer was cached.
        generation: u32,
        /// Permission accumulated down to this entry.
        perm: IommuPerm,
    },
}

/// One record that may still be cached.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct CacheRecord {
    /// Guest frames it covers.
    pub range: GfnRange,
    /// Content.
    pub kind: RecordKind,
    /// Sequence number of the `set_entry` that overwrote the entry.
    pub seq: u64,
}

/// The IOTLB plus paging-structure caches of one domain.
#[derive(Clone, Debug, Default)]
pub struct IommuCaches {
    /// Hardware semantics of invalidations.
    hw: HwSemantics,
    records: Vec<CacheRecord>,
    /// Records created so far.
    pub created: u64,
    /// Commands issued since the owner last took them ([`Self::take_issued`]).
    issued: Vec<Issued>,
    /// No device is attached yet (`pci=hotplug` before `assign_device`): nothing walks
    /// the tables, so nothing is cached.
    detached: bool,
}

impl IommuCaches {
    /// Empty caches of an IOMMU with the hardware semantics `hw`.
    pub fn new(hw: HwSemantics) -> Self {
        IommuCaches {
            hw,
            ..Default::default()
        }
    }

    /// The hardware semantics in use.
    pub fn hw(&self) -> HwSemantics {
        self.hw
    }

    /// Adds a record (none while no device is attached). A leaf record that continues the
    /// last one (same op, permission and leaf size, the next pages mapping the next frames)
    /// extends it: a per-page loop leaves one record, not one per page.
    pub fn push(&mut self, r: CacheRecord) {
        if self.detached {
            return;
        }
        self.created += 1;
        if let (
            Some(last),
            RecordKind::Leaf {
                mfn,
                perm,
                leaf_pages,
            },
        ) = (self.records.last_mut(), r.kind)
        {
            if let RecordKind::Leaf {
                mfn: lmfn,
                perm: lperm,
                leaf_pages: lpages,
            } = last.kind
            {
                if last.seq == r.seq
                    && lperm == perm
                    && lpages == leaf_pages
                    && last.range.end == r.range.start
                    && lmfn.wrapping_add(last.range.len()) == mfn
                {
                    last.range.end = r.range.end;
                    return;
                }
            }
        }
        self.records.push(r);
    }

    /// Whether a device is attached (see [`Self::set_attached`]).
    pub fn attached(&self) -> bool {
        !self.detached
    }

    /// Attaches or detaches the device: while detached nothing is cached; attaching
    /// starts from empty caches (no device ever walked the tables before).
    pub fn set_attached(&mut self, attached: bool) {
        if attached && self.detached {
            self.records.clear();
        }
        self.detached = !attached;
    }

    /// Live records.
    pub fn records(&self) -> &[CacheRecord] {
        &self.records
    }

    /// Moves the commands issued so far to the end of `out`.
    pub fn take_issued(&mut self, out: &mut Vec<Issued>) {
        out.append(&mut self.issued);
    }

    /// Records `pages` issues of `cmd` (see [`Issued`]); an order-0 command for the page
    /// right after a per-page run of the same command extends that run, so a loop of
    /// per-page flushes costs one entry however it was issued.
    fn note_issued(&mut self, cmd: Invalidation, pages: u64) {
        if let Some(last) = self.issued.last_mut() {
            let next = match (last.cmd, cmd) {
                (
                    Invalidation::VtdPsi {
                        gfn: a,
                        order: 0,
                        ih: x,
                    },
                    Invalidation::VtdPsi {
                        gfn: b,
                        order: 0,
                        ih: y,
                    },
                ) => x == y && a.checked_add(last.pages) == Some(b),
                (
                    Invalidation::AmdPages { gfn: a, order: 0 },
                    Invalidation::AmdPages { gfn: b, order: 0 },
                ) => a.checked_add(last.pages) == Some(b),
                _ => false,
            };
            if next {
                last.pages += pages;
                return;
            }
        }
        self.issued.push(Issued { cmd, pages });
    }

    /// Applies an invalidation command.
    pub fn invalidate(&mut self, cmd: Invalidation) {
        self.note_issued(cmd, 1);
        let (range, nonleaf_too) = self.scope(cmd);
        match range {
            None => self.records.clear(),
            Some(inv) => self.invalidate_pages(inv, inv.len(), nonleaf_too),
        }
    }

    /// Issues the order-0 command `per_page` (its address ignored) once for each page of
    /// `range`, as a per-page flush loop does: removes the leaves touching `range`, and the
    /// non-leaf records touching it when the command drops those too.
    pub fn invalidate_each_page(&mut self, range: GfnRange, per_page: Invalidation) {
        let cmd = match per_page {
            Invalidation::VtdPsi { ih, .. } => Invalidation::VtdPsi {
                gfn: range.start,
                order: 0,
                ih,
            },
            Invalidation::AmdPages { .. } => Invalidation::AmdPages {
                gfn: range.start,
                order: 0,
            },
            other => return self.invalidate(other),
        };
        self.note_issued(cmd, range.len());
        let (_, nonleaf_too) = self.scope(cmd);
        self.invalidate_pages(range, 1, nonleaf_too);
    }

    /// What `cmd` removes under the hardware semantics: `(range or None for all,
    /// non-leaf records too)`.
    fn scope(&self, cmd: Invalidation) -> (Option<GfnRange>, bool) {
        let (range, nonleaf_too) = cmd.scope();
        let amd_order0 = matches!(cmd, Invalidation::AmdPages { order: 0, .. });
        (
            range,
            nonleaf_too || amd_order0 && !self.hw.amd_pde0_keeps_pdc,
        )
    }

    /// Removes what commands of `cmd_pages` pages each, covering `inv`, remove: the
    /// leaves they touch — except, when `superpage_survives_partial_inval`, leaves larger
    /// than one command — and the non-leaf records touching `inv` when `nonleaf_too`.
    fn invalidate_pages(&mut self, inv: GfnRange, cmd_pages: u64, nonleaf_too: bool) {
        // The records before the first one the commands change stay as they are, in place
        // (most per-page invalidations change none: nothing is copied then).
        let hw = self.hw;
        let changes = |r: &CacheRecord| {
            r.range.intersect(&inv).is_some()
                && match r.kind {
                    RecordKind::NonLeaf { .. } => nonleaf_too,
                    RecordKind::Leaf { leaf_pages, .. } => {
                        !(leaf_pages > cmd_pages && hw.superpage_survives_partial_inval)
                    }
                }
        };
        let Some(first) = self.records.iter().position(changes) else {
            return;
        };
        let rest = self.records.split_off(first);
        let kept = &mut self.records;
        for r in rest {
            let hit = match r.range.intersect(&inv) {
                Some(hit) if changes(&r) => hit,
                _ => {
                    kept.push(r);
                    continue;
                }
            };
            match r.kind {
                // A non-leaf record the commands change goes.
                RecordKind::NonLeaf { .. } => {}
                RecordKind::Leaf {
                    mfn,
                    perm,
                    leaf_pages,
                } => {
                    // Drop the whole (naturally aligned) leaves the invalidated range touches.
                    let cut_lo = (hit.start / leaf_pages * leaf_pages).max(r.range.start);
                    let cut_hi = (hit.end.div_ceil(leaf_pages) * leaf_pages).min(r.range.end);
                    if cut_lo > r.range.start {
                        kept.push(CacheRecord {
                            range: GfnRange {
                                start: r.range.start,
                                end: cut_lo,
                            },
                            ..r
                        });
                    }
                    if cut_hi < r.range.end {
                        kept.push(CacheRecord {
                            range: GfnRange {
                                start: cut_hi,
                                end: r.range.end,
                            },
                            kind: RecordKind::Leaf {
                                mfn: mfn.wrapping_add(cut_hi - r.range.start),
                                perm,
                                leaf_pages,
                            },
                            seq: r.seq,
                        });
                    }
                }
            }
        }
    }
}

/// Turns the old content of an IOMMU-visible entry that is being overwritten into
/// cache records: a leaf becomes an IOTLB record; a non-leaf entry becomes a
/// paging-structure record plus records for everything reachable below it now.
pub fn note_overwrite(
    caches: &mut IommuCaches,
    tables: &dyn IoTables,
    mem: &MachineMemory,
    entry_range: GfnRange,
    entry_level: u8,
    old: IoEntry,
    seq: u64,
) {
    match old {
        IoEntry::NotPresent => {}
        IoEntry::Leaf { mfn, perm } => caches.push(CacheRecord {
            range: entry_range,
            kind: RecordKind::Leaf {
                mfn,
                perm,
                leaf_pages: crate::tables::pages_per_entry(entry_level),
            },
            seq,
        }),
        IoEntry::Next { table, level, perm } => {
            if level == 0 || level >= entry_level {
                return;
            }
            let generation = mem.info(table).map(|i| i.generation).unwrap_or(0);
            caches.push(CacheRecord {
                range: entry_range,
                kind: RecordKind::NonLeaf {
                    table,
                    level,
                    generation,
                    perm,
                },
                seq,
            });
            let mut below = WalkResult::default();
            walk(
                tables,
                mem,
                table,
                level,
                entry_range.start,
                entry_range,
                perm,
                None,
                &mut below,
            );
            records_from_walk(caches, &below, seq);
        }
    }
}

/// Records every translation and non-leaf entry of a walk as possibly cached.
pub fn records_from_walk(caches: &mut IommuCaches, w: &WalkResult, seq: u64) {
    for t in &w.translations {
        caches.push(CacheRecord {
            range: t.range,
            kind: RecordKind::Leaf {
                mfn: t.mfn,
                perm: t.perm,
                leaf_pages: t.leaf_pages,
            },
            seq,
        });
    }
    for &(range, table, level, generation, perm) in &w.nonleaf {
        caches.push(CacheRecord {
            range,
            kind: RecordKind::NonLeaf {
                table,
                level,
                generation,
                perm,
            },
            seq,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(start: u64, len: u64, mfn: u64, leaf_pages: u64) -> CacheRecord {
        CacheRecord {
            range: GfnRange {
                start,
                end: start + len,
            },
            kind: RecordKind::Leaf {
                mfn,
                perm: IommuPerm::RW,
                leaf_pages,
            },
            seq: 1,
        }
    }

    fn nonleaf(start: u64) -> CacheRecord {
        CacheRecord {
            range: GfnRange::of_order(start, 9),
            kind: RecordKind::NonLeaf {
                table: 0x40000,
                level: 1,
                generation: 1,
                perm: IommuPerm::RW,
            },
            seq: 1,
        }
    }

    #[test]
    fn push_extends_a_continuing_leaf_record_only() {
        let mut c = IommuCaches::new(HwSemantics::default());
        // Three pages of one op mapping the next frames: one record.
        for k in 0..3 {
            c.push(leaf(0x10 + k, 1, 0x100 + k, 1));
        }
        assert_eq!(c.records(), &[leaf(0x10, 3, 0x100, 1)]);
        assert_eq!(c.created, 3);
        // Not continued: a gap, another frame, another leaf size, another op.
        c.push(leaf(0x14, 1, 0x104, 1));
        c.push(leaf(0x15, 1, 0x200, 1));
        c.push(leaf(0x16, 1, 0x201, 512));
        c.push(CacheRecord {
            seq: 2,
            ..leaf(0x17, 1, 0x202, 512)
        });
        assert_eq!(c.records().len(), 5);
        // Invalidating a page in the middle of the joined record keeps its two ends.
        c.invalidate_pages(
            GfnRange {
                start: 0x11,
                end: 0x12,
            },
            1,
            false,
        );
        assert_eq!(
            &c.records()[..3],
            &[
                leaf(0x10, 1, 0x100, 1),
                leaf(0x12, 1, 0x102, 1),
                leaf(0x14, 1, 0x104, 1)
            ]
        );
    }

    #[test]
    fn amd_order0_keeps_pde_records() {
        let mut c = IommuCaches::default();
        c.push(nonleaf(0x200));
        c.push(leaf(0x200, 512, 0x1000, 1));
        c.invalidate(Invalidation::AmdPages {
            gfn: 0x201,
            order: 0,
        });
        // The non-leaf record survives; the 4 KiB run loses page 0x201 only.
        assert_eq!(c.records().len(), 3);
        assert!(c
            .records()
            .iter()
            .all(|r| !r.range.contains(0x201) || matches!(r.kind, RecordKind::NonLeaf { .. })));
        let tail = c.records().iter().find(|r| r.range.start == 0x202).unwrap();
        assert_eq!(
            tail.kind,
            RecordKind::Leaf {
                mfn: 0x1002,
                perm: IommuPerm::RW,
                leaf_pages: 1
            }
        );
        c.invalidate(Invalidation::AmdPages {
            gfn: 0x200,
            order: 9,
        });
        assert!(c.records().is_empty());
    }

    #[test]
    fn vtd_psi_drops_large_leaf_and_nonleaf_unless_hinted() {
        let mut c = IommuCaches::new(HwSemantics::DROP_ON_HIT);
        c.push(leaf(0x200, 512, 0x1000, 512));
        c.push(nonleaf(0x200));
        c.invalidate(Invalidation::VtdPsi {
            gfn: 0x3ff,
            order: 0,
            ih: true,
        });
        assert_eq!(c.records().len(), 1);
        c.invalidate(Invalidation::VtdPsi {
            gfn: 0x3ff,
            order: 0,
            ih: false,
        });
        assert!(c.records().is_empty());
    }

    #[test]
    fn conservative_superpage_survives_smaller_invalidations_only() {
        let mut c = IommuCaches::new(HwSemantics::CONSERVATIVE);
        c.push(leaf(0x200, 512, 0x1000, 512));
        c.invalidate(Invalidation::VtdPsi {
            gfn: 0x3ff,
            order: 0,
            ih: false,
        });
        c.invalidate_each_page(
            GfnRange::of_order(0x200, 9),
            Invalidation::AmdPages { gfn: 0, order: 0 },
        );
        assert_eq!(c.records().len(), 1, "AM=0 never drops a 2 MiB entry");
        c.invalidate(Invalidation::VtdPsi {
            gfn: 0x200,
            order: 9,
            ih: false,
        });
        assert!(c.records().is_empty(), "AM=9 covering it does");
        // A 4 KiB leaf goes with any command that hits it.
        c.push(leaf(0x200, 1, 0x1000, 1));
        c.invalidate(Invalidation::AmdPages {
            gfn: 0x200,
            order: 0,
        });
        assert!(c.records().is_empty());
    }

    #[test]
    fn amd_pde0_switch() {
        for (keeps, left) in [(true, 1), (false, 0)] {
            let mut c = IommuCaches::new(HwSemantics {
                amd_pde0_keeps_pdc: keeps,
                ..HwSemantics::CONSERVATIVE
            });
            c.push(nonleaf(0x200));
            c.invalidate(Invalidation::AmdPages {
                gfn: 0x201,
                order: 0,
            });
            assert_eq!(c.records().len(), left);
        }
    }

    #[test]
    fn domain_selective_drops_all() {
        let mut c = IommuCaches::default();
        c.push(leaf(0, 1, 5, 1));
        c.push(nonleaf(0x200));
        c.invalidate(Invalidation::VtdDsi);
        assert!(c.records().is_empty());
        assert_eq!(c.created, 2);
    }

    /// A domain-wide command (VT-d DSI, AMD all-pages) leaves no record that a
    /// page-selective one of the same vendor would remove, under every hardware preset:
    /// a change that turns a ranged flush into a domain-wide one only adds flushing (the
    /// reason given for such mutants in `ci/mutants-equivalent.txt`).
    #[test]
    fn domain_wide_invalidation_removes_a_superset() {
        let records = [
            leaf(0x200, 512, 0x1000, 1),
            leaf(0x200, 512, 0x1000, 512),
            leaf(0x40000, 0x40000, 0x80000, 0x40000),
            leaf(0x3ff, 3, 0x7000, 1),
            nonleaf(0x200),
            nonleaf(0x40000),
        ];
        let ranged = |gfn, order| {
            [
                Invalidation::VtdPsi {
                    gfn,
                    order,
                    ih: false,
                },
                Invalidation::VtdPsi {
                    gfn,
                    order,
                    ih: true,
                },
                Invalidation::AmdPages { gfn, order },
            ]
        };
        for hw in [
            HwSemantics::CONSERVATIVE,
            HwSemantics::DROP_ON_HIT,
            HwSemantics::OPTIMISTIC,
        ] {
            for (gfn, order) in [
                (0x200, 0),
                (0x201, 0),
                (0x200, 9),
                (0x40000, 18),
                (0x400, 0),
            ] {
                for cmd in ranged(gfn, order) {
                    let wide = match cmd {
                        Invalidation::AmdPages { .. } => Invalidation::AmdAllPages,
                        _ => Invalidation::VtdDsi,
                    };
                    let run = |c: Invalidation| {
                        let mut caches = IommuCaches::new(hw);
                        for r in records {
                            caches.push(r);
                        }
                        caches.invalidate(c);
                        caches.records().to_vec()
                    };
                    let after_wide = run(wide);
                    let after_ranged = run(cmd);
                    for r in &after_wide {
                        assert!(after_ranged.contains(r), "{cmd:?} vs {wide:?}: {r:?}");
                    }
                }
            }
        }
    }

    /// An invalidation never adds anything a device could use: every record it keeps is part
    /// of a record that was cached before, with the same translation (random records and
    /// commands, every hardware preset). So a mutant that only *adds* invalidations cannot
    /// make the oracle report a divergence the model without it would not.
    #[test]
    fn any_invalidation_only_removes_what_was_cached() {
        let mut rng = crate::Lcg(7);
        for hw in [
            HwSemantics::CONSERVATIVE,
            HwSemantics::DROP_ON_HIT,
            HwSemantics::OPTIMISTIC,
        ] {
            for _ in 0..2000 {
                let mut before = Vec::new();
                for _ in 0..1 + rng.below(5) {
                    let lp = [1, 512, 1 << 18][rng.below(3) as usize];
                    let start = rng.below(4) * (1 << 18) + rng.below(1024) / lp * lp;
                    let len = (1 + rng.below(600)) * lp;
                    before.push(if rng.below(4) == 0 {
                        nonleaf(start & !511)
                    } else {
                        leaf(start, len, 0x100000 + rng.below(1 << 20), lp)
                    });
                }
                let gfn = rng.below(4) * (1 << 18) + rng.below(1 << 18);
                let order = [0, 9, 18][rng.below(3) as usize];
                let gfn = gfn & !((1 << order) - 1);
                let cmd = match rng.below(5) {
                    0 => Invalidation::VtdPsi {
                        gfn,
                        order,
                        ih: false,
                    },
                    1 => Invalidation::VtdPsi {
                        gfn,
                        order,
                        ih: true,
                    },
                    2 => Invalidation::AmdPages { gfn, order },
                    3 => Invalidation::VtdDsi,
                    _ => Invalidation::AmdAllPages,
                };
                let mut caches = IommuCaches::new(hw);
                for r in &before {
                    caches.push(*r);
                }
                caches.invalidate(cmd);
                for k in caches.records() {
                    let within = |r: &CacheRecord| {
                        r.range.start <= k.range.start
                            && k.range.end <= r.range.end
                            && match (r.kind, k.kind) {
                                (
                                    RecordKind::Leaf {
                                        mfn,
                                        perm,
                                        leaf_pages,
                                    },
                                    RecordKind::Leaf {
                                        mfn: m,
                                        perm: p,
                                        leaf_pages: l,
                                    },
                                ) => {
                                    m == mfn + (k.range.start - r.range.start)
                                        && p == perm
                                        && l == leaf_pages
                                }
                                (a, b) => a == b,
                            }
                    };
                    assert!(
                        before.iter().any(within),
                        "{cmd:?} kept {k:?} from {before:?}"
                    );
                }
            }
        }
    }
}
