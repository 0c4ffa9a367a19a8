//! `blogctl import FILE`: fills an empty namespace from an export, on a single Redis or a
//! Cluster, with its own partition count.
//!
//! The whole file is checked first (every line's check, the trailer's counts and hash: the hash
//! on a thread of its own while the lines are checked), and nothing is written to a namespace
//! that holds anything. Then the file is read again, each line's check verified again (a file
//! changed meanwhile stops the import there), and each event goes to the stream
//! of the service that wrote it, in the partition of its post under the new count (an event
//! that names no post, being malformed, keeps its partition modulo the new count), in the
//! order of the file. An event keeps its id unless its new stream already has a later one (two
//! partitions merged into one): it then takes the next free id.
//!
//! The state is built in the same pass, with the functions `blogctl rebuild` uses: the query
//! view and the comments service's state (generation 0 of each partition), and the posts
//! service's records (`<ns>:posts:{..}:post:<id>`): only its request step writes them and no
//! rebuild makes them, so the import writes them with the same key function, and the copy holds
//! what the original holds. The consumer groups are then
//! created where the services' work stands in the file: after the last event each has already
//! acted on, so that no verdict is given twice, and before the first comment the export caught
//! before its verdict (or verdict before its `CommentUpdated`), which the services finish
//! once they run. The answers remembered for request ids are not carried over.

use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::fs::File;
use std::future::Future;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::mpsc;
use std::task::Poll;
use std::thread::JoinHandle;
use std::time::Instant;

use clap::Args;
use color_eyre::Result;
use color_eyre::eyre::{WrapErr, eyre};
use serde::Serialize;
use uuid::Uuid;

use super::refuse_line;
use super::{EventIn, FORMAT, Header, LineKind, VERSION, checks_out, hex, parse_trailer};
use crate::bus::StreamId;
use crate::connection::Connection;
use crate::context::Context;
use crate::error::Failure;
use crate::events::{Event, EventKind};
use crate::keyspace::{Keys, Partition, Partitions, Service};
use crate::output::{print_line, progress_bar};
use crate::services::generations::Calls;
use crate::services::{comments, query};

/// Events per round: parsed on a thread of its own while Redis writes the rounds before.
const ROUND: usize = 1000;
/// Rounds sent and not yet answered, on a single Redis (see [`write_events`]).
const IN_FLIGHT: usize = 3;
/// Apply calls per script (as `rebuild` sends them): a few milliseconds inside Redis.
const WRITE_BATCH: usize = 250;
/// Bytes of the file hashed at a time, on the hashing thread, while the lines are checked.
const HASH_CHUNK: usize = 1 << 20;

/// Arguments of `blogctl import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A file `blogctl export` wrote.
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// What an import did, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub namespace: String,
    pub partitions: u32,
    pub events: u64,
    /// Comments the export caught before their verdict: moderation gives it once it runs.
    pub awaiting_moderation: u64,
    pub seconds: f64,
    pub events_per_second: f64,
}

pub async fn run(context: &Context, args: &ImportArgs) -> Result<()> {
    let started = Instant::now();
    let name = args.file.display().to_string();
    let file = File::open(&args.file).wrap_err_with(|| format!("opening {name}"))?;
    let verified = verify(&name, &file)?;
    let mut connection = context.connect().await?;
    let partitions = context.partitions(&mut connection).await?;
    refuse_a_used_namespace(&mut connection, &context.keys).await?;
    crate::partitions::fix(&mut connection, &context.keys, Some(partitions), &[]).await?;
    query::REBUILDER.load(&mut connection).await?;
    comments::REBUILDER.load(&mut connection).await?;
    let total = verified.events;
    let awaiting_moderation = verified.awaiting_moderation;
    let plan = Plan {
        file,
        name,
        keys: context.keys.clone(),
        partitions,
        verified,
    };
    let positions = write_events(&mut connection, plan, total).await?;
    create_groups(&mut connection, &context.keys, partitions, &positions).await?;
    let seconds = started.elapsed().as_secs_f64();
    let summary = Summary {
        namespace: context.keys.namespace().to_owned(),
        partitions: partitions.count(),
        events: total,
        awaiting_moderation,
        seconds,
        events_per_second: total as f64 / seconds.max(1e-9),
    };
    let line = if context.json {
        serde_json::to_string(&summary)?
    } else {
        format!(
            "imported {} events into namespace {} ({} partitions) in {:.2}s, {:.0} events/s; \
             `blogctl serve` takes it from there",
            summary.events,
            summary.namespace,
            summary.partitions,
            summary.seconds,
            summary.events_per_second
        )
    };
    Ok(print_line(&line)?)
}

