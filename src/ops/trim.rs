//! `blogctl trim`: removes from each events stream only what every group reading it has
//! acknowledged, after appending it to an NDJSON archive (one file per stream, in the directory
//! `--archive` names), so the log stays bounded and a rebuild stays possible.
//!
//! Every stream of every partition is checked first (groups present, none lagging, no rebuild
//! of any partition running), and every archive file opened, then the partitions are trimmed
//! one after the other, each stream on its own. A partition is self-contained (its streams and
//! its rebuild locks share one Cluster slot), so each step stays within one partition. A
//! stream's boundary is the first entry any of its groups may still need: the minimum over
//! groups of their oldest pending entry, or the entry after their last delivered one when
//! nothing is pending. Everything before it is appended to the archive (see
//! [`super::archive`]), the file is fsynced, then the stream is trimmed in steps, each a script
//! that first checks the groups did not change meanwhile and no rebuild of its partition runs.
//! Entries the archive already holds (a trim that stopped between the fsync and the XTRIM) are
//! not written twice. Inboxes and dead letters are never trimmed.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use clap::Args;
use color_eyre::Result;
use color_eyre::eyre::{WrapErr, eyre};
use redis::{AsyncCommands, Script};
use serde::Serialize;

use super::archive::{Archive, ArchiveLine, refuse_a_non_archive, stream_archive};
use super::status::{StreamStatus, inspect_stream};
use super::{ExpectedGroup, FIRST_ENTRY, expected_groups, page_through, read_range};
use crate::bus::compare_ids;
use crate::connection::Connection;
use crate::context::Context;
use crate::error::Failure;
use crate::keyspace::{Partition, Partitions, Service};
use crate::output::{count_of, print_line};
use crate::services;

/// KEYS[1]: the events stream, KEYS[2..]: the locks of its partition's rebuilds. ARGV[1]: the boundary;
/// ARGV[2..]: the groups it was computed from. Trims only if no rebuild runs (it reads the
/// stream, and would miss what is removed before it reads it), the stream still has exactly
/// those groups and none has an entry before the boundary pending: {'trimmed', count}, else
/// {'rebuilding', lock} or {'changed'}.
const TRIM: &str = include_str!("lua/trim.lua");

/// Entries removed per step of a trim, at most: a few milliseconds inside Redis.
const TRIM_STEP: u64 = 10_000;

/// Streams the question (or the refusal without `--yes`) names one by one; the rest are
/// counted, so that many partitions do not make it a wall of text.
const CONFIRM_STREAMS: usize = 6;

/// Arguments of `blogctl trim`.
#[derive(Debug, Args)]
pub struct TrimArgs {
    /// Directory (created if missing) the removed entries are appended to first: one NDJSON
    /// file per events stream, `<service>.ndjson` (partition 0) or `<service>.<p>.ndjson`
    /// (partition p), one `{"id","fields"}` object per line; `blogctl rebuild --archive DIR`
    /// reads them before the streams.
    #[arg(long, value_name = "DIR")]
    pub archive: PathBuf,
    /// Trim without asking (needed when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Refuse when a group has more than this many entries left to read.
    #[arg(long, default_value_t = 10_000)]
    pub max_lag: u64,
}

/// What `trim --json` prints.
#[derive(Debug, Serialize)]
struct Trimmed {
    stream: String,
    archive: PathBuf,
    /// Entries before it were removed.
    boundary: String,
    archived: u64,
    /// Entries the archive held already (from a trim that stopped before removing them).
    already_archived: u64,
    removed: u64,
}

pub async fn run(context: &Context, args: &TrimArgs) -> Result<()> {
    if args.archive.exists() && !args.archive.is_dir() {
        return Err(Failure::invalid(format!(
            "--archive {} is not a directory: trim writes one <service>.ndjson per events \
             stream in the directory it names (and creates it)",
            args.archive.display()
        ))
        .into());
    }
    let mut connection = context.connect().await?;
    let partitions = context.partitions(&mut connection).await?;
    refuse_while_rebuilding(&mut connection, &rebuild_locks(context, partitions.all())).await?;
    // Every stream of every partition is checked before anything is archived or removed.
    let expected = expected_groups(&context.keys, partitions);
    let mut plans = Vec::new();
    for partition in partitions.all() {
        for producer in Service::PRODUCERS {
            let stream = Stream {
                partition,
                producer,
            };
            plans.push(plan(context, &mut connection, stream, &expected, args).await?);
        }
    }
    prepare_archives(&plans, args).await?;
    let mut trimmed_any = false;
    for mut plan in plans {
        if plan.anything {
            let locks = rebuild_locks(context, [plan.partition]);
            if let Err(error) = trim_stream(&mut connection, &locks, &mut plan).await {
                return Err(stopped(error, trimmed_any, partitions));
            }
            trimmed_any = true;
        }
        report(context, &plan.trimmed)?;
    }
    Ok(())
}

