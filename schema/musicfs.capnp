@0xbec1ef41e61df56d;
# The MusicFS protocol between the shim (holds /dev/fuse) and the engine (holds
# everything else), over a unix socket with Cap'n Proto RPC.
#
# Rules:
# - Every data-plane call is idempotent: the shim may replay it against a new
#   engine after a crash. Handles (`fh`) describe the file by themselves.
# - Errors that the FUSE caller should see come back as `errno` (0 = success),
#   never as RPC exceptions; an RPC exception means "engine trouble" and the
#   shim treats it as such.
# - Bump `protocolVersion` on any incompatible change. The engine accepts any
#   client version in [minProtocolVersion, protocolVersion].

const protocolVersion :UInt32 = 1;
const minProtocolVersion :UInt32 = 1;

enum NodeKind {
  directory @0;
  file @1;
  symlink @2;
}

struct Attr {
  ino @0 :UInt64;
  sizeBytes @1 :UInt64;
  kind @2 :NodeKind;
  perm @3 :UInt16;
  nlink @4 :UInt32;
  mtimeNs @5 :Int64;      # nanoseconds since the Unix epoch
  blocks @6 :UInt64;      # 512-byte blocks
}

struct Entry {
  attr @0 :Attr;
  generation @1 :UInt64;
  entryTtlMs @2 :UInt32;
  attrTtlMs @3 :UInt32;
}

struct DirEntry {
  name @0 :Data;          # raw bytes, never contains '/' or NUL
  offset @1 :UInt64;      # opaque cookie: pass it back to continue after this entry
  entry @2 :Entry;        # ino and kind live in entry.attr
}

struct Forget {
  ino @0 :UInt64;
  nlookup @1 :UInt64;
}

struct Statfs {
  blocks @0 :UInt64;
  bfree @1 :UInt64;
  bavail @2 :UInt64;
  files @3 :UInt64;
  ffree @4 :UInt64;
  bsize @5 :UInt32;
  namelen @6 :UInt32;
  frsize @7 :UInt32;
}

# The bootstrap capability of the engine's data-plane socket.
interface Engine {
  # Version negotiation. The engine answers with its own range; the shim
  # refuses to go on when the ranges do not overlap (errno = EPROTO and a
  # message that says why).
  hello @0 (clientProtocol :UInt32, clientName :Text)
      -> (errno :Int32, message :Text, serverProtocol :UInt32,
          minServerProtocol :UInt32, engineVersion :Text, fs :DataPlane);
}

interface DataPlane {
  lookup @0 (parent :UInt64, name :Data) -> (errno :Int32, entry :Entry);
  forget @1 (items :List(Forget)) -> ();
  getattr @2 (ino :UInt64) -> (errno :Int32, attr :Attr, attrTtlMs :UInt32);
  opendir @3 (ino :UInt64, flags :UInt32) -> (errno :Int32, fh :UInt64);
  # Entries after `offset` (0 = from the start), at most `maxEntries`.
  # `plus` asks for full entries (readdirplus); otherwise only ino and kind
  # in entry.attr are meaningful.
  readdir @4 (ino :UInt64, fh :UInt64, offset :UInt64, maxEntries :UInt32, plus :Bool)
      -> (errno :Int32, entries :List(DirEntry));
  releasedir @5 (ino :UInt64, fh :UInt64) -> (errno :Int32);
  # `fh` is self-describing (content version of the file), so a new engine can
  # serve it without the old one's memory.
  open @6 (ino :UInt64, flags :UInt32) -> (errno :Int32, fh :UInt64, keepCache :Bool);
  read @7 (ino :UInt64, fh :UInt64, offset :UInt64, size :UInt32) -> (errno :Int32, data :Data);
  release @8 (ino :UInt64, fh :UInt64) -> (errno :Int32);
  statfs @9 (ino :UInt64) -> (errno :Int32, statfs :Statfs);
  readlink @10 (ino :UInt64) -> (errno :Int32, target :Data);
  getxattr @11 (ino :UInt64, name :Data) -> (errno :Int32, value :Data);
  listxattr @12 (ino :UInt64) -> (errno :Int32, names :List(Data));
  # Liveness probe; answered on the request path, so a hung engine misses it.
  ping @13 () -> (uptimeMs :UInt64);
}
