//! Logs and traces (docs/tracing.md).
//!
//! Logs: `tracing` events as JSON or pretty text, filtered by RUST_LOG. Traces: every
//! JobLedger call gets a server span (`RpcTraceLayer`) whose parent is the caller's W3C
//! `traceparent` when it sends one, else a new trace. Each log line written while a call
//! is handled carries that call's `trace_id` and `span_id`, and the response carries the
//! trace id as `x-trace-id` metadata. Spans are exported over OTLP only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (or `..._TRACES_ENDPOINT`) is set.

use std::{io::IsTerminal, time::Duration};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use opentelemetry::{
    propagation::TextMapPropagator,
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_http::{HeaderExtractor, HttpClient, HttpError};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{propagation::TraceContextPropagator, trace::SdkTracerProvider, Resource};
use tracing::{Event, Level, Span, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    filter::Targets,
    fmt::{self, format::Writer, FmtContext, FormatEvent, FormatFields},
    prelude::*,
    registry::LookupSpan,
    EnvFilter, Layer, Registry,
};

/// How log lines are written.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// One JSON object per line.
    Json,
    /// Text for a terminal.
    Pretty,
}

/// The response metadata that tells a caller the trace id of its call.
pub const TRACE_ID_HEADER: &str = "x-trace-id";

/// Where span and log records of calls come from (`RUST_LOG=jobledger::rpc=warn` mutes
/// the per-call lines).
const RPC_TARGET: &str = "jobledger::rpc";

/// How long shutdown waits for the last spans to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The span exporter, kept to flush it on shutdown.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued (bounded by a few seconds: an unreachable collector
    /// must not hold the exit) and stops the exporter.
    pub async fn shutdown(self) {
        let Some(provider) = self.provider else {
            return;
        };
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_TIMEOUT))
                .await;
        match flushed {
            Ok(Ok(())) => tracing::debug!("spans flushed to the OTLP collector"),
            Ok(Err(e)) => tracing::warn!(error = %e, "could not flush spans to the OTLP collector"),
            Err(e) => tracing::warn!(error = %e, "could not flush spans to the OTLP collector"),
        }
    }
}

/// Installs the global subscriber without span export (tests running the server in
/// process). `format` None picks pretty on a terminal, else JSON.
pub fn init(format: Option<LogFormat>) {
    install(format, SdkTracerProvider::builder().build());
}

/// Installs the global subscriber and, when the standard `OTEL_*` variables ask for it,
/// the OTLP span exporter. Must run inside the tokio runtime (the exporter's connections
/// live there). Fails on an exporter setting this server cannot honour.
pub fn init_from_env(format: Option<LogFormat>) -> anyhow::Result<Telemetry> {
    let export = OtlpSettings::from_env(|name| std::env::var(name).ok())?;
    let provider = match &export {
        Some(settings) => settings.provider()?,
        None => SdkTracerProvider::builder().build(),
    };
    install(format, provider.clone());
    if let Some(settings) = &export {
        tracing::info!(
            protocol = settings.protocol.name(),
            endpoint = %settings.endpoint_for_logs(),
            "exporting spans over OTLP"
        );
    }
    Ok(Telemetry {
        provider: export.map(|_| provider),
    })
}

fn install(format: Option<LogFormat>, provider: SdkTracerProvider) {
    let format = format.unwrap_or(if std::io::stdout().is_terminal() {
        LogFormat::Pretty
    } else {
        LogFormat::Json
    });
    // RUST_LOG filters the log lines only: spans are made (and exported) whatever it says,
    // so a quiet production log still has every call's trace.
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = match format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .map_event_format(|inner| WithTraceIds { inner, json: true })
            .with_filter(filter)
            .boxed(),
        LogFormat::Pretty => fmt::layer()
            .compact()
            .map_event_format(|inner| WithTraceIds { inner, json: false })
            .with_filter(filter)
            .boxed(),
    };
    let spans = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer("jobledger"))
        .with_threads(false)
        .with_filter(Targets::new().with_target("jobledger", Level::INFO));
    tracing_subscriber::registry().with(logs).with(spans).init();
}

/// The OTLP transports this server speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    /// The protocol a variable (its name and value) asks for; http/protobuf without one.
    fn from_setting(setting: Option<(&str, String)>) -> anyhow::Result<Protocol> {
        let (name, value) =
            setting.unwrap_or(("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf".to_owned()));
        match value.as_str() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            other => bail!(
                "{name}={other:?} is not supported: use `http/protobuf` (the default, \
                 collector port 4318) or `grpc` (port 4317)"
            ),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Protocol::Grpc => "grpc",
            Protocol::HttpProtobuf => "http/protobuf",
        }
    }
}

