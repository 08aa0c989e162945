//! Which of a plan's snapshots holdfast believes: the checks that need no
//! key. Anyone holding the bucket's write credentials can add objects, so a
//! manifest is a snapshot only when what its name claims agrees with what
//! it holds and with what the store saw (`docs/repository-format.md`, *What
//! makes a manifest acceptable*). Everything else is a [`Rejected`] object:
//! `latest`, tiers, prune's keep set and the hash chain a new backup links
//! to never see it; backups, restores and prunes log it by name and go on;
//! `verify` reports it and fails; the daemon counts it.
//!
//! Without a key these checks stop replays (a real manifest copied under
//! another plan or time) and forgeries that lie about their time or chain,
//! not a forgery that is consistent in every field: that is what sealing
//! manifests under the repository key closes. In an encrypted repository a
//! manifest, index object or prune record that fails authentication is one
//! more [`RejectKind`] ([`RejectKind::Unauthenticated`]), handled like the
//! others; the checks above still run (they also guard `encryption: none`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use super::manifest::{ManifestHead, SnapshotRef};
use super::{RepoError, Repository, SNAPSHOT_TIME_FORMAT};
use crate::ids::SnapshotId;
use crate::plan::PlanName;

/// How far ahead of this host's clock a snapshot's key time may be (another
/// host's clock may run ahead). A key dated later is not a snapshot (yet).
pub const CLOCK_SKEW: Duration = Duration::minutes(10);

/// The longest a backup may run: on S3 a manifest is written when its backup
/// ends, so its original version must have been created no later than this
/// after the start time it claims (and no earlier than [`CLOCK_SKEW`] before
/// it). A manifest written today under last month's time is not a snapshot.
pub const MAX_BACKUP_DURATION: Duration = Duration::hours(48);

/// Manifests read at once while listing a plan's snapshots, at most.
const PARALLEL_READS: usize = 16;

/// Stored manifest bytes read at once while listing, at most (MiB). A
/// manifest is read whole to check its id and seal, then opened (a second
/// copy, when encrypted) and decompressed (its JSON, about twice the
/// stored size) for its head: a 3 GB cluster's manifest is 13.5 MB stored
/// and takes about 60 MB while its head is read. 16 at once took 560 MB;
/// this lets two such run at once, and many small ones. One larger than
/// this is read alone.
const READ_BUDGET_MIB: u32 = 32;

/// Why an object was not believed. Every consumer treats the kinds alike.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum RejectKind {
    /// Under `snapshots/<plan>/` but not named `<time>-<id>`.
    BadName,
    /// Its bytes do not match the id in its name, or do not decode, or are
    /// over their size cap.
    Unreadable,
    /// Its `plan` is not the plan in its key.
    PlanMismatch,
    /// Its `started_at` is not the time in its key.
    TimeMismatch,
    /// Its key time is ahead of the clock by more than [`CLOCK_SKEW`].
    Future,
    /// On S3: its original version was created too long after (or before)
    /// the start time it claims.
    CreationTime,
    /// Its `previous` names a snapshot that is not older than itself.
    ChainOrder,
    /// It shares its `previous` with another snapshot of the plan, and the
    /// other branch is the one kept (see [`chain`]).
    Fork,
    /// A prune record naming packs that believed snapshots still need: it
    /// hides none of them.
    PruneRecordNamesLivePacks,
    /// In an encrypted repository: it does not open under the repository
    /// key and its name (written without the key, altered, or copied from
    /// another name or repository). A manifest, index object or prune record.
    Unauthenticated,
}

/// One object holdfast does not believe, and why.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Rejected {
    /// The object's key.
    pub object: String,
    pub kind: RejectKind,
    pub detail: String,
}

impl std::fmt::Display for Rejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.object, self.detail)
    }
}

impl Rejected {
    /// Logs it: one warning per rejected object, naming it (backups,
    /// restores and prunes call this and go on).
    pub fn warn(&self, plan: &PlanName) {
        tracing::warn!(
            plan = %plan,
            object = %self.object,
            kind = ?self.kind,
            "ignoring {}: {} (not a snapshot holdfast wrote; see `docs/runbook.md`, rejected objects)",
            self.object,
            self.detail
        );
    }
}

/// A snapshot that passed every check: its name, and its manifest's header.
#[derive(Debug, Clone)]
pub struct Accepted {
    pub snap: SnapshotRef,
    pub head: ManifestHead,
}

