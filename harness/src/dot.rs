//! Graphviz (DOT) picture of the p2m and IOMMU state at a divergence, for
//! `p2m-fuzz repro --dot OUT.dot`.
//!
//! [`scenario_dot`] runs a scenario, replays it on a fresh [`Domain`] up to the op
//! after which the divergence was observed (or to the end when it is clean), takes a
//! [`Snapshot`] and [`render`]s it: a pure function of the snapshot and a
//! [`DotMeta`], with a deterministic output.
//!
//! What is drawn:
//! - live table frames (p2m tables; separate IOMMU tables when not shared) as
//!   tables of their non-empty entry runs, with an edge from each pointer row to the
//!   child table; the rows a walk for the divergence gfn takes are yellow;
//! - freed frames (and frames that hold no table of the structure) that a cache
//!   record, a present entry or a device walk can still reach: red, dashed;
//! - the live (stale) IOTLB / paging-structure cache records: orange (red border
//!   for those left by the op that left the stale state), with an edge to the table
//!   frame of each paging-structure record;
//! - a title with file, configuration, revision, verdict, the op that left the stale
//!   state and the op after which the state is shown.
//!
//! **Collapsing rule** (keeps a 1 GiB split, i.e. 512 tables, readable):
//! 1. *Interesting* tables are never collapsed: the roots, the tables on the walk to
//!    the divergence gfn (p2m and IOMMU), the tables on the walk to the first gfn of
//!    every shown cache record, live tables a shown record points at, the tables
//!    holding an entry that reaches a shown bad frame — and all their ancestors.
//! 2. Other sibling tables (children of the same parent table) whose whole subtrees
//!    have the same *shape* — same levels, same run boundaries, same entry
//!    summaries, leaf frame numbers ignored — are drawn as one node labelled `×N`,
//!    showing the entries of the first member; the subtrees of the other members
//!    are not drawn (they look the same). Consecutive parent entries that point at
//!    members of one `×N` node become one row.
//! 3. Caps: at most [`MAX_TABLE_NODES`] table nodes (interesting ones always, up to
//!    [`HARD_TABLE_NODES`]; the others in breadth-first order from the roots, at
//!    most `MAX_ROWS - 1` child nodes per table), [`MAX_ROWS`] rows per table (the
//!    divergence row and rows with edges first), [`MAX_RECORD_NODES`] record nodes
//!    (consecutive records in cache order with the same seq, kind, rights, size and
//!    target state are one `×N` node; those covering the divergence gfn or pointing
//!    at bad frames first, then those left by the stale op), [`MAX_BAD_NODES`]
//!    bad-frame nodes (frames with the same state reached the same way — same
//!    record node, same entry run, same walk origin — are one `×N` node); whatever
//!    is left out is counted in a "… N more" node or row.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Write;

use crate::runner::{resolve_mfn, run, Divergence};
use crate::scenario::{Op, Scenario};
use p2m_core::cache::RecordKind;
use p2m_core::frames::TableOwner;
use p2m_core::walk::IoEntry;
use p2m_core::xen46::snapshot::{
    BadFrame, EntryRun, EntryTarget, FrameStatus, Reach, RecordNode, Snapshot, TableFormat,
    TableNode,
};
use p2m_core::{Config, Domain, Revision, PTE_MFN_MASK};

/// Most table nodes (single tables or `×N` groups) drawn.
pub const MAX_TABLE_NODES: usize = 40;
/// Most table nodes drawn even when more tables are interesting.
pub const HARD_TABLE_NODES: usize = 2 * MAX_TABLE_NODES;
/// Most entry rows drawn per table.
pub const MAX_ROWS: usize = 12;
/// Most cache-record nodes drawn.
pub const MAX_RECORD_NODES: usize = 16;
/// Most bad-frame nodes drawn.
pub const MAX_BAD_NODES: usize = 12;
/// Most "reached by" lines in a bad-frame node.
const MAX_REACH_LINES: usize = 6;

/// What the picture is about, besides the snapshot.
#[derive(Clone, Debug)]
pub struct DotMeta {
    /// Input file name (for the title).
    pub source: String,
    /// Configuration.
    pub config: Config,
    /// Revision name.
    pub revision: String,
    /// The divergence, if the run diverged.
    pub divergence: Option<Divergence>,
    /// The applied ops, one line each (index = op number, seq = index + 1).
    pub trace: Vec<String>,
}

/// One line per op as the runner prints it (table-frame selectors resolved).
fn op_line(op: &Op, dom: &Domain) -> String {
    crate::runner::op_line(op, op.mfn_sel(), resolve_mfn(dom, op.gfn(), op.mfn_sel()))
}

/// Replays the first `count` ops of `s` on a fresh domain, as the runner applies them;
/// returns the domain and the op lines.
pub fn replay(s: &Scenario, rev: Revision, count: usize) -> (Domain, Vec<String>) {
    let mut dom = Domain::new(s.config.normalized(), rev);
    let mut lines = Vec::new();
    for op in s.ops.iter().take(count) {
        lines.push(op_line(op, &dom));
        // Refused ops change nothing; the runner judges them, not the picture.
        match op {
            Op::SetEntry(e) => {
                let mfn = resolve_mfn(&dom, e.gfn, e.mfn);
                let _ = dom.set_entry(e.gfn, mfn, e.order, e.p2mt, e.access);
            }
            Op::AddToPhysmap(b) => {
                let _ = dom.add_to_physmap_range(*b);
            }
            Op::Call(c) => {
                let _ = dom.call(*c);
            }
            Op::Interleaved(ib) => {
                let _ = dom.add_to_physmap_interleaved(*ib);
            }
            Op::FailAlloc { nth } => dom.arm_alloc_failure(*nth),
        }
    }
    (dom, lines)
}

/// Runs `s` under `rev` and renders the state right after the op at which the
/// divergence was observed (the final state when the run is clean).
pub fn scenario_dot(s: &Scenario, rev: Revision, source: &str) -> String {
    let out = run(s, rev);
    let count = match &out.divergence {
        Some(d) => d.observed_op.saturating_add(1),
        None => s.ops.len(),
    };
    let (dom, trace) = replay(s, rev, count);
    let meta = DotMeta {
        source: source.to_string(),
        config: s.config.normalized(),
        revision: rev.name.to_string(),
        divergence: out.divergence,
        trace,
    };
    match dom.snapshot() {
        Some(snap) => render(&snap, &meta),
        None => {
            // A valid (empty) graph whose comments carry the report.
            let report: String = meta
                .divergence
                .as_ref()
                .map(|d| d.to_string())
                .unwrap_or_default()
                .lines()
                .map(|l| format!("// {l}\n"))
                .collect();
            format!(
                "// no picture of the {} line yet; the report:\n{report}digraph p2m {{}}\n",
                dom.line()
            )
        }
    }
}

/// An HTML-like Graphviz label: one left-aligned line each, bold where asked.
fn html_label(lines: impl IntoIterator<Item = (String, bool)>) -> String {
    let mut s = String::from("<");
    for (l, bold) in lines {
        if bold {
            let _ = write!(s, "<B>{}</B><BR ALIGN=\"LEFT\"/>", html_escape(&l));
        } else {
            let _ = write!(s, "{}<BR ALIGN=\"LEFT\"/>", html_escape(&l));
        }
    }
    s.push('>');
    s
}

/// Escapes text for a Graphviz HTML-like label.
pub fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            '\n' | '\r' => o.push(' '),
            c if c.is_control() => {}
            c => o.push(c),
        }
    }
    o
}

/// A DOT double-quoted string (backslashes and quotes escaped, newlines as `\n`).
pub fn quote(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => {}
            c if c.is_control() => {}
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// Frames covered by one entry at `level`.
fn per_entry(level: u8) -> u64 {
    1u64 << (9 * (level.clamp(1, 7) as u32 - 1))
}

/// A frame field for display (`INVALID` for the all-ones field).
fn fmt_frame(m: u64) -> String {
    if m & PTE_MFN_MASK == PTE_MFN_MASK {
        "INVALID".to_string()
    } else {
        format!("{m:#x}")
    }
}

/// `[a]` or `[a..b]` (inclusive).
fn fmt_idx(first: u16, last: u16) -> String {
    if first == last {
        format!("[{first}]")
    } else {
        format!("[{first}..{last}]")
    }
}

/// Size of a leaf at `level`, for labels.
fn leaf_size(level: u8) -> &'static str {
    match level {
        1 => "",
        2 => " 2M",
        3 => " 1G",
        _ => " huge",
    }
}

