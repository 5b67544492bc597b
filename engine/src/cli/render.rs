//! How `musicfs status` and `musicfs metrics` print a status.

use crate::control::Status;

/// One line for one mount (`musicfs status` with several running).
pub fn render_line(state_dir: &std::path::Path, s: &Status) -> String {
    let up = s.uptime_ms / 1000;
    format!(
        "{}  engine {} (pid {}), up {}h{:02}m, {} files, {} shim(s){}",
        state_dir.display(),
        s.engine_version,
        s.pid,
        up / 3600,
        up / 60 % 60,
        s.files,
        s.connected_shims,
        if s.catalog_write_error.is_empty() {
            String::new()
        } else {
            format!(", WRITES FAILING: {}", s.catalog_write_error)
        }
    )
}

/// The human status view.
pub fn render_table(s: &Status) -> String {
    let mut out = String::new();
    let up = s.uptime_ms / 1000;
    out.push_str(&format!(
        "engine      {} (pid {}), up {}h{:02}m{:02}s\n",
        s.engine_version,
        s.pid,
        up / 3600,
        up / 60 % 60,
        up % 60
    ));
    out.push_str(&format!("state dir   {}\n", s.state_dir));
    out.push_str(&format!(
        "catalog     {} files, {} nodes, {:.1} GB{}\n",
        s.files,
        s.nodes,
        s.bytes as f64 / 1e9,
        if s.scan_complete {
            ""
        } else {
            " (first scan not complete)"
        }
    ));
    out.push_str(&format!(
        "last close  {}\n",
        match s.catalog_previous_close.as_str() {
            "clean" => "clean (nothing to recover)",
            "unclean" => "unclean (crash or kill; last commit recovered)",
            "new" => "new catalog",
            other => other,
        }
    ));
    out.push_str(&format!("template    {}\n", s.template));
    if !s.catalog_write_error.is_empty() {
        let secs = crate::sys::time::now_ns() / 1_000_000_000
            - i64::try_from(s.catalog_write_since_ms / 1000).unwrap_or(0);
        out.push_str(&format!(
            "writes      FAILING for {secs} s: {} (reads serve what is committed)\n",
            s.catalog_write_error
        ));
    }
    if !s.state_dir_error.is_empty() {
        out.push_str(&format!(
            "state dir   does not take writes: {}\n",
            s.state_dir_error
        ));
    }
    out.push_str(&format!(
        "shims       {} connected, {} requests in flight\n",
        s.connected_shims, s.in_flight
    ));
    out.push_str("origins\n");
    for o in &s.origins {
        out.push_str(&format!(
            "  {:<3} {:<12} {:<8} {}\n",
            o.id,
            if o.reachable {
                "reachable"
            } else {
                "UNREACHABLE"
            },
            if o.local { "inotify" } else { "polling" },
            o.path
        ));
    }
    out.push_str("tasks\n");
    for t in &s.tasks {
        out.push_str(&format!(
            "  {:<14} {:<8} restarts {}{}\n",
            t.name,
            if t.running { "running" } else { "stopped" },
            t.restarts,
            if t.last_error.is_empty() {
                String::new()
            } else {
                format!("  last error: {}", t.last_error)
            }
        ));
    }
    out.push_str("cache\n");
    for (n, v) in &s.cache {
        out.push_str(&format!("  {n:<22} {v}\n"));
    }
    if let Some(c) = &s.chunk_cache {
        out.push_str("chunk cache\n");
        for line in crate::cli::cache::render_view(c).lines() {
            out.push_str(&format!("  {line}\n"));
        }
    }
    out.push_str("counters\n");
    for (n, v) in &s.counters {
        out.push_str(&format!("  {n:<12} {v}\n"));
    }
    out
}

/// Prometheus text exposition.
pub fn render_metrics(s: &Status) -> String {
    let esc = |v: &str| {
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n")
    };
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, lines: Vec<(String, u64)>| {
        out.push_str(&format!(
            "# HELP musicfs_{name} {help}\n# TYPE musicfs_{name} gauge\n"
        ));
        for (labels, v) in lines {
            out.push_str(&format!("musicfs_{name}{labels} {v}\n"));
        }
    };
    gauge(
        "up",
        "1 while the engine answers.",
        vec![(String::new(), 1)],
    );
    gauge(
        "uptime_seconds",
        "Seconds since the engine started.",
        vec![(String::new(), s.uptime_ms / 1000)],
    );
    gauge(
        "files",
        "Audio files in the catalog.",
        vec![(String::new(), s.files)],
    );
    gauge(
        "nodes",
        "Nodes of the virtual tree.",
        vec![(String::new(), s.nodes)],
    );
    gauge(
        "bytes",
        "Bytes of all audio files.",
        vec![(String::new(), s.bytes)],
    );
    gauge(
        "connected_shims",
        "Shims connected to the engine.",
        vec![(String::new(), u64::from(s.connected_shims))],
    );
    gauge(
        "origin_reachable",
        "1 if the origin directory answers.",
        s.origins
            .iter()
            .map(|o| {
                (
                    format!("{{origin=\"{}\"}}", esc(&o.path)),
                    u64::from(o.reachable),
                )
            })
            .collect(),
    );
    gauge(
        "task_restarts",
        "Restarts of a supervised background task.",
        s.tasks
            .iter()
            .map(|t| {
                (
                    format!("{{task=\"{}\"}}", esc(&t.name)),
                    u64::from(t.restarts),
                )
            })
            .collect(),
    );
    for (n, v) in &s.cache {
        gauge(
            n,
            "Cache figure (see musicfs status).",
            vec![(String::new(), *v)],
        );
    }
    gauge(
        "catalog_writes_failing",
        "1 while catalog writes fail (see musicfs status).",
        vec![(String::new(), u64::from(!s.catalog_write_error.is_empty()))],
    );
    gauge(
        "state_dir_writable",
        "1 if the state directory's last write probe worked.",
        vec![(String::new(), u64::from(s.state_dir_error.is_empty()))],
    );
    gauge(
        "in_flight_requests",
        "Data-plane requests being served.",
        vec![(String::new(), u64::from(s.in_flight))],
    );
    if let Some(c) = &s.chunk_cache {
        gauge(
            "chunk_cache_bypassed",
            "1 while the chunk cache is bypassed (its disk unhealthy).",
            vec![(String::new(), u64::from(c.bypassed))],
        );
        for n in [
            "used_bytes",
            "max_bytes",
            "chunks",
            "pinned_files",
            "free_percent",
        ] {
            gauge(
                &format!("chunk_cache_{n}"),
                "Chunk cache figure (see musicfs cache status).",
                vec![(String::new(), c.figure(n))],
            );
        }
    }
    for (n, v) in &s.counters {
        out.push_str(&format!(
            "# TYPE musicfs_{n}_total counter\nmusicfs_{n}_total {v}\n"
        ));
    }
    if let Some(c) = &s.chunk_cache {
        for n in [
            "hits",
            "misses",
            "corrupt",
            "missing",
            "written",
            "skipped",
            "evicted",
            "disk_errors",
            "bypassed_reads",
            "read_ahead",
        ] {
            out.push_str(&format!(
                "# TYPE musicfs_chunk_cache_{n}_total counter\nmusicfs_chunk_cache_{n}_total {}\n",
                c.figure(n)
            ));
        }
    }
    out
}
