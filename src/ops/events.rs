//! `blogctl events list|tail`: what happened, one line per event (`--json`: NDJSON for jq), the
//! events streams of every partition merged in id order.

use std::future::Future;
use std::time::Duration;

use clap::{Args, Subcommand};
use color_eyre::Result;
use color_eyre::eyre::WrapErr;
use serde::Serialize;

use super::{Entry, FIRST_ENTRY, LAST_ENTRY, MergedStreams, RawEntry, in_partition};
use crate::bus::{FOR_SERVICE, StreamId, compare_ids};
use crate::connection::Connection;
use crate::context::Context;
use crate::error::Failure;
use crate::keyspace::{Keys, Partition, Partitions, Service};
use crate::output::{one_line, print_line};

/// How long one XREAD of `events tail` blocks. Shorter than the connection's response timeout
/// (`--timeout` + 2 s, and `--timeout` may be tiny), so an idle stream is not taken for a lost
/// Redis.
const TAIL_BLOCK: Duration = Duration::from_millis(1000);
/// Entries read per XREAD call of `events tail`.
const TAIL_BATCH: usize = 500;
/// How far ahead of Redis's clock (on a Cluster, of the earliest master's) an entry's id may be
/// and still wait for the clock before `events tail` prints it: the masters' clocks may differ
/// by that much. Ids further ahead were given by hand, and are printed at once.
const CLOCK_AHEAD: Duration = Duration::from_millis(1000);
/// How long `events tail` pauses when it holds back every entry it read.
const HELD_BACK_PAUSE: Duration = Duration::from_millis(2);
/// XREAD from the very start of a stream (when it has no entry yet).
const BEFORE_ANY_ENTRY: &str = "0-0";

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List events, oldest first (the services' streams merged by id), one line each: id,
    /// stream, type, producer, request id, data.
    #[command(
        after_help = r#"Example: blogctl events list --type CommentModerated --json | jq -r .data.status"#
    )]
    List(ListArgs),
    /// Print new events as they arrive, like `tail -f`, until SIGINT or SIGTERM.
    #[command(after_help = r#"Example: blogctl events tail --type PostCreated"#)]
    Tail(TailArgs),
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Start at this entry id (`<ms>-<seq>`, or `<ms>` for the first entry of that millisecond)
    /// [default: the first entry].
    #[arg(long)]
    pub from: Option<String>,
    /// Print at most this many events (after --type filtering) [default: all].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Only events of this type (repeatable), e.g. PostCreated.
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// Only events of this type (repeatable), e.g. CommentUpdated.
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
}

pub async fn run(
    context: &Context,
    command: &EventsCommand,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    match command {
        EventsCommand::List(args) => list(context, args).await,
        EventsCommand::Tail(args) => tail(context, args, shutdown).await,
    }
}

async fn list(context: &Context, args: &ListArgs) -> Result<()> {
    let start = match args.from.as_deref() {
        None | Some(FIRST_ENTRY) => FIRST_ENTRY.to_owned(),
        Some(from) => StreamId::parse(from, true)
            .ok_or_else(|| {
                Failure::invalid(format!(
                    "--from {from:?} is not a stream id (<ms>-<seq>, <ms> or -)"
                ))
            })?
            .to_string(),
    };
    let mut connection = context.connect().await?;
    let partitions = context.partitions(&mut connection).await?;
    // The partitions' streams merged: entries of equal ids by partition, then producer.
    let mut log = MergedStreams::new(followed(&context.keys, partitions), &start);
    let mut left = args.count.unwrap_or(u64::MAX);
    while left > 0 {
        let Some((source, entry)) = log.next(&mut connection).await? else {
            break;
        };
        if wanted(&entry, &args.types) {
            print_event(source, &entry, context.json)?;
            left -= 1;
        }
    }
    Ok(())
}

/// Where an event was read: the producer whose stream holds it, and the partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Source {
    producer: Service,
    partition: Partition,
    partitions: Partitions,
}

