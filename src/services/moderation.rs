//! The moderation service: judges each new comment and announces the verdict with
//! `CommentModerated`. It keeps no state of its own.

use redis::{RedisResult, Script};

use crate::bus::{Delivery, Handler, Outcome, acknowledge, invoke_step, step_script};
use crate::connection::Connection;
use crate::events::{Comment, Event, moderate};
use crate::keys::Keys;

pub const NAME: &str = "moderation";

/// ARGV[4]: the `CommentModerated` data.
const MODERATE: &str = r#"
publish('CommentModerated', ARGV[4])
settle()
return 'applied'
"#;

pub struct Moderation {
    events: String,
    banned_words: Vec<String>,
    moderate: Script,
}

impl Moderation {
    pub fn new(keys: &Keys, banned_words: Vec<String>) -> Moderation {
        Moderation {
            events: keys.events(),
            banned_words,
            moderate: step_script(MODERATE),
        }
    }

    pub fn streams(keys: &Keys) -> Vec<String> {
        vec![keys.events()]
    }
}

impl Handler for Moderation {
    async fn handle(
        &mut self,
        connection: &mut Connection,
        delivery: &Delivery,
    ) -> RedisResult<Outcome> {
        let envelope = match delivery.event() {
            Ok(Some(envelope)) => envelope,
            Ok(None) => return acknowledge(connection, NAME, delivery).await,
            Err(reason) => return Ok(Outcome::Dead(reason)),
        };
        let Event::CommentCreated(comment) = envelope.event else {
            return acknowledge(connection, NAME, delivery).await;
        };
        let status = moderate(&comment.content, &self.banned_words);
        let verdict = Comment { status, ..comment };
        let _: String = invoke_step(
            &self.moderate,
            delivery,
            NAME,
            &self.events,
            &envelope.request_id,
        )
        .arg(serde_json::to_string(&verdict).expect("comments serialize"))
        .invoke_async(connection)
        .await?;
        Ok(Outcome::Done)
    }
}
