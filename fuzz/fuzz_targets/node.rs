//! Fuzz target: a node's receive path fed sequences of arbitrary datagrams
//! in virtual time (`cachecast_fuzz::node`).
#![no_main]

use cachecast_fuzz::alloc::Counting;
use cachecast_fuzz::node::{run, Scenario};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: Counting = Counting;

fuzz_target!(|data: &[u8]| run(&Scenario::from_bytes(data)));
