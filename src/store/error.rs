//! Turns database failures into ledger errors: SQLSTATEs are interpreted here and
//! nowhere else, and nothing of the SQL reaches a client.

use sqlx::error::DatabaseError;

use crate::ledger::{FieldViolation, LedgerError};

impl From<sqlx::Error> for LedgerError {
    fn from(err: sqlx::Error) -> Self {
        match &err {
            sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::WorkerCrashed => LedgerError::Unavailable {
                cause: err.to_string(),
            },
            sqlx::Error::Database(db) => from_database_error(db.as_ref()),
            _ => LedgerError::Internal {
                cause: err.to_string(),
            },
        }
    }
}

fn from_database_error(db: &dyn DatabaseError) -> LedgerError {
    let code = db.code().unwrap_or_default();
    let cause = format!("{} (SQLSTATE {code})", db.message());
    match &code[..code.len().min(2)] {
        // connection exceptions, insufficient resources, operator intervention
        // (shutdown, statement timeout / cancel), lock not available, serialization
        // failures and deadlocks: all retryable.
        "08" | "53" | "57" | "55" | "40" => LedgerError::Unavailable { cause },
        // data exceptions and program limits: a value PostgreSQL refuses to store.
        // Validation should have caught it; this is the backstop that keeps it a
        // client error instead of INTERNAL.
        "22" | "54" => {
            tracing::warn!(%cause, "database refused a value that passed validation");
            LedgerError::InvalidArgument(vec![FieldViolation {
                field: "request".into(),
                description: "contains a value the ledger cannot store".into(),
            }])
        }
        _ => LedgerError::Internal { cause },
    }
}
