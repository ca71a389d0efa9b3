//! The runner: applies each op to the model and the reference, then runs the oracle.

use crate::oracle::{
    check_bad_frees, check_batch, check_cpu, check_free_events, check_leaks, check_outcome,
    check_range, explain_record, merge_ranges, xen_bug, DivergenceClass, Finding,
};
use crate::reach::Unreachable;
use crate::scenario::{MfnSel, Op, Scenario, SetEntryOp};
use p2m_core::cache::Issued;
use p2m_core::callers::{CallerOp, InterleavedBatch};
use p2m_core::events::Split;
use p2m_core::physmap::{AddToPhysmapRange, BatchOutcome};
use p2m_core::{Config, Domain, GfnRange, Line, Mfn, ModelStats, P2mError, Revision, INVALID_MFN};
use reference_model::{IommuPolicy, RefModel};
use std::fmt;

/// Counters of what a run exercised, so that a target that checks nothing shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Ops applied.
    pub ops: u64,
    /// Ops both sides accepted.
    pub ops_ok: u64,
    /// Ops both sides refused.
    pub ops_err: u64,
    /// Accepted ops of order 0 / 9 / 18.
    pub by_order: [u64; 3],
    /// Oracle range checks made.
    pub range_checks: u64,
    /// Frees the oracle checked at the moment they happened.
    pub free_checks: u64,
    /// Non-fatal findings (leaked tables, cached under-permission) seen.
    pub notes: u64,
    /// Pages the `add_to_physmap_range` ops moved (model side).
    pub batch_pages: u64,
    /// Ops in which an injected allocation failure fired.
    pub alloc_failures: u64,
    /// What the model did.
    pub model: ModelStats,
}

impl RunStats {
    /// Adds another run's counters.
    pub fn add(&mut self, o: &RunStats) {
        self.ops += o.ops;
        self.ops_ok += o.ops_ok;
        self.ops_err += o.ops_err;
        for i in 0..3 {
            self.by_order[i] += o.by_order[i];
        }
        self.range_checks += o.range_checks;
        self.free_checks += o.free_checks;
        self.notes += o.notes;
        self.batch_pages += o.batch_pages;
        self.alloc_failures += o.alloc_failures;
        self.model.add(&o.model);
    }

    /// Every counter as `(name, value)`: the run's, then the model's.
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        let mut v = vec![
            ("ops", self.ops),
            ("ops_ok", self.ops_ok),
            ("ops_err", self.ops_err),
            ("order0", self.by_order[0]),
            ("order9", self.by_order[1]),
            ("order18", self.by_order[2]),
            ("range_checks", self.range_checks),
            ("free_checks", self.free_checks),
            ("notes", self.notes),
            ("batch_pages", self.batch_pages),
            ("alloc_failures", self.alloc_failures),
        ];
        v.extend(self.model.fields());
        v
    }
}

/// A divergence with everything a Xen developer needs to read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Divergence {
    /// What the oracle found.
    pub finding: Finding,
    /// Index of the op after which it was observed.
    pub observed_op: usize,
    /// Index of the op that left the stale state (if a cache record is to blame).
    pub stale_op: Option<usize>,
    /// Configuration.
    pub config: Config,
    /// Revision name.
    pub revision: &'static str,
    /// The scenario's ops up to and including the observing one, numbered.
    pub trace: Vec<String>,
    /// The invalidation commands each op of `trace` issued.
    pub flushes: Vec<Vec<String>>,
    /// Why no invalidation removed the stale record (when a record is to blame).
    pub explanation: Option<String>,
    /// Whether a Xen caller can issue the ops up to the observing one.
    pub reachability: String,
}

impl Divergence {
    /// Class of the divergence.
    pub fn class(&self) -> DivergenceClass {
        self.finding.class
    }
    /// True when every op up to the observing one is one a Xen caller can issue in a
    /// security-supported setup (as a caller op, or as a raw `set_entry` whose inputs a
    /// caller passes) and the configuration exists on the line.
    pub fn is_reachable(&self) -> bool {
        !self.reachability.starts_with("internal API only")
            && !self.reachability.starts_with("outside security support")
            && !self.reachability.starts_with("configuration not reachable")
    }

