//! `ept`: the mode is forced to ept, every other knob is fuzzed. Revision from `P2M_REVISION`
//! (default `fixed`); a divergence panics with the report.
#![no_main]
use harness::fuzzing::{check, EptScenario};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: EptScenario| check(&s.0));

// The op-level mutator and crossover (`harness::mutate`; `P2M_MUTATOR=off` for
// libFuzzer's own mutations only).
libfuzzer_sys::fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    harness::fuzzing::custom_mutate(data, size, max_size, seed, &mut |d, s, m| {
        libfuzzer_sys::fuzzer_mutate(d, s, m)
    })
});
libfuzzer_sys::fuzz_crossover!(|a: &[u8], b: &[u8], out: &mut [u8], seed: u32| {
    harness::fuzzing::custom_crossover(a, b, out, seed)
});
