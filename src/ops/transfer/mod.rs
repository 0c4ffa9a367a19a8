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

use std::borrow::Cow;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use crate::bus::FOR_SERVICE;
use crate::error::Failure;
use crate::events::{ENVELOPE_VERSION, Event};

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

/// The start of every event line of one stream of one partition, up to its id:
/// `{"stream":"<stream>","partition":<p>,"id":`.
pub fn event_prefix(stream: &str, partition: u32) -> Vec<u8> {
    let mut prefix = b"{\"stream\":".to_vec();
    push_json_text(&mut prefix, stream);
    prefix.extend_from_slice(format!(",\"partition\":{partition},\"id\":").as_bytes());
    prefix
}

/// Appends one event line to `line` (without its check): `prefix` (see [`event_prefix`]), the
/// id, and the fields as a JSON object in their order on the stream, byte for byte as
/// `serde_json` writes them.
pub fn push_event(line: &mut Vec<u8>, prefix: &[u8], id: &str, fields: &[(String, String)]) {
    line.extend_from_slice(prefix);
    push_json_text(line, id);
    line.extend_from_slice(b",\"fields\":{");
    for (index, (name, value)) in fields.iter().enumerate() {
        if index > 0 {
            line.push(b',');
        }
        push_json_text(line, name);
        line.push(b':');
        push_json_text(line, value);
    }
    line.extend_from_slice(b"}}");
}

/// Appends `text` as a JSON string, escaped as `serde_json` escapes it (`"` and `\` with a
/// backslash, control characters as `\b \t \n \f \r` or `\u00xx`, nothing else): the lines'
/// bytes are checked and hashed.
pub fn push_json_text(line: &mut Vec<u8>, text: &str) {
    let bytes = text.as_bytes();
    line.reserve(bytes.len() + 2);
    line.push(b'"');
    let mut at = 0;
    // Eight bytes at a time: a word is copied whole, then cut back to the run before the
    // first byte to escape.
    while let Some(word) = bytes.get(at..at + 8) {
        let word: [u8; 8] = word.try_into().expect("eight bytes");
        line.extend_from_slice(&word);
        let marks = specials(u64::from_le_bytes(word));
        if marks == 0 {
            at += 8;
            continue;
        }
        let run = marks.trailing_zeros() as usize / 8;
        line.truncate(line.len() - 8 + run);
        push_escaped(line, word[run]);
        at += run + 1;
    }
    while let Some(run) = first_special(&bytes[at..]) {
        line.extend_from_slice(&bytes[at..at + run]);
        push_escaped(line, bytes[at + run]);
        at += run + 1;
    }
    line.extend_from_slice(&bytes[at..]);
    line.push(b'"');
}

/// Appends the escape of `byte`, a quote, a backslash or a control character.
fn push_escaped(line: &mut Vec<u8>, byte: u8) {
    match byte {
        b'"' => line.extend_from_slice(b"\\\""),
        b'\\' => line.extend_from_slice(b"\\\\"),
        0x08 => line.extend_from_slice(b"\\b"),
        b'\t' => line.extend_from_slice(b"\\t"),
        b'\n' => line.extend_from_slice(b"\\n"),
        0x0c => line.extend_from_slice(b"\\f"),
        b'\r' => line.extend_from_slice(b"\\r"),
        _ => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            line.extend_from_slice(b"\\u00");
            line.push(HEX[usize::from(byte >> 4)]);
            line.push(HEX[usize::from(byte & 0xf)]);
        }
    }
}

/// The high bit of each byte of `word` (eight bytes of a text, the first lowest) that a JSON
/// string cannot hold as it is: a quote, a backslash, a control character. Exact up to the
/// first such byte (only a byte that borrows can mark one after it), so the lowest mark is the
/// first.
fn specials(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let below = |word: u64, limit: u64| word.wrapping_sub(ONES * limit) & !word & HIGHS;
    below(word, 0x20)
        | below(word ^ (ONES * u64::from(b'"')), 1)
        | below(word ^ (ONES * u64::from(b'\\')), 1)
}

