#![no_main]
//! See `fledge::fuzz::config`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fledge::fuzz::config(data));
