//! Stream entries as services get them, and the event envelope they carry.

use redis::Value;
use redis::streams::StreamId;

use crate::error::Malformed;
use crate::events::{ENVELOPE_VERSION, Event};

/// The most of one field's value a dead letter keeps.
pub const DEAD_LETTER_FIELD_BYTES: usize = 4096;

/// Entry field restricting it to one service's group; other groups acknowledge and skip it.
pub const FOR_SERVICE: &str = "for_service";

/// A stream entry as XRANGE, XREAD and XREADGROUP return it: its id and its fields in order.
/// Read straight from the reply, without a map per entry (this is the hot path of every service).
pub type RawEntry = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// The entries of an `XRANGE` reply, taken from it as they are: not through
/// `FromRedisValue`'s conversions, which cost `rebuild` as much as the rest of a chunk's work
/// and `export` a third of its reading.
pub fn entries_of(reply: Value) -> redis::RedisResult<Vec<RawEntry>> {
    let unexpected = || {
        redis::RedisError::from((
            redis::ErrorKind::UnexpectedReturnType,
            "XRANGE did not reply with stream entries",
        ))
    };
    let bytes = |value: Value| match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(text) => Ok(text.into_bytes()),
        _ => Err(unexpected()),
    };
    let Value::Array(entries) = reply else {
        return Err(unexpected());
    };
    entries
        .into_iter()
        .map(|entry| {
            let Value::Array(parts) = entry else {
                return Err(unexpected());
            };
            let Ok([id, fields]) = <[Value; 2]>::try_from(parts) else {
                return Err(unexpected());
            };
            let id = String::from_utf8(bytes(id)?).map_err(|_| unexpected())?;
            let fields = match fields {
                Value::Array(flat) => {
                    let mut fields = Vec::with_capacity(flat.len() / 2);
                    let mut flat = flat.into_iter();
                    while let (Some(name), Some(value)) = (flat.next(), flat.next()) {
                        fields.push((bytes(name)?, bytes(value)?));
                    }
                    fields
                }
                Value::Map(pairs) => pairs
                    .into_iter()
                    .map(|(name, value)| Ok((bytes(name)?, bytes(value)?)))
                    .collect::<redis::RedisResult<_>>()?,
                _ => return Err(unexpected()),
            };
            Ok((id, fields))
        })
        .collect()
}

/// One entry handed to a service.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub stream: String,
    pub id: String,
    /// The entry's fields in stream order.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
    /// How many times Redis has delivered it, this time included.
    pub deliveries: u64,
}

impl Delivery {
    pub fn new(stream: &str, (id, fields): RawEntry, deliveries: u64) -> Delivery {
        Delivery {
            stream: stream.to_owned(),
            id,
            fields,
            deliveries,
        }
    }

    /// From an entry in redis-rs's map form (XAUTOCLAIM replies).
    pub(super) fn from_stream_id(stream: &str, entry: StreamId, deliveries: u64) -> Delivery {
        let fields = entry
            .map
            .into_iter()
            .map(|(name, value)| {
                let value = match value {
                    Value::BulkString(bytes) => bytes,
                    Value::SimpleString(text) => text.into_bytes(),
                    other => format!("{other:?}").into_bytes(),
                };
                (name.into_bytes(), value)
            })
            .collect();
        Delivery::new(stream, (entry.id, fields), deliveries)
    }

    /// A text field; the error is the reason to dead-letter the entry.
    pub fn field(&self, name: &str) -> Result<&str, Malformed> {
        match self
            .fields
            .iter()
            .find(|(field, _)| field == name.as_bytes())
        {
            Some((_, bytes)) => std::str::from_utf8(bytes)
                .map_err(|_| Malformed(format!("field {name:?} is not UTF-8"))),
            None => Err(Malformed(format!("field {name:?} is missing"))),
        }
    }

    /// A text field the entry may lack; the error is the reason to dead-letter the entry.
    pub fn optional_field(&self, name: &str) -> Result<Option<&str>, Malformed> {
        match self
            .fields
            .iter()
            .find(|(field, _)| field == name.as_bytes())
        {
            Some(_) => self.field(name).map(Some),
            None => Ok(None),
        }
    }

    /// The envelope's event. `Ok(None)`: a type this build does not know, to be skipped.
    pub fn event(&self) -> Result<Option<Envelope>, Malformed> {
        let version = self.field("version")?;
        if version != ENVELOPE_VERSION {
            return Err(Malformed(format!(
                "envelope version {version:?} is not supported"
            )));
        }
        let kind = self.field("type")?;
        let data = self.field("data")?;
        let request_id = self.field("request_id")?.to_owned();
        Ok(Event::parse(kind, data)?.map(|event| Envelope { event, request_id }))
    }

    /// Whether `group` should handle it: entries put back from the dead letters (`blogctl dead
    /// retry`) carry a [`FOR_SERVICE`] field naming the one service that failed them.
    pub fn is_for(&self, group: &str) -> bool {
        self.field(FOR_SERVICE)
            .map_or(true, |service| service == group)
    }

    /// All fields as a JSON object, bytes that are not UTF-8 replaced, for dead letters.
    /// Each value is cut to [`DEAD_LETTER_FIELD_BYTES`] (marked, with its full length), so a huge
    /// malformed entry makes a small dead letter.
    pub fn fields_json(&self) -> String {
        let fields: serde_json::Map<String, serde_json::Value> = self
            .fields
            .iter()
            .map(|(name, value)| {
                let text = if value.len() > DEAD_LETTER_FIELD_BYTES {
                    let kept = String::from_utf8_lossy(&value[..DEAD_LETTER_FIELD_BYTES]);
                    format!("{kept}... ({} bytes in all)", value.len())
                } else {
                    String::from_utf8_lossy(value).into_owned()
                };
                (
                    String::from_utf8_lossy(name).into_owned(),
                    serde_json::Value::String(text),
                )
            })
            .collect();
        serde_json::Value::Object(fields).to_string()
    }
}

/// An event with the id of the request that caused it.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub event: Event,
    pub request_id: String,
}
