//! A commit's changes as tree paths, for the change feed: the paths of the
//! files it touches before the commit, then after it. At most
//! `notify::CHANGES_MAX` files are looked up; past it the batch says
//! `truncated` (a first scan: the media servers refresh everything).

use crate::catalog::{Store, file_key};
use crate::model::FileRecord;
use crate::notify::{Batch, CHANGES_MAX, Change, ChangeKind};

pub(super) struct Feed {
    /// Upserted files: key and path before the commit.
    upserts: Vec<(Vec<u8>, Option<String>)>,
    /// Removed files' paths before the commit.
    removed: Vec<String>,
    truncated: bool,
}

impl Feed {
    pub(super) fn before(store: &Store, upserts: &[FileRecord], removals: &[Vec<u8>]) -> Feed {
        let truncated = upserts.len() + removals.len() > CHANGES_MAX;
        let keys: Vec<Vec<u8>> = upserts
            .iter()
            .take(CHANGES_MAX)
            .map(|r| file_key(r.origin, &r.rel_path))
            .collect();
        let room = CHANGES_MAX.saturating_sub(keys.len());
        let removed_keys: Vec<Vec<u8>> = removals.iter().take(room).cloned().collect();
        // A lookup that fails names nothing: the feed is advisory, the
        // commit goes on.
        let old = store.tree_paths(&keys).unwrap_or_default();
        let removed = store
            .tree_paths(&removed_keys)
            .unwrap_or_default()
            .into_iter()
            .flatten()
            .collect();
        Feed {
            upserts: keys
                .into_iter()
                .enumerate()
                .map(|(i, k)| (k, old.get(i).cloned().flatten()))
                .collect(),
            removed,
            truncated,
        }
    }

    pub(super) fn after(self, store: &Store) -> Batch {
        let keys: Vec<Vec<u8>> = self.upserts.iter().map(|(k, _)| k.clone()).collect();
        let new = store.tree_paths(&keys).unwrap_or_default();
        let mut changes: Vec<Change> = self
            .removed
            .into_iter()
            .map(|path| Change {
                kind: ChangeKind::Removed,
                path,
            })
            .collect();
        for (i, (_, old)) in self.upserts.into_iter().enumerate() {
            let new = new.get(i).cloned().flatten();
            match (old, new) {
                (Some(o), Some(n)) if o == n => changes.push(Change {
                    kind: ChangeKind::Changed,
                    path: n,
                }),
                (old, new) => {
                    if let Some(o) = old {
                        changes.push(Change {
                            kind: ChangeKind::Removed,
                            path: o,
                        });
                    }
                    if let Some(n) = new {
                        changes.push(Change {
                            kind: ChangeKind::Added,
                            path: n,
                        });
                    }
                }
            }
        }
        Batch {
            changes,
            truncated: self.truncated,
        }
    }
}
