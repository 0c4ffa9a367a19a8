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
//! length (see `check_of`): an edited, moved, dropped or added line fails its own check (or the
//! next one's), so `import` names it. The trailer's counts and hash catch what the checks cannot
//! (a file cut short just after a line ends, or lines swapped with their checks recomputed).

pub mod export;
pub mod import;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::error::Failure;

/// The `format` of the header: what the file is.
pub const FORMAT: &str = "blogctl-export";
/// The version of the format this build writes and reads.
pub const VERSION: u32 = 1;

/// What every line ends with: `,"check":"<16 hex digits>"}`.
const CHECK_FIELD: &str = ",\"check\":\"";
const CHECK_SUFFIX_LEN: usize = CHECK_FIELD.len() + 16 + 2;

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

/// One event line, as written.
#[derive(Debug, Serialize)]
pub struct EventOut<'a> {
    /// The producing service (`posts`, `comments`, `moderation`): whose stream it was on.
    pub stream: &'a str,
    pub partition: u32,
    pub id: &'a str,
    pub fields: FieldsOut<'a>,
}

/// An event's fields, written as a JSON object in their order on the stream.
#[derive(Debug)]
pub struct FieldsOut<'a>(pub &'a [(String, String)]);

impl Serialize for FieldsOut<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (name, value) in self.0 {
            map.serialize_entry(name, value)?;
        }
        map.end()
    }
}

/// One event line, as read.
#[derive(Debug, Deserialize)]
pub struct EventIn {
    pub stream: String,
    pub partition: u32,
    pub id: String,
    pub fields: Fields,
}

/// An event's fields in the order of the line (a JSON object read as a list, not a map).
#[derive(Debug, Default)]
pub struct Fields(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for Fields {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Fields, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = Fields;
            fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
                formatter.write_str("an object of text fields")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(5));
                while let Some(entry) = map.next_entry::<String, String>()? {
                    fields.push(entry);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(InOrder)
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

/// The check of line `number` whose bytes before `,"check"` are `body`: FNV-1a's steps taken
/// on 64-bit words (the line number, then the body as little-endian words, the last padded
/// with zeros), eight times fewer than on bytes: every line is checked on export and import.
fn check_of(number: u64, body: &[u8]) -> u64 {
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut step = |word: u64| hash = (hash ^ word).wrapping_mul(PRIME);
    step(number);
    let mut words = body.chunks_exact(8);
    for word in &mut words {
        step(u64::from_le_bytes(word.try_into().expect("eight bytes")));
    }
    let mut last = [0u8; 8];
    last[..words.remainder().len()].copy_from_slice(words.remainder());
    step(u64::from_le_bytes(last));
    step(body.len() as u64);
    hash
}

/// `object` (a serialized JSON object) as line `number`, its check added, newline included.
pub fn with_check(number: u64, object: &str) -> String {
    let mut line = object.as_bytes().to_vec();
    add_check(number, &mut line);
    String::from_utf8(line).expect("JSON is UTF-8")
}

/// Turns `line`, a serialized JSON object, into line `number`: its check added before the
/// closing brace, and the newline.
pub fn add_check(number: u64, line: &mut Vec<u8>) {
    assert_eq!(line.pop(), Some(b'}'), "a JSON object");
    let check = check_of(number, line);
    line.extend_from_slice(CHECK_FIELD.as_bytes());
    line.extend_from_slice(format!("{check:016x}\"}}\n").as_bytes());
}

/// Whether line `number` (its newline removed) carries its own check.
pub fn checks_out(number: u64, line: &str) -> bool {
    let Some(split) = line.len().checked_sub(CHECK_SUFFIX_LEN) else {
        return false;
    };
    let (Some(body), Some(suffix)) = (line.get(..split), line.get(split..)) else {
        return false;
    };
    let Some(hex) = suffix
        .strip_prefix(CHECK_FIELD)
        .and_then(|rest| rest.strip_suffix("\"}"))
    else {
        return false;
    };
    u64::from_str_radix(hex, 16).is_ok_and(|check| check == check_of(number, body.as_bytes()))
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
    use super::*;

    #[test]
    fn a_line_carries_its_own_check_of_its_bytes_and_place() {
        let line = with_check(2, r#"{"stream":"posts","partition":0}"#);
        assert!(line.starts_with(r#"{"stream":"posts","partition":0,"check":""#));
        assert!(line.ends_with("\"}\n"));
        let line = line.trim_end();
        assert!(checks_out(2, line));
        assert!(!checks_out(3, line), "a moved line");
        assert!(
            !checks_out(2, &line.replace("posts", "postz")),
            "an edited line"
        );
        assert!(!checks_out(2, &line[..line.len() - 1]), "a line cut short");
        assert!(!checks_out(2, "{}"));
        assert!(!checks_out(2, "é"));
    }

    #[test]
    fn fields_keep_their_order() {
        let fields = vec![
            ("type".to_owned(), "PostCreated".to_owned()),
            ("data".to_owned(), "{}".to_owned()),
            ("a".to_owned(), "1".to_owned()),
        ];
        let text = serde_json::to_string(&FieldsOut(&fields)).unwrap();
        assert_eq!(text, r#"{"type":"PostCreated","data":"{}","a":"1"}"#);
        let read: Fields = serde_json::from_str(&text).unwrap();
        assert_eq!(read.0, fields);
        assert!(serde_json::from_str::<Fields>(r#"{"a":1}"#).is_err());
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
