//! A read-only, plain-data picture of a domain: its table frames (p2m and separate
//! IOMMU tables) with their entries summarised as runs, the live cache records, and
//! the freed (or otherwise non-table) frames that something can still reach.
//!
//! Built by [`Snapshot::of`] from a `&Domain`; nothing here changes the domain. The
//! harness renders it (e.g. as a Graphviz graph). Every list is in a deterministic
//! order: tables by frame, records in cache order, bad frames by frame.

use std::collections::{BTreeMap, BTreeSet};

use crate::cache::{CacheRecord, RecordKind};
use crate::frames::{FrameState, MachineMemory, TableOwner};
use crate::tables::{Pte, Table};
use crate::types::{Config, GfnRange, P2mAccess, P2mType, Vendor, GFN_BITS, PTE_MFN_MASK};
use crate::view::ViewSource;
use crate::walk::{IoEntry, IoTables, WalkFault};
use crate::xen46::domain::{Domain, P2m};
use crate::xen46::p2m_ept::{ept_io_entry, EptEntry};
use crate::xen46::p2m_pt::{amd_io_entry, p2m_flags_to_type, PtEntry, PAGE_NX_BIT, PAGE_PRESENT};
use crate::xen46::p2m_pt::{PAGE_PSE, PAGE_RW};

/// Entries per table, as an index bound.
const ENTRIES: u16 = 512;

/// The entry format a table frame holds.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum TableFormat {
    /// EPT (`ept_entry_t`).
    Ept,
    /// p2m-pt (`l1_pgentry_t` with the type in the available bits).
    P2mPt,
    /// Separate VT-d tables (`dma_pte`).
    Vtd,
    /// Separate AMD-Vi tables.
    Amd,
}

impl TableFormat {
    /// Short name for labels.
    pub fn name(self) -> &'static str {
        match self {
            TableFormat::Ept => "EPT",
            TableFormat::P2mPt => "p2m-pt",
            TableFormat::Vtd => "VT-d",
            TableFormat::Amd => "AMD-Vi",
        }
    }
}

/// Where an entry (run) leads, as the structure's own walker reads it.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum EntryTarget {
    /// A present leaf; `mfn` is the frame of the run's first entry (advancing by
    /// the entry size along the run).
    Leaf {
        /// Frame field of the first entry.
        mfn: u64,
    },
    /// A present pointer to the table held in `frame` (every entry of the run).
    Table {
        /// Frame of the next-level table.
        frame: u64,
    },
    /// A non-zero entry that is not present (e.g. an empty leaf of type `invalid`).
    Empty,
}

/// A run of consecutive, non-zero entries of one table.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct EntryRun {
    /// First index.
    pub first: u16,
    /// Number of entries.
    pub len: u16,
    /// Where the entries lead.
    pub target: EntryTarget,
    /// Format-specific summary of the first entry (type, rights, ...), no frame numbers.
    pub desc: String,
    /// How the IOMMU reads the first entry when it walks this structure (`None` when
    /// it does not, i.e. a p2m table under separate IOMMU tables).
    pub io: Option<IoEntry>,
}

/// One live table frame.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TableNode {
    /// Machine frame holding the table.
    pub frame: u64,
    /// Structure it belongs to.
    pub owner: TableOwner,
    /// Entry format.
    pub format: TableFormat,
    /// Level (1 holds 4 KiB entries).
    pub level: u8,
    /// Allocation generation of the frame.
    pub generation: u32,
    /// First gfn the table translates, when reachable from its structure's root.
    pub base_gfn: Option<u64>,
    /// True for the root of its structure.
    pub is_root: bool,
    /// Non-zero entries as runs, ascending.
    pub runs: Vec<EntryRun>,
}

