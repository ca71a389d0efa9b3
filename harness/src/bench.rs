//! The cost of a 1 GiB op against a 4 KiB op, per configuration and Xen line: the
//! `p2m-fuzz bench` table behind issue 13's "cost independent of size".
//!
//! Where it is hardest: IOMMU superpages off (`superpages=4k`, so every 4 KiB IOMMU entry
//! of the gigabyte is written), over a gigabyte already populated page by page
//! (`populate_physmap … order=0 nr=512`, 512 times: 512 level-1 tables on each side).
//! From that state (built once, then cloned) one op is timed — model, reference and
//! oracle together, as a fuzz run pays them: a 4 KiB remap of one page, and a 1 GiB remap
//! of the whole gigabyte to other frames. The figure is the median of the runs.

use std::time::{Duration, Instant};

use p2m_core::Revision;

use crate::runner::Session;
use crate::scenario::trace::parse_trace;
use crate::scenario::{Op, Scenario};

/// First gfn of the populated gigabyte.
const BASE: u64 = 0x40000;
/// Frame of `BASE` in the populated state (`gfn ≡ mfn` modulo 512, as a guest's
/// populate of contiguous memory gives).
const POPULATED: u64 = 0x140000;
/// Frame of `BASE` after the remap.
const REMAPPED: u64 = 0x280000;

/// The configurations measured: both vendors, shared and separate tables, all three modes.
pub const CONFIGS: &[&str] = &[
    "mode=ept vendor=vtd share=off superpages=4k",
    "mode=ept vendor=vtd share=on",
    "mode=npt vendor=amd share=off superpages=4k",
    "mode=npt vendor=amd share=on",
    "mode=shadow vendor=vtd share=off superpages=4k",
    "mode=shadow vendor=amd share=off superpages=4k",
];

/// One row of the table.
#[derive(Clone, Debug)]
pub struct CostRow {
    /// Revision measured (the line's fixed revision).
    pub revision: &'static str,
    /// Configuration line.
    pub config: &'static str,
    /// Median cost of the 4 KiB remap, µs.
    pub op_4k_us: f64,
    /// Median cost of the 1 GiB remap, µs.
    pub op_1g_us: f64,
    /// Timed runs of each.
    pub runs: usize,
}

impl CostRow {
    /// `op_1g_us / op_4k_us`.
    pub fn ratio(&self) -> f64 {
        self.op_1g_us / self.op_4k_us
    }
}

/// The one op of `line` under `cfg`.
fn op(cfg: &str, line: &str) -> Result<Op, String> {
    let s = parse_trace(&format!("config {cfg}\n{line}\n")).map_err(|e| format!("{e:?}"))?;
    s.ops.into_iter().next().ok_or_else(|| "no op".to_string())
}

/// The gigabyte populated page by page under `cfg`.
fn populated(cfg: &str) -> Result<Scenario, String> {
    let line = |i: u64| {
        let g = BASE + i * 512;
        format!(
            "populate_physmap gfn={g:#x} mfn={:#x} order=0 nr=512",
            g - BASE + POPULATED
        )
    };
    let mut s =
        parse_trace(&format!("config {cfg}\n{}\n", line(0))).map_err(|e| format!("{e:?}"))?;
    for i in 1..512 {
        s.ops.push(op(cfg, &line(i))?);
    }
    Ok(s)
}

/// Median of `v` (sorted in place).
fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
}

/// Times `op` from `state` (cloned for each run) for about `budget`, at least 5 runs.
fn time_op(state: &Session, op: &Op, budget: Duration) -> Result<(f64, usize), String> {
    let mut v = Vec::new();
    let start = Instant::now();
    while v.len() < 5 || (start.elapsed() < budget && v.len() < 2000) {
        let mut s = state.clone();
        let t = Instant::now();
        let finding = s.step(op);
        v.push(t.elapsed().as_secs_f64() * 1e6);
        if let Some(f) = finding {
            return Err(format!("the bench op diverges: {f:?}"));
        }
    }
    let n = v.len();
    Ok((median(&mut v), n))
}

