//! `blogctl status`: is anything stuck or behind? Per consumer group on the events streams and on
//! the inboxes: consumers, lag, pending entries and the age of the oldest, the last entry
//! delivered against the stream's last id, dead letters; each stream's length and memory.
//!
//! Every partition is read; the report sums each kind of stream over them (`--by-partition`:
//! each partition's own), while `--check` judges each partition's groups, so a problem names its
//! partition. `--check` turns it into a health check: exit code 6 when a group a service needs is
//! missing, lags too far or has an entry pending too long, or when a Redis Cluster does not serve
//! a partition's slot (the others are still read).

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use color_eyre::Result;
use color_eyre::eyre::WrapErr;
use redis::streams::{StreamInfoConsumersReply, StreamInfoGroupsReply, StreamPendingCountReply};
use redis::{AsyncCommands, Value};
use serde::Serialize;

use super::{
    ExpectedGroup, FIRST_ENTRY, LAST_ENTRY, expected_groups, page_through, slot_of,
    slot_unavailable,
};
use crate::bus::{DEAD_LETTERS_KEPT, StreamId, compare_ids};
use crate::cli::values::{self, ServiceChoice, parse_seconds};
use crate::connection::{Connection, eviction_problem, map_of};
use crate::context::Context;
use crate::error::{ExitCode, Failure};
use crate::keyspace::{Keys, Partition, Partitions, Service};
use crate::output::{Table, count_of, human_bytes, human_duration, print_line};
use crate::services;

/// When Redis cannot tell a group's lag (entries were deleted after its last delivered entry),
/// the entries after it are counted, up to this many.
const LAG_COUNT_LIMIT: u64 = 100_000;
/// Dead letters are counted per service only while there are at most this many.
const DEAD_SCAN_LIMIT: u64 = 10_000;

/// Arguments of `blogctl status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Exit with code 6, one line per problem on stderr, when a group a service needs is
    /// missing, lags more than --max-lag or has an entry pending longer than --max-pending-age.
    #[arg(long)]
    pub check: bool,
    /// Most entries a group may have left to read before --check calls it unhealthy.
    #[arg(long, default_value_t = 1000)]
    pub max_lag: u64,
    /// Seconds an entry may stay pending (delivered, not acknowledged) before --check calls
    /// the group unhealthy.
    #[arg(long, default_value = "60", value_parser = parse_seconds)]
    pub max_pending_age: Duration,
    /// Only the groups of this service (repeatable; `all` for every one): a per-service health
    /// check, as in docker-compose.yml.
    #[arg(long, value_enum)]
    pub service: Vec<ServiceChoice>,
    /// One row per stream of each partition, and the dead letters of each, instead of each kind
    /// of stream summed over the partitions (with one partition, the rows are the same).
    #[arg(long)]
    pub by_partition: bool,
}

/// The whole report, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The namespace's partition count.
    pub partitions: u32,
    /// One per stream of each partition with one partition or `--by-partition`; else one per
    /// kind of stream, summed over the partitions.
    pub streams: Vec<StreamStatus>,
    /// Every partition's dead letters, summed (with one partition, its own).
    pub dead_letters: DeadLetters,
    /// With `--by-partition`: the dead letters of each partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letters_by_partition: Option<Vec<DeadLetters>>,
    /// The partitions that could not be read (a Redis Cluster slot no master serves).
    pub unserved: Vec<Unserved>,
    /// What is wrong with Redis's `maxmemory-policy` (anything but `noeviction`), if anything.
    pub eviction: Option<String>,
    /// The one events stream of an earlier version, when one is left with entries nothing
    /// reads any more.
    pub earlier_log: Option<String>,
    /// What `--check` would complain about, with the thresholds given.
    pub problems: Vec<String>,
}

/// One stream read by consumer groups.
#[derive(Debug, Serialize)]
pub struct StreamStatus {
    /// Its key; a pattern (`{<ns>.*}`) for a row summing every partition.
    pub stream: String,
    /// Its partition; null for a row summing every partition.
    pub partition: Option<u32>,
    pub exists: bool,
    pub length: u64,
    pub memory_bytes: Option<u64>,
    /// The last id the stream generated (it stays even when that entry is deleted).
    pub last_id: Option<String>,
    pub groups: Vec<GroupStatus>,
}

/// One consumer group of a stream.
#[derive(Debug, Clone, Serialize)]
pub struct GroupStatus {
    pub group: String,
    /// Whether a service reads this stream with this group.
    pub expected: bool,
    /// The group does not exist: its service never ran against this Redis and namespace.
    pub missing: bool,
    /// Entries not delivered to the group yet.
    pub lag: Option<u64>,
    /// False when Redis could not tell the lag and more than the counting limit were left.
    pub lag_exact: bool,
    /// Entries delivered to a consumer and not acknowledged yet.
    pub pending: u64,
    pub oldest_pending_id: Option<String>,
    /// In a row summing every partition: the partition of the oldest pending entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_pending_partition: Option<u32>,
    /// In a row summing every partition: those where the group is missing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_in: Vec<u32>,
    /// Time since the oldest pending entry was (last) delivered.
    pub oldest_pending_age_ms: Option<u64>,
    pub last_delivered_id: Option<String>,
    /// Dead letters this group's service made from this stream (when cheap to count).
    pub dead_letters: Option<u64>,
    pub consumers: Vec<ConsumerStatus>,
}

