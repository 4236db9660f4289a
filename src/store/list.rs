//! ListJobs and CountJobs: an org's jobs a keyset page at a time, and exact counts.
//!
//! Pages are in `(created_at, id)` order, newest first. A page token holds the position
//! of the last job returned; the next page is everything strictly after it. Both columns
//! never change once a job exists, so jobs created while a client pages cannot shift the
//! jobs it has not read yet: no job that existed when paging started is skipped or
//! repeated (new jobs sort before the position and are simply not part of this walk).

use std::time::Instant;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use chrono::{DateTime, Utc};
use sqlx::{FromRow, Postgres, QueryBuilder};
use uuid::Uuid;

use super::jobs::{parse_status, JobRow, JOB_COLUMNS};
use super::Store;
use crate::ledger::{Job, JobStatus, LedgerError};

/// Which jobs of an org a listing covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFilter {
    pub org_id: Uuid,
    /// Any of these; empty = every status. Sorted and without repeats (see `new`).
    pub statuses: Vec<JobStatus>,
    pub job_type: Option<String>,
    /// Inclusive.
    pub created_after: Option<DateTime<Utc>>,
    /// Exclusive.
    pub created_before: Option<DateTime<Utc>>,
    pub idempotency_key: Option<String>,
}

impl ListFilter {
    /// A filter in canonical form: the statuses sorted and deduplicated and the times
    /// cut to microseconds (what PostgreSQL stores), so equal filters hash equally.
    pub fn new(
        org_id: Uuid,
        mut statuses: Vec<JobStatus>,
        job_type: Option<String>,
        created_after: Option<DateTime<Utc>>,
        created_before: Option<DateTime<Utc>>,
        idempotency_key: Option<String>,
    ) -> ListFilter {
        statuses.sort_by_key(|s| s.as_db_str());
        statuses.dedup();
        ListFilter {
            org_id,
            statuses,
            job_type,
            created_after: created_after.map(micros_precision),
            created_before: created_before.map(micros_precision),
            idempotency_key,
        }
    }

    /// A stable 64-bit hash (FNV-1a) of the filter: the same on every replica and build,
    /// unlike `std`'s hasher. Each part is length-prefixed so parts cannot run together.
    pub fn fingerprint(&self) -> u64 {
        let mut h = Fnv::default();
        h.part(self.org_id.as_bytes());
        for s in &self.statuses {
            h.part(s.as_db_str().as_bytes());
        }
        h.part(b"|");
        h.opt(self.job_type.as_deref().map(str::as_bytes));
        h.opt(
            self.created_after
                .map(|t| t.timestamp_micros().to_be_bytes())
                .as_ref()
                .map(|b| &b[..]),
        );
        h.opt(
            self.created_before
                .map(|t| t.timestamp_micros().to_be_bytes())
                .as_ref()
                .map(|b| &b[..]),
        );
        h.opt(self.idempotency_key.as_deref().map(str::as_bytes));
        h.0
    }
}

fn micros_precision(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(t.timestamp_micros()).unwrap_or(t)
}

struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn bytes(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn part(&mut self, bytes: &[u8]) {
        self.bytes(&(bytes.len() as u64).to_be_bytes());
        self.bytes(bytes);
    }
    fn opt(&mut self, bytes: Option<&[u8]>) {
        match bytes {
            None => self.bytes(&[0]),
            Some(b) => {
                self.bytes(&[1]);
                self.part(b);
            }
        }
    }
}

/// Where a page ended: the last job returned, and the filter it was returned for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageToken {
    pub created_at_micros: i64,
    pub id: Uuid,
    pub filter: u64,
}

/// The token format's version (its first byte).
const TOKEN_V1: u8 = 1;
const TOKEN_LEN: usize = 1 + 8 + 16 + 8;

