//! `ceiling`: decodes the same input type as `mixed` and does nothing else; the throughput
//! every other target is measured against.
#![no_main]
use harness::Scenario;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: Scenario| {
    std::hint::black_box(s);
});