/// One consumer of a group.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerStatus {
    pub name: String,
    pub idle_ms: u64,
    pub pending: u64,
    /// Whether its liveness key is there: a running consumer renews it every second.
    pub alive: bool,
}

/// The dead-letter stream.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetters {
    /// Its key; a pattern for the sum over every partition.
    pub stream: String,
    /// Its partition; null for the sum over every partition.
    pub partition: Option<u32>,
    pub count: u64,
    pub memory_bytes: Option<u64>,
    /// Dead letters per service, when there are few enough to count.
    pub by_service: Option<BTreeMap<String, u64>>,
}

impl GroupStatus {
    fn missing(group: &str) -> GroupStatus {
        GroupStatus {
            group: group.to_owned(),
            expected: true,
            missing: true,
            lag: None,
            lag_exact: true,
            pending: 0,
            oldest_pending_id: None,
            oldest_pending_partition: None,
            missing_in: Vec::new(),
            oldest_pending_age_ms: None,
            last_delivered_id: None,
            dead_letters: None,
            consumers: Vec::new(),
        }
    }

    /// The first id the group may still need: its oldest pending entry, or the one after the
    /// last delivered when nothing is pending. `None` for a missing group.
    pub fn first_needed(&self) -> Option<String> {
        if let Some(pending) = &self.oldest_pending_id {
            return Some(pending.clone());
        }
        let last = self.last_delivered_id.as_deref()?;
        StreamId::parse(last, true).map(|id| id.next().to_string())
    }
}

pub async fn run(context: &Context, args: &StatusArgs) -> Result<()> {
    let mut connection = context.connect().await?;
    // None chosen: all of them.
    let services: Vec<&str> = values::chosen(&args.service)
        .into_iter()
        .map(|service| service.name())
        .collect();
    let gathered = gather(&mut connection, context, &services).await?;
    let problems = problems(&gathered, args.max_lag, args.max_pending_age);
    let mut status = present(&context.keys, gathered, args.by_partition);
    status.problems = problems;
    if context.json {
        print_line(&serde_json::to_string(&status)?)?;
    } else {
        print_human(&status)?;
    }
    if !args.check {
        for problem in status.eviction.iter().chain(&status.earlier_log) {
            eprintln!("blogctl: warning: {problem}");
        }
    }
    if args.check && !status.problems.is_empty() {
        for problem in &status.problems {
            eprintln!("blogctl: unhealthy: {problem}");
        }
        return Err(Failure::new(
            ExitCode::Unhealthy,
            format!(
                "status --check found {}",
                count_of(status.problems.len() as u64, "problem", "problems")
            ),
        )
        .into());
    }
    Ok(())
}

/// What was read, partition by partition, before it is summed for printing.
pub struct Gathered {
    pub partitions: Partitions,
    pub served: Vec<PartitionStatus>,
    pub unserved: Vec<Unserved>,
    pub eviction: Option<String>,
    pub earlier_log: Option<String>,
}

/// The streams and dead letters of one partition.
pub struct PartitionStatus {
    pub partition: Partition,
    pub streams: Vec<StreamStatus>,
    pub dead_letters: DeadLetters,
}

/// A partition that could not be read: on a Redis Cluster, no master serves its slot (or the
/// one that does cannot be reached).
#[derive(Debug, Clone, Serialize)]
pub struct Unserved {
    pub partition: u32,
    pub slot: u16,
    pub error: String,
}

/// Reads the state of every stream the services read, of their groups and of the dead letters,
/// partition by partition. `services`, when not empty, keeps only those services' groups (and
/// the streams they read). On a Redis Cluster, a partition whose slot is not served is set
/// aside, unless no partition can be read at all (then the error ends the command: exit 4).
async fn gather(
    connection: &mut Connection,
    context: &Context,
    services: &[&str],
) -> Result<Gathered> {
    let keys = &context.keys;
    let partitions = context.partitions(connection).await?;
    let expected = expected_groups(keys, partitions);
    let mut served = Vec::new();
    let mut unserved = Vec::new();
    let mut first_error = None;
    for partition in partitions.all() {
        let error = match gather_partition(connection, keys, partition, &expected, services).await {
            Ok(status) => {
                served.push(status);
                continue;
            }
            Err(error) => error,
        };
        let Some(refusal) = slot_unavailable(connection, &error) else {
            return Err(error);
        };
        unserved.push(Unserved {
            partition: partition.0,
            slot: slot_of(&keys.dead(partition)),
            error: refusal,
        });
        first_error.get_or_insert(error);
    }
    if let (true, Some(error)) = (served.is_empty(), first_error) {
        return Err(error);
    }
    let mut eviction = None;
    for status in &served {
        // Each master of a Cluster has its own policy: every partition's is asked.
        let key = keys.dead(status.partition);
        eviction = eviction.or(eviction_problem(connection, &key).await?);
    }
    Ok(Gathered {
        partitions,
        served,
        unserved,
        eviction,
        earlier_log: earlier_log(connection, keys).await?,
    })
}

