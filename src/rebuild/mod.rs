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
//!
//! - `checks`: what refuses a rebuild before it writes: an earlier version's log, a stream
//!   trimmed beyond its archives, (with several partitions) every partition's archives checked
//!   up front.
//! - `fill`: filling a partition's new generation from its log, then the atomic switch to it,
//!   refused when the log changed under it.
//! - `apply`: reading the log (a stream's archives, then the stream) and applying it to the
//!   generation being filled, a pipeline of scripts at a time.
//! - `archives`: reading the archives `blogctl trim` wrote, applied in order and checked against
//!   the stream.
//! - `drop`: deleting a generation, live or never switched to.
//!
//! The command, its report, the locks and each partition's rebuild are here.

mod apply;
mod archives;
mod checks;
mod drop;
mod fill;

use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Instant;

use clap::{Args, ValueEnum};
use color_eyre::Result;
use indicatif::ProgressBar;
use redis::{AsyncCommands, Script};
use serde::Serialize;

use crate::connection::{Connection, Redis};
use crate::context::Context;
use crate::error::Failure;
use crate::events::EventKind;
use crate::keyspace::{Keys, Partition, Partitions, Service};
use crate::output::{print_line, progress_bar};
use crate::services::generations::{Calls, Generations};
use crate::services::{comments, query};
use apply::Counts;
use checks::{check_log, refuse_an_earlier_log};
use drop::{drop_generation, drop_unswitched};
use fill::{Fill, fill};

/// How long a rebuild holds its lock before another may assume it died.
const LOCK_MS: u64 = 3_600_000;

/// Takes or keeps a rebuild's lock; KEYS and ARGV: see the script.
static HOLD: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("hold.lua")));

/// Deletes the lock KEYS[1] if it still holds ARGV[1] (it may have expired and been taken).
static UNLOCK: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("unlock.lua")));

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
