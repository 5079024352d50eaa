//! `cachecast agent`: one local daemon per server that joins the cluster
//! once and serves the applications on the host: publish over HTTP,
//! receive over Server-Sent Events and webhooks, and the host's Redis and
//! memcached kept coherent by appliers.

#![allow(dead_code)]

pub mod apply;
pub mod config;
pub mod feed;
pub mod metrics;
pub mod webhook;
