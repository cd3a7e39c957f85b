#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tower_credits::fuzzing::api_key_hash_hex(data));
