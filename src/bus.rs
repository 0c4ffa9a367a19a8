//! The event bus: everything about Redis Streams lives here.
//!
//! Stream and group set-up, the entry envelope, the Lua prelude that makes each step atomic and
//! exactly-once, the consumer-group loop (own pending entries first, then new ones, taking over
//! entries of dead consumers), retries with backoff, reconnection, and dead letters. Services
//! only implement [`Handler`]: business rules and their own keyspace.

use std::collections::HashMap;
use std::future::Future;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use redis::streams::{
    StreamAutoClaimReply, StreamId, StreamInfoGroupsReply, StreamPendingCountReply,
    StreamRangeReply,
};
use redis::{
    AsyncCommands, Cmd, ErrorKind, RedisResult, Script, ServerErrorKind, ToRedisArgs, Value,
};
use tracing::{debug, error, info, warn};

use crate::connection::{Connection, Redis};
use crate::error::is_unavailable;
use crate::events::{ENVELOPE_VERSION, Event};
use crate::shutdown::Shutdown;

/// XREADGROUP: entries never delivered to any consumer of the group.
pub const NEW_ENTRIES: &str = ">";
/// XREADGROUP: this consumer's own pending entries, from the first.
pub const OWN_PENDING: &str = "0";
/// XGROUP CREATE: the group starts at the beginning of the stream, so it sees all history.
pub const START_OF_STREAM: &str = "0";
/// XADD: let Redis choose the id.
pub const AUTO_ID: &str = "*";
/// Entry field restricting it to one service's group; other groups acknowledge and skip it.
pub const FOR_SERVICE: &str = "for_service";
/// The category of the error a service waits on when its group vanished while it ran.
const GROUP_VANISHED: &str = "group vanished";
/// XAUTOCLAIM: start scanning at the first pending entry.
const FIRST_PENDING: &str = "0-0";

/// Entries read per XREADGROUP call and per stream.
const BATCH: usize = 100;
/// How long one blocking read waits; bounds how long a shutdown may go unnoticed.
const BLOCK: Duration = Duration::from_millis(500);
/// The block time while some entries wait for another try (see [`Outcome::Later`]).
const BLOCK_WHILE_DEFERRED: Duration = Duration::from_millis(10);
/// Commands of a service that do not block must answer within this or the connection is redone.
pub const SERVICE_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

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
const PRELUDE: &str = r#"
local claimed = false
local function claim()
  claimed = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 1
  return claimed
end
local function publish(kind, data)
  return redis.call('XADD', KEYS[2], '*', 'type', kind, 'version', 'ENVELOPE_VERSION',
    'request_id', ARGV[3], 'producer', ARGV[1], 'data', data)
end
local function step()
"#;

/// Lua run after the body: the body runs protected, and an error is handled here.
///
/// Redis does not undo a script's writes when it fails, so an error after `claim()` would leave
/// the entry acknowledged (a retry finds it `stale`) and part-applied. Such an entry is
/// dead-lettered by the same script, with the error, so that it is never lost silently; the
/// step then returns [`STEP_FAILED`]. An error before `claim()` changed nothing and is raised
/// again: the entry stays pending and is retried.
const EPILOGUE: &str = r#"
end
local ok, result = pcall(step)
if ok then return result end
local message = type(result) == 'table' and result.err or tostring(result)
if not claimed then return redis.error_reply(message) end
local entry = {}
for _, found in ipairs(redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])) do
  for i = 1, #found[2], 2 do entry[found[2][i]] = found[2][i + 1] end
