//! What every command needs, from the global flags: where Redis is, the namespace's keys, the
//! output format and the timeout.

use std::time::Duration;

use crate::connection::{Connection, Redis};
use crate::error::Failure;
use crate::keyspace::{Keys, Partitions};

/// What every client command needs, from the global flags.
#[derive(Debug, Clone)]
pub struct Context {
    pub redis: Redis,
    pub keys: Keys,
    /// `--partitions`, if given: the count the command expects.
    pub partitions: Option<Partitions>,
    pub json: bool,
    pub timeout: Duration,
}

impl Context {
    /// A connection whose commands may block for up to the timeout (waiting for an answer).
    pub async fn connect(&self) -> Result<Connection, Failure> {
        self.redis
            .connect(Some(self.timeout + Duration::from_secs(2)))
            .await
    }

    /// The namespace's partition count (see [`crate::partitions::resolve`]).
    pub async fn partitions(&self, connection: &mut Connection) -> color_eyre::Result<Partitions> {
        crate::partitions::resolve(connection, &self.keys, self.partitions).await
    }
}