/// Where the first byte of `bytes` that a JSON string cannot hold as it is is (see
/// [`specials`]), looking at eight bytes at a time.
fn first_special(bytes: &[u8]) -> Option<usize> {
    let mut words = bytes.chunks_exact(8);
    let mut offset = 0;
    for word in &mut words {
        let marks = specials(u64::from_le_bytes(word.try_into().expect("eight bytes")));
        if marks != 0 {
            return Some(offset + marks.trailing_zeros() as usize / 8);
        }
        offset += 8;
    }
    words
        .remainder()
        .iter()
        .position(|&byte| byte < 0x20 || byte == b'"' || byte == b'\\')
        .map(|at| offset + at)
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
    /// Reads an event line, its check included (and skipped): as `export` spells it, without a
    /// JSON parser's generality; any other spelling (spaces, another order, `\u` escapes), or a
    /// line that is not an event, with `serde_json`.
    pub fn parse(line: &'a str) -> serde_json::Result<EventIn<'a>> {
        match EventIn::as_exported(line) {
            Some(event) => Ok(event),
            None => serde_json::from_str(line),
        }
    }

    /// An event line as [`push_event`] and [`add_check`] write it; `None` for any other.
    fn as_exported(line: &'a str) -> Option<EventIn<'a>> {
        let body = line.get(..line.len().checked_sub(CHECK_SUFFIX_LEN)?)?;
        if !line[body.len()..].starts_with(CHECK_FIELD) {
            return None;
        }
        let mut reader = Reader { line: body, at: 0 };
        reader.expect("{\"stream\":")?;
        let stream = reader.text()?;
        reader.expect(",\"partition\":")?;
        let partition = reader.number()?;
        reader.expect(",\"id\":")?;
        let id = reader.text()?;
        reader.expect(",\"fields\":{")?;
        let mut fields = Vec::with_capacity(6);
        if reader.expect("}").is_none() {
            loop {
                let name = reader.text()?;
                reader.expect(":")?;
                fields.push((name, reader.text()?));
                if reader.expect(",").is_none() {
                    reader.expect("}")?;
                    break;
                }
            }
        }
        (reader.at == body.len()).then_some(EventIn {
            stream,
            partition,
            id,
            fields: Fields(fields),
        })
    }

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

/// Reads the parts of an event line as `export` writes them (see [`EventIn::as_exported`]).
struct Reader<'a> {
    line: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    /// Steps over `expected`, if it comes next.
    fn expect(&mut self, expected: &str) -> Option<()> {
        self.line[self.at..].starts_with(expected).then(|| {
            self.at += expected.len();
        })
    }

    /// A partition number, as `serde_json` reads a `u32`: no sign, no leading zero.
    fn number(&mut self) -> Option<u32> {
        let rest = &self.line[self.at..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let number = &rest[..digits];
        if number.is_empty() || (number.len() > 1 && number.starts_with('0')) {
            return None;
        }
        self.at += digits;
        number.parse().ok()
    }

    /// A JSON string, unescaped: borrowed when it has no escapes. `None` for a `\u` escape or a
    /// control character, left to `serde_json`.
    fn text(&mut self) -> Option<Cow<'a, str>> {
        self.expect("\"")?;
        let (line, start) = (self.line, self.at);
        let bytes = line.as_bytes();
        let mut at = start + first_special(&bytes[start..])?;
        if bytes[at] == b'"' {
            self.at = at + 1;
            return Some(Cow::Borrowed(&line[start..at]));
        }
        // Unescaped, it is shorter than the rest of the line.
        let mut text = Vec::with_capacity(bytes.len() - start);
        text.extend_from_slice(&bytes[start..at]);
        loop {
            match bytes[at] {
                b'"' => break,
                b'\\' => {
                    text.push(match bytes.get(at + 1)? {
                        b'"' => b'"',
                        b'\\' => b'\\',
                        b'/' => b'/',
                        b'b' => 0x08,
                        b'f' => 0x0c,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        _ => return None,
                    });
                    at += 2;
                }
                _ => return None,
            }
            // The run up to the next quote, backslash or control character, eight bytes at a
            // time (a word is copied whole, then cut back to the run).
            loop {
                let Some(word) = bytes.get(at..at + 8) else {
                    let run = first_special(&bytes[at..])?;
                    text.extend_from_slice(&bytes[at..at + run]);
                    at += run;
                    break;
                };
                let word: [u8; 8] = word.try_into().expect("eight bytes");
                text.extend_from_slice(&word);
                let marks = specials(u64::from_le_bytes(word));
                if marks == 0 {
                    at += 8;
                    continue;
                }
                let run = marks.trailing_zeros() as usize / 8;
                text.truncate(text.len() - 8 + run);
                at += run;
                break;
            }
        }
        self.at = at + 1;
        // Split only at ASCII bytes of a text: UTF-8 still.
        String::from_utf8(text).ok().map(Cow::Owned)
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
    const HEX: &[u8; 16] = b"0123456789abcdef";
    line.extend(
        (0..16)
            .rev()
            .map(|digit| HEX[(check >> (4 * digit)) as usize & 0xf]),
    );
    line.extend_from_slice(b"\"}\n");
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
        let mut line = Vec::new();
        push_event(&mut line, &event_prefix("posts", 3), "1-2", &fields);
        let line = String::from_utf8(line).unwrap();
        assert_eq!(
            line,
            r#"{"stream":"posts","partition":3,"id":"1-2","fields":{"type":"PostCreated","data":"{}","a":"1"}}"#
        );
        let text = &line[line.find(r#"{"type""#).unwrap()..line.len() - 1];
        let read: Fields = serde_json::from_str(text).unwrap();
        let read: Vec<(String, String)> = read
            .0
            .into_iter()
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        assert_eq!(read, fields);
        assert!(serde_json::from_str::<Fields>(r#"{"a":1}"#).is_err());
        // Texts without escapes are borrowed from the line, the others unescaped.
        let read: Fields = serde_json::from_str(r#"{"plain":"a\"b"}"#).unwrap();
        assert!(matches!(read.0[0].0, Cow::Borrowed("plain")));
        assert!(matches!(&read.0[0].1, Cow::Owned(text) if text == "a\"b"));
    }

    /// A line as `export` writes it reads as `serde_json` reads it, and so does any other.
    #[test]
    fn exported_lines_read_as_serde_json_reads_them() {
        let pool = ['a', '"', '\\', '\n', '\u{1}', '/', 'é', '{', ':', ',', '}'];
        let mut seed: u64 = 11;
        let mut random = |length: usize| -> String {
            (0..length)
                .map(|_| {
                    seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                    pool[(seed >> 33) as usize % pool.len()]
                })
                .collect()
        };
        let mut lines = Vec::new();
        for count in 0..4 {
            for length in 0..12 {
                let fields: Vec<(String, String)> = (0..count)
                    .map(|_| (random(length), random(length * 3)))
                    .collect();
                let mut line = Vec::new();
                push_event(&mut line, &event_prefix(&random(length), 7), "5-1", &fields);
                add_check(2, &mut line);
                lines.push(String::from_utf8(line).unwrap().trim_end().to_owned());
            }
        }
        let check = r#","check":"0123456789abcdef"}"#;
        let other = [
            r#"{"stream":"posts","partition":0,"id":"1-0","fields":{}"#,
            r#"{"stream":"po\u0073ts","partition":0,"id":"1-0","fields":{"a":"\ud83d\ude00"}"#,
            r#"{ "stream":"posts","partition":0,"id":"1-0","fields":{}"#,
            r#"{"partition":0,"stream":"posts","id":"1-0","fields":{}"#,
            r#"{"stream":"posts","partition":01,"id":"1-0","fields":{}"#,
            r#"{"stream":"posts","partition":-1,"id":"1-0","fields":{}"#,
            r#"{"stream":"posts","partition":4294967296,"id":"1-0","fields":{}"#,
            r#"{"stream":"posts","partition":1.0,"id":"1-0","fields":{}"#,
            r#"{"stream":"posts","partition":0,"id":"1-0","fields":{"a":1}"#,
            r#"{"stream":"posts","partition":0,"id":"1-0","fields":{"a":"b",}"#,
            r#"{"stream":"posts","partition":0,"id":"1-0","fields":{"a":"b"},"x":1"#,
            "{\"stream\":\"po\tsts\",\"partition\":0,\"id\":\"1-0\",\"fields\":{}",
            r#"{"stream":"posts","partition":0,"id":"1-0","fields":{"a":"\x"}"#,
            r#"{"stream":"posts","partition":0,"id":"1-0","fields":{"a":"b"}}"#,
        ];
        lines.extend(other.iter().map(|body| format!("{body}{check}")));
        for line in &lines {
            let read = EventIn::parse(line).map_err(|error| error.to_string());
            let by_serde = serde_json::from_str::<EventIn>(line).map_err(|error| error.to_string());
            assert_eq!(read, by_serde, "{line}");
        }
        // Every line `export` writes is read without `serde_json`, but for `\u` escapes.
        let exported = lines.len() - other.len();
        for line in &lines[..exported] {
            let with_u = line.contains(r"\u");
            assert_eq!(EventIn::as_exported(line).is_none(), with_u, "{line}");
        }
        assert!(EventIn::as_exported(&lines[exported + 2]).is_none());
    }

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

    /// Texts are escaped byte for byte as `serde_json` escapes them, wherever they fall in the
    /// eight-byte words.
    #[test]
    fn texts_are_escaped_as_serde_json_escapes_them() {
        let mut cases: Vec<String> = (0..=0x7f_u8)
            .map(|byte| char::from(byte).to_string())
            .collect();
        cases.extend(["", "é", "\u{2028}", "a\u{7f}b", "日本語\"\\x"].map(str::to_owned));
        let pool = [
            'a', '"', '\\', '\n', '\u{1}', '\u{1f}', ' ', 'é', '/', '\t', 'z',
        ];
        let mut seed: u64 = 7;
        for length in 0..40 {
            for _ in 0..20 {
                let text: String = (0..length)
                    .map(|_| {
                        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        pool[(seed >> 33) as usize % pool.len()]
                    })
                    .collect();
                cases.push(text);
            }
        }
        for text in cases {
            let mut line = Vec::new();
            push_json_text(&mut line, &text);
            assert_eq!(
                String::from_utf8(line).unwrap(),
                serde_json::to_string(&text).unwrap(),
                "{text:?}"
            );
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
