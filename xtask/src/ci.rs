//! `cargo xtask ci`: the whole test suite, exactly as CI runs it.

use std::process::Command;
use std::time::Instant;

use anyhow::Result;

use crate::harness::{run_cmd, workspace_root};

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace_root());
    c
}

pub fn run() -> Result<()> {
    let started = Instant::now();
    let step = |name: &str| {
        println!(
            "\n=== xtask ci: {name} ({:.0} s) ===",
            started.elapsed().as_secs_f64()
        )
    };

    step("rustfmt");
    run_cmd(cargo().args(["fmt", "--all", "--", "--check"]))?;
    step("clippy");
    run_cmd(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    step("build binaries");
    run_cmd(cargo().args(["build", "--workspace", "--bins"]))?;
    step("tests (unit + integration on a real FUSE mount)");
    // The integration tests run the binaries just built, xtask among them
    // (for gen-library). Not `current_exe()`: the workspace build above may
    // have relinked this very binary (feature unification).
    let xtask = crate::harness::target_dir().join("debug/xtask");
    // Every test binary runs under `xtask test-runner`, with a deadline: a
    // hung test fails its binary with what its processes wait on, instead
    // of holding the suite until CI gives up. A copy of the runner, so that
    // no build during the tests can replace it under cargo.
    let runner = crate::harness::target_dir().join("xtask-test-runner");
    std::fs::copy(&xtask, &runner)?;
    let runner_config = format!(
        "target.'cfg(all())'.runner = [{:?}, \"test-runner\"]",
        runner.display().to_string()
    );
    run_cmd(
        cargo()
            .args(["--config", &runner_config])
            .args([
                "test",
                "--workspace",
                "--no-fail-fast",
                "--",
                "--test-threads=2",
            ])
            .env("MUSICFS_XTASK_BIN", xtask),
    )?;
    step("done");
    println!(
        "xtask ci: all green in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