/// A gfn range for labels.
fn fmt_range(r: p2m_core::GfnRange) -> String {
    format!("gfn {r}")
}

/// Name of a structure owner.
fn owner_name(o: TableOwner) -> &'static str {
    match o {
        TableOwner::P2m => "p2m",
        TableOwner::Iommu => "IOMMU",
    }
}

/// Text for the state of a pointed-at frame.
fn status_text(st: &FrameStatus) -> String {
    match *st {
        FrameStatus::Live {
            owner,
            level,
            generation,
        } => format!("live {} L{level} gen {generation}", owner_name(owner)),
        FrameStatus::Freed { generation } => {
            format!("FREED (back in the pool; last allocation gen {generation})")
        }
        FrameStatus::Reused {
            owner,
            level,
            generation,
            expected,
        } => format!(
            "REUSED: now {} L{level} gen {generation}, pointer expects gen {expected}",
            owner_name(owner)
        ),
        FrameStatus::ForeignTable { owner, level } => {
            format!(
                "holds a live {} L{level} table (other structure)",
                owner_name(owner)
            )
        }
        FrameStatus::NotTable => "NOT A TABLE (guest data?)".to_string(),
    }
}

/// "seq N (op #i: text)" for a `set_entry` sequence number.
fn seq_text(seq: u64, trace: &[String]) -> String {
    let i = seq.saturating_sub(1) as usize;
    match trace.get(i) {
        Some(l) => format!("seq {seq} (op #{i}: {l})"),
        None => format!("seq {seq}"),
    }
}

/// A group of consecutive cache records drawn as one node.
struct RecordGroup {
    /// Indexes into `Snapshot::records`.
    members: Vec<usize>,
    /// Drawing priority (lower first).
    priority: u8,
}

/// True when `b` may follow `a` in one record node (same seq, kind, rights, size
/// and target state; the ranges need not touch).
fn record_continues(a: &RecordNode, b: &RecordNode) -> bool {
    if a.record.seq != b.record.seq {
        return false;
    }
    let bad = |r: &RecordNode| r.target.map(|t| t.is_bad());
    if bad(a) != bad(b) {
        return false;
    }
    match (a.record.kind, b.record.kind) {
        (
            RecordKind::Leaf {
                perm: p1,
                leaf_pages: l1,
                ..
            },
            RecordKind::Leaf {
                perm: p2,
                leaf_pages: l2,
                ..
            },
        ) => p1 == p2 && l1 == l2,
        (
            RecordKind::NonLeaf {
                level: l1,
                perm: p1,
                ..
            },
            RecordKind::NonLeaf {
                level: l2,
                perm: p2,
                ..
            },
        ) => l1 == l2 && p1 == p2,
        _ => false,
    }
}

/// Bad frames drawn as one node.
struct BadUnit<'b> {
    /// Members, ascending by frame.
    frames: Vec<&'b BadFrame>,
}

impl BadUnit<'_> {
    /// Lowest member frame.
    fn first_frame(&self) -> u64 {
        self.frames.first().map(|b| b.frame).unwrap_or(0)
    }
    /// Node id.
    fn id(&self) -> String {
        format!("b{:x}", self.first_frame())
    }
}

/// Smallest range holding every record of `recs`, and whether they tile it
/// without gaps (in cache order).
fn records_span(recs: &[&RecordNode]) -> Option<(p2m_core::GfnRange, bool)> {
    let lo = recs.iter().map(|r| r.record.range.start).min()?;
    let hi = recs.iter().map(|r| r.record.range.end).max()?;
    let contiguous = recs
        .windows(2)
        .all(|w| w[0].record.range.end == w[1].record.range.start);
    Some((p2m_core::GfnRange { start: lo, end: hi }, contiguous))
}

/// One drawn row of a table node.
struct Row {
    /// First index.
    first: u16,
    /// Last index (inclusive).
    last: u16,
    /// Text (unescaped).
    text: String,
    /// Node the row points at, if drawn.
    edge: Option<String>,
    /// True for the row a walk to the divergence gfn takes.
    focus: bool,
}

/// A table node to draw: one table or a `×N` group of same-shape siblings.
#[derive(Clone)]
struct Unit {
    /// Members, first is the one whose entries are shown.
    members: Vec<u64>,
}

/// Renderer state.
struct Renderer<'a> {
    /// The picture's data.
    snap: &'a Snapshot,
    /// Title data.
    meta: &'a DotMeta,
    /// The divergence gfn.
    focus: Option<u64>,
    /// Seq of the op that left the stale state.
    stale_seq: Option<u64>,
    /// Parent table of each reachable table.
    parent: BTreeMap<u64, u64>,
    /// Children of each table, in entry order.
    children: BTreeMap<u64, Vec<u64>>,
    /// Node id of each drawn table frame (group members map to the group).
    node_of: BTreeMap<u64, String>,
    /// Tables on the walk to the divergence gfn, with the index taken.
    focus_idx: BTreeMap<u64, u16>,
    /// Record group (node) of each cache record, by record index.
    record_group_of: BTreeMap<usize, usize>,
}

impl<'a> Renderer<'a> {
    /// Builds the parent/children maps.
    fn new(snap: &'a Snapshot, meta: &'a DotMeta) -> Self {
        let mut parent = BTreeMap::new();
        let mut children: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for t in &snap.tables {
            for r in &t.runs {
                let EntryTarget::Table { frame } = r.target else {
                    continue;
                };
                let Some(c) = snap.table(frame) else {
                    continue;
                };
                if c.owner != t.owner || c.level >= t.level || c.is_root {
                    continue;
                }
                if let std::collections::btree_map::Entry::Vacant(v) = parent.entry(frame) {
                    v.insert(t.frame);
                    children.entry(t.frame).or_default().push(frame);
                }
            }
        }
        let focus = meta.divergence.as_ref().map(|d| d.finding.gfn);
        let stale_seq = meta
            .divergence
            .as_ref()
            .and_then(|d| d.stale_op)
            .map(|i| i as u64 + 1);
        let mut focus_idx = BTreeMap::new();
        if let Some(g) = focus {
            for owner in [TableOwner::P2m, TableOwner::Iommu] {
                for f in snap.path_to(owner, g) {
                    if let Some(t) = snap.table(f) {
                        if let Some(b) = t.base_gfn {
                            let idx = g.saturating_sub(b) / per_entry(t.level);
                            if idx < 512 {
                                focus_idx.insert(f, idx as u16);
                            }
                        }
                    }
                }
            }
        }
        Renderer {
            snap,
            meta,
            focus,
            stale_seq,
            parent,
            children,
            node_of: BTreeMap::new(),
            focus_idx,
            record_group_of: BTreeMap::new(),
        }
    }

    /// Groups consecutive records and picks the ones to draw.
    fn record_groups(&mut self) -> (Vec<RecordGroup>, usize) {
        let recs = &self.snap.records;
        let mut groups: Vec<RecordGroup> = Vec::new();
        for (i, r) in recs.iter().enumerate() {
            let cont = groups
                .last()
                .and_then(|g| g.members.last())
                .and_then(|&j| recs.get(j))
                .is_some_and(|p| record_continues(p, r));
            if cont {
                if let Some(g) = groups.last_mut() {
                    g.members.push(i);
                }
            } else {
                groups.push(RecordGroup {
                    members: vec![i],
                    priority: 3,
                });
            }
        }
        for g in &mut groups {
            for &i in &g.members {
                let Some(r) = recs.get(i) else { continue };
                let p = if self.focus.is_some_and(|f| r.record.range.contains(f))
                    || r.target.is_some_and(|t| t.is_bad())
                {
                    0
                } else if Some(r.record.seq) == self.stale_seq {
                    1
                } else {
                    2
                };
                g.priority = g.priority.min(p);
            }
        }
        for (k, g) in groups.iter().enumerate() {
            for &i in &g.members {
                self.record_group_of.insert(i, k);
            }
        }
        let mut order: Vec<usize> = (0..groups.len()).collect();
        order.sort_by_key(|&k| (groups[k].priority, k));
        let keep: BTreeSet<usize> = order.into_iter().take(MAX_RECORD_NODES).collect();
        let mut hidden = 0;
        let mut shown = Vec::new();
        for (k, g) in groups.into_iter().enumerate() {
            if keep.contains(&k) {
                shown.push(g);
            } else {
                hidden += g.members.len();
            }
        }
        (shown, hidden)
    }

