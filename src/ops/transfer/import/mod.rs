//! `blogctl import FILE`: fills an empty namespace from an export, on a single Redis or a
//! Cluster, with its own partition count.
//!
//! The whole file is checked first (every line's check, the trailer's counts and hash: the hash
//! on a thread of its own while the lines are checked), and nothing is written to a namespace
//! that holds anything. Then the file is read again, each line's check verified again (a file
//! changed meanwhile stops the import there), and each event goes to the stream
//! of the service that wrote it, in the partition of its post under the new count (an event
//! that names no post, being malformed, keeps its partition modulo the new count), in the
//! order of the file. An event keeps its id unless its new stream already has a later one (two
//! partitions merged into one): it then takes the next free id.
//!
//! The state is built in the same pass, with the functions `blogctl rebuild` uses: the query
//! view and the comments service's state (generation 0 of each partition), and the posts
//! service's records (`<ns>:posts:{..}:post:<id>`): only its request step writes them and no
//! rebuild makes them, so the import writes them with the same key function, and the copy holds
//! what the original holds. The consumer groups are then
//! created where the services' work stands in the file: after the last event each has already
//! acted on, so that no verdict is given twice, and before the first comment the export caught
//! before its verdict (or verdict before its `CommentUpdated`), which the services finish
//! once they run. The answers remembered for request ids are not carried over.
//!
//! - `check`: the first pass: the whole file read and checked, nothing written ([`Verified`]).
//! - `write`: the second pass: the events and the state they make, sent in rounds of
//!   pipelines, then the consumer groups where the services' work stands.
//!
//! [`run`], and what both passes use ([`Routed`], [`Plan`]), are here.

mod check;
mod write;

use std::collections::HashSet;
use std::fs::File;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use color_eyre::Result;
use color_eyre::eyre::WrapErr;
use serde::Serialize;
use uuid::Uuid;

use check::verify;
use write::{create_groups, write_events};

use super::{EventIn, Header};
use crate::bus::StreamId;
use crate::connection::Connection;
use crate::context::Context;
use crate::error::Failure;
use crate::events::{Event, EventKind};
use crate::keyspace::{Keys, Partition, Partitions, Service};
use crate::output::print_line;
use crate::services::{comments, query};

/// Arguments of `blogctl import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A file `blogctl export` wrote.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// What an import did, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub namespace: String,
    pub partitions: u32,
    pub events: u64,
    /// Comments the export caught before their verdict: moderation gives it once it runs.
    pub awaiting_moderation: u64,
    pub seconds: f64,
    pub events_per_second: f64,
}

pub async fn run(context: &Context, args: &ImportArgs) -> Result<()> {
    let started = Instant::now();
    let name = args.file.display().to_string();
    let file = File::open(&args.file).wrap_err_with(|| format!("opening {name}"))?;
    let verified = verify(&name, &file)?;
    let mut connection = context.connect().await?;
    let partitions = context.partitions(&mut connection).await?;
    refuse_a_used_namespace(&mut connection, &context.keys).await?;
    crate::partitions::fix(&mut connection, &context.keys, Some(partitions), &[]).await?;
    query::REBUILDER.load(&mut connection).await?;
    comments::REBUILDER.load(&mut connection).await?;
    let total = verified.events;
    let awaiting_moderation = verified.awaiting_moderation;
    let plan = Plan {
        file,
        name,
        keys: context.keys.clone(),
        partitions,
        verified,
    };
    let positions = write_events(&mut connection, plan, total).await?;
    create_groups(&mut connection, &context.keys, partitions, &positions).await?;
    let seconds = started.elapsed().as_secs_f64();
    let summary = Summary {
        namespace: context.keys.namespace().to_owned(),
        partitions: partitions.count(),
        events: total,
        awaiting_moderation,
        seconds,
        events_per_second: total as f64 / seconds.max(1e-9),
    };
    let line = if context.json {
        serde_json::to_string(&summary)?
    } else {
        format!(
            "imported {} events into namespace {} ({} partitions) in {:.2}s, {:.0} events/s; \
             `blogctl serve` takes it from there",
            summary.events,
            summary.namespace,
            summary.partitions,
            summary.seconds,
            summary.events_per_second
        )
    };
    Ok(print_line(&line)?)
}

