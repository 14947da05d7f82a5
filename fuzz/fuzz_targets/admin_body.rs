#![no_main]
//! See `fledge::fuzz::admin_body`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fledge::fuzz::admin_body(data));