/// What the check of the whole file found, for the import to use.
#[derive(Debug, Default)]
struct Verified {
    header: Option<Header>,
    events: u64,
    /// Comments with a `CommentModerated`, and with a `CommentUpdated`, in the file.
    moderated: HashSet<Uuid>,
    updated: HashSet<Uuid>,
    awaiting_moderation: u64,
}

/// Reads the whole file and refuses it (exit code 2, naming the line) unless every line checks
/// out, the header is of this format and version, every event names a stream and partition of
/// the blog, and the trailer's counts and hash match what comes before it.
fn verify(name: &str, file: &File) -> Result<Verified> {
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut verified = Verified::default();
    let mut created = HashSet::new();
    let hasher = Hasher::start();
    // The lines read since the last chunk went to the hasher.
    let mut chunk = Vec::with_capacity(HASH_CHUNK + (64 << 10));
    let mut number = 0;
    loop {
        let start = chunk.len();
        let read = reader
            .read_until(b'\n', &mut chunk)
            .wrap_err_with(|| format!("reading {name}"))?;
        if read == 0 {
            let why = "the file ends without its trailer: it was cut short";
            return Err(refuse_line(name, number.max(1), why).into());
        }
        number += 1;
        let line = std::str::from_utf8(&chunk[start..])
            .map_err(|_| refuse_line(name, number, "not UTF-8"))?;
        let Some(line) = line.strip_suffix('\n') else {
            return Err(refuse_line(name, number, "cut short (no newline at its end)").into());
        };
        if number == 1 && LineKind::of(line) != LineKind::Header {
            let why = "not the header of a `blogctl export` file";
            return Err(refuse_line(name, number, why).into());
        }
        if !checks_out(number, line) {
            let why = "its check does not match: the line was edited, or lines were added, \
                       removed or moved before it";
            return Err(refuse_line(name, number, why).into());
        }
        match (LineKind::of(line), number) {
            (LineKind::Header, 1) => verified.header = Some(parse_header(name, line)?),
            (LineKind::Event, 2..) => {
                let header = verified.header.as_ref().expect("line 1 is the header");
                let event = parse_event(name, number, line, header.partitions)?;
                note(&mut verified, &mut created, &event);
            }
            (LineKind::Trailer, 2..) => {
                let trailer = line.to_owned();
                // The hash covers every byte before the trailer.
                chunk.truncate(start);
                let hash = hasher.finish(chunk);
                check_trailer(name, number, &trailer, &verified, hash)?;
                refuse_lines_after(name, number, &mut reader)?;
                break;
            }
            _ => {
                let why = if number == 1 {
                    "not the header of a `blogctl export` file"
                } else {
                    "not an event or the trailer"
                };
                return Err(refuse_line(name, number, why).into());
            }
        }
        if chunk.len() >= HASH_CHUNK {
            let full = std::mem::replace(&mut chunk, Vec::with_capacity(HASH_CHUNK + (64 << 10)));
            hasher.add(full);
        }
    }
    verified.awaiting_moderation = created.difference(&verified.moderated).count() as u64;
    Ok(verified)
}

/// The SHA-256 of the file, taken on a thread of its own from the chunks it is given.
struct Hasher {
    chunks: Option<mpsc::SyncSender<Vec<u8>>>,
    thread: Option<JoinHandle<ring::digest::Digest>>,
}

impl Hasher {
    fn start() -> Hasher {
        // Two chunks waiting at most: the file is read no further ahead of the hash.
        let (chunks, to_hash) = mpsc::sync_channel::<Vec<u8>>(2);
        let thread = std::thread::spawn(move || {
            let mut hash = ring::digest::Context::new(&ring::digest::SHA256);
            for chunk in to_hash {
                hash.update(&chunk);
            }
            hash.finish()
        });
        Hasher {
            chunks: Some(chunks),
            thread: Some(thread),
        }
    }

