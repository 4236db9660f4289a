//! The dispatch RPCs: ClaimJobs, HeartbeatJob, TransitionJobs, UpdateQueue and
//! ListQueues — validation of their requests, and their responses.

use std::time::Duration;

use prost_types::Duration as ProtoDuration;
use tonic::{Request, Status};

use super::convert::{duration_ms, event_to_proto, job_to_proto, transition};
use super::{auth, deadline, status, transition_response, LedgerService};
use crate::ledger::{
    LedgerError, Limits, Violations, DEFAULT_LEASE_MS, MAX_CLAIM_JOBS, MAX_CLAIM_TYPES,
    MAX_JOBS_PER_BATCH, MAX_WAIT_MS,
};
use crate::proto;
use crate::store::{ClaimRequest, ClaimScope, QueueStats};

impl LedgerService {
    pub(super) async fn claim(
        &self,
        mut request: Request<proto::ClaimJobsRequest>,
    ) -> Result<proto::ClaimJobsResponse, Status> {
        let caller = auth::caller(&request);
        if request.get_ref().all_orgs {
            auth::may_claim_all_orgs(caller)?;
        } else {
            auth::scope_org(caller, &mut request.get_mut().org_id)?;
        }
        let deadline = deadline::from_metadata(request.metadata());
        let (claim, wait) = claim_request(request.get_ref(), &self.limits)?;
        let outcomes = self.dispatcher.claim(claim, wait, deadline).await?;
        self.metrics.record_claim(outcomes.iter().map(|o| &o.job));
        let jobs = outcomes
            .iter()
            .map(|o| {
                self.metrics.record_transitions(&o.job.job_type, &o.events);
                proto::ClaimedJob {
                    job: Some(job_to_proto(&o.job)),
                    event: o.events.first().map(event_to_proto),
                }
            })
            .collect();
        Ok(proto::ClaimJobsResponse { jobs })
    }

    pub(super) async fn heartbeat(
        &self,
        mut request: Request<proto::HeartbeatJobRequest>,
    ) -> Result<proto::HeartbeatJobResponse, Status> {
        auth::scope(&mut request)?;
        let req = request.get_ref();
        let mut v = Violations::default();
        let org_id = v.org_id(&req.org_id);
        let job_id = v.uuid("job_id", &req.job_id).unwrap_or_default();
        if req.attempt < 1 {
            v.add(
                "attempt",
                format!(
                    "is required: the attempt the worker holds (1 or more), got {}",
                    req.attempt
                ),
            );
        }
        let lease_ms = optional_lease(&mut v, req.lease.as_ref());
        v.finish()?;
        let result = self
            .store
            .heartbeat(org_id, job_id, req.attempt, lease_ms)
            .await;
        self.metrics.record_heartbeat(&result);
        Ok(proto::HeartbeatJobResponse {
            lease_expires_at: Some(super::convert::timestamp(result?)),
        })
    }

    pub(super) async fn transition_batch(
        &self,
        mut request: Request<proto::TransitionJobsRequest>,
    ) -> Result<proto::TransitionJobsResponse, Status> {
        let caller = auth::caller(&request);
        auth::scope_entries(caller, "transitions", &mut request.get_mut().transitions)?;
        let entries = request.into_inner().transitions;
        if entries.len() > MAX_JOBS_PER_BATCH {
            return Err(LedgerError::invalid(
                "transitions",
                format!(
                    "at most {MAX_JOBS_PER_BATCH} transitions per call, got {}",
                    entries.len()
                ),
            )
            .into());
        }
        // Each entry is validated on its own; only the valid ones reach the database.
        let converted: Vec<_> = entries
            .into_iter()
            .map(|entry| transition(entry, &self.limits))
            .collect();
        let valid: Vec<_> = converted
            .iter()
            .filter_map(|c| c.as_ref().ok().cloned())
            .collect();
        let mut outcomes = self.store.transition_many(&valid).await?.into_iter();
        let results = converted
            .into_iter()
            .map(|c| {
                let outcome = c.and_then(|_| outcomes.next().expect("one outcome per valid entry"));
                match outcome {
                    Ok(outcome) => {
                        self.written(&outcome);
                        proto::TransitionJobsResult {
                            response: Some(transition_response(&outcome)),
                            error: None,
                        }
                    }
                    Err(e) => proto::TransitionJobsResult {
                        response: None,
                        error: Some(status::entry_status(e)),
                    },
                }
            })
            .collect();
        Ok(proto::TransitionJobsResponse { results })
    }

