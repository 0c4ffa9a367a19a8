//! The namespace's partition count: fixed by its first `serve` (`--partitions`, default 1),
//! stored in Redis, and read from there by every other command.

use std::sync::LazyLock;

use redis::{AsyncCommands, Script};

use crate::connection::Connection;
use crate::error::{ExitCode, Failure};
use crate::keyspace::{Keys, Partition, Partitions, Service};

/// Sets the count if none is stored yet, and returns the stored one (see the script).
static FIX: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("fix.lua")));

/// `--partitions`: a whole number from 1 to [`Partitions::MAX`].
pub fn parse(text: &str) -> Result<Partitions, String> {
    text.parse::<u32>()
        .ok()
        .and_then(Partitions::new)
        .ok_or_else(|| format!("use a whole number from 1 to {}", Partitions::MAX))
}

/// The count stored for the namespace, if any; exit code 4 when what is stored was not
/// written by blogctl.
pub async fn stored(
    connection: &mut Connection,
    keys: &Keys,
) -> color_eyre::Result<Option<Partitions>> {
    let text: Option<String> = connection.get(keys.partitions()).await?;
    text.map(|text| read(keys, &text)).transpose()
}

/// The namespace's partition count for a command that does not fix it: the stored one, or
/// (nothing served yet) `asked`, else 1; exit code 2 when `asked` differs from the stored one.
pub async fn resolve(
    connection: &mut Connection,
    keys: &Keys,
    asked: Option<Partitions>,
) -> color_eyre::Result<Partitions> {
    match stored(connection, keys).await? {
        Some(stored) => agree(keys, stored, asked),
        None => Ok(asked.unwrap_or(Partitions::ONE)),
    }
}

/// Fixes the namespace's partition count to `asked` (or 1) if none is stored, and returns the
/// stored one; exit code 2 when `asked` differs from it, or when the namespace was served
/// before counts were stored (it has 1) and `asked` is not 1: the events streams of `services`
/// tell (each service's Redis user may read those).
pub async fn fix(
    connection: &mut Connection,
    keys: &Keys,
    asked: Option<Partitions>,
    services: &[Service],
) -> color_eyre::Result<Partitions> {
    let mut invocation = FIX.key(keys.partitions());
    let mut streams: Vec<Service> = services
        .iter()
        .flat_map(|&service| {
            let own = Service::PRODUCERS.contains(&service).then_some(service);
            own.into_iter()
                .chain(crate::services::follows(service).iter().copied())
        })
        .collect();
    streams.sort();
    streams.dedup();
    for producer in streams {
        invocation.key(keys.events(producer, Partition::FIRST));
    }
    let wanted = asked.unwrap_or(Partitions::ONE);
    let reply: String = invocation
        .arg(wanted.count())
        .invoke_async(connection)
        .await?;
    if let Some(stream) = reply.strip_prefix("used:") {
        return Err(Failure::invalid(format!(
            "namespace {:?} was served before partition counts were stored ({stream} has \
             events), so it has 1 partition: serve it with --partitions 1",
            keys.namespace()
        ))
        .into());
    }
    agree(keys, read(keys, &reply)?, asked)
}

fn agree(
    keys: &Keys,
    stored: Partitions,
    asked: Option<Partitions>,
) -> color_eyre::Result<Partitions> {
    match asked {
        Some(asked) if asked != stored => Err(Failure::invalid(format!(
            "namespace {:?} has {stored} partition{}, fixed when it was first served; \
             --partitions {asked} asks for another: a namespace's partition count never \
             changes: copy the blog into a new namespace with `blogctl export` and \
             `blogctl --namespace <new> --partitions {asked} import` (see the README, \
             \"Moving a blog to a Redis Cluster\")",
            keys.namespace(),
            if stored.count() == 1 { "" } else { "s" },
        ))
        .into()),
        _ => Ok(stored),
    }
}

fn read(keys: &Keys, text: &str) -> color_eyre::Result<Partitions> {
    text.parse::<u32>()
        .ok()
        .and_then(Partitions::new)
        .ok_or_else(|| {
            Failure::new(
                ExitCode::RedisUnreachable,
                format!(
                    "{} holds {:?}, not a partition count from 1 to {}: it was not written by \
                     blogctl",
                    keys.partitions(),
                    crate::output::without_controls(&text.chars().take(40).collect::<String>()),
                    Partitions::MAX
                ),
            )
            .into()
        })
}
