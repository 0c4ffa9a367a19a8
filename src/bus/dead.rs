//! Dead letters, and the count of tries that leads an entry there.

use std::sync::LazyLock;

use redis::{AsyncCommands, RedisResult};
use tracing::debug;

use super::consumer::Consumer;
use super::entry::Delivery;
use super::handler::{Handler, Outcome};
use super::step::{Step, StepScript};

/// Moves an entry to the dead-letter stream and acknowledges it, in one step: `reason`, `tries`,
/// `fields` (the entry's fields as JSON), `delete` ('1' to delete the entry from its stream
/// too: requests are deleted once handled).
const DEAD_LETTER: &str = include_str!("lua/dead_letter.lua");

impl<H: Handler> Consumer<'_, H> {
    /// The field of the attempts hash for one entry.
    pub(super) fn try_field(delivery: &Delivery) -> String {
        format!("{}/{}", delivery.stream, delivery.id)
    }

    /// Counts one more try of a redelivered entry; returns the tries so far, this one included.
    /// An entry tried again locally (deferred, see [`Outcome::Later`]) is counted once per
    /// delivery, not once per local try.
    pub(super) async fn count_try(&mut self, delivery: &Delivery) -> RedisResult<u64> {
        let field = Self::try_field(delivery);
        if let Some(&tries) = self.counted.get(&field) {
            return Ok(tries);
        }
        let counted: u64 = self
            .connection
            .hincr(&self.config.step_keys.attempts, &field, 1)
            .await?;
        // The first delivery was tried without being counted.
        self.counted.insert(field, counted + 1);
        Ok(counted + 1)
    }

    /// Takes back the try [`Consumer::count_try`] counted for a step that Redis refused or
    /// lost before it could run (unavailable: a connection lost, a Cluster slot moving or
    /// failing over). The step ran nowhere, so it was no try of the entry: without this, every
    /// reconnection while a Cluster slot migrates (`TRYAGAIN` for seconds) would count one, and
    /// a good entry would be dead-lettered as if it kept failing. Best effort: a Redis that does
    /// not answer keeps the count, one try too many at worst.
    pub(super) async fn give_back_try(&mut self, delivery: &Delivery) {
        let field = Self::try_field(delivery);
        if self.counted.remove(&field).is_none() {
            return;
        }
        let given_back: RedisResult<i64> = self
            .connection
            .hincr(&self.config.step_keys.attempts, &field, -1)
            .await;
        if let Err(error) = given_back {
            debug!(service = %self.config.group, id = %delivery.id, %error, "a try not given back");
        }
    }

    pub(super) async fn forget_tries(&mut self, delivery: &Delivery) -> RedisResult<()> {
        let field = Self::try_field(delivery);
        self.counted.remove(&field);
        self.connection
            .hdel(&self.config.step_keys.attempts, field)
            .await
    }

    pub(super) async fn dead_letter(
        &mut self,
        delivery: &Delivery,
        reason: &str,
        deliveries: u64,
    ) -> RedisResult<Outcome> {
        static SCRIPT: LazyLock<StepScript> = LazyLock::new(|| {
            StepScript::new(
                &[],
                &["reason", "tries", "fields", "delete"],
                &[DEAD_LETTER],
            )
        });
        let delete = self.config.inbox.as_deref() == Some(delivery.stream.as_str());
        // KEYS[3] of this step is the dead-letter stream; KEYS[2] is the service's own events stream.
        let result = Step::new(&SCRIPT, &self.config.step_keys, delivery, "")
            .arg("reason", reason)
            .arg("tries", deliveries)
            .arg("fields", delivery.fields_json())
            .arg("delete", if delete { "1" } else { "0" })
            .run(&mut self.connection)
            .await?;
        self.forget_tries(delivery).await?;
        debug!(service = %self.config.group, id = %delivery.id, result = result.as_str(), "dead letter");
        Ok(Outcome::Done)
    }
}
