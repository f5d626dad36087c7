//! The VMM's own start-up timeline: each step of building and starting a
//! VM logs, at debug level, how long after the VMM's start it ended
//! (`RUST_LOG=debug`), so a slow start shows where its time went.

use std::time::Instant;

/// Logs that `step` is done, in milliseconds since `started`.
pub fn mark(started: Instant, step: &str) {
    tracing::debug!("{step}: {:.1} ms after VMM start", started.elapsed().as_secs_f64() * 1000.0);
}
