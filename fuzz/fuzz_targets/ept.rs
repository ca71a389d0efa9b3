//! `ept`: the mode is forced to ept, every other knob is fuzzed. Revision from `P2M_REVISION`
//! (default `fixed`); a divergence panics with the report.
#![no_main]
use harness::fuzzing::{check, EptScenario};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: EptScenario| check(&s.0));
