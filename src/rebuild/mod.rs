//! `blogctl rebuild query|comments`: rebuilds a service's state from the whole log (for each
//! events stream it needs, the archives written by `blogctl trim` first, then the stream) into a
//! fresh generation of its keyspace while the live one keeps serving, switches to it in one
//! atomic step, then drops the old one.
//!
//! Partitions are rebuilt one after the other, each with its own generation, lock and switch: a
//! partition is self-contained (its streams and its state share one Cluster slot), so each
//! switch is one script in one slot, and a partition is whole whether it was switched or not.
//! Every partition's lock is taken before any is rebuilt; with more than one partition, every
//! partition's archives are checked against its streams first too, so a bad or missing archive
//! is refused before any partition is switched. A rebuild that fails midway leaves the
//! partitions before the failing one switched and the others as they were: running it again
//! is safe, and rebuilds them all.
//!
//! A generation is dropped through the indexes it keeps of its keys (the view's list of posts,
//! the comments state's list of comment ids), a page at a time, not by scanning the keyspace:
//! `SCAN` reads every key name, whatever the ACL key patterns of the user allow. Only a
//! generation of the view that a rebuild filled and never switched to is still found by `SCAN`
//! (see [`drop_unswitched`]).
//!
//! The streams are applied one after the other, not interleaved: the rules for applying events
//! commute across streams (they must: two instances of a service apply them out of order), and
//! each stream is applied in its own order.
//!
//! A service's rebuildable keys live under `<prefix><generation>:`, and `<prefix>generation`
//! names the live generation (`0` until the first rebuild). Every step of the service and every
//! read resolves that pointer inside its own script, so each sees one generation, whole.

mod archives;

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Instant;

use clap::{Args, ValueEnum};
use color_eyre::Result;
use indicatif::ProgressBar;
use redis::{AsyncCommands, Script, Value};
use serde::Serialize;

use crate::bus::{Delivery, RawEntry, SERVICE_RESPONSE_TIMEOUT, entries_of};
use crate::connection::{Connection, Redis, map_of};
use crate::context::Context;
use crate::error::Failure;
use crate::events::EventKind;
use crate::keyspace::{Generation, Keys, Partition, Partitions, Service, generation_lua};
use crate::ops::archive::stream_archive;
use crate::output::{count_of, print_line, progress_bar};
use crate::services::generations::{ApplyCall, Calls, Generations};
use crate::services::{comments, query};
use archives::{
    ArchiveRead, apply_archive, first_id, refuse_archives_past_the_stream,
    refuse_unchecked_lines_off_the_stream,
};

/// Entries read from the stream per round trip.
const CHUNK: usize = 2000;
/// Events applied per script: a few milliseconds inside Redis, even on a view of a million posts.
const WRITE_BATCH: usize = 250;
/// Posts or comments whose keys are deleted (or keys scanned) per round trip when a generation
/// is dropped.
const DROP_PAGE: usize = 1000;
/// How long a rebuild holds its lock before another may assume it died.
const LOCK_MS: u64 = 3_600_000;

/// Switches to the new generation if no stream read holds anything after what the rebuild
/// applied from it, the pointer still names the generation the rebuild started from, and no
/// entry was removed from a stream since the rebuild checked it for a gap (a `trim` meanwhile
/// may have removed entries before the rebuild read them). KEYS and ARGV: see the script.
/// Returns 1 when switched, 0 when the log grew (apply the rest and try again), or
/// `{what}` naming what changed (`switched`, or `trimmed` and the stream).
static SWITCH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("switch.lua")));

/// Takes or keeps a rebuild's lock; KEYS and ARGV: see the script.
static HOLD: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("hold.lua")));

/// Deletes the lock KEYS[1] if it still holds ARGV[1] (it may have expired and been taken).
static UNLOCK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("unlock.lua")));

/// Deletes up to ARGV[2] comments of the comments generation at base ARGV[1], popping their
/// ids from its index in the same step; returns how many it popped.
static DROP_COMMENTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "{}{}",
        generation_lua(),
        include_str!("drop_comments.lua")
    ))
});

/// What to rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Target {
    /// The query view (posts with their comments).
    Query,
    /// The comments service's own state: known posts and comments with their status.
    Comments,
}

