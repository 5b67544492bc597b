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
        let follow = match o.kind.as_str() {
            "local" => "inotify",
            "network" | "" => "polling",
            _ => "listing",
        };
        let state = match (o.reachable, o.health.as_str()) {
            (true, "" | "ready") => "reachable".to_string(),
            (true, h) => h.to_uppercase(),
            (false, _) => "UNREACHABLE".to_string(),
        };
        out.push_str(&format!(
            "  {:<3} {:<12} {:<8} {}\n",
            o.id, state, follow, o.path
        ));
        if !o.error.is_empty() {
            out.push_str(&format!("      {}\n", o.error));
        }
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
    if !s.notify.is_empty() {
        out.push_str("change feed\n");
        for t in &s.notify {
            out.push_str(&format!(
                "  {:<9} {}  delivered {}, failed attempts {}, dropped {}, queued {}{}\n",
                t.state,
                t.name,
                t.delivered,
                t.failed_attempts,
                t.dropped,
                t.queued,
                if t.last_error.is_empty() {
                    String::new()
                } else {
                    format!("  last error: {}", t.last_error)
                }
            ));
        }
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
