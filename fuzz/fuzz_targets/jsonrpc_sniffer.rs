#![no_main]
//! See `fledge::fuzz::jsonrpc_sniffer`.
libfuzzer_sys::fuzz_target!(|data: &[u8]| fledge::fuzz::jsonrpc_sniffer(data));