/// A plan's snapshots as holdfast believes them.
#[derive(Debug, Clone, Default)]
pub struct PlanSnapshots {
    /// Oldest first (by key: start time, then id).
    pub accepted: Vec<Accepted>,
    pub rejected: Vec<Rejected>,
}

impl PlanSnapshots {
    pub fn refs(&self) -> Vec<SnapshotRef> {
        self.accepted.iter().map(|a| a.snap.clone()).collect()
    }

    pub fn latest(&self) -> Option<&Accepted> {
        self.accepted.last()
    }

    /// Logs every rejected object (see [`Rejected::warn`]).
    pub fn warn(&self, plan: &PlanName) {
        for r in &self.rejected {
            r.warn(plan);
        }
    }
}

/// What one listed key turned out to be before the chain is looked at.
enum Checked {
    Candidate(Box<Accepted>),
    Rejected(Rejected),
    Gone,
}

impl Repository {
    /// A plan's snapshots, each manifest's header read (in parallel) and
    /// checked: name, bytes against id, plan and time against the key, key
    /// time against the clock, creation time (where the store gives it),
    /// then the hash chain ([`chain`]). A store failure is an error; a bad
    /// object is a [`Rejected`] entry, not an error.
    pub async fn snapshots(&self, plan: &PlanName) -> Result<PlanSnapshots, RepoError> {
        let now = crate::clock::now();
        // Debug builds with an injected clock (tests of date rules) back up
        // "at" times the server's own clock never saw; release builds never
        // inject, so there this check always runs.
        let check_created = !crate::clock::is_injected();
        let listing = self.store().list(&super::snapshots_prefix(plan)).await?;
        let mut tasks = tokio::task::JoinSet::new();
        let limit = Arc::new(tokio::sync::Semaphore::new(PARALLEL_READS));
        let budget = Arc::new(tokio::sync::Semaphore::new(READ_BUDGET_MIB as usize));
        for (n, info) in listing.into_iter().enumerate() {
            let (repo, limit, budget, plan) =
                (self.clone(), limit.clone(), budget.clone(), plan.clone());
            let mib = u32::try_from(info.size.div_ceil(1 << 20))
                .unwrap_or(u32::MAX)
                .clamp(1, READ_BUDGET_MIB);
            tasks.spawn(async move {
                let _permit = limit.acquire_owned().await.expect("semaphore open");
                let _bytes = budget
                    .acquire_many_owned(mib)
                    .await
                    .expect("semaphore open");
                let checked = check_one(&repo, &plan, &info, now, check_created).await;
                (n, checked)
            });
        }
        let mut results = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let (n, checked) = done.expect("manifest check panicked");
            results.push((n, checked?));
        }
        results.sort_by_key(|(n, _)| *n);
        let mut candidates = Vec::new();
        let mut rejected = Vec::new();
        for (_, c) in results {
            match c {
                Checked::Candidate(a) => candidates.push(*a),
                Checked::Rejected(r) => rejected.push(r),
                Checked::Gone => {}
            }
        }
        let (accepted, mut off_chain) = chain(candidates);
        rejected.append(&mut off_chain);
        rejected.sort_by(|a, b| a.object.cmp(&b.object));
        Ok(PlanSnapshots { accepted, rejected })
    }
}

