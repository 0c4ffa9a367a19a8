//! Commands from the client to a service, through the service's inbox, and their replies.
//!
//! The client adds a request to `<ns>:<service>:{<ns>.0}:inbox` and waits (BLPOP) on the reply
//! key named by the request's `reply_to`, a UUID it picks, so that both go in one round trip.
//! The service answers in the same atomic step that
//! applies the request. When the client gives up, it creates the reply key itself (SET NX): the
//! service checks for that key first, so a request its client gave up on is never applied. If
//! the SET fails, the answer got there first and the client reads it.
//!
//! The request is added by a script that stamps it, from Redis's own state at that instant,
//! with its deadline (`TIME` plus the timeout) and the id of the last entry of the posts' events
//! stream (`after`, see [`STAMPED_FROM`]). A request past its deadline is dropped unapplied, and "unknown post" waits until
//! the service has applied the events up to `after`. Neither compares the ids of different
//! streams with each other or with the clock: a stream's ids run ahead of the clock after the
//! clock stepped back, a failover or an explicit-id `XADD`. Every answer a service gives (found,
//! not found, invalid) is remembered for 24 hours, so a retry with the same id returns the
//! first answer instead of applying twice.

use std::sync::LazyLock;
use std::time::Duration;

use color_eyre::eyre::WrapErr;
use redis::AsyncCommands;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::bus::{Delivery, Step, StepKeys, StepScript};
use crate::connection::Connection;
use crate::error::{ExitCode, Failure, Malformed, is_refusal, is_unavailable};
use crate::keyspace::{Keys, Partition, Service};

/// The service whose events stream every request is stamped with the position of (`after`):
/// the one answer that depends on events, "unknown post" to a `CreateComment`, waits for the
/// comments service to have applied the posts' stream up to there.
pub const STAMPED_FROM: Service = Service::Posts;

/// Version of the request envelope: 3 since `after` names a position of the posts' stream
/// (earlier, of the one stream every service wrote), so a request of an earlier client is
/// dead-lettered rather than compared with the wrong stream.
const REQUEST_VERSION: &str = "3";
/// How long an answer waits in its reply key for the client to read it.
const REPLY_TTL_MS: u64 = 60_000;
/// How long the client's "gave up" mark stays; older requests are dropped by age anyway.
const GAVE_UP_TTL_MS: u64 = 3_600_000;
/// The longest a request may wait (the client's `--timeout` is at most a day): a deadline
/// further ahead of Redis's clock, written by hand, counts as past.
const MAX_TIMEOUT_MS: u64 = 86_400_000 + 60_000;
/// How long a service remembers the answer to a request id, for retries with `--request-id`.
pub const ANSWER_MEMORY_MS: u64 = 86_400_000;
/// Longest request id accepted.
const MAX_REQUEST_ID_CHARS: usize = 128;
/// Longest `reply_to` accepted (the client sends a UUID).
const MAX_REPLY_TO_CHARS: usize = 64;

/// Adds a request to an inbox, stamped with its deadline and the posts' stream's position.
/// Returns the entry id. Sent whole with each request (see [`call`]), without its comments:
/// Redis hashes the text of every `EVAL` it runs (twice, in Redis 7.0).
static ENQUEUE: LazyLock<String> = LazyLock::new(|| {
    include_str!("lua/enqueue.lua")
        .lines()
        .filter(|line| !line.starts_with("--"))
        .map(|line| format!("{line}\n"))
        .collect()
});

/// `drop()`, `answer()` and `remember()`, for every request step.
const HELPERS: &str = include_str!("lua/helpers.lua");

/// Every request step's `check()` and `apply()`: a request given up on, past its deadline or
/// answered before is settled without the body's `check_request()` and `apply_request()`.
const LAYER: &str = include_str!("lua/layer.lua");

/// Answers without changing anything (invalid input, unknown post).
const ANSWER_ONLY: &str = include_str!("lua/answer_only.lua");

/// The keys and arguments of every request step, before the body's own: the reply key, where
/// the answer to the request id is remembered; the request's deadline (Redis time, ms) and
/// fingerprint ([`Incoming::fingerprint`]).
const KEYS: [&str; 2] = ["reply", "remembered"];
const ARGS: [&str; 2] = ["deadline", "fingerprint"];