    /// True when the ops up to the observing one are all caller ops a guest, device model
    /// or toolstack issues, in a configuration the line permits: `reachable via <chain>`.
    pub fn is_caller_chain(&self) -> bool {
        self.reachability.starts_with(REACHABLE_VIA)
    }
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.finding;
        writeln!(f, "DIVERGENCE: {} at gfn {:#x}", d.class, d.gfn)?;
        writeln!(f, "  config:    {} revision={}", self.config, self.revision)?;
        writeln!(f, "  hardware:  {}", self.config.hw)?;
        writeln!(f, "  reachable: {}", self.reachability)?;
        writeln!(f, "  device:    {}", d.device)?;
        writeln!(f, "  reference: {}", d.reference)?;
        for c in &d.context {
            writeln!(f, "  {c}")?;
        }
        match self.stale_op {
            Some(i) if i < self.trace.len() => {
                writeln!(f, "  stale state left by op #{i}: {}", self.trace[i])?
            }
            _ => writeln!(f, "  state left by the observing op itself")?,
        }
        writeln!(
            f,
            "  observed after op #{}: {}",
            self.observed_op, self.trace[self.observed_op]
        )?;
        if let Some(e) = &self.explanation {
            writeln!(f, "  not invalidated: {e}")?;
        }
        writeln!(f, "  trace (with the invalidations each op issued):")?;
        for (i, l) in self.trace.iter().enumerate() {
            writeln!(f, "    #{i:<3} {l}")?;
            for fl in self.flushes.get(i).into_iter().flatten() {
                writeln!(f, "           flushed: {fl}")?;
            }
        }
        Ok(())
    }
}

/// How a report's reachability line starts when every op is a caller op.
pub const REACHABLE_VIA: &str = "reachable via ";

/// How a report's reachability line starts when a raw `set_entry` with inputs some
/// caller passes is among the ops.
pub const RAW_PLAUSIBLE: &str = "raw set_entry";

/// The gfns a caller op names (none for `assign_device`).
pub fn caller_ranges(c: &CallerOp) -> Vec<GfnRange> {
    if *c == CallerOp::AssignDevice {
        // The device may now reach the whole guest address space.
        return vec![GfnRange {
            start: 0,
            end: 1 << p2m_core::types::GFN_BITS,
        }];
    }
    let n = c.pages();
    if n == 0 {
        return Vec::new();
    }
    vec![GfnRange {
        start: c.gfn(),
        end: c.gfn().saturating_add(n),
    }]
}

/// What applying one op to both sides gave, for the oracle.
struct Applied {
    /// The model's result (a batch reads `Ok`: its outcome is compared on its own).
    real: Result<(), P2mError>,
    /// The reference's result.
    reference: Result<(), P2mError>,
    /// The gfns the op names.
    op_ranges: Vec<GfnRange>,
    /// A finding made while applying (differing batch outcomes).
    early: Option<Finding>,
    /// Both sides refused the op outright (neither changed anything).
    both_refused: bool,
}

/// The outcome of running one scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    /// The first fatal divergence, if any.
    pub divergence: Option<Divergence>,
    /// The first non-fatal finding of each class, in the order seen.
    pub notes: Vec<Divergence>,
    /// The domain crashed (`domain_crash`), ending the scenario: why.
    pub crashed: Option<&'static str>,
    /// What the run exercised.
    pub stats: RunStats,
}

/// The reference's permission policy for a line of Xen.
pub fn policy_of(line: Line) -> IommuPolicy {
    match line {
        Line::Xen46 => IommuPolicy::Xen46,
        Line::Master => IommuPolicy::Master,
    }
}

/// Resolves the frame selector of an op on `gfn` against the model's state before the op.
pub fn resolve_mfn(dom: &Domain, gfn: u64, sel: MfnSel) -> Mfn {
    match sel {
        MfnSel::Frame(m) => Mfn(m),
        MfnSel::Invalid => INVALID_MFN,
        MfnSel::TableFrame(k) => {
            let ever = dom.mem().ever_allocated();
            if ever.is_empty() {
                INVALID_MFN
            } else {
                Mfn(ever[k as usize % ever.len()])
            }
        }
        MfnSel::TableAt(level) => dom.p2m_table_at(gfn, level).map_or(INVALID_MFN, Mfn),
        MfnSel::Current => dom.get_entry(gfn).map_or(INVALID_MFN, |e| e.mfn),
    }
}