/// The streams of one partition and their groups, with that partition's dead letters.
async fn gather_partition(
    connection: &mut Connection,
    keys: &Keys,
    partition: Partition,
    expected: &[ExpectedGroup],
    services: &[&str],
) -> Result<PartitionStatus> {
    let wanted = |group: &str| services.is_empty() || services.contains(&group);
    let dead = dead_letters(connection, &keys.dead(partition), partition).await?;
    let mut streams = Vec::new();
    for kind in StreamKind::all(keys) {
        let stream = kind.key(keys, partition);
        // Not even looked at: a service's health check runs as its Redis user, which may read
        // only the streams it reads with its group.
        let read_by_wanted = expected
            .iter()
            .any(|group| group.stream == stream && wanted(&group.group));
        if !read_by_wanted && !services.is_empty() {
            continue;
        }
        let mut stream_status = inspect_stream(connection, &stream, expected).await?;
        stream_status.groups.retain(|group| wanted(&group.group));
        if stream_status.groups.is_empty() && !services.is_empty() {
            continue;
        }
        for group in &mut stream_status.groups {
            mark_alive(connection, keys, partition, group).await?;
            group.dead_letters = dead
                .per_stream
                .as_ref()
                .map(|counts| counts.get(&(stream.clone(), group.group.clone())))
                .map(|count| count.copied().unwrap_or(0));
        }
        streams.push(stream_status);
    }
    Ok(PartitionStatus {
        partition,
        streams,
        dead_letters: dead.summary,
    })
}

/// A stream the services read with groups, in any partition: an events stream or an inbox.
#[derive(Debug, Clone, Copy)]
enum StreamKind {
    Events(Service),
    Inbox(Service),
}

impl StreamKind {
    /// Every kind: the events streams (in [`Service::PRODUCERS`] order), then the inboxes.
    fn all(keys: &Keys) -> Vec<StreamKind> {
        let inboxes = Service::ALL.into_iter().filter(|&service| {
            services::streams(keys, service, Partition::FIRST)
                .1
                .is_some()
        });
        Service::PRODUCERS
            .into_iter()
            .map(StreamKind::Events)
            .chain(inboxes.map(StreamKind::Inbox))
            .collect()
    }

    fn key(self, keys: &Keys, partition: Partition) -> String {
        match self {
            StreamKind::Events(producer) => keys.events(producer, partition),
            StreamKind::Inbox(service) => keys.inbox(service, partition),
        }
    }

    /// The name of the stream in every partition, as a pattern.
    fn pattern(self, keys: &Keys) -> String {
        match self {
            StreamKind::Events(producer) => keys.events_pattern(producer),
            StreamKind::Inbox(service) => keys.inbox_pattern(service),
        }
    }
}

/// The shared events stream of versions before the one-stream-per-service split, if it holds
/// entries: what it says nobody reads now.
async fn earlier_log(connection: &mut Connection, keys: &Keys) -> Result<Option<String>> {
    let stream = keys.shared_events(Partition::FIRST);
    let length: u64 = connection.xlen(&stream).await?;
    Ok((length > 0).then(|| {
        format!(
            "{stream} holds {} written by an earlier blogctl, when every service wrote one \
             stream: no service reads it now (see \"Upgrading\" in the README)",
            count_of(length, "event", "events")
        )
    }))
}

/// Marks the consumers of a service's group whose liveness key is there.
async fn mark_alive(
    connection: &mut Connection,
    keys: &Keys,
    partition: Partition,
    group: &mut GroupStatus,
) -> Result<()> {
    let Some(service) = Service::ALL
        .into_iter()
        .find(|service| service.name() == group.group)
    else {
        return Ok(());
    };
    if group.consumers.is_empty() {
        return Ok(());
    }
    let prefix = keys.alive_prefix(service, partition);
    let mut pipe = redis::pipe();
    for consumer in &group.consumers {
        pipe.exists(format!("{prefix}{}", consumer.name));
    }
    let alive: Vec<bool> = pipe.query_async(connection).await?;
    for (consumer, alive) in group.consumers.iter_mut().zip(alive) {
        consumer.alive = alive;
    }
    Ok(())
}

