//! Fuzz target: the header: `wire::decode_header` against the definition
//! (`cachecast_fuzz::wire_checks::check_header`).
#![no_main]

use cachecast_fuzz::alloc::Counting;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| cachecast_fuzz::wire_checks::check_header(data));
