//! `blogctl trim`: removes from the events stream only what every group has acknowledged, after
//! appending it to an NDJSON archive, so the log stays bounded and a rebuild stays possible.
//!
//! The boundary is the first entry any group may still need: the minimum over groups of their
//! oldest pending entry, or the entry after their last delivered one when nothing is pending.
//! Everything before it is appended to the archive (one [`ArchiveLine`] per line), the file is
//! fsynced, then the stream is trimmed with `XTRIM MINID <boundary>` in a script that first
//! checks the groups did not change meanwhile. Entries the archive already holds (a trim that
//! stopped between the fsync and the XTRIM) are not written twice. Inboxes and dead letters are
//! never trimmed.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, IsTerminal, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;

use clap::Args;
use color_eyre::Result;
use color_eyre::eyre::{WrapErr, eyre};
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};

use super::status::{StreamStatus, inspect_stream};
use super::{Entry, ExpectedGroup, FIRST_ENTRY, expected_groups, page_through, read_range};
use crate::bus::compare_ids;
use crate::connection::Connection;
use crate::context::Context;
use crate::error::Failure;
use crate::keyspace::Partition;
use crate::output::{count_of, print_line};
use crate::services;

/// KEYS[1]: the events stream, KEYS[2..]: the locks of rebuilds. ARGV[1]: the boundary;
/// ARGV[2..]: the groups it was computed from. Trims only if no rebuild runs (it reads the
/// stream, and would miss what is removed before it reads it), the stream still has exactly
/// those groups and none has an entry before the boundary pending: {'trimmed', count}, else
/// {'rebuilding', lock} or {'changed'}.
const TRIM: &str = include_str!("lua/trim.lua");

/// Entries removed per step of a trim, at most: a few milliseconds inside Redis.
const TRIM_STEP: u64 = 10_000;

/// How far back from the end of an archive to look for its last line, per read.
const TAIL_CHUNK: u64 = 64 * 1024;

/// Arguments of `blogctl trim`.
#[derive(Debug, Args)]
pub struct TrimArgs {
    /// NDJSON file the removed entries are appended to first, one `{"id","fields"}` object per
    /// line; `blogctl rebuild` reads it before the stream.
    #[arg(long, value_name = "FILE")]
    pub archive: PathBuf,
    /// Trim without asking (needed when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Refuse when a group has more than this many entries left to read.
    #[arg(long, default_value_t = 10_000)]
    pub max_lag: u64,
}

/// One line of an archive: an entry of the events stream, its fields as text (bytes that are
/// not UTF-8 replaced). Ids increase from line to line, across trims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveLine {
    pub id: String,
    pub fields: BTreeMap<String, String>,
}

impl ArchiveLine {
    fn from_entry(entry: &Entry) -> ArchiveLine {
        ArchiveLine {
            id: entry.id.clone(),
            fields: entry.fields.iter().cloned().collect(),
        }
    }

    /// The line as written, newline included.
    pub fn to_line(&self) -> String {
        format!(
            "{}\n",
            serde_json::to_string(self).expect("archive lines serialize")
        )
    }
}

/// The line each trim writes after its entries: how many entry lines just before it it covers,
/// the hash of those lines ([`LinesHash`]), and the id of the last. `rebuild` checks it, so an
/// edited, dropped or inserted line is refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveCheck {
    pub entries: u64,
    pub hash: String,
    pub last: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct CheckLine {
    check: ArchiveCheck,
}

impl ArchiveCheck {
    /// `line` as a check line, if it is one.
    pub fn parse(line: &str) -> Option<ArchiveCheck> {
        serde_json::from_str::<CheckLine>(line)
            .ok()
            .map(|line| line.check)
    }

    fn to_line(&self) -> String {
        let line = CheckLine {
            check: self.clone(),
        };
        format!(
            "{}\n",
            serde_json::to_string(&line).expect("check lines serialize")
        )
    }
}

/// FNV-1a (64 bits) over the hashes of lines, in order: it catches a changed, missing or moved
/// line (an integrity check, not a signature).
#[derive(Debug, Clone, Default)]
pub struct LinesHash {
    lines: Vec<u64>,
}