/// The state of one stream and of its groups: those it has, and the `expected` ones it lacks.
pub async fn inspect_stream(
    connection: &mut Connection,
    stream: &str,
    expected: &[ExpectedGroup],
) -> Result<StreamStatus> {
    let kind: String = redis::cmd("TYPE")
        .arg(stream)
        .query_async(connection)
        .await
        .wrap_err_with(|| format!("reading the state of {stream}"))?;
    let mut groups: Vec<GroupStatus> = Vec::new();
    let mut status = StreamStatus {
        stream: stream.to_owned(),
        partition: expected
            .iter()
            .find(|group| group.stream == stream)
            .map(|group| group.partition.0),
        exists: kind != "none",
        length: 0,
        memory_bytes: None,
        last_id: None,
        groups: Vec::new(),
    };
    if status.exists {
        if kind != "stream" {
            return Err(Failure::new(
                ExitCode::InvalidInput,
                format!(
                    "{stream} is a {kind}, not a stream: is another program using this namespace?"
                ),
            )
            .into());
        }
        groups = read_stream_info(connection, stream, &mut status).await?;
    }
    for wanted in expected.iter().filter(|wanted| wanted.stream == stream) {
        match groups.iter_mut().find(|group| group.group == wanted.group) {
            Some(group) => group.expected = true,
            None => groups.push(GroupStatus::missing(&wanted.group)),
        }
    }
    groups.sort_by(|a, b| a.group.cmp(&b.group));
    status.groups = groups;
    Ok(status)
}

/// Fills in the length, last id and memory of an existing stream; returns the state of the
/// groups it has.
async fn read_stream_info(
    connection: &mut Connection,
    stream: &str,
    status: &mut StreamStatus,
) -> Result<Vec<GroupStatus>> {
    let context = || format!("reading the state of {stream}");
    let info: Value = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(stream)
        .query_async(connection)
        .await
        .wrap_err_with(context)?;
    let mut info = map_of(info);
    status.length = info
        .remove("length")
        .and_then(|value| redis::from_redis_value(value).ok())
        .unwrap_or(0);
    status.last_id = info
        .remove("last-generated-id")
        .and_then(|value| redis::from_redis_value(value).ok());
    status.memory_bytes = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(stream)
        .query_async(connection)
        .await
        .wrap_err_with(context)?;
    let infos: StreamInfoGroupsReply = connection
        .xinfo_groups(stream)
        .await
        .wrap_err_with(context)?;
    let mut groups = Vec::new();
    for info in infos.groups {
        groups.push(inspect_group(connection, stream, info).await?);
    }
    Ok(groups)
}

async fn inspect_group(
    connection: &mut Connection,
    stream: &str,
    info: redis::streams::StreamInfoGroup,
) -> Result<GroupStatus> {
    let context = || format!("reading group {} on {stream}", info.name);
    let (lag, lag_exact) = match info.lag {
        Some(lag) => (lag as u64, true),
        None => count_after(connection, stream, &info.last_delivered_id).await?,
    };
    let oldest: StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(stream)
        .arg(&info.name)
        .arg(FIRST_ENTRY)
        .arg(LAST_ENTRY)
        .arg(1)
        .query_async(connection)
        .await
        .wrap_err_with(context)?;
    let oldest = oldest.ids.into_iter().next();
    let consumers: StreamInfoConsumersReply = connection
        .xinfo_consumers(stream, &info.name)
        .await
        .wrap_err_with(context)?;
    Ok(GroupStatus {
        group: info.name.clone(),
        expected: false,
        missing: false,
        lag: Some(lag),
        lag_exact,
        pending: info.pending as u64,
        oldest_pending_id: oldest.as_ref().map(|entry| entry.id.clone()),
        oldest_pending_partition: None,
        missing_in: Vec::new(),
        oldest_pending_age_ms: oldest.map(|entry| entry.last_delivered_ms as u64),
        last_delivered_id: Some(info.last_delivered_id.clone()),
        dead_letters: None,
        consumers: consumers
            .consumers
            .into_iter()
            .map(|consumer| ConsumerStatus {
                name: consumer.name,
                idle_ms: consumer.idle as u64,
                pending: consumer.pending as u64,
                alive: false,
            })
            .collect(),
    })
}

/// Entries after `last_delivered`, counted up to [`LAG_COUNT_LIMIT`]; true when exact.
async fn count_after(
    connection: &mut Connection,
    stream: &str,
    last_delivered: &str,
) -> Result<(u64, bool)> {
    let mut count = 0u64;
    page_through(
        connection,
        stream,
        &format!("({last_delivered}"),
        LAST_ENTRY,
        |page| {
            count += page.len() as u64;
            Ok(count < LAG_COUNT_LIMIT)
        },
    )
    .await
    .wrap_err_with(|| format!("counting the entries of {stream} after {last_delivered}"))?;
    Ok((count.min(LAG_COUNT_LIMIT), count < LAG_COUNT_LIMIT))
}

/// The dead letters, counted per service and per (stream, service) when cheap.
struct DeadCounts {
    summary: DeadLetters,
    per_stream: Option<BTreeMap<(String, String), u64>>,
}

