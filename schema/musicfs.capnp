@0xbec1ef41e61df56d;
# The MusicFS data plane between the shim (holds /dev/fuse) and the engine
# (holds everything else), over a unix stream socket.
#
# Framing: a stream of Cap'n Proto messages in the standard stream framing
# (capnp::serialize). The shim sends `Request`s, the engine answers each with a
# `Response` carrying the same `id`, in any order. The first request on a
# connection must be `hello`; the engine answers it before reading anything else.
#
# Responses with id 0 are notices from the engine (see `invalidate`), not
# answers. `forget`, `release` and `releasedir` are one-way: the engine sends no
# response (the kernel ignores their results), and the shim does not replay them.
#
# Rules:
# - Every data-plane request is idempotent: the shim may send it again to a new
#   engine after a crash. Handles (`fh`) describe the file by themselves.
# - FUSE-visible errors come back as `errno` (0 = success).
# - Bump `protocolVersion` on any incompatible change. A peer accepts the other
#   when their [min, max] version ranges overlap.

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
  offset @1 :UInt64;      # cookie: pass it back to continue after this entry
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

struct InvalEntry {
  parent @0 :UInt64;
  name @1 :Data;
}

struct Hello {
  minProtocol @0 :UInt32;
  maxProtocol @1 :UInt32;
  peerName @2 :Text;      # e.g. "musicfs-shim 0.1.0"
}

struct Request {
  id @0 :UInt64;
  union {
    hello @1 :Hello;
    lookup :group { parent @2 :UInt64; name @3 :Data; }
    forget @4 :List(Forget);
    getattr @5 :UInt64;                      # ino
    opendir :group { ino @6 :UInt64; flags @7 :UInt32; }
    # Entries after `offset` (0 = from the start), at most `maxEntries`;
    # `plus` asks for full entries (readdirplus).
    readdir :group { ino @8 :UInt64; fh @9 :UInt64; offset @10 :UInt64;
                     maxEntries @11 :UInt32; plus @12 :Bool; }
    releasedir :group { ino @13 :UInt64; fh @14 :UInt64; }
    # `passthrough`: the shim can take the origin file itself (an fd passed
    # with SCM_RIGHTS) for kernel passthrough reads.
    open :group { ino @15 :UInt64; flags @16 :UInt32; passthrough @29 :Bool; }
    read :group { ino @17 :UInt64; fh @18 :UInt64; offset @19 :UInt64; size @20 :UInt32; }
    release :group { ino @21 :UInt64; fh @22 :UInt64; }
    statfs @23 :UInt64;                      # ino
    readlink @24 :UInt64;                    # ino
    getxattr :group { ino @25 :UInt64; name @26 :Data; }
    listxattr @27 :UInt64;                   # ino
    ping @28 :Void;
  }
}

struct Response {
  id @0 :UInt64;
  errno @1 :Int32;         # 0 = success; otherwise the body is `none`
  union {
    none @2 :Void;
    hello :group {
      hello @3 :Hello;
      message @4 :Text;    # why the engine refuses, when errno = EPROTO
    }
    # lookup; a miss is an entry of ino 0 (a negative entry for its
    # entryTtlMs), or errno ENOENT (not cached).
    entry @5 :Entry;
    attr :group { attr @6 :Attr; ttlMs @7 :UInt32; }   # getattr
    # `fdAttached`: the origin file's fd travels with this frame (SCM_RIGHTS
    # on its first byte); only when the open asked for passthrough.
    opened :group { fh @8 :UInt64; keepCache @9 :Bool; fdAttached @16 :Bool; }  # open, opendir
    entries @10 :List(DirEntry);             # readdir
    data @11 :Data;                          # read, readlink, getxattr
    statfs @12 :Statfs;
    names @13 :List(Data);                   # listxattr
    pong :group { uptimeMs @14 :UInt64; engineVersion @15 :Text; }
    # Unsolicited (id = 0): the tree changed; the shim tells the kernel to
    # forget these names and inodes (FUSE_NOTIFY_INVAL_ENTRY / _INODE).
    # `everything`: the whole tree may have changed (a template change): the
    # kernel drops every name, attribute and listing it cached.
    invalidate :group { entries @17 :List(InvalEntry); inodes @18 :List(UInt64);
                        everything @19 :Bool; }
  }
}

# ---------------------------------------------------------------------------
# Control plane: a separate socket (STATE/control.sock, owner-only), the same
# framing. Request/response by id.

struct OriginStatus {
  id @0 :UInt32;
  path @1 :Text;
  reachable @2 :Bool;    # the directory answers (stat within a deadline)
  local @3 :Bool;        # on a local filesystem (inotify) or not (polling)
  kind @4 :Text;         # "local", "network", "s3", "webdav" or "webdavs"
  health @5 :Text;       # remote origins: "ready", "degraded" or "offline"
  error @6 :Text;        # why it is not reachable or not ready ("" if it is)
}

struct TaskStatus {
  name @0 :Text;
  running @1 :Bool;
  restarts @2 :UInt32;
  lastError @3 :Text;
}

struct Counter {
  name @0 :Text;
  value @1 :UInt64;
}

