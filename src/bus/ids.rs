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

/// Orders stream ids (`<ms>-<seq>`) numerically.
pub fn compare_ids(a: &str, b: &str) -> std::cmp::Ordering {
    fn parts(id: &str) -> (u64, u64) {
        let (ms, seq) = id.split_once('-').unwrap_or((id, "0"));
        (ms.parse().unwrap_or(0), seq.parse().unwrap_or(0))
    }
    parts(a).cmp(&parts(b))
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
}
