//! What a commit tells the feed, and how it travels to the other replicas as a NOTIFY
//! payload. Stream subscribers care about (org, job); waiting claims about (org, type)
//! and whether the change can make a job claimable.

use uuid::Uuid;

use crate::ledger::JobStatus;

/// A committed change.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Announcement {
    /// Events of a job were written: its status before the first and after the last.
    Event {
        org_id: Uuid,
        job_id: Uuid,
        job_type: String,
        prev: Option<JobStatus>,
        next: JobStatus,
    },
    /// A queue was resumed or its limit changed.
    Queue { org_id: Uuid, job_type: String },
}

impl Announcement {
    /// `e <org> <job> <prev|-> <next> <type>` or `q <org> <type>`: the type last, as it
    /// may hold spaces.
    pub(crate) fn payload(&self) -> String {
        match self {
            Announcement::Event {
                org_id,
                job_id,
                job_type,
                prev,
                next,
            } => format!(
                "e {org_id} {job_id} {} {} {job_type}",
                prev.map_or("-", JobStatus::as_db_str),
                next.as_db_str()
            ),
            Announcement::Queue { org_id, job_type } => format!("q {org_id} {job_type}"),
        }
    }

    /// None for a payload this server did not write.
    pub(crate) fn parse(payload: &str) -> Option<Announcement> {
        let (kind, rest) = payload.split_once(' ')?;
        match kind {
            "e" => {
                let mut parts = rest.splitn(5, ' ');
                let org_id = Uuid::try_parse(parts.next()?).ok()?;
                let job_id = Uuid::try_parse(parts.next()?).ok()?;
                let prev = match parts.next()? {
                    "-" => None,
                    s => Some(JobStatus::from_db_str(s)?),
                };
                let next = JobStatus::from_db_str(parts.next()?)?;
                let job_type = parts.next()?.to_owned();
                Some(Announcement::Event {
                    org_id,
                    job_id,
                    job_type,
                    prev,
                    next,
                })
            }
            "q" => {
                let (org, job_type) = rest.split_once(' ')?;
                Some(Announcement::Queue {
                    org_id: Uuid::try_parse(org).ok()?,
                    job_type: job_type.to_owned(),
                })
            }
            _ => None,
        }
    }

    /// Whether a waiting claim of this queue should look again: a job became QUEUED, or
    /// FAILED with a retry ahead (its run_after may be sooner than what the claim waits
    /// for), or the queue's settings changed. A job leaving RUNNING matters only to a
    /// queue at its limit (see `ClaimWakeups::ready`).
    pub(crate) fn may_make_claimable(&self) -> bool {
        match self {
            Announcement::Event { next, .. } => {
                matches!(next, JobStatus::Queued | JobStatus::Failed)
            }
            Announcement::Queue { .. } => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_with_spaces_in_the_type() {
        let event = Announcement::Event {
            org_id: Uuid::new_v4(),
            job_id: Uuid::new_v4(),
            job_type: "send weekly report".into(),
            prev: None,
            next: JobStatus::Queued,
        };
        assert_eq!(Announcement::parse(&event.payload()), Some(event));
        let moved = Announcement::Event {
            org_id: Uuid::new_v4(),
            job_id: Uuid::new_v4(),
            job_type: "x".into(),
            prev: Some(JobStatus::Running),
            next: JobStatus::DeadLetter,
        };
        assert_eq!(Announcement::parse(&moved.payload()), Some(moved));
        let queue = Announcement::Queue {
            org_id: Uuid::new_v4(),
            job_type: "a b".into(),
        };
        assert_eq!(Announcement::parse(&queue.payload()), Some(queue));
        for bad in ["", "x", "e 1 2", "q nope t", "e a b c d e"] {
            assert_eq!(Announcement::parse(bad), None, "{bad:?}");
        }
    }
}
