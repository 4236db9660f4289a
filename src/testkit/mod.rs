//! What tests, benchmarks and `jobledger dev` need to run the ledger for real: a private
//! PostgreSQL cluster ([`cluster`]), a scratch database on a shared server
//! ([`ScratchDb`]), and a server, in this process ([`InProcessServer`]) or as a child
//! process of the binary ([`ServerProcess`]).

pub mod cluster;
mod database;
mod server;

pub use database::{base_url, ScratchDb};
pub use server::{InProcessServer, ServerCommand, ServerProcess};
