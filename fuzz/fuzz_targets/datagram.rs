//! Fuzz target: a whole datagram (and one event): both paths agree
//! (`cachecast_fuzz::wire_checks::check_datagram`).
#![no_main]

use cachecast_fuzz::alloc::Counting;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| cachecast_fuzz::wire_checks::check_datagram(data));