/// The report line of `op` whose selector `sel` resolved to `mfn`: the op, then the
/// resolved frame for a selector (`ptf = …`, `tbl:L = …`, `cur = …`).
pub fn op_line(op: &Op, sel: MfnSel, mfn: Mfn) -> String {
    match sel {
        MfnSel::TableFrame(_) => format!("{op}  (ptf = {mfn})"),
        MfnSel::TableAt(_) | MfnSel::Current => format!("{op}  ({sel} = {mfn})"),
        MfnSel::Frame(_) | MfnSel::Invalid => format!("{op}"),
    }
}

/// One applied op and the frame its selector resolved to (the trace line is built from
/// these only when a divergence is reported).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Step {
    /// The op as written.
    op: Op,
    /// The frame passed to both models.
    mfn: Mfn,
}

impl Step {
    /// The trace line of this step (`(ptf = …)`, `(tbl:L = …)`, `(cur = …)` appended
    /// for a selector).
    fn line(&self) -> String {
        op_line(&self.op, self.op.mfn_sel(), self.mfn)
    }
}

/// A run in progress: the model, the reference and the counters after a prefix of
/// ops. Cloning it lets a search continue from a prefix instead of replaying it.
#[derive(Clone, Debug)]
pub struct Session {
    /// Configuration (normalized).
    cfg: Config,
    /// Revision name (for reports).
    revision: &'static str,
    /// Tolerate under-permissive views (the scenario flag).
    allow_under_permissive: bool,
    /// Every class is fatal (`--strict`, `P2M_STRICT=1`).
    strict: bool,
    /// The model of Xen.
    dom: Domain,
    /// The flat reference.
    refm: RefModel,
    /// Op counters (the model-side counters are read at [`Session::stats`]).
    stats: RunStats,
    /// The ops applied so far with their resolved frames.
    steps: Vec<Step>,
    /// Invalidations issued, tagged with the index of the op that issued them.
    issued: Vec<(usize, Issued)>,
    /// Superpages split, tagged with the index of the op that split them.
    splits: Vec<(usize, Split)>,
    /// First non-fatal finding of each class.
    notes: Vec<Divergence>,
    /// The first op no Xen caller issues (or only outside security support), and why
    /// (see [`crate::reach`]); a configuration the line does not have comes first.
    unreachable: Option<(usize, Unreachable)>,
    /// The first raw `set_entry` op (the internal API), if any.
    first_raw: Option<usize>,
    /// The op index of each domain op sequence number (1-based, so `seq - 1` indexes
    /// this): a fault injection is an op of the scenario but runs nothing.
    op_of_seq: Vec<usize>,
    /// A fault injection is armed for the next op.
    armed: bool,
}

impl Session {
    /// A fresh domain and reference for `cfg` (normalized) under `revision`.
    pub fn new(cfg: Config, revision: Revision) -> Session {
        let cfg = cfg.normalized();
        Session {
            cfg,
            revision: revision.name,
            allow_under_permissive: false,
            strict: false,
            dom: Domain::new(cfg, revision),
            refm: RefModel::new(cfg, policy_of(revision.line())),
            stats: RunStats::default(),
            steps: Vec::new(),
            issued: Vec::new(),
            splits: Vec::new(),
            notes: Vec::new(),
            unreachable: crate::reach::config_verdict(revision.line(), &cfg).map(|v| (0, v)),
            first_raw: None,
            op_of_seq: Vec::new(),
            armed: false,
        }
    }

    /// A fresh session for a scenario's configuration and oracle flag (its ops are not applied).
    pub fn for_scenario(s: &Scenario, revision: Revision) -> Session {
        let mut cfg = s.config;
        cfg.pci_hotplug = crate::scenario::bytes::has_assign_device(&s.ops);
        let mut sess = Session::new(cfg, revision);
        sess.allow_under_permissive = s.allow_under_permissive;
        sess
    }

    /// Turns the model's run steps on or off (see `p2m_core::Domain::set_run_fast_path`):
    /// for the equivalence tests.
    pub fn set_run_fast_path(&mut self, on: bool) {
        self.dom.set_run_fast_path(on);
    }

