//! The event bus: everything about Redis Streams lives here. Services only implement
//! [`Handler`]: business rules and their own keyspace.
//!
//! - [`ids`]: stream ids and the special ids of stream commands.
//! - [`entry`]: an entry as a service gets it ([`Delivery`]) and the event envelope it carries.
//! - `step`: the atomic, exactly-once Lua step that applies and acknowledges one entry.
//! - `batch`: `Batch`, the steps of a read's entries in one call of the script's batch form.
//! - `handler`: what a service implements ([`Handler`], [`Plan`], [`Outcome`]).
//! - `consumer`: the consumer-group loop; `process`: handling the entries read, a batch in one
//!   pipeline or one by one with retries; `takeover`: entries of silent consumers; `dead`: dead
//!   letters and counted tries.
//! - `groups`: creating groups, acknowledging, how far a group has got.
//! - `backoff`: capped, jittered exponential backoff.
//!
//! The Lua scripts are in `lua/`.

mod backoff;
mod batch;
mod consumer;
mod dead;
pub mod entry;
mod groups;
mod handler;
pub mod ids;
mod process;
mod step;
mod takeover;

pub use backoff::Backoff;
pub use consumer::{ConsumerConfig, SERVICE_RESPONSE_TIMEOUT, consume};
pub use entry::{Delivery, Envelope, FOR_SERVICE, RawEntry, entries_of};
pub use groups::{acknowledge, applied_up_to, ensure_group};
pub use handler::{Handler, Outcome, Plan};
pub use ids::{AUTO_ID, NEW_ENTRIES, OWN_PENDING, START_OF_STREAM, StreamId, compare_ids};
pub use step::{DEAD_LETTERS_KEPT, Step, StepKeys, StepReply, StepScript};
