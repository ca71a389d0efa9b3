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

#[cfg(test)]
mod tests {
    use super::*;

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
