//! The command line's end-to-end tests, in one binary (one link, and the
//! two test threads kept busy across files): each module drives the built
//! `cachecast` binary on loopback (interface 127.0.0.1, TTL 0, a fresh
//! group and cluster per test), and the agent's with real servers. The
//! systemd notify test is a binary of its own (it changes the process
//! environment).

mod agent;
mod process;
#[path = "../src/agent/testprom.rs"]
mod testprom;
#[path = "../src/agent/testservers.rs"]
mod testservers;

mod agent_confirm;
mod agent_examples;
mod agent_hooks;
mod agent_http;
mod agent_keys;
mod agent_redis;
mod auth;
mod bridge;
mod cli;
mod confirm;
mod doctor;
mod logs;
mod members;
mod rolling;
mod stop;
