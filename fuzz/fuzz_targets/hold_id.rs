#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tower_credits::fuzzing::hold_id(data));
