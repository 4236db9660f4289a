//! The ledger's domain: jobs, events, the status state machine and the input rules.
//!
//! Nothing here knows about gRPC or SQL; the API layer converts wire types into these,
//! the store persists them, and every decision about what a transition does is made
//! by [`machine::apply`].

pub mod cursor;
pub mod error;
pub mod job;
mod listing;
pub mod machine;
pub mod status;
pub mod validate;

pub use cursor::Cursor;
pub use error::{FieldViolation, LedgerError};
pub use job::{Job, JobEvent, Lease, NewEvent, NewJob, RetryPolicy, Transition, DEFAULT_ORG};
pub use listing::{JobPosition, ListFilter};
pub use machine::{apply, Applied};
pub use status::JobStatus;
pub use validate::{
    Limits, Violations, DEFAULT_LEASE_MS, DEFAULT_MAX_ATTEMPTS, MAX_CLAIM_JOBS, MAX_CLAIM_TYPES,
    MAX_JOBS_PER_BATCH, MAX_WAIT_MS,
};
