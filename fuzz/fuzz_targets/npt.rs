//! `npt`: the mode is forced to npt, every other knob is fuzzed. Revision from `P2M_REVISION`
//! (default `fixed`); a divergence panics with the report.
#![no_main]
use harness::fuzzing::{check, NptScenario};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: NptScenario| check(&s.0));