    fn add(&self, chunk: Vec<u8>) {
        if let Some(chunks) = &self.chunks {
            // It fails only if the thread died, which `finish` reports.
            let _ = chunks.send(chunk);
        }
    }

    /// The hash of every chunk, `last` included.
    fn finish(mut self, last: Vec<u8>) -> ring::digest::Digest {
        self.add(last);
        self.chunks = None;
        self.thread
            .take()
            .expect("finished once")
            .join()
            .expect("hashing does not panic")
    }
}

fn parse_header(name: &str, line: &str) -> Result<Header> {
    let header: Header = serde_json::from_str(line)
        .map_err(|error| refuse_line(name, 1, format!("not a header: {error}")))?;
    if header.format != FORMAT || header.version != VERSION {
        return Err(refuse_line(
            name,
            1,
            format!(
                "format {:?} version {}: this blogctl reads {FORMAT} version {VERSION}",
                header.format, header.version
            ),
        )
        .into());
    }
    if Partitions::new(header.partitions).is_none() {
        let why = format!("{} partitions is not a partition count", header.partitions);
        return Err(refuse_line(name, 1, why).into());
    }
    Ok(header)
}

/// An event line, checked: a stream of the blog, a partition of the export, an entry id.
fn parse_event<'a>(name: &str, number: u64, line: &'a str, partitions: u32) -> Result<Routed<'a>> {
    let event = EventIn::parse(line)
        .map_err(|error| refuse_line(name, number, format!("not an event: {error}")))?;
    let Some(producer) = Service::PRODUCERS
        .into_iter()
        .find(|producer| producer.name() == event.stream)
    else {
        let why = format!("{:?} is not a stream of the blog", event.stream);
        return Err(refuse_line(name, number, why).into());
    };
    if event.partition >= partitions {
        let why = format!(
            "partition {} is not one of the export's {partitions}",
            event.partition
        );
        return Err(refuse_line(name, number, why).into());
    }
    let Some(id) = StreamId::parse(&event.id, false) else {
        let why = format!("{:?} is not a stream entry id", event.id);
        return Err(refuse_line(name, number, why).into());
    };
    Ok(Routed::new(producer, Partition(event.partition), id, event))
}

/// Notes what the services did with a comment: created, moderated, updated.
fn note(verified: &mut Verified, created: &mut HashSet<Uuid>, event: &Routed) {
    verified.events += 1;
    match (&event.event, event.producer) {
        (Some(Event::CommentCreated(comment)), Service::Comments) => {
            created.insert(comment.id);
        }
        (Some(Event::CommentModerated(comment)), Service::Moderation) => {
            verified.moderated.insert(comment.id);
        }
        (Some(Event::CommentUpdated(comment)), Service::Comments) => {
            verified.updated.insert(comment.id);
        }
        _ => {}
    }
}

fn check_trailer(
    name: &str,
    number: u64,
    line: &str,
    verified: &Verified,
    hash: ring::digest::Digest,
) -> Result<()> {
    let trailer = parse_trailer(line).ok_or_else(|| refuse_line(name, number, "not a trailer"))?;
    if trailer.events != verified.events {
        let why = format!(
            "the trailer counts {} events and the file holds {}: lines were removed or added",
            trailer.events, verified.events
        );
        return Err(refuse_line(name, number, why).into());
    }
    if trailer.sha256 != hex(hash.as_ref()) {
        let why = "the SHA-256 of the lines before the trailer does not match it: the file \
                   was edited";
        return Err(refuse_line(name, number, why).into());
    }
    Ok(())
}

fn refuse_lines_after(name: &str, number: u64, reader: &mut impl BufRead) -> Result<()> {
    let mut rest = String::new();
    reader.read_line(&mut rest)?;
    if !rest.trim().is_empty() {
        let why = "more follows the trailer: two files joined, or lines added";
        return Err(refuse_line(name, number + 1, why).into());
    }
    Ok(())
}

/// One event of the file, its envelope parsed where it has a valid one.
struct Routed<'a> {
    producer: Service,
    partition: Partition,
    id: StreamId,
    line: EventIn<'a>,
    event: Option<Event>,
}

