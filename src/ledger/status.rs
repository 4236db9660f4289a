//! Job statuses and their spelling in the database (shared with the Python stack).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A job's status. The database stores the lowercase names of the Python stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Canceled,
    DeadLetter,
}

impl JobStatus {
    pub const ALL: [JobStatus; 6] = [
        JobStatus::Queued,
        JobStatus::Running,
        JobStatus::Succeeded,
        JobStatus::Failed,
        JobStatus::Canceled,
        JobStatus::DeadLetter,
    ];

    /// The value of `job.status` / `job_event.next_status`.
    pub fn as_db_str(self) -> &'static str {
        match self {
            JobStatus::Queued => "queued",
            JobStatus::Running => "running",
            JobStatus::Succeeded => "succeeded",
            JobStatus::Failed => "failed",
            JobStatus::Canceled => "canceled",
            JobStatus::DeadLetter => "dead_letter",
        }
    }

    pub fn from_db_str(s: &str) -> Option<JobStatus> {
        JobStatus::ALL.into_iter().find(|st| st.as_db_str() == s)
    }

    /// The name clients see (`JOB_STATUS_*` without the prefix), used in error details.
    pub fn api_name(self) -> &'static str {
        match self {
            JobStatus::Queued => "QUEUED",
            JobStatus::Running => "RUNNING",
            JobStatus::Succeeded => "SUCCEEDED",
            JobStatus::Failed => "FAILED",
            JobStatus::Canceled => "CANCELED",
            JobStatus::DeadLetter => "DEAD_LETTER",
        }
    }

    /// Statuses that carry a `finished_at`.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Failed | JobStatus::Canceled | JobStatus::DeadLetter
        )
    }

    /// Statuses after which a job-scoped event stream ends (nothing more happens
    /// without an operator's redrive).
    pub fn ends_stream(self) -> bool {
        matches!(
            self,
            JobStatus::Succeeded | JobStatus::Canceled | JobStatus::DeadLetter
        )
    }
}

impl fmt::Display for JobStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.api_name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn db_names_round_trip_and_match_the_check_constraint() {
        let names: Vec<_> = JobStatus::ALL.iter().map(|s| s.as_db_str()).collect();
        assert_eq!(
            names,
            [
                "queued",
                "running",
                "succeeded",
                "failed",
                "canceled",
                "dead_letter"
            ]
        );
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::from_db_str(s.as_db_str()), Some(s));
        }
        assert_eq!(JobStatus::from_db_str("pending"), None);
    }
}
