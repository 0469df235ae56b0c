#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| stamp_fuzz::site_credentials(data));
