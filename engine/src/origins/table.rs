//! The configured origins by persistent id, shared by the data plane and the
//! syncer. A reload swaps the whole table at once: readers take a snapshot
//! (an `Arc`) and never see half an update.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use tracing::warn;

use crate::config::OriginSettings;
use crate::origins::probe::probe_all;
use crate::origins::remote::{Remote, RemoteRuntime, RemoteSpec, is_remote};

/// Settings of single origins, by origin as written.
pub type Settings = HashMap<PathBuf, OriginSettings>;

/// One snapshot of the origins, indexed by origin id.

#[derive(Debug, Default)]
pub struct OriginTable {
    roots: Vec<Option<PathBuf>>,
    local: Vec<bool>,
    cached: Vec<bool>,
    /// Remote origins' clients (or why there is none).
    remote: Vec<Option<Result<Arc<Remote>, String>>>,
    settings: Vec<OriginSettings>,
}

impl OriginTable {
    /// The table for `roots` (by id; `None` for ids not configured);
    /// `settings`: per origin (caching: else network ones are cached;
    /// remote ones always are). `previous`: remote clients to keep.
    fn build(
        roots: Vec<Option<PathBuf>>,
        settings: &Settings,
        rt: &std::sync::OnceLock<RemoteRuntime>,
        previous: Option<&OriginTable>,
    ) -> OriginTable {
        // Bounded: an origin that hangs counts as not local (network).
        let configured: Vec<PathBuf> = roots
            .iter()
            .flatten()
            .filter(|r| !is_remote(r))
            .cloned()
            .collect();
        let mut probes = probe_all(&configured).into_iter();
        let local = roots
            .iter()
            .map(|o| {
                o.as_ref().is_some_and(|o| !is_remote(o))
                    && probes.next().flatten().is_some_and(|p| p.local)
            })
            .collect::<Vec<bool>>();
        let remote: Vec<Option<Result<Arc<Remote>, String>>> = roots
            .iter()
            .map(|root| {
                let root = root.as_ref().filter(|r| is_remote(r))?;
                let same = settings.get(root).cloned().unwrap_or_default();
                if let Some(Some(Ok(kept))) = previous.map(|p| p.remote_entry(root))
                    && kept.1 == same
                {
                    return Some(Ok(kept.0));
                }
                let made = RemoteSpec::parse(root)
                    .and_then(|spec| Remote::new(spec, &same, runtime(rt)))
                    .map(Arc::new)
                    .map_err(|e| format!("{e:#}"));
                if let Err(e) = &made {
                    warn!(origin = %root.display(), "remote origin cannot be used: {e}");
                }
                Some(made)
            })
            .collect();
        let cached = roots
            .iter()
            .zip(&local)
            .map(|(root, local)| {
                root.as_ref().is_some_and(|r| {
                    is_remote(r) || settings.get(r).and_then(|s| s.cache).unwrap_or(!local)
                })
            })
            .collect();
        let settings_of = roots
            .iter()
            .map(|r| {
                r.as_ref()
                    .and_then(|r| settings.get(r).cloned())
                    .unwrap_or_default()
            })
            .collect();
        OriginTable {
            roots,
            local,
            cached,
            remote,
            settings: settings_of,
        }
    }

    /// Origin `root`'s client and the settings it was made with.
    fn remote_entry(&self, root: &Path) -> Option<Result<(Arc<Remote>, OriginSettings), ()>> {
        let id = self.roots.iter().position(|r| r.as_deref() == Some(root))?;
        match self.remote.get(id)?.as_ref()? {
            Ok(r) => Some(Ok((
                r.clone(),
                self.settings.get(id).cloned().unwrap_or_default(),
            ))),
            Err(_) => Some(Err(())),
        }
    }

    /// The client of remote origin `id`: `None` for a local origin,
    /// `Some(Err(why))` for a remote one that cannot be used.
    pub fn remote(&self, id: u32) -> Option<Result<&Arc<Remote>, &str>> {
        match self.remote.get(id as usize)?.as_ref()? {
            Ok(r) => Some(Ok(r)),
            Err(e) => Some(Err(e.as_str())),
        }
    }

    /// Whether origin `id` is a remote one (S3, WebDAV).
    pub fn is_remote(&self, id: u32) -> bool {
        self.remote.get(id as usize).is_some_and(Option::is_some)
    }

    /// Every usable remote origin's client.
    pub fn remotes(&self) -> Vec<Arc<Remote>> {
        self.remote
            .iter()
            .flatten()
            .filter_map(|r| r.as_ref().ok().cloned())
            .collect()
    }

