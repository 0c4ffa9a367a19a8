//! The archives `blogctl trim` wrote, as `blogctl export --archive` reads them: the files of
//! each stream, found by their names, read in order, each trim's check verified.

use std::collections::{BTreeMap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use color_eyre::Result;
use color_eyre::eyre::WrapErr;

use crate::bus::StreamId;
use crate::error::Failure;
use crate::keyspace::{Partition, Partitions, Service};
use crate::ops::archive::{ArchiveCheck, ArchiveLine, LinesHash};

/// The archive files of each stream, from `--archive` (files and directories), in the order
/// given; exit code 2 for a name that is not an archive's or a partition the blog lacks.
pub(super) fn archive_files(
    given: &[PathBuf],
    partitions: Partitions,
) -> Result<BTreeMap<(Service, Partition), Vec<PathBuf>>> {
    let mut files = BTreeMap::<(Service, Partition), Vec<PathBuf>>::new();
    for path in given {
        let named: Vec<PathBuf> = if path.is_dir() {
            let mut inside: Vec<PathBuf> = std::fs::read_dir(path)
                .wrap_err_with(|| format!("reading the directory {}", path.display()))?
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .filter(|file| archive_of(file).is_some())
                .collect();
            inside.sort();
            inside
        } else if path.is_file() {
            vec![path.clone()]
        } else {
            return Err(
                Failure::invalid(format!("archive {} does not exist", path.display())).into(),
            );
        };
        for file in named {
            let Some((service, partition)) = archive_of(&file) else {
                return Err(Failure::invalid(format!(
                    "{} is not named as `blogctl trim` names archives (<service>.ndjson, or \
                     <service>.<partition>.ndjson)",
                    file.display()
                ))
                .into());
            };
            if partition.0 >= partitions.count() {
                return Err(Failure::invalid(format!(
                    "{} is the archive of partition {partition}, and the blog has {partitions} \
                     partitions",
                    file.display()
                ))
                .into());
            }
            files.entry((service, partition)).or_default().push(file);
        }
    }
    Ok(files)
}

/// The stream an archive file holds, from its name: `<service>.ndjson` (partition 0) or
/// `<service>.<p>.ndjson`.
fn archive_of(file: &Path) -> Option<(Service, Partition)> {
    let name = file.file_name()?.to_str()?.strip_suffix(".ndjson")?;
    let (service, partition) = match name.split_once('.') {
        Some((service, partition)) => {
            let number = (!partition.starts_with('+'))
                .then(|| partition.parse::<u32>().ok())
                .flatten()?;
            (service, Partition(number))
        }
        None => (name, Partition::FIRST),
    };
    let service = Service::PRODUCERS
        .into_iter()
        .find(|producer| producer.name() == service)?;
    Some((service, partition))
}

/// Reads the archive files of one stream in order, each trim's check verified; ids must
/// increase from line to line across the files.
pub(super) struct ArchiveReader {
    files: VecDeque<PathBuf>,
    current: Option<OpenArchive>,
}

struct OpenArchive {
    path: PathBuf,
    reader: BufReader<File>,
    number: u64,
    /// The entry lines since the last check, and the id of the last.
    hash: LinesHash,
    last: Option<String>,
    seen_check: bool,
}

impl ArchiveReader {
    pub(super) fn new(files: Vec<PathBuf>) -> ArchiveReader {
        ArchiveReader {
            files: files.into(),
            current: None,
        }
    }

    /// Up to `count` lines after `after` and up to `cut` (none when every file is read).
    pub(super) fn read(
        &mut self,
        count: usize,
        mut after: Option<StreamId>,
        cut: StreamId,
    ) -> Result<Vec<ArchiveLine>> {
        let mut lines = Vec::new();
        while lines.len() < count {
            let Some(open) = self.open_next()? else {
                break;
            };
            match open.next_line()? {
                Some(line) => {
                    let id = StreamId::parse(&line.id, false);
                    let place = format!("{} line {}", open.path.display(), open.number);
                    let Some(id) = id.filter(|id| after.is_none_or(|after| *id > after)) else {
                        return Err(Failure::invalid(format!(
                            "{place}: id {:?} does not follow the one before it: not an archive \
                             `blogctl trim` wrote (ids increase, archives given oldest first)",
                            line.id
                        ))
                        .into());
                    };
                    after = Some(id);
                    if id <= cut {
                        lines.push(line);
                    }
                }
                None => self.current = None,
            }
        }
        Ok(lines)
    }

    fn open_next(&mut self) -> Result<Option<&mut OpenArchive>> {
        if self.current.is_none() {
            let Some(path) = self.files.pop_front() else {
                return Ok(None);
            };
            let file = File::open(&path).wrap_err_with(|| format!("opening {}", path.display()))?;
            self.current = Some(OpenArchive {
                path,
                reader: BufReader::with_capacity(1 << 20, file),
                number: 0,
                hash: LinesHash::default(),
                last: None,
                seen_check: false,
            });
        }
        Ok(self.current.as_mut())
    }
}

impl OpenArchive {
    /// The next entry line, its check verified when one follows; `None` at the end (a last
    /// line cut short by a crash is left: `trim` had not removed its entry from the stream).
    fn next_line(&mut self) -> Result<Option<ArchiveLine>> {
        loop {
            let mut text = String::new();
            let read = self
                .reader
                .read_line(&mut text)
                .wrap_err_with(|| format!("reading {}", self.path.display()))?;
            if read == 0 || !text.ends_with('\n') {
                return Ok(None);
            }
            self.number += 1;
            if text.trim().is_empty() {
                continue;
            }
            let place = format!("{} line {}", self.path.display(), self.number);
            if let Some(check) = ArchiveCheck::parse(&text) {
                self.verify(&check)
                    .map_err(|why| Failure::invalid(format!("{place}: {why}")))?;
                continue;
            }
            let line: ArchiveLine = serde_json::from_str(&text).map_err(|error| {
                Failure::invalid(format!("{place}: not an archived entry: {error}"))
            })?;
            self.hash.add(&text);
            self.last = Some(line.id.clone());
            return Ok(Some(line));
        }
    }

    /// Whether a trim's check matches the entry lines before it (the first check of a file may
    /// cover fewer: older lines were written before trims wrote checks).
    fn verify(&mut self, check: &ArchiveCheck) -> std::result::Result<(), String> {
        let since = self.hash.len();
        let covers = check.entries == since || (!self.seen_check && check.entries <= since);
        let matches = covers
            && self.hash.of_last(check.entries).as_deref() == Some(check.hash.as_str())
            && self.last.as_deref() == Some(check.last.as_str());
        if !matches {
            return Err(format!(
                "the check does not match the {since} entry lines before it: the archive was \
                 edited, or lines were added or removed"
            ));
        }
        self.hash = LinesHash::default();
        self.seen_check = true;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_names_say_their_stream() {
        let of = |name: &str| archive_of(Path::new(name));
        assert_eq!(of("dir/posts.ndjson"), Some((Service::Posts, Partition(0))));
        assert_eq!(
            of("comments.7.ndjson"),
            Some((Service::Comments, Partition(7)))
        );
        for bad in [
            "query.ndjson",
            "posts.json",
            "posts.x.ndjson",
            "posts.+1.ndjson",
        ] {
            assert_eq!(of(bad), None, "{bad}");
        }
    }
}
