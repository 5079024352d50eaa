//! Fuzz target: a keyed node's receive path (`require` unless the input
//! picks `accept` or encryption) fed sequences of arbitrary and forged
//! datagrams in virtual time (`cachecast_fuzz::node`): nothing without a
//! tag that verifies under its keys changes it.
#![no_main]

use cachecast_fuzz::alloc::Counting;
use cachecast_fuzz::node::{run, Scenario};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| run(&Scenario::keyed_from_bytes(data)));