struct EngineStatus {
  engineVersion @0 :Text;
  pid @1 :UInt32;
  uptimeMs @2 :UInt64;
  stateDir @3 :Text;
  files @4 :UInt64;
  nodes @5 :UInt64;
  bytes @6 :UInt64;
  scanComplete @7 :Bool;
  connectedShims @8 :UInt32;
  origins @9 :List(OriginStatus);
  tasks @10 :List(TaskStatus);
  counters @11 :List(Counter);
  # How the previous engine left the catalog: "new", "clean" (closed in
  # order) or "unclean" (crash or kill; redb recovered its last commit).
  catalogPreviousClose @12 :Text;
  inFlight @13 :UInt32;    # data-plane requests being served
  reloads @14 :UInt32;     # successful reloads since start
  template @15 :Text;      # the path template in force
  # Cache figures (gauges): listing cache directories and entries, open
  # origin files, catalog page cache size.
  cache @16 :List(Counter);
  # Catalog writes: "" while they work, else why the last one failed
  # (e.g. "No space left on device"), failing since `catalogWriteSinceMs`.
  catalogWriteError @17 :Text;
  catalogWriteSinceMs @18 :UInt64;
  # The state directory's last write probe: "" while it works, else why not.
  stateDirError @19 :Text;
  # The chunk cache for network origins (state "" when none is open).
  chunkCache @20 :ChunkCacheStatus;
  # The change feed's targets ([notify]).
  notify @21 :List(NotifyTargetStatus);
}

struct NotifyTargetStatus {
  name @0 :Text;           # kind and URL (no secret)
  state @1 :Text;          # idle, ok, retrying, failing
  delivered @2 :UInt64;    # batches delivered
  failedAttempts @3 :UInt64;
  dropped @4 :UInt64;      # batches dropped (full queue, every attempt failed)
  queued @5 :UInt64;
  lastError @6 :Text;
  lastOkMs @7 :UInt64;     # ms since the epoch of the last delivery
}

struct ChunkCacheStatus {
  dir @0 :Text;
  state @1 :Text;          # normal, unstable, down; "" when no cache is open
  bypassed @2 :Bool;       # reads go to the origins
  reason @3 :Text;         # why it is bypassed
  sinceMs @4 :UInt64;      # when the state last changed
  writesStopped @5 :Text;  # why no chunks are written ("" while they are)
  # used_bytes max_bytes chunks pinned_files free_percent min_free_percent
  # hits misses corrupt missing written skipped evicted disk_errors
  # bypassed_reads read_ahead
  figures @6 :List(Counter);
}

struct Event {
  seq @0 :UInt64;          # from 1, per engine process
  timeMs @1 :UInt64;       # since the Unix epoch
  kind @2 :Text;           # started sync change origin reload task stopping stopped
  message @3 :Text;
}

# The control plane: `control.sock` (the engine) and `supervisor.sock`
# (`musicfs mount`), Cap'n Proto RPC (capnp-rpc, two-party). The bootstrap
# capability is a gate: `hello` checks the control protocol versions (the
# ranges must overlap, else it fails naming both) and only then hands out
# the service. Long work returns a `Job`, with progress through a listener
# the client passes; dropping the job (or calling `cancel`) cancels it.
# Events reach a subscriber's `EventListener` one call at a time: the next
# is sent when the last one returned, so a slow follower holds back only
# its own events (flow control by the RPC itself; no stream.capnp needed).

const controlProtocolVersion :UInt32 = 1;
const minControlProtocolVersion :UInt32 = 1;

struct Peer {
  minProtocol @0 :UInt32;
  maxProtocol @1 :UInt32;
  name @2 :Text;
}

interface EngineGate {
  hello @0 (client :Peer) -> (engine :Engine, server :Peer);
}

interface Engine {
  status @0 () -> (status :EngineStatus);
  # `config`: the whole configuration as JSON (from `musicfs mount`, which
  # owns it), or empty: reload from the files and environment of the start.
  reload @1 (config :Text) -> (applied :List(Text), restartNeeded :List(Text));
  shutdown @2 (drainMs :UInt32) -> ();
  # The Prometheus text exposition.
  metrics @3 () -> (text :Text);
  # The events kept, after sequence number `after` (0: all).
  events @4 (after :UInt64) -> (events :List(Event));
  # Every event after `after`, then each new one, until `subscription` is
  # dropped or the listener fails.
  subscribe @5 (after :UInt64, listener :EventListener) -> (subscription :Subscription);
  cacheStatus @6 () -> (status :ChunkCacheStatus);
  cacheVerify @7 (repair :Bool, progress :ProgressListener) -> (job :Job);
  cacheClear @8 () -> (freedBytes :UInt64);
  # `path` relative to the mount; returns how many files.
  cachePin @9 (path :Data, pinned :Bool) -> (files :UInt64);
  # The tree paths (relative to the mount) of the tracks matching `query`,
  # in tantivy's query syntax; at most `search_max_results`.
  search @10 (query :Text) -> (paths :List(Text));
  # Rebuilds the search index from the catalog: progress in tracks, then
  # the result (counter `tracks`).
  searchRebuild @11 (progress :ProgressListener) -> (job :Job);
}

interface EventListener {
  event @0 (event :Event) -> ();
}

interface Subscription {}

interface ProgressListener {
  progress @0 (done :UInt64, total :UInt64) -> ();
}

interface Job {
  # Waits for the end (progress has been delivered in order before).
  result @0 () -> (report :List(Counter), cancelled :Bool);
  cancel @1 () -> ();
}

interface SupervisorGate {
  hello @0 (client :Peer) -> (supervisor :Supervisor, server :Peer);
}

interface Supervisor {
  # `binary` empty: the engine binary running now. Progress: steps of 4.
  swap @0 (binary :Text, progress :ProgressListener) -> (message :Text);
  reload @1 () -> (summary :Text);
  shutdown @2 (drainMs :UInt32) -> ();
  # Replace the shim without unmounting: the new one takes the live FUSE
  # connection over, then the old one leaves. `binary` empty: the shim
  # binary running now.
  shimSwap @3 (binary :Text) -> (message :Text);
}