impl PageToken {
    /// base64url (no padding) of: version, created_at in µs, id, filter fingerprint.
    pub fn encode(&self) -> String {
        let mut raw = Vec::with_capacity(TOKEN_LEN);
        raw.push(TOKEN_V1);
        raw.extend_from_slice(&self.created_at_micros.to_be_bytes());
        raw.extend_from_slice(self.id.as_bytes());
        raw.extend_from_slice(&self.filter.to_be_bytes());
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// None for anything this server did not write.
    pub fn decode(s: &str) -> Option<PageToken> {
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

    fn created_at(&self) -> DateTime<Utc> {
        DateTime::from_timestamp_micros(self.created_at_micros).unwrap_or_default()
    }
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct JobPage {
    pub jobs: Vec<Job>,
    /// Set when more jobs follow.
    pub next: Option<PageToken>,
}

/// The jobs of one (type, status) of an org.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TypeStatusCount {
    pub job_type: String,
    pub status: JobStatus,
    pub count: i64,
}

#[derive(FromRow)]
struct CountRow {
    #[sqlx(rename = "type")]
    job_type: String,
    status: String,
    count: i64,
}

impl Store {
    /// A page of at most `page_size` jobs of `filter`, after `after` (a token already
    /// checked against the filter). One statement; it reads one row more than the page
    /// to learn whether another page follows.
    #[tracing::instrument(skip_all, fields(org_id = %filter.org_id, page_size))]
    pub async fn list_jobs(
        &self,
        filter: &ListFilter,
        after: Option<&PageToken>,
        page_size: usize,
        deadline: Option<Instant>,
    ) -> Result<JobPage, LedgerError> {
        // Only the conditions in use are in the statement (rather than `$n IS NULL OR
        // ...`), so the planner sees each one and can use an index for it: the keyset
        // condition and the order match idx_job_org_created (migration 0004).
        let mut q: QueryBuilder<Postgres> =
            QueryBuilder::new(format!("SELECT {JOB_COLUMNS} FROM job WHERE org_id = "));
        q.push_bind(filter.org_id);
        if !filter.statuses.is_empty() {
            let statuses: Vec<&str> = filter.statuses.iter().map(|s| s.as_db_str()).collect();
            q.push(" AND status = ANY(").push_bind(statuses).push(")");
        }
        if let Some(t) = &filter.job_type {
            q.push(" AND type = ").push_bind(t.clone());
        }
        if let Some(t) = filter.created_after {
            q.push(" AND created_at >= ").push_bind(t);
        }
        if let Some(t) = filter.created_before {
            q.push(" AND created_at < ").push_bind(t);
        }
        if let Some(k) = &filter.idempotency_key {
            q.push(" AND idempotency_key = ").push_bind(k.clone());
        }
        if let Some(after) = after {
            q.push(" AND (created_at, id) < (")
                .push_bind(after.created_at())
                .push(", ")
                .push_bind(after.id)
                .push(")");
        }
        q.push(" ORDER BY created_at DESC, id DESC LIMIT ")
            .push_bind(page_size as i64 + 1);
        let rows = self
            .fetch_all_within(q.build_query_as::<JobRow>(), deadline)
            .await?;
        let more = rows.len() > page_size;
        let jobs = rows
            .into_iter()
            .take(page_size)
            .map(Job::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let next = match jobs.last() {
            Some(last) if more => Some(PageToken {
                created_at_micros: last.created_at.timestamp_micros(),
                id: last.id,
                filter: filter.fingerprint(),
            }),
            _ => None,
        };
        Ok(JobPage { jobs, next })
    }

    /// Exact counts of an org's jobs by (type, status), sorted by type then status, in
    /// one statement (one snapshot: the numbers add up).
    #[tracing::instrument(skip_all, fields(%org_id))]
    pub async fn count_jobs(
        &self,
        org_id: Uuid,
        job_type: Option<&str>,
        deadline: Option<Instant>,
    ) -> Result<Vec<TypeStatusCount>, LedgerError> {
        let query = sqlx::query_as::<_, CountRow>(
            "SELECT type::text AS type, status::text AS status, count(*) AS count
             FROM job WHERE org_id = $1 AND ($2::text IS NULL OR type = $2)
             GROUP BY type, status ORDER BY type, status",
        )
        .bind(org_id)
        .bind(job_type);
        let rows = self.fetch_all_within(query, deadline).await?;
        rows.into_iter()
            .map(|r| {
                Ok(TypeStatusCount {
                    job_type: r.job_type,
                    status: parse_status(&r.status)?,
                    count: r.count,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> ListFilter {
        ListFilter::new(Uuid::nil(), vec![], None, None, None, None)
    }

    #[test]
    fn token_round_trip_and_rejects() {
        let t = PageToken {
            created_at_micros: 1_700_000_000_123_456,
            id: Uuid::new_v4(),
            filter: filter().fingerprint(),
        };
        assert_eq!(PageToken::decode(&t.encode()), Some(t));
        for bad in ["", "x", "AAAA", "!!!!", &t.encode()[1..], "c1.1.2"] {
            assert_eq!(PageToken::decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn fingerprint_is_canonical_and_tells_filters_apart() {
        let a = ListFilter::new(
            Uuid::nil(),
            vec![JobStatus::Running, JobStatus::Queued, JobStatus::Running],
            None,
            None,
            None,
            None,
        );
        let b = ListFilter::new(
            Uuid::nil(),
            vec![JobStatus::Queued, JobStatus::Running],
            None,
            None,
            None,
            None,
        );
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), filter().fingerprint());
        let typed = ListFilter {
            job_type: Some("x".into()),
            ..filter()
        };
        let keyed = ListFilter {
            idempotency_key: Some("x".into()),
            ..filter()
        };
        assert_ne!(typed.fingerprint(), keyed.fingerprint());
        let other_org = ListFilter {
            org_id: Uuid::from_u128(1),
            ..filter()
        };
        assert_ne!(other_org.fingerprint(), filter().fingerprint());
    }
}
