//! `blogctl status`: is anything stuck or behind? Per consumer group on the events streams and on
//! the inboxes: consumers, lag, pending entries and the age of the oldest, the last entry
//! delivered against the stream's last id, dead letters; each stream's length and memory.
//!
//! Every partition is read; the report sums each kind of stream over them (`--by-partition`:
//! each partition's own), while `--check` judges each partition's groups, so a problem names its
//! partition. `--check` turns it into a health check: exit code 6 when a group a service needs is
//! missing, lags too far or has an entry pending too long, or when a Redis Cluster does not serve
//! a partition's slot (the others are still read).
//!
//! - `gather`: reading the streams, groups, consumers and dead letters from Redis, partition by
//!   partition ([`Gathered`]).
//! - `check`: what `--check` calls unhealthy ([`problems`]).
//! - `present`: the report as printed, each kind of stream summed over the partitions.
//! - `print`: the human-readable report (`--json` prints [`Status`] as it is).
//!
//! The types of the report and [`run`] are here.

mod check;
mod gather;
mod present;
mod print;

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use color_eyre::Result;
use serde::Serialize;

pub use check::problems;
use gather::gather;
pub use gather::inspect_stream;
use present::present;
use print::print_human;

use crate::bus::StreamId;
use crate::cli::values::{self, ServiceChoice, parse_seconds};
use crate::context::Context;
use crate::error::{ExitCode, Failure};
use crate::keyspace::{Keys, Partition, Partitions, Service};
use crate::output::{count_of, print_line};
use crate::services;

/// Arguments of `blogctl status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Exit with code 6, one line per problem on stderr, when a group a service needs is
    /// missing, lags more than --max-lag or has an entry pending longer than --max-pending-age.
    #[arg(long)]
    pub check: bool,
    /// Most entries a group may have left to read before --check calls it unhealthy.
    #[arg(long, default_value_t = 1000)]
    pub max_lag: u64,
    /// Seconds an entry may stay pending (delivered, not acknowledged) before --check calls
    /// the group unhealthy.
    #[arg(long, default_value = "60", value_parser = parse_seconds)]
    pub max_pending_age: Duration,
    /// Only the groups of this service (repeatable; `all` for every one): a per-service health
    /// check, as in docker-compose.yml.
    #[arg(long, value_enum)]
    pub service: Vec<ServiceChoice>,
    /// One row per stream of each partition, and the dead letters of each, instead of each kind
    /// of stream summed over the partitions (with one partition, the rows are the same).
    #[arg(long)]
    pub by_partition: bool,
}

/// The whole report, as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Status {
    /// The namespace's partition count.
    pub partitions: u32,
    /// One per stream of each partition with one partition or `--by-partition`; else one per
    /// kind of stream, summed over the partitions.
    pub streams: Vec<StreamStatus>,
    /// Every partition's dead letters, summed (with one partition, its own).
    pub dead_letters: DeadLetters,
    /// With `--by-partition`: the dead letters of each partition.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letters_by_partition: Option<Vec<DeadLetters>>,
    /// The partitions that could not be read (a Redis Cluster slot no master serves).
    pub unserved: Vec<Unserved>,
    /// What is wrong with Redis's `maxmemory-policy` (anything but `noeviction`), if anything.
    pub eviction: Option<String>,
    /// The one events stream of an earlier version, when one is left with entries nothing
    /// reads any more.
    pub earlier_log: Option<String>,
    /// What `--check` would complain about, with the thresholds given.
    pub problems: Vec<String>,
}

/// One stream read by consumer groups.
#[derive(Debug, Serialize)]
pub struct StreamStatus {
    /// Its key; a pattern (`{<ns>.*}`) for a row summing every partition.
    pub stream: String,
    /// Its partition; null for a row summing every partition.
    pub partition: Option<u32>,
    pub exists: bool,
    pub length: u64,
    pub memory_bytes: Option<u64>,
    /// The last id the stream generated (it stays even when that entry is deleted).
    pub last_id: Option<String>,
    pub groups: Vec<GroupStatus>,
}