/// Asks (or needs `--yes`), then checks every archive file it will append to and creates the
/// directory, before anything is archived or removed; nothing to do when no stream has entries
/// before its boundary.
async fn prepare_archives(plans: &[StreamPlan], args: &TrimArgs) -> Result<()> {
    let work: Vec<&Trimmed> = plans
        .iter()
        .filter(|plan| plan.anything)
        .map(|plan| &plan.trimmed)
        .collect();
    if work.is_empty() {
        return Ok(());
    }
    if !args.yes {
        confirm(&work, &args.archive).await?;
    }
    for trimmed in &work {
        refuse_a_non_archive(&trimmed.archive)?;
    }
    std::fs::create_dir_all(&args.archive)
        .wrap_err_with(|| format!("creating the archive directory {}", args.archive.display()))
}

/// The error of a trim that failed on one stream, saying that the streams reported before it
/// were trimmed (when some were) and that running it again trims the rest.
fn stopped(
    error: color_eyre::Report,
    trimmed_any: bool,
    partitions: Partitions,
) -> color_eyre::Report {
    if !trimmed_any {
        return error;
    }
    let streams = if partitions.count() == 1 {
        "streams"
    } else {
        "streams and partitions"
    };
    error.wrap_err(format!(
        "trim stopped: the {streams} reported above were archived and trimmed, the others \
         were not (each stream is whole either way); run it again for the rest"
    ))
}

/// One events stream: its partition and the service that writes it.
#[derive(Debug, Clone, Copy)]
struct Stream {
    partition: Partition,
    producer: Service,
}

/// What a trim will do to one stream, checked before anything is done to any.
struct StreamPlan {
    partition: Partition,
    trimmed: Trimmed,
    /// The groups the boundary was computed from.
    status: StreamStatus,
    /// Whether the stream has entries before the boundary.
    anything: bool,
}

/// Checks that `stream` may be trimmed (exit code 2 when not) and finds its boundary;
/// `expected` is every group the services read with, in every partition.
async fn plan(
    context: &Context,
    connection: &mut Connection,
    Stream {
        partition,
        producer,
    }: Stream,
    expected: &[ExpectedGroup],
    args: &TrimArgs,
) -> Result<StreamPlan> {
    let stream = context.keys.events(producer, partition);
    let expected: Vec<ExpectedGroup> = expected
        .iter()
        .filter(|expected| expected.stream == stream)
        .cloned()
        .collect();
    let status = inspect_stream(connection, &stream, &expected).await?;
    refuse_missing_groups(&stream, &status)?;
    refuse_lagging_groups(&stream, &status, args.max_lag)?;
    let boundary = first_needed_by_any_group(&stream, &status)?;
    let before_boundary = format!("({boundary}");
    let first = read_range(connection, &stream, FIRST_ENTRY, &before_boundary, 1).await?;
    Ok(StreamPlan {
        partition,
        trimmed: Trimmed {
            stream,
            archive: stream_archive(&args.archive, producer, partition),
            boundary,
            archived: 0,
            already_archived: 0,
            removed: 0,
        },
        status,
        anything: !first.is_empty(),
    })
}

