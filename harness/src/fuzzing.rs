//! What the cargo-fuzz targets call: typed inputs per mode and the check that panics with
//! the divergence report. The targets in `fuzz/` stay a few lines each.

use std::sync::OnceLock;

use arbitrary::{Arbitrary, Unstructured};
use p2m_core::{HwSemantics, Mode, Revision};

use crate::scenario::bytes::{decode_for_api, HEADER_SIZE, OP_SIZE};
use crate::{hw_from, reachable_from_env, revision_from_env, run_with, strict_from_env, Scenario};

/// The revision the targets check: `P2M_REVISION`, else `fixed`. An unknown name stops the
/// fuzzer at once with a one-line error (exit 2) instead of fuzzing nothing.
pub fn target_revision() -> Revision {
    static REV: OnceLock<Revision> = OnceLock::new();
    *REV.get_or_init(|| match revision_from_env() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("p2m-fuzz target: P2M_REVISION: {e}");
            std::process::exit(2)
        }
    })
}

/// The hardware semantics the targets impose (`P2M_HW`, else each scenario's own),
/// whether every class is fatal (`P2M_STRICT=1`), whether only reachable divergences
/// count (`P2M_REACHABLE=1`) and whether only caller chains do (`P2M_API=callers`); a
/// bad value stops the fuzzer at once.
pub fn target_options() -> (Option<HwSemantics>, bool, bool, bool) {
    static OPTS: OnceLock<(Option<HwSemantics>, bool, bool, bool)> = OnceLock::new();
    *OPTS.get_or_init(|| {
        let callers = crate::callers_api().unwrap_or_else(|e| {
            eprintln!("p2m-fuzz target: {e}");
            std::process::exit(2)
        });
        match hw_from(None) {
            Ok(h) => (h, strict_from_env(), reachable_from_env(), callers),
            Err(e) => {
                eprintln!("p2m-fuzz target: P2M_HW: {e}");
                std::process::exit(2)
            }
        }
    })
}

/// Whether the targets use the op-level mutator ([`crate::mutate`]): `P2M_MUTATOR=on`
/// (the default) or `off` (libFuzzer's own mutations only, to measure the mutator); a bad
/// value stops the fuzzer at once.
pub fn mutator_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| match std::env::var("P2M_MUTATOR").as_deref() {
        Err(_) | Ok("on") | Ok("1") => true,
        Ok("off") | Ok("0") => false,
        Ok(v) => {
            eprintln!("p2m-fuzz target: P2M_MUTATOR: `{v}` is not on or off");
            std::process::exit(2)
        }
    })
}

/// The targets' `LLVMFuzzerCustomMutator`: [`crate::mutate::mutate`], or only
/// `libfuzzer` (libFuzzer's `fuzzer_mutate`) with `P2M_MUTATOR=off`.
pub fn custom_mutate(
    data: &mut [u8],
    size: usize,
    max_size: usize,
    seed: u32,
    libfuzzer: &mut dyn FnMut(&mut [u8], usize, usize) -> usize,
) -> usize {
    if mutator_enabled() {
        crate::mutate::mutate(data, size, max_size, seed, libfuzzer)
    } else {
        libfuzzer(data, size, max_size)
    }
}

/// The targets' `LLVMFuzzerCustomCrossOver`: [`crate::mutate::crossover`] (whole
/// records), or with `P2M_MUTATOR=off` a byte-level splice like libFuzzer's own (a prefix
/// of `a` and a suffix of `b` cut anywhere), which a custom crossover replaces.
pub fn custom_crossover(a: &[u8], b: &[u8], out: &mut [u8], seed: u32) -> usize {
    if mutator_enabled() {
        return crate::mutate::crossover(a, b, out, seed);
    }
    let x = u64::from(seed).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let ka = (x % (a.len() as u64 + 1)) as usize;
    let kb = ((x >> 32) % (b.len() as u64 + 1)) as usize;
    let n = (ka + b.len() - kb).min(out.len());
    let na = ka.min(n);
    out[..na].copy_from_slice(&a[..na]);
    out[na..n].copy_from_slice(&b[kb..kb + (n - na)]);
    n
}

/// Runs `s` under the target revision and options; a divergence panics with the full
/// report (with `P2M_REACHABLE=1`, only one a Xen caller can produce).
pub fn check(s: &Scenario) {
    let (hw, strict, reachable, callers) = target_options();
    let d = match hw {
        Some(h) if h != s.config.hw => {
            let mut s = s.clone();
            s.config.hw = h;
            run_with(&s, target_revision(), strict).divergence
        }
        _ => run_with(s, target_revision(), strict).divergence,
    };
    let counts = |d: &crate::runner::Divergence| {
        (!reachable || d.is_reachable()) && (!callers || d.is_caller_chain())
    };
    if let Some(d) = d.filter(counts) {
        panic!("\n{d}");
    }
}

macro_rules! mode_scenario {
    ($(#[$doc:meta])* $name:ident, $mode:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug)]
        pub struct $name(pub Scenario);

        impl<'a> Arbitrary<'a> for $name {
            fn arbitrary(u: &mut Unstructured<'a>) -> arbitrary::Result<Self> {
                let data = u.bytes(u.len())?;
                decode_for_api(data, Some($mode))
                    .map($name)
                    .ok_or(arbitrary::Error::IncorrectFormat)
            }

            fn arbitrary_take_rest(u: Unstructured<'a>) -> arbitrary::Result<Self> {
                decode_for_api(u.take_rest(), Some($mode))
                    .map($name)
                    .ok_or(arbitrary::Error::IncorrectFormat)
            }

            fn size_hint(_depth: usize) -> (usize, Option<usize>) {
                (HEADER_SIZE + OP_SIZE, None)
            }
        }
    };
}

mode_scenario!(
    /// A scenario whose mode is forced to EPT (the `ept` target); other knobs are fuzzed.
    EptScenario,
    Mode::Ept
);
mode_scenario!(
    /// A scenario whose mode is forced to NPT (the `npt` target); other knobs are fuzzed.
    NptScenario,
    Mode::Npt
);
mode_scenario!(
    /// A scenario whose mode is forced to shadow (the `shadow` target); other knobs are fuzzed.
    ShadowScenario,
    Mode::Shadow
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_scenarios_force_their_mode() {
        let data = [0u8; HEADER_SIZE + OP_SIZE];
        let mut u = Unstructured::new(&data);
        let s = NptScenario::arbitrary_take_rest(Unstructured::new(&data)).unwrap();
        assert_eq!(s.0.config.mode, Mode::Npt);
        let s = ShadowScenario::arbitrary(&mut u).unwrap();
        assert_eq!(s.0.config.mode, Mode::Shadow);
        assert!(EptScenario::arbitrary_take_rest(Unstructured::new(&data[..3])).is_err());
    }
}
