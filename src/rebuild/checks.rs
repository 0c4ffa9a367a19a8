//! The checks that refuse a rebuild before it writes a state that would be wrong: a log an
//! earlier version wrote, a stream trimmed beyond what its archives hold, and (with several
//! partitions) every partition's archives read against its streams before any is switched.

use color_eyre::Result;
use redis::{AsyncCommands, Value};

use super::apply::{Counts, Log, Mode, apply_archives};
use super::{Job, Target};
use crate::connection::{Connection, map_of};
use crate::error::Failure;
use crate::keyspace::{Keys, Partition};
use crate::output::count_of;
use crate::services::generations::Generations;

/// Refuses (exit code 2) while an earlier version's shared events stream holds entries: this
/// version does not read it, so the rebuilt state would lack everything it holds.
pub(super) async fn refuse_an_earlier_log(connection: &mut Connection, keys: &Keys) -> Result<()> {
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

/// Reads one partition's archives and checks them against its streams, as its rebuild will,
/// writing nothing (see [`apply_archives`]).
pub(super) async fn check_log(
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

/// Refuses to rebuild from a log trimmed beyond what the archives hold: the result would miss
/// the trimmed events and replace a complete state with a partial one. Entries leave the events
/// stream only through `blogctl trim`, which archives each exactly once, so the archives must
/// hold as many entries as the stream has lost. Returns how many it has lost.
pub(super) async fn refuse_a_gap(
    connection: &mut Connection,
    events: &str,
    archived: u64,
) -> Result<u64> {
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
