//! Fuzz target: a body: `wire::decode_body` against the definition, round trips
//! (`cachecast_fuzz::wire_checks::check_body`).
#![no_main]

use cachecast_fuzz::alloc::Counting;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| cachecast_fuzz::wire_checks::check_body(data));
