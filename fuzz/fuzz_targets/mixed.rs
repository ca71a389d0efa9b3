//! `mixed`: mode, vendor and table sharing all come from the input. Revision from
//! `P2M_REVISION` (default `fixed`); a divergence panics with the report.
#![no_main]
use harness::fuzzing::check;
use harness::Scenario;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|s: Scenario| check(&s));
