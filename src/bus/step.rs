//! The atomic step: a Lua script that applies one entry and acknowledges it, exactly once.

use redis::{Cmd, ErrorKind, RedisResult, Script, ServerErrorKind, ToRedisArgs};

use super::entry::Delivery;
use crate::connection::Connection;
use crate::events::ENVELOPE_VERSION;

/// Lua run at the start of every atomic step, before the step's own body.
///
/// KEYS[1] is the stream the entry came from, KEYS[2] the events stream; ARGV[1] the group (the
/// service's name), ARGV[2] the entry id, ARGV[3] the id of the request that caused the entry.
/// The last key is the dead-letter stream and the last argument the entry's delivery count
/// (see [`STEP_FAILED`]); [`Step`] appends both after the body's own.
///
/// `claim()` acknowledges the entry and says whether it was still pending. Every path of a step
/// that changes anything calls it once, after its reads and before its first write, and returns
/// `'stale'` when it is false: an entry no longer pending was already applied, by this consumer
/// or by another that took it over, and applying it again would double its effect. The
/// acknowledgement and the writes are one atomic script, so neither happens without the other.
/// A path that leaves the entry pending (to be tried again) does not call it.
const PRELUDE: &str = include_str!("lua/step_prelude.lua");

/// Lua run after the body: the body runs protected, and an error is handled here.
///
/// Redis does not undo a script's writes when it fails, so an error after `claim()` would leave
/// the entry acknowledged (a retry finds it `stale`) and part-applied. Such an entry is
/// dead-lettered by the same script, with the error, so that it is never lost silently; the
/// step then returns [`STEP_FAILED`]. An error before `claim()` changed nothing and is raised
/// again: the entry stays pending and is retried.
const EPILOGUE: &str = include_str!("lua/step_epilogue.lua");

/// The result of a step that failed after acknowledging its entry: the entry is in the
/// dead letters, with the error.
pub const STEP_FAILED: &str = "failed_after_claim";

/// A script for one atomic step: the prelude, then `body`, run protected.
///
/// The `#!lua` line gives the script flags (none): Redis then refuses it whole, before it runs,
/// when memory is over `maxmemory` or the server is a read-only replica. The step fails with
/// nothing done and the entry is tried again once Redis recovers. (Without flags, Redis checks
/// only a script's first write, and the acknowledgement would let the rest through.)
pub fn step_script(body: &str) -> Script {
    let prelude = PRELUDE.replace("ENVELOPE_VERSION", ENVELOPE_VERSION);
    let epilogue = EPILOGUE.replace("STEP_FAILED", STEP_FAILED);
    Script::new(&format!("#!lua\n{prelude}{body}{epilogue}"))
}

/// One atomic step ready to run: a step script with its keys and arguments.
///
/// Steps of a batch are sent in one pipeline (one round trip); each still runs atomically and
/// checks on its own that its entry is pending.
#[derive(Debug, Clone)]
pub struct Step {
    script: &'static Script,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
    /// The dead-letter stream, passed as the last key.
    dead: String,
    /// The entry's delivery count, passed as the last argument.
    deliveries: u64,
}

impl Step {
    /// A step for `delivery` with the prelude's keys and arguments filled in; `dead` is the
    /// dead-letter stream, for a step that fails after acknowledging its entry.
    pub fn new(
        script: &'static Script,
        delivery: &Delivery,
        group: &str,
        events: &str,
        dead: &str,
        request_id: &str,
    ) -> Step {
        Step {
            script,
            keys: Vec::with_capacity(6),
            args: Vec::with_capacity(10),
            dead: dead.to_owned(),
            deliveries: delivery.deliveries,
        }
        .key(&delivery.stream)
        .key(events)
        .arg(group)
        .arg(&delivery.id)
        .arg(request_id)
    }

    /// Adds the next `KEYS[i]`.
    pub fn key(mut self, key: impl ToRedisArgs) -> Step {
        key.write_redis_args(&mut self.keys);
        self
    }

    /// Adds the next `ARGV[i]`.
    pub fn arg(mut self, arg: impl ToRedisArgs) -> Step {
        arg.write_redis_args(&mut self.args);
        self
    }

    pub(super) fn command(&self) -> Cmd {
        let mut command = redis::cmd("EVALSHA");
        command
            .arg(self.script.get_hash())
            .arg(self.keys.len() + 1)
            .arg(&self.keys)
            .arg(&self.dead)
            .arg(&self.args)
            .arg(self.deliveries);
        command
    }

    /// Runs the step alone, loading its script first if Redis does not have it (after a restart).
    pub async fn run(&self, connection: &mut Connection) -> RedisResult<String> {
        match self.command().query_async(connection).await {
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.script.load_async(connection).await?;
                self.command().query_async(connection).await
            }
            result => result,
        }
    }
}
