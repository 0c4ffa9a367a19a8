//! Operator commands: `status`, `events`, `dead`, `trim`, `acl`.
//!
//! They look at the streams and consumer groups from the outside, as an operator would with
//! `redis-cli`, and never write a service's keys: `dead retry` puts an entry back on its stream,
//! `dead drop` deletes dead letters and `trim` removes only what every group has acknowledged.
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
use crate::error::Failure;
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

/// The streams services read with groups, partition by partition: the events streams first
/// (posts, comments, moderation), then the inboxes.
pub fn read_streams(keys: &Keys, partitions: Partitions) -> Vec<String> {
    let mut streams = Vec::new();
    for partition in partitions.all() {
        streams.extend(
            Service::PRODUCERS
                .iter()
                .map(|&producer| keys.events(producer, partition)),
        );
        for service in Service::ALL {
            if let (_, Some(inbox)) = services::streams(keys, service, partition) {
                streams.push(inbox);
            }
        }
    }
    streams
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

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            read_streams(&keys, Partitions::ONE)[0],
            events(Service::Posts)
        );
        assert_eq!(read_streams(&keys, Partitions::ONE).len(), 5);
        let eight = Partitions::new(8).unwrap();
        assert_eq!(expected_groups(&keys, eight).len(), 8 * 7);
        assert_eq!(read_streams(&keys, eight).len(), 8 * 5);
        assert_eq!(
            events_streams(&keys, eight)[3],
            keys.events(Service::Posts, Partition(1))
        );
    }
}
