//! `blogctl dead list|retry|drop`: the dead letters (see the format in `bus.rs`): inspect them,
//! put one back for the service that failed it, or drop it.
//!
//! A retry adds the original fields to the original stream with one more, [`FOR_SERVICE`], naming
//! the service that dead-lettered it: the other groups acknowledge and skip it, so only that
//! service handles it again. Adding it and deleting the dead letter is one Lua script, so a crash
//! never leaves it in both places or in neither.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use clap::{Args, Subcommand};
use color_eyre::Result;
use color_eyre::eyre::{WrapErr, eyre};
use redis::Script;
use serde::Serialize;

use super::{
    Entry, FIRST_ENTRY, LAST_ENTRY, expected_groups, page_through, parse_entry_id, read_range,
    read_streams,
};
use crate::bus::FOR_SERVICE;
use crate::connection::Connection;
use crate::context::Context;
use crate::error::Failure;
use crate::keyspace::{Partition, Partitions, Service};
use crate::output::{Table, one_line, print_line};

/// KEYS[1]: the dead letters, KEYS[2]: the stream the entry came from. ARGV[1]: the dead letter's
/// id, ARGV[2]: the name of the field restricting the entry to one service.
/// Returns {'retried', new id}, {'gone'}, {'moved'} (its `stream` is not KEYS[2]) or
/// {'malformed', reason}; it writes nothing unless it returns 'retried'.
const RETRY: &str = include_str!("lua/dead_retry.lua");

/// KEYS[1]: the dead letters. ARGV: the ids to delete, all or none.
/// Returns {'missing', id} for the first that does not exist, else {'dropped', count}.
const DROP: &str = include_str!("lua/dead_drop.lua");

#[derive(Debug, Subcommand)]
pub enum DeadCommand {
    /// List dead letters, oldest first: id, service, stream, original id, tries, reason, entry.
    #[command(
        after_help = r#"Example: blogctl dead list --json | jq -r 'select(.service == "query") | .dead_id'"#
    )]
    List,
    /// Put dead letters back on their stream for the service that failed them, and delete them.
    #[command(after_help = r#"Example: blogctl dead retry 1700000000000-0 1700000000001-0"#)]
    Retry(IdsArgs),
    /// Delete dead letters for good.
    #[command(after_help = r#"Example: blogctl dead drop 1700000000000-0"#)]
    Drop(IdsArgs),
}

#[derive(Debug, Args)]
pub struct IdsArgs {
    /// Ids of dead letters (the first column of `blogctl dead list`).
    #[arg(required = true, value_name = "ID")]
    pub ids: Vec<String>,
}

pub async fn run(context: &Context, command: &DeadCommand) -> Result<()> {
    match command {
        DeadCommand::List => list(context).await,
        DeadCommand::Retry(args) => retry(context, args).await,
        DeadCommand::Drop(args) => drop_letters(context, args).await,
    }
}

/// A dead letter as `dead list --json` prints it.
#[derive(Debug, Serialize)]
pub struct DeadLetter<'a> {
    pub dead_id: &'a str,
    pub service: Option<&'a str>,
    pub stream: Option<&'a str>,
    /// The entry's id on its stream.
    pub id: Option<&'a str>,
    pub deliveries: Option<u64>,
    pub reason: Option<&'a str>,
    /// The entry's fields (a JSON object), or the raw text when it is not JSON.
    pub entry: serde_json::Value,
}

