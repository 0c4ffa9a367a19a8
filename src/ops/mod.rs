//! Operator commands: `status`, `events`, `dead`, `trim`, `acl`, and `export`/`import`
//! (`transfer`).
//!
//! They look at the streams and consumer groups from the outside, as an operator would with
//! `redis-cli`, and never write a service's keys: `dead retry` puts an entry back on its stream,
//! `dead drop` deletes dead letters and `trim` removes only what every group has acknowledged.
//! The exception is `import`, which fills an empty namespace: its streams, its groups' positions
//! and the state the services would have built from them.
//! This module holds what they share: reading entries, stream ids, the services' groups, tables.

pub mod acl;
pub mod archive;
pub mod dead;
pub mod events;
pub mod status;
pub mod transfer;
pub mod trim;

use redis::RedisResult;

use crate::bus::StreamId;
use crate::connection::Connection;
use crate::error::{Failure, is_unavailable};
use crate::keyspace::{Keys, Partition, Partitions, Service};
use crate::services;

/// XRANGE: from the first entry of the stream.
pub const FIRST_ENTRY: &str = "-";
/// XRANGE: up to the last entry of the stream.
pub const LAST_ENTRY: &str = "+";
/// Entries read per XRANGE call while paging through a stream.
pub(crate) const PAGE: usize = 1000;

/// A stream entry, its bytes as text (bytes that are not UTF-8 replaced), fields in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub fields: Vec<(String, String)>,
}

pub use crate::bus::RawEntry;

impl Entry {
    pub(crate) fn from_raw((id, fields): RawEntry) -> Entry {
        let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
        Entry {
            id,
            fields: fields
                .into_iter()
                .map(|(name, value)| (text(name), text(value)))
                .collect(),
        }
    }

    /// The value of a field, if the entry has it.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_str())
    }
}

/// Up to `count` entries of `stream` from `start` to `end` (XRANGE bounds: ids, `-`, `+`, or
/// `(id` to exclude that id).
pub async fn read_range(
    connection: &mut Connection,
    stream: &str,
    start: &str,
    end: &str,
    count: usize,
) -> RedisResult<Vec<Entry>> {
    let raw: Vec<RawEntry> = redis::cmd("XRANGE")
        .arg(stream)
        .arg(start)
        .arg(end)
        .arg("COUNT")
        .arg(count)
        .query_async(connection)
        .await?;
    Ok(raw.into_iter().map(Entry::from_raw).collect())
}

/// Reads `stream` from `start` to `end` a page at a time, oldest first; the pages are handed
/// to `visit` until it returns false or the range is exhausted.
pub async fn page_through(
    connection: &mut Connection,
    stream: &str,
    start: &str,
    end: &str,
    mut visit: impl FnMut(Vec<Entry>) -> color_eyre::Result<bool>,
) -> color_eyre::Result<()> {
    let mut start = start.to_owned();
    loop {
        let page = read_range(connection, stream, &start, end, PAGE).await?;
        let full = page.len() == PAGE;
        let Some(last) = page.last() else {
            return Ok(());
        };
        start = format!("({}", last.id);
        if !visit(page)? || !full {
            return Ok(());
        }
    }
}

/// Streams read as one, a page of each at a time: their entries merged in id order (entries of
/// equal ids in the order the streams were given). One XRANGE per stream: on a Cluster, the
/// partitions live in different slots, which one command may not mix.
pub struct MergedStreams<Tag> {
    streams: Vec<PagedStream<Tag>>,
}

/// One stream of [`MergedStreams`]: the entries read and not yet taken, and where to read on.
struct PagedStream<Tag> {
    tag: Tag,
    key: String,
    read: std::collections::VecDeque<Entry>,
    start: String,
    exhausted: bool,
}

impl<Tag: Copy> MergedStreams<Tag> {
    /// `streams` (each with a tag saying where it is) from `start` (XRANGE bound) on.
    pub fn new(streams: Vec<(Tag, String)>, start: &str) -> MergedStreams<Tag> {
        let streams = streams
            .into_iter()
            .map(|(tag, key)| PagedStream {
                tag,
                key,
                read: Default::default(),
                start: start.to_owned(),
                exhausted: false,
            })
            .collect();
        MergedStreams { streams }
    }

    /// The next entry, with the tag of its stream.
    pub async fn next(
        &mut self,
        connection: &mut Connection,
    ) -> color_eyre::Result<Option<(Tag, Entry)>> {
        use color_eyre::eyre::WrapErr;
        for stream in &mut self.streams {
            if stream.read.is_empty() && !stream.exhausted {
                let page = read_range(connection, &stream.key, &stream.start, LAST_ENTRY, PAGE)
                    .await
                    .wrap_err_with(|| format!("reading {}", stream.key))?;
                stream.exhausted = page.len() < PAGE;
                if let Some(last) = page.last() {
                    stream.start = format!("({}", last.id);
                }
                stream.read.extend(page);
            }
        }
        let oldest = self
            .streams
            .iter_mut()
            .filter(|stream| !stream.read.is_empty())
            .min_by(|a, b| crate::bus::compare_ids(&a.read[0].id, &b.read[0].id));
        Ok(oldest.map(|stream| {
            let entry = stream.read.pop_front().expect("a stream with entries read");
            (stream.tag, entry)
        }))
    }
}