/// Every events stream, partition by partition, in [`Service::PRODUCERS`] order within one.
fn followed(keys: &Keys, partitions: Partitions) -> Vec<(Source, String)> {
    partitions
        .all()
        .flat_map(|partition| {
            Service::PRODUCERS.into_iter().map(move |producer| {
                let source = Source {
                    producer,
                    partition,
                    partitions,
                };
                (source, keys.events(producer, partition))
            })
        })
        .collect()
}

async fn tail(
    context: &Context,
    args: &TailArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let mut connection = context.connect().await?;
    let partitions = context.partitions(&mut connection).await?;
    let mut streams = Vec::new();
    for (source, key) in followed(&context.keys, partitions) {
        let newest: Vec<RawEntry> = redis::cmd("XREVRANGE")
            .arg(&key)
            .arg(LAST_ENTRY)
            .arg(FIRST_ENTRY)
            .arg("COUNT")
            .arg(1)
            .query_async(&mut connection)
            .await
            .wrap_err_with(|| format!("reading {key}"))?;
        let after = newest
            .into_iter()
            .next()
            .map_or(BEFORE_ANY_ENTRY.to_owned(), |(id, _)| id);
        streams.push(Followed { source, key, after });
    }
    let mut follower = Follower::new(&connection, streams);
    tokio::pin!(shutdown);
    loop {
        // The stop signal is polled first, so it is registered before anything is printed.
        let entries = tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            read = follower.read_after(&mut connection) => {
                read.wrap_err("following the events streams")?
            }
        };
        for (index, entry) in entries {
            let stream = &mut follower.streams[index];
            if wanted(&entry, &args.types) {
                print_event(stream.source, &entry, context.json)?;
            }
            stream.after = entry.id;
        }
    }
}

/// A stream `events tail` follows, and the id of the last entry printed from it.
struct Followed {
    source: Source,
    key: String,
    after: String,
}

/// The streams `events tail` follows, and how: on a single Redis, one XREAD reads them all at
/// once; on a Cluster, one XREAD per partition (its streams share a slot).
struct Follower {
    streams: Vec<Followed>,
    /// The indexes of the streams each XREAD reads.
    groups: Vec<Vec<usize>>,
    /// On a Cluster: the group whose XREAD waits next (they take turns).
    turn: usize,
    /// The greatest id the last read held back, if any.
    held: Option<String>,
}

impl Follower {
    fn new(connection: &Connection, streams: Vec<Followed>) -> Follower {
        let groups = match connection {
            Connection::Single(_) => vec![(0..streams.len()).collect()],
            Connection::Cluster(_) => {
                let mut groups: Vec<Vec<usize>> = Vec::new();
                for (index, stream) in streams.iter().enumerate() {
                    match groups.last_mut() {
                        Some(group)
                            if streams[group[0]].source.partition == stream.source.partition =>
                        {
                            group.push(index);
                        }
                        _ => groups.push(vec![index]),
                    }
                }
                groups
            }
        };
        Follower {
            streams,
            groups,
            turn: 0,
            held: None,
        }
    }

