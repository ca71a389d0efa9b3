//! `shadow`: the mode is forced to shadow, every other knob is fuzzed. Revision from `P2M_REVISION`
//! (default `fixed`); a divergence panics with the report.
#![no_main]
use harness::fuzzing::{check, ShadowScenario};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: ShadowScenario| check(&s.0));
