//! The `jobledger.v1.JobLedger` service: wire requests in (scoped to the caller's org,
//! validated into ledger values by `convert` and `list`), store and feed calls, wire
//! responses out. Errors become statuses in `server::status`.

pub mod convert;
pub(crate) mod deadline;
pub mod list;

use std::pin::Pin;

use futures::Stream;
use tonic::{Request, Response, Status};

use super::{auth, metrics::Metrics, status};
use crate::feed::Feed;
use crate::ledger::{LedgerError, Limits, NewJob, MAX_JOBS_PER_BATCH};
use crate::proto::{self, job_ledger_server::JobLedger};
use crate::store::{GroupCommit, Store};

/// The `jobledger.v1.JobLedger` service.
#[derive(Clone)]
pub(crate) struct LedgerService {
    store: Store,
    /// CreateJob's and TransitionJob's path when group commit is on.
    group_commit: Option<GroupCommit>,
    feed: Feed,
    limits: Limits,
    /// Counts the transitions written (the ones `/metrics` serves).
    metrics: Metrics,
}

impl LedgerService {
    pub(crate) fn new(
        store: Store,
        group_commit: Option<GroupCommit>,
        feed: Feed,
        limits: Limits,
        metrics: Metrics,
    ) -> Self {
        LedgerService {
            store,
            group_commit,
            feed,
            limits,
            metrics,
        }
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
            self.feed.announce(job.org_id, job.id);
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
        // A request_id replay wrote nothing: nothing to announce or count.
        if !outcome.replayed {
            self.feed.announce(outcome.job.org_id, outcome.job.id);
            self.metrics
                .record_transitions(&outcome.job.job_type, &outcome.events);
        }
        Ok(Response::new(proto::TransitionJobResponse {
            job: Some(convert::job_to_proto(&outcome.job)),
            events: outcome.events.iter().map(convert::event_to_proto).collect(),
        }))
    }

    async fn create_jobs(
        &self,
        mut request: Request<proto::CreateJobsRequest>,
    ) -> Result<Response<proto::CreateJobsResponse>, Status> {
        auth::scope_batch(&mut request)?;
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
                            self.feed.announce(job.org_id, job.id);
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