async fn dead_letters(
    connection: &mut Connection,
    dead: &str,
    partition: Partition,
) -> Result<DeadCounts> {
    let context = || format!("reading the dead letters in {dead}");
    let count: u64 = connection.xlen(dead).await.wrap_err_with(context)?;
    let memory_bytes: Option<u64> = redis::cmd("MEMORY")
        .arg("USAGE")
        .arg(dead)
        .query_async(connection)
        .await
        .wrap_err_with(context)?;
    let mut by_service = BTreeMap::new();
    let mut per_stream = BTreeMap::new();
    let counted = count <= DEAD_SCAN_LIMIT;
    if counted {
        page_through(connection, dead, FIRST_ENTRY, LAST_ENTRY, |page| {
            for entry in page {
                let service = entry.field("service").unwrap_or("?").to_owned();
                let stream = entry.field("stream").unwrap_or("?").to_owned();
                *by_service.entry(service.clone()).or_insert(0) += 1;
                *per_stream.entry((stream, service)).or_insert(0) += 1;
            }
            Ok(true)
        })
        .await
        .wrap_err_with(context)?;
    }
    Ok(DeadCounts {
        summary: DeadLetters {
            stream: dead.to_owned(),
            partition: Some(partition.0),
            count,
            memory_bytes,
            by_service: counted.then_some(by_service),
        },
        per_stream: counted.then_some(per_stream),
    })
}

/// What `--check` complains about, one line each; with several partitions, each line about
/// one partition starts with `partition <p>: `.
pub fn problems(gathered: &Gathered, max_lag: u64, max_pending_age: Duration) -> Vec<String> {
    let mut problems: Vec<String> = gathered.eviction.iter().cloned().collect();
    problems.extend(gathered.earlier_log.iter().cloned());
    let several = gathered.partitions.count() > 1;
    for unserved in &gathered.unserved {
        problems.push(format!(
            "partition {}: Redis Cluster slot {} is not served (no master serves it, or the one \
             that does cannot be reached), so nothing of the partition can be read or written: \
             {}",
            unserved.partition, unserved.slot, unserved.error
        ));
    }
    for partition in &gathered.served {
        let prefix = if several {
            format!("partition {}: ", partition.partition)
        } else {
            String::new()
        };
        problems.extend(
            partition_problems(partition, max_lag, max_pending_age)
                .into_iter()
                .map(|problem| format!("{prefix}{problem}")),
        );
    }
    problems
}

/// The problems of one partition: its dead letters nearly full, its groups.
fn partition_problems(
    partition: &PartitionStatus,
    max_lag: u64,
    max_pending_age: Duration,
) -> Vec<String> {
    let mut problems = Vec::new();
    let dead = &partition.dead_letters;
    if dead.count >= DEAD_LETTERS_KEPT / 10 * 8 {
        problems.push(format!(
            "{} holds {} of the about {DEAD_LETTERS_KEPT} it keeps: the oldest will be dropped; \
             look at them (`blogctl dead list`), then retry or drop them",
            dead.stream,
            count_of(dead.count, "dead letter", "dead letters")
        ));
    }
    for stream in &partition.streams {
        for group in &stream.groups {
            group_problems(
                &stream.stream,
                group,
                max_lag,
                max_pending_age,
                &mut problems,
            );
        }
    }
    problems
}

/// The problems of one group: missing, no consumer alive while entries wait, lagging, stuck.
fn group_problems(
    stream: &str,
    group: &GroupStatus,
    max_lag: u64,
    max_pending_age: Duration,
    problems: &mut Vec<String>,
) {
    let name = format!("group {} on {stream}", group.group);
    if group.missing {
        problems.push(format!(
            "{name} is missing: start the service once (`blogctl serve {}`)",
            group.group
        ));
        return;
    }
    let waiting = group.lag.unwrap_or(0) + group.pending;
    if waiting > 0 && !group.consumers.iter().any(|consumer| consumer.alive) {
        problems.push(format!(
            "no consumer of {name} is alive, and {} wait: start the service \
             (`blogctl serve {}`)",
            count_of(waiting, "entry", "entries"),
            group.group
        ));
    }
    if let Some(lag) = group.lag.filter(|lag| *lag > max_lag) {
        let at_least = if group.lag_exact { "" } else { "at least " };
        problems.push(format!(
            "{name} lags {at_least}{} (more than --max-lag {max_lag})",
            count_of(lag, "entry", "entries")
        ));
    }
    if let Some(age) = group
        .oldest_pending_age_ms
        .filter(|age| *age as u128 > max_pending_age.as_millis())
    {
        problems.push(format!(
            "{name} has had entry {} pending for {} (longer than --max-pending-age {}s)",
            group.oldest_pending_id.as_deref().unwrap_or("?"),
            human_duration(age),
            max_pending_age.as_secs_f64()
        ));
    }
}

