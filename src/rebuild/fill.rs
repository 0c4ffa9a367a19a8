//! Filling a partition's new generation from the log (its archives, then its streams, again
//! until nothing new came meanwhile) and switching to it: one script, in the partition's slot,
//! that checks the log did not change under the rebuild and moves the generation pointer.

use std::path::PathBuf;
use std::sync::LazyLock;

use color_eyre::Result;
use indicatif::ProgressBar;
use redis::{Script, Value};

use super::Target;
use super::apply::{Counts, Log, Mode, apply_archives, apply_stream};
use crate::connection::{Connection, Redis};
use crate::error::Failure;
use crate::keyspace::{Keys, Service};
use crate::services::generations::Generations;

/// Switches to the new generation if no stream read holds anything after what the rebuild
/// applied from it, the pointer still names the generation the rebuild started from, and no
/// entry was removed from a stream since the rebuild checked it for a gap (a `trim` meanwhile
/// may have removed entries before the rebuild read them). KEYS and ARGV: see the script.
/// Returns 1 when switched, 0 when the log grew (apply the rest and try again), or
/// `{what}` naming what changed (`switched`, or `trimmed` and the stream).
static SWITCH: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("switch.lua")));

/// What one rebuild fills, from where.
pub(super) struct Fill<'a> {
    pub(super) target: Target,
    pub(super) generations: &'a Generations,
    /// The live generation when the rebuild started.
    pub(super) live: u64,
    /// The generation being filled.
    pub(super) next: u64,
    pub(super) archives: &'a [PathBuf],
    pub(super) progress: &'a ProgressBar,
}

/// Applies the archives and the streams of one partition to generation `next`, then switches
/// to it once it has caught up with every stream, adding what it applied and skipped to
/// `counts`.
pub(super) async fn fill(
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
