//! Listing an org's jobs: the filter, and where a page ended.
//!
//! Pages are in `(created_at, id)` order, newest first. A page ends at the position of
//! its last job; the next page is everything strictly after it. Both columns never
//! change once a job exists, so jobs created while a client pages cannot shift the jobs
//! it has not read yet: no job that existed when paging started is skipped or repeated
//! (new jobs sort before the position and are simply not part of this walk).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::JobStatus;

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

/// Where a page ended: the `(created_at, id)` of its last job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JobPosition {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> ListFilter {
        ListFilter::new(Uuid::nil(), vec![], None, None, None, None)
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
