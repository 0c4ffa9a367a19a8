//! `status --check`: what is unhealthy, one line per problem, each naming its partition when
//! there are several.

use std::time::Duration;

use super::{Gathered, GroupStatus, PartitionStatus};
use crate::bus::DEAD_LETTERS_KEPT;
use crate::output::{count_of, human_duration};

/// What `--check` complains about, one line each; with several partitions, each line about
/// one partition starts with `partition <p>: `.
pub fn problems(gathered: &Gathered, max_lag: u64, max_pending_age: Duration) -> Vec<String> {
    let mut problems: Vec<String> = gathered.eviction.iter().cloned().collect();
    problems.extend(gathered.earlier_log.iter().cloned());
    let several = gathered.partitions.count() > 1;
    for unserved in &gathered.unserved {
        problems.push(format!(
            "partition {}: Redis Cluster slot {} is not served (no master serves it, or the one \
             that does cannot be reached), so nothing of the partition can be read or written: \
             {}",
            unserved.partition, unserved.slot, unserved.error
        ));
    }
    for partition in &gathered.served {
        let prefix = if several {
            format!("partition {}: ", partition.partition)
        } else {
            String::new()
        };
        problems.extend(
            partition_problems(partition, max_lag, max_pending_age)
                .into_iter()
                .map(|problem| format!("{prefix}{problem}")),
        );
    }
    problems
}

/// The problems of one partition: its dead letters nearly full, its groups.
fn partition_problems(
    partition: &PartitionStatus,
    max_lag: u64,
    max_pending_age: Duration,
) -> Vec<String> {
    let mut problems = Vec::new();
    let dead = &partition.dead_letters;
    if dead.count >= DEAD_LETTERS_KEPT / 10 * 8 {
        problems.push(format!(
            "{} holds {} of the about {DEAD_LETTERS_KEPT} it keeps: the oldest will be dropped; \
             look at them (`blogctl dead list`), then retry or drop them",
            dead.stream,
            count_of(dead.count, "dead letter", "dead letters")
        ));
    }
    for stream in &partition.streams {
        for group in &stream.groups {
            group_problems(
                &stream.stream,
                group,
                max_lag,
                max_pending_age,
                &mut problems,
            );
        }
    }
    problems
}

/// The problems of one group: missing, no consumer alive while entries wait, lagging, stuck.
fn group_problems(
    stream: &str,
    group: &GroupStatus,
    max_lag: u64,
    max_pending_age: Duration,
    problems: &mut Vec<String>,
) {
    let name = format!("group {} on {stream}", group.group);
    if group.missing {
        problems.push(format!(
            "{name} is missing: start the service once (`blogctl serve {}`)",
            group.group
        ));
        return;
    }
    let waiting = group.lag.unwrap_or(0) + group.pending;
    if waiting > 0 && !group.consumers.iter().any(|consumer| consumer.alive) {
        problems.push(format!(
            "no consumer of {name} is alive, and {} wait: start the service \
             (`blogctl serve {}`)",
            count_of(waiting, "entry", "entries"),
            group.group
        ));
    }
    if let Some(lag) = group.lag.filter(|lag| *lag > max_lag) {
        let at_least = if group.lag_exact { "" } else { "at least " };
        problems.push(format!(
            "{name} lags {at_least}{} (more than --max-lag {max_lag})",
            count_of(lag, "entry", "entries")
        ));
    }
    if let Some(age) = group
        .oldest_pending_age_ms
        .filter(|age| *age as u128 > max_pending_age.as_millis())
    {
        problems.push(format!(
            "{name} has had entry {} pending for {} (longer than --max-pending-age {}s)",
            group.oldest_pending_id.as_deref().unwrap_or("?"),
            human_duration(age),
            max_pending_age.as_secs_f64()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keyspace::Partition;
    use crate::ops::status::tests::{dead, gathered, group, stream};

    #[test]
    fn check_reports_missing_lagging_and_stuck_groups() {
        let partition = |dead_count| PartitionStatus {
            partition: Partition::FIRST,
            streams: vec![stream(vec![
                GroupStatus::missing("query"),
                GroupStatus {
                    lag: Some(11),
                    ..group("comments")
                },
                GroupStatus {
                    oldest_pending_id: Some("1-0".into()),
                    oldest_pending_age_ms: Some(61_000),
                    ..group("moderation")
                },
                group("fine"),
                GroupStatus {
                    lag: Some(1),
                    consumers: Vec::new(),
                    ..group("posts")
                },
            ])],
            dead_letters: dead(dead_count),
        };
        let status = gathered(1, vec![partition(0)]);
        let problems = problems(&status, 10, Duration::from_secs(60));
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].contains("query") && problems[0].contains("missing"));
        assert!(problems[1].contains("lags 11 entries"));
        assert!(problems[2].contains("pending for 1m01s"));
        assert!(problems[3].contains("no consumer of group posts on s is alive, and 1 entry wait"));
        assert!(super::problems(&status, 100, Duration::from_secs(120)).len() == 2);
        let nearly_full = gathered(1, vec![partition(90_000)]);
        let problems = super::problems(&nearly_full, 100, Duration::from_secs(120));
        assert!(
            problems
                .iter()
                .any(|p| p.contains("holds 90000 dead letters")),
            "{problems:?}"
        );
        let mut third = partition(0);
        third.partition = Partition(3);
        let two = gathered(8, vec![partition(0), third]);
        let problems = super::problems(&two, 100, Duration::from_secs(120));
        assert_eq!(problems.len(), 4, "{problems:?}");
        assert!(problems[0].starts_with("partition 0: group query on s is missing"));
        assert!(problems[3].starts_with("partition 3: no consumer of group posts"));
    }
}