impl Target {
    /// The services whose streams its state is built from: both states are built from the
    /// posts and the comments with their status (the verdicts reach them through
    /// `CommentUpdated`, on the comments' stream).
    const STREAMS: [Service; 2] = [Service::Posts, Service::Comments];

    /// Whether events of type `kind` change its state.
    fn uses(self, kind: EventKind) -> bool {
        matches!(
            kind,
            EventKind::PostCreated | EventKind::CommentCreated | EventKind::CommentUpdated
        )
    }

    /// The service whose state this is.
    pub fn service(self) -> Service {
        match self {
            Target::Query => Service::Query,
            Target::Comments => Service::Comments,
        }
    }

    /// Its apply calls for a run of events, a comment's update folded into its creation.
    fn calls(self) -> Calls {
        match self {
            Target::Query => query::calls(),
            Target::Comments => comments::calls(),
        }
    }
}

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// What to rebuild.
    #[arg(value_enum)]
    pub target: Target,
    /// A directory `blogctl trim --archive` wrote, its `<service>.ndjson` (partition 0) and
    /// `<service>.<p>.ndjson` (partition p) files read before their streams (repeat for
    /// several, oldest first).
    #[arg(long = "archive", value_name = "DIR")]
    pub archives: Vec<PathBuf>,
}

/// What a rebuild did, over every partition.
#[derive(Debug, Serialize)]
pub struct Report {
    pub target: String,
    pub events: u64,
    pub from_archives: u64,
    pub skipped: u64,
    pub seconds: f64,
    pub events_per_second: f64,
    /// The newest generation a partition is in now: every partition's, but after a rebuild
    /// that stopped midway.
    pub generation: u64,
    /// Each partition's generation now, partition 0 first.
    pub generations: Vec<u64>,
}

pub async fn run(context: &Context, args: &RebuildArgs) -> Result<()> {
    for archive in &args.archives {
        if !archive.is_dir() {
            return Err(Failure::invalid(format!(
                "archive {} is not a directory (`blogctl trim --archive DIR` writes one \
                 <service>.ndjson per stream in it)",
                archive.display()
            ))
            .into());
        }
    }
    let mut connection = context.connect().await?;
    let partitions = context.partitions(&mut connection).await?;
    refuse_an_earlier_log(&mut connection, &context.keys).await?;
    let job = Job {
        redis: &context.redis,
        keys: &context.keys,
        partitions,
        target: args.target,
        archives: &args.archives,
    };
    let report = rebuild(&mut connection, &job).await?;
    if context.json {
        print_line(&serde_json::to_string(&report)?)?;
    } else {
        print_line(&format!(
            "rebuilt {}: {} events ({} from archives, {} skipped) in {:.2}s, {:.0} events/s; now {}",
            report.target,
            report.events,
            report.from_archives,
            report.skipped,
            report.seconds,
            report.events_per_second,
            generations_text(&report.generations)
        ))?;
    }
    Ok(())
}

/// `generation 2`; `generation 2 in each of the 8 partitions`; or, after a rebuild stopped
/// midway, `generations 2 to 3 (by partition: 3, 3, 2, ...)`.
fn generations_text(generations: &[u64]) -> String {
    let (Some(low), Some(high)) = (generations.iter().min(), generations.iter().max()) else {
        return "no partition".to_owned();
    };
    match generations.len() {
        1 => format!("generation {high}"),
        count if low == high => format!("generation {high} in each of the {count} partitions"),
        _ => {
            let each: Vec<String> = generations.iter().map(u64::to_string).collect();
            format!(
                "generations {low} to {high} (by partition: {})",
                each.join(", ")
            )
        }
    }
}

/// Refuses (exit code 2) while an earlier version's shared events stream holds entries: this
/// version does not read it, so the rebuilt state would lack everything it holds.
async fn refuse_an_earlier_log(connection: &mut Connection, keys: &Keys) -> Result<()> {
    let stream = keys.shared_events(Partition::FIRST);
    let length: u64 = connection.xlen(&stream).await?;
    if length > 0 {
        return Err(Failure::invalid(format!(
            "refusing to rebuild: {stream} holds {length} events written by an earlier blogctl, \
             which this version does not read, and the rebuilt state would lack them (see \
             \"Upgrading\" in the README)"
        ))
        .into());
    }
    Ok(())
}

