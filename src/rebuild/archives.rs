//! Reading the archives `blogctl trim` wrote, for a rebuild: applied in order, each trim's check
//! verified, and refused when they do not fit the stream.

use std::io::BufRead;
use std::path::Path;

use color_eyre::Result;
use color_eyre::eyre::WrapErr;
use redis::AsyncCommands;

use super::apply::{CHUNK, Counts, Log, Mode, write};
use crate::bus::{Delivery, RawEntry, StreamId, compare_ids};
use crate::connection::Connection;
use crate::error::Failure;
use crate::ops::archive::{ArchiveCheck, ArchiveLine, LinesHash};

/// Where the reading of the archives stands.
pub(super) struct ArchiveRead<'a> {
    /// Ids of archived lines no check covers, which must still be on the stream.
    pub(super) unchecked: &'a mut Vec<String>,
    /// The id of the last line read (`0-0` before the first).
    pub(super) last: &'a mut String,
    /// The stream's first entry, if it has one.
    pub(super) first_on_stream: Option<&'a str>,
    /// Ids of archived lines at or after it.
    pub(super) overlap: &'a mut Vec<String>,
    /// Whether the lines are applied, or only checked.
    pub(super) mode: Mode,
}

/// Applies one archive written by `blogctl trim` to the generation being filled, a chunk of
/// writes at a time (or, in [`Mode::Check`], only checks it); `last` becomes the id of the
/// last entry it holds.
pub(super) async fn apply_archive(
    connection: &mut Connection,
    log: &Log<'_>,
    archive: &Path,
    counts: &mut Counts,
    mut read: ArchiveRead<'_>,
) -> Result<()> {
    let file =
        std::fs::File::open(archive).wrap_err_with(|| format!("opening {}", archive.display()))?;
    let mut checks = Checks::default();
    let mut calls = log.target.calls();
    let mut reader = std::io::BufReader::new(file);
    let mut number = 0;
    loop {
        let mut line = String::new();
        let length = reader
            .read_line(&mut line)
            .wrap_err_with(|| format!("reading {}", archive.display()))?;
        if length == 0 {
            break;
        }
        number += 1;
        if line.trim().is_empty() {
            continue;
        }
        let place = format!("{} line {number}", archive.display());
        if let Some(check) = ArchiveCheck::parse(&line) {
            checks.check(&check, &place)?;
            continue;
        }
        let Some(entry) = parse_archive_line(&line, archive, number)? else {
            break;
        };
        checks.entry(&line, &entry.id);
        read.follow(&entry.id, archive, number)?;
        counts.from_archives += 1;
        if read.mode == Mode::Check {
            *read.last = entry.id;
            continue;
        }
        let delivery = delivery_of(entry, log);
        counts.add(log.target, log.producer, &mut calls, &delivery);
        *read.last = delivery.id;
        if calls.ready() >= CHUNK {
            write(connection, log, &calls.take()).await?;
        }
    }
    write(connection, log, &calls.finish()).await?;
    read.unchecked.extend(checks.unchecked());
    Ok(())
}

impl ArchiveRead<'_> {
    /// Takes the id of the next archived entry, line `number` of `archive`: noted in the
    /// overlap when the stream holds it too, refused (exit code 2) when it does not follow the
    /// last one read.
    fn follow(&mut self, id: &str, archive: &Path, number: u64) -> Result<()> {
        // Ids increase from line to line, across archives, and stay before the stream's
        // first entry (checked once the archives are read): a line that breaks this is not
        // from `blogctl trim`, and would make the rebuild skip what the stream holds.
        let last = self.last.as_str();
        let in_order = StreamId::parse(id, false).is_some()
            && (last == "0-0" || compare_ids(id, last).is_gt());
        if self
            .first_on_stream
            .is_some_and(|first| compare_ids(id, first).is_ge())
        {
            self.overlap.push(id.to_owned());
        }
        if !in_order {
            return Err(Failure::invalid(format!(
                "{} line {number}: id {id:?} does not follow {}: not an archive `blogctl trim` \
                 wrote (ids increase from line to line, archives given oldest first)",
                archive.display(),
                self.last
            ))
            .into());
        }
        Ok(())
    }
}

/// An archived entry as the services read it from the events stream.
fn delivery_of(entry: ArchiveLine, log: &Log<'_>) -> Delivery {
    let fields = entry
        .fields
        .into_iter()
        .map(|(k, v)| (k.into_bytes(), v.into_bytes()))
        .collect();
    Delivery {
        stream: log.events.to_owned(),
        id: entry.id,
        fields,
        deliveries: 1,
    }
}

/// The integrity checks of one archive file, as it is read (see `ArchiveCheck`).
#[derive(Default)]
struct Checks {
    /// The entry lines since the last check, and their ids.
    hash: LinesHash,
    ids: Vec<String>,
    seen_check: bool,
}

