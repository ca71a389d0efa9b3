//! The runner: applies each op to the model and the reference, then runs the oracle.

use crate::oracle::{check_cpu, check_range, merge_ranges, DivergenceClass, Finding};
use crate::scenario::{MfnSel, Op, Scenario};
use p2m_core::{Config, Domain, GfnRange, Mfn, ModelStats, Revision, INVALID_MFN};
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
}

impl Divergence {
    /// Class of the divergence.
    pub fn class(&self) -> DivergenceClass {
        self.finding.class
    }
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = &self.finding;
        writeln!(f, "DIVERGENCE: {} at gfn {:#x}", d.class, d.gfn)?;
        writeln!(f, "  config:    {} revision={}", self.config, self.revision)?;
        writeln!(f, "  device:    {}", d.device)?;
        writeln!(f, "  reference: {}", d.reference)?;
        match self.stale_op {
            Some(i) => writeln!(f, "  stale state left by op #{i}: {}", self.trace[i])?,
            None => writeln!(f, "  state left by the observing op itself")?,
        }
        writeln!(
            f,
            "  observed after op #{}: {}",
            self.observed_op, self.trace[self.observed_op]
        )?;
        writeln!(f, "  trace:")?;
        for (i, l) in self.trace.iter().enumerate() {
            writeln!(f, "    #{i:<3} {l}")?;
        }
        Ok(())
    }
}

/// The outcome of running one scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunOutcome {
    /// The first divergence, if any.
    pub divergence: Option<Divergence>,
    /// What the run exercised.
    pub stats: RunStats,
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
        let Op::SetEntry(e) = &self.op;
        op_line(&self.op, e.mfn, self.mfn)
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
    /// The model of Xen.
    dom: Domain,
    /// The flat reference.
    refm: RefModel,
    /// Op counters (the model-side counters are read at [`Session::stats`]).
    stats: RunStats,
    /// The ops applied so far with their resolved frames.
    steps: Vec<Step>,
}

impl Session {
    /// A fresh domain and reference for `cfg` (normalized) under `revision`.
    pub fn new(cfg: Config, revision: Revision) -> Session {
        let cfg = cfg.normalized();
        Session {
            cfg,
            revision: revision.name,
            allow_under_permissive: false,
            dom: Domain::new(cfg, revision),
            refm: RefModel::new(cfg, IommuPolicy::Xen46),
            stats: RunStats::default(),
            steps: Vec::new(),
        }
    }

    /// A fresh session for a scenario's configuration and oracle flag (its ops are not applied).
    pub fn for_scenario(s: &Scenario, revision: Revision) -> Session {
        let mut sess = Session::new(s.config, revision);
        sess.allow_under_permissive = s.allow_under_permissive;
        sess
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
        let Op::SetEntry(e) = op;
        let mfn = resolve_mfn(&self.dom, e.gfn, e.mfn);
        self.steps.push(Step { op: *op, mfn });
        let stats = &mut self.stats;
        stats.ops += 1;
        let real = self.dom.set_entry(e.gfn, mfn, e.order, e.p2mt, e.access);
        let reference = self.refm.set_entry(e.gfn, mfn, e.order, e.p2mt, e.access);
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
        let mut finding = check_cpu(&self.dom, &self.refm, real, reference, op_range);
        if finding.is_none() {
            let mut ranges: Vec<GfnRange> =
                self.dom.cache_records().iter().map(|r| r.range).collect();
            ranges.extend_from_slice(&self.dom.op_log().changed);
            if real.is_ok() {
                ranges.push(op_range);
            }
            let merged = merge_ranges(ranges);
            for r in merged {
                stats.range_checks += 1;
                // Under-permissive is judged on the op's own range only.
                let check_under = real.is_ok() && r.intersect(&op_range).is_some();
                finding = check_range(
                    &self.dom,
                    &self.refm,
                    r,
                    self.allow_under_permissive,
                    check_under,
                );
                if finding.is_some() {
                    break;
                }
            }
        }
        StepOutcome {
            finding,
            both_refused: real.is_err() && reference.is_err(),
        }
    }

    /// The report for a finding of the last op: its trace lines are built here.
    pub fn divergence(&self, finding: Finding) -> Divergence {
        let stale_op = finding.stale_seq.map(|q| q.saturating_sub(1) as usize);
        Divergence {
            finding,
            observed_op: self.steps.len().saturating_sub(1),
            stale_op,
            config: self.cfg,
            revision: self.revision,
            trace: self.steps.iter().map(Step::line).collect(),
        }
    }

    /// The ops so far as a scenario (table-frame selectors kept as written).
    pub fn scenario(&self) -> Scenario {
        Scenario {
            config: self.cfg,
            allow_under_permissive: self.allow_under_permissive,
            ops: self.steps.iter().map(|s| s.op).collect(),
        }
    }

    /// What the run exercised so far.
    pub fn stats(&self) -> RunStats {
        RunStats {
            model: self.dom.stats(),
            ..self.stats
        }
    }
}

/// What one [`Session::step_outcome`] saw.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepOutcome {
    /// The oracle's finding after the op, if any.
    pub finding: Option<Finding>,
    /// Both the model and the reference refused the op (neither changes state then).
    pub both_refused: bool,
}

/// Runs a scenario under a revision, stopping at the first divergence.
pub fn run(s: &Scenario, revision: Revision) -> RunOutcome {
    let mut sess = Session::for_scenario(s, revision);
    let mut divergence = None;
    for op in &s.ops {
        if let Some(f) = sess.step(op) {
            divergence = Some(sess.divergence(f));
            break;
        }
    }
    RunOutcome {
        divergence,
        stats: sess.stats(),
    }
}