/// A rebuild of one target over every partition of a namespace.
pub struct Job<'a> {
    pub redis: &'a Redis,
    pub keys: &'a Keys,
    pub partitions: Partitions,
    pub target: Target,
    /// The archive directories, oldest first.
    pub archives: &'a [PathBuf],
}

/// Rebuilds `job.target` in every partition, one after the other, each switched to its rebuilt
/// generation (its old one dropped) before the next is begun. It holds every partition's lock
/// throughout (a second rebuild of the same service is refused before anything is done, and
/// `trim` waits for all of them).
pub async fn rebuild(connection: &mut Connection, job: &Job<'_>) -> Result<Report> {
    let service = job.target.service();
    let owner = format!("{}-{}", std::process::id(), uuid::Uuid::now_v7());
    let locks: Vec<String> = job
        .partitions
        .all()
        .map(|partition| job.keys.rebuild_lock(service, partition))
        .collect();
    let mut result = Ok(());
    for lock in &locks {
        result = hold(connection, service, lock, &owner).await;
        if result.is_err() {
            break;
        }
    }
    let result = match result {
        Ok(()) => rebuild_partitions(connection, job, &owner).await,
        Err(error) => Err(error),
    };
    // Release only our own locks.
    for lock in &locks {
        let _: redis::RedisResult<i64> =
            UNLOCK.key(lock).arg(&owner).invoke_async(connection).await;
    }
    result
}

/// Takes a rebuild's `lock`, or keeps it (see [`HOLD`]); exit code 2 when another rebuild
/// holds it.
async fn hold(
    connection: &mut Connection,
    service: Service,
    lock: &str,
    owner: &str,
) -> Result<()> {
    let held: i64 = HOLD
        .key(lock)
        .arg(owner)
        .arg(LOCK_MS)
        .invoke_async(connection)
        .await?;
    if held != 1 {
        return Err(Failure::invalid(format!(
            "another rebuild of {service} is running (lock {lock}); wait for it, or delete the key if it died"
        ))
        .into());
    }
    Ok(())
}

/// Rebuilds every partition in turn, its lock held; returns what they did together.
async fn rebuild_partitions(
    connection: &mut Connection,
    job: &Job<'_>,
    owner: &str,
) -> Result<Report> {
    let started = Instant::now();
    let service = job.target.service();
    if job.partitions.count() > 1 {
        // A bad or missing archive is refused before any partition is switched.
        for partition in job.partitions.all() {
            check_log(
                connection,
                job,
                &Generations::new(job.keys, service, partition),
            )
            .await?;
        }
    }
    let progress = progress_bar(log_length(connection, job).await?, "rebuild");
    let mut counts = Counts::default();
    let mut generations = Vec::new();
    for partition in job.partitions.all() {
        let of_partition = Generations::new(job.keys, service, partition);
        // Its expiry pushed back: the partitions before it took time.
        let rebuilt = match hold(connection, service, &of_partition.lock(), owner).await {
            Ok(()) => {
                rebuild_partition(connection, job, &of_partition, &mut counts, &progress).await
            }
            Err(error) => Err(error),
        };
        match rebuilt {
            Ok(generation) => generations.push(generation),
            Err(error) => return Err(stopped_midway(error, job, partition)),
        }
    }
    progress.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    let events = counts.applied + counts.skipped;
    Ok(Report {
        target: format!("{:?}", job.target).to_lowercase(),
        events,
        from_archives: counts.from_archives,
        skipped: counts.skipped,
        seconds,
        events_per_second: events as f64 / seconds.max(1e-9),
        generation: generations.iter().copied().max().unwrap_or(0),
        generations,
    })
}

/// The error of a rebuild that failed in `partition`, saying which partitions were switched:
/// those before it were, it and those after it were not. Each partition is whole either way
/// (a partition is self-contained, and its switch is one atomic step), so the rebuild may be
/// run again. Unchanged with one partition.
fn stopped_midway(
    error: color_eyre::Report,
    job: &Job<'_>,
    partition: Partition,
) -> color_eyre::Report {
    let count = job.partitions.count();
    if count == 1 {
        return error;
    }
    let switched = match partition.0 {
        0 => "no partition was switched".to_owned(),
        1 => "partition 0 was switched to its rebuilt generation".to_owned(),
        2 => "partitions 0 and 1 were switched to their rebuilt generations".to_owned(),
        n => format!(
            "partitions 0 to {} were switched to their rebuilt generations",
            n - 1
        ),
    };
    error.wrap_err(format!(
        "rebuild of {} stopped at partition {partition} (of 0 to {}): {switched}; partition \
         {partition} and those after it keep their live ones (each partition is whole either \
         way: it is safe to run the rebuild again, which rebuilds every partition)",
        job.target.service(),
        count - 1
    ))
}