    /// Entries after each stream's `after`, merged in id order, waiting up to [`TAIL_BLOCK`]
    /// for some to arrive; each with the index of its stream. Each stream's cursor moves only
    /// past what is returned.
    async fn read_after(
        &mut self,
        connection: &mut Connection,
    ) -> redis::RedisResult<Vec<(usize, Entry)>> {
        // The time first: an entry added while the streams are read gets an id from then on.
        let clock_ms = self.clock(connection).await?;
        // A blocked XREAD is woken with the entries of the stream that got some, not of all:
        // it only waits; what is printed comes from a read of every stream.
        let mut batches = self.read_all(connection).await?;
        if batches.is_empty() {
            self.wait(connection).await?;
            return Ok(Vec::new());
        }
        // A stream that filled its batch may hold more before another's entries: only what is
        // up to the smallest last id of the full batches is in order; the rest is read again.
        let mut limit: Option<String> = None;
        let mut entries: Vec<(usize, Entry)> = Vec::new();
        for (index, batch) in batches.drain(..) {
            if batch.len() >= TAIL_BATCH
                && let Some((last, _)) = batch.last()
            {
                limit = Some(earliest(limit, last.clone()));
            }
            entries.extend(batch.into_iter().map(|raw| (index, Entry::from_raw(raw))));
        }
        let release = self.release(limit, clock_ms, &entries);
        entries.retain(|(_, entry)| compare_ids(&entry.id, &release).is_le());
        if entries.is_empty() {
            // All held back until the clock passes them: read again in a moment.
            tokio::time::sleep(HELD_BACK_PAUSE).await;
        }
        // Stable: entries of equal ids keep the streams' order.
        entries.sort_by(|(_, a), (_, b)| compare_ids(&a.id, &b.id));
        Ok(entries)
    }

    /// The time of Redis (on a Cluster, the earliest of the partitions' masters' clocks), in
    /// milliseconds, taken before the streams are read: an entry added after it gets an id of
    /// this millisecond or later, so every entry of an earlier one is in the read that follows.
    async fn clock(&self, connection: &mut Connection) -> redis::RedisResult<u64> {
        let cluster = match connection {
            Connection::Single(single) => {
                let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(single).await?;
                return Ok(seconds * 1000 + micros / 1000);
            }
            Connection::Cluster(cluster) => cluster,
        };
        let mut earliest_ms = u64::MAX;
        for group in &self.groups {
            use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
            let route = Route::with_key(&self.streams[group[0]].key, SlotAddr::Master);
            let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
            let reply = cluster.route_command(redis::cmd("TIME"), routing).await?;
            let (seconds, micros): (u64, u64) = redis::from_redis_value(reply)?;
            earliest_ms = earliest_ms.min(seconds * 1000 + micros / 1000);
        }
        Ok(earliest_ms)
    }

    /// The last id to print now: every entry of a millisecond before `clock_ms` (they are all
    /// read), within `limit`; what is later is held back and read again. Entries held back
    /// that are more than [`CLOCK_AHEAD`] ahead of the clock (ids given by hand, not by Redis)
    /// are printed by the next read, not held until the clock reaches them.
    fn release(
        &mut self,
        limit: Option<String>,
        clock_ms: u64,
        entries: &[(usize, Entry)],
    ) -> String {
        let mut release = format!("{}-{}", clock_ms.saturating_sub(1), u64::MAX);
        if let Some(held) = self.held.take()
            && StreamId::parse(&held, false)
                .is_some_and(|id| id.ms > clock_ms + CLOCK_AHEAD.as_millis() as u64)
        {
            release = held;
        }
        if let Some(limit) = limit {
            release = earliest(Some(release), limit);
        }
        self.held = entries
            .iter()
            .map(|(_, entry)| &entry.id)
            .filter(|id| compare_ids(id, &release).is_gt())
            .max_by(|a, b| compare_ids(a, b))
            .cloned();
        release
    }

    /// One read, without waiting, of every stream after its cursor: the batches that have
    /// entries, with their stream's index.
    async fn read_all(
        &self,
        connection: &mut Connection,
    ) -> redis::RedisResult<Vec<(usize, Vec<RawEntry>)>> {
        let mut batches = Vec::new();
        for group in &self.groups {
            for (key, batch) in self
                .xread(connection, group, None)
                .await?
                .into_iter()
                .flatten()
            {
                if let Some(&index) = group.iter().find(|&&index| self.streams[index].key == key) {
                    batches.push((index, batch));
                }
            }
        }
        Ok(batches)
    }

