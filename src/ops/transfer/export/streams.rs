//! What `blogctl export` reads: the cut, and every stream up to it, a page at a time, on
//! threads and connections of their own (see [`super`]).

use std::sync::LazyLock;

use color_eyre::Result;
use color_eyre::eyre::WrapErr;
use redis::{Script, Value};

use super::{Item, PAGE, StreamCut};
use crate::bus::{SERVICE_RESPONSE_TIMEOUT, StreamId};
use crate::connection::{Connection, Redis};
use crate::error::Failure;
use crate::keyspace::{Keys, Partitions, Service};

/// Reads the cut of one partition (see the script).
static CUT: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("../../lua/export_cut.lua")));

/// Threads reading the streams (see [`read_ahead`]).
const READERS: usize = 2;

/// Takes the cut of every partition, one script per partition (see [`CUT`]).
pub(super) async fn take_cut(
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

/// The pages of one stream, oldest first, as the reading thread sends them.
pub(super) type Pages = tokio::sync::mpsc::Receiver<redis::RedisResult<Vec<Item>>>;

/// Reads every stream from its start up to its cut, a page at a time, on threads and
/// connections of their own (one task per stream, each a page ahead of the export), so that
/// Redis and the parsing of its replies work while the export writes. Pages are smaller when
/// there are many streams, so that what is read ahead stays within about 100,000 events.
///
/// Parsing Redis's replies is the export's largest cost, more than writing the file: the
/// streams are shared out between [`READERS`] threads, the longest first to the least loaded.
pub(super) fn read_ahead(redis: Redis, cut: &[StreamCut]) -> Vec<Pages> {
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
