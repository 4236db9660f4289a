//! jobledger: the durable ledger of asynchronous jobs, served over gRPC on PostgreSQL.
//!
//! A call goes outside in (docs/architecture.md draws it):
//!
//! | layer | module | what it does |
//! |---|---|---|
//! | wire | [`proto`] | the generated `jobledger.v1` types, method list, code names, JSON ⇄ Struct |
//! | server | [`server`] | settings, start-up and shutdown, the middleware (auth, load shedding, metrics, traces), health, the HTTP/JSON API (`server/http/`) |
//! | service | [`server::service`] | the `JobLedger` RPCs: wire in, ledger calls, wire out; [`server::status`] builds every gRPC status |
//! | domain | [`ledger`] | jobs, events, the state machine as a table, input rules, the one error type — no tonic, no SQL |
//! | storage | [`store`] | PostgreSQL: every statement (`store/queries/*.sql`), transactions, group commit |
//! | storage | [`feed`] | the live event feed: post-commit announcements, LISTEN, one reader per subscriber |
//! | dispatch | [`dispatch`] | claims that wait for work, the rescue of expired leases |
//! | tools | [`tools`] | the invariant checker, the Python stack's import and export, `jobledger dev` |
//! | tools | [`testkit`] | private PostgreSQL clusters, scratch databases, servers for tests and benchmarks |
//!
//! The `jobledger` binary (`src/bin/jobledger/`) is the command line: `serve` turns flags
//! into a [`server::Config`]; `job`, `health` and `bench` are its gRPC client side.

pub mod dispatch;
pub mod feed;
pub mod ledger;
pub mod proto;
pub mod server;
pub mod store;
pub mod testkit;
pub mod tools;
