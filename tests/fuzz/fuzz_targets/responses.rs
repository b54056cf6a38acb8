#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pushgate_providers::fuzzing::responses(data));
