//! Work dispatch: claims that wait for work, and the rescue of jobs whose worker died
//! (docs/dispatch.md). The database work is `store::dispatch`; this module decides when
//! to look: a claim that finds nothing waits until an announcement says a job of one of
//! its queues may have become claimable (on this replica or another), until the next
//! scheduled job is due, or until its wait runs out — never polling the database in a
//! loop.

mod rescue;

pub(crate) use rescue::rescue_loop;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::Utc;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::feed::{ClaimWaiter, Feed, QueueKey};
use crate::ledger::LedgerError;
use crate::store::{Claim, ClaimRequest, ClaimScope, GroupClaims, Store, TransitionOutcome};

/// How dispatch behaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DispatchSettings {
    /// Most claims waiting at once in this process; more get RESOURCE_EXHAUSTED.
    pub max_waiting_claims: usize,
    /// How often a waiting claim looks again without an announcement (a safety net for
    /// an announcement lost in a crash, or jobs written by another program).
    pub recheck_interval: Duration,
    /// How often the rescuer looks for expired leases.
    pub rescue_interval: Duration,
}

impl Default for DispatchSettings {
    fn default() -> Self {
        DispatchSettings {
            max_waiting_claims: 1000,
            recheck_interval: Duration::from_secs(5),
            rescue_interval: Duration::from_millis(500),
        }
    }
}

/// One process's dispatcher.
#[derive(Clone)]
pub(crate) struct Dispatcher {
    store: Store,
    /// Concurrent claims of the same queues in one transaction (with group commit on).
    group: Option<GroupClaims>,
    feed: Feed,
    settings: DispatchSettings,
    waiting: Arc<Semaphore>,
    /// Claims of every org start after the org served last (round-robin).
    last_org: Arc<Mutex<Option<Uuid>>>,
    shutdown: CancellationToken,
}

impl Dispatcher {
    /// `group_writers`: the writer tasks of grouped claims (None: every claim alone).
    pub(crate) fn new(
        store: Store,
        feed: Feed,
        settings: DispatchSettings,
        group_writers: Option<usize>,
        shutdown: CancellationToken,
    ) -> Dispatcher {
        Dispatcher {
            group: group_writers.map(|writers| GroupClaims::start(store.clone(), writers)),
            store,
            feed,
            waiting: Arc::new(Semaphore::new(settings.max_waiting_claims)),
            settings,
            last_org: Arc::default(),
            shutdown,
        }
    }

    /// Claims waiting now.
    pub(crate) fn waiting_claims(&self) -> usize {
        self.settings.max_waiting_claims - self.waiting.available_permits()
    }

    /// Claims jobs for `request`; when none is claimable, waits up to `wait` (and not past
    /// `deadline`, the caller's) for one. Empty when nothing came in time, or at shutdown.
    pub(crate) async fn claim(
        &self,
        mut request: ClaimRequest,
        wait: Duration,
        deadline: Option<Instant>,
    ) -> Result<Vec<TransitionOutcome>, LedgerError> {
        let until = wait_until(Instant::now() + wait, deadline);
        let mut waiting: Option<(ClaimWaiter, OwnedSemaphorePermit)> = None;
        loop {
            if self.shutdown.is_cancelled() {
                return Ok(Vec::new());
            }
            if let ClaimScope::AllOrgs { after } = &mut request.scope {
                *after = *self.last_org.lock().unwrap_or_else(|e| e.into_inner());
            }
            let claim = match &self.group {
                Some(group) => group.claim(&request, deadline).await?,
                None => self.store.claim_jobs(&request, deadline).await?,
            };
            let next_due = claim.next_due;
            if let Some(claimed) = self.settle(&request, claim) {
                return Ok(claimed);
            }
            let now = Instant::now();
            if now >= until {
                return Ok(Vec::new());
            }
            let Some((waiter, _)) = &waiting else {
                let permit = self.waiting.clone().try_acquire_owned().map_err(|_| {
                    LedgerError::TooManyWaitingClaims {
                        limit: self.settings.max_waiting_claims,
                    }
                })?;
                waiting = Some((self.feed.claims().register(keys(&request)), permit));
                // Registered after the query: look once more, so that a job announced in
                // between is not waited past.
                continue;
            };
            let due = next_due.map(|at| now + (at - Utc::now()).to_std().unwrap_or_default());
            let wake_at = [Some(until), due, Some(now + self.settings.recheck_interval)]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(until);
            tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(Vec::new()),
                _ = waiter.woken() => {}
                _ = tokio::time::sleep_until(wake_at.into()) => {}
            }
            // The wait is over: answer now rather than after one more query, which could
            // take the answer past the caller's deadline on a busy database.
            if Instant::now() >= until {
                return Ok(Vec::new());
            }
        }
    }

    /// What a claim attempt leaves to do: remember full queues, wake another waiting
    /// claim when jobs were left behind, announce what was claimed. The claimed jobs, or
    /// None when there were none.
    fn settle(&self, request: &ClaimRequest, claim: Claim) -> Option<Vec<TransitionOutcome>> {
        let claims = self.feed.claims();
        for (org, job_type) in claim.full {
            claims.mark_full(org, job_type);
        }
        if claim.more {
            // Another waiting claim may find what this one left.
            for key in keys(request) {
                claims.wake_one(&key);
            }
        }
        if claim.claimed.is_empty() {
            return None;
        }
        if let Some(org) = claim.last_org {
            *self.last_org.lock().unwrap_or_else(|e| e.into_inner()) = Some(org);
        }
        for outcome in &claim.claimed {
            self.feed.announce_events(&outcome.job, &outcome.events);
        }
        Some(claim.claimed)
    }
}

/// The queues a claim waits on.
fn keys(request: &ClaimRequest) -> Vec<QueueKey> {
    let org = match request.scope {
        ClaimScope::Org(org) => Some(org),
        ClaimScope::AllOrgs { .. } => None,
    };
    request.types.iter().map(|t| (org, t.clone())).collect()
}

/// When a waiting claim answers empty: at the end of its wait, or a little before the
/// caller's deadline — by 5 % of the time left, at least 50 ms — so the empty answer
/// reaches the caller in time (the deadline was read from the request as it arrived: the
/// margin covers the request's travel as well as the answer's).
fn wait_until(end_of_wait: Instant, deadline: Option<Instant>) -> Instant {
    const MIN_MARGIN: Duration = Duration::from_millis(50);
    match deadline {
        Some(d) => {
            let margin = (d.saturating_duration_since(Instant::now()) / 20).max(MIN_MARGIN);
            end_of_wait.min(d.checked_sub(margin).unwrap_or(d))
        }
        None => end_of_wait,
    }
}
