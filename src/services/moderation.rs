//! The moderation service: judges each new comment and announces the verdict with
//! `CommentModerated`. It keeps no state of its own.

use std::sync::LazyLock;

use crate::bus::{Delivery, Handler, Plan, Step, StepKeys, StepScript};
use crate::events::{Comment, Event, EventKind, moderate};
use crate::keyspace::{Keys, Partition, Service};

pub const SERVICE: Service = Service::Moderation;
pub const NAME: &str = SERVICE.name();

/// Announces a verdict with `CommentModerated`.
static MODERATE: LazyLock<StepScript> = LazyLock::new(|| {
    StepScript::new(
        &[],
        &["verdict"],
        &[include_str!("lua/moderation_moderate.lua")],
    )
});

pub struct Moderation {
    step_keys: StepKeys,
    banned_words: Vec<String>,
}

impl Moderation {
    pub fn new(keys: &Keys, partition: Partition, banned_words: Vec<String>) -> Moderation {
        // An empty word would be "contained" in every comment.
        let banned_words = banned_words
            .into_iter()
            .map(|word| word.trim().to_owned())
            .filter(|word| !word.is_empty())
            .collect();
        Moderation {
            step_keys: StepKeys::new(keys, SERVICE, partition),
            banned_words,
        }
    }
}

impl Handler for Moderation {
    fn uses(&self, kind: EventKind) -> bool {
        kind == EventKind::CommentCreated
    }

    fn plan(&mut self, delivery: &Delivery) -> Plan {
        let envelope = match delivery.event() {
            Ok(Some(envelope)) => envelope,
            Ok(None) => return Plan::Skip,
            Err(reason) => return Plan::Dead(reason),
        };
        let Event::CommentCreated(comment) = envelope.event else {
            return Plan::Skip;
        };
        let status = moderate(&comment.content, &self.banned_words);
        let verdict = Comment { status, ..comment };
        let step = Step::new(&MODERATE, &self.step_keys, delivery, &envelope.request_id).arg(
            "verdict",
            serde_json::to_string(&verdict).expect("comments serialize"),
        );
        Plan::Run(step)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_banned_words_are_ignored() {
        let keys = Keys::new("blog").unwrap();
        let words = vec![
            "orange".to_owned(),
            String::new(),
            "  ".to_owned(),
            " Kiwi ".to_owned(),
        ];
        assert_eq!(
            Moderation::new(&keys, Partition::FIRST, words).banned_words,
            ["orange", "Kiwi"]
        );
    }
}
