//! Fuzzes the boot_config parser; the call lives in `parsers_input.rs`, which the corpus replay test
//! shares.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[path = "parsers_input.rs"]
#[allow(dead_code)]
mod input;

fuzz_target!(|data: &[u8]| input::boot_config(data));
