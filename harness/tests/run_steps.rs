//! The model's run steps (`p2m_core::xen46::p2m_pt::run`: `p2m_set_entry`'s 4 KiB chunks
//! within one table as one step) against the literal per-chunk loop: random swarm
//! scenarios, both sessions in lock step, the whole domain compared after every op (tables
//! and frames, IOMMU tables and cache records, invalidations issued, frees, counters) and
//! the verdicts. `P2M_RUN_STEP_SCENARIOS` raises the count (default 20,000 per revision;
//! the acceptance run of issue 13 used 100,000).

use harness::generate::Swarm;
use harness::oracle::merge_ranges;
use harness::{revision_by_name, Session};
use p2m_core::xen46::domain::P2m;
use p2m_core::Mode;
use rand::rngs::SmallRng;
use rand::SeedableRng;

/// Everything the model holds after an op, as text; the knob itself left out, and the
/// changed ranges compared as the set of gfns they cover (a run step logs one range
/// where the loop logs one per chunk).
fn state(s: &Session) -> String {
    let dom = s.domain();
    let d = dom.as_xen46().expect("a 4.6 domain");
    let log = &d.log;
    let p2m = match &d.p2m {
        P2m::Pt(p) => format!("{:?} {:#x} {:?}", p.tables, p.root, p.recalc_state),
        P2m::Ept(e) => format!("{:?} {:#x} {:?}", e.tables, e.root, e.recalc_state),
    };
    // `created` counts cache records as made: one per run written, however many pages.
    let iommu = format!("{:?}", d.iommu);
    let iommu = match iommu.find("created: ") {
        Some(i) => {
            let end = iommu[i + 9..]
                .find(|c: char| !c.is_ascii_digit())
                .map_or(iommu.len(), |e| i + 9 + e);
            format!("{}{}", &iommu[..i], &iommu[end..])
        }
        None => iommu,
    };
    format!(
        "mem {:?}\np2m {p2m}\niommu {iommu}\nstats {:?}\ncrashed {:?}\nchanged {:?}\n\
         p2m_changed {:?}\ninvalidations {:?}\nfrees {:?}\nbad_frees {:?}\nunlinked {:?}\n\
         splits {:?}\nxen_frames {:?} {:?}\nmoved_from {:?}\nnotes {:?}",
        d.mem,
        d.stats,
        d.crashed,
        merge_ranges(log.changed.clone()),
        merge_ranges(log.p2m_changed.clone()),
        log.invalidations,
        log.frees,
        log.bad_frees,
        log.unlinked,
        log.splits,
        log.xen_frames,
        log.xen_frames_second,
        log.moved_from,
        s.notes(),
    )
}

fn scenarios() -> usize {
    std::env::var("P2M_RUN_STEP_SCENARIOS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
}

#[test]
fn run_steps_equal_the_per_chunk_loop_on_4_6() {
    let n = scenarios();
    let mut steps_taken = 0u64;
    for (i, name) in ["fixed", "xen-4.6-pre", "patch-v1", "committed"]
        .iter()
        .enumerate()
    {
        let rev = revision_by_name(name).expect("revision");
        let mut rng = SmallRng::seed_from_u64(0x5eed + i as u64);
        for k in 0..n / 4 {
            let mode = Mode::ALL[k % 3];
            let s = Swarm::new(&mut rng, Some(mode)).scenario(&mut rng);
            let mut fast = Session::for_scenario(&s, rev);
            let mut slow = Session::for_scenario(&s, rev);
            slow.set_run_fast_path(false);
            for (j, op) in s.ops.iter().enumerate() {
                let a = fast.step(op);
                let b = slow.step(op);
                assert_eq!(
                    format!("{a:?}"),
                    format!("{b:?}"),
                    "{name} scenario {k} op {j}\n{s:?}"
                );
                let (x, y) = (state(&fast), state(&slow));
                if x != y {
                    if let Ok(dir) = std::env::var("P2M_RUN_STEP_DUMP") {
                        let _ = std::fs::write(format!("{dir}/run-step.txt"), &x);
                        let _ = std::fs::write(format!("{dir}/per-chunk.txt"), &y);
                    }
                    let at = x
                        .lines()
                        .zip(y.lines())
                        .find(|(p, q)| p != q)
                        .map(|(p, q)| format!("run step: {p}\nper chunk: {q}"));
                    panic!("{name} scenario {k} op {j} {op:?}: states differ\n{at:?}\n{s:?}");
                }
                if a.is_some() {
                    break;
                }
            }
            steps_taken += match fast.domain().as_xen46().map(|d| &d.p2m) {
                Some(P2m::Pt(p)) => p.run_steps,
                Some(P2m::Ept(e)) => e.run_steps,
                None => 0,
            };
        }
    }
    // The comparison means something only if the run step was taken.
    assert!(
        steps_taken > n as u64 / 20,
        "run steps taken: {steps_taken} in {n} scenarios"
    );
}
