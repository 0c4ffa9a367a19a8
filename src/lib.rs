//! `blogctl`: a blog built as four event-driven services on Redis Streams.
//!
//! # Layout
//! (Modules in `code` without a link are private: the binary reaches them through [`cli`].)
//! Where to look, by what you want to change:
//! - [`cli`]: the command line (clap), dispatching to the modules below; `cli/values.rs` has the
//!   small parsers (seconds, a choice of services), `cli/completions.rs` the shell completions.
//! - [`services`]: `blogctl serve`; one module per service (posts, comments, moderation, query)
//!   with its business rules, [`services::streams`] (which service reads which stream) and
//!   `services/generations.rs` (rebuildable state). `services/lua/` holds each service's Lua:
//!   its steps and, for comments and query, its apply functions, shared by the live steps and by
//!   `rebuild`.
//! - [`bus`]: everything about Redis Streams: ids and entries, the atomic exactly-once step
//!   ([`bus::StepScript`]: named KEYS and ARGV, check, claim, apply), the consumer loop
//!   (`bus/consumer.rs`) and what it does with each entry read (`bus/process.rs`), take-over of
//!   stuck entries, dead letters, backoff. Its Lua is in `bus/lua/`.
//! - [`request`]: commands from the client to a service's inbox, and their replies.
//! - [`keyspace`]: every Redis key name, and nothing else formats one; partitions (`Partitions`:
//!   where a post lives). [`partitions`]: the namespace's partition count, stored in Redis.
//! - [`events`]: the events (the wire contract) and pure rules (moderation, validation).
//! - `client`: the shell client commands (`post ...`, `comment ...`).
//! - `ops`: operator commands: `status` (`ops/status/`: reading Redis, summing over the
//!   partitions, `--check`'s problems, printing), `events`, `dead`, `trim`, `acl` (a Redis user
//!   per service, one for clients, one for operators), and `export`/`import` (`ops/transfer/`: a
//!   checked copy of the event log, into an empty namespace with any partition count).
//! - `rebuild`: `blogctl rebuild`: a service's state from the log, beside the live one
//!   (`rebuild/`: the checks that refuse it, filling a partition's new generation and the
//!   switch to it, applying the log and its archives, dropping a generation).
//! - `bench`: `blogctl bench`, throughput, latency and memory of the whole pipeline.
//! - `context` (the global flags), `output` (lines, tables, progress bars), [`connection`]
//!   (opening Redis connections), `shutdown` (the stop signal), [`error`] (failures and their
//!   exit codes), [`busy_poll`] (`--busy-poll`: a runtime that polls instead of sleeping).

mod bench;
pub mod bus;
pub mod busy_poll;
pub mod cli;
mod client;
pub mod connection;
mod context;
pub mod error;
pub mod events;
pub mod keyspace;
mod metrics;
mod ops;
mod output;
pub mod partitions;
mod rebuild;
pub mod request;
pub mod services;
mod shutdown;

pub use output::without_controls;
