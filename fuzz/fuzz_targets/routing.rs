#![no_main]
//! See `fledge::fuzz::routing`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fledge::fuzz::routing(data));