/// What the check of the whole file found, for the import to use.
#[derive(Debug, Default)]
struct Verified {
    header: Option<Header>,
    events: u64,
    /// Comments with a `CommentModerated`, and with a `CommentUpdated`, in the file.
    moderated: HashSet<Uuid>,
    updated: HashSet<Uuid>,
    awaiting_moderation: u64,
}

/// One event of the file, its envelope parsed where it has a valid one.
struct Routed<'a> {
    producer: Service,
    partition: Partition,
    id: StreamId,
    line: EventIn<'a>,
    event: Option<Event>,
}

impl<'a> Routed<'a> {
    fn new(producer: Service, partition: Partition, id: StreamId, line: EventIn<'a>) -> Routed<'a> {
        let event = line.event();
        Routed {
            producer,
            partition,
            id,
            line,
            event,
        }
    }

    /// The post the event is about, if it names one.
    fn post(&self) -> Option<Uuid> {
        match self.event.as_ref()? {
            Event::PostCreated(post) => Some(post.id),
            Event::CommentCreated(comment)
            | Event::CommentModerated(comment)
            | Event::CommentUpdated(comment) => Some(comment.post_id),
        }
    }

    /// Whether `service`'s state changes with it, as `blogctl rebuild` applies the log: a
    /// valid event of a kind it uses, on the stream of the kind's producer, for every group or
    /// for `service`'s.
    fn applies_to(&self, service: Service) -> bool {
        let used = |kind: EventKind| {
            matches!(
                kind,
                EventKind::PostCreated | EventKind::CommentCreated | EventKind::CommentUpdated
            ) && kind.producer() == self.producer
        };
        self.kind().is_some_and(used) && self.line.is_for(service.name())
    }

    fn kind(&self) -> Option<EventKind> {
        Some(match self.event.as_ref()? {
            Event::PostCreated(_) => EventKind::PostCreated,
            Event::CommentCreated(_) => EventKind::CommentCreated,
            Event::CommentModerated(_) => EventKind::CommentModerated,
            Event::CommentUpdated(_) => EventKind::CommentUpdated,
        })
    }
}

/// Everything the writing thread needs.
struct Plan {
    /// The file, checked: read again from its start.
    file: File,
    name: String,
    keys: Keys,
    partitions: Partitions,
    verified: Verified,
}

/// Refuses (exit code 2) a namespace that holds anything of a blog: its partition count, or
/// any stream of any partition it could have.
async fn refuse_a_used_namespace(connection: &mut Connection, keys: &Keys) -> Result<()> {
    let count = Partitions::new(Partitions::MAX).expect("the most partitions");
    let mut names = vec![vec![keys.partitions()]];
    for partition in count.all() {
        let mut streams: Vec<String> = Service::PRODUCERS
            .iter()
            .map(|&producer| keys.events(producer, partition))
            .collect();
        streams.push(keys.inbox(Service::Posts, partition));
        streams.push(keys.inbox(Service::Comments, partition));
        streams.push(keys.dead(partition));
        streams.push(keys.shared_events(partition));
        names.push(streams);
    }
    for keys_of_one_slot in names {
        let found: u64 = redis::cmd("EXISTS")
            .arg(&keys_of_one_slot)
            .query_async(connection)
            .await?;
        if found == 0 {
            continue;
        }
        let mut first = keys_of_one_slot[0].clone();
        for key in &keys_of_one_slot {
            let exists: bool = redis::cmd("EXISTS")
                .arg(key)
                .query_async(connection)
                .await?;
            if exists {
                first = key.clone();
                break;
            }
        }
        return Err(Failure::invalid(format!(
            "namespace {:?} holds a blog already ({first} exists): import fills only an empty \
             namespace, so choose another --namespace; nothing was imported",
            keys.namespace()
        ))
        .into());
    }
    Ok(())
}
