//! The `jobledger.v1.JobLedger` service: wire requests in (scoped to the caller's org,
//! validated into ledger values by `convert` and `list`), store and feed calls, wire
//! responses out. Errors become statuses in `server::status`.

pub mod convert;
pub(crate) mod deadline;
mod dispatch;
pub mod list;

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::{auth, metrics::Metrics, status};
use crate::dispatch::Dispatcher;
use crate::feed::Feed;
use crate::ledger::{LedgerError, Limits, NewJob, MAX_JOBS_PER_BATCH};
use crate::proto::{self, job_ledger_server::JobLedger};
use crate::store::{GroupCommit, Store, TransitionOutcome};

/// The `jobledger.v1.JobLedger` service.
#[derive(Clone)]
pub(crate) struct LedgerService {
    store: Store,
    /// CreateJob's and TransitionJob's path when group commit is on.
    group_commit: Option<GroupCommit>,
    feed: Feed,
    dispatcher: Dispatcher,
    limits: Limits,
    /// Counts the transitions written (the ones `/metrics` serves).
    metrics: Metrics,
}

impl LedgerService {
    pub(crate) fn new(
        store: Store,
        group_commit: Option<GroupCommit>,
        feed: Feed,
        dispatcher: Dispatcher,
        limits: Limits,
        metrics: Metrics,
    ) -> Self {
        LedgerService {
            store,
            group_commit,
            feed,
            dispatcher,
            limits,
            metrics,
        }
    }

    /// After a transition committed: announce and count it. A request_id replay wrote
    /// nothing: nothing to announce or count.
    fn written(&self, outcome: &TransitionOutcome) {
        if !outcome.replayed {
            self.feed.announce_events(&outcome.job, &outcome.events);
            self.metrics
                .record_transitions(&outcome.job.job_type, &outcome.events);
        }
    }
}