/// How many entries the streams the rebuild reads hold together, in every partition (for the
/// progress bar).
async fn log_length(connection: &mut Connection, job: &Job<'_>) -> Result<u64> {
    let mut length: u64 = 0;
    for partition in job.partitions.all() {
        for producer in Target::STREAMS {
            let stream_length: u64 = connection
                .xlen(job.keys.events(producer, partition))
                .await?;
            length += stream_length;
        }
    }
    Ok(length)
}

/// Reads one partition's archives and checks them against its streams, as its rebuild will,
/// writing nothing (see [`apply_archives`]).
async fn check_log(
    connection: &mut Connection,
    job: &Job<'_>,
    generations: &Generations,
) -> Result<()> {
    let live = generations.generation(0);
    let mut counts = Counts::default();
    for producer in Target::STREAMS {
        let events = job.keys.events(producer, generations.partition());
        let log = Log {
            target: job.target,
            producer,
            partition: generations.partition(),
            events: &events,
            base: &live,
            live: &live,
        };
        apply_archives(connection, &log, job.archives, &mut counts, Mode::Check).await?;
    }
    Ok(())
}

/// Rebuilds `job.target` in one partition and switches to the result; the old generation is
/// dropped. Returns the partition's generation now.
async fn rebuild_partition(
    connection: &mut Connection,
    job: &Job<'_>,
    generations: &Generations,
    counts: &mut Counts,
    progress: &ProgressBar,
) -> Result<u64> {
    let target = job.target;
    let live: Option<u64> = connection.get(generations.pointer()).await?;
    let live = live.unwrap_or(0);
    let counter = generations.counter();
    let mut next: u64 = connection.incr(&counter, 1).await?;
    if next <= live {
        // The counter was lost: the number may have been used by a rebuild that died.
        let _: () = connection.set(&counter, live + 1).await?;
        next = live + 1;
        drop_unswitched(connection, target, &generations.generation(next)).await?;
    }
    // Else numbers come from the counter only, so no rebuild used this one before.
    let filled = generations.generation(next);

    let fill_in = Fill {
        target,
        generations,
        live,
        next,
        archives: job.archives,
        progress,
    };
    if let Err(error) = fill(connection, job.redis, job.keys, &fill_in, counts).await {
        // Leave nothing half-built behind: the live generation was never touched (but for
        // its index of comments, completed).
        let _ = drop_unswitched(connection, target, &filled).await;
        return Err(error);
    }
    drop_generation(connection, target, &generations.generation(live)).await?;
    Ok(next)
}

/// What one rebuild fills, from where.
struct Fill<'a> {
    target: Target,
    generations: &'a Generations,
    /// The live generation when the rebuild started.
    live: u64,
    /// The generation being filled.
    next: u64,
    archives: &'a [PathBuf],
    progress: &'a ProgressBar,
}

/// Applies the archives and the streams of one partition to generation `next`, then switches
/// to it once it has caught up with every stream, adding what it applied and skipped to
/// `counts`.
async fn fill(
    connection: &mut Connection,
    redis: &Redis,
    keys: &Keys,
    fill: &Fill<'_>,
    counts: &mut Counts,
) -> Result<()> {
    let base = fill.generations.generation(fill.next);
    let live = fill.generations.generation(fill.live);
    let partition = fill.generations.partition();
    let mut read = Vec::new();
    for producer in Target::STREAMS {
        let events = keys.events(producer, partition);
        let log = Log {
            target: fill.target,
            producer,
            partition,
            events: &events,
            base: &base,
            live: &live,
        };
        let (last, removed) =
            apply_archives(connection, &log, fill.archives, counts, Mode::Apply).await?;
        read.push(StreamRead {
            producer,
            events,
            last,
            removed,
        });
    }
    // Each stream, from where its archives stopped; again until nothing new came meanwhile.
    loop {
        for stream in &mut read {
            let log = Log {
                target: fill.target,
                producer: stream.producer,
                partition,
                events: &stream.events,
                base: &base,
                live: &live,
            };
            let after = std::mem::take(&mut stream.last);
            stream.last =
                apply_stream(connection, redis, &log, after, counts, fill.progress).await?;
        }
        if try_switch(connection, fill, &read).await? {
            return Ok(());
        }
    }
}

