//! The server-wide cap on in-flight unary calls (`--max-inflight-requests`): the
//! excess is refused at once (load shedding, not queueing).

use std::{
    collections::HashSet,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Instant,
};

use futures::future::BoxFuture;
use tokio::sync::Semaphore;

use crate::proto;
use crate::server::status;

/// The server-wide cap on in-flight unary calls of the ledger's services
/// (`--max-inflight-requests`), as a tower layer around every service on the port.
/// Streaming methods (StreamEvents: long-lived, capped by `--max-streams`), health and
/// reflection do not count, so probes answer and followers stay connected under load.
#[derive(Clone)]
pub(crate) struct InflightLimit {
    gate: Option<Arc<Gate>>,
}

struct Gate {
    permits: Arc<Semaphore>,
    limit: usize,
    /// Paths of the ledger's unary methods, e.g. `/jobledger.v1.JobLedger/CreateJob`.
    counted: HashSet<String>,
    started: Instant,
    /// Refusals not yet logged, and when (ms since `started`, or NEVER) the last log
    /// line was.
    refused: AtomicU64,
    last_logged_ms: AtomicU64,
}

impl InflightLimit {
    /// A cap of `limit` calls (None: no cap) on the unary methods of the ledger.
    pub(crate) fn new(limit: Option<u32>) -> anyhow::Result<InflightLimit> {
        let Some(limit) = limit else {
            return Ok(InflightLimit { gate: None });
        };
        let counted = proto::methods(proto::FILE_DESCRIPTOR_SET)?
            .into_iter()
            .filter(|m| !m.streaming)
            .map(|m| m.path())
            .collect();
        Ok(InflightLimit {
            gate: Some(Arc::new(Gate {
                permits: Arc::new(Semaphore::new(limit as usize)),
                limit: limit as usize,
                counted,
                started: Instant::now(),
                refused: AtomicU64::new(0),
                last_logged_ms: AtomicU64::new(NEVER),
            })),
        })
    }
}

const NEVER: u64 = u64::MAX;

impl Gate {
    fn counts(&self, path: &str) -> bool {
        self.counted.contains(path)
    }

    fn refusal(&self) -> tonic::Status {
        self.refused.fetch_add(1, Ordering::Relaxed);
        // At most one log line a second, however many calls are refused.
        let now_ms = self.started.elapsed().as_millis() as u64;
        let last = self.last_logged_ms.load(Ordering::Relaxed);
        if (last == NEVER || now_ms.saturating_sub(last) >= 1000)
            && self
                .last_logged_ms
                .compare_exchange(last, now_ms, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                limit = self.limit,
                refused = self.refused.swap(0, Ordering::Relaxed),
                "shedding load: calls refused with RESOURCE_EXHAUSTED at --max-inflight-requests"
            );
        }
        status::too_many_requests(self.limit)
    }
}

impl<S> tower::Layer<S> for InflightLimit {
    type Service = InflightLimited<S>;

    fn layer(&self, inner: S) -> InflightLimited<S> {
        InflightLimited {
            inner,
            gate: self.gate.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct InflightLimited<S> {
    inner: S,
    gate: Option<Arc<Gate>>,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for InflightLimited<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<'static, Result<http::Response<ResBody>, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let Some(gate) = self
            .gate
            .as_ref()
            .filter(|g| g.counts(request.uri().path()))
        else {
            return Box::pin(self.inner.call(request));
        };
        match gate.permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let call = self.inner.call(request);
                Box::pin(async move {
                    let response = call.await;
                    drop(permit);
                    response
                })
            }
            Err(_) => {
                let response = gate.refusal().into_http();
                Box::pin(async move { Ok(response) })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unary_ledger_methods_count() {
        let limit = InflightLimit::new(Some(1)).unwrap();
        let gate = limit.gate.unwrap();
        assert!(gate.counts("/jobledger.v1.JobLedger/CreateJob"));
        assert!(gate.counts("/jobledger.v1.JobLedger/TransitionJob"));
        assert!(!gate.counts("/jobledger.v1.JobLedger/StreamEvents"));
        assert!(!gate.counts("/grpc.health.v1.Health/Check"));
        assert!(!gate.counts("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"));
        assert!(InflightLimit::new(None).unwrap().gate.is_none());
    }
}
