//! The consumer-group loop: own pending entries first, then new ones in batches, reconnection,
//! and a graceful stop. What is done with the entries read is in `process`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use redis::streams::StreamInfoGroupsReply;
use redis::{AsyncCommands, ErrorKind, RedisResult, Script};
use tracing::{debug, error, info, warn};

use super::backoff::Backoff;
use super::entry::{Delivery, RawEntry};
use super::groups::{ensure_group, run_id};
use super::handler::{Handler, Outcome};
use super::ids::{NEW_ENTRIES, OWN_PENDING};
use super::step::StepKeys;
use crate::connection::{Connection, Redis};
use crate::keyspace::Service;
use crate::metrics::Metrics;
use crate::shutdown::Shutdown;

/// Entries read per XREADGROUP call and per stream.
pub(super) const BATCH: usize = 100;
/// How long one blocking read waits; bounds how long a shutdown may go unnoticed.
const BLOCK: Duration = Duration::from_millis(500);
/// The block time while some entries wait for another try (see [`Outcome::Later`]).
const BLOCK_WHILE_DEFERRED: Duration = Duration::from_millis(10);
/// Commands of a service that do not block must answer within this or the connection is redone.
pub const SERVICE_RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a consumer's liveness key lives unless renewed: a consumer whose key is gone, and
/// that has not read for as long, is gone, and its entries are taken over at once.
pub(super) const ALIVE_FOR: Duration = Duration::from_secs(3);
/// How often a running consumer renews its liveness key.
const RENEW_ALIVE_EVERY: Duration = Duration::from_secs(1);
/// How often a consumer looks for consumers that are gone.
const LOOK_FOR_GONE_EVERY: Duration = Duration::from_secs(1);
/// The category of the error a service waits on when its group vanished while it ran.
const GROUP_VANISHED: &str = "group vanished";
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
    /// The events streams among `streams`, each with the one service that writes it: an event
    /// of a kind another service produces is dead-lettered, never applied.
    pub producers: Vec<(String, Service)>,
    /// The dead-letter stream and the attempts hash, for every step of the service.
    pub step_keys: StepKeys,
    /// Entries pending this long with another consumer are taken over.
    pub claim_idle: Duration,
    /// The prefix of the consumers' liveness keys (`<prefix><consumer>`).
    pub alive_prefix: String,
    /// Deliveries after which an entry that keeps failing is dead-lettered.
    pub max_deliveries: u64,
    /// Where to count what the consumer does (`serve --metrics`), if anywhere.
    pub metrics: Option<Arc<Metrics>>,
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
    let heartbeat = tokio::spawn(keep_alive(redis.clone(), config.clone(), shutdown.clone()));
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
                if let Some(metrics) = &config.metrics {
                    metrics.reconnect(&config.group);
                }
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
    let _ = heartbeat.await;
    leave_groups(redis, config).await;
    info!(service = %config.group, "stopped");
    Ok(())
}

/// Keeps this consumer's liveness key while the service runs, on a connection of its own and
/// apart from the consumer loop, so that a consumer busy with a slow step stays alive; deletes
/// it on a graceful stop. A consumer that is killed stops renewing it: it expires after
/// [`ALIVE_FOR`], and the others take over its entries (see `take_over_from_the_gone`).
async fn keep_alive(redis: Redis, config: ConsumerConfig, mut shutdown: Shutdown) {
    let key = format!("{}{}", config.alive_prefix, config.consumer);
    let mut connection = None;
    while !shutdown.requested() {
        if connection.is_none() {
            connection = redis.try_connect(Some(RENEW_ALIVE_EVERY)).await.ok();
        }
        if let Some(open) = connection.as_mut() {
            let renewed: RedisResult<()> = redis::cmd("SET")
                .arg(&key)
                .arg(std::process::id())
                .arg("PX")
                .arg(ALIVE_FOR.as_millis() as u64)
                .query_async(open)
                .await;
            if renewed.is_err() {
                // Redis trouble is reported by the consumer loop; try again on a new connection.
                connection = None;
            }
        }
        tokio::select! {
            () = tokio::time::sleep(RENEW_ALIVE_EVERY) => {}
            () = shutdown.wait() => {}
        }
    }
    if let Some(open) = connection.as_mut() {
        let _: RedisResult<()> = open.del(&key).await;
    }
}

/// Deletes this consumer from its groups (KEYS: the streams; ARGV[1]: group, ARGV[2]: consumer)
/// where it holds no pending entry, so stopped processes do not pile up in `blogctl status`.
/// One that still holds entries stays: they are its to resume, or another's to take over.
static LEAVE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/leave.lua")));

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

pub(super) struct Consumer<'a, H> {
    pub(super) config: &'a ConsumerConfig,
    pub(super) handler: &'a mut H,
    pub(super) connection: Connection,
    pub(super) shutdown: Shutdown,
    /// Entries that could not be decided yet ([`Outcome::Later`]), tried again after each read.
    pub(super) deferred: Vec<Delivery>,
    /// Tries counted so far of the redelivered entries in hand, by [`Consumer::try_field`].
    pub(super) counted: HashMap<String, u64>,
}

