//! `blogctl events list|tail`: what happened, one line per event (`--json`: NDJSON for jq).

use std::collections::VecDeque;
use std::future::Future;
use std::time::Duration;

use clap::{Args, Subcommand};
use color_eyre::Result;
use color_eyre::eyre::WrapErr;
use serde::Serialize;

use super::{Entry, FIRST_ENTRY, LAST_ENTRY, PAGE, RawEntry, read_range};
use crate::bus::{FOR_SERVICE, StreamId, compare_ids};
use crate::connection::Connection;
use crate::context::Context;
use crate::error::Failure;
use crate::keyspace::{Keys, Partition, Service};
use crate::output::{one_line, print_line};

/// How long one XREAD of `events tail` blocks. Shorter than the connection's response timeout
/// (`--timeout` + 2 s, and `--timeout` may be tiny), so an idle stream is not taken for a lost
/// Redis.
const TAIL_BLOCK: Duration = Duration::from_millis(1000);
/// Entries read per XREAD call of `events tail`.
const TAIL_BATCH: usize = 500;
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
    let mut log = MergedLog::new(&context.keys, &start);
    let mut left = args.count.unwrap_or(u64::MAX);
    while left > 0 {
        let Some((producer, entry)) = log.next(&mut connection).await? else {
            break;
        };
        if wanted(&entry, &args.types) {
            print_event(producer, &entry, context.json)?;
            left -= 1;
        }
    }
    Ok(())
}

/// The events streams read as one log, a page of each at a time: their entries merged in id
/// order (entries of equal ids in [`Service::PRODUCERS`] order).
struct MergedLog {
    streams: Vec<LogStream>,
}

/// One stream of a [`MergedLog`]: the entries read and not yet taken, and where to read on.
struct LogStream {
    producer: Service,
    key: String,
    read: VecDeque<Entry>,
    start: String,
    exhausted: bool,
}

impl MergedLog {
    fn new(keys: &Keys, start: &str) -> MergedLog {
        let streams = Service::PRODUCERS
            .iter()
            .map(|&producer| LogStream {
                producer,
                key: keys.events(producer, Partition::FIRST),
                read: VecDeque::new(),
                start: start.to_owned(),
                exhausted: false,
            })
            .collect();
        MergedLog { streams }
    }

    /// The next entry of the log, with the service whose stream holds it.
    async fn next(&mut self, connection: &mut Connection) -> Result<Option<(Service, Entry)>> {
        for stream in &mut self.streams {
            if stream.read.is_empty() && !stream.exhausted {
                let page = read_range(connection, &stream.key, &stream.start, LAST_ENTRY, PAGE)
                    .await
                    .wrap_err_with(|| format!("reading {}", stream.key))?;
                stream.exhausted = page.len() < PAGE;
                if let Some(last) = page.last() {
                    stream.start = format!("({}", last.id);
                }
                stream.read.extend(page);
            }
        }
        let oldest = self
            .streams
            .iter_mut()
            .filter(|stream| !stream.read.is_empty())
            .min_by(|a, b| compare_ids(&a.read[0].id, &b.read[0].id));
        Ok(oldest.map(|stream| {
            let entry = stream.read.pop_front().expect("a stream with entries read");
            (stream.producer, entry)
        }))
    }
}

async fn tail(
    context: &Context,
    args: &TailArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let mut connection = context.connect().await?;
    let mut streams = Vec::new();
    for producer in Service::PRODUCERS {
        let key = context.keys.events(producer, Partition::FIRST);
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
        streams.push(Followed {
            producer,
            key,
            after,
        });
    }
    tokio::pin!(shutdown);
    loop {
        // The stop signal is polled first, so it is registered before anything is printed.
        let entries = tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            read = read_after(&mut connection, &streams) => {
                read.wrap_err("following the events streams")?
            }
        };
        for (producer, entry) in entries {
            if wanted(&entry, &args.types) {
                print_event(producer, &entry, context.json)?;
            }
            if let Some(stream) = streams.iter_mut().find(|s| s.producer == producer) {
                stream.after = entry.id;
            }
        }
    }
}

/// A stream `events tail` follows, and the id of the last entry printed from it.
struct Followed {
    producer: Service,
    key: String,
    after: String,
}

/// One XREAD of every followed stream after its cursor, waiting up to `block` if given.
async fn read_streams(
    connection: &mut Connection,
    streams: &[Followed],
    block: Option<Duration>,
) -> redis::RedisResult<Option<Vec<(String, Vec<RawEntry>)>>> {
    let mut read = redis::cmd("XREAD");
    read.arg("COUNT").arg(TAIL_BATCH);
    if let Some(block) = block {
        read.arg("BLOCK").arg(block.as_millis() as u64);
    }
    read.arg("STREAMS")
        .arg(streams.iter().map(|s| &s.key).collect::<Vec<_>>())
        .arg(streams.iter().map(|s| &s.after).collect::<Vec<_>>())
        .query_async(connection)
        .await
}

/// Entries after each stream's `after`, merged in id order, waiting up to [`TAIL_BLOCK`] for
/// some to arrive. Each stream's cursor moves only past what is returned.
async fn read_after(
    connection: &mut Connection,
    streams: &[Followed],
) -> redis::RedisResult<Vec<(Service, Entry)>> {
    // A blocked XREAD is woken with the entries of the stream that got some, not of all: it
    // only waits; what is printed comes from a read of every stream at once.
    let mut reply = read_streams(connection, streams, None).await?;
    if reply.is_none()
        && read_streams(connection, streams, Some(TAIL_BLOCK))
            .await?
            .is_some()
    {
        reply = read_streams(connection, streams, None).await?;
    }
    // A stream that filled its batch may hold more before another's entries: only what is up
    // to the smallest last id of the full batches is in order; the rest is read again.
    let mut limit: Option<String> = None;
    let mut entries: Vec<(Service, Entry)> = Vec::new();
    for (key, batch) in reply.into_iter().flatten() {
        let Some(producer) = streams.iter().find(|s| s.key == key).map(|s| s.producer) else {
            continue;
        };
        if batch.len() >= TAIL_BATCH
            && let Some((last, _)) = batch.last()
            && limit
                .as_deref()
                .is_none_or(|limit| compare_ids(last, limit).is_lt())
        {
            limit = Some(last.clone());
        }
        entries.extend(
            batch
                .into_iter()
                .map(|raw| (producer, Entry::from_raw(raw))),
        );
    }
    if let Some(limit) = limit {
        entries.retain(|(_, entry)| compare_ids(&entry.id, &limit).is_le());
    }
    // Stable: entries of equal ids keep the streams' order.
    entries.sort_by(|(_, a), (_, b)| compare_ids(&a.id, &b.id));
    Ok(entries)
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
    pub fn new(stream: Service, entry: &'a Entry) -> EventLine<'a> {
        let data = entry.field("data").map_or(serde_json::Value::Null, |data| {
            serde_json::from_str(data)
                .unwrap_or_else(|_| serde_json::Value::String(data.to_owned()))
        });
        EventLine {
            stream: stream.name(),
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

fn print_event(stream: Service, entry: &Entry, json: bool) -> std::io::Result<()> {
    let line = EventLine::new(stream, entry);
    if json {
        let text = serde_json::to_string(&line).map_err(std::io::Error::other)?;
        return print_line(&text);
    }
    let mut text = format!(
        "{}  {:<10}  {:<16}  {:<10}  {}  {}",
        line.id,
        line.stream,
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
