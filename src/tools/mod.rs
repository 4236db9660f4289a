//! Operator tools: the invariant checker (`jobledger check`), the Python stack's table
//! in and out (`jobledger migrate import-legacy|export-legacy`), and `jobledger dev`.

pub mod check;
pub mod dev;
pub mod legacy;