impl<'a> Routed<'a> {
    fn new(producer: Service, partition: Partition, id: StreamId, line: EventIn<'a>) -> Routed<'a> {
        let event = line.event();
        Routed {
            producer,
            partition,
            id,
            line,
            event,
        }
    }

    /// The post the event is about, if it names one.
    fn post(&self) -> Option<Uuid> {
        match self.event.as_ref()? {
            Event::PostCreated(post) => Some(post.id),
            Event::CommentCreated(comment)
            | Event::CommentModerated(comment)
            | Event::CommentUpdated(comment) => Some(comment.post_id),
        }
    }

    /// Whether `service`'s state changes with it, as `blogctl rebuild` applies the log: a
    /// valid event of a kind it uses, on the stream of the kind's producer, for every group or
    /// for `service`'s.
    fn applies_to(&self, service: Service) -> bool {
        let used = |kind: EventKind| {
            matches!(
                kind,
                EventKind::PostCreated | EventKind::CommentCreated | EventKind::CommentUpdated
            ) && kind.producer() == self.producer
        };
        self.kind().is_some_and(used) && self.line.is_for(service.name())
    }

    fn kind(&self) -> Option<EventKind> {
        Some(match self.event.as_ref()? {
            Event::PostCreated(_) => EventKind::PostCreated,
            Event::CommentCreated(_) => EventKind::CommentCreated,
            Event::CommentModerated(_) => EventKind::CommentModerated,
            Event::CommentUpdated(_) => EventKind::CommentUpdated,
        })
    }
}

/// Everything the writing thread needs.
struct Plan {
    /// The file, checked: read again from its start.
    file: File,
    name: String,
    keys: Keys,
    partitions: Partitions,
    verified: Verified,
}

/// Where the groups of one partition start, as the import found the services' work.
#[derive(Debug, Default, Clone)]
struct Positions {
    /// The last id written to each events stream of the partition, by producer (in the order
    /// of [`Service::PRODUCERS`]).
    last: [Option<StreamId>; 3],
    /// Moderation's group on the comments: just before the first comment without a verdict.
    moderation_from: Option<StreamId>,
    /// The comments service's group on the verdicts: before the first not yet recorded.
    comments_from: Option<StreamId>,
}

/// What the writing thread sends: a round of pipelines (one per partition it touches), or
/// where the groups start once every event is written.
enum Message {
    Round(Vec<redis::Pipeline>, u64),
    Done(Vec<Positions>),
}

/// Writes every event and the state it makes: a thread reads and turns the file into rounds of
/// pipelines while this task sends them; returns where each partition's groups start.
///
/// On a single Redis, up to [`IN_FLIGHT`] rounds are sent (their pipelines queued on the
/// connection, in order) before the oldest is awaited, so that Redis has the next round at hand
/// when it ends one: waiting for each round's last reply before sending the next left Redis idle
/// about a fifth of the time. The connection sends requests in the order they are queued and Redis runs
/// them in that order, so the rounds keep theirs; a round run out of order would fail loudly, as
/// Redis refuses an `XADD` id below its stream's last. (On a Cluster each master's connection
/// is driven apart, with no order between them: rounds go one at a time.)
async fn write_events(
    connection: &mut Connection,
    plan: Plan,
    total: u64,
) -> Result<Vec<Positions>> {
    let progress = progress_bar(total, "import");
    let (sender, mut receiver) = tokio::sync::mpsc::channel::<Result<Message>>(2);
    let reader = std::thread::spawn(move || {
        let result = read_rounds(&plan, &sender);
        if let Err(error) = result {
            let _ = sender.blocking_send(Err(error));
        }
    });
    let mut positions = None;
    let mut in_flight: VecDeque<(Vec<Sending>, u64)> = VecDeque::new();
    while let Some(message) = receiver.recv().await {
        match message? {
            Message::Round(pipelines, events) if !connection.is_cluster() => {
                in_flight.push_back((start_round(connection, pipelines).await?, events));
                if in_flight.len() == IN_FLIGHT
                    && let Some((oldest, count)) = in_flight.pop_front()
                {
                    end_round(oldest).await?;
                    progress.inc(count);
                }
            }
            Message::Round(pipelines, events) => {
                send_round(connection, pipelines)
                    .await
                    .wrap_err("writing the events")?;
                progress.inc(events);
            }
            Message::Done(found) => positions = Some(found),
        }
    }
    for (started, count) in in_flight {
        end_round(started).await?;
        progress.inc(count);
    }
    progress.finish_and_clear();
    let _ = reader.join();
    positions.ok_or_else(|| eyre!("the import's reader stopped before the end of the file"))
}

/// A pipeline sent, its replies still to come.
type Sending = Pin<Box<dyn Future<Output = redis::RedisResult<()>> + Send>>;

/// Queues a round's pipelines on the connection, in order, without waiting for their replies.
async fn start_round(
    connection: &Connection,
    pipelines: Vec<redis::Pipeline>,
) -> Result<Vec<Sending>> {
    let mut started = Vec::with_capacity(pipelines.len());
    for pipeline in pipelines {
        let mut writer = connection.clone();
        let mut sending: Sending =
            Box::pin(async move { pipeline.query_async::<()>(&mut writer).await });
        // Its first poll packs the pipeline and queues it.
        match std::future::poll_fn(|context| Poll::Ready(sending.as_mut().poll(context))).await {
            Poll::Ready(result) => result.wrap_err("writing the events")?,
            Poll::Pending => started.push(sending),
        }
    }
    Ok(started)
}

/// Waits for the replies of a round [`start_round`] queued.
async fn end_round(started: Vec<Sending>) -> Result<()> {
    for sending in started {
        sending.await.wrap_err("writing the events")?;
    }
    Ok(())
}

/// Sends a round's pipelines, one per partition, all at once: partitions share nothing, and on
/// a Cluster their masters work at the same time.
async fn send_round(connection: &mut Connection, pipelines: Vec<redis::Pipeline>) -> Result<()> {
    if let [pipeline] = &pipelines[..] {
        return Ok(pipeline.query_async(connection).await?);
    }
    let mut sends = tokio::task::JoinSet::new();
    for pipeline in pipelines {
        let mut connection = connection.clone();
        sends.spawn(async move { pipeline.query_async::<()>(&mut connection).await });
    }
    while let Some(sent) = sends.join_next().await {
        sent??;
    }
    Ok(())
}

/// The writing thread: reads the events again (the file was checked) and sends them as rounds.
fn read_rounds(plan: &Plan, sender: &tokio::sync::mpsc::Sender<Result<Message>>) -> Result<()> {
    let mut file = &plan.file;
    file.seek(SeekFrom::Start(0))
        .wrap_err_with(|| format!("reading {}", plan.name))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let header = plan.verified.header.as_ref().expect("a checked header");
    let streams = StreamKeys::new(&plan.keys, plan.partitions);
    let mut positions = vec![Positions::default(); plan.partitions.count() as usize];
    let mut round = Round::new(plan, &streams);
    let mut bytes = Vec::with_capacity(4096);
    let (mut number, mut events) = (0, 0);
    while events < plan.verified.events {
        bytes.clear();
        let read = reader
            .read_until(b'\n', &mut bytes)
            .wrap_err_with(|| format!("reading {}", plan.name))?;
        number += 1;
        let line = std::str::from_utf8(&bytes)
            .ok()
            .and_then(|line| line.strip_suffix('\n'))
            .filter(|line| read > 0 && checks_out(number, line))
            .ok_or_else(|| {
                eyre!(
                    "{} line {number} changed after it was checked: the import stopped there, and \
                     the namespace holds the events before it (delete its keys before importing \
                     again)",
                    plan.name
                )
            })?;
        if LineKind::of(line) != LineKind::Event {
            continue;
        }
        let event = parse_event(&plan.name, number, line, header.partitions)?;
        round.add(event, &mut positions);
        events += 1;
        if round.events >= ROUND && sender.blocking_send(Ok(round.finish(false))).is_err() {
            return Ok(());
        }
    }
    let _ = sender.blocking_send(Ok(round.finish(true)));
    let _ = sender.blocking_send(Ok(Message::Done(positions)));
    Ok(())
}

/// The events stream of each producer in each partition, named once.
struct StreamKeys {
    keys: Vec<String>,
}

impl StreamKeys {
    fn new(keys: &Keys, partitions: Partitions) -> StreamKeys {
        StreamKeys {
            keys: partitions
                .all()
                .flat_map(|partition| {
                    Service::PRODUCERS.map(|producer| keys.events(producer, partition))
                })
                .collect(),
        }
    }

