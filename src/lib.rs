//! `blogctl`: a blog built as four event-driven services on one Redis stream.
//!
//! # Layout
//! - [`cli`]: the command line (clap), dispatching to the modules below.
//! - [`services`]: `blogctl serve`; one module per service (posts, comments, moderation, query),
//!   each holding its business rules and its own keyspace.
//! - [`client`]: the shell client commands (`post ...`, `comment ...`).
//! - [`ops`]: operator commands: `status`, `events`, `dead`, `trim`, `completions`.
//! - [`bench`]: `blogctl bench`, throughput, latency and memory of the whole pipeline.
//! - [`bus`]: everything about Redis Streams: groups, the envelope, the consumer loop,
//!   atomic exactly-once steps, retries, take-over of stuck entries, dead letters.
//! - [`rebuild`]: `blogctl rebuild`, and the generations that let a service's state be rebuilt
//!   beside the live one.
//! - [`request`]: commands from the client to a service's inbox, and their replies.
//! - [`events`]: the events (the wire contract) and pure rules (moderation, validation).
//! - [`keys`]: every Redis key name.
//! - [`connection`]: opening Redis connections.
//! - [`shutdown`]: the stop signal shared by a process's tasks.
//! - [`error`]: user-facing failures and their exit codes.

pub mod bench;
pub mod bus;
pub mod cli;
pub mod client;
pub mod connection;
pub mod context;
pub mod error;
pub mod events;
pub mod keyspace;
pub mod ops;
pub mod output;
pub mod rebuild;
pub mod request;
pub mod services;
pub mod shutdown;
