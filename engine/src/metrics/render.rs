//! The Prometheus text (format 0.0.4) of the recorded metrics and of a
//! `Snapshot`, encoded by prometheus-client.

use std::collections::BTreeSet;
use std::fmt;

use prometheus_client::encoding::{
    EncodeGaugeValue, EncodeMetric, MetricEncoder, NoLabelSet, prometheus_text,
};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use crate::metrics::record::{RECORDED_COUNTERS, recorded};
use crate::metrics::snapshot::{CHUNK_CACHE_COUNTERS, Snapshot};

/// Values of one metric by one label (`origin`, `task`), in the given order.
#[derive(Debug)]
struct Labeled {
    counter: bool,
    key: &'static str,
    values: Vec<(String, u64)>,
}

impl EncodeMetric for Labeled {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        for (label, v) in &self.values {
            let labels = [(self.key, label.as_str())];
            let mut e = encoder.encode_family(&labels)?;
            if self.counter {
                e.encode_counter::<NoLabelSet, _, u64>(v, None)?;
            } else {
                e.encode_gauge(v)?;
            }
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        if self.counter {
            MetricType::Counter
        } else {
            MetricType::Gauge
        }
    }

    fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

/// A valid metric name part: anything but `[A-Za-z0-9_]` becomes `_`.
fn clean(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// A registry of one rendering, that registers each name once (the first
/// wins: a second family of one name would make the text invalid).
struct Families {
    registry: Registry,
    names: BTreeSet<String>,
}

impl Families {
    /// Claims `name` as printed (counters with `_total`); false if taken.
    fn claim(&mut self, name: &str, counter: bool) -> bool {
        let full = if counter {
            format!("{name}_total")
        } else {
            name.to_string()
        };
        self.names.insert(full)
    }

    fn gauge<N>(&mut self, name: &str, help: &str, value: N)
    where
        N: EncodeGaugeValue + fmt::Debug + Send + Sync + 'static,
    {
        let name = clean(name);
        if self.claim(&name, false) {
            self.registry.register(name, help, ConstGauge::new(value));
        }
    }

    /// A gauge from a bare figure: `_percent` becomes a `_ratio`.
    fn figure(&mut self, name: &str, help: &str, value: u64) {
        match name.strip_suffix("_percent") {
            Some(base) => self.gauge(&format!("{base}_ratio"), help, value as f64 / 100.0),
            None => self.gauge(name, help, value),
        }
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        let name = clean(name.strip_suffix("_total").unwrap_or(name));
        if self.claim(&name, true) {
            self.registry.register(name, help, ConstCounter::new(value));
        }
    }

    fn labeled(&mut self, name: &str, help: &str, metric: Labeled) {
        if self.claim(name, metric.counter) {
            self.registry.register(name, help, metric);
        }
    }

    fn register(&mut self, name: &str, help: &str, counter: bool, metric: impl Metric) {
        if self.claim(name, counter) {
            self.registry.register(name, help, metric);
        }
    }
}

/// What a registry takes.
trait Metric: EncodeMetric + fmt::Debug + Send + Sync + 'static {}
impl<T: EncodeMetric + fmt::Debug + Send + Sync + 'static> Metric for T {}

/// Help for a counter of the status, by name.
fn counter_help(name: &str) -> String {
    match name {
        "probed" => "Files whose tags were read by a scan or a sync".into(),
        "unchanged" => "Files a sync found unchanged (not read again)".into(),
        "removed" => "Files removed from the catalog".into(),
        "commits" => "Catalog commits".into(),
        "full_scans" => "Full scans of an origin".into(),
        "reloads" => "Successful configuration reloads".into(),
        other => format!(
            "Count of {} since the engine started",
            other.replace('_', " ")
        ),
    }
}

/// Help for a gauge of the status or the chunk cache, by name.
fn gauge_help(name: &str) -> &'static str {
    match name {
        "listing_cache_dirs" => "Directories in the catalog's hot listing cache",
        "listing_cache_entries" => "Entries in the catalog's hot listing cache",
        "listing_cache_limit" => "Most directories the listing cache holds",
        "open_origin_files" => "Origin files held open for reads",
        "open_files_max" => "Most origin files held open (open_files_max)",
        "catalog_cache_bytes" => "Memory the catalog database may use for its cache",
        "chunk_cache_used_bytes" => "Bytes of chunks in the chunk cache",
        "chunk_cache_max_bytes" => "Most bytes the chunk cache holds (cache_max_bytes)",
        "chunk_cache_chunks" => "Chunks in the chunk cache",
        "chunk_cache_pinned_files" => "Files pinned in the chunk cache",
        "chunk_cache_free_percent" => "Free space of the cache disk",
        "chunk_cache_min_free_percent" => {
            "Free space of the cache disk below which the chunk cache evicts"
        }
        _ => "Engine figure (see musicfs status)",
    }
}

/// Help for a chunk cache counter, by name.
fn chunk_help(name: &str) -> &'static str {
    match name {
        "hits" => "Chunks served from the chunk cache",
        "misses" => "Chunks fetched from an origin because they were not cached",
        "corrupt" => "Cached chunks whose bytes did not match their hash",
        "missing" => "Cached chunks whose file was gone",
        "written" => "Chunks written to the cache disk",
        "skipped" => {
            "Chunks not written to the cache (queue full, writes stopped, bypassed, no room)"
        }
        "evicted" => "Chunks removed from the cache to make room",
        "disk_errors" => "I/O errors of the cache disk",
        "bypassed_reads" => "Chunks read from the origins while the cache was bypassed",
        "read_ahead" => "Chunks read ahead for sequential readers",
        _ => "Chunk cache count (see musicfs cache status)",
    }
}