/// The table for `revision` over [`CONFIGS`], `budget` per op and configuration.
pub fn cost_ratio(revision: Revision, budget: Duration) -> Result<Vec<CostRow>, String> {
    let mut rows = Vec::new();
    for &cfg in CONFIGS {
        let s = populated(cfg)?;
        let mut state = Session::for_scenario(&s, revision);
        for o in &s.ops {
            if let Some(f) = state.step(o) {
                return Err(format!(
                    "populating diverges under {}: {f:?}",
                    revision.name
                ));
            }
        }
        let small = op(
            cfg,
            &format!(
                "set_entry gfn={:#x} mfn={:#x} order=0 ram_rw rwx",
                BASE + 0x201,
                REMAPPED + 0x201
            ),
        )?;
        let big = op(
            cfg,
            &format!("set_entry gfn={BASE:#x} mfn={REMAPPED:#x} order=18 ram_rw rwx"),
        )?;
        let (op_4k_us, runs) = time_op(&state, &small, budget)?;
        let (op_1g_us, _) = time_op(&state, &big, budget)?;
        rows.push(CostRow {
            revision: revision.name,
            config: cfg,
            op_4k_us,
            op_1g_us,
            runs,
        });
    }
    Ok(rows)
}

/// One input of a corpus, timed: what [`corpus_cost`] reports per input.
#[derive(Clone, Debug)]
pub struct InputCost {
    /// File name of the input.
    pub name: String,
    /// Mean wall time of one replay (model, reference and oracle, as a fuzz target
    /// pays them), µs.
    pub us: f64,
    /// Ops of the scenario.
    pub ops: usize,
    /// The ops' names, in order (`populate_physmap,decrease_reservation`).
    pub shape: String,
}

/// The time spent in one kind of op over a whole corpus.
#[derive(Clone, Debug)]
pub struct OpKindCost {
    /// The op's name (`decrease_reservation`).
    pub name: String,
    /// Ops of this kind run per pass over the corpus.
    pub count: u64,
    /// Their total wall time per pass, µs (model, reference and oracle of each).
    pub us: f64,
}

/// The cost distribution of a corpus: where a fuzz target's time per execution goes.
#[derive(Clone, Debug, Default)]
pub struct CorpusCost {
    /// Every input, heaviest first.
    pub inputs: Vec<InputCost>,
    /// Time per kind of op, heaviest first (the rest of an input's time is setting up
    /// its session).
    pub by_op: Vec<OpKindCost>,
}

