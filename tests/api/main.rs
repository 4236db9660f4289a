//! Black-box tests: a real server on a random port, the generated gRPC client, and a
//! real PostgreSQL (a fresh database per test, dropped afterwards). Set TEST_LOG=1 to
//! see the server's logs.

mod helpers;

mod auth;
mod batch;
mod bench_smoke;
mod cli;
mod cli_dispatch;
mod create;
mod deadlines;
mod dispatch_auth;
mod dispatch_backoff;
mod dispatch_batch;
mod dispatch_claims;
mod dispatch_leases;
mod dispatch_longpoll;
mod dispatch_queues;
mod dispatch_rescue;
mod dispatch_support;
mod dispatch_validation;
mod errors;
mod faults;
mod get;
mod group_commit;
mod grpc_web;
mod health;
mod http;
mod http_errors;
mod http_fuzz;
mod http_legacy;
mod http_sse;
mod invariants;
mod lifecycle;
mod list;
mod metrics;
mod model;
mod protection;
mod stream;
mod stream_faults;
mod tenancy;
mod tls;
mod tracing;
mod transition;
