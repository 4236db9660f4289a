//! Carrying the Python stack's data over and back, against a real PostgreSQL: the import
//! of the old `jobs` table, the adoption of the Python stack's `job`/`job_event`, and
//! `jobledger migrate export-legacy`. Each test builds its "legacy" database with SQL in
//! a scratch database of its own (dropped afterwards), then runs the migrations or the
//! binary. Set TEST_LOG=1 to see the server's logs.

mod helpers;

mod adoption;
mod import;
mod round_trip;