async fn check_one(
    repo: &Repository,
    plan: &PlanName,
    info: &crate::store::ObjectInfo,
    now: DateTime<Utc>,
    check_created: bool,
) -> Result<Checked, RepoError> {
    let reject = |kind: RejectKind, detail: String| {
        Ok(Checked::Rejected(Rejected {
            object: info.key.clone(),
            kind,
            detail,
        }))
    };
    let Some(snap) = SnapshotRef::from_key(&info.key) else {
        return reject(
            RejectKind::BadName,
            "is not named `<time>-<snapshot id>`".into(),
        );
    };
    if snap.started_at > now + CLOCK_SKEW {
        return reject(
            RejectKind::Future,
            format!(
                "its key is dated {}, later than now ({}) by more than the {}-minute clock-skew allowance",
                snap.started_at,
                now.format("%Y-%m-%dT%H:%M:%SZ"),
                CLOCK_SKEW.num_minutes()
            ),
        );
    }
    let head = match repo.load_manifest_head(&snap).await {
        Ok(h) => h,
        Err(RepoError::Store(e)) if e.is_not_found() => return Ok(Checked::Gone),
        Err(e @ (RepoError::Corrupt { .. } | RepoError::OverCap { .. })) => {
            return reject(RejectKind::Unreadable, e.to_string())
        }
        Err(e @ RepoError::Unauthenticated { .. }) => {
            return reject(RejectKind::Unauthenticated, e.to_string())
        }
        Err(RepoError::Store(e @ crate::store::StoreError::TooLarge { .. })) => {
            return reject(RejectKind::Unreadable, e.to_string())
        }
        Err(e) => return Err(e),
    };
    if &head.plan != plan {
        return reject(
            RejectKind::PlanMismatch,
            format!(
                "is a manifest of plan {}, stored under plan {plan} (a copy, not a snapshot of this plan)",
                head.plan
            ),
        );
    }
    let claimed = head.started_at.format(SNAPSHOT_TIME_FORMAT).to_string();
    let in_key = snap.started_at.format(SNAPSHOT_TIME_FORMAT).to_string();
    if claimed != in_key {
        return reject(
            RejectKind::TimeMismatch,
            format!(
                "its manifest says it started at {}, its key says {} (a manifest copied under another time)",
                head.started_at, snap.started_at
            ),
        );
    }
    if let (true, Some(created)) = (check_created, info.created) {
        if created > head.started_at + MAX_BACKUP_DURATION {
            return reject(
                RejectKind::CreationTime,
                format!(
                    "the store created it at {created}, {} h after the start time it claims ({}); a backup runs at most {} h",
                    (created - head.started_at).num_hours(),
                    head.started_at,
                    MAX_BACKUP_DURATION.num_hours()
                ),
            );
        }
        if created < head.started_at - CLOCK_SKEW {
            return reject(
                RejectKind::CreationTime,
                format!(
                    "the store created it at {created}, before the start time it claims ({}): it was written in advance",
                    head.started_at
                ),
            );
        }
    }
    Ok(Checked::Candidate(Box::new(Accepted { snap, head })))
}