end
redis.call('XADD', KEYS[#KEYS], '*', 'stream', KEYS[1], 'id', ARGV[2], 'service', ARGV[1],
  'reason', 'failed after it was acknowledged, maybe part-applied: ' .. message,
  'deliveries', ARGV[#ARGV], 'entry', cjson.encode(entry))
return 'STEP_FAILED'
"#;

/// The result of a step that failed after acknowledging its entry: the entry is in the
/// dead letters, with the error.
pub const STEP_FAILED: &str = "failed_after_claim";

/// Moves an entry to the dead-letter stream (KEYS[2]) and acknowledges it, in one step.
/// ARGV[4]: reason, ARGV[5]: deliveries, ARGV[6]: the entry's fields as JSON, ARGV[7]: '1' to
/// delete the entry from its stream too (requests are deleted once answered).
const DEAD_LETTER: &str = r#"
if not claim() then return 'stale' end
redis.call('XADD', KEYS[2], '*', 'stream', KEYS[1], 'id', ARGV[2], 'service', ARGV[1],
  'reason', ARGV[4], 'deliveries', ARGV[5], 'entry', ARGV[6])
if ARGV[7] == '1' then redis.call('XDEL', KEYS[1], ARGV[2]) end
return 'dead'
"#;

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

    fn command(&self) -> Cmd {
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

/// A stream entry as XRANGE, XREAD and XREADGROUP return it: its id and its fields in order.
/// Read straight from the reply, without a map per entry (this is the hot path of every service).
pub type RawEntry = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// One entry handed to a service.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub stream: String,
    pub id: String,
    /// The entry's fields in stream order.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
    /// How many times Redis has delivered it, this time included.
    pub deliveries: u64,
}

impl Delivery {
    pub fn new(stream: &str, (id, fields): RawEntry, deliveries: u64) -> Delivery {
        Delivery {
            stream: stream.to_owned(),
            id,
            fields,
            deliveries,
        }
    }

    /// From an entry in redis-rs's map form (XAUTOCLAIM replies).
    fn from_stream_id(stream: &str, entry: StreamId, deliveries: u64) -> Delivery {
        let fields = entry
            .map
            .into_iter()
            .map(|(name, value)| {
                let value = match value {
                    Value::BulkString(bytes) => bytes,
                    Value::SimpleString(text) => text.into_bytes(),
                    other => format!("{other:?}").into_bytes(),
                };
                (name.into_bytes(), value)
            })
            .collect();
        Delivery::new(stream, (entry.id, fields), deliveries)
    }

    /// A text field; the error is the reason to dead-letter the entry.
    pub fn field(&self, name: &str) -> Result<&str, String> {
        match self
            .fields
            .iter()
            .find(|(field, _)| field == name.as_bytes())
        {
            Some((_, bytes)) => {
                std::str::from_utf8(bytes).map_err(|_| format!("field {name:?} is not UTF-8"))
            }
            None => Err(format!("field {name:?} is missing")),
        }
    }

    /// A text field the entry may lack; the error is the reason to dead-letter the entry.
    pub fn optional_field(&self, name: &str) -> Result<Option<&str>, String> {
        match self
            .fields
            .iter()
            .find(|(field, _)| field == name.as_bytes())
        {
            Some(_) => self.field(name).map(Some),
            None => Ok(None),
        }
    }

    /// The envelope's event. `Ok(None)`: a type this build does not know, to be skipped.
    pub fn event(&self) -> Result<Option<Envelope>, String> {
        let version = self.field("version")?;
        if version != ENVELOPE_VERSION {
            return Err(format!("envelope version {version:?} is not supported"));
        }
        let kind = self.field("type")?;
        let data = self.field("data")?;
        let request_id = self.field("request_id")?.to_owned();
        Ok(Event::parse(kind, data)?.map(|event| Envelope { event, request_id }))
    }

    /// Whether `group` should handle it: entries put back from the dead letters (`blogctl dead
    /// retry`) carry a [`FOR_SERVICE`] field naming the one service that failed them.
    pub fn is_for(&self, group: &str) -> bool {
        self.field(FOR_SERVICE)
            .map_or(true, |service| service == group)
    }

    /// All fields as a JSON object, bytes that are not UTF-8 replaced, for dead letters.
    pub fn fields_json(&self) -> String {
        let fields: serde_json::Map<String, serde_json::Value> = self
            .fields
            .iter()
            .map(|(name, value)| {
                let text = String::from_utf8_lossy(value).into_owned();
                (
                    String::from_utf8_lossy(name).into_owned(),
                    serde_json::Value::String(text),
                )
            })
            .collect();
        serde_json::Value::Object(fields).to_string()
    }
}

/// An event with the id of the request that caused it.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub event: Event,
    pub request_id: String,
}

/// What became of one entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied and acknowledged (or found already applied).
    Done,
    /// Cannot be decided yet (it depends on entries still in flight): try again shortly.
    Later,
    /// Can never succeed: move it to the dead-letter stream with this reason.
    Dead(String),
}

/// What a service wants done with one entry, decided without I/O.
#[derive(Debug)]
pub enum Plan {
    /// Nothing to change: acknowledge it (an event the service does not use).
    Skip,
    /// Can never succeed: move it to the dead-letter stream with this reason.
    Dead(String),
    /// Run this atomic step.
    Run(Step),
}

/// A service's business logic.
///
/// [`Handler::plan`] turns each entry into an atomic step that applies and acknowledges it
/// (see [`step_script`]); the bus runs a batch of steps in one round trip, then hands each
/// step's result to [`Handler::settle`]. A Redis error leaves the entry pending: it is retried,
/// and dead-lettered after `max_deliveries` tries.
pub trait Handler: Send {
    /// Whether the service uses events of type `kind`. Events of other types are acknowledged
    /// unread, so a service neither spends time on them nor dead-letters them when malformed.
    fn uses(&self, kind: &str) -> bool {
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
        result: &'a str,
    ) -> impl Future<Output = RedisResult<Outcome>> + Send + 'a {
        let _ = (connection, delivery, result);
        async { Ok(Outcome::Done) }
    }
}

