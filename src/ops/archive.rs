//! Trim archives: the NDJSON files `blogctl trim` appends the entries it removes to, one entry
//! per line, each trim's lines followed by a check line; `blogctl rebuild --archive` reads them.
//! One file per events stream, so one per producing service and partition ([`stream_archive`]).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use color_eyre::Result;
use color_eyre::eyre::WrapErr;
use serde::{Deserialize, Serialize};

use super::Entry;
use crate::bus::compare_ids;
use crate::error::Failure;
use crate::keyspace::{Partition, Service};

/// How far back from the end of an archive to look for its last line, per read.
const TAIL_CHUNK: u64 = 64 * 1024;

/// The archive of `producer`'s events stream in `partition`, in the directory `blogctl trim
/// --archive DIR` writes: `DIR/<service>.ndjson` for partition 0 (where archives were before
/// there were partitions, so those go on being appended to and read), `DIR/<service>.<p>.ndjson`
/// for partition `p` > 0.
pub fn stream_archive(directory: &Path, producer: Service, partition: Partition) -> PathBuf {
    if partition == Partition::FIRST {
        directory.join(format!("{producer}.ndjson"))
    } else {
        directory.join(format!("{producer}.{partition}.ndjson"))
    }
}

/// One line of an archive: an entry of an events stream, its fields as text (bytes that are
/// not UTF-8 replaced). Ids increase from line to line, across trims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveLine {
    pub id: String,
    pub fields: BTreeMap<String, String>,
}

impl ArchiveLine {
    pub(super) fn from_entry(entry: &Entry) -> ArchiveLine {
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

/// An archive file being appended to; [`Archive::undo`] takes it back to how it was found.
pub(super) struct Archive {
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
    pub(super) fn open(path: &Path) -> Result<Archive> {
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

    /// Whether the archive holds the entry `id` already (a trim stopped after archiving it).
    pub(super) fn holds(&self, id: &str) -> bool {
        self.last_id
            .as_deref()
            .is_some_and(|last| compare_ids(id, last).is_le())
    }

    /// Counts an entry the archive holds already in this trim's check, if no check covers it
    /// yet (a trim that stopped before its check wrote it).
    pub(super) fn cover(&mut self, line: &ArchiveLine) {
        let unchecked = self
            .checked_up_to
            .as_deref()
            .is_none_or(|checked| compare_ids(&line.id, checked).is_gt());
        if unchecked {
            self.hash.add(&line.to_line());
            self.last_covered = Some(line.id.clone());
        }
    }

    pub(super) fn append(&mut self, line: &ArchiveLine) -> Result<()> {
        let text = line.to_line();
        self.writer.write_all(text.as_bytes())?;
        self.hash.add(&text);
        self.last_covered = Some(line.id.clone());
        Ok(())
    }

    /// Writes the check of the lines this trim wrote (and of those a stopped trim left
    /// unchecked), if any.
    pub(super) fn write_check(&mut self) -> Result<()> {
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
    pub(super) fn sync(&mut self) -> Result<()> {
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
    pub(super) fn undo(self) {
        let file = match self.writer.into_inner() {
            Ok(file) => file,
            Err(error) => error.into_parts().1.into_parts().0,
        };
        let _ = file.set_len(self.kept_len).and_then(|()| file.sync_all());
    }
}

/// Refuses (exit code 2) a file at `path` that is not an archive, without changing it; a
/// missing one is fine (it will be created).
pub(super) fn refuse_a_non_archive(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let mut file = File::open(path).wrap_err_with(|| format!("opening {}", path.display()))?;
    last_line(&mut file, path).map(|_| ())
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
    fn partition_0_keeps_the_archive_names_from_before_partitions() {
        let dir = Path::new("archive");
        assert_eq!(
            stream_archive(dir, Service::Posts, Partition::FIRST),
            dir.join("posts.ndjson")
        );
        assert_eq!(
            stream_archive(dir, Service::Moderation, Partition(7)),
            dir.join("moderation.7.ndjson")
        );
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