/// The report as printed: with one partition or `by_partition`, every stream of every
/// partition; else each kind of stream summed over the partitions.
fn present(keys: &Keys, gathered: Gathered, by_partition: bool) -> Status {
    let Gathered {
        partitions,
        served,
        unserved,
        eviction,
        earlier_log,
    } = gathered;
    let dead: Vec<DeadLetters> = served
        .iter()
        .map(|partition| partition.dead_letters.clone())
        .collect();
    let dead_letters = if partitions.count() == 1 && dead.len() == 1 {
        dead[0].clone()
    } else {
        sum_dead_letters(keys, &dead)
    };
    let streams = if partitions.count() == 1 || by_partition {
        served
            .into_iter()
            .flat_map(|partition| partition.streams)
            .collect()
    } else {
        StreamKind::all(keys)
            .into_iter()
            .filter_map(|kind| sum_streams(keys, kind, &served))
            .collect()
    };
    Status {
        partitions: partitions.count(),
        streams,
        dead_letters,
        dead_letters_by_partition: by_partition.then_some(dead),
        unserved,
        eviction,
        earlier_log,
        problems: Vec::new(),
    }
}

/// The dead letters of every partition read, as one.
fn sum_dead_letters(keys: &Keys, dead: &[DeadLetters]) -> DeadLetters {
    let mut by_service = Some(BTreeMap::new());
    for counts in dead.iter().map(|dead| dead.by_service.as_ref()) {
        by_service = match (by_service, counts) {
            (Some(mut sum), Some(counts)) => {
                for (service, count) in counts {
                    *sum.entry(service.clone()).or_insert(0) += count;
                }
                Some(sum)
            }
            _ => None,
        };
    }
    DeadLetters {
        stream: keys.dead_pattern(),
        partition: None,
        count: dead.iter().map(|dead| dead.count).sum(),
        memory_bytes: dead
            .iter()
            .filter_map(|dead| dead.memory_bytes)
            .reduce(|a, b| a + b),
        by_service,
    }
}

/// One kind of stream summed over the partitions read: lengths, lags, pending entries and dead
/// letters added up, the oldest pending entry and the latest ids kept. `None` when no partition
/// shows it (a `--service` that does not read it).
fn sum_streams(keys: &Keys, kind: StreamKind, served: &[PartitionStatus]) -> Option<StreamStatus> {
    let parts: Vec<(u32, &StreamStatus)> = served
        .iter()
        .flat_map(|partition| {
            let key = kind.key(keys, partition.partition);
            partition
                .streams
                .iter()
                .filter(move |stream| stream.stream == key)
                .map(|stream| (partition.partition.0, stream))
        })
        .collect();
    let (_, first) = parts.first()?;
    let mut sum = StreamStatus {
        stream: kind.pattern(keys),
        partition: None,
        exists: parts.iter().any(|(_, stream)| stream.exists),
        length: parts.iter().map(|(_, stream)| stream.length).sum(),
        memory_bytes: parts
            .iter()
            .filter_map(|(_, stream)| stream.memory_bytes)
            .reduce(|a, b| a + b),
        last_id: latest(parts.iter().map(|(_, stream)| stream.last_id.as_deref())),
        groups: Vec::new(),
    };
    for name in first.groups.iter().map(|group| &group.group) {
        let groups: Vec<(u32, &GroupStatus)> = parts
            .iter()
            .filter_map(|(partition, stream)| {
                let group = stream.groups.iter().find(|group| group.group == *name)?;
                Some((*partition, group))
            })
            .collect();
        sum.groups.push(sum_group(&groups));
    }
    Some(sum)
}

/// The greatest of some stream ids.
fn latest<'a>(ids: impl Iterator<Item = Option<&'a str>>) -> Option<String> {
    ids.flatten()
        .max_by(|a, b| compare_ids(a, b))
        .map(str::to_owned)
}

/// One group summed over the partitions it is read in.
fn sum_group(groups: &[(u32, &GroupStatus)]) -> GroupStatus {
    let (_, first) = groups[0];
    let present: Vec<&GroupStatus> = groups
        .iter()
        .map(|(_, group)| *group)
        .filter(|group| !group.missing)
        .collect();
    let oldest = groups
        .iter()
        .filter(|(_, group)| group.oldest_pending_age_ms.is_some())
        .max_by_key(|(_, group)| group.oldest_pending_age_ms);
    let lags: Option<Vec<u64>> = present.iter().map(|group| group.lag).collect();
    GroupStatus {
        group: first.group.clone(),
        expected: groups.iter().any(|(_, group)| group.expected),
        missing: present.len() < groups.len(),
        lag: lags
            .filter(|_| !present.is_empty())
            .map(|lags| lags.iter().sum()),
        lag_exact: present.iter().all(|group| group.lag_exact),
        pending: present.iter().map(|group| group.pending).sum(),
        oldest_pending_id: oldest.and_then(|(_, group)| group.oldest_pending_id.clone()),
        oldest_pending_partition: oldest.map(|(partition, _)| *partition),
        missing_in: groups
            .iter()
            .filter(|(_, group)| group.missing)
            .map(|(partition, _)| *partition)
            .collect(),
        oldest_pending_age_ms: oldest.and_then(|(_, group)| group.oldest_pending_age_ms),
        last_delivered_id: latest(
            present
                .iter()
                .map(|group| group.last_delivered_id.as_deref()),
        ),
        dead_letters: groups
            .iter()
            .map(|(_, group)| group.dead_letters)
            .sum::<Option<u64>>(),
        consumers: sum_consumers(&present),
    }
}