impl LinesHash {
    pub fn add(&mut self, line: &str) {
        self.lines.push(fnv1a(line.as_bytes()));
    }

    pub fn len(&self) -> u64 {
        self.lines.len() as u64
    }

    /// The hash of the last `count` lines added, as hex.
    pub fn of_last(&self, count: u64) -> Option<String> {
        let from = self.lines.len().checked_sub(count as usize)?;
        let bytes: Vec<u8> = self.lines[from..]
            .iter()
            .flat_map(|hash| hash.to_be_bytes())
            .collect();
        Some(format!("{:016x}", fnv1a(&bytes)))
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
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
    let stream = context.keys.events(Partition::FIRST);
    let mut connection = context.connect().await?;
    let expected = groups_reading(context, &stream);
    let locks = rebuild_locks(context);
    refuse_while_rebuilding(&mut connection, &locks).await?;
    let status = inspect_stream(&mut connection, &stream, &expected).await?;
    refuse_missing_groups(&stream, &status)?;
    refuse_lagging_groups(&stream, &status, args.max_lag)?;
    let boundary = first_needed_by_any_group(&stream, &status)?;
    let before_boundary = format!("({boundary}");
    let first = read_range(&mut connection, &stream, FIRST_ENTRY, &before_boundary, 1).await?;
    let mut trimmed = Trimmed {
        stream,
        archive: args.archive.clone(),
        boundary,
        archived: 0,
        already_archived: 0,
        removed: 0,
    };
    if first.is_empty() {
        return report(context, trimmed);
    }
    if !args.yes {
        confirm(&trimmed.stream, &trimmed.boundary, &args.archive).await?;
    }

    let mut archive = Archive::open(&args.archive)?;
    if let Err(error) = copy_to_archive(
        &mut connection,
        &before_boundary,
        &mut archive,
        &mut trimmed,
    )
    .await
    {
        archive.undo();
        return Err(error.wrap_err(format!(
            "archiving to {}; nothing was trimmed",
            args.archive.display()
        )));
    }

    // Step by step (each step checks the groups and the locks again), until done.
    loop {
        match invoke_trim(&mut connection, &trimmed, &locks, &status).await? {
            TrimOutcome::Trimmed { removed, done } => {
                trimmed.removed += removed;
                if done {
                    break;
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
                     (run it again)",
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
    report(context, trimmed)
}

/// The groups the services read `stream` with.
fn groups_reading(context: &Context, stream: &str) -> Vec<ExpectedGroup> {
    expected_groups(&context.keys)
        .into_iter()
        .filter(|expected| expected.stream == stream)
        .collect()
}

/// The locks the rebuilds of the first partition hold while they run.
fn rebuild_locks(context: &Context) -> Vec<String> {
    services::REBUILDABLE
        .iter()
        .map(|&service| context.keys.rebuild_lock(service, Partition::FIRST))
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
                let seen = archive
                    .last_id
                    .as_deref()
                    .is_some_and(|last| compare_ids(&entry.id, last).is_le());
                let line = ArchiveLine::from_entry(entry);
                if seen {
                    trimmed.already_archived += 1;
                    // Written by a trim that stopped before its check: this one's covers it.
                    let unchecked = archive
                        .checked_up_to
                        .as_deref()
                        .is_none_or(|checked| compare_ids(&entry.id, checked).is_gt());
                    if unchecked {
                        archive.hash.add(&line.to_line());
                        archive.last_covered = Some(entry.id.clone());
                    }
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

fn report(context: &Context, trimmed: Trimmed) -> Result<()> {
    if context.json {
        print_line(&serde_json::to_string(&trimmed)?)?;
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
async fn confirm(stream: &str, boundary: &str, archive: &Path) -> Result<()> {
    let plan = format!(
        "archive to {} and remove every entry of {stream} before {boundary}",
        archive.display()
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

/// An archive file being appended to; [`Archive::undo`] takes it back to how it was found.
struct Archive {
    path: PathBuf,
    writer: BufWriter<File>,
    /// The length of its complete lines when opened: what `undo` truncates to.
    kept_len: u64,
    /// Whether it was created, so its directory entry must be synced too.
    created: bool,
    /// The id of its last line, if any: entries up to it are archived already.
    last_id: Option<String>,
    /// The id of the last entry its last check covers, if it has one.
    checked_up_to: Option<String>,
    /// The lines this trim's check will cover, and the id of the last.
    hash: LinesHash,
    last_covered: Option<String>,
}

impl Archive {
    fn open(path: &Path) -> Result<Archive> {
        let created = !path.exists();
        let context = || format!("opening the archive {}", path.display());
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .wrap_err_with(context)?;
        let (kept_len, last_id) = last_line(&mut file, path).wrap_err_with(context)?;
        let checked_up_to = match &last_id {
            Some(LastLine::Check(last)) => Some(last.clone()),
            Some(LastLine::Entry(_)) => last_check(&mut file).wrap_err_with(context)?,
            None => None,
        };
        let last_id = last_id.map(|line| match line {
            LastLine::Check(id) | LastLine::Entry(id) => id,
        });
        let len = file.metadata().wrap_err_with(context)?.len();
        if kept_len < len {
            // A line cut short by a crash: its entries were never trimmed, so they are
            // still on the stream and get written again below.
            tracing::warn!(path = %path.display(), bytes = len - kept_len,
                "dropping an incomplete last line from the archive");
            file.set_len(kept_len).wrap_err_with(context)?;
        }
        Ok(Archive {
            path: path.to_owned(),
            writer: BufWriter::new(file),
            kept_len,
            created,
            last_id,
            checked_up_to,
            hash: LinesHash::default(),
            last_covered: None,
        })
    }

    fn append(&mut self, line: &ArchiveLine) -> Result<()> {
        let text = line.to_line();
        self.writer.write_all(text.as_bytes())?;
        self.hash.add(&text);
        self.last_covered = Some(line.id.clone());
        Ok(())
    }

    /// Writes the check of the lines this trim wrote (and of those a stopped trim left
    /// unchecked), if any.
    fn write_check(&mut self) -> Result<()> {
        let Some(last) = self.last_covered.clone() else {
            return Ok(());
        };
        let entries = self.hash.len();
        let hash = self.hash.of_last(entries).unwrap_or_default();
        let check = ArchiveCheck {
            entries,
            hash,
            last,
        };
        self.writer.write_all(check.to_line().as_bytes())?;
        Ok(())
    }

    /// Flushes and fsyncs the file (and, for a new file, its directory).
    fn sync(&mut self) -> Result<()> {
        let context = || format!("writing the archive {}", self.path.display());
        self.writer.flush().wrap_err_with(context)?;
        self.writer.get_ref().sync_all().wrap_err_with(context)?;
        if self.created {
            let directory = match self.path.parent() {
                Some(parent) if !parent.as_os_str().is_empty() => parent,
                _ => Path::new("."),
            };
            File::open(directory)
                .and_then(|directory| directory.sync_all())
                .wrap_err_with(context)?;
        }
        Ok(())
    }

    /// Takes the file back to its length when opened (best effort: it is already failing).
    fn undo(self) {
        let file = match self.writer.into_inner() {
            Ok(file) => file,
            Err(error) => error.into_parts().1.into_parts().0,
        };
        let _ = file.set_len(self.kept_len).and_then(|()| file.sync_all());
    }
}

/// The length of `file` up to the end of its last complete line, and that line's id. Exit code
/// 2 when the file does not end with an archive line (it is something else).
fn last_line(file: &mut File, path: &Path) -> Result<(u64, Option<LastLine>)> {
    let len = file.metadata()?.len();
    // `tail` holds the bytes from `start` to the end of the file.
    let mut tail: Vec<u8> = Vec::new();
    let mut start = len;
    loop {
        if let Some(end) = tail.iter().rposition(|byte| *byte == b'\n') {
            let line_start = tail[..end].iter().rposition(|byte| *byte == b'\n');
            if line_start.is_some() || start == 0 {
                let line = &tail[line_start.map_or(0, |at| at + 1)..end];
                let kept_len = start + end as u64 + 1;
                if let Ok(line) = serde_json::from_slice::<ArchiveLine>(line) {
                    return Ok((kept_len, Some(LastLine::Entry(line.id))));
                }
                return match ArchiveCheck::parse(&String::from_utf8_lossy(line)) {
                    Some(check) => Ok((kept_len, Some(LastLine::Check(check.last)))),
                    None => Err(not_an_archive(path).into()),
                };
            }
        } else if start == 0 {
            // No complete line: empty, or only a line cut short by a crash.
            if tail.is_empty()
                || tail.starts_with(br#"{"id":"#)
                || tail.starts_with(br#"{"check":"#)
            {
                return Ok((0, None));
            }
            return Err(not_an_archive(path).into());
        }
        let chunk = TAIL_CHUNK.min(start);
        start -= chunk;
        let mut bytes = vec![0; chunk as usize];
        file.seek(SeekFrom::Start(start))?;
        file.read_exact(&mut bytes)?;
        bytes.extend_from_slice(&tail);
        tail = bytes;
    }
}

/// An archive's last complete line: an entry (its id), or a check (the id of the last entry
/// it covers).
#[derive(Debug, PartialEq, Eq)]
enum LastLine {
    Entry(String),
    Check(String),
}

/// The id of the last entry the archive's last check covers, if it has a check: read from the
/// start, which happens only after a trim stopped between its entries and its check.
fn last_check(file: &mut File) -> Result<Option<String>> {
    file.seek(SeekFrom::Start(0))?;
    let mut last = None;
    for line in std::io::BufRead::lines(std::io::BufReader::new(&mut *file)) {
        if let Some(check) = ArchiveCheck::parse(&line?) {
            last = Some(check.last);
        }
    }
    file.seek(SeekFrom::End(0))?;
    Ok(last)
}

fn not_an_archive(path: &Path) -> Failure {
    Failure::invalid(format!(
        "{} is not a blogctl archive (its last line is not {{\"id\":...,\"fields\":...}}): \
         refusing to append to it",
        path.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(id: &str) -> String {
        let line = ArchiveLine {
            id: id.to_owned(),
            fields: BTreeMap::from([("type".to_owned(), "PostCreated".to_owned())]),
        };
        format!("{}\n", serde_json::to_string(&line).unwrap())
    }

    fn last_of(content: &[u8]) -> Result<(u64, Option<String>)> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("archive.ndjson");
        std::fs::write(&path, content).unwrap();
        let mut file = File::open(&path).unwrap();
        let (len, last) = last_line(&mut file, &path)?;
        Ok((
            len,
            last.map(|line| match line {
                LastLine::Entry(id) | LastLine::Check(id) => id,
            }),
        ))
    }

    #[test]
    fn the_archive_format_is_one_object_per_line() {
        assert_eq!(
            line("1-0"),
            "{\"id\":\"1-0\",\"fields\":{\"type\":\"PostCreated\"}}\n"
        );
    }

    #[test]
    fn the_last_archived_id_is_found_and_a_cut_line_is_dropped() {
        assert_eq!(last_of(b"").unwrap(), (0, None));
        let two = format!("{}{}", line("1-0"), line("2-5"));
        assert_eq!(
            last_of(two.as_bytes()).unwrap(),
            (two.len() as u64, Some("2-5".into()))
        );
        let cut = format!("{two}{{\"id\":\"3-");
        assert_eq!(
            last_of(cut.as_bytes()).unwrap(),
            (two.len() as u64, Some("2-5".into()))
        );
        assert_eq!(last_of(b"{\"id\":\"3-").unwrap(), (0, None));
        // Lines longer than one read from the end.
        let long = format!(
            "{}{{\"id\":\"9-9\",\"fields\":{{\"data\":\"{}\"}}}}\n",
            line("1-0"),
            "x".repeat(200_000)
        );
        assert_eq!(last_of(long.as_bytes()).unwrap().1, Some("9-9".into()));
    }

    #[test]
    fn other_files_are_not_appended_to() {
        assert!(last_of(b"hello\nworld\n").is_err());
        assert!(last_of(b"no newline at all").is_err());
    }
}
