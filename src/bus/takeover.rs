//! Taking over the entries of consumers that went silent, and handling entries delivered before.

use std::collections::HashMap;

use redis::RedisResult;
use redis::streams::{StreamAutoClaimReply, StreamPendingCountReply};
use tracing::info;

use super::consumer::{BATCH, Consumer};
use super::entry::Delivery;
use super::handler::{Handler, Outcome};
use super::ids::FIRST_PENDING;

impl<H: Handler> Consumer<'_, H> {
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
