//! `blogctl export [FILE|-]`: every event of the blog, oldest first, in the format of
//! [`super`], while the services keep running.
//!
//! The cut: for each partition, one script reads the last id of its three events streams at
//! once, and nothing after those ids is exported. A post, its comments and their verdicts all
//! live in one partition, and every event that follows from another (a comment from its post,
//! a verdict from its comment, `CommentUpdated` from the verdict) is written after it in that
//! partition, so a cut taken in one step per partition holds, for every event, the events it
//! follows from. Partitions share nothing, so their cuts need not be taken at the same moment.
//!
//! Each stream is read after the archives of it (`--archive`), its entries after the last
//! archived one; the streams are merged by id (each stream's own order is kept as it is).
//!
//! - `streams`: the cut, and the streams read up to it a page at a time, ahead of the export,
//!   on threads of their own.
//! - `archives`: the archives `trim` wrote (`--archive`), found and read, their checks verified.
//!
//! [`run`], the merging of the streams by id ([`write_export`], [`Source`]) and the file written
//! ([`Sink`]) are here.

mod archives;
mod streams;

use std::collections::{BinaryHeap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use color_eyre::Result;
use color_eyre::eyre::WrapErr;
use redis::Value;
use serde::Serialize;

use archives::{ArchiveReader, archive_files};
use streams::{Pages, read_ahead, take_cut};

use super::line::{add_check, event_prefix, push_event, with_check};
use super::{FORMAT, Header, Trailer, VERSION, hex, rfc3339, trailer_line};
use crate::bus::{RawEntry, StreamId, entries_of};
use crate::context::Context;
use crate::error::Failure;
use crate::keyspace::{Partition, Service};
use crate::output::{print_line, progress_bar};

/// Entries read per XRANGE, and archive lines per refill.
const PAGE: usize = 2000;
/// Arguments of `blogctl export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Where to write the export (written beside it, then renamed into place when complete);
    /// `-` for stdout.
    #[arg(value_name = "FILE|-", default_value = "-")]
    pub file: String,
    /// Archives `blogctl trim --archive` wrote, oldest first: files named `<service>.ndjson`
    /// (partition 0) or `<service>.<p>.ndjson` (partition p), or directories of them. Their
    /// events come before the streams'.
    #[arg(long = "archive", value_name = "FILE", num_args = 1..)]
    pub archives: Vec<PathBuf>,
}

/// What an export did, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub file: String,
    pub namespace: String,
    pub partitions: u32,
    pub events: u64,
    pub archived: u64,
    pub sha256: String,
    pub seconds: f64,
    pub events_per_second: f64,
}