/// A script for one request step: `parts` define `check_request()` (reads; a reply to leave
/// the request pending, or nil) and `apply_request()` (writes, after the claim), and use the
/// names `keys` and `args` after every request step's.
pub fn request_script(keys: &[&'static str], args: &[&'static str], parts: &[&str]) -> StepScript {
    let constants = format!(
        "local REPLY_TTL_MS = {REPLY_TTL_MS}\nlocal ANSWER_MEMORY_MS = {ANSWER_MEMORY_MS}\n\
         local MAX_TIMEOUT_MS = {MAX_TIMEOUT_MS}\n"
    );
    let mut lua = vec![constants.as_str(), HELPERS];
    lua.extend_from_slice(parts);
    lua.push(LAYER);
    StepScript::new(
        &[&KEYS[..], keys].concat(),
        &[&ARGS[..], args].concat(),
        &lua,
    )
}

/// The answer to a request, as JSON in the reply key.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Reply<T> {
    Ok { value: T },
    NotFound { message: String },
    Invalid { message: String },
}

impl<T: Serialize> Reply<T> {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("replies serialize")
    }
}

/// A request as the service reads it from its inbox.
#[derive(Debug)]
pub struct Incoming {
    pub request_id: String,
    /// Names the reply key; requests without one are answered under their entry id.
    pub reply_to: Option<String>,
    /// When the request expires, by Redis's clock (`TIME`), in milliseconds.
    pub deadline_ms: u64,
    /// The id of the last entry of the posts' events stream when the request was added: every
    /// post the client could have seen created before sending it is at or before this id on
    /// that stream (ids of other streams are not comparable with it).
    pub after: String,
    pub command: String,
    pub data: String,
}

impl Incoming {
    /// Reads the request envelope; the error is the reason to dead-letter it.
    pub fn parse(delivery: &Delivery) -> Result<Incoming, Malformed> {
        let version = delivery.field("version")?;
        if version != REQUEST_VERSION {
            return Err(Malformed(format!(
                "request version {version:?} is not supported"
            )));
        }
        let deadline_ms = delivery.field("deadline_ms")?;
        let after = delivery.field("after")?;
        if !is_stream_id(after) {
            return Err(Malformed(format!("after {after:?} is not a stream id")));
        }
        let reply_to = match delivery.optional_field("reply_to")? {
            Some(name) => {
                let valid = !name.is_empty()
                    && name.len() <= MAX_REPLY_TO_CHARS
                    && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
                if !valid {
                    return Err(Malformed(format!("reply_to {name:?} is not a UUID")));
                }
                Some(name.to_owned())
            }
            None => None,
        };
        Ok(Incoming {
            reply_to,
            request_id: service_request_id(delivery.field("request_id")?)?,
            deadline_ms: deadline_ms
                .parse()
                .map_err(|_| Malformed(format!("deadline_ms {deadline_ms:?} is not a number")))?,
            after: after.to_owned(),
            command: delivery.field("command")?.to_owned(),
            data: delivery.field("data")?.to_owned(),
        })
    }

    /// What makes two requests the same request: its command and data, hashed (FNV-1a, 64
    /// bits, as hex). A retry must send the same; another request under a used id is refused.
    pub fn fingerprint(&self) -> String {
        let bytes = self.command.bytes().chain([0]).chain(self.data.bytes());
        format!("{:016x}", crate::keyspace::fnv1a(bytes))
    }

    /// The command's data, or the reason to dead-letter the request.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Malformed> {
        serde_json::from_str(&self.data)
            .map_err(|error| Malformed(format!("{} data is invalid: {error}", self.command)))
    }
}

/// Where a service keeps what a request step touches besides its own keys.
#[derive(Debug, Clone)]
pub struct Inbox {
    pub keys: Keys,
    pub service: Service,
    pub partition: Partition,
    pub step_keys: StepKeys,
}

static ANSWER_ONLY_SCRIPT: LazyLock<StepScript> =
    LazyLock::new(|| request_script(&[], &["response"], &[ANSWER_ONLY]));

impl Inbox {
    pub fn new(keys: &Keys, service: Service, partition: Partition) -> Inbox {
        Inbox {
            keys: keys.clone(),
            service,
            partition,
            step_keys: StepKeys::new(keys, service, partition),
        }
    }

