//! The report as printed: with one partition or `--by-partition`, every stream of every
//! partition; else each kind of stream summed over the partitions (lengths, lags and counts
//! added up, the oldest pending entry and the latest ids kept).

use std::collections::BTreeMap;

use super::{
    ConsumerStatus, DeadLetters, Gathered, GroupStatus, PartitionStatus, Status, StreamKind,
    StreamStatus,
};
use crate::bus::compare_ids;
use crate::keyspace::Keys;

/// The report as printed: with one partition or `by_partition`, every stream of every
/// partition; else each kind of stream summed over the partitions.
pub(super) fn present(keys: &Keys, gathered: Gathered, by_partition: bool) -> Status {
    let Gathered {
        partitions,
        served,
        unserved,
        eviction,
        earlier_log,
    } = gathered;
    let dead: Vec<DeadLetters> = served
        .iter()
        .map(|partition| partition.dead_letters.clone())
        .collect();
    let dead_letters = if partitions.count() == 1 && dead.len() == 1 {
        dead[0].clone()
    } else {
        sum_dead_letters(keys, &dead)
    };
    let streams = if partitions.count() == 1 || by_partition {
        served
            .into_iter()
            .flat_map(|partition| partition.streams)
            .collect()
    } else {
        StreamKind::all(keys)
            .into_iter()
            .filter_map(|kind| sum_streams(keys, kind, &served))
            .collect()
    };
    Status {
        partitions: partitions.count(),
        streams,
        dead_letters,
        dead_letters_by_partition: by_partition.then_some(dead),
        unserved,
        eviction,
        earlier_log,
        problems: Vec::new(),
    }
}

/// The dead letters of every partition read, as one.
fn sum_dead_letters(keys: &Keys, dead: &[DeadLetters]) -> DeadLetters {
    let mut by_service = Some(BTreeMap::new());
    for counts in dead.iter().map(|dead| dead.by_service.as_ref()) {
        by_service = match (by_service, counts) {
            (Some(mut sum), Some(counts)) => {
                for (service, count) in counts {
                    *sum.entry(service.clone()).or_insert(0) += count;
                }
                Some(sum)
            }
            _ => None,
        };
    }
    DeadLetters {
        stream: keys.dead_pattern(),
        partition: None,
        count: dead.iter().map(|dead| dead.count).sum(),
        memory_bytes: dead
            .iter()
            .filter_map(|dead| dead.memory_bytes)
            .reduce(|a, b| a + b),
        by_service,
    }
}

/// One kind of stream summed over the partitions read: lengths, lags, pending entries and dead
/// letters added up, the oldest pending entry and the latest ids kept. `None` when no partition
/// shows it (a `--service` that does not read it).
fn sum_streams(keys: &Keys, kind: StreamKind, served: &[PartitionStatus]) -> Option<StreamStatus> {
    let parts: Vec<(u32, &StreamStatus)> = served
        .iter()
        .flat_map(|partition| {
            let key = kind.key(keys, partition.partition);
            partition
                .streams
                .iter()
                .filter(move |stream| stream.stream == key)
                .map(|stream| (partition.partition.0, stream))
        })
        .collect();
    let (_, first) = parts.first()?;
    let mut sum = StreamStatus {
        stream: kind.pattern(keys),
        partition: None,
        exists: parts.iter().any(|(_, stream)| stream.exists),
        length: parts.iter().map(|(_, stream)| stream.length).sum(),
        memory_bytes: parts
            .iter()
            .filter_map(|(_, stream)| stream.memory_bytes)
            .reduce(|a, b| a + b),
        last_id: latest(parts.iter().map(|(_, stream)| stream.last_id.as_deref())),
        groups: Vec::new(),
    };
    for name in first.groups.iter().map(|group| &group.group) {
        let groups: Vec<(u32, &GroupStatus)> = parts
            .iter()
            .filter_map(|(partition, stream)| {
                let group = stream.groups.iter().find(|group| group.group == *name)?;
                Some((*partition, group))
            })
            .collect();
        sum.groups.push(sum_group(&groups));
    }
    Some(sum)
}