/// The hash chain, from manifests that passed their own checks (oldest
/// first). A real backup links to the newest snapshot it believed, so:
///
/// * a manifest whose `previous` names a snapshot that is not older than
///   itself is rejected ([`RejectKind::ChainOrder`]);
/// * a **fork** (two manifests naming one `previous`) has one real branch at
///   most. The branch kept is the one with more snapshots after the fork
///   (real backups keep extending the real branch); on a tie, the later one
///   (had the earlier one been real, the later backup would have linked to
///   it). The other branch, with everything chained onto it, is rejected
///   ([`RejectKind::Fork`]).
///
/// A `previous` naming no believed snapshot (the first backup, a pruned
/// snapshot, one removed outside holdfast) starts a chain; `verify` reports
/// the link when no prune record accounts for it.
pub fn chain(candidates: Vec<Accepted>) -> (Vec<Accepted>, Vec<Rejected>) {
    let mut rejected: Vec<Rejected> = Vec::new();
    let pos: HashMap<SnapshotId, usize> = candidates
        .iter()
        .enumerate()
        .map(|(i, a)| (a.snap.id, i))
        .collect();
    let mut out: HashSet<usize> = HashSet::new();
    for (i, a) in candidates.iter().enumerate() {
        let Some(p) = a.head.previous else { continue };
        if let Some(&j) = pos.get(&p) {
            if j >= i || candidates[j].snap.started_at >= a.snap.started_at {
                out.insert(i);
                rejected.push(Rejected {
                    object: a.snap.key.clone(),
                    kind: RejectKind::ChainOrder,
                    detail: format!(
                        "names as its previous snapshot {}, which is not older than it: no backup links to a later snapshot",
                        candidates[j].snap.key
                    ),
                });
            }
        }
    }
    let parent = |i: usize, out: &HashSet<usize>| -> Option<usize> {
        let j = *pos.get(&candidates[i].head.previous?)?;
        (!out.contains(&j) && j < i).then_some(j)
    };
    let mut children: HashMap<usize, Vec<usize>> = HashMap::new();
    for i in 0..candidates.len() {
        if out.contains(&i) {
            continue;
        }
        if let Some(j) = parent(i, &out) {
            children.entry(j).or_default().push(i);
        }
    }
    // Snapshots in each one's branch (itself and everything after it).
    let mut size = vec![1usize; candidates.len()];
    for i in (0..candidates.len()).rev() {
        if let Some(kids) = children.get(&i) {
            size[i] += kids.iter().map(|k| size[*k]).sum::<usize>();
        }
    }
    for p in 0..candidates.len() {
        let Some(kids) = children.get(&p) else {
            continue;
        };
        if kids.len() < 2 || out.contains(&p) {
            continue;
        }
        let keep = *kids
            .iter()
            .max_by_key(|k| (size[**k], **k))
            .expect("a fork has children");
        for &k in kids.iter().filter(|k| **k != keep) {
            let mut stack = vec![k];
            while let Some(x) = stack.pop() {
                if !out.insert(x) {
                    continue;
                }
                rejected.push(Rejected {
                    object: candidates[x].snap.key.clone(),
                    kind: RejectKind::Fork,
                    detail: if x == k {
                        format!(
                            "names previous snapshot {}, as does {}, the branch kept; a backup links to the newest snapshot it saw, so only one of them can be real",
                            candidates[p].snap.key, candidates[keep].snap.key
                        )
                    } else {
                        format!(
                            "is chained onto {}, a rejected branch of a fork",
                            candidates[k].snap.key
                        )
                    },
                });
                stack.extend(children.get(&x).into_iter().flatten().copied());
            }
        }
    }
    let accepted = candidates
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !out.contains(i))
        .map(|(_, a)| a)
        .collect();
    (accepted, rejected)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Hash256;

    fn snap(n: u8, minute: u32, previous: Option<u8>) -> Accepted {
        let at: DateTime<Utc> = format!("2026-12-01T10:{minute:02}:00Z").parse().unwrap();
        let id = SnapshotId(Hash256([n; 32]));
        Accepted {
            snap: SnapshotRef {
                key: format!("snapshots/p/{}-{id}", at.format(SNAPSHOT_TIME_FORMAT)),
                id,
                started_at: at,
            },
            head: ManifestHead {
                plan: PlanName::new("p").unwrap(),
                previous: previous.map(|p| SnapshotId(Hash256([p; 32]))),
                started_at: at,
                ..ManifestHead::example()
            },
        }
    }

    fn ids(a: &[Accepted]) -> Vec<u8> {
        a.iter().map(|a| a.snap.id.0 .0[0]).collect()
    }

    #[test]
    fn a_forged_sibling_inside_the_real_chain_is_the_branch_rejected() {
        // 1 → 2 → 3 → 4, and 9 forged at minute 15 naming 1 as previous.
        let all = vec![
            snap(1, 0, None),
            snap(2, 10, Some(1)),
            snap(9, 15, Some(1)),
            snap(3, 20, Some(2)),
            snap(4, 30, Some(3)),
        ];
        let (ok, bad) = chain(all);
        assert_eq!(ids(&ok), vec![1, 2, 3, 4]);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].kind, RejectKind::Fork);
        assert!(bad[0]
            .object
            .contains(&SnapshotId(Hash256([9; 32])).to_string()));
    }

    #[test]
    fn on_a_tie_the_later_sibling_is_kept_and_a_backward_link_is_rejected() {
        // 1 → 2 (real head), 9 at minute 5 naming 1: 2 did not see it.
        let (ok, bad) = chain(vec![
            snap(1, 0, None),
            snap(9, 5, Some(1)),
            snap(2, 10, Some(1)),
        ]);
        assert_eq!(ids(&ok), vec![1, 2]);
        assert_eq!(bad[0].kind, RejectKind::Fork);
        // 8 at minute 5 names 2, taken at minute 10.
        let (ok, bad) = chain(vec![
            snap(1, 0, None),
            snap(8, 5, Some(2)),
            snap(2, 10, Some(1)),
        ]);
        assert_eq!(ids(&ok), vec![1, 2]);
        assert_eq!(bad[0].kind, RejectKind::ChainOrder);
    }

    #[test]
    fn a_pruned_gap_is_no_fork() {
        // 2 and 3 pruned: 4 names 3, which is gone.
        let (ok, bad) = chain(vec![
            snap(1, 0, None),
            snap(4, 30, Some(3)),
            snap(5, 40, Some(4)),
        ]);
        assert_eq!(ids(&ok), vec![1, 4, 5]);
        assert!(bad.is_empty());
    }
}
