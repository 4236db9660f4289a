//! `jobledger job claim` and `jobledger job heartbeat`: what a worker does, from a
//! terminal (to try dispatch out, or to take a job by hand).

use jobledger::proto;
use serde_json::json;

use super::render::{event_json, job_json, job_view};
use super::{millis, ClaimArgs, HeartbeatArgs};
use crate::client::{print, print_json, session::Session, Failure, Output};

impl Session {
    pub(super) async fn claim(&mut self, a: ClaimArgs) -> Result<(), Failure> {
        let request = proto::ClaimJobsRequest {
            org_id: if a.all_orgs {
                String::new()
            } else {
                self.org.clone()
            },
            types: a.types,
            worker_id: a.worker,
            max_jobs: a.max_jobs,
            lease: (a.lease_ms > 0).then(|| millis(a.lease_ms)),
            wait: (a.wait_ms > 0).then(|| millis(a.wait_ms)),
            all_orgs: a.all_orgs,
        };
        let mut request = self.request(request);
        // The call may wait for work: give it its wait on top of the usual deadline.
        request.set_timeout(self.timeout() + std::time::Duration::from_millis(a.wait_ms));
        let claimed = self.client.claim_jobs(request).await?.into_inner().jobs;
        match self.output {
            Output::Json => print_json(&json!({
                "jobs": claimed.iter().map(|c| json!({
                    "job": c.job.as_ref().map(job_json),
                    "event": c.event.as_ref().map(event_json),
                })).collect::<Vec<_>>(),
            })),
            Output::Table if claimed.is_empty() => print("No job was claimable."),
            Output::Table => {
                for (i, c) in claimed.iter().enumerate() {
                    if i > 0 {
                        print("");
                    }
                    let job = c.job.clone().unwrap_or_default();
                    print(&format!(
                        "Claimed job {} (attempt {}, your fencing token).",
                        job.id, job.attempt
                    ));
                    print(&job_view(&job));
                }
            }
        }
        Ok(())
    }

    pub(super) async fn heartbeat(&mut self, a: HeartbeatArgs) -> Result<(), Failure> {
        let request = self.request(proto::HeartbeatJobRequest {
            org_id: self.org.clone(),
            job_id: a.job_id.clone(),
            attempt: a.attempt,
            lease: (a.lease_ms > 0).then(|| millis(a.lease_ms)),
        });
        let response = self.client.heartbeat_job(request).await?.into_inner();
        let expires = response
            .lease_expires_at
            .and_then(|t| chrono::DateTime::from_timestamp(t.seconds, t.nanos.max(0) as u32))
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default();
        match self.output {
            Output::Json => print_json(&json!({"lease_expires_at": expires})),
            Output::Table => print(&format!(
                "The lease of job {} (attempt {}) now expires at {expires}.",
                a.job_id, a.attempt
            )),
        }
        Ok(())
    }
}