pub async fn run(context: &Context, args: &ExportArgs) -> Result<()> {
    let started = Instant::now();
    let mut connection = context.connect().await?;
    let partitions = context.partitions(&mut connection).await?;
    let archives = archive_files(&args.archives, partitions)?;
    let cut = take_cut(&mut connection, &context.keys, partitions).await?;
    let time_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0);
    let header = Header {
        format: FORMAT.to_owned(),
        version: VERSION,
        namespace: context.keys.namespace().to_owned(),
        partitions: partitions.count(),
        time: rfc3339(time_ms),
        time_ms,
    };
    let mut pages = read_ahead(context.redis.clone(), &cut);
    let mut sources: Vec<Source> = cut
        .into_iter()
        .zip(pages.drain(..))
        .map(|(stream, pages)| {
            let files = archives
                .get(&(stream.service, stream.partition))
                .cloned()
                .unwrap_or_default();
            Source::new(stream, files, pages)
        })
        .collect();
    let mut sink = Sink::open(&args.file)?;
    let written = write_export(&header, &mut sources, &mut sink).await;
    let trailer = match written.and_then(|trailer| sink.finish().map(|()| trailer)) {
        Ok(trailer) => trailer,
        Err(error) => {
            sink.abandon();
            return Err(error);
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    let summary = Summary {
        file: args.file.clone(),
        namespace: header.namespace,
        partitions: header.partitions,
        events: trailer.events,
        archived: trailer.archived,
        sha256: trailer.sha256,
        seconds,
        events_per_second: trailer.events as f64 / seconds.max(1e-9),
    };
    report(context.json, &args.file, &summary)
}

/// Prints the summary: on stdout, or on stderr when the export itself went to stdout.
fn report(json: bool, file: &str, summary: &Summary) -> Result<()> {
    let text = if json {
        serde_json::to_string(summary)?
    } else {
        format!(
            "exported {} events ({} from archives) of namespace {} ({} partitions) to {} in \
             {:.2}s, {:.0} events/s",
            summary.events,
            summary.archived,
            summary.namespace,
            summary.partitions,
            if file == "-" { "stdout" } else { file },
            summary.seconds,
            summary.events_per_second
        )
    };
    if file == "-" {
        eprintln!("{}", crate::output::without_controls(&text));
        Ok(())
    } else {
        Ok(print_line(&text)?)
    }
}

/// Writes the header, every event up to the cut, oldest first, and the trailer; refuses (exit
/// code 2) when a stream lost events the archives given do not hold.
async fn write_export(header: &Header, sources: &mut [Source], sink: &mut Sink) -> Result<Trailer> {
    let length = sources.iter().map(|source| source.cut.length).sum();
    let progress = progress_bar(length, "export");
    let mut number = 1;
    sink.write(with_check(number, &serde_json::to_string(header)?).as_bytes())?;
    let mut heads = BinaryHeap::new();
    for (index, source) in sources.iter_mut().enumerate() {
        if let Some(id) = source.head().await? {
            heads.push(std::cmp::Reverse((id, index)));
        }
    }
    let (mut events, mut archived) = (0, 0);
    let mut line = Vec::with_capacity(1024);
    while let Some(std::cmp::Reverse((_, index))) = heads.pop() {
        let source = &mut sources[index];
        let item = source
            .buffer
            .pop_front()
            .expect("a source in the heap has a head");
        number += 1;
        line.clear();
        push_event(&mut line, &source.prefix, &item.id, &item.fields);
        add_check(number, &mut line);
        sink.write(&line)?;
        events += 1;
        archived += u64::from(item.archived);
        if !item.archived {
            progress.inc(1);
        }
        if let Some(id) = source.head().await? {
            heads.push(std::cmp::Reverse((id, index)));
        }
    }
    progress.finish_and_clear();
    for source in sources.iter() {
        source.refuse_missing_events()?;
    }
    let trailer = Trailer {
        events,
        archived,
        sha256: hex(sink.hash.clone().finish().as_ref()),
    };
    sink.write(trailer_line(number + 1, &trailer).as_bytes())?;
    Ok(trailer)
}

/// One events stream at the cut.
#[derive(Debug, Clone)]
struct StreamCut {
    service: Service,
    partition: Partition,
    key: String,
    /// The last id it had generated: nothing after it is exported.
    last: StreamId,
    length: u64,
    /// Entries ever added to it: each must be exported, from the stream or from an archive.
    added: u64,
}

/// One event on its way to the file.
struct Item {
    stream_id: StreamId,
    id: String,
    fields: Vec<(String, String)>,
    archived: bool,
}

/// One stream of one partition: its archives, then the stream up to the cut.
struct Source {
    cut: StreamCut,
    /// Its event lines' start (see [`event_prefix`]).
    prefix: Vec<u8>,
    archives: Option<ArchiveReader>,
    /// The stream's pages, read ahead (see [`read_ahead`]); `None` once they are all taken.
    pages: Option<Pages>,
    /// The id of the last event taken from it (archive or stream).
    after: Option<StreamId>,
    buffer: VecDeque<Item>,
    from_archives: u64,
    from_stream: u64,
}

impl Source {
    fn new(cut: StreamCut, files: Vec<PathBuf>, pages: Pages) -> Source {
        Source {
            prefix: event_prefix(cut.service.name(), cut.partition.0),
            archives: (!files.is_empty()).then(|| ArchiveReader::new(files)),
            pages: Some(pages),
            after: None,
            buffer: VecDeque::new(),
            from_archives: 0,
            from_stream: 0,
            cut,
        }
    }

    /// The id of the next event, reading more when none is buffered; `None` when it is done.
    async fn head(&mut self) -> Result<Option<StreamId>> {
        if self.buffer.is_empty() {
            self.refill().await?;
        }
        Ok(self.buffer.front().map(|item| item.stream_id))
    }

    async fn refill(&mut self) -> Result<()> {
        if let Some(archives) = &mut self.archives {
            let lines = archives.read(PAGE, self.after, self.cut.last)?;
            if lines.is_empty() {
                self.archives = None;
            }
            for line in lines {
                let stream_id = StreamId::parse(&line.id, false).expect("checked when read");
                self.after = Some(stream_id);
                self.from_archives += 1;
                self.buffer.push_back(Item {
                    stream_id,
                    id: line.id,
                    fields: line.fields.into_iter().collect(),
                    archived: true,
                });
            }
            if !self.buffer.is_empty() {
                return Ok(());
            }
        }
        // Entries the archives hold too (a trim stopped between its archive and its XTRIM)
        // are taken from the archives.
        while self.buffer.is_empty() {
            let Some(pages) = &mut self.pages else {
                return Ok(());
            };
            let Some(page) = pages.recv().await else {
                self.pages = None;
                return Ok(());
            };
            let page = page.wrap_err_with(|| format!("reading {}", self.cut.key))?;
            for item in page {
                if self.after.is_some_and(|after| item.stream_id <= after) {
                    continue;
                }
                self.after = Some(item.stream_id);
                self.from_stream += 1;
                self.buffer.push_back(item);
            }
        }
        Ok(())
    }

    /// Refuses (exit code 2) a stream that lost events to `trim` which the archives given do
    /// not hold: the export would not be the whole log.
    fn refuse_missing_events(&self) -> Result<()> {
        let exported = self.from_archives + self.from_stream;
        if exported < self.cut.added {
            return Err(Failure::invalid(format!(
                "{} of the {} events ever added to {} are neither on it nor in the archives \
                 given: give every archive `blogctl trim` wrote for it (--archive), and do not \
                 trim while exporting",
                self.cut.added - exported,
                self.cut.added,
                self.cut.key
            ))
            .into());
        }
        Ok(())
    }
}

impl Item {
    /// The entries of an `XRANGE` reply (see [`entries_of`]).
    fn all_of(reply: Value) -> redis::RedisResult<Vec<Item>> {
        Ok(entries_of(reply)?.into_iter().map(Item::of).collect())
    }

    /// An entry of a stream, its bytes as text (copied only when not UTF-8, to replace them).
    fn of((id, fields): RawEntry) -> Item {
        Item {
            stream_id: StreamId::parse(&id, false).unwrap_or_default(),
            id,
            fields: fields
                .into_iter()
                .map(|(name, value)| (text(name), text(value)))
                .collect(),
            archived: false,
        }
    }
}

/// Bytes of a reply as text, those that are not UTF-8 replaced.
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes)
        .unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into_owned())
}