/// What a frame that something points at holds now.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum FrameStatus {
    /// A live table of the expected structure (and generation, for a record).
    Live {
        /// Its owner.
        owner: TableOwner,
        /// Its level.
        level: u8,
        /// Its generation.
        generation: u32,
    },
    /// Freed: back in the pool.
    Freed {
        /// Generation of the last allocation.
        generation: u32,
    },
    /// Freed and allocated again since the pointer was cached.
    Reused {
        /// Owner now.
        owner: TableOwner,
        /// Level now.
        level: u8,
        /// Generation now.
        generation: u32,
        /// Generation the pointer expects.
        expected: u32,
    },
    /// A live table of the other structure (p2m vs IOMMU).
    ForeignTable {
        /// Owner now.
        owner: TableOwner,
        /// Level now.
        level: u8,
    },
    /// Never held a table (e.g. guest data).
    NotTable,
}

impl FrameStatus {
    /// True unless the frame is the live table the pointer expects.
    pub fn is_bad(&self) -> bool {
        !matches!(self, FrameStatus::Live { .. })
    }
}

/// A live cache record with the state of the frame it points at.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct RecordNode {
    /// Position in `Domain::cache_records()`.
    pub index: usize,
    /// The record itself.
    pub record: CacheRecord,
    /// For a paging-structure record: what its table frame holds now.
    pub target: Option<FrameStatus>,
}

/// How a bad frame is reached.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Reach {
    /// A paging-structure cache record points at it.
    Record {
        /// Record index (see [`RecordNode::index`]).
        index: usize,
        /// `set_entry` sequence number that left the record.
        seq: u64,
    },
    /// A present pointer entry of a live table points at it.
    Entry {
        /// Frame of the table holding the entry.
        table: u64,
        /// Index of the entry.
        index: u16,
        /// True when it is the IOMMU's reading of the entry (not the CPU's).
        io: bool,
    },
    /// A device walk for `range` passes through it.
    Walk {
        /// Guest frames whose walk passes through it.
        range: GfnRange,
        /// `set_entry` that left the cache record the walk starts from (`None`: the
        /// current tables).
        seq: Option<u64>,
    },
}

/// A frame that is not a live table of the structure but can still be reached.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct BadFrame {
    /// The frame.
    pub frame: u64,
    /// What it holds now.
    pub status: FrameStatus,
    /// Everything that reaches it, sorted.
    pub reached_by: Vec<Reach>,
}

/// Plain-data picture of a domain's tables, caches and reachable freed frames.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Snapshot {
    /// Configuration.
    pub config: Config,
    /// True when the IOMMU walks the p2m's own tables (`iommu_use_hap_pt`).
    pub shared: bool,
    /// Root frame of the p2m.
    pub p2m_root: u64,
    /// Root frame and level of the separate IOMMU tables (`None` when shared).
    pub iommu_root: Option<(u64, u8)>,
    /// Live tables by frame, ascending (p2m and, when not shared, IOMMU).
    pub tables: Vec<TableNode>,
    /// Live cache records, in cache order.
    pub records: Vec<RecordNode>,
    /// Reachable frames that are not live tables of their structure, by frame.
    pub freed_reachable: Vec<BadFrame>,
}

/// Frames covered by one entry of a table at `level`.
fn per_entry(level: u8) -> u64 {
    1u64 << (9 * (level.clamp(1, 7) as u32 - 1))
}

/// The state of `frame` as a pointer into the structure of `owner` sees it;
/// `expected` is the generation a cache record was taken at.
fn frame_status(
    mem: &MachineMemory,
    frame: u64,
    owner: TableOwner,
    expected: Option<u32>,
) -> FrameStatus {
    match mem.info(frame) {
        None => FrameStatus::NotTable,
        Some(info) => match info.state {
            FrameState::Free => FrameStatus::Freed {
                generation: info.generation,
            },
            FrameState::Table { owner: o, level } => match expected {
                Some(g) if g != info.generation => FrameStatus::Reused {
                    owner: o,
                    level,
                    generation: info.generation,
                    expected: g,
                },
                _ if o != owner => FrameStatus::ForeignTable { owner: o, level },
                _ => FrameStatus::Live {
                    owner: o,
                    level,
                    generation: info.generation,
                },
            },
        },
    }
}

