//! jobledger: the durable ledger of asynchronous jobs, served over gRPC on PostgreSQL.
//!
//! Layers, outside in: `api` (tonic services, the only place statuses are built),
//! `ledger` (the domain: state machine, validation, errors), `store` (PostgreSQL).
//! `feed` streams events to subscribers; `startup` wires it all into a server;
//! `health` probes the database.

pub mod api;
pub mod auth;
pub mod bench;
pub mod check;
pub mod cli;
pub mod config;
pub mod dev;
pub mod feed;
pub mod health;
pub mod ledger;
pub mod legacy;
pub mod metrics;
pub mod protection;
pub mod startup;
pub mod store;
pub mod telemetry;
pub mod tls;

/// The generated `jobledger.v1` types, client and server.
pub mod proto {
    #![allow(clippy::all)]
    tonic::include_proto!("jobledger.v1");

    /// The encoded descriptors of the contract, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/jobledger_descriptor.bin"));
}
