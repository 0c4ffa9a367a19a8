//! `blogctl export` and `blogctl import`: a portable copy of a blog's event log, and the format
//! they share.
//!
//! The file is NDJSON, one object per line, each line ending with its own check:
//! - line 1, the header: `{"format":"blogctl-export","version":1,"namespace":..,
//!   "partitions":..,"time":..,"time_ms":..,"check":..}`;
//! - one line per event, oldest first: `{"stream":"comments","partition":3,"id":"<ms>-<seq>",
//!   "fields":{"type":..,"version":..,"request_id":..,"producer":..,"data":..},"check":..}`,
//!   its fields as they are on the stream, in their order (bytes that are not UTF-8 replaced);
//! - the trailer: `{"trailer":{"events":..,"archived":..,"sha256":..},"check":..}`, the SHA-256
//!   of every byte before it.
//!
//! A line's `check` (16 hex digits) is a 64-bit FNV-1a over words: the line's number, its bytes
//! before `,"check"` as little-endian 64-bit words (the last padded with zeros), and their
//! length (see `line::check_of`): an edited, moved, dropped or added line fails its own check
//! (or the next one's), so `import` names it. The trailer's counts and hash catch what the
//! checks cannot (a file cut short just after a line ends, or lines swapped with their checks
//! recomputed).
//!
//! - `export`: `blogctl export`: the cut, the streams and archives read up to it, the file.
//! - `import`: `blogctl import`: the check of the whole file, then the writing of its events.
//! - `line`: the lines byte for byte: event lines written as `serde_json` writes them and read
//!   back without a JSON parser's generality; every line's check.
//!
//! The format's types, and what both commands share, are here.

pub mod export;
pub mod import;
mod line;

use std::borrow::Cow;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use line::with_check;

use crate::bus::FOR_SERVICE;
use crate::error::Failure;
use crate::events::{ENVELOPE_VERSION, Event};

/// The `format` of the header: what the file is.
pub const FORMAT: &str = "blogctl-export";
/// The version of the format this build writes and reads.
pub const VERSION: u32 = 1;

/// The first line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    pub namespace: String,
    pub partitions: u32,
    /// When the cut was taken, RFC 3339 (UTC).
    pub time: String,
    pub time_ms: u64,
}

/// One event line, as read: its texts borrowed from the line, but for those with escapes in
/// it (the `data` field, a JSON text), unescaped into texts of their own.
#[derive(Debug, PartialEq, Deserialize)]
pub struct EventIn<'a> {
    #[serde(borrow)]
    pub stream: Cow<'a, str>,
    pub partition: u32,
    #[serde(borrow)]
    pub id: Cow<'a, str>,
    #[serde(borrow)]
    pub fields: Fields<'a>,
}

impl<'a> EventIn<'a> {
    /// Its first field named `name`, as [`Delivery::field`](crate::bus::Delivery::field) finds it on the stream.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields
            .0
            .iter()
            .find(|(field, _)| field == name)
            .map(|(_, value)| value.as_ref())
    }

    /// Its event, as a service reads it ([`Delivery::event`](crate::bus::Delivery::event)): `None` for an envelope this
    /// build does not read (a missing field, another version, an unknown type, invalid data).
    pub fn event(&self) -> Option<Event> {
        if self.field("version")? != ENVELOPE_VERSION {
            return None;
        }
        let kind = self.field("type")?;
        let data = self.field("data")?;
        self.field("request_id")?;
        Event::parse(kind, data).ok().flatten()
    }

    /// Whether `group` handles it ([`Delivery::is_for`](crate::bus::Delivery::is_for)).
    pub fn is_for(&self, group: &str) -> bool {
        self.field(FOR_SERVICE)
            .is_none_or(|service| service == group)
    }
}

/// An event's fields in the order of the line (a JSON object read as a list, not a map).
#[derive(Debug, Default, PartialEq)]
pub struct Fields<'a>(pub Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'de: 'a, 'a> Deserialize<'de> for Fields<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Fields<'a>, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = Fields<'de>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("an object of text fields")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(6));
                while let Some((Text(name), Text(value))) = map.next_entry::<Text, Text>()? {
                    fields.push((name, value));
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(InOrder)
    }
}

/// A JSON text, borrowed from the line when it has no escapes (serde's `Cow` alone always
/// copies).
struct Text<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Text<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Text<'de>, D::Error> {
        struct Borrowing;
        impl<'de> Visitor<'de> for Borrowing {
            type Value = Text<'de>;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("a text")
            }
            fn visit_borrowed_str<E>(self, text: &'de str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Borrowed(text)))
            }
            fn visit_str<E>(self, text: &str) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(text.to_owned())))
            }
            fn visit_string<E>(self, text: String) -> Result<Text<'de>, E> {
                Ok(Text(Cow::Owned(text)))
            }
        }
        deserializer.deserialize_str(Borrowing)
    }
}

