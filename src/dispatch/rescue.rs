//! The rescuer: on every replica, a task that moves RUNNING jobs whose lease expired to
//! FAILED (`LEASE_EXPIRED`), so a job whose worker died is retried (or dead-lettered, on
//! its last attempt) instead of staying RUNNING for ever. Replicas race for the same
//! jobs harmlessly: each locks what it rescues with SKIP LOCKED, and the state machine
//! moves a job only if it is still RUNNING at the attempt that lost its lease.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::feed::Feed;
use crate::store::{Store, TransitionOutcome};

/// Jobs rescued per transaction.
const BATCH: i64 = 100;

/// Every `interval`, rescues every expired lease (in batches), announcing each rescue and
/// telling `on_rescue`. Runs until `stop`.
pub(crate) async fn rescue_loop(
    store: Store,
    feed: Feed,
    interval: Duration,
    on_rescue: impl Fn(&TransitionOutcome) + Send,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        loop {
            let rescued = tokio::select! {
                _ = stop.cancelled() => return,
                rescued = store.rescue_expired(BATCH) => rescued,
            };
            match rescued {
                Ok(outcomes) => {
                    for outcome in &outcomes {
                        tracing::info!(
                            job_id = %outcome.job.id,
                            org_id = %outcome.job.org_id,
                            attempt = outcome.job.attempt,
                            "rescued a job whose lease expired"
                        );
                        feed.announce_events(&outcome.job, &outcome.events);
                        on_rescue(outcome);
                    }
                    if outcomes.len() < BATCH as usize {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "rescuing expired leases failed; retrying");
                    break;
                }
            }
        }
    }
}
