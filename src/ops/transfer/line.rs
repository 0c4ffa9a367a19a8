//! The lines of an export byte for byte: an event line written as `serde_json` would write it
//! and read back without a JSON parser's generality, and every line's check (see [`super`]).

use std::borrow::Cow;

use super::{EventIn, Fields};

/// What every line ends with: `,"check":"<16 hex digits>"}`.
const CHECK_FIELD: &str = ",\"check\":\"";
const CHECK_SUFFIX_LEN: usize = CHECK_FIELD.len() + 16 + 2;

/// The start of every event line of one stream of one partition, up to its id:
/// `{"stream":"<stream>","partition":<p>,"id":`.
pub(super) fn event_prefix(stream: &str, partition: u32) -> Vec<u8> {
    let mut prefix = b"{\"stream\":".to_vec();
    push_json_text(&mut prefix, stream);
    prefix.extend_from_slice(format!(",\"partition\":{partition},\"id\":").as_bytes());
    prefix
}

/// Appends one event line to `line` (without its check): `prefix` (see [`event_prefix`]), the
/// id, and the fields as a JSON object in their order on the stream, byte for byte as
/// `serde_json` writes them.
pub(super) fn push_event(line: &mut Vec<u8>, prefix: &[u8], id: &str, fields: &[(String, String)]) {
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
fn push_json_text(line: &mut Vec<u8>, text: &str) {
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

impl<'a> EventIn<'a> {
    /// Reads an event line, its check included (and skipped): as `export` spells it, without a
    /// JSON parser's generality; any other spelling (spaces, another order, `\u` escapes), or a
    /// line that is not an event, with `serde_json`.
    pub(super) fn parse(line: &'a str) -> serde_json::Result<EventIn<'a>> {
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
pub(super) fn with_check(number: u64, object: &str) -> String {
    let mut line = object.as_bytes().to_vec();
    add_check(number, &mut line);
    String::from_utf8(line).expect("JSON is UTF-8")
}

/// Turns `line`, a serialized JSON object, into line `number`: its check added before the
/// closing brace, and the newline.
pub(super) fn add_check(number: u64, line: &mut Vec<u8>) {
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
pub(super) fn checks_out(number: u64, line: &str) -> bool {
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
}