/// The last line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trailer {
    /// Event lines in the file.
    pub events: u64,
    /// How many of them came from the archives `trim` wrote.
    pub archived: u64,
    /// SHA-256 (hex) of every byte of the file before the trailer.
    pub sha256: String,
}

#[derive(Serialize, Deserialize)]
struct TrailerLine {
    trailer: Trailer,
}

/// The kind of a line, from how it starts (every line is checked before it is trusted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    Header,
    Event,
    Trailer,
    Unknown,
}

impl LineKind {
    pub fn of(line: &str) -> LineKind {
        if line.starts_with("{\"format\":") {
            LineKind::Header
        } else if line.starts_with("{\"stream\":") {
            LineKind::Event
        } else if line.starts_with("{\"trailer\":") {
            LineKind::Trailer
        } else {
            LineKind::Unknown
        }
    }
}

/// The trailer as a line (numbered `number`), check and newline included.
pub fn trailer_line(number: u64, trailer: &Trailer) -> String {
    let line = TrailerLine {
        trailer: trailer.clone(),
    };
    with_check(
        number,
        &serde_json::to_string(&line).expect("trailers serialize"),
    )
}

/// Parses a trailer line.
pub fn parse_trailer(line: &str) -> Option<Trailer> {
    serde_json::from_str::<TrailerLine>(line)
        .ok()
        .map(|line| line.trailer)
}

/// A SHA-256 as lowercase hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Unix milliseconds as RFC 3339 in UTC, to the second (days to civil date: H. Hinnant's
/// algorithm), so the header is readable without a date library.
pub fn rfc3339(ms: u64) -> String {
    let seconds = ms / 1000;
    let (days, rest) = ((seconds / 86_400) as i64, seconds % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

/// A refusal of the file (exit code 2) at line `number`.
pub fn refuse_line(file: &str, number: u64, why: impl std::fmt::Display) -> Failure {
    Failure::invalid(format!("{file} line {number}: {why}; nothing was imported"))
}

#[cfg(test)]
mod tests {
    use super::line::checks_out;
    use super::*;

    /// An event line reads as a service reads the same entry on its stream.
    #[test]
    fn an_event_line_reads_as_its_entry_on_the_stream() {
        use crate::bus::Delivery;
        let data = r#"{"id":"0190b2a4-5e6f-7000-8000-000000000001","postId":"0190b2a4-5e6f-7000-8000-000000000002","content":"hi","status":"pending"}"#;
        let valid = [
            ("type", "CommentCreated"),
            ("version", "1"),
            ("request_id", "r"),
            ("producer", "comments"),
            ("data", data),
        ];
        let mut cases: Vec<Vec<(&str, &str)>> = vec![valid.to_vec()];
        let blank = data.replace("hi", " ");
        for (index, replaced) in [
            (0, ("type", "Unknown")),
            (0, ("kind", "CommentCreated")),
            (1, ("version", "2")),
            (2, ("reply", "r")),
            (4, ("data", "{}")),
            (4, ("data", blank.as_str())),
        ] {
            let mut case = valid.to_vec();
            case[index] = replaced;
            cases.push(case);
        }
        let mut twice = valid.to_vec();
        twice.insert(0, ("type", "PostCreated"));
        cases.push(twice);
        let mut for_one = valid.to_vec();
        for_one.push((FOR_SERVICE, "moderation"));
        cases.push(for_one);
        for fields in cases {
            let line = EventIn {
                stream: "comments".into(),
                partition: 0,
                id: "1-0".into(),
                fields: Fields(
                    fields
                        .iter()
                        .map(|&(name, value)| (name.into(), value.into()))
                        .collect(),
                ),
            };
            let delivery = Delivery {
                stream: String::new(),
                id: "1-0".to_owned(),
                fields: fields
                    .iter()
                    .map(|(name, value)| (name.as_bytes().to_vec(), value.as_bytes().to_vec()))
                    .collect(),
                deliveries: 1,
            };
            let event = delivery
                .event()
                .ok()
                .flatten()
                .map(|envelope| envelope.event);
            assert_eq!(line.event(), event, "{fields:?}");
            for group in ["comments", "moderation", "query"] {
                assert_eq!(line.is_for(group), delivery.is_for(group), "{fields:?}");
            }
        }
    }

    #[test]
    fn times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_201_845_123), "2025-11-27T00:04:05Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn line_kinds_come_from_their_start() {
        assert_eq!(LineKind::of(r#"{"format":"x"}"#), LineKind::Header);
        assert_eq!(LineKind::of(r#"{"stream":"x"}"#), LineKind::Event);
        assert_eq!(LineKind::of(r#"{"trailer":{}}"#), LineKind::Trailer);
        assert_eq!(LineKind::of("hello"), LineKind::Unknown);
        let trailer = Trailer {
            events: 3,
            archived: 1,
            sha256: "ab".into(),
        };
        let line = trailer_line(5, &trailer);
        assert!(checks_out(5, line.trim_end()));
        assert_eq!(parse_trailer(line.trim_end()), Some(trailer));
    }
}