/// The Prometheus text of everything this engine measures: the recorded
/// metrics (request latency by kind, origin fetch latency by origin, the
/// data plane's counters) and the figures of `extra`.
pub fn render(extra: &Snapshot) -> String {
    let mut f = Families {
        registry: Registry::with_prefix("musicfs"),
        names: BTreeSet::new(),
    };
    let r = recorded();
    let s = extra;
    f.gauge("up", "1 while the engine answers", 1u64);
    f.gauge(
        "uptime_seconds",
        "Seconds since the engine started",
        s.uptime_seconds,
    );
    f.register(
        "request_duration_seconds",
        "Time from reading a data-plane request to writing its answer, by request kind",
        false,
        &r.request_duration,
    );
    f.register(
        "origin_fetch_duration_seconds",
        "Time of an open, read or chunk fetch that went to an origin, by origin directory",
        false,
        &r.origin_fetch,
    );
    let recorded_counters = [
        (&r.requests, "Data-plane requests read"),
        (&r.opens, "Files opened for reading"),
        (&r.reads, "Read requests served"),
        (&r.read_bytes, "Bytes answered to read requests"),
    ];
    for (name, (counter, help)) in RECORDED_COUNTERS.iter().zip(recorded_counters) {
        f.register(name, help, true, counter.clone());
    }
    f.gauge("files", "Audio files in the catalog", s.files);
    f.gauge("nodes", "Nodes of the virtual tree", s.nodes);
    f.gauge(
        "audio_bytes",
        "Bytes of all audio files in the catalog",
        s.audio_bytes,
    );
    f.gauge(
        "scan_complete",
        "1 once the first scan has finished",
        u64::from(s.scan_complete),
    );
    f.gauge(
        "connected_shims",
        "Shims connected to the engine",
        s.connected_shims,
    );
    f.gauge(
        "in_flight_requests",
        "Data-plane requests read and not answered yet",
        s.in_flight_requests,
    );
    f.gauge(
        "catalog_writes_failing",
        "1 while catalog writes fail (see musicfs status)",
        u64::from(s.catalog_writes_failing),
    );
    f.gauge(
        "state_dir_writable",
        "1 if the state directory's last write probe worked",
        u64::from(s.state_dir_writable),
    );
    let origins = s
        .origins
        .iter()
        .map(|o| (o.path.clone(), u64::from(o.reachable)));
    f.labeled(
        "origin_reachable",
        "1 if the origin directory answers",
        Labeled {
            counter: false,
            key: "origin",
            values: origins.collect(),
        },
    );
    let tasks = |v: fn(&crate::metrics::TaskFigures) -> u64| {
        s.tasks.iter().map(|t| (t.name.clone(), v(t))).collect()
    };
    f.labeled(
        "task_running",
        "1 while a supervised background task runs",
        Labeled {
            counter: false,
            key: "task",
            values: tasks(|t| u64::from(t.running)),
        },
    );
    f.labeled(
        "task_restarts",
        "Restarts of a supervised background task",
        Labeled {
            counter: true,
            key: "task",
            values: tasks(|t| t.restarts),
        },
    );
    for (name, v) in &s.gauges {
        f.figure(name, gauge_help(name), *v);
    }
    for (name, v) in &s.counters {
        f.counter(name, &counter_help(name), *v);
    }
    if let Some(c) = &s.chunk_cache {
        f.gauge(
            "chunk_cache_bypassed",
            "1 while the chunk cache is bypassed (its disk unhealthy)",
            u64::from(c.bypassed),
        );
        for (name, v) in &c.figures {
            let full = format!("chunk_cache_{name}");
            if CHUNK_CACHE_COUNTERS.contains(&name.as_str()) {
                f.counter(&full, chunk_help(name), *v);
            } else {
                f.figure(&full, gauge_help(&full), *v);
            }
        }
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_text::encode(&mut out, &f.registry);
    out
}
