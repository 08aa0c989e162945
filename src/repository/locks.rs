//! Lengthening object locks: the one routine a backup (for the packs it
//! reuses) and the lock keeper (for everything kept snapshots need) share.

use std::sync::Arc;

use crate::store::{Retention, Store, StoreError};

/// Calls to the store in flight at once: each waits on a round trip.
const PARALLEL: usize = 16;

/// Moves each key's lock to at least its retention; returns how many locks
/// were lengthened. A key already locked longer is left as it is (every
/// store checks the current lock itself and refuses to shorten it).
pub async fn extend_all(
    store: &Arc<dyn Store>,
    keys: Vec<(String, Retention)>,
) -> Result<u64, StoreError> {
    let mut tasks = tokio::task::JoinSet::new();
    let limit = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    for (key, retention) in keys {
        let (store, limit) = (store.clone(), limit.clone());
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("semaphore open");
            match store.extend_retention(&key, &retention).await {
                Ok(()) => Ok::<_, StoreError>(1u64),
                Err(StoreError::RetentionShortening { .. }) => Ok(0),
                Err(e) => Err(e),
            }
        });
    }
    let mut extended = 0;
    while let Some(done) = tasks.join_next().await {
        extended += done.expect("lock task panicked")?;
    }
    Ok(extended)
}