    /// The run of table `table` holding entry `index` (its first index).
    fn run_first(&self, table: u64, index: u16) -> u16 {
        self.snap
            .table(table)
            .and_then(|t| {
                t.runs
                    .iter()
                    .find(|x| x.first <= index && index < x.first.saturating_add(x.len))
            })
            .map(|x| x.first)
            .unwrap_or(index)
    }

    /// Grouping key of a bad frame: frames with the same status kind, reached by
    /// the same record nodes, through entries of the same runs and by walks of the
    /// same origin share a node.
    fn bad_key(&self, b: &BadFrame) -> String {
        let mut key = match b.status {
            FrameStatus::Live { .. } => "live".to_string(),
            FrameStatus::Freed { .. } => "freed".to_string(),
            FrameStatus::Reused { owner, level, .. } => format!("reused/{owner:?}/{level}"),
            FrameStatus::ForeignTable { owner, level } => format!("foreign/{owner:?}/{level}"),
            FrameStatus::NotTable => "nottable".to_string(),
        };
        let mut parts: BTreeSet<String> = BTreeSet::new();
        for r in &b.reached_by {
            match *r {
                Reach::Record { index, .. } => {
                    let g = self
                        .record_group_of
                        .get(&index)
                        .copied()
                        .unwrap_or(usize::MAX);
                    parts.insert(format!("r{g}"));
                }
                Reach::Entry { table, index, io } => {
                    parts.insert(format!("e{table:x}/{}/{io}", self.run_first(table, index)));
                }
                Reach::Walk { seq, .. } => {
                    parts.insert(format!("w{seq:?}"));
                }
            }
        }
        for p in parts {
            key.push('|');
            key.push_str(&p);
        }
        key
    }

