//! `jobledger job watch`: a job's events live, with a progress bar on a terminal.

use std::{io::IsTerminal, io::Write, time::Duration};

use jobledger::proto;
use serde_json::Value;

use super::render::{event_json, event_line, status_name, struct_json};
use crate::client::session::Session;
use crate::client::{clean, print, Failure, Output};

impl Session {
    /// StreamEvents for one job until the server ends the stream (the job reached
    /// SUCCEEDED, CANCELED or DEAD_LETTER).
    pub(super) async fn watch(
        &mut self,
        job_id: String,
        after_cursor: String,
    ) -> Result<(), Failure> {
        let request = proto::StreamEventsRequest {
            org_id: self.org.clone(),
            job_id: job_id.clone(),
            after_cursor,
            history_only: false,
        };
        let stream = self.client.stream_events(request).await?.into_inner();
        let bar =
            (self.output == Output::Table && std::io::stdout().is_terminal()).then(progress_bar);
        let last = self.follow(stream, bar.as_ref(), &job_id).await?;
        // The stream ended: the job is final. With --after-cursor past its last event
        // nothing was sent, so ask for the status.
        let status = match &last {
            Some(event) => event.next_status,
            None => self.get_job(job_id.clone()).await?.status,
        };
        let status = status_name(status);
        if let Some(bar) = bar {
            bar.finish_with_message(status.clone());
        }
        if status == "SUCCEEDED" {
            Ok(())
        } else {
            Err(Failure::NotSucceeded { job_id, status })
        }
    }
}

impl Session {
    /// Prints each event as it comes until the server ends the stream; the last one.
    async fn follow(
        &self,
        mut stream: tonic::Streaming<proto::JobEvent>,
        bar: Option<&indicatif::ProgressBar>,
        job_id: &str,
    ) -> Result<Option<proto::JobEvent>, Failure> {
        let mut last: Option<proto::JobEvent> = None;
        loop {
            match stream.message().await {
                Ok(Some(event)) => {
                    let line = match self.output {
                        Output::Json => event_json(&event).to_string(),
                        Output::Table => event_line(&event),
                    };
                    match bar {
                        Some(bar) => {
                            bar.println(line);
                            update_bar(bar, &event);
                        }
                        None => print(&line),
                    }
                    last = Some(event);
                }
                Ok(None) => return Ok(last),
                Err(status) => {
                    if let Some(bar) = bar {
                        bar.abandon();
                    }
                    if let Some(last) = &last {
                        let _ = writeln!(
                            std::io::stderr(),
                            "The stream broke; resume with: jobledger job watch {job_id} \
                             --after-cursor {}",
                            last.cursor
                        );
                    }
                    return Err(status.into());
                }
            }
        }
    }
}

fn progress_bar() -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(100),
        indicatif::ProgressDrawTarget::stdout(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{bar:40}] {pos:>3}%  {msg}")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

fn update_bar(bar: &indicatif::ProgressBar, event: &proto::JobEvent) {
    let detail = struct_json(&event.detail);
    if let Some(p) = detail.get("progress").and_then(Value::as_u64) {
        bar.set_position(p.min(100));
    }
    let status = status_name(event.next_status);
    if status == "SUCCEEDED" {
        bar.set_position(100);
    }
    let stage = detail.get("stage").and_then(Value::as_str).unwrap_or("");
    bar.set_message(clean(format!("{status} {stage}").trim()));
}