/// Archives the entries of one stream before its boundary, then removes them, step by step.
async fn trim_stream(
    connection: &mut Connection,
    locks: &[String],
    plan: &mut StreamPlan,
) -> Result<()> {
    let trimmed = &mut plan.trimmed;
    let before_boundary = format!("({}", trimmed.boundary);
    let mut archive = Archive::open(&trimmed.archive)?;
    if let Err(error) = copy_to_archive(connection, &before_boundary, &mut archive, trimmed).await {
        archive.undo();
        return Err(error.wrap_err(format!(
            "archiving to {}; nothing was trimmed from {}",
            trimmed.archive.display(),
            trimmed.stream
        )));
    }

    // Step by step (each step checks the groups and the locks again), until done.
    loop {
        match invoke_trim(connection, trimmed, locks, &plan.status).await? {
            TrimOutcome::Trimmed { removed, done } => {
                trimmed.removed += removed;
                if done {
                    return Ok(());
                }
            }
            TrimOutcome::Rebuilding { lock } if trimmed.removed == 0 => {
                archive.undo();
                return Err(rebuilding(&lock).into());
            }
            TrimOutcome::Changed if trimmed.removed == 0 => {
                archive.undo();
                return Err(eyre!(
                    "the consumer groups of {} changed while trimming; nothing was trimmed \
                     from it (run it again)",
                    trimmed.stream
                ));
            }
            // Some steps were done: the archive holds every entry, removed or not.
            _ => {
                return Err(eyre!(
                    "trimming {} stopped after {} (a rebuild started, or the groups changed); \
                     the archive holds every entry, removed or not: run it again",
                    trimmed.stream,
                    count_of(trimmed.removed, "entry", "entries")
                ));
            }
        }
    }
}

/// The locks the rebuilds of `partitions` hold while they run.
fn rebuild_locks(
    context: &Context,
    partitions: impl IntoIterator<Item = Partition>,
) -> Vec<String> {
    partitions
        .into_iter()
        .flat_map(|partition| {
            services::REBUILDABLE
                .iter()
                .map(move |&service| context.keys.rebuild_lock(service, partition))
        })
        .collect()
}

/// Refuses (exit code 2) when a service's group does not exist yet.
fn refuse_missing_groups(stream: &str, status: &StreamStatus) -> Result<()> {
    let missing: Vec<&str> = status
        .groups
        .iter()
        .filter(|group| group.missing)
        .map(|group| group.group.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(Failure::invalid(format!(
            "refusing to trim {stream}: group {} is missing, and a service that never ran needs \
             the whole log (start it once: `blogctl serve {}`)",
            missing.join(", "),
            missing.join(" ")
        ))
        .into());
    }
    Ok(())
}

/// Refuses (exit code 2) when a group has more than `max_lag` entries left to read.
fn refuse_lagging_groups(stream: &str, status: &StreamStatus, max_lag: u64) -> Result<()> {
    for group in &status.groups {
        if let Some(lag) = group.lag.filter(|lag| *lag > max_lag) {
            return Err(Failure::invalid(format!(
                "refusing to trim {stream}: group {} lags {} (more than --max-lag {}); \
                 let it catch up first",
                group.group,
                count_of(lag, "entry", "entries"),
                max_lag
            ))
            .into());
        }
    }
    Ok(())
}

/// The boundary: the oldest entry any group may still need.
fn first_needed_by_any_group(stream: &str, status: &StreamStatus) -> Result<String> {
    status
        .groups
        .iter()
        .filter_map(|group| group.first_needed())
        .min_by(|a, b| compare_ids(a, b))
        .ok_or_else(|| eyre!("{stream} has no consumer group"))
}

/// Appends to `archive` the entries of the stream before the boundary that it does not hold
/// yet, counting them in `trimmed`, then fsyncs it.
async fn copy_to_archive(
    connection: &mut Connection,
    before_boundary: &str,
    archive: &mut Archive,
    trimmed: &mut Trimmed,
) -> Result<()> {
    page_through(
        connection,
        &trimmed.stream,
        FIRST_ENTRY,
        before_boundary,
        |page| {
            for entry in &page {
                let line = ArchiveLine::from_entry(entry);
                if archive.holds(&entry.id) {
                    trimmed.already_archived += 1;
                    archive.cover(&line);
                } else {
                    archive.append(&line)?;
                    trimmed.archived += 1;
                }
            }
            Ok(true)
        },
    )
    .await?;
    archive.write_check()?;
    archive.sync()
}

/// What the trim script did.
enum TrimOutcome {
    Trimmed {
        removed: u64,
        /// No entry before the boundary is left.
        done: bool,
    },
    /// A rebuild started meanwhile; it holds `lock`.
    Rebuilding { lock: String },
    /// The groups changed meanwhile.
    Changed,
}

