//! `blogctl events list|tail`: what happened, one line per event (`--json`: NDJSON for jq).

use std::future::Future;
use std::time::Duration;

use clap::{Args, Subcommand};
use color_eyre::Result;
use color_eyre::eyre::WrapErr;
use serde::Serialize;

use super::{Entry, FIRST_ENTRY, LAST_ENTRY, RawEntry, page_through};
use crate::bus::{FOR_SERVICE, StreamId};
use crate::connection::Connection;
use crate::context::Context;
use crate::error::Failure;
use crate::keyspace::Partition;
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
    /// List events, oldest first, one line each: id, type, producer, request id, data.
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
    let stream = context.keys.events(Partition::FIRST);
    let mut left = args.count.unwrap_or(u64::MAX);
    page_through(&mut connection, &stream, &start, LAST_ENTRY, |page| {
        for entry in page.iter().filter(|entry| wanted(entry, &args.types)) {
            print_event(entry, context.json)?;
            left -= 1;
            if left == 0 {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await
    .wrap_err_with(|| format!("reading {stream}"))?;
    Ok(())
}

async fn tail(
    context: &Context,
    args: &TailArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let mut connection = context.connect().await?;
    let stream = context.keys.events(Partition::FIRST);
    let newest: Vec<RawEntry> = redis::cmd("XREVRANGE")
        .arg(&stream)
        .arg(LAST_ENTRY)
        .arg(FIRST_ENTRY)
        .arg("COUNT")
        .arg(1)
        .query_async(&mut connection)
        .await
        .wrap_err_with(|| format!("reading {stream}"))?;
    let mut after = newest
        .into_iter()
        .next()
        .map_or(BEFORE_ANY_ENTRY.to_owned(), |(id, _)| id);
    tokio::pin!(shutdown);
    loop {
        // The stop signal is polled first, so it is registered before anything is printed.
        let entries = tokio::select! {
            biased;
            () = &mut shutdown => return Ok(()),
            read = read_after(&mut connection, &stream, &after) => {
                read.wrap_err_with(|| format!("following {stream}"))?
            }
        };
        for entry in entries {
            if wanted(&entry, &args.types) {
                print_event(&entry, context.json)?;
            }
            after = entry.id;
        }
    }
}

/// Entries after `after`, waiting up to [`TAIL_BLOCK`] for some to arrive.
async fn read_after(
    connection: &mut Connection,
    stream: &str,
    after: &str,
) -> redis::RedisResult<Vec<Entry>> {
    type Reply = Option<Vec<(String, Vec<RawEntry>)>>;
    let reply: Reply = redis::cmd("XREAD")
        .arg("COUNT")
        .arg(TAIL_BATCH)
        .arg("BLOCK")
        .arg(TAIL_BLOCK.as_millis() as u64)
        .arg("STREAMS")
        .arg(stream)
        .arg(after)
        .query_async(connection)
        .await?;
    Ok(reply
        .into_iter()
        .flatten()
        .flat_map(|(_, entries)| entries)
        .map(Entry::from_raw)
        .collect())
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
    pub fn new(entry: &'a Entry) -> EventLine<'a> {
        let data = entry.field("data").map_or(serde_json::Value::Null, |data| {
            serde_json::from_str(data)
                .unwrap_or_else(|_| serde_json::Value::String(data.to_owned()))
        });
        EventLine {
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

fn print_event(entry: &Entry, json: bool) -> std::io::Result<()> {
    let line = EventLine::new(entry);
    if json {
        let text = serde_json::to_string(&line).map_err(std::io::Error::other)?;
        return print_line(&text);
    }
    let mut text = format!(
        "{}  {:<16}  {:<10}  {}  {}",
        line.id,
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