/// Who reads what, and how patiently.
#[derive(Debug, Clone)]
pub struct ConsumerConfig {
    /// The consumer group: the service's name.
    pub group: String,
    /// This consumer's name within the group.
    pub consumer: String,
    /// The streams to read, in the order each batch is handled (events before requests).
    pub streams: Vec<String>,
    /// The stream whose entries are deleted once handled (the service's inbox), if any.
    pub inbox: Option<String>,
    /// The dead-letter stream.
    pub dead: String,
    /// The service's hash counting tries of redelivered entries (`<prefix>attempts`).
    pub attempts: String,
    /// Entries pending this long with another consumer are taken over.
    pub claim_idle: Duration,
    /// Deliveries after which an entry that keeps failing is dead-lettered.
    pub max_deliveries: u64,
}

/// Creates `group` on `stream` at the start of the stream (and the stream if need be).
pub async fn ensure_group(
    connection: &mut Connection,
    stream: &str,
    group: &str,
) -> RedisResult<()> {
    let created: RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg(START_OF_STREAM)
        .arg("MKSTREAM")
        .query_async(connection)
        .await;
    match created {
        Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Runs the consumer loop until shutdown. Whatever goes wrong with Redis (lost connection,
/// Redis restarted empty, a read-only or full Redis) is waited out with capped backoff: logged
/// once when it starts and once when it is over, never in a tight loop.
pub async fn consume(
    redis: &Redis,
    config: &ConsumerConfig,
    handler: &mut impl Handler,
    mut shutdown: Shutdown,
) -> color_eyre::Result<()> {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut trouble: Option<String> = None;
    // The `run_id` of the Redis server the groups were made or found on: while it is the same
    // server, a group that vanished is not silently recreated at the start of a stream that
    // holds entries.
    let mut served: Option<String> = None;
    while !shutdown.requested() {
        let connected = tokio::select! {
            connected = redis.try_connect(Some(SERVICE_RESPONSE_TIMEOUT)) => connected,
            () = shutdown.wait() => break,
        };
        let result = match connected {
            Ok(connection) => {
                let mut consumer = Consumer {
                    config,
                    handler,
                    connection,
                    shutdown: shutdown.clone(),
                    deferred: Vec::new(),
                    counted: HashMap::new(),
                };
                consumer.run(&mut trouble, &mut backoff, &mut served).await
            }
            Err(error) => Err(error),
        };
        match result {
            Ok(()) => break,
            Err(error) => {
                let kind = format!("{:?}", error.kind());
                if trouble.as_deref() != Some(kind.as_str()) {
                    if error.to_string().starts_with(GROUP_VANISHED) {
                        error!(service = %config.group, %error, "waiting for the group");
                    } else {
                        warn!(service = %config.group, url = redis.url(), %error,
                            "Redis is unavailable; retrying with backoff");
                    }
                    trouble = Some(kind);
                }
                shutdown.sleep(backoff.next_delay()).await;
            }
        }
    }
    leave_groups(redis, config).await;
    info!(service = %config.group, "stopped");
    Ok(())
}

/// Deletes this consumer from its groups (KEYS: the streams; ARGV[1]: group, ARGV[2]: consumer)
/// where it holds no pending entry, so stopped processes do not pile up in `blogctl status`.
/// One that still holds entries stays: they are its to resume, or another's to take over.
static LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
for _, stream in ipairs(KEYS) do
  for _, consumer in ipairs(redis.call('XINFO', 'CONSUMERS', stream, ARGV[1])) do
    local name, pending
    for i = 1, #consumer, 2 do
      if consumer[i] == 'name' then name = consumer[i + 1] end
      if consumer[i] == 'pending' then pending = consumer[i + 1] end
    end
    if name == ARGV[2] and pending == 0 then
      redis.call('XGROUP', 'DELCONSUMER', stream, ARGV[1], ARGV[2])
    end
  end
end
return 'left'
"#,
    )
});

