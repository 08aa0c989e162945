//! Use cases: what `holdfast backup`, `restore`, `snapshots`, `verify`,
//! `prune`, `repair index`, `wal-push`/`wal-fetch`, `binlog-archive`, `repo init` and `doctor` do, as library
//! calls the CLI and the daemon share. Nothing here prints: each call takes a
//! validated plan and returns a report (or an [`Error`] with its exit class)
//! for the caller to render.

pub mod backup;
pub mod binlog;
pub mod doctor;
pub mod drill;
pub mod keys;
pub mod locks;
pub mod plan_check;
pub mod prune;
pub mod repair;
pub mod restore;
pub mod snapshots;
pub mod verify;
pub mod wal;
pub mod wal_async;

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::error::{Error, Exit};
use crate::plan::{KeySpec, Plan, Tier};
use crate::repository::{RepoKey, Repository};
use crate::store::{self, Store};

/// The store a plan names.
pub async fn open_store(plan: &Plan) -> Result<Arc<dyn Store>, Error> {
    Ok(store::open(&plan.repository).await?.into())
}

/// The plan's existing repository, unlocked with the plan's key.
pub async fn open_repo(plan: &Plan) -> Result<Repository, Error> {
    let store = open_store(plan).await?;
    let key = repo_key(plan, false).await?;
    Ok(Repository::open(store, &key).await?)
}

/// The plan's repository, created (with its first key, and the plan's key
/// file if that does not exist yet) when the store holds none.
pub async fn open_or_init_repo(plan: &Plan, now: DateTime<Utc>) -> Result<Repository, Error> {
    let store = open_store(plan).await?;
    open_or_init_repo_in(plan, store, now).await
}

/// [`open_or_init_repo`] in a store already opened.
pub async fn open_or_init_repo_in(
    plan: &Plan,
    store: Arc<dyn Store>,
    now: DateTime<Utc>,
) -> Result<Repository, Error> {
    let creating = !Repository::exists(store.as_ref()).await?;
    let key = repo_key(plan, creating).await?;
    Ok(Repository::open_or_init(store, &key, plan.lock_for(Tier::Monthly, now), now).await?)
}

/// The key the plan gives. With `create`, a key file that does not exist yet
/// is created (0600, `hfkey1-` and 32 random bytes as hex, see
/// [`crate::secret::generate_key`]) with a loud warning.
pub async fn repo_key(plan: &Plan, create: bool) -> Result<RepoKey, Error> {
    match &plan.key {
        KeySpec::Unencrypted => Ok(RepoKey::Unencrypted),
        KeySpec::Passphrase { secret, .. } => Ok(RepoKey::Passphrase(secret.clone())),
        KeySpec::Unset => Ok(RepoKey::Missing(format!(
            "plan {} gives no key: set `repository.key: ${{VAR}}` or `repository.key_file: PATH` in the plan, or HOLDFAST_KEY_FILE / HOLDFAST_KEY in the environment (or `repository.encryption: none` for an unencrypted repository)",
            plan.file.display()
        ))),
        KeySpec::File { path, from } => {
            let (path, from) = (path.clone(), from.clone());
            let plan_file = plan.file.clone();
            tokio::task::spawn_blocking(move || read_or_create_key_file(&path, &from, &plan_file, create))
                .await
                .expect("key file task panicked")
        }
    }
}

/// Writes `key` to a new key file `path` (0600, never over an existing
/// file), synced: the repository's first key, or `holdfast key add`'s.
pub(crate) fn write_new_key_file(path: &std::path::Path, key: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(format!("{key}\n").as_bytes())?;
    f.sync_all()
}

fn read_or_create_key_file(
    path: &std::path::Path,
    from: &str,
    plan_file: &std::path::Path,
    create: bool,
) -> Result<RepoKey, Error> {
    use std::io::Read;
    let fail = |why: String| {
        Error::new(
            Exit::Plan,
            anyhow::anyhow!(
                "{}: unable to read the repository key file {} ({from}): {why}",
                plan_file.display(),
                path.display()
            ),
        )
    };
    match std::fs::File::open(path) {
        Ok(f) => {
            let mut text = String::new();
            f.take(64 * 1024)
                .read_to_string(&mut text)
                .map_err(|e| fail(e.to_string()))?;
            let key = text.trim();
            if key.is_empty() {
                return Err(fail("it is empty".into()));
            }
            Ok(RepoKey::Passphrase(crate::secret::Secret::new(key)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
            let key = crate::secret::generate_key();
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| fail(e.to_string()))?;
            }
            write_new_key_file(path, &key).map_err(|e| fail(format!("cannot create it: {e}")))?;
            eprintln!(
                "WARNING: created the repository key file {} (0600). The new repository is encrypted with it: LOSING THIS FILE LOSES EVERY BACKUP. Copy it somewhere safe, apart from the repository, now.",
                path.display()
            );
            Ok(RepoKey::Passphrase(crate::secret::Secret::new(key)))
        }
        Err(e) => Err(fail(e.to_string())),
    }
}