/// Where the export goes: stdout, or a file written beside its final name and renamed into
/// place when complete (a backup is never found half-written); the SHA-256 of all it wrote.
struct Sink {
    writer: Box<dyn Write>,
    /// For a file: where it is written, and its final name.
    file: Option<(PathBuf, PathBuf)>,
    hash: ring::digest::Context,
}

impl Sink {
    fn open(file: &str) -> Result<Sink> {
        let hash = ring::digest::Context::new(&ring::digest::SHA256);
        if file == "-" {
            let writer = Box::new(BufWriter::with_capacity(1 << 20, std::io::stdout()));
            return Ok(Sink {
                writer,
                file: None,
                hash,
            });
        }
        let path = PathBuf::from(file);
        let name = path
            .file_name()
            .ok_or_else(|| Failure::invalid(format!("{file} is not a file name to export to")))?;
        let partial = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
        let created =
            File::create(&partial).wrap_err_with(|| format!("creating {}", partial.display()))?;
        Ok(Sink {
            writer: Box::new(BufWriter::with_capacity(1 << 20, created)),
            file: Some((partial, path)),
            hash,
        })
    }

    fn write(&mut self, line: &[u8]) -> Result<()> {
        self.hash.update(line);
        self.writer.write_all(line)?;
        Ok(())
    }

    /// Flushes; a file is fsynced and renamed to its final name.
    fn finish(&mut self) -> Result<()> {
        self.writer.flush()?;
        if let Some((partial, path)) = &self.file {
            let context = || format!("writing {}", path.display());
            File::open(partial)
                .and_then(|file| file.sync_all())
                .wrap_err_with(context)?;
            std::fs::rename(partial, path).wrap_err_with(context)?;
        }
        Ok(())
    }

    /// Removes a file left half-written.
    fn abandon(&mut self) {
        if let Some((partial, _)) = &self.file {
            let _ = std::fs::remove_file(partial);
        }
    }
}
