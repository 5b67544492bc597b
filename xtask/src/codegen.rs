//! `cargo xtask codegen`: regenerate the checked-in Cap'n Proto code in schema/src.

use std::path::Path;

use anyhow::{Context, Result};

/// Compiles `schema/musicfs.capnp` into `out_dir/musicfs_capnp.rs`.
pub fn generate(schema_dir: &Path, out_dir: &Path) -> Result<()> {
    capnpc::CompilerCommand::new()
        .src_prefix(schema_dir)
        .file(schema_dir.join("musicfs.capnp"))
        .output_path(out_dir)
        .run()
        .context(
            "capnp compile failed (is the `capnp` tool installed? apt-get install capnproto)",
        )?;
    Ok(())
}

pub fn run() -> Result<()> {
    let schema_dir = crate::harness::workspace_root().join("schema");
    generate(&schema_dir, &schema_dir.join("src"))?;
    println!("regenerated schema/src/musicfs_capnp.rs");
    Ok(())
}