/// Best effort, on a graceful stop: a Redis that is away or slow is not waited for.
async fn leave_groups(redis: &Redis, config: &ConsumerConfig) {
    let leave = async {
        let mut connection = redis.try_connect(Some(Duration::from_millis(500))).await?;
        let mut invocation = LEAVE.prepare_invoke();
        for stream in &config.streams {
            invocation.key(stream);
        }
        invocation
            .arg(&config.group)
            .arg(&config.consumer)
            .invoke_async::<String>(&mut connection)
            .await
    };
    if let Ok(Err(error)) = tokio::time::timeout(Duration::from_millis(700), leave).await {
        debug!(service = %config.group, %error, "could not leave the groups");
    }
}

struct Consumer<'a, H> {
    config: &'a ConsumerConfig,
    handler: &'a mut H,
    connection: Connection,
    shutdown: Shutdown,
    /// Entries that could not be decided yet ([`Outcome::Later`]), tried again after each read.
    deferred: Vec<Delivery>,
    /// Tries counted so far of the redelivered entries in hand, by [`Consumer::try_field`].
    counted: HashMap<String, u64>,
}

impl<H: Handler> Consumer<'_, H> {
    async fn run(
        &mut self,
        trouble: &mut Option<String>,
        backoff: &mut Backoff,
        served: &mut Option<String>,
    ) -> RedisResult<()> {
        // A restarted Redis (a new run_id) may have come back empty: its groups are made anew.
        let server = run_id(&mut self.connection).await?;
        for stream in &self.config.streams {
            if served.as_deref() == Some(server.as_str()) {
                self.refuse_a_vanished_group(stream).await?;
            }
            ensure_group(&mut self.connection, stream, &self.config.group).await?;
        }
        *served = Some(server);
        if trouble.take().is_some() {
            info!(service = %self.config.group, "Redis is back; resuming");
        } else {
            info!(service = %self.config.group, consumer = %self.config.consumer, "started");
        }
        backoff.reset();
        self.resume_own_pending().await?;
        let claim_every = (self.config.claim_idle / 2).max(Duration::from_millis(100));
        let mut last_claim: Option<Instant> = None;
        while !self.shutdown.requested() {
            if last_claim.is_none_or(|at| at.elapsed() >= claim_every) {
                self.take_over_stuck().await?;
                last_claim = Some(Instant::now());
            }
            let block = if self.deferred.is_empty() {
                BLOCK
            } else {
                BLOCK_WHILE_DEFERRED
            };
            let ids = vec![NEW_ENTRIES; self.config.streams.len()];
            let batch = self.read(&ids, Some(block)).await?;
            let deliveries = batch
                .into_iter()
                .flat_map(|(stream, entries)| {
                    entries
                        .into_iter()
                        .map(move |entry| Delivery::new(&stream, entry, 1))
                })
                .collect();
            let retry = std::mem::take(&mut self.deferred);
            let later = self.process_batch(deliveries).await?;
            self.deferred.extend(later);
            for delivery in retry {
                if self.shutdown.requested() {
                    break;
                }
                if self.process(&delivery).await? == Outcome::Later {
                    self.deferred.push(delivery);
                }
            }
        }
        Ok(())
    }

    /// Fails when the group vanished from `stream` while the service ran (someone destroyed
    /// it) and the stream still holds entries: recreating it at the start of the stream would
    /// apply the whole log again (moderation would judge every comment a second time), and
    /// recreating it at the end would skip what the group had not read yet. An operator decides
    /// (see the README); the service waits, retrying with backoff. On an empty stream the group
    /// is recreated as at the first start.
    async fn refuse_a_vanished_group(&mut self, stream: &str) -> RedisResult<()> {
        let length: u64 = self.connection.xlen(stream).await?;
        if length == 0 {
            return Ok(());
        }
        let groups: StreamInfoGroupsReply = self.connection.xinfo_groups(stream).await?;
        if groups
            .groups
            .iter()
            .any(|info| info.name == self.config.group)
        {
            return Ok(());
        }
        let group = &self.config.group;
        Err(redis::RedisError::from((
            ErrorKind::Client,
            GROUP_VANISHED,
            format!(
                "group {group} vanished from {stream} while the service ran, and the stream \
                 holds {length} entries: not recreating it, which would apply them all again. \
                 Recreate it where it was (`redis-cli XGROUP CREATE {stream} {group} <last id \
                 it applied>`), or restart the service to apply the whole log again"
            ),
        )))
    }

    /// Handles what this consumer was given before it stopped or lost Redis.
    async fn resume_own_pending(&mut self) -> RedisResult<()> {
        let mut after: Vec<String> = vec![OWN_PENDING.to_owned(); self.config.streams.len()];
        loop {
            let ids: Vec<&str> = after.iter().map(String::as_str).collect();
            let batch = self.read(&ids, None).await?;
            if batch.iter().all(|(_, entries)| entries.is_empty()) {
                return Ok(());
            }
            for (stream, entries) in batch {
                let position = self.config.streams.iter().position(|s| *s == stream);
                if let (Some(position), Some(last)) = (position, entries.last()) {
                    after[position] = last.0.clone();
                }
                let entries = entries
                    .into_iter()
                    .map(|entry| Delivery::new(&stream, entry, 1))
                    .collect();
                self.process_pending(entries).await?;
                if self.shutdown.requested() {
                    return Ok(());
                }
            }
        }
    }

    /// Takes over entries another consumer has held longer than `claim_idle` (it likely died).
    async fn take_over_stuck(&mut self) -> RedisResult<()> {
        let min_idle = self.config.claim_idle.as_millis() as u64;
        for stream in self.config.streams.clone() {
            let mut start = FIRST_PENDING.to_owned();
            loop {
                let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                    .arg(&stream)
                    .arg(&self.config.group)
                    .arg(&self.config.consumer)
                    .arg(min_idle)
                    .arg(&start)
                    .arg("COUNT")
                    .arg(BATCH)
                    .query_async(&mut self.connection)
                    .await?;
                if !reply.claimed.is_empty() {
                    info!(service = %self.config.group, count = reply.claimed.len(), %stream,
                        "took over entries idle for {:?}", self.config.claim_idle);
                    let claimed = reply
                        .claimed
                        .into_iter()
                        .map(|entry| Delivery::from_stream_id(&stream, entry, 1))
                        .collect();
                    self.process_pending(claimed).await?;
                }
                if reply.next_stream_id == FIRST_PENDING || self.shutdown.requested() {
                    break;
                }
                start = reply.next_stream_id;
            }
        }
        Ok(())
    }

    /// Handles entries delivered before, counting their earlier deliveries.
    async fn process_pending(&mut self, mut entries: Vec<Delivery>) -> RedisResult<()> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&first.stream)
            .arg(&self.config.group)
            .arg(&first.id)
            .arg(&last.id)
            .arg(entries.len())
            .query_async(&mut self.connection)
            .await?;
        let counts: HashMap<String, u64> = pending
            .ids
            .into_iter()
            .map(|entry| (entry.id, entry.times_delivered as u64))
            .collect();
        for delivery in &mut entries {
            delivery.deliveries = counts.get(&delivery.id).copied().unwrap_or(1);
        }
        for delivery in entries {
            if self.process(&delivery).await? == Outcome::Later {
                self.deferred.push(delivery);
            }
            if self.shutdown.requested() {
                break;
            }
        }
        Ok(())
    }

    /// Handles a batch of first deliveries: every step in one pipeline, in stream order, then
    /// anything unusual one by one. Returns the entries to try again later.
    async fn process_batch(&mut self, deliveries: Vec<Delivery>) -> RedisResult<Vec<Delivery>> {
        let group = self.config.group.clone();
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let mut stepped: Vec<Delivery> = Vec::new();
        let mut skipped: HashMap<String, Vec<String>> = HashMap::new();
        let mut alone: Vec<Delivery> = Vec::new();
        for delivery in deliveries {
            if self.ignores(&delivery) {
                skipped
                    .entry(delivery.stream.clone())
                    .or_default()
                    .push(delivery.id.clone());
                continue;
            }
            match self.handler.plan(&delivery) {
                Plan::Skip => skipped
                    .entry(delivery.stream.clone())
                    .or_default()
                    .push(delivery.id.clone()),
                Plan::Dead(_) => alone.push(delivery),
                Plan::Run(step) => {
                    pipe.add_command(step.command());
                    stepped.push(delivery);
                }
            }
        }
        for (stream, ids) in &skipped {
            pipe.xack(stream, &group, ids);
        }
        let mut later = Vec::new();
        if !stepped.is_empty() || !skipped.is_empty() {
            // Step results are strings; the trailing XACKs' counts read as strings too.
            let results: Vec<RedisResult<String>> = pipe.query_async(&mut self.connection).await?;
            for (delivery, result) in stepped.into_iter().zip(results) {
                match result {
                    Ok(result) => match self.settle(&delivery, &result).await? {
                        Outcome::Done => {}
                        Outcome::Later => later.push(delivery),
                        Outcome::Dead(reason) => {
                            self.dead_letter(&delivery, &reason, 1).await?;
                        }
                    },
                    Err(error) if is_unavailable(&error) => return Err(error),
                    // Retried, with backoff and counting, on its own.
                    Err(_) => alone.push(delivery),
                }
            }
        }
        for delivery in alone {
            if self.process(&delivery).await? == Outcome::Later {
                later.push(delivery);
            }
        }
        Ok(later)
    }

    /// What a step's result means: the handler's reading of it, unless the step failed after
    /// acknowledging its entry (the step dead-lettered it then).
    async fn settle(&mut self, delivery: &Delivery, result: &str) -> RedisResult<Outcome> {
        if result == STEP_FAILED {
            error!(service = %self.config.group, id = %delivery.id, stream = %delivery.stream,
                "a step failed after acknowledging its entry; the entry is in the dead letters");
            return Ok(Outcome::Done);
        }
        self.handler
            .settle(&mut self.connection, delivery, result)
            .await
    }

    /// Whether the service has nothing to do with an entry: one put back by `blogctl dead retry`
    /// for another service, or an event of a type it does not use.
    fn ignores(&self, delivery: &Delivery) -> bool {
        if !delivery.is_for(&self.config.group) {
            return true;
        }
        let is_request = self.config.inbox.as_deref() == Some(delivery.stream.as_str());
        !is_request && matches!(delivery.field("type"), Ok(kind) if !self.handler.uses(kind))
    }

    /// Handles one entry: retries errors that may pass, dead-letters what can never succeed.
    async fn process(&mut self, delivery: &Delivery) -> RedisResult<Outcome> {
        if self.ignores(delivery) {
            return acknowledge(&mut self.connection, &self.config.group, delivery).await;
        }
        let max = self.config.max_deliveries;
        // A redelivered entry may be one that crashed the process: count real tries (entries
        // delivered in a batch but never reached before a crash do not count).
        let redelivered = delivery.deliveries > 1;
        let mut tries = if redelivered {
            self.count_try(delivery).await?
        } else {
            1
        };
        if tries > max {
            let reason = format!("tried {} times without being applied", tries - 1);
            return self.dead_letter(delivery, &reason, tries - 1).await;
        }
        let mut retry = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            let outcome = match self.handler.plan(delivery) {
                Plan::Skip => acknowledge(&mut self.connection, &self.config.group, delivery).await,
                Plan::Dead(reason) => Ok(Outcome::Dead(reason)),
                Plan::Run(step) => match step.run(&mut self.connection).await {
                    Ok(result) => self.settle(delivery, &result).await,
                    Err(error) => Err(error),
                },
            };
            match outcome {
                Ok(Outcome::Dead(reason)) => {
                    warn!(service = %self.config.group, id = %delivery.id, stream = %delivery.stream,
                        %reason, "dead-lettering a malformed entry");
                    return self.dead_letter(delivery, &reason, tries).await;
                }
                Ok(outcome) => {
                    if redelivered && outcome == Outcome::Done {
                        self.forget_tries(delivery).await?;
                    }
                    return Ok(outcome);
                }
                Err(error) if is_unavailable(&error) => return Err(error),
                Err(error) if tries >= max => {
                    let reason = format!("failed {tries} times; last error: {error}");
                    error!(service = %self.config.group, id = %delivery.id, %reason, "giving up on an entry");
                    return self.dead_letter(delivery, &reason, tries).await;
                }
                Err(error) => {
                    warn!(service = %self.config.group, id = %delivery.id, %error, try_number = tries,
                        "an entry failed; retrying");
                    tries += 1;
                    if self.shutdown.sleep(retry.next_delay()).await {
                        // Left pending: handled again after the restart.
                        return Ok(Outcome::Later);
                    }
                }
            }
        }
    }

    /// The field of the attempts hash for one entry.
    fn try_field(delivery: &Delivery) -> String {
        format!("{}/{}", delivery.stream, delivery.id)
    }

    /// Counts one more try of a redelivered entry; returns the tries so far, this one included.
    /// An entry tried again locally (deferred, see [`Outcome::Later`]) is counted once per
    /// delivery, not once per local try.
    async fn count_try(&mut self, delivery: &Delivery) -> RedisResult<u64> {
        let field = Self::try_field(delivery);
        if let Some(&tries) = self.counted.get(&field) {
            return Ok(tries);
        }
        let counted: u64 = self
            .connection
            .hincr(&self.config.attempts, &field, 1)
            .await?;
        // The first delivery was tried without being counted.
        self.counted.insert(field, counted + 1);
        Ok(counted + 1)
    }

    async fn forget_tries(&mut self, delivery: &Delivery) -> RedisResult<()> {
        let field = Self::try_field(delivery);
        self.counted.remove(&field);
        self.connection.hdel(&self.config.attempts, field).await
    }

    async fn dead_letter(
        &mut self,
        delivery: &Delivery,
        reason: &str,
        deliveries: u64,
    ) -> RedisResult<Outcome> {
        static SCRIPT: LazyLock<Script> = LazyLock::new(|| step_script(DEAD_LETTER));
        let delete = self.config.inbox.as_deref() == Some(delivery.stream.as_str());
        // KEYS[2] of this step is the dead-letter stream, not the events stream.
        let dead = &self.config.dead;
        let result = Step::new(&SCRIPT, delivery, &self.config.group, dead, dead, "")
            .arg(reason)
            .arg(deliveries)
            .arg(delivery.fields_json())
            .arg(if delete { "1" } else { "0" })
            .run(&mut self.connection)
            .await?;
        self.forget_tries(delivery).await?;
        debug!(service = %self.config.group, id = %delivery.id, %result, "dead letter");
        Ok(Outcome::Done)
    }

    /// One XREADGROUP over all the consumer's streams; `None` block means do not wait.
    async fn read(
        &mut self,
        ids: &[&str],
        block: Option<Duration>,
    ) -> RedisResult<Vec<(String, Vec<RawEntry>)>> {
        let mut command = redis::cmd("XREADGROUP");
        command
            .arg("GROUP")
            .arg(&self.config.group)
            .arg(&self.config.consumer)
            .arg("COUNT")
            .arg(BATCH);
        if let Some(block) = block {
            command.arg("BLOCK").arg(block.as_millis() as u64);
        }
        command.arg("STREAMS").arg(&self.config.streams).arg(ids);
        // A read holds nothing in hand yet: a shutdown does not wait for it (entries Redis
        // delivered meanwhile stay pending for this consumer, or another takes them over).
        let mut shutdown = self.shutdown.clone();
        let reply: Option<Vec<(String, Vec<RawEntry>)>> = tokio::select! {
            reply = command.query_async(&mut self.connection) => reply?,
            () = shutdown.wait() => None,
        };
        let mut batch = reply.unwrap_or_default();
        // Handle streams in the configured order: events before requests.
        batch.sort_by_key(|(stream, _)| self.config.streams.iter().position(|s| s == stream));
        Ok(batch)
    }
}

