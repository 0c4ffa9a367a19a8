//! Consumer groups: creating them, acknowledging, and asking how far one has got.

use redis::streams::{StreamInfoGroupsReply, StreamPendingCountReply, StreamRangeReply};
use redis::{AsyncCommands, RedisResult};

use super::entry::Delivery;
use super::handler::Outcome;
use super::ids::{START_OF_STREAM, compare_ids};
use crate::connection::Connection;

/// Creates `group` on `stream` at the start of the stream (and the stream if need be).
pub async fn ensure_group(
    connection: &mut Connection,
    stream: &str,
    group: &str,
) -> RedisResult<()> {
    let created: RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg(START_OF_STREAM)
        .arg("MKSTREAM")
        .query_async(connection)
        .await;
    match created {
        Err(error) if error.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// The `run_id` of the Redis server holding `stream`: it changes each time the server starts.
pub(super) async fn run_id(connection: &mut Connection, stream: &str) -> RedisResult<String> {
    let info = connection.info(stream, &["server"]).await?;
    Ok(info
        .lines()
        .find_map(|line| line.strip_prefix("run_id:"))
        .unwrap_or_default()
        .trim()
        .to_owned())
}

/// Acknowledges an entry that needs no change (an event the service does not use).
pub async fn acknowledge(
    connection: &mut Connection,
    group: &str,
    delivery: &Delivery,
) -> RedisResult<Outcome> {
    let _: u64 = connection
        .xack(&delivery.stream, group, &[&delivery.id])
        .await?;
    Ok(Outcome::Done)
}

/// Whether `group` has applied every entry of `stream` up to and including `position`, an id
/// of that same stream (ids of different streams are not comparable: each stream's run ahead of
/// the clock after the clock stepped back or an explicit-id `XADD`).
pub async fn applied_up_to(
    connection: &mut Connection,
    stream: &str,
    group: &str,
    position: &str,
) -> RedisResult<bool> {
    let last: StreamRangeReply = connection.xrevrange_count(stream, position, "-", 1).await?;
    let Some(last) = last.ids.first() else {
        return Ok(true);
    };
    let groups: StreamInfoGroupsReply = connection.xinfo_groups(stream).await?;
    let Some(info) = groups.groups.iter().find(|info| info.name == group) else {
        return Ok(false);
    };
    if compare_ids(&info.last_delivered_id, &last.id).is_lt() {
        return Ok(false);
    }
    let pending: StreamPendingCountReply = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .arg("-")
        .arg(&last.id)
        .arg(1)
        .query_async(connection)
        .await?;
    Ok(pending.ids.is_empty())
}