    /// Groups the bad frames and picks the nodes to draw.
    fn bad_units(&self, shown_records: &BTreeSet<usize>) -> (Vec<BadUnit<'a>>, usize) {
        let snap: &'a Snapshot = self.snap;
        let prio = |b: &BadFrame| -> u8 {
            let mut p = 2;
            for r in &b.reached_by {
                match *r {
                    Reach::Record { index, .. } if shown_records.contains(&index) => p = 0,
                    Reach::Walk { range, .. } if self.focus.is_some_and(|f| range.contains(f)) => {
                        p = 0
                    }
                    Reach::Record { .. } => p = p.min(1),
                    _ => {}
                }
            }
            p
        };
        let mut units: Vec<(u8, BadUnit<'a>)> = Vec::new();
        let mut by_key: BTreeMap<String, usize> = BTreeMap::new();
        for b in &snap.freed_reachable {
            let p = prio(b);
            let k = self.bad_key(b);
            match by_key.get(&k) {
                Some(&u) => {
                    if let Some((up, unit)) = units.get_mut(u) {
                        *up = (*up).min(p);
                        unit.frames.push(b);
                    }
                }
                None => {
                    by_key.insert(k, units.len());
                    units.push((p, BadUnit { frames: vec![b] }));
                }
            }
        }
        let mut order: Vec<usize> = (0..units.len()).collect();
        order.sort_by_key(|&k| (units[k].0, units[k].1.first_frame()));
        let keep: BTreeSet<usize> = order.into_iter().take(MAX_BAD_NODES).collect();
        let mut shown = Vec::new();
        let mut hidden = 0;
        for (k, (_, u)) in units.into_iter().enumerate() {
            if keep.contains(&k) {
                shown.push(u);
            } else {
                hidden += u.frames.len();
            }
        }
        shown.sort_by_key(|u| u.first_frame());
        (shown, hidden)
    }

    /// Adds `f` and its ancestors to `set`.
    fn with_ancestors(&self, set: &mut BTreeSet<u64>, f: u64) {
        let mut cur = Some(f);
        let mut guard = 0;
        while let Some(c) = cur {
            if self.snap.table(c).is_none() || !set.insert(c) || guard > 16 {
                break;
            }
            guard += 1;
            cur = self.parent.get(&c).copied();
        }
    }

    /// Shape id of every table (bottom-up), leaf frame numbers ignored.
    fn shapes(&self) -> BTreeMap<u64, usize> {
        let mut by_level: Vec<&TableNode> = self.snap.tables.iter().collect();
        by_level.sort_by_key(|t| (t.level, t.frame));
        let mut intern: BTreeMap<String, usize> = BTreeMap::new();
        let mut shape: BTreeMap<u64, usize> = BTreeMap::new();
        for t in by_level {
            let mut key = format!("{:?}/{:?}/{}|", t.owner, t.format, t.level);
            for r in &t.runs {
                let tgt = match r.target {
                    EntryTarget::Leaf { .. } => "L".to_string(),
                    EntryTarget::Empty => "E".to_string(),
                    EntryTarget::Table { frame } => match shape.get(&frame) {
                        Some(s) if self.parent.get(&frame) == Some(&t.frame) => format!("T{s}"),
                        _ => format!("X{frame:x}"),
                    },
                };
                let io = match r.io {
                    None => "-".to_string(),
                    Some(IoEntry::NotPresent) => "n".to_string(),
                    Some(IoEntry::Leaf { perm, .. }) => format!("l{perm}"),
                    Some(IoEntry::Next { level, perm, .. }) => format!("t{level}{perm}"),
                };
                let _ = write!(key, "{}+{}:{}:{}:{};", r.first, r.len, tgt, io, r.desc);
            }
            let n = intern.len();
            let id = *intern.entry(key).or_insert(n);
            shape.insert(t.frame, id);
        }
        shape
    }

    /// Collapses same-shape siblings, orders units breadth-first and applies the cap.
    fn table_units(&self, interesting: &BTreeSet<u64>) -> (Vec<Unit>, usize) {
        let shape = self.shapes();
        // Group the non-interesting children of each parent (None: parentless tables).
        let mut unit_of: BTreeMap<u64, usize> = BTreeMap::new();
        let mut units: Vec<Unit> = Vec::new();
        let mut hidden: BTreeSet<u64> = BTreeSet::new();
        let mut sibling_lists: Vec<Vec<u64>> = Vec::new();
        let parentless: Vec<u64> = self
            .snap
            .tables
            .iter()
            .filter(|t| !self.parent.contains_key(&t.frame))
            .map(|t| t.frame)
            .collect();
        sibling_lists.push(parentless);
        for list in self.children.values() {
            sibling_lists.push(list.clone());
        }
        for list in &sibling_lists {
            let mut buckets: BTreeMap<usize, usize> = BTreeMap::new();
            for &f in list {
                if interesting.contains(&f) {
                    unit_of.insert(f, units.len());
                    units.push(Unit { members: vec![f] });
                    continue;
                }
                let s = shape.get(&f).copied().unwrap_or(usize::MAX);
                match buckets.get(&s) {
                    Some(&u) => {
                        if let Some(unit) = units.get_mut(u) {
                            unit.members.push(f);
                        }
                        unit_of.insert(f, u);
                        hidden.insert(f);
                    }
                    None => {
                        buckets.insert(s, units.len());
                        unit_of.insert(f, units.len());
                        units.push(Unit { members: vec![f] });
                    }
                }
            }
        }
        // Descendants of non-first group members are not drawn.
        let mut stack: Vec<u64> = hidden.iter().copied().collect();
        let mut invisible: BTreeSet<u64> = BTreeSet::new();
        while let Some(f) = stack.pop() {
            for &c in self.children.get(&f).map(|v| v.as_slice()).unwrap_or(&[]) {
                if invisible.insert(c) {
                    stack.push(c);
                }
            }
        }
        // Breadth-first order from the roots, then everything else by frame. A table
        // draws at most `MAX_ROWS - 1` child nodes (interesting ones always), so that
        // every drawn child hangs off a drawn row.
        let is_int = |u: usize| {
            units
                .get(u)
                .is_some_and(|x| x.members.iter().any(|m| interesting.contains(m)))
        };
        let mut order: Vec<usize> = Vec::new();
        let mut seen: BTreeSet<usize> = BTreeSet::new();
        let mut queue: VecDeque<usize> = VecDeque::new();
        let mut starts: Vec<u64> = vec![self.snap.p2m_root];
        if let Some((r, _)) = self.snap.iommu_root {
            starts.push(r);
        }
        starts.extend(
            self.snap
                .tables
                .iter()
                .map(|t| t.frame)
                .filter(|f| !self.parent.contains_key(f)),
        );
        for start in starts {
            let Some(&su) = unit_of.get(&start) else {
                continue;
            };
            if invisible.contains(&start) || !seen.insert(su) {
                continue;
            }
            queue.push_back(su);
            while let Some(u) = queue.pop_front() {
                order.push(u);
                let Some(first) = units.get(u).and_then(|x| x.members.first().copied()) else {
                    continue;
                };
                let kids: Vec<usize> = self
                    .children
                    .get(&first)
                    .map(|v| v.as_slice())
                    .unwrap_or(&[])
                    .iter()
                    .filter(|c| !invisible.contains(c))
                    .filter_map(|c| unit_of.get(c).copied())
                    .collect();
                let n_int = kids.iter().filter(|&&k| is_int(k)).count();
                let mut room = (MAX_ROWS - 1).saturating_sub(n_int);
                for k in kids {
                    if seen.contains(&k) {
                        continue;
                    }
                    if !is_int(k) {
                        if room == 0 {
                            continue;
                        }
                        room -= 1;
                    }
                    seen.insert(k);
                    queue.push_back(k);
                }
            }
        }
        // Cap: interesting units always, others in breadth-first order.
        let n_interesting = order.iter().filter(|&&u| is_int(u)).count();
        let mut budget = MAX_TABLE_NODES.saturating_sub(n_interesting);
        let mut chosen = Vec::new();
        for u in order {
            let Some(unit) = units.get(u) else { continue };
            let int = is_int(u);
            if chosen.len() >= HARD_TABLE_NODES {
                break;
            }
            if int || budget > 0 {
                if !int {
                    budget -= 1;
                }
                chosen.push(unit.clone());
            }
        }
        // Tables neither drawn nor stood for by a drawn `×N` node.
        let mut represented: BTreeSet<u64> = BTreeSet::new();
        for u in &chosen {
            represented.extend(u.members.iter().copied());
            let mut stack: Vec<u64> = u.members.iter().skip(1).copied().collect();
            while let Some(f) = stack.pop() {
                for &c in self.children.get(&f).map(|v| v.as_slice()).unwrap_or(&[]) {
                    if represented.insert(c) {
                        stack.push(c);
                    }
                }
            }
        }
        let left_out = self.snap.tables.len().saturating_sub(represented.len());
        (chosen, left_out)
    }

    /// Rows of table `t` (merging pointer runs into one `×N` node), capped: the
    /// rows drawn, how many were left out and the nodes those pointed at.
    fn rows(&self, t: &TableNode) -> (Vec<Row>, usize, Vec<String>) {
        let mut rows: Vec<Row> = Vec::new();
        // Pointer runs going to the same `×N` node merge; remember how many tables.
        let mut merged: Vec<Vec<u64>> = Vec::new();
        for r in &t.runs {
            let last = r.first.saturating_add(r.len.saturating_sub(1));
            if let EntryTarget::Table { frame } = r.target {
                let node = self.node_of.get(&frame).cloned();
                let is_group = node.as_deref().is_some_and(|n| n.starts_with('g'));
                if is_group {
                    if let (Some(prev), Some(m)) = (rows.last_mut(), merged.last_mut()) {
                        if prev.edge == node && prev.last.saturating_add(1) == r.first {
                            prev.last = last;
                            m.push(frame);
                            continue;
                        }
                    }
                }
                rows.push(Row {
                    first: r.first,
                    last,
                    text: String::new(),
                    edge: node,
                    focus: false,
                });
                merged.push(vec![frame]);
            } else {
                rows.push(Row {
                    first: r.first,
                    last,
                    text: self.run_text(t, r, last),
                    edge: None,
                    focus: false,
                });
                merged.push(Vec::new());
            }
        }
        for (row, frames) in rows.iter_mut().zip(&merged) {
            if frames.is_empty() {
                continue;
            }
            let run = t.runs.iter().find(|r| r.first == row.first);
            let desc = run.map(|r| r.desc.as_str()).unwrap_or("");
            let head = fmt_idx(row.first, row.last);
            let mut text = if frames.len() == 1 {
                format!("{head} → table {}", fmt_frame(frames[0]))
            } else {
                let lo = frames.iter().min().copied().unwrap_or(0);
                let hi = frames.iter().max().copied().unwrap_or(0);
                format!(
                    "{head} → {} tables {}…{}",
                    frames.len(),
                    fmt_frame(lo),
                    fmt_frame(hi)
                )
            };
            if !desc.is_empty() {
                let _ = write!(text, " {desc}");
            }
            if let Some(run) = run {
                text.push_str(&self.io_suffix(t, run));
            }
            row.text = text;
        }
        if let Some(&fi) = self.focus_idx.get(&t.frame) {
            match rows.iter_mut().find(|r| r.first <= fi && fi <= r.last) {
                Some(r) => r.focus = true,
                None => {
                    let pos = rows.iter().position(|r| r.first > fi).unwrap_or(rows.len());
                    rows.insert(
                        pos,
                        Row {
                            first: fi,
                            last: fi,
                            text: format!("[{fi}] (empty)"),
                            edge: None,
                            focus: true,
                        },
                    );
                }
            }
            if let (Some(g), Some(r)) = (self.focus, rows.iter_mut().find(|r| r.focus)) {
                let _ = write!(r.text, "  ◀ gfn {g:#x}");
            }
        }
        if rows.len() <= MAX_ROWS {
            return (rows, 0, Vec::new());
        }
        // Keep the divergence row, then rows with edges, then the first rows.
        let mut keep: BTreeSet<usize> = rows
            .iter()
            .enumerate()
            .filter(|(_, r)| r.focus)
            .map(|(i, _)| i)
            .collect();
        for (i, r) in rows.iter().enumerate() {
            if keep.len() >= MAX_ROWS {
                break;
            }
            if r.edge.is_some() {
                keep.insert(i);
            }
        }
        for i in 0..rows.len() {
            if keep.len() >= MAX_ROWS {
                break;
            }
            keep.insert(i);
        }
        let total = rows.len();
        let mut kept = Vec::new();
        let mut dropped_edges = Vec::new();
        for (i, r) in rows.into_iter().enumerate() {
            if keep.contains(&i) {
                kept.push(r);
            } else if let Some(e) = r.edge {
                dropped_edges.push(e);
            }
        }
        let dropped = total - kept.len();
        (kept, dropped, dropped_edges)
    }

    /// How the IOMMU reads a shared p2m entry, when worth saying.
    fn io_suffix(&self, t: &TableNode, r: &EntryRun) -> String {
        if t.owner != TableOwner::P2m {
            return String::new();
        }
        match (r.io, r.target, t.format) {
            (Some(IoEntry::Next { table, level, .. }), EntryTarget::Leaf { .. }, _) => {
                format!(
                    " | IOMMU: next-level {level} → walks {}.. as L{level} table(s)!",
                    fmt_frame(table)
                )
            }
            (Some(IoEntry::Leaf { perm, .. }), EntryTarget::Table { .. }, _) => {
                format!(" | IOMMU: leaf {perm}!")
            }
            (Some(IoEntry::NotPresent), EntryTarget::Leaf { .. }, TableFormat::P2mPt) => {
                " | IOMMU: not present".to_string()
            }
            (Some(IoEntry::Leaf { perm, .. }), EntryTarget::Leaf { .. }, TableFormat::P2mPt) => {
                format!(" | IOMMU {perm}")
            }
            (Some(IoEntry::Next { perm, .. }), EntryTarget::Table { .. }, TableFormat::P2mPt) => {
                if perm == p2m_core::IommuPerm::RW {
                    String::new()
                } else {
                    format!(" | IOMMU {perm}")
                }
            }
            _ => String::new(),
        }
    }

    /// Text of a leaf or empty run.
    fn run_text(&self, t: &TableNode, r: &EntryRun, last: u16) -> String {
        let head = fmt_idx(r.first, last);
        let mut s = match r.target {
            EntryTarget::Leaf { mfn } => format!(
                "{head} → mfn {}{}{} {}",
                fmt_frame(mfn),
                if r.len > 1 { ".." } else { "" },
                leaf_size(t.level),
                r.desc
            ),
            EntryTarget::Empty => format!("{head} ∅ {}", r.desc),
            EntryTarget::Table { frame } => format!("{head} → table {}", fmt_frame(frame)),
        };
        s.push_str(&self.io_suffix(t, r));
        s
    }

    /// HTML label of a table node.
    fn table_label(&self, unit: &Unit, t: &TableNode, rows: &[Row], dropped: usize) -> String {
        let n = unit.members.len();
        let color = match t.owner {
            TableOwner::P2m => "#cfe2f3",
            TableOwner::Iommu => "#d9ead3",
        };
        let mut title = if n > 1 {
            let lo = unit.members.iter().min().copied().unwrap_or(t.frame);
            let hi = unit.members.iter().max().copied().unwrap_or(t.frame);
            format!(
                "×{n} {} L{} tables {}…{}",
                t.format.name(),
                t.level,
                fmt_frame(lo),
                fmt_frame(hi)
            )
        } else {
            format!(
                "{} L{} table {}",
                t.format.name(),
                t.level,
                fmt_frame(t.frame)
            )
        };
        if t.is_root {
            title.push_str(" (root)");
        }
        let sub = if n > 1 {
            format!(
                "same shape; entries of {} shown (gen {})",
                fmt_frame(t.frame),
                t.generation
            )
        } else {
            let span = per_entry(t.level).saturating_mul(512);
            match t.base_gfn {
                Some(b) => format!(
                    "gen {} · {}",
                    t.generation,
                    fmt_range(p2m_core::GfnRange {
                        start: b,
                        end: b.saturating_add(span)
                    })
                ),
                None => format!("gen {} · not linked from the root", t.generation),
            }
        };
        let mut s = String::new();
        s.push_str("<TABLE BORDER=\"1\" CELLBORDER=\"0\" CELLSPACING=\"0\" CELLPADDING=\"3\">");
        let _ = write!(
            s,
            "<TR><TD BGCOLOR=\"{color}\" ALIGN=\"LEFT\" BALIGN=\"LEFT\"><B>{}</B><BR ALIGN=\"LEFT\"/>{}</TD></TR>",
            html_escape(&title),
            html_escape(&sub)
        );
        if rows.is_empty() {
            s.push_str("<TR><TD ALIGN=\"LEFT\">(no entries)</TD></TR>");
        }
        for r in rows {
            let bg = if r.focus { " BGCOLOR=\"#fff2a8\"" } else { "" };
            let _ = write!(
                s,
                "<TR><TD PORT=\"e{}\" ALIGN=\"LEFT\"{bg}>{}</TD></TR>",
                r.first,
                html_escape(&r.text)
            );
        }
        if dropped > 0 {
            let _ = write!(
                s,
                "<TR><TD PORT=\"more\" ALIGN=\"LEFT\"><I>… {dropped} more runs</I></TD></TR>"
            );
        }
        s.push_str("</TABLE>");
        s
    }

    /// The title (graph label), as HTML.
    fn title(&self) -> String {
        let m = self.meta;
        let mut lines: Vec<(String, bool)> = Vec::new();
        lines.push((format!("p2m-fuzz repro --dot: {}", m.source), true));
        let sharing = if self.snap.shared {
            "IOMMU walks the p2m tables (shared)"
        } else {
            "separate IOMMU tables"
        };
        lines.push((
            format!("config {} · {sharing} · revision {}", m.config, m.revision),
            false,
        ));
        match &m.divergence {
            Some(d) => {
                lines.push((
                    format!(
                        "DIVERGENCE: {} at gfn {:#x}",
                        d.finding.class, d.finding.gfn
                    ),
                    true,
                ));
                lines.push((format!("  device:    {}", d.finding.device), false));
                lines.push((format!("  reference: {}", d.finding.reference), false));
                match d.stale_op {
                    Some(i) => lines.push((
                        format!(
                            "stale state left by op #{i}: {}",
                            m.trace.get(i).map(String::as_str).unwrap_or("?")
                        ),
                        false,
                    )),
                    None => lines.push(("state left by the observing op itself".into(), false)),
                }
                lines.push((
                    format!(
                        "state shown: right after op #{} (where it was observed): {}",
                        d.observed_op,
                        m.trace
                            .get(d.observed_op)
                            .map(String::as_str)
                            .unwrap_or("?")
                    ),
                    false,
                ));
            }
            None => {
                lines.push((
                    format!("CLEAN: no divergence under revision {}", m.revision),
                    true,
                ));
                lines.push((
                    format!(
                        "state shown: final state after all {} ops{}",
                        m.trace.len(),
                        match m.trace.last() {
                            Some(l) => format!(" (last: {l})"),
                            None => String::new(),
                        }
                    ),
                    false,
                ));
            }
        }
        lines.push((
            "legend: yellow row = walk for the divergence gfn · orange = stale cache record \
             (red border: left by the stale op)"
                .into(),
            false,
        ));
        lines.push((
            "        red dashed = freed / non-table frame still reachable · ×N = N sibling \
             tables of identical shape (first shown) · dotted = entry a record was cached from"
                .into(),
            false,
        ));
        html_label(lines)
    }

    /// Label of a record node.
    fn record_label(&self, g: &RecordGroup) -> (String, bool) {
        let recs: Vec<&RecordNode> = g
            .members
            .iter()
            .filter_map(|&i| self.snap.records.get(i))
            .collect();
        let Some(first) = recs.first() else {
            return (String::new(), false);
        };
        let last = recs.last().unwrap_or(first);
        let n = recs.len();
        let (range, contiguous) = records_span(&recs).unwrap_or((first.record.range, true));
        let where_ = if contiguous {
            fmt_range(range)
        } else {
            format!("{n} ranges in {}", fmt_range(range))
        };
        let ids = if n > 1 {
            format!("r{}..r{}", first.index, last.index)
        } else {
            format!("r{}", first.index)
        };
        let stale = Some(first.record.seq) == self.stale_seq;
        let mut lines: Vec<String> = Vec::new();
        let count = if n > 1 {
            format!("×{n} ")
        } else {
            String::new()
        };
        match first.record.kind {
            RecordKind::Leaf {
                mfn,
                perm,
                leaf_pages,
            } => {
                lines.push(format!("{count}IOTLB record {ids}"));
                let linear = contiguous
                    && recs
                        .windows(2)
                        .all(|w| match (w[0].record.kind, w[1].record.kind) {
                            (RecordKind::Leaf { mfn: a, .. }, RecordKind::Leaf { mfn: b, .. }) => {
                                a.wrapping_add(w[0].record.range.len()) == b
                            }
                            _ => false,
                        });
                let size = match leaf_pages {
                    1 => "4K".to_string(),
                    512 => "2M".to_string(),
                    262144 => "1G".to_string(),
                    p => format!("{p}-page"),
                };
                lines.push(format!(
                    "{} → mfn {}{} {perm} ({size} leaves)",
                    where_,
                    fmt_frame(mfn),
                    if !linear {
                        ", … (not linear)"
                    } else if range.len() > 1 {
                        ".."
                    } else {
                        ""
                    }
                ));
            }
            RecordKind::NonLeaf {
                table,
                level,
                generation,
                perm,
            } => {
                lines.push(format!("{count}paging-structure record {ids}"));
                if n > 1 {
                    lines.push(format!(
                        "{} → {n} L{level} tables {}…, {perm}",
                        where_,
                        fmt_frame(table)
                    ));
                } else {
                    lines.push(format!(
                        "{} → table {} L{level} gen {generation} {perm}",
                        where_,
                        fmt_frame(table)
                    ));
                }
                let mut states: BTreeSet<String> = BTreeSet::new();
                for r in &recs {
                    if let Some(st) = &r.target {
                        states.insert(status_text(st));
                    }
                }
                for st in states.into_iter().take(3) {
                    lines.push(format!("table now: {st}"));
                }
            }
        }
        lines.push(format!(
            "left by {}",
            seq_text(first.record.seq, &self.meta.trace)
        ));
        let s = html_label(lines.into_iter().enumerate().map(|(i, l)| (l, i == 0)));
        (s, stale)
    }

    /// Label of a bad-frame node (one frame or a group).
    fn bad_label(&self, u: &BadUnit) -> String {
        let Some(first) = u.frames.first() else {
            return "<>".to_string();
        };
        let n = u.frames.len();
        let head = if n > 1 {
            let hi = u.frames.last().map(|b| b.frame).unwrap_or(first.frame);
            format!("×{n} frames {}…{}", fmt_frame(first.frame), fmt_frame(hi))
        } else {
            format!("frame {}", fmt_frame(first.frame))
        };
        let mut lines = vec![
            head,
            status_text(&first.status),
            "still reachable by:".to_string(),
        ];
        // Aggregate the reaches of all members.
        let mut records: BTreeSet<(usize, u64)> = BTreeSet::new();
        let mut entries: BTreeMap<(u64, bool), (u16, u16)> = BTreeMap::new();
        let mut walks: BTreeMap<Option<u64>, (u64, u64, usize)> = BTreeMap::new();
        for b in &u.frames {
            for r in &b.reached_by {
                match *r {
                    Reach::Record { index, seq } => {
                        records.insert((index, seq));
                    }
                    Reach::Entry { table, index, io } => {
                        let e = entries.entry((table, io)).or_insert((index, index));
                        e.0 = e.0.min(index);
                        e.1 = e.1.max(index);
                    }
                    Reach::Walk { range, seq } => {
                        let w = walks.entry(seq).or_insert((range.start, range.end, 0));
                        w.0 = w.0.min(range.start);
                        w.1 = w.1.max(range.end);
                        w.2 += 1;
                    }
                }
            }
        }
        let mut reach: Vec<String> = Vec::new();
        // Records of one record node on one line.
        let mut by_group: BTreeMap<usize, (usize, usize, u64, usize)> = BTreeMap::new();
        for (index, seq) in records {
            let g = self
                .record_group_of
                .get(&index)
                .copied()
                .unwrap_or(usize::MAX);
            let e = by_group.entry(g).or_insert((index, index, seq, 0));
            e.0 = e.0.min(index);
            e.1 = e.1.max(index);
            e.3 += 1;
        }
        for (lo, hi, seq, count) in by_group.into_values() {
            reach.push(if count > 1 {
                format!("  {count} paging-structure records r{lo}..r{hi} (seq {seq})")
            } else {
                format!("  paging-structure record r{lo} (seq {seq})")
            });
        }
        for ((table, io), (lo, hi)) in entries {
            reach.push(format!(
                "  {}{} {} of table {}",
                if io { "IOMMU reading of " } else { "present " },
                if lo == hi { "entry" } else { "entries" },
                fmt_idx(lo, hi),
                fmt_frame(table)
            ));
        }
        for (seq, (lo, hi, count)) in walks {
            let what = if count > 1 {
                format!("{count} device walks")
            } else {
                "device walk".to_string()
            };
            let range = fmt_range(p2m_core::GfnRange { start: lo, end: hi });
            reach.push(match seq {
                Some(q) => format!("  {what} for {range} from record seq {q}"),
                None => format!("  {what} for {range} (current tables)"),
            });
        }
        let extra = reach.len().saturating_sub(MAX_REACH_LINES);
        reach.truncate(MAX_REACH_LINES);
        lines.extend(reach);
        if extra > 0 {
            lines.push(format!("  … {extra} more"));
        }
        html_label(lines.into_iter().enumerate().map(|(i, l)| (l, i == 0)))
    }

    /// The tables that are never collapsed (see the module doc), with ancestors.
    fn interesting(&self, groups: &[RecordGroup], bad: &[BadUnit]) -> BTreeSet<u64> {
        let snap = self.snap;
        let mut interesting: BTreeSet<u64> = BTreeSet::new();
        for owner in [TableOwner::P2m, TableOwner::Iommu] {
            if let Some(r) = snap.root_of(owner) {
                self.with_ancestors(&mut interesting, r);
            }
        }
        for &f in self.focus_idx.keys() {
            self.with_ancestors(&mut interesting, f);
        }
        let io_owner = snap.io_owner();
        for g in groups {
            if let Some(r) = g.members.first().and_then(|&i| snap.records.get(i)) {
                for f in snap.path_to(io_owner, r.record.range.start) {
                    self.with_ancestors(&mut interesting, f);
                }
                for &i in &g.members {
                    if let Some(RecordNode {
                        record:
                            p2m_core::cache::CacheRecord {
                                kind: RecordKind::NonLeaf { table, .. },
                                ..
                            },
                        target: Some(FrameStatus::Live { .. }),
                        ..
                    }) = snap.records.get(i)
                    {
                        if g.members.len() == 1 {
                            self.with_ancestors(&mut interesting, *table);
                        }
                    }
                }
            }
        }
        for u in bad {
            for b in &u.frames {
                for r in &b.reached_by {
                    if let Reach::Entry { table, .. } = r {
                        self.with_ancestors(&mut interesting, *table);
                    }
                }
            }
        }
        interesting
    }

    /// Writes the table clusters; returns the port of the row (or node) drawing
    /// each `(table, entry index)` that starts or ends a run.
    fn write_tables(
        &self,
        out: &mut String,
        edges: &mut BTreeSet<String>,
        units: &[Unit],
        groups: &[RecordGroup],
    ) -> BTreeMap<(u64, u16), String> {
        let snap = self.snap;
        // The gfn range of each drawn record node, to link it to the entry it was
        // cached from.
        let group_ranges: Vec<(p2m_core::GfnRange, String)> = groups
            .iter()
            .filter_map(|g| {
                let recs: Vec<&RecordNode> = g
                    .members
                    .iter()
                    .filter_map(|&i| snap.records.get(i))
                    .collect();
                let (span, contiguous) = records_span(&recs)?;
                let first = recs.first()?;
                contiguous.then(|| (span, format!("r{}", first.index)))
            })
            .collect();
        // Port of the row holding entry `idx` of table `frame` (or the group node).
        let mut row_port: BTreeMap<(u64, u16), String> = BTreeMap::new();
        for owner in [TableOwner::P2m, TableOwner::Iommu] {
            let mine: Vec<&Unit> = units
                .iter()
                .filter(|u| {
                    u.members
                        .first()
                        .and_then(|&f| snap.table(f))
                        .is_some_and(|t| t.owner == owner)
                })
                .collect();
            if mine.is_empty() {
                continue;
            }
            let label = match owner {
                TableOwner::P2m => format!(
                    "p2m tables ({}{})",
                    match snap.tables.iter().find(|t| t.owner == owner) {
                        Some(t) => t.format.name(),
                        None => "",
                    },
                    if snap.shared {
                        ", also walked by the IOMMU"
                    } else {
                        ""
                    }
                ),
                TableOwner::Iommu => format!(
                    "separate IOMMU tables ({})",
                    match snap.tables.iter().find(|t| t.owner == owner) {
                        Some(t) => t.format.name(),
                        None => "",
                    }
                ),
            };
            let cname = match owner {
                TableOwner::P2m => "cluster_p2m",
                TableOwner::Iommu => "cluster_iommu",
            };
            let _ = writeln!(
                out,
                "  subgraph {cname} {{\n    label={};\n    style=rounded; color=\"#999999\";",
                quote(&label)
            );
            for u in mine {
                let Some(t) = u.members.first().and_then(|&f| snap.table(f)) else {
                    continue;
                };
                let (rows, dropped, dropped_edges) = self.rows(t);
                let Some(id) = self.node_of.get(&t.frame).cloned() else {
                    continue;
                };
                let _ = writeln!(
                    out,
                    "    {id} [label=<{}>];",
                    self.table_label(u, t, &rows, dropped)
                );
                for r in &rows {
                    if let Some(to) = &r.edge {
                        edges.insert(format!("  {id}:e{}:e -> {to};", r.first));
                    }
                }
                for to in &dropped_edges {
                    edges.insert(format!("  {id}:more:e -> {to};"));
                }
                if let (1, Some(base)) = (u.members.len(), t.base_gfn) {
                    let per = per_entry(t.level);
                    for r in &rows {
                        let span = p2m_core::GfnRange {
                            start: base.saturating_add(per.saturating_mul(r.first as u64)),
                            end: base.saturating_add(per.saturating_mul(r.last as u64 + 1)),
                        };
                        for (gr, gid) in &group_ranges {
                            if *gr == span {
                                edges.insert(format!(
                                    "  {id}:e{}:e -> {gid} [style=dotted, color=\"#d9480f\", \
                                     label=\"cached from\"];",
                                    r.first
                                ));
                            }
                        }
                    }
                }
                for &m in &u.members {
                    let Some(mt) = snap.table(m) else { continue };
                    for run in &mt.runs {
                        let last = run.first.saturating_add(run.len.saturating_sub(1));
                        let port = if u.members.len() > 1 {
                            id.clone()
                        } else {
                            match rows
                                .iter()
                                .find(|r| r.first <= run.first && run.first <= r.last)
                            {
                                Some(r) => format!("{id}:e{}:e", r.first),
                                None if dropped > 0 => format!("{id}:more:e"),
                                None => id.clone(),
                            }
                        };
                        for k in [run.first, last] {
                            row_port.insert((m, k), port.clone());
                        }
                    }
                }
            }
            out.push_str("  }\n");
        }
        row_port
    }

    /// Writes the cache-record cluster and the edges from paging-structure records.
    fn write_records(
        &self,
        out: &mut String,
        edges: &mut BTreeSet<String>,
        groups: &[RecordGroup],
        hidden_records: usize,
        bad_node: &BTreeMap<u64, String>,
        hidden_bad: usize,
    ) {
        let snap = self.snap;
        if !groups.is_empty() || hidden_records > 0 {
            out.push_str(
                "  subgraph cluster_caches {\n    label=\"IOMMU caches: live (stale) records\";\n    \
                 style=\"rounded,filled\"; fillcolor=\"#fff8ee\"; color=\"#d9480f\";\n",
            );
            for g in groups {
                let Some(&first) = g.members.first() else {
                    continue;
                };
                let id = format!("r{first}");
                let (label, stale) = self.record_label(g);
                let _ = writeln!(
                    out,
                    "    {id} [shape=box, style=\"rounded,filled\", fillcolor=\"#ffd8a8\", \
                     color=\"{}\", penwidth={}, label={label}];",
                    if stale { "#c92a2a" } else { "#d9480f" },
                    if stale { 3 } else { 1 }
                );
                for &i in &g.members {
                    let Some(r) = snap.records.get(i) else {
                        continue;
                    };
                    let RecordKind::NonLeaf { table, .. } = r.record.kind else {
                        continue;
                    };
                    let to = match r.target {
                        Some(st) if st.is_bad() => bad_node
                            .get(&table)
                            .cloned()
                            .or_else(|| (hidden_bad > 0).then(|| "more_bad".to_string())),
                        _ => self.node_of.get(&table).cloned(),
                    };
                    if let Some(to) = to {
                        edges.insert(format!(
                            "  {id} -> {to} [color=\"#d9480f\", penwidth=2, label={}];",
                            quote(&format!("PSC seq {}", r.record.seq))
                        ));
                    }
                }
            }
            if hidden_records > 0 {
                let _ = writeln!(
                    out,
                    "    more_records [shape=note, label={}];",
                    quote(&format!(
                        "… {hidden_records} more records not drawn (cap {MAX_RECORD_NODES} nodes)"
                    ))
                );
            }
            out.push_str("  }\n");
        }
    }

    /// Writes the bad-frame cluster and the edges from entries that reach them.
    fn write_bad(
        &self,
        out: &mut String,
        edges: &mut BTreeSet<String>,
        bad: &[BadUnit],
        hidden_bad: usize,
        row_port: &BTreeMap<(u64, u16), String>,
        bad_node: &BTreeMap<u64, String>,
    ) {
        let snap = self.snap;
        if !bad.is_empty() || hidden_bad > 0 {
            out.push_str(
                "  subgraph cluster_bad {\n    label=\"freed / non-table frames still reachable\";\n    \
                 style=dashed; color=red; fontcolor=red;\n",
            );
            for u in bad {
                let id = u.id();
                let _ = writeln!(
                    out,
                    "    {id} [shape=box, style=\"dashed,filled\", color=red, fillcolor=\"#ffe3e3\", \
                     penwidth=2, fontcolor=\"#a00000\", label={}];",
                    self.bad_label(u)
                );
                for b in &u.frames {
                    for r in &b.reached_by {
                        let Reach::Entry { table, index, io } = *r else {
                            continue;
                        };
                        let port = row_port
                            .get(&(table, index))
                            .or_else(|| row_port.get(&(table, self.run_first(table, index))));
                        if let Some(from) = port {
                            edges.insert(format!(
                                "  {from} -> {id} [color=red, style=dashed{}];",
                                if io { ", label=\"IOMMU\"" } else { "" }
                            ));
                        }
                    }
                }
            }
            if hidden_bad > 0 {
                let lo = snap
                    .freed_reachable
                    .iter()
                    .filter(|b| !bad_node.contains_key(&b.frame))
                    .map(|b| b.frame)
                    .min()
                    .unwrap_or(0);
                let hi = snap
                    .freed_reachable
                    .iter()
                    .filter(|b| !bad_node.contains_key(&b.frame))
                    .map(|b| b.frame)
                    .max()
                    .unwrap_or(0);
                let _ = writeln!(
                    out,
                    "    more_bad [shape=note, color=red, fontcolor=\"#a00000\", style=dashed, label={}];",
                    quote(&format!(
                        "… {hidden_bad} more reachable bad frames {}…{} (cap {MAX_BAD_NODES} nodes)",
                        fmt_frame(lo),
                        fmt_frame(hi)
                    ))
                );
            }
            out.push_str("  }\n");
        }
    }

    /// The whole graph.
    fn render(mut self) -> String {
        let (groups, hidden_records) = self.record_groups();
        let shown_records: BTreeSet<usize> = groups
            .iter()
            .flat_map(|g| g.members.iter().copied())
            .collect();
        let (bad, hidden_bad) = self.bad_units(&shown_records);
        let interesting = self.interesting(&groups, &bad);
        let (units, tables_left_out) = self.table_units(&interesting);
        for u in &units {
            let Some(&first) = u.members.first() else {
                continue;
            };
            let id = if u.members.len() > 1 {
                format!("g{first:x}")
            } else {
                format!("t{first:x}")
            };
            for &m in &u.members {
                self.node_of.insert(m, id.clone());
            }
        }
        let bad_node: BTreeMap<u64, String> = bad
            .iter()
            .flat_map(|u| u.frames.iter().map(move |b| (b.frame, u.id())))
            .collect();

        let mut out = String::new();
        out.push_str("digraph p2m {\n");
        let _ = writeln!(
            out,
            "  graph [rankdir=LR, fontname=\"DejaVu Sans Mono\", fontsize=11, labelloc=t, \
             labeljust=l, nodesep=0.2, ranksep=0.5, label={}];",
            self.title()
        );
        out.push_str(
            "  node [shape=plaintext, fontname=\"DejaVu Sans Mono\", fontsize=10];\n  \
             edge [fontname=\"DejaVu Sans Mono\", fontsize=9];\n",
        );
        let mut edges: BTreeSet<String> = BTreeSet::new();
        let row_port = self.write_tables(&mut out, &mut edges, &units, &groups);
        if tables_left_out > 0 {
            let _ = writeln!(
                out,
                "  more_tables [shape=note, label={}];",
                quote(&format!(
                    "… {tables_left_out} more tables not drawn (at most {MAX_TABLE_NODES} \
                     table nodes, {} child nodes per table)",
                    MAX_ROWS - 1
                ))
            );
        }

        self.write_records(
            &mut out,
            &mut edges,
            &groups,
            hidden_records,
            &bad_node,
            hidden_bad,
        );
        self.write_bad(&mut out, &mut edges, &bad, hidden_bad, &row_port, &bad_node);
        for e in edges {
            out.push_str(&e);
            out.push('\n');
        }
        out.push_str("}\n");
        out
    }
}

/// Renders `snap` as a DOT graph (deterministic).
pub fn render(snap: &Snapshot, meta: &DotMeta) -> String {
    Renderer::new(snap, meta).render()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::generate::Swarm;
    use crate::scenario::parse_trace;
    use rand::rngs::SmallRng;
    use rand::SeedableRng;

    /// George Dunlap's case (`corpus/regressions/patch-v1/`).
    const GEORGE: &str = "# p2m-fuzz trace v1\n\
        config mode=npt vendor=amd share=on\n\
        set_entry gfn=0x200 mfn=0x100200 order=0 ram_rw rwx\n\
        set_entry gfn=0x200 mfn=INVALID_MFN order=9 invalid rwx\n";

    /// A 1 GiB EPT page split down to 4 KiB (512 L1 tables), shared with VT-d.
    const SPLIT_1G: &str = "# p2m-fuzz trace v1\n\
        config mode=ept vendor=vtd share=on\n\
        set_entry gfn=0x40000 mfn=0x100000 order=18 ram_rw rwx\n\
        set_entry gfn=0x40000 mfn=0x200000 order=0 ram_ro rwx\n";

    /// A revision by name.
    fn rev(name: &str) -> Revision {
        Revision::by_name(name).unwrap()
    }

    /// Structural checks on a DOT text: header, balanced braces, brackets and HTML
    /// angle brackets, even (unescaped) quotes per line.
    fn assert_sane(d: &str) {
        assert!(d.starts_with("digraph p2m {\n"), "{d}");
        assert!(d.ends_with("}\n"));
        let opens = d.matches('{').count();
        let closes = d.matches('}').count();
        assert_eq!(opens, closes, "unbalanced braces:\n{d}");
        assert_eq!(d.matches('[').count(), d.matches(']').count());
        let no_arrows = d.replace("->", "");
        assert_eq!(
            no_arrows.matches('<').count(),
            no_arrows.matches('>').count(),
            "unbalanced HTML label:\n{d}"
        );
        for line in d.lines() {
            let unescaped = line.replace("\\\\", "").replace("\\\"", "");
            assert_eq!(unescaped.matches('"').count() % 2, 0, "odd quotes: {line}");
        }
    }

    /// Table nodes (single or `×N`) in a DOT text.
    fn table_nodes(d: &str) -> usize {
        d.matches("[label=<<TABLE").count()
    }

    /// George's case under patch-v1 shows the stale record, its seq and the freed frame.
    #[test]
    fn george_patch_v1_shows_stale_record_with_its_seq() {
        let s = parse_trace(GEORGE).unwrap();
        let d = scenario_dot(&s, rev("patch-v1"), "george.trace");
        assert_sane(&d);
        assert!(d.contains("DIVERGENCE: freed-frame-reachable at gfn 0x200"));
        assert!(d.contains("stale state left by op #1: set_entry gfn=0x200"));
        // The paging-structure record left by seq 2 points at the freed L1 frame.
        assert!(d.contains("paging-structure record r0"));
        assert!(d.contains("gfn 0x200..0x400 → table 0x40800 L1 gen 1 rw"));
        assert!(d.contains("left by seq 2 (op #1"));
        assert!(d.contains("r0 -> b40800"));
        assert!(d.contains("<B>frame 0x40800</B>"));
        assert!(d.contains("FREED"));
        // The walk for gfn 0x200 ends at the emptied L2 entry, which the record was
        // cached from.
        assert!(d.contains("[1] (empty)  ◀ gfn 0x200"));
        assert!(d.contains("t40600:e1:e -> r0 [style=dotted"));
        assert_eq!(table_nodes(&d), 3);
    }

    /// A clean run shows the final state and says so in the title.
    #[test]
    fn clean_run_pictures_the_final_state() {
        let s = parse_trace(GEORGE).unwrap();
        let d = scenario_dot(&s, rev("fixed"), "george.trace");
        assert_sane(&d);
        assert!(d.contains("CLEAN: no divergence under revision fixed"));
        assert!(d.contains("final state after all 2 ops"));
        assert!(!d.contains("cluster_bad"));
    }

    /// The same scenario renders to the same text.
    #[test]
    fn output_is_deterministic() {
        for (text, r) in [(GEORGE, "patch-v1"), (SPLIT_1G, "committed")] {
            let s = parse_trace(text).unwrap();
            let a = scenario_dot(&s, rev(r), "x");
            let b = scenario_dot(&s, rev(r), "x");
            assert_eq!(a, b);
        }
    }

    /// A 1 GiB page split to 4 KiB draws its 511 look-alike L1 tables as one node.
    #[test]
    fn split_1g_collapses_identical_siblings() {
        let s = parse_trace(SPLIT_1G).unwrap();
        let d = scenario_dot(&s, rev("committed"), "split.trace");
        assert_sane(&d);
        // 516 live tables, drawn as L4, L3, L2, the L1 on the walk and one ×511 node.
        assert_eq!(table_nodes(&d), 5);
        assert!(d.contains("×511 EPT L1 tables"));
        assert!(d.contains("[1..511] → 511 tables"));
    }

    /// Many differently shaped tables are capped, rows and nodes alike.
    #[test]
    fn many_distinct_tables_are_capped() {
        let mut t = String::from("config mode=npt vendor=amd share=on\n");
        for k in 0..60u64 {
            t.push_str(&format!(
                "set_entry gfn={:#x} mfn={:#x} order=0 ram_rw rwx\n",
                k * 0x200 + k,
                0x100000 + k
            ));
        }
        let s = parse_trace(&t).unwrap();
        let d = scenario_dot(&s, rev("fixed"), "many");
        assert_sane(&d);
        assert!(table_nodes(&d) <= MAX_TABLE_NODES);
        assert!(d.contains("more tables not drawn"));
        assert!(d.contains("more runs"));
    }

    /// Quotes, angle brackets and ampersands are escaped in labels.
    #[test]
    fn labels_are_escaped() {
        assert_eq!(
            html_escape("a<b>&\"c'\n"),
            "a&lt;b&gt;&amp;&quot;c&#39; ".to_string()
        );
        assert_eq!(quote("say \"hi\"\\\n"), "\"say \\\"hi\\\"\\\\\\n\"");
        let s = parse_trace(GEORGE).unwrap();
        let d = scenario_dot(&s, rev("patch-v1"), "we\"ird <name> & {x}.trace");
        assert!(d.contains("we&quot;ird &lt;name&gt; &amp; {x}.trace"));
        // The name's braces are the only unbalanced-looking text, and they pair up.
        assert_sane(&d);
    }

    /// Random fuzz-input bytes decode and render sanely under every revision.
    #[test]
    fn random_inputs_render_without_panic() {
        use rand::RngCore;
        let n: usize = std::env::var("P2M_DOT_RANDOM_INPUTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(200);
        let mut rng = SmallRng::seed_from_u64(9);
        let mut buf = [0u8; 1 + 12 * 12];
        let mut rendered = 0;
        for _ in 0..n {
            let len = 1 + (rng.next_u32() as usize % buf.len());
            rng.fill_bytes(&mut buf[..len]);
            let Some(s) = crate::scenario::decode(&buf[..len]) else {
                continue;
            };
            for r in ["xen-4.6-pre", "patch-v1", "committed", "fixed"] {
                assert_sane(&scenario_dot(&s, rev(r), "random"));
                rendered += 1;
            }
        }
        assert!(rendered > 0);
    }

    /// Random swarm scenarios render sane, capped graphs under every revision.
    #[test]
    fn swarm_scenarios_render_sanely_under_every_revision() {
        let mut rng = SmallRng::seed_from_u64(5);
        let mut diverged = 0;
        for i in 0..150 {
            let mode = [
                p2m_core::Mode::Ept,
                p2m_core::Mode::Npt,
                p2m_core::Mode::Shadow,
            ][i % 3];
            let s = Swarm::new(&mut rng, Some(mode)).scenario(&mut rng);
            for r in ["xen-4.6-pre", "patch-v1", "committed", "fixed"] {
                let d = scenario_dot(&s, rev(r), "swarm");
                assert_sane(&d);
                assert!(table_nodes(&d) <= MAX_TABLE_NODES);
                let nodes = |prefix: &str| {
                    d.lines()
                        .filter(|l| l.starts_with(prefix) && l.contains("[shape=box"))
                        .count()
                };
                assert!(nodes("    r") <= MAX_RECORD_NODES);
                assert!(nodes("    b") <= MAX_BAD_NODES);
                if d.contains("DIVERGENCE") {
                    diverged += 1;
                }
            }
        }
        assert!(diverged > 0);
    }
}
