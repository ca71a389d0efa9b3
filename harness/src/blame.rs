//! Root-cause attribution by switch: which single revision switch, set to its value in
//! the line's reference revision (`fixed`, `xen-master`), makes a diverging scenario clean
//! — or, when none alone does, which pair together. Each switch models one Xen behaviour
//! (one commit, or one hole closed in `fixed`), so the answer names the bug. A divergence
//! under a revision with no switch differing from the reference is a new hole.

use p2m_core::Revision;

use crate::{run_with, DivergenceClass, Scenario};

/// The outcome of blaming one diverging scenario.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Blame {
    /// Class of the divergence under the blamed revision.
    pub class: DivergenceClass,
    /// Switches whose reference value alone removes the divergence, in declaration order.
    pub culprits: Vec<&'static str>,
    /// When no single switch does: the first pair whose reference values together do.
    pub together: Option<(&'static str, &'static str)>,
    /// Switches that differ from the reference but whose fix alone does not help.
    pub bystanders: Vec<&'static str>,
}

impl Blame {
    /// No switch differs from the line's reference: the divergence is a new hole that no
    /// modelled behaviour explains.
    pub fn is_new_hole(&self) -> bool {
        self.culprits.is_empty() && self.together.is_none() && self.bystanders.is_empty()
    }

    /// The verdict as one line: `root cause: a, b`, `root cause: a + b (together)`, or
    /// why there is none.
    pub fn verdict(&self) -> String {
        if !self.culprits.is_empty() {
            format!("root cause: {}", self.culprits.join(", "))
        } else if let Some((a, b)) = self.together {
            format!("root cause: {a} + {b} (together)")
        } else if self.is_new_hole() {
            "a new hole: no switch explains it".into()
        } else {
            "no single switch or pair explains it (several behaviours combine)".into()
        }
    }
}

/// Blames the divergence `s` shows under `rev`; `None` when `s` is clean under `rev`.
pub fn blame(s: &Scenario, rev: Revision) -> Option<Blame> {
    blame_with(s, rev, false)
}

/// [`blame`], with every divergence class fatal when `strict`.
pub fn blame_with(s: &Scenario, rev: Revision, strict: bool) -> Option<Blame> {
    let class = run_with(s, rev, strict).divergence?.class();
    let reference = Revision::fixed_for(rev.line()).switches;
    let clean_with = |names: &[&str]| {
        let mut sw = rev.switches;
        for n in names {
            match sw.with_switch_from(n, &reference) {
                Some(x) => sw = x,
                None => return false,
            }
        }
        let trial = Revision {
            switches: sw,
            ..rev
        };
        run_with(s, trial, strict).divergence.is_none()
    };
    let differing = rev.switches.differing(&reference);
    let mut culprits = Vec::new();
    let mut bystanders = Vec::new();
    for &name in &differing {
        if clean_with(&[name]) {
            culprits.push(name);
        } else {
            bystanders.push(name);
        }
    }
    let mut together = None;
    if culprits.is_empty() {
        'pairs: for (i, &a) in differing.iter().enumerate() {
            for &b in &differing[i + 1..] {
                if clean_with(&[a, b]) {
                    together = Some((a, b));
                    break 'pairs;
                }
            }
        }
    }
    Some(Blame {
        class,
        culprits,
        together,
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
        assert_eq!(b.verdict(), "root cause: pt_iommu_conditions");
        assert!(blame(&s, Revision::fixed()).is_none());
    }

    #[test]
    fn early_free_without_flush_needs_two_switches() {
        // Pre-960265fbd8 NPT shared: the L1 table is freed before the IOMMU step, and the
        // pre-660fd65d55 conditions never flush an empty leaf over it.
        let s = parse_trace(
            "config mode=npt vendor=amd share=on\n\
             set_entry gfn=0x80000 mfn=INVALID_MFN order=0 ram_rw rwx\n\
             set_entry gfn=0x80000 mfn=INVALID_MFN order=9 ram_rw rwx\n",
        )
        .unwrap();
        let b = blame(&s, Revision::by_name("xen-4.6-pre").unwrap()).expect("diverges");
        assert!(b.culprits.is_empty());
        assert_eq!(
            b.together,
            Some(("pt_delay_intermediate_free", "pt_iommu_conditions"))
        );
    }

    #[test]
    fn a_hole_under_the_reference_is_new() {
        let b = Blame {
            class: DivergenceClass::OverPermissive,
            culprits: vec![],
            together: None,
            bystanders: vec![],
        };
        assert_eq!(b.verdict(), "a new hole: no switch explains it");
    }
}