    fn of(&self, producer: Service, partition: Partition) -> &str {
        &self.keys[partition.0 as usize * Service::PRODUCERS.len() + producer_index(producer)]
    }
}

/// Where `producer` is in [`Service::PRODUCERS`].
fn producer_index(producer: Service) -> usize {
    Service::PRODUCERS
        .iter()
        .position(|&known| known == producer)
        .expect("a producer")
}

/// The writes of the round being made, per partition.
struct Round<'a> {
    plan: &'a Plan,
    streams: &'a StreamKeys,
    events: usize,
    /// Indexed by partition.
    partitions: Vec<PartitionWrites>,
    /// A new id as text (reused).
    id: String,
}

/// One partition's writes in a round: its events, then the state they make, with the apply
/// functions of `rebuild` (a comment's update folded into its creation, see [`Calls`]).
struct PartitionWrites {
    pipeline: redis::Pipeline,
    query: Calls,
    comments: Calls,
}

impl PartitionWrites {
    fn new() -> PartitionWrites {
        PartitionWrites {
            pipeline: redis::pipe(),
            query: query::calls(),
            comments: comments::calls(),
        }
    }
}

impl<'a> Round<'a> {
    fn new(plan: &'a Plan, streams: &'a StreamKeys) -> Round<'a> {
        Round {
            plan,
            streams,
            events: 0,
            partitions: (0..plan.partitions.count())
                .map(|_| PartitionWrites::new())
                .collect(),
            id: String::new(),
        }
    }

    /// Adds one event: its `XADD` in its new partition, the state it changes there, and where
    /// the groups of that partition start.
    fn add(&mut self, event: Routed, positions: &mut [Positions]) {
        let plan = self.plan;
        let partition = match event.post() {
            Some(post) => plan.partitions.of_post(&post),
            None => Partition(event.partition.0 % plan.partitions.count()),
        };
        let at = &mut positions[partition.0 as usize];
        let producer = producer_index(event.producer);
        let before = at.last[producer];
        let id = match before {
            Some(last) if event.id <= last => last.next(),
            _ => event.id.max(StreamId { ms: 0, seq: 1 }),
        };
        at.last[producer] = Some(id);
        note_position(&plan.verified, &event, before, at);
        let writes = &mut self.partitions[partition.0 as usize];
        let stream = self.streams.of(event.producer, partition);
        let fields = &event.line.fields.0;
        let bytes: usize = fields
            .iter()
            .map(|(name, value)| name.len() + value.len())
            .sum();
        let mut xadd = redis::Cmd::with_capacity(3 + 2 * fields.len(), bytes + stream.len() + 64);
        self.id.clear();
        write!(self.id, "{id}").expect("writing to a String");
        xadd.arg("XADD").arg(stream).arg(self.id.as_str());
        for (name, value) in fields {
            xadd.arg(name.as_ref()).arg(value.as_ref());
        }
        writes.pipeline.add_command(xadd).ignore();
        if event.applies_to(Service::Query) {
            writes
                .query
                .add(event.event.as_ref().expect("a valid event"));
        }
        if event.applies_to(Service::Comments) {
            writes
                .comments
                .add(event.event.as_ref().expect("a valid event"));
        }
        if let (Some(Event::PostCreated(post)), Service::Posts) = (&event.event, event.producer) {
            let record = plan.keys.post(partition, &post.id.to_string());
            writes
                .pipeline
                .hset_multiple(
                    record,
                    &[("id", post.id.to_string()), ("title", post.title.clone())],
                )
                .ignore();
        }
        self.events += 1;
    }

    /// The round as pipelines: each partition's events, then the state they make, but for the
    /// comments' creations held back for their update (see [`Calls`]); the `last` round has
    /// them all. A new round starts.
    fn finish(&mut self, last: bool) -> Message {
        let keys = &self.plan.keys;
        let mut pipelines = Vec::new();
        for (partition, writes) in self.partitions.iter_mut().enumerate() {
            let partition = Partition(partition as u32);
            let mut pipeline = std::mem::replace(&mut writes.pipeline, redis::pipe());
            for (service, calls, rebuilder) in [
                (Service::Query, &mut writes.query, &*query::REBUILDER),
                (
                    Service::Comments,
                    &mut writes.comments,
                    &*comments::REBUILDER,
                ),
            ] {
                let calls = if last { calls.finish() } else { calls.take() };
                let generation = keys.generation(service, partition, 0);
                for batch in calls.chunks(WRITE_BATCH) {
                    pipeline
                        .add_command(rebuilder.batch(&generation, batch))
                        .ignore();
                }
            }
            if !pipeline.is_empty() {
                pipelines.push(pipeline);
            }
        }
        let events = std::mem::take(&mut self.events);
        Message::Round(pipelines, events as u64)
    }
}