fn transition_response(outcome: &TransitionOutcome) -> proto::TransitionJobResponse {
    proto::TransitionJobResponse {
        job: Some(convert::job_to_proto(&outcome.job)),
        events: outcome.events.iter().map(convert::event_to_proto).collect(),
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl JobLedger for LedgerService {
    async fn create_job(
        &self,
        mut request: Request<proto::CreateJobRequest>,
    ) -> Result<Response<proto::CreateJobResponse>, Status> {
        auth::scope(&mut request)?;
        let new = convert::new_job(request.into_inner(), &self.limits)?;
        let (job, created) = match &self.group_commit {
            Some(group) => group.create_job(new).await?,
            None => self.store.create_job(&new).await?,
        };
        if created {
            self.feed.announce_created(&job);
        }
        Ok(Response::new(proto::CreateJobResponse {
            job: Some(convert::job_to_proto(&job)),
            created,
        }))
    }

    async fn get_job(
        &self,
        mut request: Request<proto::GetJobRequest>,
    ) -> Result<Response<proto::GetJobResponse>, Status> {
        auth::scope(&mut request)?;
        let (org_id, job_id) = convert::get_job(request.get_ref())?;
        let job = self.store.get_job(org_id, job_id).await?;
        Ok(Response::new(proto::GetJobResponse {
            job: Some(convert::job_to_proto(&job)),
        }))
    }

    async fn transition_job(
        &self,
        mut request: Request<proto::TransitionJobRequest>,
    ) -> Result<Response<proto::TransitionJobResponse>, Status> {
        auth::scope(&mut request)?;
        let deadline = deadline::from_metadata(request.metadata());
        let transition = convert::transition(request.into_inner(), &self.limits)?;
        let outcome = match &self.group_commit {
            Some(group) => group.transition_job(transition, deadline).await?,
            None => self.store.transition_job(&transition, deadline).await?,
        };
        self.written(&outcome);
        Ok(Response::new(transition_response(&outcome)))
    }

    async fn create_jobs(
        &self,
        mut request: Request<proto::CreateJobsRequest>,
    ) -> Result<Response<proto::CreateJobsResponse>, Status> {
        let caller = auth::caller(&request);
        auth::scope_entries(caller, "jobs", &mut request.get_mut().jobs)?;
        let entries = request.into_inner().jobs;
        if entries.len() > MAX_JOBS_PER_BATCH {
            return Err(LedgerError::invalid(
                "jobs",
                format!(
                    "at most {MAX_JOBS_PER_BATCH} jobs per call, got {}",
                    entries.len()
                ),
            )
            .into());
        }
        // Each entry is validated on its own; only the valid ones reach the database.
        let converted: Vec<Result<NewJob, LedgerError>> = entries
            .into_iter()
            .map(|entry| convert::new_job(entry, &self.limits))
            .collect();
        let valid: Vec<NewJob> = converted
            .iter()
            .filter_map(|c| c.as_ref().ok().cloned())
            .collect();
        let mut created = self.store.create_jobs(&valid).await?.into_iter();
        let results = converted
            .into_iter()
            .map(
                |c| match c.and_then(|_| created.next().expect("one outcome per valid entry")) {
                    Ok((job, created)) => {
                        if created {
                            self.feed.announce_created(&job);
                        }
                        proto::CreateJobsResult {
                            job: Some(convert::job_to_proto(&job)),
                            created,
                            error: None,
                        }
                    }
                    Err(e) => proto::CreateJobsResult {
                        job: None,
                        created: false,
                        error: Some(status::entry_status(e)),
                    },
                },
            )
            .collect();
        Ok(Response::new(proto::CreateJobsResponse { results }))
    }

    async fn list_jobs(
        &self,
        mut request: Request<proto::ListJobsRequest>,
    ) -> Result<Response<proto::ListJobsResponse>, Status> {
        auth::scope(&mut request)?;
        let deadline = deadline::from_metadata(request.metadata());
        let list = list::list_jobs(request.get_ref(), &self.limits)?;
        let page = self
            .store
            .list_jobs(&list.filter, list.after.as_ref(), list.page_size, deadline)
            .await?;
        Ok(Response::new(list::list_response(page, &list.filter)))
    }

    async fn count_jobs(
        &self,
        mut request: Request<proto::CountJobsRequest>,
    ) -> Result<Response<proto::CountJobsResponse>, Status> {
        auth::scope(&mut request)?;
        let deadline = deadline::from_metadata(request.metadata());
        let (org_id, job_type) = list::count_jobs(request.get_ref(), &self.limits)?;
        let counts = self
            .store
            .count_jobs(org_id, job_type.as_deref(), deadline)
            .await?;
        Ok(Response::new(list::count_response(counts)))
    }

    async fn claim_jobs(
        &self,
        request: Request<proto::ClaimJobsRequest>,
    ) -> Result<Response<proto::ClaimJobsResponse>, Status> {
        self.claim(request).await.map(Response::new)
    }

    async fn heartbeat_job(
        &self,
        request: Request<proto::HeartbeatJobRequest>,
    ) -> Result<Response<proto::HeartbeatJobResponse>, Status> {
        self.heartbeat(request).await.map(Response::new)
    }

    async fn transition_jobs(
        &self,
        request: Request<proto::TransitionJobsRequest>,
    ) -> Result<Response<proto::TransitionJobsResponse>, Status> {
        self.transition_batch(request).await.map(Response::new)
    }

    async fn update_queue(
        &self,
        request: Request<proto::UpdateQueueRequest>,
    ) -> Result<Response<proto::UpdateQueueResponse>, Status> {
        self.set_queue(request).await.map(Response::new)
    }

    async fn list_queues(
        &self,
        request: Request<proto::ListQueuesRequest>,
    ) -> Result<Response<proto::ListQueuesResponse>, Status> {
        self.queues(request).await.map(Response::new)
    }

    type StreamEventsStream = EventStream;

    async fn stream_events(
        &self,
        mut request: Request<proto::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        auth::scope(&mut request)?;
        let subscribe = convert::subscribe(request.get_ref())?;
        let rx = self.feed.subscribe(subscribe).await?;
        let shutdown = self.feed.shutdown().clone();
        // Shutdown ends the stream with UNAVAILABLE at once, even while events are
        // buffered: the client resumes elsewhere from the last cursor it received.
        let stream = futures::stream::unfold(Some((rx, shutdown)), |state| async move {
            let (mut rx, shutdown) = state?;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => Some((Err(LedgerError::ShuttingDown.into()), None)),
                item = rx.recv() => match item? {
                    Ok(event) => Some((Ok(convert::event_to_proto(&event)), Some((rx, shutdown)))),
                    Err(e) => Some((Err(Status::from(e)), None)),
                },
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