/// The collector's URL from variable `name`: plain http:// to a host.
fn collector_endpoint(name: &str, endpoint: &str) -> anyhow::Result<http::Uri> {
    let uri: http::Uri = endpoint
        .parse()
        .with_context(|| format!("{name}={endpoint:?} is not a URL"))?;
    match uri.scheme_str() {
        Some("http") if uri.host().is_some() => Ok(uri),
        Some("https") => bail!(
            "{name}={endpoint:?}: https:// collector endpoints are not supported yet; \
             send to a collector or agent next to the server over http://"
        ),
        _ => bail!("{name}={endpoint:?} must be an http:// URL, e.g. http://otel-collector:4318"),
    }
}

/// What the standard OpenTelemetry variables ask for.
#[derive(Debug, PartialEq, Eq)]
struct OtlpSettings {
    protocol: Protocol,
    /// The variable the endpoint came from, for messages.
    endpoint_var: &'static str,
    endpoint: http::Uri,
    timeout: Duration,
}

impl OtlpSettings {
    /// None: no export (no endpoint, `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`).
    fn from_env(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<OtlpSettings>> {
        let var = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        // The signal's own variable wins over the generic one.
        let first = |names: [&'static str; 2]| {
            names
                .into_iter()
                .find_map(|name| var(name).map(|value| (name, value)))
        };
        if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match var("OTEL_TRACES_EXPORTER").as_deref() {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => bail!(
                "OTEL_TRACES_EXPORTER={other:?} is not supported: jobledger exports spans with \
                 `otlp` (the default) or not at all (`none`)"
            ),
        }
        let Some((endpoint_var, endpoint)) = first([
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]) else {
            return Ok(None);
        };
        let protocol = Protocol::from_setting(first([
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ]))?;
        let timeout = first([
            "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
            "OTEL_EXPORTER_OTLP_TIMEOUT",
        ])
        .map(|(name, value)| {
            value
                .parse::<u64>()
                .map(Duration::from_millis)
                .with_context(|| format!("{name}={value:?} is not a number of milliseconds"))
        })
        .transpose()?
        .unwrap_or(Duration::from_secs(10));
        Ok(Some(OtlpSettings {
            protocol,
            endpoint_var,
            endpoint: collector_endpoint(endpoint_var, &endpoint)?,
            timeout,
        }))
    }

    /// Host and port only: a URL's user info is no business of the log.
    fn endpoint_for_logs(&self) -> String {
        let host = self.endpoint.host().unwrap_or_default();
        match self.endpoint.port_u16() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        }
    }

    /// A tracer provider with a batch exporter: spans queue in memory and a thread of the
    /// SDK sends them; when the collector is slow or gone the queue fills and new spans are
    /// dropped, calls never wait (OTEL_BSP_* tune the queue).
    fn provider(&self) -> anyhow::Result<SdkTracerProvider> {
        // The exporter reads the endpoint, headers, timeout and compression from the same
        // OTEL_EXPORTER_OTLP_* variables (appending /v1/traces to a generic HTTP endpoint).
        let exporter = match self.protocol {
            Protocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_timeout(self.timeout)
                .build(),
            Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(self.timeout)
                .with_http_client(RuntimeHttpClient {
                    client: opentelemetry_http::hyper::HyperClient::with_default_connector(
                        self.timeout,
                        None,
                    ),
                    runtime: tokio::runtime::Handle::try_current()
                        .context("the OTLP exporter must be set up inside the tokio runtime")?,
                })
                .build(),
        }
        .with_context(|| {
            format!(
                "cannot export spans to {} ({})",
                self.endpoint, self.endpoint_var
            )
        })?;
        Ok(SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource())
            .build())
    }
}

/// The SDK's resource (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), named `jobledger`
/// unless those name it.
fn resource() -> Resource {
    let detected = Resource::builder().build();
    let named = detected
        .get(&opentelemetry::Key::new("service.name"))
        .is_some_and(|name| !name.as_str().starts_with("unknown_service"));
    if named {
        detected
    } else {
        Resource::builder().with_service_name("jobledger").build()
    }
}