impl<'a> DeadLetter<'a> {
    pub fn new(letter: &'a Entry) -> DeadLetter<'a> {
        DeadLetter {
            dead_id: &letter.id,
            service: letter.field("service"),
            stream: letter.field("stream"),
            id: letter.field("id"),
            deliveries: letter.field("deliveries").and_then(|n| n.parse().ok()),
            reason: letter.field("reason"),
            entry: letter
                .field("entry")
                .map_or(serde_json::Value::Null, |entry| {
                    serde_json::from_str(entry)
                        .unwrap_or_else(|_| serde_json::Value::String(entry.to_owned()))
                }),
        }
    }
}

async fn list(context: &Context) -> Result<()> {
    let mut connection = context.connect().await?;
    let dead = context.keys.dead(Partition::FIRST);
    let mut table = Table::new(&[
        "DEAD ID", "SERVICE", "STREAM", "ID", "TRIES", "REASON", "ENTRY",
    ]);
    let mut any = false;
    let json = context.json;
    page_through(&mut connection, &dead, FIRST_ENTRY, LAST_ENTRY, |page| {
        for letter in &page {
            any = true;
            let line = DeadLetter::new(letter);
            if json {
                print_line(&serde_json::to_string(&line)?)?;
                continue;
            }
            let text = |value: Option<&str>| one_line(value.unwrap_or("-"));
            table.row(vec![
                line.dead_id.to_owned(),
                text(line.service),
                text(line.stream),
                text(line.id),
                text(letter.field("deliveries")),
                text(line.reason),
                text(letter.field("entry")),
            ]);
        }
        Ok(true)
    })
    .await
    .wrap_err_with(|| format!("reading the dead letters in {dead}"))?;
    if !json {
        if any {
            table.print("")?;
        } else {
            print_line("no dead letters")?;
        }
    }
    Ok(())
}

/// The ids given, checked and without repeats, in the order given.
fn ids_of(args: &IdsArgs) -> Result<Vec<String>, Failure> {
    let mut seen = BTreeSet::new();
    let mut ids = Vec::new();
    for text in &args.ids {
        let id = parse_entry_id("dead letter id", text)?;
        if seen.insert(id.clone()) {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// Reads the dead letters `ids`; exit code 3 naming the first that does not exist.
async fn read_letters(
    connection: &mut Connection,
    dead: &str,
    ids: &[String],
) -> Result<Vec<Entry>> {
    let mut letters = Vec::new();
    for id in ids {
        let found = read_range(connection, dead, id, id, 1)
            .await
            .wrap_err_with(|| format!("reading dead letter {id} in {dead}"))?;
        match found.into_iter().next() {
            Some(letter) => letters.push(letter),
            None => return Err(not_found(id, dead).into()),
        }
    }
    Ok(letters)
}

fn not_found(id: &str, dead: &str) -> Failure {
    Failure::not_found(format!(
        "there is no dead letter {id} in {dead} (see `blogctl dead list`)"
    ))
}

/// What `dead retry --json` prints for each dead letter.
#[derive(Debug, Serialize)]
struct Retried<'a> {
    dead_id: &'a str,
    service: &'a str,
    stream: &'a str,
    /// The entry's new id on its stream.
    id: &'a str,
}

async fn retry(context: &Context, args: &IdsArgs) -> Result<()> {
    let ids = ids_of(args)?;
    let mut connection = context.connect().await?;
    let dead = context.keys.dead(Partition::FIRST);
    let partitions = context.partitions(&mut connection).await?;
    let streams = read_streams(&context.keys, partitions);
    // Every id is checked before any is retried, so a typo in the last changes nothing.
    let letters = read_letters(&mut connection, &dead, &ids).await?;
    let mut targets = Vec::new();
    for letter in &letters {
        targets.push(retry_target(context, partitions, &streams, letter)?);
    }
    for target in &targets {
        let id = retry_letter(&mut connection, &dead, target).await?;
        print_retried(context, target, &id)?;
    }
    Ok(())
}

/// A dead letter to put back, and where.
struct RetryTarget {
    dead_id: String,
    /// The stream it came from.
    stream: String,
    /// The service that dead-lettered it, the only one to handle it again.
    service: String,
}

/// Where `letter` goes back to; exit code 2 when it cannot be retried: it lacks its stream or
/// service, is a request, came from a stream no service of the namespace reads, or names a
/// service that does not read that stream.
fn retry_target(
    context: &Context,
    partitions: Partitions,
    streams: &[String],
    letter: &Entry,
) -> Result<RetryTarget> {
    let (Some(stream), Some(service)) = (letter.field("stream"), letter.field("service")) else {
        return Err(Failure::invalid(format!(
            "dead letter {} has no stream or service field: it cannot be retried (drop it?)",
            letter.id
        ))
        .into());
    };
    let is_request = partitions.all().any(|partition| {
        Service::ALL
            .into_iter()
            .any(|owner| context.keys.inbox(owner, partition) == *stream)
    });
    if is_request {
        return Err(Failure::invalid(format!(
            "dead letter {} is a request to {service}: requests are not retried, as the \
             client that sent it has given up on it; send it again (drop this one)",
            letter.id
        ))
        .into());
    }
    if !streams.iter().any(|known| known == stream) {
        return Err(Failure::invalid(format!(
            "dead letter {} came from {stream}, which no service of namespace {} reads: \
             it cannot be retried (drop it?)",
            letter.id,
            context.keys.namespace()
        ))
        .into());
    }
    let read_by_service = expected_groups(&context.keys, partitions)
        .iter()
        .any(|expected| expected.stream == stream && expected.group == service);
    if !read_by_service {
        return Err(Failure::invalid(format!(
            "dead letter {} names service {service:?}, which does not read {stream}: put back \
             for it, it would never be handled (drop it?)",
            letter.id
        ))
        .into());
    }
    Ok(RetryTarget {
        dead_id: letter.id.clone(),
        stream: stream.to_owned(),
        service: service.to_owned(),
    })
}

/// Puts one dead letter back on its stream and deletes it, in one script; the entry's new id.
async fn retry_letter(
    connection: &mut Connection,
    dead: &str,
    target: &RetryTarget,
) -> Result<String> {
    static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RETRY));
    let dead_id = &target.dead_id;
    let reply: Vec<String> = SCRIPT
        .key(dead)
        .key(&target.stream)
        .arg(dead_id)
        .arg(FOR_SERVICE)
        .invoke_async(connection)
        .await
        .wrap_err_with(|| format!("retrying dead letter {dead_id}"))?;
    match reply.first().map(String::as_str) {
        Some("retried") => Ok(reply.get(1).cloned().unwrap_or_default()),
        Some("gone") => Err(not_found(dead_id, dead).into()),
        Some("moved") => Err(eyre!(
            "dead letter {dead_id} changed while it was being retried; nothing was done"
        )),
        Some("malformed") => Err(Failure::invalid(format!(
            "dead letter {dead_id} cannot be retried: {} (drop it?)",
            reply.get(1).map_or("it is malformed", String::as_str)
        ))
        .into()),
        _ => Err(eyre!("unexpected answer {reply:?} retrying {dead_id}")),
    }
}

/// Prints that `target` is back on its stream as `id`.
fn print_retried(context: &Context, target: &RetryTarget, id: &str) -> Result<()> {
    let RetryTarget {
        dead_id,
        stream,
        service,
    } = target;
    if context.json {
        let line = Retried {
            dead_id,
            service,
            stream,
            id,
        };
        print_line(&serde_json::to_string(&line)?)?;
    } else {
        print_line(&format!(
            "retried {dead_id}: back on {stream} as {id}, for {service} only"
        ))?;
    }
    Ok(())
}

async fn drop_letters(context: &Context, args: &IdsArgs) -> Result<()> {
    static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(DROP));
    let ids = ids_of(args)?;
    let mut connection = context.connect().await?;
    let dead = context.keys.dead(Partition::FIRST);
    let mut invocation = SCRIPT.key(&dead);
    for id in &ids {
        invocation.arg(id);
    }
    let reply: (String, redis::Value) = invocation
        .invoke_async(&mut connection)
        .await
        .wrap_err_with(|| format!("dropping dead letters from {dead}"))?;
    if reply.0 == "missing" {
        let id: String = redis::from_redis_value(reply.1).unwrap_or_default();
        return Err(not_found(&id, &dead).into());
    }
    for id in &ids {
        if context.json {
            print_line(&serde_json::json!({ "dead_id": id, "dropped": true }).to_string())?;
        } else {
            print_line(&format!("dropped {id}"))?;
        }
    }
    Ok(())
}