/// The consumers of a group in every partition, by name: each partition has its own, named
/// after their `serve` process. Pending entries add up; the shortest idle time is kept; alive
/// only when alive in every partition it consumes.
fn sum_consumers(groups: &[&GroupStatus]) -> Vec<ConsumerStatus> {
    let mut consumers: Vec<ConsumerStatus> = Vec::new();
    for consumer in groups.iter().flat_map(|group| &group.consumers) {
        match consumers.iter_mut().find(|seen| seen.name == consumer.name) {
            Some(seen) => {
                seen.idle_ms = seen.idle_ms.min(consumer.idle_ms);
                seen.pending += consumer.pending;
                seen.alive &= consumer.alive;
            }
            None => consumers.push(consumer.clone()),
        }
    }
    consumers
}

fn print_human(status: &Status) -> std::io::Result<()> {
    for (index, stream) in status.streams.iter().enumerate() {
        if index > 0 {
            print_line("")?;
        }
        print_stream(stream)?;
    }
    print_line("")?;
    print_dead_letters(&status.dead_letters)?;
    for dead in status.dead_letters_by_partition.iter().flatten() {
        print_dead_letters(dead)?;
    }
    for unserved in &status.unserved {
        print_line(&format!(
            "partition {} (Redis Cluster slot {}): NOT SERVED, not read: {}",
            unserved.partition, unserved.slot, unserved.error
        ))?;
    }
    Ok(())
}

/// Prints one stream's line, then the table of its groups.
fn print_stream(stream: &StreamStatus) -> std::io::Result<()> {
    if stream.exists {
        print_line(&format!(
            "{}  {}  {}  last id {}",
            stream.stream,
            count_of(stream.length, "entry", "entries"),
            stream.memory_bytes.map_or("-".to_owned(), human_bytes),
            stream.last_id.as_deref().unwrap_or("-"),
        ))?;
    } else {
        print_line(&format!("{}  (no such stream yet)", stream.stream))?;
    }
    let mut table = Table::new(&[
        "GROUP",
        "LAG",
        "PENDING",
        "OLDEST PENDING",
        "LAST DELIVERED",
        "DEAD",
        "CONSUMERS",
    ]);
    for group in &stream.groups {
        table.row(group_row(group));
    }
    table.print("  ")
}