/// opentelemetry-http's hyper client, run on the server's tokio runtime: the SDK's batch
/// exporter calls it from a thread of its own, where hyper cannot run.
#[derive(Debug)]
struct RuntimeHttpClient {
    client: opentelemetry_http::hyper::HyperClient,
    runtime: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl HttpClient for RuntimeHttpClient {
    async fn send_bytes(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, HttpError> {
        let client = self.client.clone();
        self.runtime
            .spawn(async move { client.send_bytes(request).await })
            .await?
    }
}

/// A log line formatter that adds the trace and span ids of the span the event belongs
/// to: first keys of a JSON object, a `trace_id=… span_id=…` prefix of a text line.
struct WithTraceIds<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> std::fmt::Result {
        let Some((trace_id, span_id)) = trace_ids(event) else {
            return self.inner.format_event(ctx, writer, event);
        };
        if !self.json {
            write!(writer, "trace_id={trace_id} span_id={span_id} ")?;
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        writer.write_str(&with_ids_first(&line, &trace_id, &span_id))
    }
}

/// `{"a":1}` becomes `{"trace_id":"…","span_id":"…","a":1}` (hex ids need no escaping).
fn with_ids_first(json_line: &str, trace_id: &str, span_id: &str) -> String {
    let Some(rest) = json_line.strip_prefix('{') else {
        return json_line.to_owned();
    };
    let separator = if rest.starts_with('}') { "" } else { "," };
    format!("{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"{separator}{rest}")
}

/// The OpenTelemetry ids of the innermost traced span around `event`. Looked up through
/// the registry, not the log layer's view, so that RUST_LOG hiding the call's span does
/// not take the ids off the lines it lets through.
fn trace_ids(event: &Event<'_>) -> Option<(String, String)> {
    if event.is_root() {
        return None;
    }
    tracing::dispatcher::get_default(|dispatch| {
        let registry = dispatch.downcast_ref::<Registry>()?;
        let start = match event.parent() {
            Some(parent) => parent.clone(),
            None => dispatch.current_span().id()?.clone(),
        };
        let span = registry.span(&start)?;
        span.scope().find_map(|span| {
            let context = tracing_opentelemetry::get_otel_context(&span.id(), dispatch)?;
            let otel_span = context.span();
            let ids = otel_span.span_context();
            ids.is_valid()
                .then(|| (ids.trace_id().to_string(), ids.span_id().to_string()))
        })
    })
}

/// The trace side of one call (see `middleware::observe`): its span, parented on the
/// caller's `traceparent`, the trace id for the response, and the call's log line.
pub(crate) struct CallTrace {
    span: Span,
    /// `jobledger.v1.JobLedger/CreateJob`.
    method: String,
    /// JobLedger calls log at info; health checks and reflection at debug (probes every
    /// few seconds would drown the log) and get no trace.
    info: bool,
}

impl CallTrace {
    pub(crate) fn start<B>(request: &http::Request<B>) -> CallTrace {
        let method = request.uri().path().trim_start_matches('/').to_owned();
        let (service, name) = method.split_once('/').unwrap_or(("", method.as_str()));
        let info = service.starts_with("jobledger.");
        let span = if info {
            tracing::info_span!(
                target: RPC_TARGET,
                parent: None,
                "rpc",
                otel.name = %method,
                otel.kind = "server",
                otel.status_code = tracing::field::Empty,
                rpc.system = "grpc",
                rpc.service = %service,
                rpc.method = %name,
                rpc.grpc.status_code = tracing::field::Empty,
            )
        } else {
            tracing::debug_span!(
                target: RPC_TARGET,
                parent: None,
                "rpc",
                rpc.service = %service,
                rpc.method = %name,
            )
        };
        // A malformed or missing traceparent extracts as an empty context: a new trace.
        // Context::new() rather than the thread's current context, which is not the caller's.
        let parent = TraceContextPropagator::new().extract_with_context(
            &opentelemetry::Context::new(),
            &HeaderExtractor(request.headers()),
        );
        // Fails only when the span is off (no subscriber, or a health check): no trace then.
        let _ = span.set_parent(parent);
        CallTrace { span, method, info }
    }

    /// The call's span, for the handler's work to run in.
    pub(crate) fn span(&self) -> Span {
        self.span.clone()
    }

    /// `x-trace-id: <the call's trace id>`, when the call is traced.
    pub(crate) fn add_trace_id(&self, headers: &mut http::HeaderMap) {
        let context = self.span.context();
        let ids = context.span().span_context().clone();
        if ids.is_valid() {
            if let Ok(value) = http::HeaderValue::from_str(&ids.trace_id().to_string()) {
                headers.insert(TRACE_ID_HEADER, value);
            }
        }
    }

    /// Records the status on the span and writes the call's log line (inside the span,
    /// so it carries the trace id). The span ends when this is dropped.
    pub(crate) fn finish(&self, code: tonic::Code, took: Duration) {
        self.span.record("rpc.grpc.status_code", code as i32);
        if is_server_error(code) {
            self.span.record("otel.status_code", "ERROR");
        }
        let name = crate::proto::code_name(code);
        let duration_ms = took.as_micros() as f64 / 1000.0;
        let _entered = self.span.enter();
        if self.info {
            tracing::info!(target: RPC_TARGET, method = %self.method, code = name, duration_ms, "call finished");
        } else {
            tracing::debug!(target: RPC_TARGET, method = %self.method, code = name, duration_ms, "call finished");
        }
    }
}

/// The codes OpenTelemetry's gRPC conventions mark a server span as failed for; the
/// others are the caller's mistakes or the ledger's answers (NOT_FOUND, ABORTED, ...).
fn is_server_error(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Unknown | DeadlineExceeded | Unimplemented | Internal | Unavailable | DataLoss
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> anyhow::Result<Option<OtlpSettings>> {
        OtlpSettings::from_env(|name| {
            vars.iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| (*v).to_owned())
        })
    }

    #[test]
    fn no_endpoint_no_export() {
        assert_eq!(settings(&[]).unwrap(), None);
        assert_eq!(
            settings(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]).unwrap(),
            None
        );
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert_eq!(
            settings(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")]).unwrap(),
            None
        );
        assert_eq!(
            settings(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]).unwrap(),
            None
        );
    }

    #[test]
    fn the_endpoint_and_protocol_come_from_the_standard_variables() {
        let s = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " http://collector:4318 ")])
            .unwrap()
            .unwrap();
        assert_eq!(s.protocol, Protocol::HttpProtobuf);
        assert_eq!(s.endpoint_var, "OTEL_EXPORTER_OTLP_ENDPOINT");
        assert_eq!(s.endpoint_for_logs(), "collector:4318");
        assert_eq!(s.timeout, Duration::from_secs(10));

        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
        ])
        .unwrap()
        .unwrap();
        assert_eq!(s.protocol, Protocol::Grpc);
        assert_eq!(s.endpoint_var, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
        assert_eq!(s.endpoint_for_logs(), "traces:4317");
        assert_eq!(s.timeout, Duration::from_millis(2500));
    }

    #[test]
    fn settings_this_server_cannot_honour_are_refused_by_name() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")],
                "OTEL_EXPORTER_OTLP_PROTOCOL=\"http/json\" is not supported",
            ),
            (
                &[endpoint, ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "thrift")],
                "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=\"thrift\"",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318")],
                "https:// collector endpoints are not supported",
            ),
            (
                &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "collector:4318")],
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=\"collector:4318\" must be an http:// URL",
            ),
            (
                &[endpoint, ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")],
                "OTEL_EXPORTER_OTLP_TIMEOUT=\"10s\" is not a number of milliseconds",
            ),
            (
                &[endpoint, ("OTEL_TRACES_EXPORTER", "jaeger")],
                "OTEL_TRACES_EXPORTER=\"jaeger\" is not supported",
            ),
        ];
        for (vars, expected) in cases {
            let error = format!("{:#}", settings(vars).unwrap_err());
            assert!(error.contains(expected), "{error:?} lacks {expected:?}");
        }
    }

    #[test]
    fn ids_become_the_first_keys_of_a_json_line() {
        assert_eq!(
            with_ids_first("{\"level\":\"INFO\"}\n", "ab", "cd"),
            "{\"trace_id\":\"ab\",\"span_id\":\"cd\",\"level\":\"INFO\"}\n"
        );
        assert_eq!(
            with_ids_first("{}\n", "ab", "cd"),
            "{\"trace_id\":\"ab\",\"span_id\":\"cd\"}\n"
        );
        let line = with_ids_first("{\"a\":[1,{\"b\":\"}\"}]}", "ab", "cd");
        let parsed: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(parsed["trace_id"], "ab");
        assert_eq!(parsed["a"][1]["b"], "}");
    }

    #[test]
    fn only_the_servers_own_failures_mark_a_span_failed() {
        use tonic::Code;
        assert!(is_server_error(Code::Internal) && is_server_error(Code::Unavailable));
        assert!(!is_server_error(Code::NotFound) && !is_server_error(Code::Ok));
        assert!(!is_server_error(Code::InvalidArgument));
    }
}