    /// A request step with the preludes' keys and arguments filled in.
    pub fn step(
        &self,
        script: &'static StepScript,
        delivery: &Delivery,
        request: &Incoming,
    ) -> Step {
        Step::new(script, &self.step_keys, delivery, &request.request_id)
            .key(
                "reply",
                match &request.reply_to {
                    Some(reply_to) => self.keys.reply(self.partition, reply_to),
                    // Entry ids of two inboxes may be equal: the service tells them apart.
                    None => self
                        .keys
                        .reply(self.partition, &format!("{}-{}", self.service, delivery.id)),
                },
            )
            .key(
                "remembered",
                self.keys
                    .answer(self.service, self.partition, &request.request_id),
            )
            .arg("deadline", request.deadline_ms)
            .arg("fingerprint", request.fingerprint())
    }

    /// A step that answers a request and changes nothing (invalid input, unknown post).
    pub fn answer<T: Serialize>(
        &self,
        delivery: &Delivery,
        request: &Incoming,
        reply: &Reply<T>,
    ) -> Step {
        self.step(&ANSWER_ONLY_SCRIPT, delivery, request)
            .arg("response", reply.to_json())
    }
}

enum AnswerError {
    /// The request itself was refused: nothing was sent.
    Sending(redis::RedisError),
    Redis(redis::RedisError),
    /// No answer in time, and the request is now marked given up: it will never be applied.
    GaveUp,
}

impl From<redis::RedisError> for AnswerError {
    fn from(error: redis::RedisError) -> Self {
        AnswerError::Redis(error)
    }
}

/// Sends `request` and waits up to `timeout` for its answer in `reply_key`, both in one round
/// trip; `None` when no answer came in time. A request Redis refuses fails at once: its reply
/// comes before the wait's.
async fn send_and_wait(
    connection: &Connection,
    request: &redis::Cmd,
    reply_key: &str,
    timeout: Duration,
) -> Result<Option<String>, AnswerError> {
    let mut wait = redis::cmd("BLPOP");
    wait.arg(reply_key).arg(timeout.as_secs_f64());
    let (mut sending, mut waiting) = (connection.clone(), connection.clone());
    let sent = request.query_async::<String>(&mut sending);
    let answered = wait.query_async::<Option<(String, String)>>(&mut waiting);
    // Polled together, so both are written at once.
    tokio::pin!(sent, answered);
    let popped = tokio::select! {
        biased;
        sent_result = &mut sent => match sent_result {
            Ok(_) => answered.await.map_err(AnswerError::Redis),
            Err(error) => Err(AnswerError::Sending(error)),
        },
        answer = &mut answered => match sent.await {
            Ok(_) => answer.map_err(AnswerError::Redis),
            Err(error) => Err(AnswerError::Sending(error)),
        },
    };
    Ok(popped?.map(|(_, body)| body))
}

/// When no answer came in time, marks the request given up, unless the answer got there first.
async fn give_up(connection: &mut Connection, reply_key: &str) -> Result<String, AnswerError> {
    let gave_up: redis::RedisResult<Option<String>> = redis::cmd("SET")
        .arg(reply_key)
        .arg("abandoned")
        .arg("NX")
        .arg("PX")
        .arg(GAVE_UP_TTL_MS)
        .query_async(connection)
        .await;
    let gave_up = match gave_up {
        // Redis refuses writes (full, read-only): no mark, but the request carries its
        // deadline, past which the service drops it unapplied; and the wait ran out by Redis's
        // clock after the deadline was stamped (the `BLPOP` follows the request), so the
        // deadline has passed. An answer that got there first is read without writing.
        Err(error) if is_refusal(&error) => {
            let body: Option<String> = connection.lindex(reply_key, 0).await?;
            return body.ok_or(AnswerError::GaveUp);
        }
        gave_up => gave_up?,
    };
    if gave_up.is_some() {
        return Err(AnswerError::GaveUp);
    }
    // The answer arrived between the timeout and the mark: the request was applied.
    let body: Option<String> = connection.lpop(reply_key, None).await?;
    body.ok_or(AnswerError::GaveUp)
}