    /// The first op no Xen caller issues (index, why), if any.
    pub fn unreachable(&self) -> Option<(usize, Unreachable)> {
        self.unreachable
    }

    /// Makes every class fatal (leaked tables and cached under-permission included).
    pub fn set_strict(&mut self, strict: bool) {
        self.strict = strict;
    }

    /// The non-fatal findings so far (first of each class).
    pub fn notes(&self) -> &[Divergence] {
        &self.notes
    }

    /// Sets the scenario flag that tolerates under-permissive views.
    pub fn set_allow_under_permissive(&mut self, allow: bool) {
        self.allow_under_permissive = allow;
    }

    /// The (normalized) configuration.
    pub fn config(&self) -> Config {
        self.cfg
    }

    /// The model of Xen, as the ops so far left it.
    pub fn domain(&self) -> &Domain {
        &self.dom
    }

    /// The reference, as the ops so far left it.
    pub fn reference(&self) -> &RefModel {
        &self.refm
    }

    /// Number of ops applied so far.
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// True before the first op.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// The ops applied so far, in order.
    pub fn ops(&self) -> impl Iterator<Item = &Op> + '_ {
        self.steps.iter().map(|s| &s.op)
    }

    /// Applies one op to both sides and runs the oracle; returns what it found.
    pub fn step(&mut self, op: &Op) -> Option<Finding> {
        self.step_outcome(op).finding
    }

    /// Like [`Session::step`], also saying whether both sides refused the op.
    pub fn step_outcome(&mut self, op: &Op) -> StepOutcome {
        if let Op::FailAlloc { nth } = op {
            // Nothing runs yet: the next op meets the failure.
            self.dom.arm_alloc_failure(*nth);
            self.armed = true;
            self.steps.push(Step {
                op: *op,
                mfn: INVALID_MFN,
            });
            self.stats.ops += 1;
            return StepOutcome {
                finding: None,
                both_refused: false,
                crashed: None,
            };
        }
        self.op_of_seq.push(self.steps.len());
        let mfn = match op {
            Op::SetEntry(e) => resolve_mfn(&self.dom, e.gfn, e.mfn),
            _ => INVALID_MFN,
        };
        if !op.is_caller_op() && self.first_raw.is_none() {
            self.first_raw = Some(self.steps.len());
        }
        let caller = match op {
            Op::Call(c) => Some(c),
            Op::Interleaved(ib) => Some(&ib.second.op),
            _ => None,
        };
        if let (None, Some(c)) = (self.unreachable, caller) {
            if let Some(v) = crate::reach::caller_verdict(c, &self.refm, &self.dom) {
                self.unreachable = Some((self.steps.len(), v));
            }
        }
        if self.unreachable.is_none() && !op.is_caller_op() {
            let table = self
                .dom
                .mem()
                .info(mfn.0)
                .is_some_and(|i| i.state != p2m_core::frames::FrameState::Free);
            let v =
                crate::reach::verdict(self.dom.line(), &self.cfg, op, mfn, table).or_else(|| {
                    crate::reach::alias_reason(&self.refm, op, mfn).map(Unreachable::InternalApi)
                });
            if let Some(v) = v {
                self.unreachable = Some((self.steps.len(), v));
            }
        }
        self.steps.push(Step { op: *op, mfn });
        self.stats.ops += 1;
        // An op whose effect depends on a page's type where the reference cannot tell
        // `ram_rw` from `ram_logdirty` (`reference_model::logdirty`) — a retype, VRAM
        // tracking re-armed page by page, a vCPU's write — has an outcome only the model
        // knows: the reference then takes the model's result over the op's ranges.
        let ambiguous = caller.is_some_and(|c| {
            matches!(
                c,
                CallerOp::SetMemType { .. }
                    | CallerOp::TrackDirtyVram { .. }
                    | CallerOp::GuestAccess { .. }
                    | CallerOp::SetMemAccess { .. }
            ) && caller_ranges(c)
                .iter()
                .any(|&r| self.refm.type_either_in(r))
        });
        // The reference before an op that may take an error path (see `RefModel::resync`).
        let armed = std::mem::take(&mut self.armed) || ambiguous;
        let before = armed.then(|| self.refm.clone());
        let Applied {
            mut real,
            mut reference,
            op_ranges,
            mut early,
            both_refused,
        } = match op {
            Op::SetEntry(e) => match self.apply_set_entry(e, mfn) {
                Ok(t) => t,
                Err(out) => return *out,
            },
            Op::AddToPhysmap(b) => self.apply_batch(b),
            Op::Call(c) => self.apply_call(c),
            Op::Interleaved(ib) => self.apply_interleaved(ib),
            // Handled above; nothing to apply.
            Op::FailAlloc { .. } => Applied {
                real: Ok(()),
                reference: Ok(()),
                op_ranges: Vec::new(),
                early: None,
                both_refused: false,
            },
        };
        // A caller op that reached one of Xen's `BUG_ON`s (inputs of the internal API, the
        // host would crash) is the non-fatal `xen-bug` note; like an allocation failure,
        // the reference then takes what the model did up to there.
        let hit_bug = early
            .as_ref()
            .is_some_and(|f| f.class == DivergenceClass::XenBug);
        let resynced = self.dom.alloc_failed() || hit_bug || ambiguous;
        if resynced {
            // The op took Xen's error path: what the p2m holds now is Xen's result, not
            // the reference's. The reference takes it over the op's ranges, so the oracle
            // judges the IOMMU against what the p2m grants after the failure.
            let hint = op.as_set_entry().map(|e| e.access);
            let before = before.as_ref().unwrap_or(&self.refm).clone();
            for r in merge_ranges(op_ranges.clone()) {
                let ext = self.dom.cpu_extents(r);
                self.refm.resync(
                    r,
                    ext.iter().map(|e| (e.range, e.mfn, e.p2mt, e.access)),
                    &before,
                    hint,
                );
            }
            self.refm.resync_max_mapped(self.dom.max_mapped_pfn());
            if hit_bug {
                if let Some(b) = early.take() {
                    if b.class.is_fatal(self.strict) {
                        early = Some(b);
                    } else {
                        self.note(b);
                    }
                }
            } else {
                if self.dom.alloc_failed() {
                    self.stats.alloc_failures += 1;
                }
                early = None;
            }
            real = Ok(());
            reference = Ok(());
        }
        let stats = &mut self.stats;
        let log = self.dom.op_log();
        stats.free_checks += log.frees.len() as u64;
        let idx = self.steps.len() - 1;
        self.issued
            .extend(log.invalidations.iter().map(|inv| (idx, *inv)));
        self.splits.extend(log.splits.iter().map(|sp| (idx, *sp)));
        let mut changed: Vec<GfnRange> = log.changed.clone();
        for inv in &log.invalidations {
            if let (Some(r), _) = inv.cmd.scope() {
                changed.push(GfnRange {
                    start: r.start,
                    end: r.start + r.len() * inv.pages.max(1),
                });
            }
        }
        // The CPU view changes only where the p2m was written (or where the reference
        // wrote: the op's ranges).
        let mut cpu_changed: Vec<GfnRange> = log.p2m_changed.clone();
        if real.is_ok() {
            changed.extend_from_slice(&op_ranges);
            cpu_changed.extend_from_slice(&op_ranges);
        }
        let changed = merge_ranges(changed);
        let cpu_changed = merge_ranges(cpu_changed);
        let mut notes: Vec<Finding> = Vec::new();
        // Inside-the-op findings first: they are the earliest and the root of later ones.
        let named = matches!(op, Op::SetEntry(_)).then_some(op_ranges.as_slice());
        let mut finding = crate::log_check::check_op_log(self.dom.op_log(), named)
            .or_else(|| check_free_events(&self.dom, &self.refm, &op_ranges))
            .or_else(|| check_bad_frees(&self.dom))
            .or(early)
            // After a resync the reference holds the p2m's own result over the op's
            // ranges (as far as it can represent it): no CPU-view check for that op.
            .or_else(|| {
                (!resynced)
                    .then(|| check_cpu(&self.dom, &self.refm, real, reference, &cpu_changed))
                    .flatten()
            });
        if finding.is_none() {
            let mut ranges: Vec<GfnRange> =
                self.dom.cache_records().iter().map(|r| r.range).collect();
            ranges.extend_from_slice(&changed);
            for r in merge_ranges(ranges) {
                stats.range_checks += 1;
                // Under-permission is judged where the op changed something.
                let check_under = real.is_ok() && changed.iter().any(|c| c.intersect(&r).is_some());
                let (fatal, note) = check_range(
                    &self.dom,
                    &self.refm,
                    r,
                    self.allow_under_permissive,
                    check_under,
                );
                notes.extend(note);
                if fatal.is_some() {
                    finding = fatal;
                    break;
                }
            }
        }
        if finding.is_none() {
            notes.extend(check_leaks(&self.dom));
        }
        for n in notes {
            if n.class.is_fatal(self.strict) {
                finding = finding.or(Some(n));
            } else {
                self.note(n);
            }
        }
        // A crashed domain runs no more; what its devices keep reaching of its own memory
        // ends with it. Frees still count: the frame goes to someone else.
        if let Some(why) = self.dom.crashed() {
            if finding.as_ref().is_some_and(|f| {
                !matches!(
                    f.class,
                    DivergenceClass::FreedFrameReachable | DivergenceClass::BadFree
                )
            }) {
                let mut f = finding.take().expect("checked");
                f.context.push(format!(
                    "the op crashed the domain ({why}): reported as a note"
                ));
                self.note(f);
            }
        }
        StepOutcome {
            finding,
            both_refused,
            crashed: self.dom.crashed(),
        }
    }

    /// Runs a `set_entry` op on both sides: `(model result, reference result, the op's
    /// range, no early finding)`, or the whole outcome when the op reaches a `BUG_ON`.
    fn apply_set_entry(&mut self, e: &SetEntryOp, mfn: Mfn) -> Result<Applied, Box<StepOutcome>> {
        let real = self.dom.set_entry(e.gfn, mfn, e.order, e.p2mt, e.access);
        if let Err(P2mError::XenBug(what)) = real {
            // Xen would have crashed; the model changed nothing, the reference is not asked.
            self.stats.ops_err += 1;
            let f = xen_bug(e.gfn, what);
            return Err(Box::new(self.note_or_finding(f, true)));
        }
        let reference = self.refm.set_entry(e.gfn, mfn, e.order, e.p2mt, e.access);
        let stats = &mut self.stats;
        if real.is_ok() {
            stats.ops_ok += 1;
            if let Some(k) = p2m_core::PAGE_ORDERS.iter().position(|&o| o == e.order) {
                stats.by_order[k] += 1;
            }
        } else if reference.is_err() {
            stats.ops_err += 1;
        }
        let op_range = if e.order < 64 {
            GfnRange {
                start: e.gfn,
                end: e.gfn.saturating_add(1u64 << e.order.min(40)),
            }
        } else {
            GfnRange::of_order(e.gfn, 0)
        };
        Ok(Applied {
            real,
            reference,
            op_ranges: vec![op_range],
            early: None,
            both_refused: real.is_err() && reference.is_err(),
        })
    }

    /// Runs an `add_to_physmap_range` op: the model, then the reference, told which frames
    /// the model found holding Xen tables (the reference keeps no tables). Both results
    /// read as `Ok` to the CPU check; differing outcomes are the early finding.
    fn apply_batch(&mut self, b: &AddToPhysmapRange) -> Applied {
        let got = self.dom.add_to_physmap_range(*b);
        let xen_frames = &self.dom.op_log().xen_frames;
        let want = self
            .refm
            .add_to_physmap_range(*b, &|g: u64, m: u64| xen_frames.contains(&(g, m)));
        if got.rc.is_ok() {
            self.stats.ops_ok += 1;
        } else if got.done == 0 && want.rc.is_err() {
            self.stats.ops_err += 1;
        }
        self.stats.batch_pages += got.done;
        Applied {
            real: Ok(()),
            reference: Ok(()),
            op_ranges: b.ranges(),
            early: check_batch(b, got, want),
            both_refused: got.done == 0 && got.rc.is_err() && want.rc.is_err(),
        }
    }

    /// Runs a caller op on both sides (the reference told which frames the model found
    /// holding Xen tables); differing outcomes are the early finding.
    fn apply_call(&mut self, c: &CallerOp) -> Applied {
        let got = self.dom.call(*c);
        let xen_frames = &self.dom.op_log().xen_frames;
        let want = self
            .refm
            .call(*c, &|g: u64, m: u64| xen_frames.contains(&(g, m)));
        self.identity_error_path(c, got);
        if got.rc.is_ok() {
            self.stats.ops_ok += 1;
        } else if got.done == 0 && want.rc.is_err() {
            self.stats.ops_err += 1;
        }
        Applied {
            real: Ok(()),
            reference: Ok(()),
            op_ranges: caller_ranges(c),
            early: match got.rc {
                Err(p2m_core::physmap::PhysmapError::P2m(P2mError::XenBug(what))) => {
                    Some(xen_bug(c.gfn(), what))
                }
                _ => {
                    let what = c.to_string();
                    check_outcome(&what, &what, c.gfn(), got, want)
                }
            },
            both_refused: got.done == 0 && got.rc.is_err() && want.rc.is_err(),
        }
    }

    /// After an `identity_map` add that failed on an injected allocation failure, the
    /// reference's list follows Xen's error path (see `RefModel::identity_map_failed`).
    fn identity_error_path(&mut self, c: &CallerOp, got: BatchOutcome) {
        if let CallerOp::IdentityMap {
            gfn, nr, add: true, ..
        } = *c
        {
            if self.dom.alloc_failed() && got.rc.is_err() {
                self.refm.identity_map_failed(gfn, nr.into(), got.done);
            }
        }
    }

    /// Runs a batch with a second vCPU's caller op inside it on both sides.
    fn apply_interleaved(&mut self, ib: &InterleavedBatch) -> Applied {
        let got = self.dom.add_to_physmap_interleaved(*ib);
        let log = self.dom.op_log();
        let (first, second) = (&log.xen_frames, &log.xen_frames_second);
        let want = self.refm.add_to_physmap_interleaved(
            *ib,
            &|g: u64, m: u64| first.contains(&(g, m)),
            &|g: u64, m: u64| second.contains(&(g, m)),
        );
        self.identity_error_path(&ib.second.op, got.second);
        if got.batch.rc.is_ok() {
            self.stats.ops_ok += 1;
        }
        self.stats.batch_pages += got.batch.done;
        let mut op_ranges = ib.batch.ranges();
        op_ranges.extend(caller_ranges(&ib.second.op));
        let early = check_batch(&ib.batch, got.batch, want.batch).or_else(|| {
            let c = &ib.second.op;
            let what = format!("second vCPU: {c}");
            check_outcome(&what, &what, c.gfn(), got.second, want.second)
        });
        Applied {
            real: Ok(()),
            reference: Ok(()),
            op_ranges,
            early,
            both_refused: false,
        }
    }

    /// Counts a non-fatal finding, keeping the first of each class.
    fn note(&mut self, n: Finding) {
        self.stats.notes += 1;
        if !self.notes.iter().any(|d| d.finding.class == n.class) {
            let d = self.divergence(n);
            self.notes.push(d);
        }
    }

    /// The outcome of an op that ends in `f` alone: a finding when fatal, else a note.
    fn note_or_finding(&mut self, f: Finding, both_refused: bool) -> StepOutcome {
        let finding = if f.class.is_fatal(self.strict) {
            Some(f)
        } else {
            self.note(f);
            None
        };
        StepOutcome {
            finding,
            both_refused,
            crashed: self.dom.crashed(),
        }
    }

    /// The report for a finding of the last op: its trace lines are built here.
    pub fn divergence(&self, mut finding: Finding) -> Divergence {
        let stale_op = finding.stale_seq.and_then(|q| {
            let k = usize::try_from(q).ok()?.checked_sub(1)?;
            self.op_of_seq.get(k).copied()
        });
        // The last split of a superpage holding the gfn, if any: it rewrote the entries.
        if let Some((op, sp)) = self
            .splits
            .iter()
            .rev()
            .find(|(_, sp)| sp.range.contains(finding.gfn))
        {
            finding.context.push(format!(
                "gfn {:#x} lies in the superpage gfn {} split by op #{op} ({})",
                finding.gfn, sp.range, sp.by
            ));
        }
        let observed_op = self.steps.len().saturating_sub(1);
        let mut flushes = vec![Vec::new(); self.steps.len()];
        for (op, inv) in &self.issued {
            if let Some(v) = flushes.get_mut(*op) {
                v.push(inv.to_string());
            }
        }
        let explanation = finding.record.map(|r| {
            explain_record(
                &r,
                &self.issued,
                stale_op.unwrap_or(observed_op),
                observed_op,
                self.cfg.hw,
            )
        });
        let reachability = match (self.unreachable, self.first_raw) {
            (Some((_, v @ Unreachable::Config(..))), _) => v.describe(),
            (Some((op, v)), _) if op <= observed_op => format!("{} (op #{op})", v.describe()),
            (_, Some(op)) if op <= observed_op => format!(
                "{RAW_PLAUSIBLE} (op #{op}) with inputs a caller passes: no input a Xen \
                 caller rules out, but not replayed through caller ops"
            ),
            _ => format!(
                "{REACHABLE_VIA}{}",
                caller_chain(&self.steps[..=observed_op.min(self.steps.len() - 1)])
            ),
        };
        Divergence {
            finding,
            observed_op,
            stale_op,
            config: self.cfg,
            revision: self.revision,
            trace: self.steps.iter().map(Step::line).collect(),
            flushes,
            explanation,
            reachability,
        }
    }

    /// The ops so far as a scenario (table-frame selectors kept as written).
    pub fn scenario(&self) -> Scenario {
        Scenario {
            config: self.cfg,
            allow_under_permissive: self.allow_under_permissive,
            ops: self.steps.iter().map(|s| s.op).collect(),
        }
        .with_hotplug_derived()
    }

    /// What the run exercised so far.
    pub fn stats(&self) -> RunStats {
        RunStats {
            model: self.dom.stats(),
            ..self.stats
        }
    }
}