/// One consumer group of a stream.
#[derive(Debug, Clone, Serialize)]
pub struct GroupStatus {
    pub group: String,
    /// Whether a service reads this stream with this group.
    pub expected: bool,
    /// The group does not exist: its service never ran against this Redis and namespace.
    pub missing: bool,
    /// Entries not delivered to the group yet.
    pub lag: Option<u64>,
    /// False when Redis could not tell the lag and more than the counting limit were left.
    pub lag_exact: bool,
    /// Entries delivered to a consumer and not acknowledged yet.
    pub pending: u64,
    pub oldest_pending_id: Option<String>,
    /// In a row summing every partition: the partition of the oldest pending entry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_pending_partition: Option<u32>,
    /// In a row summing every partition: those where the group is missing.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_in: Vec<u32>,
    /// Time since the oldest pending entry was (last) delivered.
    pub oldest_pending_age_ms: Option<u64>,
    pub last_delivered_id: Option<String>,
    /// Dead letters this group's service made from this stream (when cheap to count).
    pub dead_letters: Option<u64>,
    pub consumers: Vec<ConsumerStatus>,
}

/// One consumer of a group.
#[derive(Debug, Clone, Serialize)]
pub struct ConsumerStatus {
    pub name: String,
    pub idle_ms: u64,
    pub pending: u64,
    /// Whether its liveness key is there: a running consumer renews it every second.
    pub alive: bool,
}

/// The dead-letter stream.
#[derive(Debug, Clone, Serialize)]
pub struct DeadLetters {
    /// Its key; a pattern for the sum over every partition.
    pub stream: String,
    /// Its partition; null for the sum over every partition.
    pub partition: Option<u32>,
    pub count: u64,
    pub memory_bytes: Option<u64>,
    /// Dead letters per service, when there are few enough to count.
    pub by_service: Option<BTreeMap<String, u64>>,
}

impl GroupStatus {
    fn missing(group: &str) -> GroupStatus {
        GroupStatus {
            group: group.to_owned(),
            expected: true,
            missing: true,
            lag: None,
            lag_exact: true,
            pending: 0,
            oldest_pending_id: None,
            oldest_pending_partition: None,
            missing_in: Vec::new(),
            oldest_pending_age_ms: None,
            last_delivered_id: None,
            dead_letters: None,
            consumers: Vec::new(),
        }
    }

    /// The first id the group may still need: its oldest pending entry, or the one after the
    /// last delivered when nothing is pending. `None` for a missing group.
    pub fn first_needed(&self) -> Option<String> {
        if let Some(pending) = &self.oldest_pending_id {
            return Some(pending.clone());
        }
        let last = self.last_delivered_id.as_deref()?;
        StreamId::parse(last, true).map(|id| id.next().to_string())
    }
}

pub async fn run(context: &Context, args: &StatusArgs) -> Result<()> {
    let mut connection = context.connect().await?;
    // None chosen: all of them.
    let services: Vec<&str> = values::chosen(&args.service)
        .into_iter()
        .map(|service| service.name())
        .collect();
    let gathered = gather(&mut connection, context, &services).await?;
    let problems = problems(&gathered, args.max_lag, args.max_pending_age);
    let mut status = present(&context.keys, gathered, args.by_partition);
    status.problems = problems;
    if context.json {
        print_line(&serde_json::to_string(&status)?)?;
    } else {
        print_human(&status)?;
    }
    if !args.check {
        for problem in status.eviction.iter().chain(&status.earlier_log) {
            eprintln!("blogctl: warning: {problem}");
        }
    }
    if args.check && !status.problems.is_empty() {
        for problem in &status.problems {
            eprintln!("blogctl: unhealthy: {problem}");
        }
        return Err(Failure::new(
            ExitCode::Unhealthy,
            format!(
                "status --check found {}",
                count_of(status.problems.len() as u64, "problem", "problems")
            ),
        )
        .into());
    }
    Ok(())
}