/// An entry id given on the command line (`<ms>-<seq>`); exit code 2 when it is not one.
pub fn parse_entry_id(what: &str, text: &str) -> Result<String, Failure> {
    StreamId::parse(text, false)
        .map(|id| id.to_string())
        .ok_or_else(|| {
            Failure::invalid(format!(
                "{what} {text:?} is not a stream entry id (<milliseconds>-<sequence>, e.g. 1700000000000-0)"
            ))
        })
}

/// A consumer group some service reads a stream with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedGroup {
    pub stream: String,
    pub group: String,
    pub partition: Partition,
}

/// Every (stream, group) the services read in every partition, from [`services::streams`],
/// partition by partition.
pub fn expected_groups(keys: &Keys, partitions: Partitions) -> Vec<ExpectedGroup> {
    partitions
        .all()
        .flat_map(|partition| {
            Service::ALL.into_iter().flat_map(move |service| {
                let (streams, _) = services::streams(keys, service, partition);
                streams.into_iter().map(move |stream| ExpectedGroup {
                    stream,
                    group: service.name().to_owned(),
                    partition,
                })
            })
        })
        .collect()
}

/// The events streams, one per producing service and partition, partition by partition and
/// in [`Service::PRODUCERS`] order within one.
pub fn events_streams(keys: &Keys, partitions: Partitions) -> Vec<String> {
    partitions
        .all()
        .flat_map(|partition| {
            Service::PRODUCERS
                .iter()
                .map(move |&producer| keys.events(producer, partition))
        })
        .collect()
}

/// The Redis Cluster slot of `key`: CRC16 (XMODEM) of its hash tag, modulo 16384. Every key
/// of a partition has the same one, so it names where the partition lives.
pub fn slot_of(key: &str) -> u16 {
    let bytes = key.as_bytes();
    let tagged = key
        .find('{')
        .and_then(|open| {
            let close = key[open + 1..].find('}')? + open + 1;
            (close > open + 1).then(|| &bytes[open + 1..close])
        })
        .unwrap_or(bytes);
    let mut crc: u16 = 0;
    for &byte in tagged {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc % 16384
}

/// When `report` says that a Redis Cluster does not serve a partition's slot now (its master
/// is gone, `CLUSTERDOWN`, or cannot be reached): Redis's error, one line. On a Cluster the other
/// partitions may still be read; on a single Redis the same errors mean Redis itself is gone,
/// and end the command (None).
pub fn slot_unavailable(connection: &Connection, report: &color_eyre::Report) -> Option<String> {
    if !matches!(connection, Connection::Cluster(_)) {
        return None;
    }
    report
        .chain()
        .filter_map(|cause| cause.downcast_ref::<redis::RedisError>())
        .find(|error| is_unavailable(error))
        .map(|error| crate::output::one_line(&error.to_string()))
}

/// A thing of one partition as the operator commands name it when there are several:
/// `<partition>/<name>`; the name alone with one partition, as before partitions.
pub fn in_partition(partitions: Partitions, partition: Partition, name: &str) -> String {
    if partitions.count() == 1 {
        name.to_owned()
    } else {
        format!("{partition}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_those_of_redis_cluster() {
        // CLUSTER KEYSLOT answers: 12739 (the CRC16 check value 0x31C3) for "123456789".
        assert_eq!(slot_of("123456789"), 12739);
        assert_eq!(slot_of("a{123456789}b"), 12739);
        // An empty tag is no tag: the whole key is hashed.
        assert_ne!(slot_of("{}123456789"), 12739);
        assert_eq!(
            slot_of("{user1000}.following"),
            slot_of("{user1000}.followers")
        );
        let keys = Keys::new("blog").unwrap();
        assert_eq!(
            slot_of(&keys.dead(Partition(3))),
            slot_of(&keys.events(Service::Posts, Partition(3)))
        );
        assert_eq!(slot_of("foo"), 12182);
    }

    #[test]
    fn every_service_group_is_expected() {
        let keys = Keys::new("blog").unwrap();
        let groups: Vec<(String, String)> = expected_groups(&keys, Partitions::ONE)
            .into_iter()
            .map(|expected| (expected.stream, expected.group))
            .collect();
        let events = |producer| keys.events(producer, Partition::FIRST);
        for (stream, group) in [
            (events(Service::Posts), "comments"),
            (events(Service::Posts), "query"),
            (events(Service::Comments), "moderation"),
            (events(Service::Comments), "query"),
            (events(Service::Moderation), "comments"),
            (keys.inbox(Service::Posts, Partition::FIRST), "posts"),
            (keys.inbox(Service::Comments, Partition::FIRST), "comments"),
        ] {
            assert!(groups.contains(&(stream.clone(), group.to_owned())));
        }
        assert_eq!(groups.len(), 7);
        let eight = Partitions::new(8).unwrap();
        assert_eq!(expected_groups(&keys, eight).len(), 8 * 7);
        assert_eq!(
            events_streams(&keys, eight)[3],
            keys.events(Service::Posts, Partition(1))
        );
    }
}
