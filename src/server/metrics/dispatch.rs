//! The dispatch metrics: claims, claimed jobs, rescues, heartbeats, waiting claims, and
//! every queue's ready, scheduled and running jobs (docs/metrics.md).

use std::sync::atomic::{AtomicI64, AtomicU64};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct TypeLabels {
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(super) struct QueueStateLabels {
    pub r#type: String,
    pub state: &'static str,
}

#[derive(Debug)]
pub(super) struct DispatchMetrics {
    pub claims: Family<OutcomeLabels, Counter>,
    pub claimed_jobs: Family<TypeLabels, Counter>,
    pub rescues: Family<TypeLabels, Counter>,
    pub heartbeats: Family<OutcomeLabels, Counter>,
    pub waiting_claims: Gauge<i64, AtomicI64>,
    pub queue_jobs: Family<QueueStateLabels, Gauge>,
    pub oldest_ready_age: Family<TypeLabels, Gauge<f64, AtomicU64>>,
}

impl DispatchMetrics {
    pub(super) fn register(registry: &mut Registry) -> DispatchMetrics {
        let m = DispatchMetrics {
            claims: Family::default(),
            claimed_jobs: Family::default(),
            rescues: Family::default(),
            heartbeats: Family::default(),
            waiting_claims: Gauge::default(),
            queue_jobs: Family::default(),
            oldest_ready_age: Family::default(),
        };
        registry.register(
            "claims",
            "ClaimJobs calls answered, by outcome: `claimed` (one job or more) or `empty`",
            m.claims.clone(),
        );
        registry.register(
            "claimed_jobs",
            "Jobs handed to workers by ClaimJobs, by job type",
            m.claimed_jobs.clone(),
        );
        registry.register(
            "rescues",
            "RUNNING jobs moved to FAILED because their lease expired (LEASE_EXPIRED), by \
             job type",
            m.rescues.clone(),
        );
        registry.register(
            "heartbeats",
            "HeartbeatJob calls by outcome: ok, stale_attempt, job_not_running, not_found, \
             error",
            m.heartbeats.clone(),
        );
        registry.register(
            "waiting_claims",
            "ClaimJobs calls waiting for work now (at most --max-waiting-claims)",
            m.waiting_claims.clone(),
        );
        registry.register(
            "queue_jobs",
            "Jobs by type and state over all orgs: ready (claimable now), scheduled \
             (run_after ahead), running; as of jobledger_jobs_count_timestamp_seconds",
            m.queue_jobs.clone(),
        );
        registry.register_with_unit(
            "queue_oldest_ready_age",
            "How long the oldest ready job of each type has been claimable (the queue lag)",
            Unit::Seconds,
            m.oldest_ready_age.clone(),
        );
        m
    }
}