/// How far a rebuild has read one events stream.
struct StreamRead {
    producer: Service,
    events: String,
    /// The id of the last entry applied from it (`0-0` for none).
    last: String,
    /// How many entries had been removed from it when it was checked for a gap.
    removed: u64,
}

/// Whether archives are applied, or only read and checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Apply,
    /// Every check, nothing written: only `from_archives` is counted.
    Check,
}

/// Applies the archives of one stream (its file in each directory, oldest first: see
/// [`stream_archive`]) and checks they fit the stream; returns the id of the last entry applied
/// (`0-0` for none) and how many entries the stream has lost to trims.
async fn apply_archives(
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

/// Switches to the generation being filled if no stream holds anything after what was applied
/// from it (see [`SWITCH`]): true when switched, false when the log grew (apply the rest and
/// try again), exit code 2 when another rebuild switched or entries were trimmed meanwhile.
async fn try_switch(
    connection: &mut Connection,
    fill: &Fill<'_>,
    read: &[StreamRead],
) -> Result<bool> {
    let mut switch = SWITCH.key(fill.generations.pointer());
    switch.arg(fill.next).arg(fill.live);
    for stream in read {
        switch
            .key(&stream.events)
            .arg(&stream.last)
            .arg(stream.removed);
    }
    let switched: Value = switch.invoke_async(connection).await?;
    match switched {
        Value::Int(1) => Ok(true),
        Value::Int(_) => Ok(false),
        refused => {
            let target = fill.target;
            let why = match field_at(&refused, 0).as_deref() {
                Some("switched") => format!(
                    "another rebuild switched {} to a new generation meanwhile",
                    target.service()
                ),
                _ => format!(
                    "entries were trimmed from {} while it ran (is a `blogctl trim` running?)",
                    field_at(&refused, 1).unwrap_or_default()
                ),
            };
            Err(Failure::invalid(format!(
                "rebuild of {} abandoned, nothing switched: {why}; run it again (with \
                 every archive `blogctl trim` wrote)",
                target.service()
            ))
            .into())
        }
    }
}

/// What a rebuild reads and where it writes.
struct Log<'a> {
    target: Target,
    /// The service that writes the stream.
    producer: Service,
    partition: Partition,
    /// The events stream.
    events: &'a str,
    /// The generation being filled.
    base: &'a Generation,
    /// The live generation the rebuild will replace (see [`write`]).
    live: &'a Generation,
}

