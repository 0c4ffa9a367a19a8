//! Handling the entries read: a batch of first deliveries, its steps in one pipeline
//! ([`Consumer::process_batch`]), and one entry at a time, with retries and counted tries
//! ([`Consumer::process`]); what is skipped, dead-lettered or deferred, and how each outcome is
//! counted in the metrics.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use redis::{ErrorKind, RedisResult, ServerErrorKind, Value};
use tracing::{error, warn};

use super::backoff::Backoff;
use super::batch::Batch;
use super::consumer::Consumer;
use super::entry::Delivery;
use super::groups::acknowledge;
use super::handler::{Handler, Outcome, Plan};
use super::step::{Step, StepReply};
use crate::error::{Malformed, is_unavailable};
use crate::events::EventKind;
use crate::metrics::Handled;

impl<H: Handler> Consumer<'_, H> {
    /// Handles a batch of first deliveries: every step in one pipeline, in stream order, then
    /// anything unusual one by one. Consecutive steps of one script go as one call of its batch
    /// form ([`Batch`]). Returns the entries to try again later.
    pub(super) async fn process_batch(
        &mut self,
        deliveries: Vec<Delivery>,
    ) -> RedisResult<Vec<Delivery>> {
        let Planned {
            batches,
            skipped,
            mut alone,
        } = self.plan_batch(deliveries);
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let cluster = self.connection.is_cluster();
        for (batch, _) in &batches {
            pipe.add_command(batch.command(cluster));
        }
        for (stream, ids) in &skipped {
            pipe.xack(stream, &self.config.group, ids);
        }
        let mut later = Vec::new();
        if !batches.is_empty() || !skipped.is_empty() {
            let started = Instant::now();
            let results: Vec<RedisResult<Value>> = pipe.query_async(&mut self.connection).await?;
            let stepped: usize = batches.iter().map(|(batch, _)| batch.len()).sum();
            if let (Some(metrics), true) = (&self.config.metrics, stepped > 0) {
                let each = started.elapsed() / stepped as u32;
                for _ in 0..stepped {
                    metrics.step(&self.config.group, each);
                }
            }
            for ((batch, deliveries), result) in batches.into_iter().zip(results) {
                let result = match result {
                    // Redis does not have the script yet (or lost it in a restart): nothing
                    // ran; load it and send the batch again.
                    Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                        batch.load(&mut self.connection).await?;
                        batch
                            .command(cluster)
                            .query_async(&mut self.connection)
                            .await
                    }
                    result => result,
                };
                for (delivery, reply) in deliveries.into_iter().zip(batch.replies(result)) {
                    match reply {
                        Ok(reply) => later.extend(self.settle_stepped(delivery, reply).await?),
                        Err(error) if is_unavailable(&error) => return Err(error),
                        // Retried, with backoff and counting, on its own.
                        Err(_) => alone.push(delivery),
                    }
                }
            }
        }
        for delivery in alone {
            if self.process(&delivery).await? == Outcome::Later {
                later.push(delivery);
            }
        }
        Ok(later)
    }

    /// Sorts a batch of first deliveries: steps in batches, in order; entries to acknowledge
    /// unread, by stream; and those to handle one by one.
    fn plan_batch(&mut self, deliveries: Vec<Delivery>) -> Planned {
        let mut planned = Planned::default();
        for delivery in deliveries {
            if self.misplaced(&delivery).is_some() {
                planned.alone.push(delivery);
                continue;
            }
            let plan = if self.ignores(&delivery) {
                Plan::Skip
            } else {
                self.handler.plan(&delivery)
            };
            match plan {
                Plan::Skip => {
                    self.count(&delivery, Handled::Skipped);
                    planned
                        .skipped
                        .entry(delivery.stream.clone())
                        .or_default()
                        .push(delivery.id.clone());
                }
                Plan::Dead(_) => planned.alone.push(delivery),
                Plan::Run(step) => planned.add(step, delivery),
            }
        }
        planned
    }

    /// Settles an entry whose step answered; the entry, if it is to be tried again later.
    async fn settle_stepped(
        &mut self,
        delivery: Delivery,
        reply: StepReply,
    ) -> RedisResult<Option<Delivery>> {
        match self.settle(&delivery, reply).await? {
            Outcome::Done => self.count(&delivery, done(reply)),
            Outcome::Later => {
                self.count(&delivery, Handled::Deferred);
                return Ok(Some(delivery));
            }
            Outcome::Dead(reason) => {
                self.count(&delivery, Handled::DeadLettered);
                self.dead_letter(&delivery, &reason.0, 1).await?;
            }
        }
        Ok(None)
    }

    /// What a step's result means: the handler's reading of it, unless the step failed after
    /// acknowledging its entry (the step dead-lettered it then).
    pub(super) async fn settle(
        &mut self,
        delivery: &Delivery,
        reply: StepReply,
    ) -> RedisResult<Outcome> {
        if reply == StepReply::FailedAfterClaim {
            error!(service = %self.config.group, id = %delivery.id, stream = %delivery.stream,
                "a step failed after acknowledging its entry; the entry is in the dead letters");
            return Ok(Outcome::Done);
        }
        self.handler
            .settle(&mut self.connection, delivery, reply)
            .await
    }

    /// Handles one entry: retries errors that may pass, dead-letters what can never succeed.
    pub(super) async fn process(&mut self, delivery: &Delivery) -> RedisResult<Outcome> {
        if let Some(outcome) = self.turn_away(delivery).await? {
            return Ok(outcome);
        }
        let max = self.config.max_deliveries;
        // A redelivered entry may be one that crashed the process: count real tries (entries
        // delivered in a batch but never reached before a crash do not count).
        let redelivered = delivery.deliveries > 1;
        let mut tries = if redelivered {
            self.count_try(delivery).await?
        } else {
            1
        };
        if tries > max {
            let reason = format!("tried {} times without being applied", tries - 1);
            self.count(delivery, Handled::DeadLettered);
            return self.dead_letter(delivery, &reason, tries - 1).await;
        }
        let mut retry = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        loop {
            let error = match self.try_once(delivery).await {
                (Ok(outcome), handled) => {
                    return self
                        .conclude(delivery, outcome, handled, redelivered, tries)
                        .await;
                }
                (Err(error), _) => error,
            };
            if is_unavailable(&error) {
                if redelivered {
                    self.give_back_try(delivery).await;
                }
                return Err(error);
            }
            if tries >= max {
                let reason = format!("failed {tries} times; last error: {error}");
                error!(service = %self.config.group, id = %delivery.id, %reason, "giving up on an entry");
                self.count(delivery, Handled::DeadLettered);
                return self.dead_letter(delivery, &reason, tries).await;
            }
            warn!(service = %self.config.group, id = %delivery.id, %error, try_number = tries,
                "an entry failed; retrying");
            if let Some(metrics) = &self.config.metrics {
                metrics.retry(&self.config.group);
            }
            tries += 1;
            if self.shutdown.sleep(retry.next_delay()).await {
                // Left pending: handled again after the restart.
                return Ok(Outcome::Later);
            }
        }
    }

    /// Settles, before any try, an entry that is not the service's to apply: one found on
    /// another service's stream is dead-lettered, one the service ignores is acknowledged.
    /// `None` for an entry to try.
    async fn turn_away(&mut self, delivery: &Delivery) -> RedisResult<Option<Outcome>> {
        if let Some(reason) = self.misplaced(delivery) {
            warn!(service = %self.config.group, id = %delivery.id, stream = %delivery.stream,
                %reason, "dead-lettering an event found on another service's stream");
            self.count(delivery, Handled::DeadLettered);
            return self
                .dead_letter(delivery, &reason.0, delivery.deliveries)
                .await
                .map(Some);
        }
        if self.ignores(delivery) {
            self.count(delivery, Handled::Skipped);
            return acknowledge(&mut self.connection, &self.config.group, delivery)
                .await
                .map(Some);
        }
        Ok(None)
    }

    /// One try of an entry: its plan carried out, a step's reply settled. Returns, with the
    /// outcome, what the entry counts as in the metrics if it is done.
    async fn try_once(&mut self, delivery: &Delivery) -> (RedisResult<Outcome>, Handled) {
        let mut handled = Handled::Skipped;
        let outcome = match self.handler.plan(delivery) {
            Plan::Skip => acknowledge(&mut self.connection, &self.config.group, delivery).await,
            Plan::Dead(reason) => Ok(Outcome::Dead(reason)),
            Plan::Run(step) => {
                let started = Instant::now();
                match step.run(&mut self.connection).await {
                    Ok(reply) => {
                        if let Some(metrics) = &self.config.metrics {
                            metrics.step(&self.config.group, started.elapsed());
                        }
                        handled = done(reply);
                        self.settle(delivery, reply).await
                    }
                    Err(error) => Err(error),
                }
            }
        };
        (outcome, handled)
    }

    /// Ends the handling of an entry whose try came to an outcome: dead-letters a malformed
    /// one, forgets the counted tries of a redelivered one that is done, counts it in the
    /// metrics.
    async fn conclude(
        &mut self,
        delivery: &Delivery,
        outcome: Outcome,
        handled: Handled,
        redelivered: bool,
        tries: u64,
    ) -> RedisResult<Outcome> {
        if let Outcome::Dead(reason) = outcome {
            warn!(service = %self.config.group, id = %delivery.id, stream = %delivery.stream,
                %reason, "dead-lettering a malformed entry");
            self.count(delivery, Handled::DeadLettered);
            return self.dead_letter(delivery, &reason.0, tries).await;
        }
        if redelivered && outcome == Outcome::Done {
            self.forget_tries(delivery).await?;
        }
        let handled = if outcome == Outcome::Later {
            Handled::Deferred
        } else {
            handled
        };
        self.count(delivery, handled);
        Ok(outcome)
    }

    /// Why an event meant for this service cannot be applied: its kind is produced by another
    /// service than the one whose stream it was read from (each stream has one writer).
    pub(super) fn misplaced(&self, delivery: &Delivery) -> Option<Malformed> {
        let (_, writer) = self
            .config
            .producers
            .iter()
            .find(|(stream, _)| *stream == delivery.stream)?;
        let kind = EventKind::parse(delivery.field("type").ok()?)?;
        let belongs = kind.producer() == *writer || !delivery.is_for(&self.config.group);
        (!belongs).then(|| {
            Malformed(format!(
                "a {} does not belong on the {writer} service's stream: only the {} service \
                 produces it",
                kind.name(),
                kind.producer()
            ))
        })
    }

    /// Whether the service has nothing to do with an entry: one put back by `blogctl dead retry`
    /// for another service, or an event of a type it does not use.
    pub(super) fn ignores(&self, delivery: &Delivery) -> bool {
        if !delivery.is_for(&self.config.group) {
            return true;
        }
        let is_request = self.config.inbox.as_deref() == Some(delivery.stream.as_str());
        // Types it does not use, and types this build does not know, are skipped unread.
        let unused = |name| EventKind::parse(name).is_none_or(|kind| !self.handler.uses(kind));
        !is_request && matches!(delivery.field("type"), Ok(name) if unused(name))
    }

    /// Counts an entry's outcome in the metrics, under its event type (or request command);
    /// only names this build knows, so that what others write cannot add labels without end.
    fn count(&self, delivery: &Delivery, outcome: Handled) {
        let Some(metrics) = &self.config.metrics else {
            return;
        };
        let is_request = self.config.inbox.as_deref() == Some(delivery.stream.as_str());
        let name = if is_request {
            delivery.field("command").ok()
        } else {
            delivery.field("type").ok()
        };
        let kind = match name {
            Some(name @ ("CreatePost" | "CreateComment")) if is_request => name,
            Some(name) if !is_request => EventKind::parse(name).map_or("unknown", EventKind::name),
            _ => "unknown",
        };
        metrics.handled(&self.config.group, kind, outcome);
    }
}

/// A batch of first deliveries, sorted by [`Consumer::plan_batch`].
#[derive(Default)]
struct Planned {
    /// Steps in batches, in the order of their entries, each with its entries.
    batches: Vec<(Batch, Vec<Delivery>)>,
    /// Entries to acknowledge unread, by stream.
    skipped: HashMap<String, Vec<String>>,
    alone: Vec<Delivery>,
}

impl Planned {
    /// Adds a step to the last batch, or starts a new one.
    fn add(&mut self, step: Step, delivery: Delivery) {
        let step = match self.batches.last_mut() {
            Some((batch, deliveries)) => match batch.push(step) {
                Ok(()) => {
                    deliveries.push(delivery);
                    return;
                }
                Err(step) => step,
            },
            None => step,
        };
        self.batches.push((Batch::new(step), vec![delivery]));
    }
}

/// How the metrics count a step that is done: applied, found already applied, or
/// dead-lettered by the step itself.
fn done(reply: StepReply) -> Handled {
    match reply {
        StepReply::Stale => Handled::Stale,
        StepReply::FailedAfterClaim | StepReply::Dead => Handled::DeadLettered,
        _ => Handled::Applied,
    }
}