/// What was read, partition by partition, before it is summed for printing.
pub struct Gathered {
    pub partitions: Partitions,
    pub served: Vec<PartitionStatus>,
    pub unserved: Vec<Unserved>,
    pub eviction: Option<String>,
    pub earlier_log: Option<String>,
}

/// The streams and dead letters of one partition.
pub struct PartitionStatus {
    pub partition: Partition,
    pub streams: Vec<StreamStatus>,
    pub dead_letters: DeadLetters,
}

/// A partition that could not be read: on a Redis Cluster, no master serves its slot (or the
/// one that does cannot be reached).
#[derive(Debug, Clone, Serialize)]
pub struct Unserved {
    pub partition: u32,
    pub slot: u16,
    pub error: String,
}

/// A stream the services read with groups, in any partition: an events stream or an inbox.
#[derive(Debug, Clone, Copy)]
enum StreamKind {
    Events(Service),
    Inbox(Service),
}

impl StreamKind {
    /// Every kind: the events streams (in [`Service::PRODUCERS`] order), then the inboxes.
    fn all(keys: &Keys) -> Vec<StreamKind> {
        let inboxes = Service::ALL.into_iter().filter(|&service| {
            services::streams(keys, service, Partition::FIRST)
                .1
                .is_some()
        });
        Service::PRODUCERS
            .into_iter()
            .map(StreamKind::Events)
            .chain(inboxes.map(StreamKind::Inbox))
            .collect()
    }

    fn key(self, keys: &Keys, partition: Partition) -> String {
        match self {
            StreamKind::Events(producer) => keys.events(producer, partition),
            StreamKind::Inbox(service) => keys.inbox(service, partition),
        }
    }

    /// The name of the stream in every partition, as a pattern.
    fn pattern(self, keys: &Keys) -> String {
        match self {
            StreamKind::Events(producer) => keys.events_pattern(producer),
            StreamKind::Inbox(service) => keys.inbox_pattern(service),
        }
    }
}

#[cfg(test)]
mod tests {
    //! The fixtures here (`group`, `dead`, `stream`, `gathered`) serve the tests of `check` and
    //! `present` too.

    use super::*;

    pub(super) fn group(name: &str) -> GroupStatus {
        GroupStatus {
            expected: true,
            missing: false,
            lag: Some(0),
            last_delivered_id: Some("5-1".into()),
            consumers: vec![ConsumerStatus {
                name: "c".into(),
                idle_ms: 0,
                pending: 0,
                alive: true,
            }],
            ..GroupStatus::missing(name)
        }
    }

    pub(super) fn dead(count: u64) -> DeadLetters {
        DeadLetters {
            stream: "d".into(),
            partition: Some(0),
            count,
            memory_bytes: None,
            by_service: None,
        }
    }

    pub(super) fn stream(groups: Vec<GroupStatus>) -> StreamStatus {
        StreamStatus {
            stream: "s".into(),
            partition: Some(0),
            exists: true,
            length: 9,
            memory_bytes: None,
            last_id: None,
            groups,
        }
    }

    pub(super) fn gathered(partitions: u32, served: Vec<PartitionStatus>) -> Gathered {
        Gathered {
            partitions: Partitions::new(partitions).unwrap(),
            served,
            unserved: Vec::new(),
            eviction: None,
            earlier_log: None,
        }
    }

    #[test]
    fn a_group_needs_its_oldest_pending_entry_or_the_one_after_its_last() {
        assert_eq!(group("query").first_needed().as_deref(), Some("5-2"));
        let pending = GroupStatus {
            oldest_pending_id: Some("3-0".into()),
            ..group("query")
        };
        assert_eq!(pending.first_needed().as_deref(), Some("3-0"));
        assert_eq!(GroupStatus::missing("query").first_needed(), None);
    }
}