/// Runs the trim script (see [`TRIM`]) with the boundary and the groups of `status`, which
/// it was computed from.
async fn invoke_trim(
    connection: &mut Connection,
    trimmed: &Trimmed,
    locks: &[String],
    status: &StreamStatus,
) -> Result<TrimOutcome> {
    let groups: Vec<String> = status.groups.iter().map(|g| g.group.clone()).collect();
    static SCRIPT: LazyLock<Script> =
        LazyLock::new(|| Script::new(&format!("local TRIM_STEP = {TRIM_STEP}\n{TRIM}")));
    let mut invocation = SCRIPT.key(&trimmed.stream);
    invocation.key(locks);
    invocation.arg(&trimmed.boundary);
    for group in &groups {
        invocation.arg(group);
    }
    let reply: (String, Option<redis::Value>, Option<String>) = invocation
        .invoke_async(connection)
        .await
        .wrap_err_with(|| {
            format!(
                "trimming {} (the archive {} holds the entries; a later trim will not \
                 write them again)",
                trimmed.stream,
                trimmed.archive.display()
            )
        })?;
    let (outcome, detail, progress) = reply;
    if outcome == "rebuilding" {
        let lock: String = detail
            .and_then(|value| redis::from_redis_value(value).ok())
            .unwrap_or_default();
        return Ok(TrimOutcome::Rebuilding { lock });
    }
    let removed: Option<u64> = detail.and_then(|value| redis::from_redis_value(value).ok());
    if outcome != "trimmed" {
        return Ok(TrimOutcome::Changed);
    }
    Ok(TrimOutcome::Trimmed {
        removed: removed.unwrap_or(0),
        done: progress.as_deref() != Some("more"),
    })
}

/// Refuses (exit code 2) while a rebuild runs: it reads the stream, and entries removed before
/// it reads them would be missing from what it builds.
async fn refuse_while_rebuilding(connection: &mut Connection, locks: &[String]) -> Result<()> {
    for lock in locks {
        let held: bool = connection.exists(lock).await?;
        if held {
            return Err(rebuilding(lock).into());
        }
    }
    Ok(())
}

fn rebuilding(lock: &str) -> Failure {
    Failure::invalid(format!(
        "refusing to trim while a rebuild runs (lock {lock}): trim after it finishes"
    ))
}

fn report(context: &Context, trimmed: &Trimmed) -> Result<()> {
    if context.json {
        print_line(&serde_json::to_string(trimmed)?)?;
    } else if trimmed.removed == 0 && trimmed.archived == 0 {
        print_line(&format!(
            "nothing to trim: {} has no entry before {}, the first one a group still needs",
            trimmed.stream, trimmed.boundary
        ))?;
    } else {
        let already = if trimmed.already_archived > 0 {
            format!(
                " ({} already there)",
                count_of(trimmed.already_archived, "entry was", "entries were")
            )
        } else {
            String::new()
        };
        print_line(&format!(
            "archived {} to {}{already}",
            count_of(trimmed.archived, "entry", "entries"),
            trimmed.archive.display()
        ))?;
        print_line(&format!(
            "removed {} from {} (every entry before {})",
            count_of(trimmed.removed, "entry", "entries"),
            trimmed.stream,
            trimmed.boundary
        ))?;
    }
    Ok(())
}

/// Asks on the terminal; without one, refuses (exit code 2) and says to pass --yes.
async fn confirm(work: &[&Trimmed], archive: &Path) -> Result<()> {
    let mut streams: Vec<String> = work
        .iter()
        .take(CONFIRM_STREAMS)
        .map(|trimmed| format!("of {} before {}", trimmed.stream, trimmed.boundary))
        .collect();
    if work.len() > CONFIRM_STREAMS {
        streams.push(format!(
            "of {} (each before the first entry one of its groups still needs)",
            count_of(
                (work.len() - CONFIRM_STREAMS) as u64,
                "more stream",
                "more streams"
            )
        ));
    }
    let plan = format!(
        "archive to {} and remove every entry {}",
        archive.display(),
        streams.join(", and ")
    );
    if !std::io::stdin().is_terminal() {
        return Err(Failure::invalid(format!(
            "trim would {plan}: pass --yes to do it (stdin is not a terminal to ask)"
        ))
        .into());
    }
    let question = format!("{plan}?");
    let answer = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
        eprint!("{question} [y/N] ");
        std::io::stderr().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        Ok(answer)
    })
    .await??;
    if matches!(answer.trim(), "y" | "Y" | "yes" | "YES" | "Yes") {
        Ok(())
    } else {
        Err(Failure::invalid("trim cancelled; nothing was changed").into())
    }
}
