#![no_main]
//! See `fledge::fuzz::http1_request`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fledge::fuzz::http1_request(data));