    /// Waits up to [`TAIL_BLOCK`] for an entry after the cursors. On a Cluster one XREAD may
    /// only wait on one partition: they take turns, and an entry of another partition is seen
    /// by the read of every stream that follows the wait. Shorter turns would see it sooner at
    /// the cost of two commands per partition a turn.
    async fn wait(&mut self, connection: &mut Connection) -> redis::RedisResult<()> {
        let group = self.groups[self.turn % self.groups.len()].clone();
        self.turn += 1;
        self.xread(connection, &group, Some(TAIL_BLOCK)).await?;
        Ok(())
    }

    /// One XREAD of the streams `group` after their cursors, waiting up to `block` if given.
    async fn xread(
        &self,
        connection: &mut Connection,
        group: &[usize],
        block: Option<Duration>,
    ) -> redis::RedisResult<Option<Vec<(String, Vec<RawEntry>)>>> {
        let mut read = redis::cmd("XREAD");
        read.arg("COUNT").arg(TAIL_BATCH);
        if let Some(block) = block {
            read.arg("BLOCK").arg(block.as_millis() as u64);
        }
        let streams: Vec<&Followed> = group.iter().map(|&index| &self.streams[index]).collect();
        read.arg("STREAMS")
            .arg(streams.iter().map(|s| &s.key).collect::<Vec<_>>())
            .arg(streams.iter().map(|s| &s.after).collect::<Vec<_>>())
            .query_async(connection)
            .await
    }
}

/// The smaller of two ids (the second when there is no first).
fn earliest(first: Option<String>, second: String) -> String {
    match first {
        Some(first) if compare_ids(&first, &second).is_lt() => first,
        _ => second,
    }
}

fn wanted(entry: &Entry, types: &[String]) -> bool {
    types.is_empty()
        || entry
            .field("type")
            .is_some_and(|kind| types.iter().any(|wanted| wanted == kind))
}

/// One event as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct EventLine<'a> {
    /// The service whose events stream holds it.
    pub stream: &'static str,
    /// The partition of that stream.
    pub partition: u32,
    pub id: &'a str,
    #[serde(rename = "type")]
    pub kind: Option<&'a str>,
    pub version: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub producer: Option<&'a str>,
    /// `data` parsed as JSON, or the raw text when it is not JSON.
    pub data: serde_json::Value,
    /// Set on entries `blogctl dead retry` put back for one service.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub for_service: Option<&'a str>,
}

impl<'a> EventLine<'a> {
    pub fn new(stream: Service, partition: Partition, entry: &'a Entry) -> EventLine<'a> {
        let data = entry.field("data").map_or(serde_json::Value::Null, |data| {
            serde_json::from_str(data)
                .unwrap_or_else(|_| serde_json::Value::String(data.to_owned()))
        });
        EventLine {
            stream: stream.name(),
            partition: partition.0,
            id: &entry.id,
            kind: entry.field("type"),
            version: entry.field("version"),
            request_id: entry.field("request_id"),
            producer: entry.field("producer"),
            data,
            for_service: entry.field(FOR_SERVICE),
        }
    }
}

/// Prints one event; in columns, its stream is `<partition>/<producer>` with several
/// partitions.
fn print_event(source: Source, entry: &Entry, json: bool) -> std::io::Result<()> {
    let line = EventLine::new(source.producer, source.partition, entry);
    // `moderation`, and `255/moderation` with partitions.
    let width = if source.partitions.count() == 1 {
        10
    } else {
        14
    };
    if json {
        let text = serde_json::to_string(&line).map_err(std::io::Error::other)?;
        return print_line(&text);
    }
    let mut text = format!(
        "{}  {:<width$}  {:<16}  {:<10}  {}  {}",
        line.id,
        in_partition(source.partitions, source.partition, line.stream),
        line.kind.unwrap_or("-"),
        line.producer.unwrap_or("-"),
        line.request_id.unwrap_or("-"),
        one_line(entry.field("data").unwrap_or("-")),
    );
    if let Some(service) = line.for_service {
        text.push_str(&format!("  [for {service} only]"));
    }
    print_line(&text)
}
