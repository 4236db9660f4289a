//! ListJobs and CountJobs: validation of the requests and their responses.

use chrono::{DateTime, Utc};
use prost_types::Timestamp;

use super::convert::{job_to_proto, status_from_proto, status_to_proto};
use crate::auth::OrgScoped;
use crate::ledger::{JobStatus, LedgerError, Limits, Violations};
use crate::proto;
use crate::store::{JobPage, ListFilter, PageToken, TypeStatusCount};

/// Page size when a request leaves it 0.
pub const DEFAULT_PAGE_SIZE: usize = 50;
/// Largest page; larger requests get this many (AIP-158: coerce down, do not refuse).
pub const MAX_PAGE_SIZE: usize = 1000;

impl OrgScoped for proto::ListJobsRequest {
    fn org_id_mut(&mut self) -> &mut String {
        &mut self.org_id
    }
}

impl OrgScoped for proto::CountJobsRequest {
    fn org_id_mut(&mut self) -> &mut String {
        &mut self.org_id
    }
}

/// A validated ListJobs request.
#[derive(Debug)]
pub struct ListJobs {
    pub filter: ListFilter,
    pub after: Option<PageToken>,
    pub page_size: usize,
}

pub fn list_jobs(req: &proto::ListJobsRequest, limits: &Limits) -> Result<ListJobs, LedgerError> {
    let mut v = Violations::default();
    let org_id = v.org_id(&req.org_id);
    let statuses: Vec<JobStatus> = req
        .statuses
        .iter()
        .enumerate()
        .filter_map(|(i, s)| status_from_proto(&mut v, &format!("statuses[{i}]"), *s))
        .collect();
    let job_type = v.text("type", &req.r#type, limits.type_chars);
    let created_after = req
        .created_after
        .as_ref()
        .and_then(|t| timestamp_from_proto(&mut v, "created_after", t));
    let created_before = req
        .created_before
        .as_ref()
        .and_then(|t| timestamp_from_proto(&mut v, "created_before", t));
    let idempotency_key = v.text("idempotency_key", &req.idempotency_key, limits.key_chars);
    let page_size = match req.page_size {
        0 => DEFAULT_PAGE_SIZE,
        n if n < 0 => {
            v.add("page_size", format!("must be 0 or more, got {n}"));
            DEFAULT_PAGE_SIZE
        }
        n => (n as usize).min(MAX_PAGE_SIZE),
    };
    let filter = ListFilter::new(
        org_id,
        statuses,
        job_type,
        created_after,
        created_before,
        idempotency_key,
    );
    let after = if req.page_token.is_empty() {
        None
    } else {
        match PageToken::decode(&req.page_token) {
            None => {
                v.add(
                    "page_token",
                    "is not a page token of this ledger (use a response's `next_page_token`)",
                );
                None
            }
            // Only checked once the filter itself is valid (else it is moot).
            Some(t) if v.is_empty() && t.filter != filter.fingerprint() => {
                v.add(
                    "page_token",
                    "was issued for a different filter (org_id, statuses, type, created_after, \
                     created_before and idempotency_key must stay the same while paging)",
                );
                None
            }
            Some(t) => Some(t),
        }
    };
    v.finish()?;
    Ok(ListJobs {
        filter,
        after,
        page_size,
    })
}

/// A Timestamp a client sent: nanos within 0..1e9 and a time from year 1 to 9999
/// (the range google.protobuf.Timestamp allows).
fn timestamp_from_proto(v: &mut Violations, field: &str, t: &Timestamp) -> Option<DateTime<Utc>> {
    // 0001-01-01T00:00:00Z and 9999-12-31T23:59:59Z.
    const MIN_SECONDS: i64 = -62_135_596_800;
    const MAX_SECONDS: i64 = 253_402_300_799;
    if !(0..1_000_000_000).contains(&t.nanos) {
        v.add(
            field,
            format!("nanos must be 0..999999999, got {}", t.nanos),
        );
        return None;
    }
    if !(MIN_SECONDS..=MAX_SECONDS).contains(&t.seconds) {
        v.add(
            field,
            format!(
                "must be from 0001-01-01 to 9999-12-31, got {} seconds",
                t.seconds
            ),
        );
        return None;
    }
    DateTime::from_timestamp(t.seconds, t.nanos as u32)
}

pub fn list_response(page: JobPage) -> proto::ListJobsResponse {
    proto::ListJobsResponse {
        jobs: page.jobs.iter().map(job_to_proto).collect(),
        next_page_token: page.next.map(|t| t.encode()).unwrap_or_default(),
    }
}

pub fn count_jobs(
    req: &proto::CountJobsRequest,
    limits: &Limits,
) -> Result<(uuid::Uuid, Option<String>), LedgerError> {
    let mut v = Violations::default();
    let org_id = v.org_id(&req.org_id);
    let job_type = v.text("type", &req.r#type, limits.type_chars);
    v.finish()?;
    Ok((org_id, job_type))
}

pub fn count_response(counts: Vec<TypeStatusCount>) -> proto::CountJobsResponse {
    let by_status = JobStatus::ALL
        .iter()
        .map(|s| proto::StatusCount {
            status: status_to_proto(*s) as i32,
            count: counts
                .iter()
                .filter(|c| c.status == *s)
                .map(|c| c.count)
                .sum(),
        })
        .collect();
    let total = counts.iter().map(|c| c.count).sum();
    let mut counts: Vec<proto::JobCount> = counts
        .into_iter()
        .map(|c| proto::JobCount {
            r#type: c.job_type,
            status: status_to_proto(c.status) as i32,
            count: c.count,
        })
        .collect();
    // By type, then in enum order (the database sorted by the status's text).
    counts.sort_by(|a, b| (&a.r#type, a.status).cmp(&(&b.r#type, b.status)));
    proto::CountJobsResponse {
        counts,
        by_status,
        total,
    }
}
