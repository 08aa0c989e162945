//! `holdfast key add|list|remove`: the key objects that wrap a repository's
//! master secret, one per passphrase (`docs/runbook.md`, *Repository keys*).

use serde::Serialize;

use crate::error::{Error, Exit};
use crate::ids::Hash256;
use crate::plan::{Plan, Tier};
use crate::repository::keys::{self, KeyObject};
use crate::repository::Repository;
use crate::secret::Secret;
use crate::store::StoreError;

#[derive(Debug, Clone, Serialize)]
pub struct KeyRow {
    pub id: String,
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
    pub host: Option<String>,
    pub user: Option<String>,
    /// The plan's key opens this one.
    pub current: bool,
    /// It has an authentic removal marker.
    pub removed: bool,
    /// Why it could not be read, if it could not.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RemoveReport {
    pub id: String,
    pub marker: String,
    /// The key object itself is gone.
    pub deleted: bool,
    /// Why it is not gone yet.
    pub detail: Option<String>,
}

async fn open_encrypted(plan: &Plan) -> Result<Repository, Error> {
    let repo = super::open_repo(plan).await?;
    if !repo.crypto().is_encrypted() {
        return Err(Error::new(
            Exit::Usage,
            anyhow::anyhow!(
                "repository {} of plan {} is not encrypted (encryption: none): it has no keys",
                repo.url(),
                plan.name
            ),
        ));
    }
    Ok(repo)
}

/// Every key object, with which one the plan's key opens.
pub async fn list(plan: &Plan) -> Result<Vec<KeyRow>, Error> {
    let repo = open_encrypted(plan).await?;
    let store = repo.store().as_ref();
    let mut rows = Vec::new();
    for (id, _) in keys::list_key_objects(store).await? {
        let read: Result<KeyObject, _> = keys::read_key_object(store, &id).await;
        let removed = keys::is_removed(store, repo.crypto(), &id).await;
        rows.push(match read {
            Ok(k) => KeyRow {
                id: id.to_hex(),
                created_at: Some(k.created_at),
                host: k.host,
                user: k.user,
                current: repo.key_id() == Some(id),
                removed,
                error: None,
            },
            Err(e) => KeyRow {
                id: id.to_hex(),
                created_at: None,
                host: None,
                user: None,
                current: false,
                removed,
                error: Some(e.to_string()),
            },
        });
    }
    Ok(rows)
}

/// Adds a key object for `new`, unlocking with the plan's current key.
pub async fn add(plan: &Plan, new: &Secret) -> Result<Hash256, Error> {
    let repo = open_encrypted(plan).await?;
    let master = repo
        .master_secret()
        .expect("an encrypted repository was unlocked");
    let now = crate::clock::now();
    Ok(keys::add(
        repo.store().as_ref(),
        &repo.config().id,
        master,
        new,
        plan.lock_for(Tier::Monthly, now),
    )
    .await?)
}

/// Marks key `selector` (an id or unique prefix) removed and deletes its
/// object if the store allows it yet.
pub async fn remove(plan: &Plan, selector: &str) -> Result<RemoveReport, Error> {
    let repo = open_encrypted(plan).await?;
    let store = repo.store().as_ref();
    let usage = |m: String| Error::new(Exit::Usage, anyhow::anyhow!(m));
    let all = keys::list_key_objects(store).await?;
    let sel = selector.to_ascii_lowercase();
    let matches: Vec<Hash256> = all
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !sel.is_empty() && id.to_hex().starts_with(&sel))
        .collect();
    let id = match matches.as_slice() {
        [one] => *one,
        [] => {
            return Err(usage(format!(
                "no key object of repository {} matches `{selector}` (`holdfast key list --plan {}` shows them)",
                repo.url(),
                plan.file.display()
            )))
        }
        _ => return Err(usage(format!("key id prefix `{selector}` is ambiguous"))),
    };
    if repo.key_id() == Some(id) {
        return Err(usage(format!(
            "key {} is the one plan {} is using; refusing to remove it (add another key, switch the plan to it, then remove this one)",
            id.short(),
            plan.name
        )));
    }
    let mut live = 0;
    for (other, _) in &all {
        if *other != id && !keys::is_removed(store, repo.crypto(), other).await {
            live += 1;
        }
    }
    if live == 0 {
        return Err(usage(format!(
            "key {} is the last remaining key of repository {}; refusing to remove it (without a key the repository cannot be opened)",
            id.short(),
            repo.url()
        )));
    }
    keys::write_removal_marker(
        store,
        repo.crypto(),
        &id,
        plan.lock_for(Tier::Monthly, crate::clock::now()),
    )
    .await?;
    let (deleted, detail) = match store.delete(&keys::key_object_key(&id)).await {
        Ok(()) => (true, None),
        Err(e @ (StoreError::Retained { .. } | StoreError::Denied { .. })) => (
            false,
            Some(format!(
                "the key object is still locked ({e}); it stays readable until its lock ends (the lock keeper no longer extends it), then `holdfast key remove` deletes it"
            )),
        ),
        Err(e) if e.is_not_found() => (true, None),
        Err(e) => return Err(e.into()),
    };
    Ok(RemoveReport {
        id: id.to_hex(),
        marker: keys::removal_marker_key(&id),
        deleted,
        detail,
    })
}