/// Moves a partition's group starts for one event (`before`: the last id its new stream had):
/// moderation starts before the first comment without a verdict in the file, the comments
/// service before the first verdict whose `CommentUpdated` is not in it.
fn note_position(
    verified: &Verified,
    event: &Routed,
    before: Option<StreamId>,
    at: &mut Positions,
) {
    let start = before.unwrap_or_default();
    match (&event.event, event.producer) {
        (Some(Event::CommentCreated(comment)), Service::Comments)
            if at.moderation_from.is_none()
                && event.line.is_for(Service::Moderation.name())
                && !verified.moderated.contains(&comment.id) =>
        {
            at.moderation_from = Some(start);
        }
        (Some(Event::CommentModerated(comment)), Service::Moderation)
            if at.comments_from.is_none()
                && event.line.is_for(Service::Comments.name())
                && !verified.updated.contains(&comment.id) =>
        {
            at.comments_from = Some(start);
        }
        _ => {}
    }
}

/// Creates every group the services read with, where the import found their work: after the
/// last event for the groups whose state the import built, at [`Positions`] for moderation's
/// and the comments service's verdicts, and at the start of the (empty) inboxes.
async fn create_groups(
    connection: &mut Connection,
    keys: &Keys,
    partitions: Partitions,
    positions: &[Positions],
) -> Result<()> {
    for expected in crate::ops::expected_groups(keys, partitions) {
        let at = &positions[expected.partition.0 as usize];
        let comments = keys.events(Service::Comments, expected.partition);
        let moderation = keys.events(Service::Moderation, expected.partition);
        let from = match expected.group.as_str() {
            "moderation" if expected.stream == comments => at.moderation_from,
            "comments" if expected.stream == moderation => at.comments_from,
            _ => None,
        };
        let position = match from {
            Some(id) => id.to_string(),
            // The last entry: for an inbox, none yet.
            None => "$".to_owned(),
        };
        let _: () = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&expected.stream)
            .arg(&expected.group)
            .arg(&position)
            .arg("MKSTREAM")
            .query_async(connection)
            .await
            .wrap_err_with(|| {
                format!("creating group {} on {}", expected.group, expected.stream)
            })?;
    }
    Ok(())
}