/// The cells of one group's row in the table of its stream.
fn group_row(group: &GroupStatus) -> Vec<String> {
    if group.missing && group.lag.is_none() {
        return vec![
            group.group.clone(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "MISSING (its service never ran here)".into(),
        ];
    }
    let mut name = group.group.clone();
    if !group.expected {
        name.push_str(" (not a service)");
    }
    if !group.missing_in.is_empty() {
        let partitions: Vec<String> = group.missing_in.iter().map(u32::to_string).collect();
        name.push_str(&format!(
            " (MISSING in partitions {})",
            partitions.join(", ")
        ));
    }
    let lag = match (group.lag, group.lag_exact) {
        (Some(lag), true) => lag.to_string(),
        (Some(lag), false) => format!(">={lag}"),
        (None, _) => "?".to_owned(),
    };
    vec![
        name,
        lag,
        group.pending.to_string(),
        group
            .oldest_pending_age_ms
            .map_or("-".to_owned(), human_duration),
        group
            .last_delivered_id
            .clone()
            .unwrap_or_else(|| "-".into()),
        group
            .dead_letters
            .map_or("?".to_owned(), |count| count.to_string()),
        consumers_cell(group),
    ]
}

/// The group's consumers, each with its idle time and pending count, or `none`.
fn consumers_cell(group: &GroupStatus) -> String {
    let consumers: Vec<String> = group
        .consumers
        .iter()
        .map(|consumer| {
            format!(
                "{} (idle {}, {} pending{})",
                consumer.name,
                human_duration(consumer.idle_ms),
                consumer.pending,
                if consumer.alive { "" } else { ", gone" }
            )
        })
        .collect();
    if consumers.is_empty() {
        "none".to_owned()
    } else {
        consumers.join(", ")
    }
}

/// Prints the dead letters stream's line: its count, and per service when counted.
fn print_dead_letters(dead: &DeadLetters) -> std::io::Result<()> {
    let by_service = dead.by_service.as_ref().map_or(String::new(), |counts| {
        let counts: Vec<String> = counts
            .iter()
            .map(|(service, count)| format!("{service} {count}"))
            .collect();
        if counts.is_empty() {
            String::new()
        } else {
            format!("  ({})", counts.join(", "))
        }
    });
    print_line(&format!(
        "{}  {}{by_service}",
        dead.stream,
        count_of(dead.count, "dead letter", "dead letters")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str) -> GroupStatus {
        GroupStatus {
            expected: true,
            missing: false,
            lag: Some(0),
            last_delivered_id: Some("5-1".into()),
            consumers: vec![ConsumerStatus {
                name: "c".into(),
                idle_ms: 0,
                pending: 0,
                alive: true,
            }],
            ..GroupStatus::missing(name)
        }
    }

    #[test]
    fn a_group_needs_its_oldest_pending_entry_or_the_one_after_its_last() {
        assert_eq!(group("query").first_needed().as_deref(), Some("5-2"));
        let pending = GroupStatus {
            oldest_pending_id: Some("3-0".into()),
            ..group("query")
        };
        assert_eq!(pending.first_needed().as_deref(), Some("3-0"));
        assert_eq!(GroupStatus::missing("query").first_needed(), None);
    }

    fn dead(count: u64) -> DeadLetters {
        DeadLetters {
            stream: "d".into(),
            partition: Some(0),
            count,
            memory_bytes: None,
            by_service: None,
        }
    }

    fn stream(groups: Vec<GroupStatus>) -> StreamStatus {
        StreamStatus {
            stream: "s".into(),
            partition: Some(0),
            exists: true,
            length: 9,
            memory_bytes: None,
            last_id: None,
            groups,
        }
    }

    fn gathered(partitions: u32, served: Vec<PartitionStatus>) -> Gathered {
        Gathered {
            partitions: Partitions::new(partitions).unwrap(),
            served,
            unserved: Vec::new(),
            eviction: None,
            earlier_log: None,
        }
    }

    #[test]
    fn check_reports_missing_lagging_and_stuck_groups() {
        let partition = |dead_count| PartitionStatus {
            partition: Partition::FIRST,
            streams: vec![stream(vec![
                GroupStatus::missing("query"),
                GroupStatus {
                    lag: Some(11),
                    ..group("comments")
                },
                GroupStatus {
                    oldest_pending_id: Some("1-0".into()),
                    oldest_pending_age_ms: Some(61_000),
                    ..group("moderation")
                },
                group("fine"),
                GroupStatus {
                    lag: Some(1),
                    consumers: Vec::new(),
                    ..group("posts")
                },
            ])],
            dead_letters: dead(dead_count),
        };
        let status = gathered(1, vec![partition(0)]);
        let problems = problems(&status, 10, Duration::from_secs(60));
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("query") && problems[0].contains("missing"));
        assert!(problems[1].contains("lags 11 entries"));
        assert!(problems[2].contains("pending for 1m01s"));
        assert!(problems[3].contains("no consumer of group posts on s is alive, and 1 entry wait"));
        assert!(super::problems(&status, 100, Duration::from_secs(120)).len() == 2);
        let nearly_full = gathered(1, vec![partition(90_000)]);
        let problems = super::problems(&nearly_full, 100, Duration::from_secs(120));
        assert!(
            problems
                .iter()
                .any(|p| p.contains("holds 90000 dead letters")),
            "{problems:?}"
        );
        let mut third = partition(0);
        third.partition = Partition(3);
        let two = gathered(8, vec![partition(0), third]);
        let problems = super::problems(&two, 100, Duration::from_secs(120));
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].starts_with("partition 0: group query on s is missing"));
        assert!(problems[3].starts_with("partition 3: no consumer of group posts"));
    }

    #[test]
    fn groups_are_summed_over_the_partitions() {
        let old = GroupStatus {
            lag: Some(2),
            pending: 1,
            oldest_pending_id: Some("1-0".into()),
            oldest_pending_age_ms: Some(5000),
            last_delivered_id: Some("9-0".into()),
            dead_letters: Some(1),
            ..group("query")
        };
        let summed = sum_group(&[
            (0, &group("query")),
            (3, &old),
            (5, &GroupStatus::missing("query")),
        ]);
        assert_eq!(summed.lag, Some(2));
        assert_eq!(summed.pending, 1);
        assert_eq!(summed.oldest_pending_partition, Some(3));
        assert_eq!(summed.oldest_pending_id.as_deref(), Some("1-0"));
        assert_eq!(summed.last_delivered_id.as_deref(), Some("9-0"));
        assert!(summed.missing);
        assert_eq!(summed.missing_in, [5]);
        assert_eq!(summed.dead_letters, None, "not counted in partition 5");
        assert_eq!(summed.consumers.len(), 1);
        assert!(group_row(&summed)[0].contains("MISSING in partitions 5"));
        let keys = Keys::new("blog").unwrap();
        let sum = sum_dead_letters(&keys, &[dead(2), dead(3)]);
        assert_eq!((sum.count, sum.stream.as_str()), (5, "blog:dead:*"));
    }
}
