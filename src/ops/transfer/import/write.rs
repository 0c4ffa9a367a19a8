//! The second pass of `blogctl import`: the file read again and its events written, with the
//! state they make, in rounds of pipelines; then the consumer groups (see [`super`]).

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::future::Future;
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::pin::Pin;
use std::task::Poll;

use color_eyre::Result;
use color_eyre::eyre::{WrapErr, eyre};

use super::check::parse_event;
use super::{Plan, Routed, Verified};
use crate::bus::StreamId;
use crate::connection::Connection;
use crate::events::Event;
use crate::keyspace::{Keys, Partition, Partitions, Service};
use crate::ops::transfer::LineKind;
use crate::ops::transfer::line::checks_out;
use crate::output::progress_bar;
use crate::services::generations::Calls;
use crate::services::{comments, query};

/// Events per round: parsed on a thread of its own while Redis writes the rounds before.
const ROUND: usize = 1000;
/// Rounds sent and not yet answered, on a single Redis (see [`write_events`]).
const IN_FLIGHT: usize = 3;
/// Apply calls per script (as `rebuild` sends them): a few milliseconds inside Redis.
const WRITE_BATCH: usize = 250;

/// Where the groups of one partition start, as the import found the services' work.
#[derive(Debug, Default, Clone)]
pub(super) struct Positions {
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
/// when it ends one: waiting for each round's last reply before sending the next left Redis
/// idle about a fifth of the time.
///
/// The rounds keep their order: the multiplexed connection takes requests first come, first
/// served, writes them in that order, and Redis runs them in that order. A round run out of
/// order would fail loudly, as Redis refuses an `XADD` id below its stream's last. (On a
/// Cluster each master's connection is driven apart, with no order between them: rounds go one
/// at a time there.)
pub(super) async fn write_events(
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
        // Its first poll packs the pipeline and queues it (or waits its turn to be queued).
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
pub(super) async fn create_groups(
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
