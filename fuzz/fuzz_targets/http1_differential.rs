#![no_main]
//! See `fledge::fuzz::http1_differential`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fledge::fuzz::http1_differential(data));