/// Adds `reach` to the bad frame `frame` when `status` is bad.
fn note(
    bad: &mut BTreeMap<u64, (FrameStatus, BTreeSet<Reach>)>,
    frame: u64,
    status: FrameStatus,
    reach: Reach,
) {
    if status.is_bad() {
        bad.entry(frame)
            .or_insert_with(|| (status, BTreeSet::new()))
            .1
            .insert(reach);
    }
}

/// Name of a raw p2m type number.
fn type_name(raw: u32) -> String {
    u8::try_from(raw)
        .ok()
        .and_then(P2mType::from_raw)
        .map(|t| t.name().to_string())
        .unwrap_or_else(|| format!("type{raw}"))
}

/// `rwx`-style rights string.
fn rights(r: bool, w: bool, x: bool) -> String {
    format!(
        "{}{}{}",
        if r { 'r' } else { '-' },
        if w { 'w' } else { '-' },
        if x { 'x' } else { '-' }
    )
}

/// Summary of an EPT entry and where it leads.
fn ept_run(level: u8, e: &EptEntry) -> (EntryTarget, String) {
    let bits = rights(e.r, e.w, e.x);
    if e.is_present() && level > 1 && !e.sp {
        let desc = if bits == "rwx" { String::new() } else { bits };
        return (EntryTarget::Table { frame: e.mfn }, desc);
    }
    let mut desc = format!("{} {}", type_name(e.sa_p2mt as u32), bits);
    if e.access != P2mAccess::Rwx as u8 {
        let a = P2mAccess::from_raw(e.access)
            .map(|a| a.name().to_string())
            .unwrap_or_else(|| format!("{}", e.access));
        desc.push_str(&format!(" access={a}"));
    }
    if e.is_present() {
        (EntryTarget::Leaf { mfn: e.mfn }, desc)
    } else {
        if e.mfn == PTE_MFN_MASK {
            desc.push_str(" mfn=INVALID");
        } else if e.mfn != 0 {
            desc.push_str(&format!(" mfn={:#x}", e.mfn));
        }
        (EntryTarget::Empty, desc)
    }
}

/// Summary of a p2m-pt entry and where it leads.
fn pt_run(level: u8, e: &PtEntry) -> (EntryTarget, String) {
    let present = e.flags & PAGE_PRESENT != 0;
    let pse = e.flags & PAGE_PSE != 0;
    let bits = rights(
        present,
        e.flags & PAGE_RW != 0,
        present && e.flags & PAGE_NX_BIT == 0,
    );
    if present && level > 1 && !pse {
        let desc = if bits == "rwx" { String::new() } else { bits };
        return (EntryTarget::Table { frame: e.pfn }, desc);
    }
    let mut desc = format!("{} {}", type_name(p2m_flags_to_type(e.flags)), bits);
    if present {
        (EntryTarget::Leaf { mfn: e.pfn }, desc)
    } else {
        if e.pfn == PTE_MFN_MASK {
            desc.push_str(" mfn=INVALID");
        } else if e.pfn != 0 {
            desc.push_str(&format!(" mfn={:#x}", e.pfn));
        }
        desc.push_str(&format!(" flags={:#x}", e.flags));
        (EntryTarget::Empty, desc)
    }
}

/// Summary of a separate IOMMU entry (as the hardware reads it).
fn io_run(e: IoEntry) -> (EntryTarget, String) {
    match e {
        IoEntry::NotPresent => (EntryTarget::Empty, "not present".to_string()),
        IoEntry::Leaf { mfn, perm } => (EntryTarget::Leaf { mfn }, format!("{perm}")),
        IoEntry::Next { table, level, perm } => (
            EntryTarget::Table { frame: table },
            if perm == crate::types::IommuPerm::RW {
                format!("L{level}")
            } else {
                format!("L{level} {perm}")
            },
        ),
    }
}

