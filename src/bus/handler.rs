//! What a service implements: how it turns an entry into a step, and reads the step's result.

use std::future::Future;

use redis::RedisResult;

use super::entry::Delivery;
use super::step::{Step, StepReply};
use crate::connection::Connection;
use crate::error::Malformed;
use crate::events::EventKind;

/// What became of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied and acknowledged (or found already applied).
    Done,
    /// Cannot be decided yet (it depends on entries still in flight): try again shortly.
    Later,
    /// Can never succeed: move it to the dead-letter stream with this reason.
    Dead(Malformed),
}

/// What a service wants done with one entry, decided without I/O.
#[derive(Debug)]
pub enum Plan {
    /// Nothing to change: acknowledge it (an event the service does not use).
    Skip,
    /// Can never succeed: move it to the dead-letter stream with this reason.
    Dead(Malformed),
    /// Run this atomic step.
    Run(Step),
}

/// A service's business logic.
///
/// [`Handler::plan`] turns each entry into an atomic step that applies and acknowledges it
/// (see [`StepScript`](super::StepScript)); the bus runs a batch of steps in one round trip, then hands each
/// step's result to [`Handler::settle`]. A Redis error leaves the entry pending: it is retried,
/// and dead-lettered after `max_deliveries` tries.
pub trait Handler: Send {
    /// Whether the service uses events of type `kind`. Events of other types are acknowledged
    /// unread, so a service neither spends time on them nor dead-letters them when malformed.
    fn uses(&self, kind: EventKind) -> bool {
        let _ = kind;
        true
    }

    fn plan(&mut self, delivery: &Delivery) -> Plan;

    /// What the result of an entry's step means; a step that applied or found the entry
    /// already applied is done.
    fn settle<'a>(
        &'a mut self,
        connection: &'a mut Connection,
        delivery: &'a Delivery,
        reply: StepReply,
    ) -> impl Future<Output = RedisResult<Outcome>> + Send + 'a {
        let _ = (connection, delivery, reply);
        async { Ok(Outcome::Done) }
    }
}
