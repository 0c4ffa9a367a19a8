//! Operator commands: `status`, `events`, `dead`, `trim`, `completions`.
//!
//! They look at the streams and consumer groups from the outside, as an operator would with
//! `redis-cli`, and never write a service's keys: `dead retry` puts an entry back on its stream,
//! `dead drop` deletes dead letters and `trim` removes only what every group has acknowledged.
//! This module holds what they share: reading entries, stream ids, the services' groups, tables.

pub mod completions;
pub mod dead;
pub mod events;
pub mod status;
pub mod trim;

use std::cmp::Ordering;

use redis::RedisResult;

use crate::bus::compare_ids;
use crate::client::print_line;
use crate::connection::Connection;
use crate::error::Failure;
use crate::keys::Keys;
use crate::services::{comments, moderation, posts, query};

/// XRANGE: from the first entry of the stream.
pub const FIRST_ENTRY: &str = "-";
/// XRANGE: up to the last entry of the stream.
pub const LAST_ENTRY: &str = "+";
/// Entries read per XRANGE call while paging through a stream.
const PAGE: usize = 1000;

/// A stream entry, its bytes as text (bytes that are not UTF-8 replaced), fields in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub id: String,
    pub fields: Vec<(String, String)>,
}

pub use crate::bus::RawEntry;

impl Entry {
    fn from_raw((id, fields): RawEntry) -> Entry {
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

/// A stream id `<ms>-<seq>`, as numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId {
    pub ms: u64,
    pub seq: u64,
}

impl StreamId {
    /// Parses `<ms>-<seq>`, or `<ms>` alone when `seq_optional` (it then means `<ms>-0`).
    pub fn parse(text: &str, seq_optional: bool) -> Option<StreamId> {
        let number = |part: &str| {
            (!part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()))
                .then(|| part.parse::<u64>().ok())
                .flatten()
        };
        match text.split_once('-') {
            Some((ms, seq)) => Some(StreamId {
                ms: number(ms)?,
                seq: number(seq)?,
            }),
            None if seq_optional => Some(StreamId {
                ms: number(text)?,
                seq: 0,
            }),
            None => None,
        }
    }

    /// The smallest id after this one.
    pub fn next(self) -> StreamId {
        match self.seq.checked_add(1) {
            Some(seq) => StreamId { ms: self.ms, seq },
            None => StreamId {
                ms: self.ms.saturating_add(1),
                seq: 0,
            },
        }
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
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

/// The smaller of two stream ids.
pub fn min_id<'a>(a: &'a str, b: &'a str) -> &'a str {
    if compare_ids(a, b) == Ordering::Greater {
        b
    } else {
        a
    }
}

/// A consumer group some service reads a stream with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedGroup {
    pub stream: String,
    pub group: String,
}

/// Every (stream, group) the services read, from each service's own list of streams.
pub fn expected_groups(keys: &Keys) -> Vec<ExpectedGroup> {
    let services: [(&str, Vec<String>); 4] = [
        (posts::NAME, posts::Posts::streams(keys)),
        (comments::NAME, comments::Comments::streams(keys)),
        (moderation::NAME, moderation::Moderation::streams(keys)),
        (query::NAME, query::Query::streams(keys)),
    ];
    services
        .into_iter()
        .flat_map(|(service, streams)| {
            streams.into_iter().map(move |stream| ExpectedGroup {
                stream,
                group: service.to_owned(),
            })
        })
        .collect()
}

/// The streams services read with groups: the events stream first, then the inboxes.
pub fn read_streams(keys: &Keys) -> Vec<String> {
    let mut streams = vec![keys.events()];
    for expected in expected_groups(keys) {
        if !streams.contains(&expected.stream) {
            streams.push(expected.stream);
        }
    }
    streams
}

/// Text on a single line, so each table row stays one line.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Milliseconds for people: `850ms`, `12.3s`, `4m05s`, `2h03m`, `3d04h`.
pub fn human_duration(ms: u64) -> String {
    let seconds = ms / 1000;
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        3_600_000..86_400_000 => format!("{}h{:02}m", seconds / 3600, seconds % 3600 / 60),
        _ => format!("{}d{:02}h", seconds / 86_400, seconds % 86_400 / 3600),
    }
}

/// Bytes for people: `512 B`, `6.1 KiB`, `3.0 MiB`.
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// `1 entry`, `2 entries`.
pub fn count_of(count: u64, one: &str, many: &str) -> String {
    format!("{count} {}", if count == 1 { one } else { many })
}

/// Rows printed as columns two spaces apart; the last column is not padded.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&str]) -> Table {
        Table {
            rows: vec![header.iter().map(|cell| cell.to_string()).collect()],
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Prints the table, each line starting with `indent`.
    pub fn print(&self, indent: &str) -> std::io::Result<()> {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|column| {
                self.rows
                    .iter()
                    .filter_map(|row| row.get(column))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        for row in &self.rows {
            let mut line = indent.to_owned();
            for (column, cell) in row.iter().enumerate() {
                if column + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[column]));
                }
            }
            print_line(line.trim_end())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_ids_parse_strictly_and_step_to_the_next() {
        assert_eq!(
            StreamId::parse("12-3", false),
            Some(StreamId { ms: 12, seq: 3 })
        );
        assert_eq!(StreamId::parse("12", false), None);
        assert_eq!(
            StreamId::parse("12", true),
            Some(StreamId { ms: 12, seq: 0 })
        );
        for bad in ["", "-", "a-1", "1-", "-1", "1-2-3", "+1-2", " 1-2"] {
            assert_eq!(StreamId::parse(bad, true), None, "{bad:?} accepted");
        }
        assert_eq!(StreamId { ms: 5, seq: 7 }.next().to_string(), "5-8");
        assert_eq!(
            StreamId {
                ms: 5,
                seq: u64::MAX
            }
            .next()
            .to_string(),
            "6-0"
        );
    }

    #[test]
    fn durations_and_sizes_read_naturally() {
        assert_eq!(human_duration(850), "850ms");
        assert_eq!(human_duration(12_345), "12.3s");
        assert_eq!(human_duration(245_000), "4m05s");
        assert_eq!(human_duration(7_380_000), "2h03m");
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(6246), "6.1 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }

    #[test]
    fn every_service_group_is_expected() {
        let keys = Keys::new("blog").unwrap();
        let groups: Vec<(String, String)> = expected_groups(&keys)
            .into_iter()
            .map(|expected| (expected.stream, expected.group))
            .collect();
        for (stream, group) in [
            (keys.events(), "comments"),
            (keys.events(), "moderation"),
            (keys.events(), "query"),
            (keys.inbox("posts"), "posts"),
            (keys.inbox("comments"), "comments"),
        ] {
            assert!(groups.contains(&(stream.clone(), group.to_owned())));
        }
        assert_eq!(read_streams(&keys)[0], keys.events());
        assert_eq!(read_streams(&keys).len(), 3);
    }
}
