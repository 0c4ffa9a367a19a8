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

use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::LazyLock;
use std::time::Instant;

use clap::Args;
use color_eyre::Result;
use color_eyre::eyre::WrapErr;
use redis::{Script, Value};
use serde::Serialize;

use super::{
    FORMAT, Header, Trailer, VERSION, add_check, event_prefix, hex, push_event, rfc3339,
    trailer_line, with_check,
};
use crate::bus::{RawEntry, SERVICE_RESPONSE_TIMEOUT, StreamId, entries_of};
use crate::connection::{Connection, Redis};
use crate::context::Context;
use crate::error::Failure;
use crate::keyspace::{Keys, Partition, Partitions, Service};
use crate::ops::archive::{ArchiveCheck, ArchiveLine, LinesHash};
use crate::output::{print_line, progress_bar};

/// Reads the cut of one partition (see the script).
static CUT: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("../lua/export_cut.lua")));

/// Entries read per XRANGE, and archive lines per refill.
const PAGE: usize = 2000;
/// Threads reading the streams (see [`read_ahead`]).
const READERS: usize = 2;

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

/// Takes the cut of every partition, one script per partition (see [`CUT`]).
async fn take_cut(
    connection: &mut Connection,
    keys: &Keys,
    partitions: Partitions,
) -> Result<Vec<StreamCut>> {
    let mut cut = Vec::new();
    for partition in partitions.all() {
        let mut invocation = CUT.prepare_invoke();
        for producer in Service::PRODUCERS {
            invocation.key(keys.events(producer, partition));
        }
        let reply: Value = invocation
            .invoke_async(connection)
            .await
            .wrap_err_with(|| format!("taking the cut of partition {partition}"))?;
        let streams: Vec<Value> = redis::from_redis_value(reply)?;
        for (producer, stream) in Service::PRODUCERS.into_iter().zip(streams) {
            let key = keys.events(producer, partition);
            let (last, length, added): (String, u64, u64) = redis::from_redis_value(stream)
                .map_err(|_| {
                    Failure::invalid(format!(
                        "{key} is not a stream: is another program using this namespace?"
                    ))
                })?;
            cut.push(StreamCut {
                service: producer,
                partition,
                last: StreamId::parse(&last, false).unwrap_or_default(),
                key,
                length,
                added,
            });
        }
    }
    Ok(cut)
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

/// The pages of one stream, oldest first, as the reading thread sends them.
type Pages = tokio::sync::mpsc::Receiver<redis::RedisResult<Vec<Item>>>;

/// Reads every stream from its start up to its cut, a page at a time, on threads and
/// connections of their own (one task per stream, each a page ahead of the export), so that
/// Redis and the parsing of its replies work while the export writes. Pages are smaller when
/// there are many streams, so that what is read ahead stays within about 100,000 events.
///
/// Parsing Redis's replies is the export's largest cost, more than writing the file: the
/// streams are shared out between [`READERS`] threads, the longest first to the least loaded.
fn read_ahead(redis: Redis, cut: &[StreamCut]) -> Vec<Pages> {
    let page = (100_000 / cut.len().max(1)).clamp(100, PAGE);
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for _ in cut {
        let (sender, receiver) = tokio::sync::mpsc::channel(1);
        receivers.push(receiver);
        senders.push(Some(sender));
    }
    let mut longest_first: Vec<usize> = (0..cut.len()).collect();
    longest_first.sort_by_key(|&index| std::cmp::Reverse(cut[index].length));
    let mut shares: Vec<(u64, Vec<StreamToRead>)> = (0..READERS).map(|_| (0, Vec::new())).collect();
    for index in longest_first {
        let share = shares
            .iter_mut()
            .min_by_key(|(length, _)| *length)
            .expect("readers");
        let stream = &cut[index];
        share.0 += stream.length;
        let sender = senders[index].take().expect("each stream once");
        share.1.push((stream.key.clone(), stream.last, sender));
    }
    for (_, streams) in shares {
        if !streams.is_empty() {
            read_on_a_thread(redis.clone(), streams, page);
        }
    }
    receivers
}

/// A stream to read up to its cut, and where its pages go.
type StreamToRead = (
    String,
    StreamId,
    tokio::sync::mpsc::Sender<redis::RedisResult<Vec<Item>>>,
);

/// Reads `streams` on a thread and a connection of its own.
fn read_on_a_thread(redis: Redis, streams: Vec<StreamToRead>, page: usize) {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build();
        let Ok(runtime) = runtime else {
            return;
        };
        runtime.block_on(async move {
            let connection = match redis.try_connect(Some(SERVICE_RESPONSE_TIMEOUT)).await {
                Ok(connection) => connection,
                Err(error) => {
                    if let Some((_, _, sender)) = streams.first() {
                        let _ = sender.send(Err(error)).await;
                    }
                    return;
                }
            };
            let mut tasks = tokio::task::JoinSet::new();
            for (key, last, sender) in streams {
                tasks.spawn(read_stream(connection.clone(), key, last, page, sender));
            }
            while tasks.join_next().await.is_some() {}
        });
    });
}

/// Sends the pages of one stream, up to `last`, until the receiver is gone or a read fails.
async fn read_stream(
    mut connection: Connection,
    key: String,
    last: StreamId,
    page: usize,
    sender: tokio::sync::mpsc::Sender<redis::RedisResult<Vec<Item>>>,
) {
    if last == StreamId::default() {
        return;
    }
    let mut start = crate::ops::FIRST_ENTRY.to_owned();
    loop {
        let read: redis::RedisResult<Value> = redis::cmd("XRANGE")
            .arg(&key)
            .arg(&start)
            .arg(last.to_string())
            .arg("COUNT")
            .arg(page)
            .query_async(&mut connection)
            .await;
        let items = read.and_then(Item::all_of);
        let more = match &items {
            Ok(items) => items.len() == page,
            Err(_) => false,
        };
        if let Some(item) = items.as_ref().ok().and_then(|items| items.last()) {
            start = format!("({}", item.id);
        }
        if sender.send(items).await.is_err() || !more {
            return;
        }
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

/// The archive files of each stream, from `--archive` (files and directories), in the order
/// given; exit code 2 for a name that is not an archive's or a partition the blog lacks.
fn archive_files(
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
struct ArchiveReader {
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
    fn new(files: Vec<PathBuf>) -> ArchiveReader {
        ArchiveReader {
            files: files.into(),
            current: None,
        }
    }

    /// Up to `count` lines after `after` and up to `cut` (none when every file is read).
    fn read(
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
