//! Writes a seed corpus for `decode_validate`: one valid request of each kind (and a
//! few that break a rule), in the target's input format (method byte, limits byte,
//! protobuf body). libFuzzer mutates these instead of discovering protobuf from nothing.
//!
//! `cargo run --bin seed_corpus [DIR]` (default `corpus/decode_validate`).

use std::path::PathBuf;

use jobledger::proto::{self, json::json_to_struct};
use prost::Message;
use serde_json::json;

const JOB_ID: &str = "6b1e2f5c-4a51-4b0e-9d55-2f0e3c6a7b80";

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "corpus/decode_validate".to_owned()),
    );
    std::fs::create_dir_all(&dir)?;
    let create = proto::CreateJobRequest {
        r#type: "report".into(),
        priority: 3,
        idempotency_key: "k-1".into(),
        requested_by: "api".into(),
        max_attempts: 3,
        params: Some(json_to_struct(
            &json!({"file": "a.csv", "rows": 12, "ratio": 0.5, "tags": ["x", null, true], "nested": {"a": {"b": 1}}}),
        )),
        ..Default::default()
    };
    let transition = proto::TransitionJobRequest {
        job_id: JOB_ID.into(),
        to_status: proto::JobStatus::Running as i32,
        expected_status: Some(proto::JobStatus::Queued as i32),
        attempt: Some(1),
        stage: "parse".into(),
        progress: Some(40),
        detail: Some(json_to_struct(&json!({"host": "w1", "n": 2}))),
        actor: "worker-1".into(),
        request_id: "r-1".into(),
        ..Default::default()
    };
    let succeed = proto::TransitionJobRequest {
        to_status: proto::JobStatus::Succeeded as i32,
        result: Some(json_to_struct(&json!({"rows": 1200}))),
        ..transition.clone()
    };
    let fail = proto::TransitionJobRequest {
        to_status: proto::JobStatus::Failed as i32,
        error_code: "E_IO".into(),
        error_message: "disk full".into(),
        ..transition.clone()
    };
    let seeds: Vec<(u8, Vec<u8>)> = vec![
        (0, create.encode_to_vec()),
        (
            1,
            proto::CreateJobsRequest {
                jobs: vec![create.clone(), proto::CreateJobRequest::default()],
            }
            .encode_to_vec(),
        ),
        (
            2,
            proto::GetJobRequest {
                org_id: uuid::Uuid::nil().to_string(),
                job_id: JOB_ID.into(),
            }
            .encode_to_vec(),
        ),
        (3, transition.encode_to_vec()),
        (3, succeed.encode_to_vec()),
        (3, fail.encode_to_vec()),
        (
            4,
            proto::StreamEventsRequest {
                job_id: JOB_ID.into(),
                after_cursor: "c1.2a.3".into(),
                history_only: true,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            5,
            proto::ListJobsRequest {
                statuses: vec![1, 4],
                r#type: "report".into(),
                created_after: Some(prost_types::Timestamp {
                    seconds: 1_700_000_000,
                    nanos: 5,
                }),
                page_size: 20,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        (
            6,
            proto::CountJobsRequest {
                r#type: "report".into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
    ];
    let mut n = 0;
    for (method, body) in seeds {
        for limits in [0u8, 1] {
            let mut input = vec![method, limits];
            input.extend_from_slice(&body);
            std::fs::write(dir.join(format!("seed-{n:02}")), input)?;
            n += 1;
        }
    }
    println!("wrote {n} seeds to {}", dir.display());
    Ok(())
}