/// Appends one node per p2m table frame (`ept_*` or `p2m_*` tables of the host p2m).
fn push_p2m_tables<'a, E: Pte + 'a>(
    out: &mut Vec<TableNode>,
    mem: &MachineMemory,
    frames: impl Iterator<Item = (u64, &'a Table<E>)>,
    root: u64,
    format: TableFormat,
    runs: impl Fn(&Table<E>) -> Vec<EntryRun>,
) {
    for (frame, t) in frames {
        out.push(TableNode {
            frame,
            owner: TableOwner::P2m,
            format,
            level: t.level,
            generation: mem.info(frame).map(|i| i.generation).unwrap_or(0),
            base_gfn: None,
            is_root: frame == root,
            runs: runs(t),
        });
    }
}

/// Runs of a p2m table, with the IOMMU's reading when it walks the p2m.
fn p2m_runs<E: Pte>(
    t: &Table<E>,
    io_shared: bool,
    summarize: impl Fn(u8, &E) -> (EntryTarget, String),
    io_read: impl Fn(E, u8) -> IoEntry,
) -> Vec<EntryRun> {
    t.runs_in(0, ENTRIES)
        .into_iter()
        .map(|(first, len, e)| {
            let (target, desc) = summarize(t.level, &e);
            EntryRun {
                first,
                len,
                target,
                desc,
                io: io_shared.then(|| io_read(e, t.level)),
            }
        })
        .collect()
}

/// Every frame an IOMMU reading of run `r` at `level` points at, with entry indexes.
fn io_pointers(r: &EntryRun, level: u8) -> Vec<(u16, u64)> {
    match r.io {
        Some(IoEntry::Next { table, .. }) => {
            // A p2m-pt run of pointers only ever advances when the CPU reads it as
            // a run of leaves (a split 1 GiB page with next-level bits).
            let advancing = matches!(r.target, EntryTarget::Leaf { .. });
            (0..r.len)
                .map(|k| {
                    let f = if advancing {
                        table.wrapping_add(k as u64 * per_entry(level)) & PTE_MFN_MASK
                    } else {
                        table
                    };
                    (r.first.saturating_add(k), f)
                })
                .collect()
        }
        _ => Vec::new(),
    }
}

impl Snapshot {
    /// Extracts the picture of `dom` (read-only).
    pub fn of(dom: &Domain) -> Snapshot {
        let shared = dom.cfg.iommu_use_hap_pt();
        let mem = &dom.mem;
        let mut tables: Vec<TableNode> = Vec::new();
        let p2m_root = match &dom.p2m {
            P2m::Ept(e) => {
                let runs = |t: &Table<EptEntry>| p2m_runs(t, shared, ept_run, ept_io_entry);
                push_p2m_tables(
                    &mut tables,
                    mem,
                    e.tables.frames(),
                    e.root,
                    TableFormat::Ept,
                    runs,
                );
                e.root
            }
            P2m::Pt(p) => {
                let runs = |t: &Table<PtEntry>| p2m_runs(t, shared, pt_run, amd_io_entry);
                push_p2m_tables(
                    &mut tables,
                    mem,
                    p.tables.frames(),
                    p.root,
                    TableFormat::P2mPt,
                    runs,
                );
                p.root
            }
        };
        let mut iommu_root = None;
        if !shared {
            let sep = &dom.iommu.separate;
            let (root, root_level) = sep.io_root();
            iommu_root = Some((root, root_level));
            let format = match dom.iommu.vendor {
                Vendor::Vtd => TableFormat::Vtd,
                Vendor::Amd => TableFormat::Amd,
            };
            let frames: BTreeSet<u64> = mem.ever_allocated().iter().copied().collect();
            for frame in frames {
                let Some(info) = mem.info(frame) else {
                    continue;
                };
                let FrameState::Table {
                    owner: TableOwner::Iommu,
                    level,
                } = info.state
                else {
                    continue;
                };
                let Some(runs) = sep.io_runs(frame, 0, ENTRIES) else {
                    continue;
                };
                let runs = runs
                    .into_iter()
                    .map(|(first, len, e)| {
                        let (target, desc) = io_run(e);
                        EntryRun {
                            first,
                            len,
                            target,
                            desc,
                            io: Some(e),
                        }
                    })
                    .collect();
                tables.push(TableNode {
                    frame,
                    owner: TableOwner::Iommu,
                    format,
                    level,
                    generation: info.generation,
                    base_gfn: None,
                    is_root: frame == root,
                    runs,
                });
            }
        }
        tables.sort_by_key(|t| t.frame);
        let mut snap = Snapshot {
            config: dom.cfg,
            shared,
            p2m_root,
            iommu_root,
            tables,
            records: Vec::new(),
            freed_reachable: Vec::new(),
        };
        snap.assign_bases();
        snap.collect_records_and_bad_frames(dom);
        snap
    }

    /// The table held in `frame`, if it is live.
    pub fn table(&self, frame: u64) -> Option<&TableNode> {
        self.tables
            .binary_search_by_key(&frame, |t| t.frame)
            .ok()
            .and_then(|i| self.tables.get(i))
    }

    /// Owner of the structure the IOMMU walks.
    pub fn io_owner(&self) -> TableOwner {
        if self.shared {
            TableOwner::P2m
        } else {
            TableOwner::Iommu
        }
    }

    /// Root frame of the structure of `owner`.
    pub fn root_of(&self, owner: TableOwner) -> Option<u64> {
        match owner {
            TableOwner::P2m => Some(self.p2m_root),
            TableOwner::Iommu => self.iommu_root.map(|(r, _)| r),
        }
    }

    /// The live tables a walk for `gfn` passes through in the structure of `owner`,
    /// root first (following the structure's own reading of its pointers).
    pub fn path_to(&self, owner: TableOwner, gfn: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let Some(mut frame) = self.root_of(owner) else {
            return out;
        };
        let mut base = 0u64;
        while let Some(t) = self.table(frame) {
            if t.owner != owner || out.contains(&frame) {
                break;
            }
            out.push(frame);
            let per = per_entry(t.level);
            let Some(off) = gfn.checked_sub(base) else {
                break;
            };
            let idx = off / per;
            if idx >= ENTRIES as u64 || t.level <= 1 {
                break;
            }
            let hit = t
                .runs
                .iter()
                .find(|r| (r.first as u64) <= idx && idx < r.first as u64 + r.len as u64);
            match hit.map(|r| r.target) {
                Some(EntryTarget::Table { frame: next }) => {
                    base = base.saturating_add(idx.saturating_mul(per));
                    frame = next;
                }
                _ => break,
            }
        }
        out
    }

    /// Gives each table reachable from a root the first gfn it translates.
    fn assign_bases(&mut self) {
        let mut base: BTreeMap<u64, u64> = BTreeMap::new();
        let mut stack: Vec<(u64, u64)> = vec![(self.p2m_root, 0)];
        if let Some((r, _)) = self.iommu_root {
            stack.push((r, 0));
        }
        while let Some((frame, b)) = stack.pop() {
            if base.contains_key(&frame) {
                continue;
            }
            let Some(t) = self.table(frame) else {
                continue;
            };
            base.insert(frame, b);
            if t.level <= 1 {
                continue;
            }
            let per = per_entry(t.level);
            for r in &t.runs {
                if let EntryTarget::Table { frame: child } = r.target {
                    let cb = b.saturating_add((r.first as u64).saturating_mul(per));
                    if let Some(ct) = self.table(child) {
                        if ct.owner == t.owner && ct.level < t.level {
                            stack.push((child, cb));
                        }
                    }
                }
            }
        }
        for t in &mut self.tables {
            t.base_gfn = base.get(&t.frame).copied();
        }
    }

    /// Fills `records` and `freed_reachable`.
    fn collect_records_and_bad_frames(&mut self, dom: &Domain) {
        let mem = &dom.mem;
        let io_owner = self.io_owner();
        let mut bad: BTreeMap<u64, (FrameStatus, BTreeSet<Reach>)> = BTreeMap::new();
        for (index, r) in dom.cache_records().iter().enumerate() {
            let target = match r.kind {
                RecordKind::NonLeaf {
                    table, generation, ..
                } => {
                    let st = frame_status(mem, table, io_owner, Some(generation));
                    note(&mut bad, table, st, Reach::Record { index, seq: r.seq });
                    Some(st)
                }
                RecordKind::Leaf { .. } => None,
            };
            self.records.push(RecordNode {
                index,
                record: *r,
                target,
            });
        }
        for t in &self.tables {
            for r in &t.runs {
                if let EntryTarget::Table { frame } = r.target {
                    let st = frame_status(mem, frame, t.owner, None);
                    let io = t.owner == TableOwner::Iommu;
                    note(
                        &mut bad,
                        frame,
                        st,
                        Reach::Entry {
                            table: t.frame,
                            index: r.first,
                            io,
                        },
                    );
                }
                if t.owner == TableOwner::P2m && self.shared {
                    let cpu_frame = match r.target {
                        EntryTarget::Table { frame } => Some(frame),
                        _ => None,
                    };
                    for (index, f) in io_pointers(r, t.level) {
                        if Some(f) == cpu_frame {
                            continue;
                        }
                        let st = frame_status(mem, f, io_owner, None);
                        note(
                            &mut bad,
                            f,
                            st,
                            Reach::Entry {
                                table: t.frame,
                                index,
                                io: true,
                            },
                        );
                    }
                }
            }
        }
        let all = GfnRange {
            start: 0,
            end: 1u64 << GFN_BITS,
        };
        let view = dom.device_view(all);
        for (f, src) in view.faults {
            let (frame, range) = match f {
                WalkFault::FreedFrame { frame, range } => (frame, range),
                WalkFault::NonTableFrame { frame, range } => (frame, range),
            };
            let seq = match src {
                ViewSource::Current => None,
                ViewSource::Cached { seq, .. } => Some(seq),
            };
            // A frame already noted keeps its status (e.g. `Reused` for a record whose
            // generation no longer matches); otherwise the walker found no table of
            // the structure there.
            let status = match bad.get(&frame) {
                Some(b) => b.0,
                None => match frame_status(mem, frame, io_owner, None) {
                    FrameStatus::Live { .. } => FrameStatus::NotTable,
                    st => st,
                },
            };
            note(&mut bad, frame, status, Reach::Walk { range, seq });
        }
        self.freed_reachable = bad
            .into_iter()
            .map(|(frame, (status, reached))| BadFrame {
                frame,
                status,
                reached_by: reached.into_iter().collect(),
            })
            .collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Mfn, Mode, INVALID_MFN};
    use crate::Revision;

    /// George Dunlap's case: a 4 KiB map, then an empty 2 MiB entry over it (NPT, shared).
    fn george(rev: &str) -> Domain {
        let mut d = Domain::new(
            Config::new(Mode::Npt, Vendor::Amd, true),
            Revision::by_name(rev).unwrap(),
        );
        d.set_entry(0x200, Mfn(0x100200), 0, P2mType::RamRw, P2mAccess::Rwx)
            .unwrap();
        d.set_entry(0x200, INVALID_MFN, 9, P2mType::Invalid, P2mAccess::Rwx)
            .unwrap();
        d
    }

    /// Under patch-v1 the PSC record left by seq 2 still points at the freed L1 frame.
    #[test]
    fn george_patch_v1_shows_stale_psc_record_to_freed_frame() {
        let d = george("patch-v1");
        let s = Snapshot::of(&d);
        assert!(s.shared);
        assert_eq!(s.iommu_root, None);
        let rec = s
            .records
            .iter()
            .find(|r| matches!(r.record.kind, RecordKind::NonLeaf { .. }))
            .expect("a paging-structure record");
        assert_eq!(rec.record.seq, 2);
        assert!(rec.record.range.contains(0x200));
        assert!(matches!(rec.target, Some(FrameStatus::Freed { .. })));
        let RecordKind::NonLeaf { table, .. } = rec.record.kind else {
            unreachable!()
        };
        let bad = s
            .freed_reachable
            .iter()
            .find(|b| b.frame == table)
            .expect("the freed L1 frame is reachable");
        assert!(bad
            .reached_by
            .iter()
            .any(|r| matches!(r, Reach::Record { seq: 2, .. })));
        assert!(bad
            .reached_by
            .iter()
            .any(|r| matches!(r, Reach::Walk { seq: Some(2), .. })));
        // The freed table is no longer among the live tables; L4, L3, L2 are.
        assert!(s.table(table).is_none());
        let path = s.path_to(TableOwner::P2m, 0x200);
        assert_eq!(path.len(), 3);
        let l2 = s.table(path[2]).unwrap();
        assert_eq!(l2.level, 2);
        assert_eq!(l2.base_gfn, Some(0));
        // The intermediate entry became an empty (all-zero) leaf.
        assert!(l2.runs.iter().all(|r| r.first > 1 || r.first + r.len <= 1));
    }

    /// Under fixed the flush removes every non-leaf record and nothing freed is reachable.
    #[test]
    fn george_fixed_leaves_nothing_reachable() {
        let s = Snapshot::of(&george("fixed"));
        assert!(s.freed_reachable.is_empty());
        assert!(s
            .records
            .iter()
            .all(|r| !matches!(r.record.kind, RecordKind::NonLeaf { .. })));
    }

    /// Separate VT-d tables are listed with owner, format, levels and gfn bases.
    #[test]
    fn separate_tables_are_listed_with_their_owner() {
        let mut d = Domain::new(
            Config::new(Mode::Ept, Vendor::Vtd, false),
            Revision::fixed(),
        );
        d.set_entry(0x40000, Mfn(0x100000), 18, P2mType::RamRw, P2mAccess::Rwx)
            .unwrap();
        let s = Snapshot::of(&d);
        assert!(!s.shared);
        let (root, level) = s.iommu_root.unwrap();
        assert_eq!(level, 4);
        let io = s.table(root).unwrap();
        assert_eq!(io.owner, TableOwner::Iommu);
        assert_eq!(io.format, TableFormat::Vtd);
        // 1 GiB mapped through 4 KiB IOMMU leaves: 512 L1 tables under one L2.
        let l1 = s
            .tables
            .iter()
            .filter(|t| t.owner == TableOwner::Iommu && t.level == 1)
            .count();
        assert_eq!(l1, 512);
        let p2m_path = s.path_to(TableOwner::P2m, 0x40000);
        assert_eq!(p2m_path.len(), 2);
        let l3 = s.table(p2m_path[1]).unwrap();
        let leaf = l3.runs.iter().find(|r| r.first == 1).unwrap();
        assert_eq!(leaf.target, EntryTarget::Leaf { mfn: 0x100000 });
        assert_eq!(leaf.desc, "ram_rw rwx");
        assert_eq!(leaf.io, None);
        let io_path = s.path_to(TableOwner::Iommu, 0x40000);
        assert_eq!(io_path.len(), 4);
        assert_eq!(s.table(io_path[3]).unwrap().base_gfn, Some(0x40000));
    }

    /// Two snapshots of the same state are equal.
    #[test]
    fn snapshot_is_deterministic() {
        assert_eq!(
            Snapshot::of(&george("patch-v1")),
            Snapshot::of(&george("patch-v1"))
        );
    }
}