/// A request id as the service accepts it: the client's own rule, checked again, since anyone
/// who can write the inbox can write anything (a megabyte-long id would become a key name).
fn service_request_id(id: &str) -> Result<String, Malformed> {
    request_id(Some(id)).map_err(|_| {
        Malformed(format!(
            "request_id of {} bytes: use 1 to {MAX_REQUEST_ID_CHARS} printable ASCII characters",
            id.len()
        ))
    })
}

/// Whether `text` is a stream id, `<ms>-<seq>`.
fn is_stream_id(text: &str) -> bool {
    let digits = |part: &str| {
        !part.is_empty() && part.len() <= 20 && part.bytes().all(|b| b.is_ascii_digit())
    };
    text.split_once('-')
        .is_some_and(|(ms, seq)| digits(ms) && digits(seq))
}

/// A request id given by the user (`--request-id`), checked, or a new one.
pub fn request_id(given: Option<&str>) -> Result<String, Failure> {
    match given {
        None => Ok(uuid::Uuid::now_v7().to_string()),
        Some(id) => {
            let valid = !id.is_empty()
                && id.chars().count() <= MAX_REQUEST_ID_CHARS
                && id.chars().all(|c| c.is_ascii_graphic());
            if valid {
                Ok(id.to_owned())
            } else {
                Err(Failure::invalid(format!(
                    "invalid --request-id {id:?}: use 1 to {MAX_REQUEST_ID_CHARS} printable ASCII characters"
                )))
            }
        }
    }
}

/// Where a request goes: a service's inbox in one partition.
#[derive(Debug, Clone, Copy)]
pub struct Recipient {
    pub service: Service,
    pub partition: Partition,
}

/// Sends a command to a service's inbox and waits for the answer until `deadline`.
///
/// Exit code 5 when the service does not answer in time; the request is then never applied.
pub async fn call<C: Serialize, T: DeserializeOwned>(
    connection: &mut Connection,
    keys: &Keys,
    Recipient { service, partition }: Recipient,
    command: &str,
    data: &C,
    request_id: &str,
    timeout: Duration,
) -> color_eyre::Result<T> {
    crate::busy_poll::note_work();
    let data = serde_json::to_string(data)?;
    let inbox = keys.inbox(service, partition);
    let reply_to = uuid::Uuid::now_v7().to_string();
    let reply_key = keys.reply(partition, &reply_to);
    // EVAL, not EVALSHA: the wait goes in the same round trip, and would block the connection
    // for the whole timeout behind a NOSCRIPT error.
    let mut send = redis::cmd("EVAL");
    send.arg(ENQUEUE.as_str())
        .arg(2)
        .arg(&inbox)
        .arg(keys.events(STAMPED_FROM, partition))
        .arg(timeout.as_millis() as u64)
        .arg("version")
        .arg(REQUEST_VERSION)
        .arg("request_id")
        .arg(request_id)
        .arg("reply_to")
        .arg(&reply_to)
        .arg("command")
        .arg(command)
        .arg("data")
        .arg(&data);
    let body = match send_or_give_up(connection, &send, &reply_key, timeout).await {
        Err(AnswerError::GaveUp) => {
            return Err(why_no_answer(connection, keys, service, partition, timeout)
                .await
                .into());
        }
        body => body,
    };
    let body = body.map_err(|error| match error {
        AnswerError::Sending(error) => {
            color_eyre::Report::new(error).wrap_err(format!("sending {command} to {inbox}"))
        }
        // Sent, but the answer is lost with the connection: the request may yet be applied.
        AnswerError::Redis(error) if is_unavailable(&error) => Failure::new(
            ExitCode::RedisUnreachable,
            format!(
                "lost Redis while waiting for the {service} service's answer ({error}); the \
                 request may still be applied: run the same command with --request-id \
                 {request_id} to get its answer without applying it twice"
            ),
        )
        .into(),
        AnswerError::Redis(error) => color_eyre::Report::new(error).wrap_err(format!(
            "waiting for the {service} service's answer on {reply_key}"
        )),
        AnswerError::GaveUp => Failure::service_timeout(service.name(), "answer", timeout).into(),
    })?;
    read_reply(service, &body)
}