/// Refuses (exit code 2) a namespace that holds anything of a blog: its partition count, or
/// any stream of any partition it could have.
async fn refuse_a_used_namespace(connection: &mut Connection, keys: &Keys) -> Result<()> {
    let count = Partitions::new(Partitions::MAX).expect("the most partitions");
    let mut names = vec![vec![keys.partitions()]];
    for partition in count.all() {
        let mut streams: Vec<String> = Service::PRODUCERS
            .iter()
            .map(|&producer| keys.events(producer, partition))
            .collect();
        streams.push(keys.inbox(Service::Posts, partition));
        streams.push(keys.inbox(Service::Comments, partition));
        streams.push(keys.dead(partition));
        streams.push(keys.shared_events(partition));
        names.push(streams);
    }
    for keys_of_one_slot in names {
        let found: u64 = redis::cmd("EXISTS")
            .arg(&keys_of_one_slot)
            .query_async(connection)
            .await?;
        if found == 0 {
            continue;
        }
        let mut first = keys_of_one_slot[0].clone();
        for key in &keys_of_one_slot {
            let exists: bool = redis::cmd("EXISTS")
                .arg(key)
                .query_async(connection)
                .await?;
            if exists {
                first = key.clone();
                break;
            }
        }
        return Err(Failure::invalid(format!(
            "namespace {:?} holds a blog already ({first} exists): import fills only an empty \
             namespace, so choose another --namespace; nothing was imported",
            keys.namespace()
        ))
        .into());
    }
    Ok(())
}