/// Applies the stream after `after` to the generation being filled, up to the end the reads find; returns
/// the id of the last entry applied (`after` when there was none).
///
/// Three things run at once, on the two cores: a thread of its own reads and parses the chunks
/// ahead, this task checks a chunk and turns it into writes, and Redis applies the previous
/// chunk's writes. The writes go one chunk after the other, in log order.
async fn apply_stream(
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

/// Refuses to rebuild from a log trimmed beyond what the archives hold: the result would miss
/// the trimmed events and replace a complete state with a partial one. Entries leave the events
/// stream only through `blogctl trim`, which archives each exactly once, so the archives must
/// hold as many entries as the stream has lost. Returns how many it has lost.
async fn refuse_a_gap(connection: &mut Connection, events: &str, archived: u64) -> Result<u64> {
    let info: redis::RedisResult<Value> = redis::cmd("XINFO")
        .arg("STREAM")
        .arg(events)
        .query_async(connection)
        .await;
    let Ok(info) = info else {
        // No stream at all: nothing was trimmed from it.
        return Ok(0);
    };
    let info = map_of(info);
    let number = |name| {
        info.get(name)
            .and_then(|value| redis::from_redis_value_ref::<u64>(value).ok())
            .unwrap_or(0)
    };
    let removed = number("entries-added").saturating_sub(number("length"));
    if removed > archived {
        return Err(Failure::invalid(format!(
            "{} trimmed from {events} and the archives given hold {archived}: \
             give every archive `blogctl trim` wrote (--archive DIR, oldest first), or the \
             rebuilt state would miss events",
            count_of(removed, "entry was", "entries were")
        ))
        .into());
    }
    Ok(removed)
}

/// The text of item `index` of an array reply.
fn field_at(reply: &Value, index: usize) -> Option<String> {
    match reply {
        Value::Array(items) => match items.get(index)? {
            Value::BulkString(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
            Value::SimpleString(text) => Some(text.clone()),
            _ => None,
        },
        _ => None,
    }
}

#[derive(Debug, Default)]
struct Counts {
    applied: u64,
    skipped: u64,
    from_archives: u64,
}

impl Counts {
    /// Adds the writes of one entry of `producer`'s stream. Events of types that do not change
    /// the target are skipped unread, and malformed and unknown entries, and events of a kind
    /// another service produces, are skipped, as the services skip them (they are in the dead
    /// letters).
    fn add(&mut self, target: Target, producer: Service, calls: &mut Calls, delivery: &Delivery) {
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
async fn write(
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

/// Deletes every key of a generation that was live, a page at a time, through its indexes: the
/// view's list of posts, or the comments state's list of comment ids (which [`write`] completes
/// in a generation an earlier version wrote). The view's comments on a post it never listed
/// (which only a hand-written event makes in a live generation) are left behind.
async fn drop_generation(
    connection: &mut Connection,
    target: Target,
    generation: &Generation,
) -> Result<()> {
    match target {
        Target::Query => drop_view(connection, generation).await,
        Target::Comments => drop_comments(connection, generation).await,
    }
}

/// Deletes a generation of the query view, its keys found through its list of posts.
async fn drop_view(connection: &mut Connection, generation: &Generation) -> Result<()> {
    let posts = generation.view_posts();
    let mut start = 0;
    loop {
        let ids: Vec<String> = connection
            .zrange(&posts, start, start + DROP_PAGE as isize - 1)
            .await?;
        if ids.is_empty() {
            break;
        }
        let doomed: Vec<String> = ids
            .iter()
            .flat_map(|id| [generation.view_post(id), generation.view_comments(id)])
            .collect();
        let _: () = connection.unlink(&doomed).await?;
        start += ids.len() as isize;
    }
    let _: () = connection.unlink(&posts).await?;
    Ok(())
}

/// Deletes a generation of the comments state: its comments, popped from its index a page at
/// a time, then the posts it knew.
async fn drop_comments(connection: &mut Connection, generation: &Generation) -> Result<()> {
    loop {
        // The index is named as a key: a Cluster routes the script to the node of its slot.
        let dropped: usize = DROP_COMMENTS
            .key(generation.comment_ids())
            .arg(generation.base())
            .arg(DROP_PAGE)
            .invoke_async(connection)
            .await?;
        if dropped < DROP_PAGE {
            break;
        }
    }
    let _: () = connection
        .unlink(&[generation.known_posts(), generation.comment_ids()])
        .await?;
    Ok(())
}

/// Deletes every key of a generation a rebuild filled and never switched to: its own, when it
/// fails, or one a rebuild that died left under a number used again. The comments state's goes
/// through its index, like a live one: every batch lists the comments it writes. The view's is
/// scanned for: its list of posts would miss the comments of a post whose `PostCreated` the
/// rebuild had not applied yet (a post created while it ran, after it had read the posts'
/// stream and before it read the comments').
async fn drop_unswitched(
    connection: &mut Connection,
    target: Target,
    generation: &Generation,
) -> Result<()> {
    match target {
        Target::Query => scan_and_drop(connection, generation).await,
        Target::Comments => drop_comments(connection, generation).await,
    }
}

/// Deletes every key of a generation, scanning the keyspace of the Redis (on a Cluster, the
/// master) holding its slot for them.
async fn scan_and_drop(connection: &mut Connection, generation: &Generation) -> Result<()> {
    let pattern = format!(
        "{}*",
        generation
            .base()
            .replace('[', "\\[")
            .replace('?', "\\?")
            .replace('*', "\\*")
    );
    let mut cursor: u64 = 0;
    loop {
        let mut scan = redis::cmd("SCAN");
        scan.arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(DROP_PAGE);
        // On a Cluster, every page from the master holding the generation's slot.
        let (next, found): (u64, Vec<String>) =
            connection.query_at(generation.base(), scan).await?;
        if !found.is_empty() {
            let _: () = redis::cmd("UNLINK")
                .arg(&found)
                .query_async(connection)
                .await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}
