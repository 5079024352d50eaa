//! The sweep as an SVG: delivered rate and p99 latency against the offered
//! rate, one line per system.

use std::path::Path;

use super::Results;

pub fn write_svg(_path: &Path, _r: &Results) -> Result<(), Box<dyn std::error::Error>> {
    Err("plot: not yet".into())
}
