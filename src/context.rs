//! What every command needs, from the global flags: where Redis is, the namespace's keys, the
//! output format and the timeout.

use std::time::Duration;

use crate::connection::{Connection, Redis};
use crate::error::Failure;
use crate::keyspace::Keys;

/// What every client command needs, from the global flags.
#[derive(Debug, Clone)]
pub struct Context {
    pub redis: Redis,
    pub keys: Keys,
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
}
