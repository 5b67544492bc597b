//! Read stalls while the engine or the shim is killed or swapped under load (measured by `crate::stall`).

use anyhow::Result;

use super::runner::Bench;
use super::table::{below, solo_row};

impl Bench {
    /// Read stalls and failed reads while the engine, then the shim, is
    /// killed (kill -9) and swapped, 10 times each, under 4 readers (see
    /// `stall.rs`).
    pub(super) fn measure_stalls(&mut self) -> Result<()> {
        use crate::stall::{Fault, measure};
        let musicfs = self.bin.clone();
        for (kind, what, limit) in [
            (
                Fault::Kill9,
                "engine kill -9 + restart x10 under load",
                1000.0,
            ),
            (Fault::Swap, "engine swap x10 under load", 250.0),
            (
                Fault::ShimKill9,
                "shim kill -9 + takeover x10 under load",
                1000.0,
            ),
            (Fault::ShimSwap, "shim swap x10 under load", 250.0),
        ] {
            let r = measure(&musicfs, &self.lib, &self.work, kind, 10)?;
            self.rows.push(solo_row(
                format!("{what}: read stall per fault p50 / p99 / max (ms)"),
                format!(
                    "{:.0} / {:.0} / {:.0}",
                    r.recovery_p50_ms, r.recovery_p99_ms, r.recovery_max_ms
                ),
                below(
                    Some(r.recovery_p99_ms),
                    limit,
                    &format!("p99 < {limit:.0} ms"),
                ),
            ));
            self.rows.push(solo_row(
                format!("{what}: read latency p50 / p99 / max (ms); failed reads"),
                format!(
                    "{:.1} / {:.1} / {:.0}; {} of {}",
                    r.op_p50_ms, r.op_p99_ms, r.op_max_ms, r.failed, r.ops
                ),
                below(Some(r.failed as f64), 1.0, "0 failed"),
            ));
        }
        Ok(())
    }
}
