//! Fuzz target: the authentication trailer, read from received bytes and
//! sealed around arbitrary bodies (`cachecast_fuzz::auth_checks`).
#![no_main]

use cachecast_fuzz::alloc::Counting;
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| cachecast_fuzz::auth_checks::check_trailer(data));
