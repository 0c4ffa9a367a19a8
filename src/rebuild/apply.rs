//! Reading the log and applying it to the generation being filled: a stream's archives (read in
//! `archives`), then the stream itself, read ahead on a thread of its own, its events turned
//! into apply calls and written in batches of scripts.

use std::path::PathBuf;

use color_eyre::Result;
use indicatif::ProgressBar;
use redis::Value;

use super::Target;
use super::archives::{
    ArchiveRead, apply_archive, first_id, refuse_archives_past_the_stream,
    refuse_unchecked_lines_off_the_stream,
};
use super::checks::refuse_a_gap;
use crate::bus::{Delivery, RawEntry, SERVICE_RESPONSE_TIMEOUT, entries_of};
use crate::connection::{Connection, Redis};
use crate::events::EventKind;
use crate::keyspace::{Generation, Partition, Service};
use crate::ops::archive::stream_archive;
use crate::services::generations::{ApplyCall, Calls};
use crate::services::{comments, query};

/// Entries read from the stream per round trip.
pub(super) const CHUNK: usize = 2000;
/// Events applied per script: a few milliseconds inside Redis, even on a view of a million posts.
const WRITE_BATCH: usize = 250;

/// Whether archives are applied, or only read and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Apply,
    /// Every check, nothing written: only `from_archives` is counted.
    Check,
}

/// Applies the archives of one stream (its file in each directory, oldest first: see
/// [`stream_archive`]) and checks they fit the stream; returns the id of the last entry applied
/// (`0-0` for none) and how many entries the stream has lost to trims.
pub(super) async fn apply_archives(
    connection: &mut Connection,
    log: &Log<'_>,
    directories: &[PathBuf],
    counts: &mut Counts,
    mode: Mode,
) -> Result<(String, u64)> {
    let mut last = "0-0".to_owned();
    // Archived ids the stream still holds (a trim stopped between its archive and its XTRIM).
    let first_on_stream = first_id(connection, log.events).await?;
    let mut overlap = Vec::new();
    let mut unchecked = Vec::new();
    let before = counts.from_archives;
    for directory in directories {
        let archive = stream_archive(directory, log.producer, log.partition);
        if !archive.exists() {
            continue;
        }
        let read = ArchiveRead {
            unchecked: &mut unchecked,
            last: &mut last,
            first_on_stream: first_on_stream.as_deref(),
            overlap: &mut overlap,
            mode,
        };
        apply_archive(connection, log, &archive, counts, read).await?;
    }
    refuse_archives_past_the_stream(connection, log.events, &last, &overlap).await?;
    refuse_unchecked_lines_off_the_stream(connection, log.events, &unchecked).await?;
    let removed = refuse_a_gap(connection, log.events, counts.from_archives - before).await?;
    Ok((last, removed))
}

/// What a rebuild reads and where it writes.
pub(super) struct Log<'a> {
    pub(super) target: Target,
    /// The service that writes the stream.
    pub(super) producer: Service,
    pub(super) partition: Partition,
    /// The events stream.
    pub(super) events: &'a str,
    /// The generation being filled.
    pub(super) base: &'a Generation,
    /// The live generation the rebuild will replace (see [`write`]).
    pub(super) live: &'a Generation,
}

/// Applies the stream after `after` to the generation being filled, up to the end the reads find; returns
/// the id of the last entry applied (`after` when there was none).
///
/// Three things run at once, on the two cores: a thread of its own reads and parses the chunks
/// ahead, this task checks a chunk and turns it into writes, and Redis applies the previous
/// chunk's writes. The writes go one chunk after the other, in log order.
pub(super) async fn apply_stream(
    connection: &mut Connection,
    redis: &Redis,
    log: &Log<'_>,
    after: String,
    counts: &mut Counts,
    progress: &ProgressBar,
) -> Result<String> {
    let mut chunks = read_ahead(redis.clone(), log.events.to_owned(), after.clone());
    let mut last = after;
    let mut calls = log.target.calls();
    let mut writing: Option<(Vec<ApplyCall>, String)> = None;
    loop {
        let next = async {
            let Some(chunk) = chunks.recv().await.transpose()? else {
                return Ok::<_, redis::RedisError>(None);
            };
            let Some(end) = chunk.last().map(|(id, _)| id.clone()) else {
                return Ok(None);
            };
            let events = chunk.len();
            for (id, fields) in chunk {
                // Only its fields are read: the stream is not named again for each entry.
                let delivery = Delivery {
                    stream: String::new(),
                    id,
                    fields,
                    deliveries: 1,
                };
                counts.add(log.target, log.producer, &mut calls, &delivery);
            }
            progress.inc(events as u64);
            Ok(Some((calls.take(), end)))
        };
        let mut writer = connection.clone();
        let written = async {
            match &writing {
                Some((calls, end)) => write(&mut writer, log, calls)
                    .await
                    .map(|()| Some(end.clone())),
                None => Ok(None),
            }
        };
        let (next, written) = tokio::try_join!(next, written)?;
        if let Some(end) = written {
            last = end;
        }
        writing = next;
        if writing.is_none() {
            // The creations still held back for their update.
            write(connection, log, &calls.finish()).await?;
            return Ok(last);
        }
    }
}