impl<H: Handler> Consumer<'_, H> {
    async fn run(
        &mut self,
        trouble: &mut Option<String>,
        backoff: &mut Backoff,
        served: &mut Option<String>,
    ) -> RedisResult<()> {
        self.ensure_groups(served).await?;
        if trouble.take().is_some() {
            info!(service = %self.config.group, "Redis is back; resuming");
        } else {
            info!(service = %self.config.group, consumer = %self.config.consumer, "started");
        }
        backoff.reset();
        self.resume_own_pending().await?;
        let claim_every = (self.config.claim_idle / 2).max(Duration::from_millis(100));
        let mut last_claim: Option<Instant> = None;
        let mut last_look: Option<Instant> = None;
        while !self.shutdown.requested() {
            if last_look.is_none_or(|at| at.elapsed() >= LOOK_FOR_GONE_EVERY) {
                self.take_over_from_the_gone().await?;
                self.measure_groups().await?;
                last_look = Some(Instant::now());
            }
            if last_claim.is_none_or(|at| at.elapsed() >= claim_every) {
                self.take_over_stuck().await?;
                last_claim = Some(Instant::now());
            }
            let deliveries = self.read_new().await?;
            let retry = std::mem::take(&mut self.deferred);
            let later = self.process_batch(deliveries).await?;
            self.deferred.extend(later);
            self.retry_deferred(retry).await?;
        }
        Ok(())
    }

    /// Makes sure the service's group exists on each stream. A restarted Redis (a new run_id)
    /// may have come back empty: its groups are made anew. On the server `served` names (the
    /// one the groups were made or found on), a group that vanished is refused.
    async fn ensure_groups(&mut self, served: &mut Option<String>) -> RedisResult<()> {
        let server = run_id(&mut self.connection, &self.config.streams[0]).await?;
        for stream in &self.config.streams {
            if served.as_deref() == Some(server.as_str()) {
                self.refuse_a_vanished_group(stream).await?;
            }
            ensure_group(&mut self.connection, stream, &self.config.group).await?;
        }
        *served = Some(server);
        Ok(())
    }

    /// Reads new entries from every stream, first deliveries; blocks only briefly while some
    /// entries wait for another try.
    async fn read_new(&mut self) -> RedisResult<Vec<Delivery>> {
        let block = if self.deferred.is_empty() {
            BLOCK
        } else {
            BLOCK_WHILE_DEFERRED
        };
        let ids = vec![NEW_ENTRIES; self.config.streams.len()];
        let batch = self.read(&ids, Some(block)).await?;
        Ok(batch
            .into_iter()
            .flat_map(|(stream, entries)| {
                entries
                    .into_iter()
                    .map(move |entry| Delivery::new(&stream, entry, 1))
            })
            .collect())
    }

    /// Tries again the entries that could not be decided before; those still undecided wait
    /// for the next turn. A shutdown leaves the rest pending.
    async fn retry_deferred(&mut self, retry: Vec<Delivery>) -> RedisResult<()> {
        for delivery in retry {
            if self.shutdown.requested() {
                break;
            }
            if self.process(&delivery).await? == Outcome::Later {
                self.deferred.push(delivery);
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
        let held = crate::output::count_of(length, "entry", "entries");
        Err(redis::RedisError::from((
            ErrorKind::Client,
            GROUP_VANISHED,
            format!(
                "group {group} vanished from {stream} while the service ran, and the stream \
                 holds {held}: not recreating it, which would apply them all again. \
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

    /// Sets the metrics' gauges of this service's groups: lag, pending, consumers.
    async fn measure_groups(&mut self) -> RedisResult<()> {
        let Some(metrics) = self.config.metrics.clone() else {
            return Ok(());
        };
        for stream in &self.config.streams {
            let groups: StreamInfoGroupsReply = self.connection.xinfo_groups(stream).await?;
            if let Some(group) = groups
                .groups
                .iter()
                .find(|group| group.name == self.config.group)
            {
                metrics.group(
                    &group.name,
                    stream,
                    group.lag.unwrap_or(0) as u64,
                    group.pending as u64,
                    group.consumers as u64,
                );
            }
        }
        Ok(())
    }

    /// One XREADGROUP over all the consumer's streams; `None` block means do not wait.
    pub(super) async fn read(
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
        // (A read of own pending entries names every stream, with or without entries.)
        if batch.iter().any(|(_, entries)| !entries.is_empty()) {
            crate::busy_poll::note_work();
        }
        // Handle streams in the configured order: events before requests.
        batch.sort_by_key(|(stream, _)| self.config.streams.iter().position(|s| s == stream));
        Ok(batch)
    }
}