    pub(super) async fn set_queue(
        &self,
        mut request: Request<proto::UpdateQueueRequest>,
    ) -> Result<proto::UpdateQueueResponse, Status> {
        auth::scope(&mut request)?;
        let req = request.get_ref();
        let mut v = Violations::default();
        let org_id = v.org_id(&req.org_id);
        let job_type = v.required_text("type", &req.r#type, self.limits.type_chars);
        if let Some(max) = req.max_running.filter(|m| *m < 0) {
            v.add(
                "max_running",
                format!("must be 0 (no limit) or more, got {max}"),
            );
        }
        v.finish()?;
        self.store
            .update_queue(org_id, &job_type, req.paused, req.max_running)
            .await?;
        // A resumed queue, or a higher limit, may make jobs claimable.
        self.feed.announce(crate::feed::Announcement::Queue {
            org_id,
            job_type: job_type.clone(),
        });
        let stats = self.store.list_queues(org_id, Some(&job_type)).await?;
        Ok(proto::UpdateQueueResponse {
            queue: stats.first().map(queue_to_proto),
        })
    }

    pub(super) async fn queues(
        &self,
        mut request: Request<proto::ListQueuesRequest>,
    ) -> Result<proto::ListQueuesResponse, Status> {
        auth::scope(&mut request)?;
        let req = request.get_ref();
        let mut v = Violations::default();
        let org_id = v.org_id(&req.org_id);
        let job_type = v.text("type", &req.r#type, self.limits.type_chars);
        v.finish()?;
        let stats = self.store.list_queues(org_id, job_type.as_deref()).await?;
        Ok(proto::ListQueuesResponse {
            queues: stats.iter().map(queue_to_proto).collect(),
        })
    }
}

/// A ClaimJobs request, checked, and how long it may wait.
pub fn claim_request(
    req: &proto::ClaimJobsRequest,
    limits: &Limits,
) -> Result<(ClaimRequest, Duration), LedgerError> {
    let mut v = Violations::default();
    let scope = if req.all_orgs {
        if !req.org_id.is_empty() {
            v.add("org_id", "must be empty when all_orgs is set");
        }
        ClaimScope::AllOrgs { after: None }
    } else {
        ClaimScope::Org(v.org_id(&req.org_id))
    };
    let types = claim_types(&mut v, &req.types, limits);
    let worker_id = v.required_text("worker_id", &req.worker_id, limits.key_chars);
    let max_jobs = match req.max_jobs {
        0 => 1,
        n if (1..=MAX_CLAIM_JOBS).contains(&n) => n as usize,
        n => {
            v.add(
                "max_jobs",
                format!("must be 0..{MAX_CLAIM_JOBS} (0 for 1), got {n}"),
            );
            1
        }
    };
    let lease_ms = optional_lease(&mut v, req.lease.as_ref()).unwrap_or(DEFAULT_LEASE_MS);
    let wait_ms = duration_ms(&mut v, "wait", req.wait.as_ref()).unwrap_or(0);
    if wait_ms > MAX_WAIT_MS {
        v.add("wait", format!("must be at most 60s, got {wait_ms} ms"));
    }
    v.finish()?;
    let request = ClaimRequest {
        scope,
        types,
        worker_id,
        max_jobs,
        lease_ms,
    };
    Ok((request, Duration::from_millis(wait_ms as u64)))
}

/// A claim's job types: 1..32, each a valid type; repeats dropped.
fn claim_types(v: &mut Violations, types: &[String], limits: &Limits) -> Vec<String> {
    if types.is_empty() || types.len() > MAX_CLAIM_TYPES {
        v.add(
            "types",
            format!(
                "must name 1..{MAX_CLAIM_TYPES} job types, got {}",
                types.len()
            ),
        );
    }
    let mut out: Vec<String> = Vec::with_capacity(types.len());
    for (i, t) in types.iter().enumerate() {
        let t = v.required_text(&format!("types[{i}]"), t, limits.type_chars);
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

/// A lease a client sent: unset or 0 is None (the default applies), else 1 s .. 1 h.
fn optional_lease(v: &mut Violations, lease: Option<&ProtoDuration>) -> Option<i32> {
    match duration_ms(v, "lease", lease) {
        None | Some(0) => None,
        Some(ms) => v.lease("lease", ms),
    }
}

fn queue_to_proto(q: &QueueStats) -> proto::Queue {
    let age = q.oldest_ready_age_secs.unwrap_or(0.0).max(0.0);
    proto::Queue {
        r#type: q.job_type.clone(),
        paused: q.paused,
        max_running: q.max_running,
        ready: q.ready,
        scheduled: q.scheduled,
        running: q.running,
        oldest_ready_age: Some(ProtoDuration {
            seconds: age.trunc() as i64,
            nanos: (age.fract() * 1e9) as i32,
        }),
    }
}
