//! `blogctl status`: is anything stuck or behind? Per consumer group on the events streams and on
//! the inboxes: consumers, lag, pending entries and the age of the oldest, the last entry
//! delivered against the stream's last id, dead letters; each stream's length and memory.
//!
//! `--check` turns it into a health check: exit code 6 when a group a service needs is missing,
//! lags too far or has an entry pending too long.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use color_eyre::Result;
use color_eyre::eyre::WrapErr;
use redis::streams::{StreamInfoConsumersReply, StreamInfoGroupsReply, StreamPendingCountReply};
use redis::{AsyncCommands, Value};
use serde::Serialize;

use super::{ExpectedGroup, FIRST_ENTRY, LAST_ENTRY, expected_groups, page_through, read_streams};
use crate::bus::{DEAD_LETTERS_KEPT, StreamId};
use crate::cli::values::{self, ServiceChoice, parse_seconds};
use crate::connection::{Connection, eviction_problem, map_of};
use crate::context::Context;
use crate::error::{ExitCode, Failure};
use crate::keyspace::{Keys, Partition, Service};
use crate::output::{Table, count_of, human_bytes, human_duration, print_line};

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
}

/// The whole report, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Status {
    pub streams: Vec<StreamStatus>,
    pub dead_letters: DeadLetters,
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
    pub stream: String,
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
#[derive(Debug, Serialize)]
pub struct DeadLetters {
    pub stream: String,
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
    let mut status = gather(&mut connection, context, &services).await?;
    status.problems = problems(&status, args.max_lag, args.max_pending_age);
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

/// Reads the state of every stream the services read, of their groups and of the dead letters.
/// `services`, when not empty, keeps only those services' groups (and the streams they read).
async fn gather(
    connection: &mut Connection,
    context: &Context,
    services: &[&str],
) -> Result<Status> {
    let keys = &context.keys;
    let partitions = context.partitions(connection).await?;
    let expected = expected_groups(keys, partitions);
    let wanted = |group: &str| services.is_empty() || services.contains(&group);
    let dead = dead_letters(connection, &keys.dead(Partition::FIRST)).await?;
    let mut streams = Vec::new();
    for stream in read_streams(keys, partitions) {
        // Not even looked at: a service's health check runs as its Redis user, which may read
        // only the streams it reads with its group.
        let read_by_wanted = expected
            .iter()
            .any(|group| group.stream == stream && wanted(&group.group));
        if !read_by_wanted && !services.is_empty() {
            continue;
        }
        let mut stream_status = inspect_stream(connection, &stream, &expected).await?;
        stream_status.groups.retain(|group| wanted(&group.group));
        if stream_status.groups.is_empty() && !services.is_empty() {
            continue;
        }
        for group in &mut stream_status.groups {
            mark_alive(connection, keys, group).await?;
            group.dead_letters = dead
                .per_stream
                .as_ref()
                .map(|counts| counts.get(&(stream.clone(), group.group.clone())))
                .map(|count| count.copied().unwrap_or(0));
        }
        streams.push(stream_status);
    }
    Ok(Status {
        streams,
        dead_letters: dead.summary,
        eviction: eviction_problem(connection, &keys.dead(Partition::FIRST)).await?,
        earlier_log: earlier_log(connection, keys).await?,
        problems: Vec::new(),
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
    let prefix = keys.alive_prefix(service, Partition::FIRST);
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

async fn dead_letters(connection: &mut Connection, dead: &str) -> Result<DeadCounts> {
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
            count,
            memory_bytes,
            by_service: counted.then_some(by_service),
        },
        per_stream: counted.then_some(per_stream),
    })
}

/// What `--check` complains about, one line each.
pub fn problems(status: &Status, max_lag: u64, max_pending_age: Duration) -> Vec<String> {
    let mut problems: Vec<String> = status.eviction.iter().cloned().collect();
    problems.extend(status.earlier_log.iter().cloned());
    if status.dead_letters.count >= DEAD_LETTERS_KEPT / 10 * 8 {
        problems.push(format!(
            "{} holds {} of the about {DEAD_LETTERS_KEPT} it keeps: the oldest will be dropped; \
             look at them (`blogctl dead list`), then retry or drop them",
            status.dead_letters.stream,
            count_of(status.dead_letters.count, "dead letter", "dead letters")
        ));
    }
    for stream in &status.streams {
        for group in &stream.groups {
            let name = format!("group {} on {}", group.group, stream.stream);
            if group.missing {
                problems.push(format!(
                    "{name} is missing: start the service once (`blogctl serve {}`)",
                    group.group
                ));
                continue;
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
    }
    problems
}

fn print_human(status: &Status) -> std::io::Result<()> {
    for (index, stream) in status.streams.iter().enumerate() {
        if index > 0 {
            print_line("")?;
        }
        print_stream(stream)?;
    }
    print_line("")?;
    print_dead_letters(&status.dead_letters)
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
    if group.missing {
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

    #[test]
    fn check_reports_missing_lagging_and_stuck_groups() {
        let status = Status {
            streams: vec![StreamStatus {
                stream: "s".into(),
                exists: true,
                length: 9,
                memory_bytes: None,
                last_id: None,
                groups: vec![
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
                ],
            }],
            dead_letters: DeadLetters {
                stream: "d".into(),
                count: 0,
                memory_bytes: None,
                by_service: None,
            },
            eviction: None,
            earlier_log: None,
            problems: Vec::new(),
        };
        let problems = problems(&status, 10, Duration::from_secs(60));
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("query") && problems[0].contains("missing"));
        assert!(problems[1].contains("lags 11 entries"));
        assert!(problems[2].contains("pending for 1m01s"));
        assert!(problems[3].contains("no consumer of group posts on s is alive, and 1 entry wait"));
        assert!(super::problems(&status, 100, Duration::from_secs(120)).len() == 2);
        let nearly_full = Status {
            dead_letters: DeadLetters {
                count: 90_000,
                ..status.dead_letters
            },
            ..status
        };
        let problems = super::problems(&nearly_full, 100, Duration::from_secs(120));
        assert!(
            problems
                .iter()
                .any(|p| p.contains("holds 90000 dead letters")),
            "{problems:?}"
        );
    }
}
