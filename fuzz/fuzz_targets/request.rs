#![no_main]

// Body and invariants: kyphoplan_client::fuzzing::request.
libfuzzer_sys::fuzz_target!(|data: &[u8]| kyphoplan_client::fuzzing::request(data));
