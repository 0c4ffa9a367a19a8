//! Taking over the entries of consumers that went silent, and handling entries delivered before.

use std::collections::HashMap;
use std::sync::LazyLock;

use redis::streams::{
    StreamAutoClaimReply, StreamClaimReply, StreamInfoConsumersReply, StreamPendingCountReply,
};
use redis::{AsyncCommands, RedisResult, Script};
use tracing::info;

use super::consumer::{ALIVE_FOR, BATCH, Consumer};
use super::entry::Delivery;
use super::handler::{Handler, Outcome};
use super::ids::FIRST_PENDING;

/// Removes a consumer that is gone and holds nothing from a group, atomically.
static FORGET_GONE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/forget_gone.lua")));

impl<H: Handler> Consumer<'_, H> {
    /// Takes over at once the entries of consumers that are gone, without waiting for
    /// `claim_idle`: no liveness key (a running consumer renews its own), and nothing read for
    /// as long as a liveness key lives. Gone consumers that hold nothing are removed from the
    /// group, so they do not pile up in `blogctl status`. A live consumer busy with a slow step
    /// keeps its liveness key, and its entries until `claim_idle`.
    pub(super) async fn take_over_from_the_gone(&mut self) -> RedisResult<()> {
        let min_idle = ALIVE_FOR.as_millis() as u64;
        for stream in self.config.streams.clone() {
            let info: StreamInfoConsumersReply = self
                .connection
                .xinfo_consumers(&stream, &self.config.group)
                .await?;
            let quiet: Vec<_> = info
                .consumers
                .into_iter()
                .filter(|other| other.name != self.config.consumer && other.idle as u64 >= min_idle)
                .collect();
            if quiet.is_empty() {
                continue;
            }
            let mut alive = redis::pipe();
            for other in &quiet {
                alive.exists(format!("{}{}", self.config.alive_prefix, other.name));
            }
            let alive: Vec<bool> = alive.query_async(&mut self.connection).await?;
            for (other, alive) in quiet.iter().zip(alive) {
                if alive {
                    continue;
                }
                if other.pending == 0 {
                    let _: i64 = FORGET_GONE
                        .key(&stream)
                        .key(format!("{}{}", self.config.alive_prefix, other.name))
                        .arg(&self.config.group)
                        .arg(&other.name)
                        .arg(min_idle)
                        .invoke_async(&mut self.connection)
                        .await?;
                    continue;
                }
                self.take_over_from(&stream, &other.name, min_idle).await?;
            }
        }
        Ok(())
    }

    /// Claims a batch of the entries `gone` holds on `stream` (those idle for `min_idle`), and
    /// handles them.
    async fn take_over_from(&mut self, stream: &str, gone: &str, min_idle: u64) -> RedisResult<()> {
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(stream)
            .arg(&self.config.group)
            .arg("IDLE")
            .arg(min_idle)
            .arg("-")
            .arg("+")
            .arg(BATCH)
            .arg(gone)
            .query_async(&mut self.connection)
            .await?;
        let ids: Vec<&str> = pending.ids.iter().map(|entry| entry.id.as_str()).collect();
        if ids.is_empty() {
            return Ok(());
        }
        let claimed: StreamClaimReply = self
            .connection
            .xclaim(
                stream,
                &self.config.group,
                &self.config.consumer,
                min_idle,
                &ids,
            )
            .await?;
        if claimed.ids.is_empty() {
            return Ok(());
        }
        info!(service = %self.config.group, count = claimed.ids.len(), %stream, %gone,
            "took over entries of a consumer that is gone");
        let deliveries = claimed
            .ids
            .into_iter()
            .map(|entry| Delivery::from_stream_id(stream, entry, 1))
            .collect();
        self.process_pending(deliveries).await
    }

    /// Takes over entries another consumer has held longer than `claim_idle` (it likely died).
    pub(super) async fn take_over_stuck(&mut self) -> RedisResult<()> {
        let min_idle = self.config.claim_idle.as_millis() as u64;
        for stream in self.config.streams.clone() {
            let mut start = FIRST_PENDING.to_owned();
            loop {
                let reply: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
                    .arg(&stream)
                    .arg(&self.config.group)
                    .arg(&self.config.consumer)
                    .arg(min_idle)
                    .arg(&start)
                    .arg("COUNT")
                    .arg(BATCH)
                    .query_async(&mut self.connection)
                    .await?;
                if !reply.claimed.is_empty() {
                    info!(service = %self.config.group, count = reply.claimed.len(), %stream,
                        "took over entries idle for {:?}", self.config.claim_idle);
                    let claimed = reply
                        .claimed
                        .into_iter()
                        .map(|entry| Delivery::from_stream_id(&stream, entry, 1))
                        .collect();
                    self.process_pending(claimed).await?;
                }
                if reply.next_stream_id == FIRST_PENDING || self.shutdown.requested() {
                    break;
                }
                start = reply.next_stream_id;
            }
        }
        Ok(())
    }

    /// Handles entries delivered before, counting their earlier deliveries.
    pub(super) async fn process_pending(&mut self, mut entries: Vec<Delivery>) -> RedisResult<()> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        let pending: StreamPendingCountReply = redis::cmd("XPENDING")
            .arg(&first.stream)
            .arg(&self.config.group)
            .arg(&first.id)
            .arg(&last.id)
            .arg(entries.len())
            .query_async(&mut self.connection)
            .await?;
        let counts: HashMap<String, u64> = pending
            .ids
            .into_iter()
            .map(|entry| (entry.id, entry.times_delivered as u64))
            .collect();
        for delivery in &mut entries {
            delivery.deliveries = counts.get(&delivery.id).copied().unwrap_or(1);
        }
        for delivery in entries {
            if self.process(&delivery).await? == Outcome::Later {
                self.deferred.push(delivery);
            }
            if self.shutdown.requested() {
                break;
            }
        }
        Ok(())
    }
}
