//! The tonic services: wire requests in, ledger calls, wire responses out.
//! The only module that builds `tonic::Status`.

pub mod convert;
pub mod error;

use std::{collections::HashMap, pin::Pin};

use futures::Stream;
use tonic::{Code, Request, Response, Status};
use tonic_types::ErrorDetails;

use crate::ledger::Limits;
use crate::proto::{self, job_ledger_server::JobLedger};
use crate::store::Store;

/// The `jobledger.v1.JobLedger` service.
#[derive(Clone, Debug)]
pub struct LedgerService {
    store: Store,
    limits: Limits,
}

impl LedgerService {
    pub fn new(store: Store, limits: Limits) -> Self {
        LedgerService { store, limits }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<proto::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl JobLedger for LedgerService {
    async fn create_job(
        &self,
        request: Request<proto::CreateJobRequest>,
    ) -> Result<Response<proto::CreateJobResponse>, Status> {
        let new = convert::new_job(request.into_inner(), &self.limits)?;
        let (job, created) = self.store.create_job(&new).await?;
        Ok(Response::new(proto::CreateJobResponse {
            job: Some(convert::job_to_proto(&job)),
            created,
        }))
    }

    async fn get_job(
        &self,
        request: Request<proto::GetJobRequest>,
    ) -> Result<Response<proto::GetJobResponse>, Status> {
        let (org_id, job_id) = convert::get_job(request.get_ref())?;
        let job = self.store.get_job(org_id, job_id).await?;
        Ok(Response::new(proto::GetJobResponse {
            job: Some(convert::job_to_proto(&job)),
        }))
    }

    async fn transition_job(
        &self,
        request: Request<proto::TransitionJobRequest>,
    ) -> Result<Response<proto::TransitionJobResponse>, Status> {
        let transition = convert::transition(request.into_inner(), &self.limits)?;
        let outcome = self.store.transition_job(&transition).await?;
        Ok(Response::new(proto::TransitionJobResponse {
            job: Some(convert::job_to_proto(&outcome.job)),
            events: outcome.events.iter().map(convert::event_to_proto).collect(),
        }))
    }

    type StreamEventsStream = EventStream;

    async fn stream_events(
        &self,
        _request: Request<proto::StreamEventsRequest>,
    ) -> Result<Response<Self::StreamEventsStream>, Status> {
        Err(error::status_with(
            Code::Unimplemented,
            "StreamEvents is not implemented yet",
            "UNIMPLEMENTED",
            HashMap::new(),
            ErrorDetails::new(),
        ))
    }
}