/// The caller chain of `steps` (all caller ops): each op's Xen entry point and issuer,
/// consecutive repeats folded (`populate_physmap (guest) → set_mem_type (device model)`).
fn caller_chain(steps: &[Step]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut push = |s: String| {
        if parts.last() != Some(&s) {
            parts.push(s);
        }
    };
    for st in steps {
        match &st.op {
            Op::Call(c) => push(format!("{} ({})", c.name(), c.issuer())),
            Op::AddToPhysmap(_) => push("add_to_physmap_range (guest)".into()),
            Op::Interleaved(ib) => {
                push("add_to_physmap_range (guest)".into());
                push(format!(
                    "{} ({}, second vCPU inside the batch)",
                    ib.second.op.name(),
                    ib.second.op.issuer()
                ));
            }
            Op::SetEntry(_) => push("set_entry (internal API)".into()),
            Op::FailAlloc { nth } => push(format!(
                "allocation {nth} of the next op fails (pool or heap exhausted)"
            )),
        }
    }
    if parts.is_empty() {
        "no op".into()
    } else {
        parts.join(" → ")
    }
}

/// What one [`Session::step_outcome`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepOutcome {
    /// The oracle's finding after the op, if any.
    pub finding: Option<Finding>,
    /// Both the model and the reference refused the op (neither changes state then).
    pub both_refused: bool,
    /// The op crashed the domain (`domain_crash`, and why): the scenario ends here with
    /// its own verdict, not a divergence.
    pub crashed: Option<&'static str>,
}

impl StepOutcome {
    /// The scenario ends at this op: a fatal finding, or the domain crashed.
    pub fn ends_run(&self) -> bool {
        self.finding.is_some() || self.crashed.is_some()
    }
}

/// Runs a scenario under a revision, stopping at the first fatal divergence.
pub fn run(s: &Scenario, revision: Revision) -> RunOutcome {
    run_with(s, revision, false)
}

/// [`run`], with every class fatal when `strict`.
pub fn run_with(s: &Scenario, revision: Revision, strict: bool) -> RunOutcome {
    let mut sess = Session::for_scenario(s, revision);
    sess.set_strict(strict);
    let mut divergence = None;
    let mut crashed = None;
    for op in &s.ops {
        let out = sess.step_outcome(op);
        let ends = out.ends_run();
        if let Some(f) = out.finding {
            divergence = Some(sess.divergence(f));
        } else {
            crashed = out.crashed;
        }
        if ends {
            break;
        }
    }
    RunOutcome {
        divergence,
        notes: sess.notes.clone(),
        crashed,
        stats: sess.stats(),
    }
}
