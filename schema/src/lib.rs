//! The Cap'n Proto protocol between `musicfs-shim` and the engine, and its
//! framing helpers.
//!
//! `musicfs_capnp.rs` is generated from `../musicfs.capnp` by `cargo xtask codegen`
//! and checked in, so building needs no capnp compiler; the `generated_code_is_fresh`
//! test fails when it is stale. `holder` is the small fd-holder protocol
//! between `musicfs mount` and its shim.

pub mod holder;

#[allow(clippy::all, clippy::pedantic, clippy::unwrap_used, unused, unsafe_op_in_unsafe_fn)]
#[rustfmt::skip]
pub mod musicfs_capnp;

pub use musicfs_capnp::*;

/// Protocol version spoken by this build.
pub const PROTOCOL_VERSION: u32 = musicfs_capnp::PROTOCOL_VERSION;
/// Oldest peer protocol version this build still accepts.
pub const MIN_PROTOCOL_VERSION: u32 = musicfs_capnp::MIN_PROTOCOL_VERSION;

/// Largest frame either side accepts, in 8-byte words (64 MiB): a read of at
/// most a few MiB or a readdir batch always fits; anything larger is a bug or
/// an attack and closes the connection.
pub const MAX_FRAME_WORDS: usize = 8 * 1024 * 1024;

/// Reader options for one frame.
pub fn reader_options() -> capnp::message::ReaderOptions {
    let mut o = capnp::message::ReaderOptions::new();
    o.traversal_limit_in_words(Some(MAX_FRAME_WORDS));
    o
}

/// Serialises a message into one buffer (written with one `write_all`).
pub fn to_frame<A: capnp::message::Allocator>(message: &capnp::message::Builder<A>) -> Vec<u8> {
    capnp::serialize::write_message_to_words(message)
}

/// Reads one frame; `Ok(None)` on a clean end of stream.
pub fn read_frame<R: std::io::BufRead>(
    reader: &mut R,
) -> capnp::Result<Option<capnp::message::Reader<capnp::serialize::OwnedSegments>>> {
    capnp::serialize::try_read_message(reader, reader_options())
}

/// Whether two peers with the given `[min, max]` protocol ranges can talk.
pub fn compatible(ours: (u32, u32), theirs: (u32, u32)) -> bool {
    ours.0 <= theirs.1 && theirs.0 <= ours.1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_ranges() {
        assert!(compatible((1, 1), (1, 1)));
        assert!(compatible((1, 3), (2, 5)));
        assert!(!compatible((1, 1), (2, 2)));
        const { assert!(MIN_PROTOCOL_VERSION <= PROTOCOL_VERSION) };
    }

    /// Regenerates the code into a temporary directory and compares it with the
    /// checked-in copy. Needs the `capnp` tool (CI installs `capnproto`).
    #[test]
    fn generated_code_is_fresh() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let tmp = tempfile::tempdir().unwrap();
        capnpc::CompilerCommand::new()
            .src_prefix(root)
            .file(root.join("musicfs.capnp"))
            .output_path(tmp.path())
            .run()
            .expect("capnp compile failed: install the `capnp` tool (apt-get install capnproto)");
        let fresh = std::fs::read_to_string(tmp.path().join("musicfs_capnp.rs")).unwrap();
        let checked_in = std::fs::read_to_string(root.join("src/musicfs_capnp.rs")).unwrap();
        assert!(
            fresh == checked_in,
            "schema/src/musicfs_capnp.rs is stale: run `cargo xtask codegen` and commit the result"
        );
    }
}
