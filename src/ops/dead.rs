//! `blogctl dead list|retry|drop`: the dead letters (see the format in `bus.rs`): inspect them,
//! put one back for the service that failed it, or drop it.
//!
//! Each partition has its dead letters, whose ids may equal another partition's: with several
//! partitions a letter is named `<partition>/<id>`, or by its id alone where only one partition
//! holds it. A letter goes back to its own partition's stream, never another's.
//!
//! A retry adds the original fields to the original stream with one more, [`FOR_SERVICE`], naming
//! the service that dead-lettered it: the other groups acknowledge and skip it, so only that
//! service handles it again. Adding it and deleting the dead letter is one Lua script, so a crash
//! never leaves it in both places or in neither.

use std::sync::LazyLock;

use clap::{Args, Subcommand};
use color_eyre::Result;
use color_eyre::eyre::{WrapErr, eyre};
use redis::Script;
use serde::Serialize;

use super::{
    Entry, ExpectedGroup, FIRST_ENTRY, MergedStreams, expected_groups, in_partition,
    parse_entry_id, read_range,
};
use crate::bus::FOR_SERVICE;
use crate::connection::Connection;
use crate::context::Context;
use crate::error::Failure;
use crate::keyspace::{Keys, Partition, Partitions, Service};
use crate::output::{Table, count_of, one_line, print_line};

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
    /// Dead letters, as the first column of `blogctl dead list` names them: `<partition>/<id>`
    /// (with several partitions), or the id alone where only one partition holds it.
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
    /// Its name on the command line: its id, `<partition>/<id>` with several partitions.
    pub dead_id: &'a str,
    /// The partition whose dead letters hold it.
    pub partition: u32,
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
    pub fn new(name: &'a str, partition: Partition, letter: &'a Entry) -> DeadLetter<'a> {
        DeadLetter {
            dead_id: name,
            partition: partition.0,
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

/// Every partition's dead letters, merged oldest first.
async fn list(context: &Context) -> Result<()> {
    let mut connection = context.connect().await?;
    let partitions = context.partitions(&mut connection).await?;
    let streams = partitions
        .all()
        .map(|partition| (partition, context.keys.dead(partition)))
        .collect();
    let mut letters = MergedStreams::new(streams, FIRST_ENTRY);
    let mut table = Table::new(&[
        "DEAD ID", "SERVICE", "STREAM", "ID", "TRIES", "REASON", "ENTRY",
    ]);
    let mut any = false;
    let json = context.json;
    while let Some((partition, letter)) = letters
        .next(&mut connection)
        .await
        .wrap_err("reading the dead letters")?
    {
        any = true;
        let name = in_partition(partitions, partition, &letter.id);
        let line = DeadLetter::new(&name, partition, &letter);
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
    if !json {
        if any {
            table.print("")?;
        } else {
            print_line("no dead letters")?;
        }
    }
    Ok(())
}

/// A dead letter named on the command line: `<partition>/<id>`, or its id alone (the
/// partition then found by looking in every partition's dead letters).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Named {
    partition: Option<Partition>,
    id: String,
}

impl Named {
    /// Parses one name; exit code 2 when it is not one.
    fn parse(text: &str) -> Result<Named, Failure> {
        let Some((partition, id)) = text.split_once('/') else {
            return Ok(Named {
                partition: None,
                id: parse_entry_id("dead letter id", text)?,
            });
        };
        let partition = partition.parse::<u32>().map_err(|_| {
            Failure::invalid(format!(
                "dead letter {text:?}: {partition:?} is not a partition number \
                 (<partition>/<id>, e.g. 3/1700000000000-0)"
            ))
        })?;
        Ok(Named {
            partition: Some(Partition(partition)),
            id: parse_entry_id("dead letter id", id)?,
        })
    }
}

/// A dead letter found: its partition, its name as printed, and its fields.
struct Found {
    partition: Partition,
    name: String,
    letter: Entry,
}

/// The names given, checked and without repeats, in the order given (exit code 2 on the first
/// that is not one).
fn names_of(args: &IdsArgs) -> Result<Vec<Named>, Failure> {
    let mut names: Vec<Named> = Vec::new();
    for text in &args.ids {
        let name = Named::parse(text)?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    Ok(names)
}

/// Reads the dead letters named; exit code 3 naming the first that does not exist, 2 for a
/// partition the namespace does not have or an id found in several partitions.
async fn find_letters(
    context: &Context,
    connection: &mut Connection,
    partitions: Partitions,
    names: &[Named],
) -> Result<Vec<Found>> {
    let mut found: Vec<Found> = Vec::new();
    for named in names {
        let letter = find_letter(context, connection, partitions, named).await?;
        if !found.iter().any(|seen| seen.name == letter.name) {
            found.push(letter);
        }
    }
    Ok(found)
}

async fn find_letter(
    context: &Context,
    connection: &mut Connection,
    partitions: Partitions,
    named: &Named,
) -> Result<Found> {
    let id = &named.id;
    if let Some(partition) = named.partition.filter(|p| p.0 >= partitions.count()) {
        return Err(Failure::invalid(format!(
            "dead letter {partition}/{id}: namespace {} has {} (0 to {})",
            context.keys.namespace(),
            count_of(u64::from(partitions.count()), "partition", "partitions"),
            partitions.count() - 1
        ))
        .into());
    }
    let mut found = Vec::new();
    let looked_in: Vec<Partition> = match named.partition {
        Some(partition) => vec![partition],
        None => partitions.all().collect(),
    };
    for &partition in &looked_in {
        let dead = context.keys.dead(partition);
        let letters = read_range(connection, &dead, id, id, 1)
            .await
            .wrap_err_with(|| format!("reading dead letter {id} in {dead}"))?;
        found.extend(letters.into_iter().map(|letter| Found {
            partition,
            name: in_partition(partitions, partition, id),
            letter,
        }));
    }
    if found.len() > 1 {
        let names: Vec<&str> = found.iter().map(|found| found.name.as_str()).collect();
        return Err(Failure::invalid(format!(
            "dead letter {id} is in several partitions: name one of {}",
            names.join(", ")
        ))
        .into());
    }
    let (name, dead) = match named.partition {
        Some(partition) => (
            in_partition(partitions, partition, id),
            context.keys.dead(partition),
        ),
        None if partitions.count() == 1 => (id.clone(), context.keys.dead(Partition::FIRST)),
        None => (id.clone(), context.keys.dead_pattern()),
    };
    found.pop().ok_or_else(|| not_found(&name, &dead).into())
}

fn not_found(name: &str, dead: &str) -> Failure {
    Failure::not_found(format!(
        "there is no dead letter {name} in {dead} (see `blogctl dead list`)"
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
    let names = names_of(args)?;
    let mut connection = context.connect().await?;
    let partitions = context.partitions(&mut connection).await?;
    // Every letter is checked before any is retried, so a typo in the last changes nothing.
    let letters = find_letters(context, &mut connection, partitions, &names).await?;
    let mut targets = Vec::new();
    for found in &letters {
        targets.push(retry_target(context, partitions, found)?);
    }
    for target in &targets {
        let id = retry_letter(&mut connection, &context.keys, target).await?;
        print_retried(context, target, &id)?;
    }
    Ok(())
}

/// A dead letter to put back, and where.
struct RetryTarget {
    /// Its name, as printed.
    name: String,
    dead_id: String,
    partition: Partition,
    /// The stream it came from, of its partition.
    stream: String,
    /// The service that dead-lettered it, the only one to handle it again.
    service: String,
}

/// Where a dead letter goes back to; exit code 2 when it cannot be retried: it lacks its stream
/// or service, is a request, came from a stream no service of its partition reads, or names a
/// service that does not read that stream.
fn retry_target(context: &Context, partitions: Partitions, found: &Found) -> Result<RetryTarget> {
    let Found {
        partition,
        name,
        letter,
    } = found;
    let (Some(stream), Some(service)) = (letter.field("stream"), letter.field("service")) else {
        return Err(Failure::invalid(format!(
            "dead letter {name} has no stream or service field: it cannot be retried (drop it?)"
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
            "dead letter {name} is a request to {service}: requests are not retried, as the \
             client that sent it has given up on it; send it again (drop this one)"
        ))
        .into());
    }
    let groups: Vec<ExpectedGroup> = expected_groups(&context.keys, partitions)
        .into_iter()
        .filter(|expected| expected.partition == *partition && expected.stream == stream)
        .collect();
    if groups.is_empty() {
        return Err(Failure::invalid(format!(
            "dead letter {name} came from {stream}, which no service of namespace {} reads in \
             partition {partition}, whose dead letters hold it: it cannot be retried (drop it?)",
            context.keys.namespace()
        ))
        .into());
    }
    if !groups.iter().any(|expected| expected.group == service) {
        return Err(Failure::invalid(format!(
            "dead letter {name} names service {service:?}, which does not read {stream}: put \
             back for it, it would never be handled (drop it?)"
        ))
        .into());
    }
    Ok(RetryTarget {
        name: name.clone(),
        dead_id: letter.id.clone(),
        partition: *partition,
        stream: stream.to_owned(),
        service: service.to_owned(),
    })
}

/// Puts one dead letter back on its stream and deletes it, in one script (its partition's dead
/// letters and stream share a slot); the entry's new id.
async fn retry_letter(
    connection: &mut Connection,
    keys: &Keys,
    target: &RetryTarget,
) -> Result<String> {
    static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(RETRY));
    let (name, dead) = (&target.name, keys.dead(target.partition));
    let reply: Vec<String> = SCRIPT
        .key(&dead)
        .key(&target.stream)
        .arg(&target.dead_id)
        .arg(FOR_SERVICE)
        .invoke_async(connection)
        .await
        .wrap_err_with(|| format!("retrying dead letter {name}"))?;
    match reply.first().map(String::as_str) {
        Some("retried") => Ok(reply.get(1).cloned().unwrap_or_default()),
        Some("gone") => Err(not_found(name, &dead).into()),
        Some("moved") => Err(eyre!(
            "dead letter {name} changed while it was being retried; nothing was done"
        )),
        Some("malformed") => Err(Failure::invalid(format!(
            "dead letter {name} cannot be retried: {} (drop it?)",
            reply.get(1).map_or("it is malformed", String::as_str)
        ))
        .into()),
        _ => Err(eyre!("unexpected answer {reply:?} retrying {name}")),
    }
}

/// Prints that `target` is back on its stream as `id`.
fn print_retried(context: &Context, target: &RetryTarget, id: &str) -> Result<()> {
    let RetryTarget {
        name,
        stream,
        service,
        ..
    } = target;
    if context.json {
        let line = Retried {
            dead_id: name,
            service,
            stream,
            id,
        };
        print_line(&serde_json::to_string(&line)?)?;
    } else {
        print_line(&format!(
            "retried {name}: back on {stream} as {id}, for {service} only"
        ))?;
    }
    Ok(())
}

/// Drops the dead letters named: every one is found first (exit code 3 on the first missing,
/// nothing dropped), then each partition's are deleted all or none in one script.
async fn drop_letters(context: &Context, args: &IdsArgs) -> Result<()> {
    static SCRIPT: LazyLock<Script> = LazyLock::new(|| Script::new(DROP));
    let names = names_of(args)?;
    let mut connection = context.connect().await?;
    let partitions = context.partitions(&mut connection).await?;
    let letters = find_letters(context, &mut connection, partitions, &names).await?;
    for partition in partitions.all() {
        let ids: Vec<&str> = letters
            .iter()
            .filter(|found| found.partition == partition)
            .map(|found| found.letter.id.as_str())
            .collect();
        if ids.is_empty() {
            continue;
        }
        let dead = context.keys.dead(partition);
        let mut invocation = SCRIPT.key(&dead);
        invocation.arg(&ids);
        let reply: (String, redis::Value) = invocation
            .invoke_async(&mut connection)
            .await
            .wrap_err_with(|| format!("dropping dead letters from {dead}"))?;
        if reply.0 == "missing" {
            let id: String = redis::from_redis_value(reply.1).unwrap_or_default();
            return Err(not_found(&in_partition(partitions, partition, &id), &dead).into());
        }
    }
    for found in &letters {
        if context.json {
            print_line(&serde_json::json!({ "dead_id": found.name, "dropped": true }).to_string())?;
        } else {
            print_line(&format!("dropped {}", found.name))?;
        }
    }
    Ok(())
}