/// The `run_id` of the Redis server: it changes each time the server starts.
async fn run_id(connection: &mut Connection) -> RedisResult<String> {
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query_async(connection)
        .await?;
    Ok(info
        .lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .unwrap_or_default()
        .trim()
        .to_owned())
}

/// Acknowledges an entry that needs no change (an event the service does not use).
pub async fn acknowledge(
    connection: &mut Connection,
    group: &str,
    delivery: &Delivery,
) -> RedisResult<Outcome> {
    let _: u64 = connection
        .xack(&delivery.stream, group, &[&delivery.id])
        .await?;
    Ok(Outcome::Done)
}

/// Whether `group` has applied every entry of `stream` up to and including `position`, an id
/// of that same stream (ids of different streams are not comparable: each stream's run ahead of
/// the clock after the clock stepped back or an explicit-id `XADD`).
pub async fn applied_up_to(
    connection: &mut Connection,
    stream: &str,
    group: &str,
    position: &str,
) -> RedisResult<bool> {
    let last: StreamRangeReply = connection.xrevrange_count(stream, position, "-", 1).await?;
    let Some(last) = last.ids.first() else {
        return Ok(true);
    };
    let groups: StreamInfoGroupsReply = connection.xinfo_groups(stream).await?;
    let Some(info) = groups.groups.iter().find(|info| info.name == group) else {
        return Ok(false);
    };
    if compare_ids(&info.last_delivered_id, &last.id).is_lt() {
        return Ok(false);
    }
    let pending: StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg(&last.id)
        .arg(1)
        .query_async(connection)
        .await?;
    Ok(pending.ids.is_empty())
}

