//! Black-box tests: a real server on a random port, the generated gRPC client, and a
//! real PostgreSQL (a fresh database per test, dropped afterwards). Set TEST_LOG=1 to
//! see the server's logs.

mod helpers;
mod pg_cluster;

mod auth;
mod batch;
mod bench_smoke;
mod create;
mod errors;
mod faults;
mod get;
mod health;
mod invariants;
mod lifecycle;
mod list;
mod stream;
mod stream_faults;
mod tenancy;
mod transition;