impl Checks {
    fn entry(&mut self, line: &str, id: &str) {
        self.hash.add(line);
        self.ids.push(id.to_owned());
    }

    /// Refuses (exit code 2) a check that does not match the entry lines before it. The first
    /// check of a file may cover fewer than all of them: the older ones were written before
    /// trims wrote checks.
    fn check(&mut self, check: &ArchiveCheck, place: &str) -> Result<()> {
        let since = self.hash.len();
        let covers = check.entries == since || (!self.seen_check && check.entries <= since);
        let matches = covers
            && self.hash.of_last(check.entries).as_deref() == Some(check.hash.as_str())
            && self.ids.last() == Some(&check.last);
        if !matches {
            return Err(Failure::invalid(format!(
                "{place}: the check does not match the {since} entry lines before it: the \
                 archive was edited, or lines were added or removed"
            ))
            .into());
        }
        self.hash = LinesHash::default();
        self.ids.clear();
        self.seen_check = true;
        Ok(())
    }

    /// The ids after the last check (a trim that stopped before writing its check), which must
    /// still be on the stream; none for a file without checks (written before trims wrote them).
    fn unchecked(self) -> Vec<String> {
        if self.seen_check {
            self.ids
        } else {
            Vec::new()
        }
    }
}

/// Line `number` of `archive` as an entry; `None` for a last line cut short, exit code 2 for
/// anything else that is not an archived entry.
fn parse_archive_line(line: &str, archive: &Path, number: u64) -> Result<Option<ArchiveLine>> {
    match serde_json::from_str(line) {
        Ok(entry) => Ok(Some(entry)),
        // A last line without its newline was cut short by a crash while `trim` wrote
        // it; `trim` had not removed that entry from the stream yet, so it is read there.
        Err(_) if !line.ends_with('\n') => Ok(None),
        Err(error) => {
            let place = format!("{} line {number}", archive.display());
            Err(Failure::invalid(format!("{place}: not an archived entry: {error}")).into())
        }
    }
}

/// Refuses (exit code 2) archived lines no check covers unless the stream still holds exactly
/// them: only a trim that stopped between writing them and its check leaves such lines.
pub(super) async fn refuse_unchecked_lines_off_the_stream(
    connection: &mut Connection,
    events: &str,
    unchecked: &[String],
) -> Result<()> {
    let (Some(first), Some(last)) = (unchecked.first(), unchecked.last()) else {
        return Ok(());
    };
    let on_stream: Vec<RawEntry> = redis::cmd("XRANGE")
        .arg(events)
        .arg(first)
        .arg(last)
        .arg("COUNT")
        .arg(unchecked.len() + 1)
        .query_async(connection)
        .await?;
    let ids: Vec<&str> = on_stream.iter().map(|(id, _)| id.as_str()).collect();
    if ids != unchecked {
        return Err(Failure::invalid(format!(
            "archived lines {first} to {last} are not covered by a check and not on {events}: \
             the archive was edited, or lines were added"
        ))
        .into());
    }
    Ok(())
}

/// The id of the stream's first entry, if it has one.
pub(super) async fn first_id(connection: &mut Connection, events: &str) -> Result<Option<String>> {
    let first: redis::streams::StreamRangeReply =
        connection.xrange_count(events, "-", "+", 1).await?;
    Ok(first.ids.into_iter().next().map(|entry| entry.id))
}

/// Refuses (exit code 2) archives that reach into the stream with entries it does not hold:
/// the rebuild reads the stream after the archives' last id, so every entry of the stream up
/// to that id must be in the archives (as after a trim that stopped between its archive and
/// its `XTRIM`), else the rebuild would skip entries only the stream holds.
pub(super) async fn refuse_archives_past_the_stream(
    connection: &mut Connection,
    events: &str,
    last_archived: &str,
    overlap: &[String],
) -> Result<()> {
    if last_archived == "0-0" {
        return Ok(());
    }
    // One more than the overlap is enough to find an entry the archives lack.
    let on_stream: Vec<RawEntry> = redis::cmd("XRANGE")
        .arg(events)
        .arg("-")
        .arg(last_archived)
        .arg("COUNT")
        .arg(overlap.len() + 1)
        .query_async(connection)
        .await?;
    let archived: std::collections::HashSet<&str> = overlap.iter().map(String::as_str).collect();
    match on_stream
        .iter()
        .find(|(id, _)| !archived.contains(id.as_str()))
    {
        Some((missing, _)) => Err(Failure::invalid(format!(
            "the archives end at {last_archived}, but {events} holds {missing} before that and \
             they do not: they are not archives of this log (or were edited)"
        ))
        .into()),
        None => Ok(()),
    }
}
