//! The report for a person: each stream's line and the table of its groups, then the dead
//! letters and the partitions that could not be read.

use super::{DeadLetters, GroupStatus, Status, StreamStatus};
use crate::output::{Table, count_of, human_bytes, human_duration, print_line};

pub(super) fn print_human(status: &Status) -> std::io::Result<()> {
    for (index, stream) in status.streams.iter().enumerate() {
        if index > 0 {
            print_line("")?;
        }
        print_stream(stream)?;
    }
    print_line("")?;
    print_dead_letters(&status.dead_letters)?;
    for dead in status.dead_letters_by_partition.iter().flatten() {
        print_dead_letters(dead)?;
    }
    for unserved in &status.unserved {
        print_line(&format!(
            "partition {} (Redis Cluster slot {}): NOT SERVED, not read: {}",
            unserved.partition, unserved.slot, unserved.error
        ))?;
    }
    Ok(())
}

/// Prints one stream's line, then the table of its groups.
fn print_stream(stream: &StreamStatus) -> std::io::Result<()> {
    if stream.exists {
        print_line(&format!(
            "{}  {}  {}  last id {}",
            stream.stream,
            count_of(stream.length, "entry", "entries"),
            stream.memory_bytes.map_or("-".to_owned(), human_bytes),
            stream.last_id.as_deref().unwrap_or("-"),
        ))?;
    } else {
        print_line(&format!("{}  (no such stream yet)", stream.stream))?;
    }
    let mut table = Table::new(&[
        "GROUP",
        "LAG",
        "PENDING",
        "OLDEST PENDING",
        "LAST DELIVERED",
        "DEAD",
        "CONSUMERS",
    ]);
    for group in &stream.groups {
        table.row(group_row(group));
    }
    table.print("  ")
}

/// The cells of one group's row in the table of its stream.
pub(super) fn group_row(group: &GroupStatus) -> Vec<String> {
    if group.missing && group.lag.is_none() {
        return vec![
            group.group.clone(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "MISSING (its service never ran here)".into(),
        ];
    }
    let mut name = group.group.clone();
    if !group.expected {
        name.push_str(" (not a service)");
    }
    if !group.missing_in.is_empty() {
        let partitions: Vec<String> = group.missing_in.iter().map(u32::to_string).collect();
        name.push_str(&format!(
            " (MISSING in partitions {})",
            partitions.join(", ")
        ));
    }
    let lag = match (group.lag, group.lag_exact) {
        (Some(lag), true) => lag.to_string(),
        (Some(lag), false) => format!(">={lag}"),
        (None, _) => "?".to_owned(),
    };
    vec![
        name,
        lag,
        group.pending.to_string(),
        group
            .oldest_pending_age_ms
            .map_or("-".to_owned(), human_duration),
        group
            .last_delivered_id
            .clone()
            .unwrap_or_else(|| "-".into()),
        group
            .dead_letters
            .map_or("?".to_owned(), |count| count.to_string()),
        consumers_cell(group),
    ]
}

/// The group's consumers, each with its idle time and pending count, or `none`.
fn consumers_cell(group: &GroupStatus) -> String {
    let consumers: Vec<String> = group
        .consumers
        .iter()
        .map(|consumer| {
            format!(
                "{} (idle {}, {} pending{})",
                consumer.name,
                human_duration(consumer.idle_ms),
                consumer.pending,
                if consumer.alive { "" } else { ", gone" }
            )
        })
        .collect();
    if consumers.is_empty() {
        "none".to_owned()
    } else {
        consumers.join(", ")
    }
}

/// Prints the dead letters stream's line: its count, and per service when counted.
fn print_dead_letters(dead: &DeadLetters) -> std::io::Result<()> {
    let by_service = dead.by_service.as_ref().map_or(String::new(), |counts| {
        let counts: Vec<String> = counts
            .iter()
            .map(|(service, count)| format!("{service} {count}"))
            .collect();
        if counts.is_empty() {
            String::new()
        } else {
            format!("  ({})", counts.join(", "))
        }
    });
    print_line(&format!(
        "{}  {}{by_service}",
        dead.stream,
        count_of(dead.count, "dead letter", "dead letters")
    ))
}