/// The greatest of some stream ids.
fn latest<'a>(ids: impl Iterator<Item = Option<&'a str>>) -> Option<String> {
    ids.flatten()
        .max_by(|a, b| compare_ids(a, b))
        .map(str::to_owned)
}

/// One group summed over the partitions it is read in.
fn sum_group(groups: &[(u32, &GroupStatus)]) -> GroupStatus {
    let (_, first) = groups[0];
    let present: Vec<&GroupStatus> = groups
        .iter()
        .map(|(_, group)| *group)
        .filter(|group| !group.missing)
        .collect();
    let oldest = groups
        .iter()
        .filter(|(_, group)| group.oldest_pending_age_ms.is_some())
        .max_by_key(|(_, group)| group.oldest_pending_age_ms);
    let lags: Option<Vec<u64>> = present.iter().map(|group| group.lag).collect();
    GroupStatus {
        group: first.group.clone(),
        expected: groups.iter().any(|(_, group)| group.expected),
        missing: present.len() < groups.len(),
        lag: lags
            .filter(|_| !present.is_empty())
            .map(|lags| lags.iter().sum()),
        lag_exact: present.iter().all(|group| group.lag_exact),
        pending: present.iter().map(|group| group.pending).sum(),
        oldest_pending_id: oldest.and_then(|(_, group)| group.oldest_pending_id.clone()),
        oldest_pending_partition: oldest.map(|(partition, _)| *partition),
        missing_in: groups
            .iter()
            .filter(|(_, group)| group.missing)
            .map(|(partition, _)| *partition)
            .collect(),
        oldest_pending_age_ms: oldest.and_then(|(_, group)| group.oldest_pending_age_ms),
        last_delivered_id: latest(
            present
                .iter()
                .map(|group| group.last_delivered_id.as_deref()),
        ),
        dead_letters: groups
            .iter()
            .map(|(_, group)| group.dead_letters)
            .sum::<Option<u64>>(),
        consumers: sum_consumers(&present),
    }
}

/// The consumers of a group in every partition, by name: each partition has its own, named
/// after their `serve` process. Pending entries add up; the shortest idle time is kept; alive
/// only when alive in every partition it consumes.
fn sum_consumers(groups: &[&GroupStatus]) -> Vec<ConsumerStatus> {
    let mut consumers: Vec<ConsumerStatus> = Vec::new();
    for consumer in groups.iter().flat_map(|group| &group.consumers) {
        match consumers.iter_mut().find(|seen| seen.name == consumer.name) {
            Some(seen) => {
                seen.idle_ms = seen.idle_ms.min(consumer.idle_ms);
                seen.pending += consumer.pending;
                seen.alive &= consumer.alive;
            }
            None => consumers.push(consumer.clone()),
        }
    }
    consumers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::status::print::group_row;
    use crate::ops::status::tests::{dead, group};

    #[test]
    fn groups_are_summed_over_the_partitions() {
        let old = GroupStatus {
            lag: Some(2),
            pending: 1,
            oldest_pending_id: Some("1-0".into()),
            oldest_pending_age_ms: Some(5000),
            last_delivered_id: Some("9-0".into()),
            dead_letters: Some(1),
            ..group("query")
        };
        let summed = sum_group(&[
            (0, &group("query")),
            (3, &old),
            (5, &GroupStatus::missing("query")),
        ]);
        assert_eq!(summed.lag, Some(2));
        assert_eq!(summed.pending, 1);
        assert_eq!(summed.oldest_pending_partition, Some(3));
        assert_eq!(summed.oldest_pending_id.as_deref(), Some("1-0"));
        assert_eq!(summed.last_delivered_id.as_deref(), Some("9-0"));
        assert!(summed.missing);
        assert_eq!(summed.missing_in, [5]);
        assert_eq!(summed.dead_letters, None, "not counted in partition 5");
        assert_eq!(summed.consumers.len(), 1);
        assert!(group_row(&summed)[0].contains("MISSING in partitions 5"));
        let keys = Keys::new("blog").unwrap();
        let sum = sum_dead_letters(&keys, &[dead(2), dead(3)]);
        assert_eq!((sum.count, sum.stream.as_str()), (5, "blog:dead:*"));
    }
}