/// Sends `request` and waits up to `timeout` for its answer; with none in time, gives up on
/// the request (see [`give_up`]).
async fn send_or_give_up(
    connection: &mut Connection,
    request: &redis::Cmd,
    reply_key: &str,
    timeout: Duration,
) -> Result<String, AnswerError> {
    match send_and_wait(connection, request, reply_key, timeout).await? {
        Some(body) => Ok(body),
        None => give_up(connection, reply_key).await,
    }
}

/// Why a service did not answer in time (its request is now given up, never to be applied),
/// when Redis can tell: it refuses writes, so the service's step cannot run (exit code 4,
/// naming the cause and the fix); or no consumer of the service is alive (exit code 5, saying
/// how to start it). Otherwise the service is running but did not answer in time (exit code 5).
async fn why_no_answer(
    connection: &mut Connection,
    keys: &Keys,
    service: Service,
    partition: Partition,
    timeout: Duration,
) -> Failure {
    let late = format!(
        "the {service} service did not answer within {:.1}s",
        timeout.as_secs_f64()
    );
    let never = "the request will never be applied";
    let inbox = keys.inbox(service, partition);
    if let Ok(Some(refusal)) = redis_refusal(connection, &inbox).await {
        return Failure::new(
            ExitCode::RedisUnreachable,
            format!("{late}: {refusal}; {never}"),
        );
    }
    match alive_consumers(connection, keys, service, partition).await {
        Ok(0) => Failure::new(
            ExitCode::ServiceTimeout,
            format!(
                "{late}: no consumer of it is alive; start it with `blogctl serve {service}` \
                 (same --redis-url and --namespace); {never}"
            ),
        ),
        Ok(_) => Failure::new(
            ExitCode::ServiceTimeout,
            format!("{late}: it is running, but busy or slow; {never} (try a longer --timeout)"),
        ),
        Err(_) => Failure::service_timeout(service.name(), "answer", timeout),
    }
}

/// Why Redis refuses writes, if it does: full, a read-only replica, or loading.
async fn redis_refusal(
    connection: &mut Connection,
    key: &str,
) -> redis::RedisResult<Option<&'static str>> {
    let info = connection
        .info(key, &["memory", "replication", "persistence"])
        .await?;
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    let number = |name: &str| field(name).and_then(|value| value.parse::<u64>().ok());
    let full = matches!((number("used_memory"), number("maxmemory")),
        (Some(used), Some(max)) if max > 0 && used >= max);
    Ok(if full {
        Some(
            "Redis is full (maxmemory reached), so the service cannot apply it: free memory or raise maxmemory",
        )
    } else if field("role") == Some("slave") {
        Some("Redis is a read-only replica: point --redis-url at the primary")
    } else if field("loading") == Some("1") {
        Some("Redis is still loading its data: try again in a moment")
    } else {
        None
    })
}

/// How many consumers of `service`'s inbox group have their liveness key.
async fn alive_consumers(
    connection: &mut Connection,
    keys: &Keys,
    service: Service,
    partition: Partition,
) -> redis::RedisResult<usize> {
    let inbox = keys.inbox(service, partition);
    let consumers: redis::RedisResult<redis::streams::StreamInfoConsumersReply> =
        connection.xinfo_consumers(&inbox, service.name()).await;
    let Ok(consumers) = consumers else {
        // No group yet: the service never ran here.
        return Ok(0);
    };
    let prefix = keys.alive_prefix(service, partition);
    let mut alive = 0;
    for consumer in consumers.consumers {
        let exists: bool = connection
            .exists(format!("{prefix}{}", consumer.name))
            .await?;
        alive += usize::from(exists);
    }
    Ok(alive)
}

/// The value of a service's answer; exit code 3 or 2 when it found nothing or refused the
/// input.
fn read_reply<T: DeserializeOwned>(service: Service, body: &str) -> color_eyre::Result<T> {
    let reply: Reply<T> = serde_json::from_str(body)
        .wrap_err_with(|| format!("reading the {service} service's answer {body:?}"))?;
    match reply {
        Reply::Ok { value } => Ok(value),
        Reply::NotFound { message } => Err(Failure::not_found(message).into()),
        Reply::Invalid { message } => Err(Failure::invalid(message).into()),
    }
}
