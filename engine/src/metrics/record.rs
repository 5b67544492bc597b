//! What the data plane records as it answers: pre-created handles in one
//! process-wide `static`, so that recording allocates nothing and looks no
//! label up.

use std::fmt;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use parking_lot::RwLock;
use prometheus_client::encoding::{EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;

/// Upper bounds (seconds) of the latency buckets: 10 µs to 10 s, 1-2.5-5
/// per decade (`+Inf` is added by the histogram).
pub const BUCKETS: [f64; 19] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025,
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Every kind of request the data plane answers (the `op` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Hello,
    Lookup,
    Forget,
    Getattr,
    Opendir,
    Readdir,
    Readdirplus,
    Releasedir,
    Open,
    Read,
    Release,
    Statfs,
    Readlink,
    Getxattr,
    Listxattr,
    Ping,
}

impl Op {
    /// Every kind, in the order the text lists them.
    pub const ALL: [Op; 16] = [
        Op::Hello,
        Op::Lookup,
        Op::Forget,
        Op::Getattr,
        Op::Opendir,
        Op::Readdir,
        Op::Readdirplus,
        Op::Releasedir,
        Op::Open,
        Op::Read,
        Op::Release,
        Op::Statfs,
        Op::Readlink,
        Op::Getxattr,
        Op::Listxattr,
        Op::Ping,
    ];

    /// The label value.
    pub fn name(self) -> &'static str {
        match self {
            Op::Hello => "hello",
            Op::Lookup => "lookup",
            Op::Forget => "forget",
            Op::Getattr => "getattr",
            Op::Opendir => "opendir",
            Op::Readdir => "readdir",
            Op::Readdirplus => "readdirplus",
            Op::Releasedir => "releasedir",
            Op::Open => "open",
            Op::Read => "read",
            Op::Release => "release",
            Op::Statfs => "statfs",
            Op::Readlink => "readlink",
            Op::Getxattr => "getxattr",
            Op::Listxattr => "listxattr",
            Op::Ping => "ping",
        }
    }
}

fn histogram() -> Histogram {
    Histogram::new(BUCKETS)
}

/// One latency histogram per request kind, indexed by `Op as usize`.
#[derive(Debug)]
pub(super) struct PerOp([Histogram; Op::ALL.len()]);

/// One latency histogram per origin (id, directory path), in id order.
#[derive(Debug, Default)]
pub(super) struct PerOrigin(RwLock<Vec<(u32, String, Histogram)>>);

impl PerOrigin {
    fn observe(&self, origin: u32, root: impl FnOnce() -> Option<PathBuf>, seconds: f64) {
        if let Some((_, _, h)) = self.0.read().iter().find(|(id, _, _)| *id == origin) {
            h.observe(seconds);
            return;
        }
        // First fetch of this origin: its label is made once.
        let path = root().map_or_else(|| format!("origin {origin}"), |p| p.display().to_string());
        let mut list = self.0.write();
        let h = match list.iter().find(|(id, _, _)| *id == origin) {
            Some((_, _, h)) => h.clone(),
            None => {
                let h = histogram();
                list.push((origin, path, h.clone()));
                list.sort_by_key(|(id, _, _)| *id);
                h
            }
        };
        h.observe(seconds);
    }
}

/// The process-wide recorded metrics.
#[derive(Debug)]
pub(super) struct Recorded {
    pub(super) requests: Counter,
    pub(super) opens: Counter,
    pub(super) reads: Counter,
    pub(super) read_bytes: Counter,
    pub(super) request_duration: PerOp,
    pub(super) origin_fetch: PerOrigin,
}

/// The counters `Recorded` keeps itself (names without `_total`): a
/// snapshot's counter of the same name is not rendered again.
pub(super) const RECORDED_COUNTERS: [&str; 4] = ["requests", "opens", "reads", "read_bytes"];

static RECORDED: OnceLock<Recorded> = OnceLock::new();

pub(super) fn recorded() -> &'static Recorded {
    RECORDED.get_or_init(|| Recorded {
        requests: Counter::default(),
        opens: Counter::default(),
        reads: Counter::default(),
        read_bytes: Counter::default(),
        request_duration: PerOp(std::array::from_fn(|_| histogram())),
        origin_fetch: PerOrigin::default(),
    })
}

/// A data-plane request answered (its answer written) `elapsed` after it
/// was read.
#[inline]
pub fn observe_request(op: Op, elapsed: Duration) {
    recorded().request_duration.0[op as usize].observe(elapsed.as_secs_f64());
}

/// An open, read or chunk fetch that went to origin `origin` took
/// `elapsed`; `root` names the origin's directory (called only on the
/// origin's first fetch).
pub fn observe_origin_fetch(
    origin: u32,
    root: impl FnOnce() -> Option<PathBuf>,
    elapsed: Duration,
) {
    recorded()
        .origin_fetch
        .observe(origin, root, elapsed.as_secs_f64());
}

/// A data-plane request read.
#[inline]
pub fn record_request() {
    recorded().requests.inc();
}

/// A file opened for reading.
#[inline]
pub fn record_open() {
    recorded().opens.inc();
}

/// A read request served.
#[inline]
pub fn record_read() {
    recorded().reads.inc();
}

/// Bytes answered to reads.
#[inline]
pub fn record_read_bytes(bytes: u64) {
    recorded().read_bytes.inc_by(bytes);
}

impl EncodeMetric for &'static PerOp {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        for (op, h) in Op::ALL.iter().zip(self.0.iter()) {
            let labels = [("op", op.name())];
            h.encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

impl EncodeMetric for &'static PerOrigin {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        for (_, path, h) in self.0.read().iter() {
            let labels = [("origin", path.as_str())];
            h.encode(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }

    fn is_empty(&self) -> bool {
        self.0.read().is_empty()
    }
}
