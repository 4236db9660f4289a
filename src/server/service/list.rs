//! ListJobs and CountJobs: validation of the requests, the page token, and the
//! responses.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::DateTime;
use uuid::Uuid;

use super::convert::{job_to_proto, status_from_proto, status_to_proto, timestamp_from_proto};
use crate::ledger::{JobPosition, JobStatus, LedgerError, Limits, ListFilter, Violations};
use crate::proto;
use crate::server::auth::OrgScoped;
use crate::store::{JobPage, TypeStatusCount};

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
    pub after: Option<JobPosition>,
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
    let after = page_position(&mut v, &req.page_token, &filter);
    v.finish()?;
    Ok(ListJobs {
        filter,
        after,
        page_size,
    })
}

/// Where the page before ended, from its token; the token must have been issued for
/// this filter (checked only once the filter itself is valid: else it is moot).
fn page_position(v: &mut Violations, token: &str, filter: &ListFilter) -> Option<JobPosition> {
    if token.is_empty() {
        return None;
    }
    match PageToken::decode(token) {
        None => {
            v.add(
                "page_token",
                "is not a page token of this ledger (use a response's `next_page_token`)",
            );
            None
        }
        Some(t) if v.is_empty() && t.filter != filter.fingerprint() => {
            v.add(
                "page_token",
                "was issued for a different filter (org_id, statuses, type, created_after, \
                 created_before and idempotency_key must stay the same while paging)",
            );
            None
        }
        Some(t) => Some(t.position()),
    }
}

pub(crate) fn list_response(page: JobPage, filter: &ListFilter) -> proto::ListJobsResponse {
    let token = page.next.map(|position| PageToken {
        created_at_micros: position.created_at.timestamp_micros(),
        id: position.id,
        filter: filter.fingerprint(),
    });
    proto::ListJobsResponse {
        jobs: page.jobs.iter().map(job_to_proto).collect(),
        next_page_token: token.map(|t| t.encode()).unwrap_or_default(),
    }
}

/// Where a page ended: the last job returned, and the filter it was returned for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PageToken {
    pub created_at_micros: i64,
    pub id: Uuid,
    pub filter: u64,
}

/// The token format's version (its first byte).
const TOKEN_V1: u8 = 1;
const TOKEN_LEN: usize = 1 + 8 + 16 + 8;

impl PageToken {
    /// base64url (no padding) of: version, created_at in µs, id, filter fingerprint.
    fn encode(&self) -> String {
        let mut raw = Vec::with_capacity(TOKEN_LEN);
        raw.push(TOKEN_V1);
        raw.extend_from_slice(&self.created_at_micros.to_be_bytes());
        raw.extend_from_slice(self.id.as_bytes());
        raw.extend_from_slice(&self.filter.to_be_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// None for anything this server did not write.
    fn decode(s: &str) -> Option<PageToken> {
        let raw = URL_SAFE_NO_PAD.decode(s).ok()?;
        if raw.len() != TOKEN_LEN || raw[0] != TOKEN_V1 {
            return None;
        }
        let created_at_micros = i64::from_be_bytes(raw[1..9].try_into().ok()?);
        let id = Uuid::from_slice(&raw[9..25]).ok()?;
        let filter = u64::from_be_bytes(raw[25..33].try_into().ok()?);
        DateTime::from_timestamp_micros(created_at_micros)?;
        Some(PageToken {
            created_at_micros,
            id,
            filter,
        })
    }

    fn position(&self) -> JobPosition {
        JobPosition {
            created_at: DateTime::from_timestamp_micros(self.created_at_micros).unwrap_or_default(),
            id: self.id,
        }
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

pub(crate) fn count_response(counts: Vec<TypeStatusCount>) -> proto::CountJobsResponse {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_and_rejects() {
        let filter = ListFilter::new(Uuid::nil(), vec![], None, None, None, None);
        let t = PageToken {
            created_at_micros: 1_700_000_000_123_456,
            id: Uuid::new_v4(),
            filter: filter.fingerprint(),
        };
        assert_eq!(PageToken::decode(&t.encode()), Some(t));
        for bad in ["", "x", "AAAA", "!!!!", &t.encode()[1..], "c1.1.2"] {
            assert_eq!(PageToken::decode(bad), None, "{bad:?}");
        }
    }
}