/// Orders stream ids (`<ms>-<seq>`) numerically.
pub fn compare_ids(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(id: &str) -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    }
    parts(a).cmp(&parts(b))
}

/// The next delay of a capped, jittered exponential backoff.
#[derive(Debug)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    current: Duration,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff {
            first,
            cap,
            current: first,
        }
    }

    pub fn reset(&mut self) {
        self.current = self.first;
    }

    /// Between half and all of the current delay, which then doubles up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.current;
        self.current = (self.current * 2).min(self.cap);
        delay / 2 + delay.mul_f64(random_fraction() / 2.0)
    }
}

/// A number in [0, 1) that differs from call to call (for jitter, not for secrets).
fn random_fraction() -> f64 {
    use std::hash::{BuildHasher, RandomState};
    let bits = RandomState::new().hash_one(std::time::SystemTime::now());
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_compare_as_numbers() {
        assert!(compare_ids("9-0", "10-0").is_lt());
        assert!(compare_ids("10-2", "10-10").is_lt());
        assert!(compare_ids("10-2", "10-2").is_eq());
    }

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let delays: Vec<Duration> = (0..6).map(|_| backoff.next_delay()).collect();
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[5] >= Duration::from_millis(200) && delays[5] <= Duration::from_millis(400));
    }
}
