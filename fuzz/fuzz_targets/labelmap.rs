#![no_main]

// Body and invariants: kyphoplan_client::fuzzing::labelmap.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kyphoplan_client::fuzzing::labelmap(data));
