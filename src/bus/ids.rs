//! Stream ids and the special ids of stream commands.

/// XREADGROUP: entries never delivered to any consumer of the group.
pub const NEW_ENTRIES: &str = ">";
/// XREADGROUP: this consumer's own pending entries, from the first.
pub const OWN_PENDING: &str = "0";
/// XGROUP CREATE: the group starts at the beginning of the stream, so it sees all history.
pub const START_OF_STREAM: &str = "0";
/// XADD: let Redis choose the id.
pub const AUTO_ID: &str = "*";
/// XAUTOCLAIM: start scanning at the first pending entry.
pub const FIRST_PENDING: &str = "0-0";

/// A stream id `<ms>-<seq>`, as numbers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
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

/// Orders stream ids (`<ms>-<seq>`, or `<ms>`) numerically; anything else sorts as `0-0`.
pub fn compare_ids(a: &str, b: &str) -> std::cmp::Ordering {
    let id = |text| StreamId::parse(text, true).unwrap_or_default();
    id(a).cmp(&id(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_compare_as_numbers() {
        assert!(compare_ids("9-0", "10-0").is_lt());
        assert!(compare_ids("10-2", "10-10").is_lt());
        assert!(compare_ids("10-2", "10-2").is_eq());
    }

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
}
