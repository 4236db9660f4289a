//! A server-streaming RPC (StreamEvents) as Server-Sent Events. Each message is one
//! event: `id:` its `cursor` (so an EventSource that reconnects sends it back as
//! `Last-Event-ID` and resumes exactly after it), `data:` the message as JSON. The
//! stream's end is an `end` event whose data is the final google.rpc.Status (code 0 when
//! the job reached a final status; 14 UNAVAILABLE at shutdown, which a client resumes
//! elsewhere). A stream that cannot start answers with the error status and no event.
//! Idle streams get a comment line every `--http-sse-heartbeat-ms`.

use std::{convert::Infallible, time::Instant};

use axum::response::{
    sse::{Event, KeepAlive, Sse},
    IntoResponse, Response,
};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use prost_reflect::{DynamicMessage, MessageDescriptor, MethodDescriptor};
use tonic::{codec::Streaming, Code, Status};

use super::{json::Call, with_trace_id, HttpApi};
use crate::proto::reflect;
use crate::server::status;

/// The name of the event that ends a stream.
pub(crate) const END_EVENT: &str = "end";
/// The heartbeat comment (`: heartbeat`).
const HEARTBEAT: &str = "heartbeat";

pub(crate) async fn serve(api: &HttpApi, method: &MethodDescriptor, call: Call) -> Response {
    let deadline = call.timeout.map(|t| Instant::now() + t);
    let started = api.channel.server_streaming(method, call.into_request());
    let started = match deadline {
        Some(at) => match tokio::time::timeout_at(at.into(), started).await {
            Ok(started) => started,
            Err(_) => Err(status::deadline_exceeded()),
        },
        None => started.await,
    };
    let messages = match started {
        Ok(response) => response.into_inner(),
        Err(refusal) => return with_trace_id(status::json::response(&refusal), &refusal),
    };
    let events = events(messages, method.output(), deadline);
    Sse::new(events)
        .keep_alive(
            KeepAlive::new()
                .interval(api.settings.sse_heartbeat)
                .text(HEARTBEAT),
        )
        .into_response()
}

/// The messages as events, then the `end` event; a deadline ends the stream with
/// DEADLINE_EXCEEDED as a gRPC stream's would.
fn events(
    messages: Streaming<Bytes>,
    desc: MessageDescriptor,
    deadline: Option<Instant>,
) -> impl Stream<Item = Result<Event, Infallible>> {
    let state = Some((messages, desc));
    futures::stream::unfold(state, move |state| async move {
        let (mut messages, desc) = state?;
        let next = async {
            match deadline {
                Some(at) => tokio::time::timeout_at(at.into(), messages.next())
                    .await
                    .unwrap_or_else(|_| Some(Err(status::deadline_exceeded()))),
                None => messages.next().await,
            }
        };
        match next.await {
            Some(Ok(bytes)) => match message_event(&desc, &bytes) {
                Ok(event) => Some((Ok(event), Some((messages, desc)))),
                Err(bug) => Some((Ok(end_event(&bug)), None)),
            },
            Some(Err(status)) => Some((Ok(end_event(&status)), None)),
            None => Some((Ok(end_event(&Status::new(Code::Ok, ""))), None)),
        }
    })
}

/// One message as an event, with its cursor as the event's id.
fn message_event(desc: &MessageDescriptor, bytes: &[u8]) -> Result<Event, Status> {
    let message = DynamicMessage::decode(desc.clone(), bytes)
        .map_err(|e| status::http_bug(&e.to_string()))?;
    let json = reflect::message_to_json(&message).map_err(|e| status::http_bug(&e))?;
    let data = String::from_utf8(json).map_err(|e| status::http_bug(&e.to_string()))?;
    let mut event = Event::default().data(data);
    let cursor = message
        .get_field_by_name("cursor")
        .and_then(|v| v.as_str().map(str::to_owned));
    // Cursors are the server's own (base64url); an id with a line break would panic.
    if let Some(cursor) = cursor.filter(|c| !c.is_empty() && !c.contains(['\n', '\r', '\0'])) {
        event = event.id(cursor);
    }
    Ok(event)
}

/// The event that ends a stream, carrying its final status.
fn end_event(status: &Status) -> Event {
    let body = status::json::body(status);
    Event::default()
        .event(END_EVENT)
        .data(String::from_utf8_lossy(&body))
}
