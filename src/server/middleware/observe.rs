//! One tower layer watches every gRPC call from its arrival until its status goes out:
//! in the response headers (an error before any message), in the trailers (after the
//! messages), or never, because the response was dropped first (the client cancelled or
//! went away: CANCELLED). What it sees feeds the metrics (calls and durations by method
//! and code) and the trace (the call's span, parented on the caller's `traceparent`, the
//! `x-trace-id` response header, one log line). It sits outside the layers that rewrite
//! statuses, so it records what the client receives.

use std::{
    collections::HashSet,
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Instant,
};

use http_body::{Body, Frame, SizeHint};
use tonic::Code;
use tracing::Instrument;

use crate::proto;
use crate::server::metrics::Metrics;
use crate::server::telemetry::CallTrace;

/// The `method` label of calls to a path no service of this server has.
pub(super) const OTHER_METHOD: &str = "other";

#[derive(Clone)]
pub(crate) struct CallObserverLayer {
    metrics: Metrics,
    /// `package.Service/Method` of every method served: other paths share one label.
    methods: Arc<HashSet<String>>,
}

impl CallObserverLayer {
    pub(crate) fn new(metrics: &Metrics) -> CallObserverLayer {
        CallObserverLayer {
            metrics: metrics.clone(),
            methods: Arc::new(served_methods()),
        }
    }
}

/// The methods this server has, from the descriptors of the services it serves.
fn served_methods() -> HashSet<String> {
    [
        proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ]
    .into_iter()
    .filter_map(|set| proto::methods(set).ok())
    .flatten()
    .map(|m| format!("{}/{}", m.service, m.name))
    .collect()
}

impl<S> tower::Layer<S> for CallObserverLayer {
    type Service = CallObserver<S>;

    fn layer(&self, inner: S) -> CallObserver<S> {
        CallObserver {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct CallObserver<S> {
    inner: S,
    layer: CallObserverLayer,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for CallObserver<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Body + Send + 'static,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let mut call = ObservedCall::start(&self.layer, &request);
        let response = self.inner.call(request).instrument(call.trace.span());
        Box::pin(async move {
            match response.await {
                Ok(response) => Ok(call.respond(response)),
                Err(e) => {
                    call.finish(Code::Unknown);
                    Err(e)
                }
            }
        })
    }
}

/// One call being served. Its status is recorded once; dropped before that, it ends as
/// CANCELLED.
struct ObservedCall {
    metrics: Metrics,
    /// The `method` label (`package.Service/Method`, or `other`).
    method: String,
    trace: CallTrace,
    started: Instant,
    finished: bool,
}

impl ObservedCall {
    fn start<B>(layer: &CallObserverLayer, request: &http::Request<B>) -> ObservedCall {
        // A label per path a client makes up would grow without bound: unknown paths
        // share one.
        let path = request.uri().path().trim_start_matches('/');
        let method = if layer.methods.contains(path) {
            path.to_owned()
        } else {
            OTHER_METHOD.to_owned()
        };
        layer.metrics.call_started(&method);
        ObservedCall {
            metrics: layer.metrics.clone(),
            method,
            trace: CallTrace::start(request),
            started: Instant::now(),
            finished: false,
        }
    }

    /// The response, with the trace id added and the body watched for the trailers. A
    /// status in the headers (a trailers-only error) is the call's status at once.
    fn respond<B: Body>(mut self, response: http::Response<B>) -> http::Response<ObservedBody<B>> {
        let (mut parts, body) = response.into_parts();
        self.trace.add_trace_id(&mut parts.headers);
        if let Some(code) = grpc_status(&parts.headers) {
            self.finish(code);
        } else if body.is_end_stream() {
            // No status and nothing to come: not a gRPC answer.
            self.finish(Code::Unknown);
        }
        http::Response::from_parts(
            parts,
            ObservedBody {
                inner: body,
                call: self,
            },
        )
    }

    fn finish(&mut self, code: Code) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let took = self.started.elapsed();
        let name = proto::code_name(code);
        self.metrics.call_finished(&self.method, name, took);
        self.trace.finish(code, took);
    }
}

impl Drop for ObservedCall {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

fn grpc_status(headers: &http::HeaderMap) -> Option<Code> {
    let code = headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Code::from_i32(code))
}

pin_project_lite::pin_project! {
    /// A response body that records its call's status when the trailers go out.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        call: ObservedCall,
    }
}

impl<B: Body> Body for ObservedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    this.call
                        .finish(grpc_status(trailers).unwrap_or(Code::Unknown));
                }
            }
            // The stream is reset, or ended without trailers: the client sees no status
            // of ours.
            Some(Err(_)) | None => this.call.finish(Code::Unknown),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn served_methods_come_from_the_descriptors() {
        let methods = served_methods();
        for m in [
            "jobledger.v1.JobLedger/CreateJob",
            "jobledger.v1.JobLedger/StreamEvents",
            "grpc.health.v1.Health/Check",
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(methods.contains(m), "{m} missing from {methods:?}");
        }
        assert!(!methods.contains("jobledger.v1.JobLedger/Nope"));
    }

    #[test]
    fn statuses_are_read_from_headers_and_trailers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_status(&headers), None);
        headers.insert("grpc-status", "3".parse().unwrap());
        assert_eq!(grpc_status(&headers), Some(Code::InvalidArgument));
        headers.insert("grpc-status", "16".parse().unwrap());
        assert_eq!(grpc_status(&headers), Some(Code::Unauthenticated));
        headers.insert("grpc-status", "99".parse().unwrap());
        assert_eq!(grpc_status(&headers), Some(Code::Unknown));
    }
}