/// Reads the stream after `after` in chunks, on a thread and connection of its own, until a
/// read comes back empty; the receiver gets the chunks in order, or the error that ended them.
fn read_ahead(
    redis: Redis,
    events: String,
    after: String,
) -> tokio::sync::mpsc::Receiver<redis::RedisResult<Vec<RawEntry>>> {
    let (sender, receiver) = tokio::sync::mpsc::channel(2);
    std::thread::spawn(move || {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(error) => {
                let _ = sender.blocking_send(Err(redis::RedisError::from(error)));
                return;
            }
        };
        runtime.block_on(async move {
            // A Redis that stops answering fails the rebuild rather than hanging it.
            let mut connection = match redis.try_connect(Some(SERVICE_RESPONSE_TIMEOUT)).await {
                Ok(connection) => connection,
                Err(error) => {
                    let _ = sender.send(Err(error)).await;
                    return;
                }
            };
            let mut after = after;
            loop {
                let chunk: redis::RedisResult<Value> = redis::cmd("XRANGE")
                    .arg(&events)
                    .arg(format!("({after}"))
                    .arg("+")
                    .arg("COUNT")
                    .arg(CHUNK)
                    .query_async(&mut connection)
                    .await;
                let chunk = chunk.and_then(entries_of);
                let last = match &chunk {
                    Ok(entries) => entries.last().map(|(id, _)| id.clone()),
                    Err(_) => None,
                };
                // Stops when the receiver is gone, after an error, and after the empty chunk.
                if sender.send(chunk).await.is_err() {
                    return;
                }
                match last {
                    Some(id) => after = id,
                    None => return,
                }
            }
        });
    });
    receiver
}

#[derive(Debug, Default)]
pub(super) struct Counts {
    pub(super) applied: u64,
    pub(super) skipped: u64,
    pub(super) from_archives: u64,
}

impl Counts {
    /// Adds the writes of one entry of `producer`'s stream. Events of types that do not change
    /// the target are skipped unread, and malformed and unknown entries, and events of a kind
    /// another service produces, are skipped, as the services skip them (they are in the dead
    /// letters).
    pub(super) fn add(
        &mut self,
        target: Target,
        producer: Service,
        calls: &mut Calls,
        delivery: &Delivery,
    ) {
        let unused = |name| {
            EventKind::parse(name)
                .is_none_or(|kind| !target.uses(kind) || kind.producer() != producer)
        };
        if matches!(delivery.field("type"), Ok(name) if unused(name)) {
            self.skipped += 1;
            return;
        }
        match delivery.event() {
            // An entry `dead retry` put back for another service is that service's alone.
            Ok(Some(_)) if !delivery.is_for(target.service().name()) => self.skipped += 1,
            Ok(Some(envelope)) => {
                calls.add(&envelope.event);
                self.applied += 1;
            }
            _ => self.skipped += 1,
        }
    }
}

/// Applies `calls` to the generation being filled, in scripts of [`WRITE_BATCH`] calls sent
/// together (nothing to do for none: a chunk of events that change nothing here).
///
/// A comments rebuild also lists each comment it writes in the live generation's index of
/// comments: that generation may have been written by an earlier version, without one, and is
/// dropped through it after the switch. (The live steps list the comments they write there
/// too, so the index ends up naming every comment of that generation; listing one twice
/// changes nothing.)
pub(super) async fn write(
    connection: &mut Connection,
    log: &Log<'_>,
    calls: &[ApplyCall],
) -> redis::RedisResult<()> {
    if calls.is_empty() {
        return Ok(());
    }
    let rebuilder = match log.target {
        Target::Query => &*query::REBUILDER,
        Target::Comments => &*comments::REBUILDER,
    };
    // Several scripts in one pipeline: each stays short inside Redis (a few milliseconds),
    // so that no other client waits long behind it.
    let mut pipe = redis::pipe();
    for batch in calls.chunks(WRITE_BATCH) {
        pipe.add_command(rebuilder.batch(log.base, batch)).ignore();
    }
    if log.target == Target::Comments {
        let indexed: Vec<ApplyCall> = calls.iter().filter_map(comments::index_call).collect();
        for batch in indexed.chunks(WRITE_BATCH) {
            pipe.add_command(rebuilder.batch(log.live, batch)).ignore();
        }
    }
    match pipe.query_async::<()>(connection).await {
        Err(error)
            if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
        {
            rebuilder.load(connection).await?;
            pipe.query_async(connection).await
        }
        result => result,
    }
}
