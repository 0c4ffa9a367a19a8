//! Reading, from Redis, the state of the streams the services read: their length and memory,
//! their groups (lag, pending entries, consumers and whether each is alive) and the dead
//! letters, partition by partition; a partition a Redis Cluster does not serve is set aside.

use std::collections::BTreeMap;

use color_eyre::Result;
use color_eyre::eyre::WrapErr;
use redis::streams::{StreamInfoConsumersReply, StreamInfoGroupsReply, StreamPendingCountReply};
use redis::{AsyncCommands, Value};

use super::{
    ConsumerStatus, DeadLetters, Gathered, GroupStatus, PartitionStatus, StreamKind, StreamStatus,
    Unserved,
};
use crate::connection::{Connection, eviction_problem, map_of};
use crate::context::Context;
use crate::error::{ExitCode, Failure};
use crate::keyspace::{Keys, Partition, Service};
use crate::ops::{
    ExpectedGroup, FIRST_ENTRY, LAST_ENTRY, expected_groups, page_through, slot_of,
    slot_unavailable,
};
use crate::output::count_of;

/// When Redis cannot tell a group's lag (entries were deleted after its last delivered entry),
/// the entries after it are counted, up to this many.
const LAG_COUNT_LIMIT: u64 = 100_000;
/// Dead letters are counted per service only while there are at most this many.
const DEAD_SCAN_LIMIT: u64 = 10_000;

/// Reads the state of every stream the services read, of their groups and of the dead letters,
/// partition by partition. `services`, when not empty, keeps only those services' groups (and
/// the streams they read). On a Redis Cluster, a partition whose slot is not served is set
/// aside, unless no partition can be read at all (then the error ends the command: exit 4).
pub(super) async fn gather(
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