impl CorpusCost {
    /// Mean cost per input, µs.
    pub fn mean_us(&self) -> f64 {
        self.total_us() / self.inputs.len().max(1) as f64
    }
    /// Sum of the inputs' costs, µs.
    pub fn total_us(&self) -> f64 {
        self.inputs.iter().map(|i| i.us).sum()
    }
    /// The cost at quantile `q` (0.5 = median), µs.
    pub fn quantile_us(&self, q: f64) -> f64 {
        let n = self.inputs.len();
        if n == 0 {
            return f64::NAN;
        }
        // `inputs` is heaviest first: quantile q sits (1 - q) of the way down.
        let i = (((1.0 - q) * n as f64) as usize).min(n - 1);
        self.inputs[i].us
    }
    /// Share of the total time spent in the heaviest `fraction` of the inputs.
    pub fn share_of_heaviest(&self, fraction: f64) -> f64 {
        let k = ((self.inputs.len() as f64 * fraction).ceil() as usize).min(self.inputs.len());
        let top: f64 = self.inputs[..k].iter().map(|i| i.us).sum();
        top / self.total_us()
    }
    /// Op count at quantile `q` over the inputs.
    pub fn ops_quantile(&self, q: f64) -> usize {
        let mut v: Vec<usize> = self.inputs.iter().map(|i| i.ops).collect();
        v.sort_unstable();
        v.get(((q * v.len() as f64) as usize).min(v.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    }
}

/// The name of `op` as a trace spells it (`populate_physmap`).
fn op_name(op: &Op) -> String {
    op.to_string()
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// Replays each `(name, scenario)` `reps` times under `revision` as [`crate::runner::run`]
/// does (stopping at a finding or a domain crash) and times it, op by op: the
/// uninstrumented cost a fuzz target's callback pays per execution of that input.
pub fn corpus_cost(inputs: &[(String, Scenario)], revision: Revision, reps: u32) -> CorpusCost {
    let reps = reps.max(1);
    let mut out = Vec::with_capacity(inputs.len());
    let mut kinds: std::collections::BTreeMap<String, (u64, f64)> = Default::default();
    for (name, s) in inputs {
        let names: Vec<String> = s.ops.iter().map(op_name).collect();
        let mut total = 0.0;
        for _ in 0..reps {
            let t = Instant::now();
            let mut sess = Session::for_scenario(s, revision);
            total += t.elapsed().as_secs_f64();
            for (op, n) in s.ops.iter().zip(&names) {
                let t = Instant::now();
                let o = std::hint::black_box(sess.step_outcome(op));
                let dt = t.elapsed().as_secs_f64();
                total += dt;
                let k = kinds.entry(n.clone()).or_default();
                k.0 += 1;
                k.1 += dt;
                if o.ends_run() {
                    break;
                }
            }
        }
        out.push(InputCost {
            name: name.clone(),
            us: total * 1e6 / reps as f64,
            ops: s.ops.len(),
            shape: names.join(","),
        });
    }
    out.sort_by(|a, b| b.us.total_cmp(&a.us).then_with(|| a.name.cmp(&b.name)));
    let mut by_op: Vec<OpKindCost> = kinds
        .into_iter()
        .map(|(name, (n, secs))| OpKindCost {
            name,
            count: n / reps as u64,
            us: secs * 1e6 / reps as f64,
        })
        .collect();
    by_op.sort_by(|a, b| b.us.total_cmp(&a.us).then_with(|| a.name.cmp(&b.name)));
    CorpusCost { inputs: out, by_op }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corpus_cost_orders_heaviest_first_and_sums_shares() {
        let small = parse_trace("config mode=ept vendor=vtd share=off\nset_entry gfn=0x1 mfn=0x100001 order=0 ram_rw rwx\n").expect("trace");
        let big = populated(CONFIGS[0]).expect("scenario");
        let inputs = vec![("small".to_string(), small), ("big".to_string(), big)];
        let c = corpus_cost(&inputs, Revision::fixed(), 1);
        assert_eq!(c.inputs[0].name, "big");
        assert_eq!(c.inputs[0].ops, 512);
        assert!(c.inputs[0]
            .shape
            .starts_with("populate_physmap,populate_physmap"));
        assert_eq!(c.inputs[1].shape, "set_entry");
        assert!((c.share_of_heaviest(1.0) - 1.0).abs() < 1e-9);
        assert!(c.share_of_heaviest(0.5) > 0.5);
        assert_eq!(c.quantile_us(1.0), c.inputs[0].us);
        assert_eq!(c.ops_quantile(0.0), 1);
        // Two kinds of op, counted once per pass, their time within the inputs' total.
        let names: Vec<&str> = c.by_op.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["populate_physmap", "set_entry"]);
        assert_eq!(c.by_op[0].count, 512);
        assert_eq!(c.by_op[1].count, 1);
        let ops_us: f64 = c.by_op.iter().map(|k| k.us).sum();
        assert!(ops_us <= c.total_us() + 1e-6);
    }

    #[test]
    fn populated_state_is_one_run_per_side() {
        // The state the bench starts from runs clean and maps the whole gigabyte.
        let rev = Revision::by_name("master-fixed").expect("revision");
        let s = populated(CONFIGS[0]).expect("scenario");
        assert_eq!(s.ops.len(), 512);
        let mut state = Session::for_scenario(&s, rev);
        for o in &s.ops {
            assert!(state.step(o).is_none());
        }
        let last = BASE + (1 << 18) - 1;
        assert_eq!(
            state.reference().get_entry(last).0,
            p2m_core::Mfn(last - BASE + POPULATED)
        );
        assert_eq!(state.reference().extent_count(), 1);
    }
}
