//! Root-cause attribution by switch: which single revision switch, set to its value in
//! `fixed`, makes a diverging scenario clean. Each switch models one Xen behaviour (one
//! commit of the series, or one hole closed in `fixed`), so the answer names the bug.

use p2m_core::Revision;

use crate::{run, DivergenceClass, Scenario};

/// The outcome of blaming one diverging scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blame {
    /// Class of the divergence under the blamed revision.
    pub class: DivergenceClass,
    /// Switches whose `fixed` value alone removes the divergence, in declaration order.
    pub culprits: Vec<&'static str>,
    /// Switches that differ from `fixed` but whose fix alone does not help.
    pub bystanders: Vec<&'static str>,
}

/// Blames the divergence `s` shows under `rev`; `None` when `s` is clean under `rev`.
pub fn blame(s: &Scenario, rev: Revision) -> Option<Blame> {
    let class = run(s, rev).divergence?.class();
    let fixed = Revision::reference(rev.line()).switches;
    let mut culprits = Vec::new();
    let mut bystanders = Vec::new();
    for &name in rev.switches.names() {
        let Some(sw) = rev.switches.with_switch_from(name, &fixed) else {
            continue;
        };
        if sw == rev.switches {
            continue;
        }
        let trial = Revision {
            switches: sw,
            ..rev
        };
        if run(s, trial).divergence.is_none() {
            culprits.push(name);
        } else {
            bystanders.push(name);
        }
    }
    Some(Blame {
        class,
        culprits,
        bystanders,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scenario::parse_trace;

    #[test]
    fn george_case_is_blamed_on_the_pt_iommu_conditions() {
        let s = parse_trace(
            "config mode=npt vendor=amd share=on\n\
             set_entry gfn=0x200 mfn=0x100200 order=0 ram_rw rwx\n\
             set_entry gfn=0x200 mfn=INVALID_MFN order=9 invalid rwx\n",
        )
        .unwrap();
        let b = blame(&s, Revision::by_name("patch-v1").unwrap()).expect("diverges");
        assert_eq!(b.culprits, vec!["pt_iommu_conditions"]);
        assert!(blame(&s, Revision::fixed()).is_none());
    }
}