    /// Origin `id`'s priority among copies of one file (lower first).
    pub fn priority(&self, id: u32) -> u32 {
        self.settings
            .get(id as usize)
            .and_then(|s| s.priority)
            .unwrap_or(u32::MAX)
    }

    /// How ready origin `id` is to serve: 0 ready (or not remote), 1
    /// degraded, 2 offline or unusable. Reads try copies in (this,
    /// priority) order.
    pub fn readiness(&self, id: u32) -> u8 {
        match self.remote(id) {
            None => 0,
            Some(Ok(r)) => match r.health.state() {
                crate::origins::remote::State::Ready => 0,
                crate::origins::remote::State::Degraded => 1,
                crate::origins::remote::State::Offline => 2,
            },
            Some(Err(_)) => 2,
        }
    }

    /// The settings of origin `id`.
    pub fn settings(&self, id: u32) -> OriginSettings {
        self.settings.get(id as usize).cloned().unwrap_or_default()
    }

    /// Whether origin `id` is read through the chunk cache.
    pub fn is_cached(&self, id: u32) -> bool {
        self.cached.get(id as usize).copied().unwrap_or(false)
    }

    /// Whether any origin is read through the chunk cache.
    pub fn any_cached(&self) -> bool {
        self.cached.iter().any(|c| *c)
    }

    /// The root directory of origin `id`, if it is configured.
    pub fn root(&self, id: u32) -> Option<&Path> {
        self.roots.get(id as usize)?.as_deref()
    }

    /// Whether origin `id` is on a local filesystem (checked when configured).
    pub fn is_local(&self, id: u32) -> bool {
        self.local.get(id as usize).copied().unwrap_or(false)
    }

    /// Every configured origin: (id, root).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &Path)> {
        self.roots.iter().enumerate().filter_map(|(id, r)| {
            r.as_deref()
                .map(|r| (u32::try_from(id).unwrap_or(u32::MAX), r))
        })
    }
}

/// The live origin table, the settings of single origins, and the runtime
/// remote I/O runs on (declared last: dropped after every client).
pub struct Origins {
    table: RwLock<Arc<OriginTable>>,
    settings: RwLock<Settings>,
    /// Started with the first remote origin (local-only mounts run no
    /// tokio threads for it).
    runtime: std::sync::OnceLock<RemoteRuntime>,
}

/// The remote I/O runtime, started on first use.
fn runtime(rt: &std::sync::OnceLock<RemoteRuntime>) -> &RemoteRuntime {
    rt.get_or_init(|| match RemoteRuntime::new() {
        Ok(rt) => rt,
        Err(e) => {
            warn!("{e:#}; remote origins cannot be read");
            RemoteRuntime::none()
        }
    })
}

impl std::fmt::Debug for Origins {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Origins").finish_non_exhaustive()
    }
}

impl Origins {
    pub fn new(roots: Vec<Option<PathBuf>>, settings: Settings) -> Arc<Origins> {
        let runtime = std::sync::OnceLock::new();
        let table = OriginTable::build(roots, &settings, &runtime, None);
        Arc::new(Origins {
            table: RwLock::new(Arc::new(table)),
            settings: RwLock::new(settings),
            runtime,
        })
    }

    /// The current table (cheap: one `Arc` clone).
    pub fn snapshot(&self) -> Arc<OriginTable> {
        self.table.read().clone()
    }

    /// The root of origin `id`, if configured.
    pub fn root(&self, id: u32) -> Option<PathBuf> {
        self.snapshot().root(id).map(Path::to_path_buf)
    }

    /// Replaces the table (reload); remote clients whose settings did not
    /// change are kept (with their health and connections).
    pub fn replace(&self, roots: Vec<Option<PathBuf>>, settings: Settings) {
        let before = self.snapshot();
        let table = Arc::new(OriginTable::build(
            roots,
            &settings,
            &self.runtime,
            Some(&before),
        ));
        *self.settings.write() = settings;
        *self.table.write() = table;
    }

    /// Looks again at which filesystem each origin is on (an origin that
    /// was away at start could not tell). A reload in between wins.
    pub fn refresh(&self) {
        let before = self.snapshot();
        let settings = self.settings.read().clone();
        let table = Arc::new(OriginTable::build(
            before.roots.clone(),
            &settings,
            &self.runtime,
            Some(&before),
        ));
        let mut current = self.table.write();
        if Arc::ptr_eq(&current, &before) {
            *current = table;
        }
    }

    /// Health-checks the remote origins that are due (in parallel, under
    /// one deadline).
    pub fn check_remotes(&self) -> usize {
        let remotes = self.snapshot().remotes();
        match self.runtime.get() {
            Some(rt) if !remotes.is_empty() => crate::origins::remote::check_all(&remotes, rt),
            _ => 0,
        }
    }
}
