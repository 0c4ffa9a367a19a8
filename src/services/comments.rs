//! The comments service: creates comments ("pending") on request, learns which posts exist from
//! `PostCreated`, and records moderation verdicts, announcing each with `CommentUpdated`.
//!
//! Keys: its rebuildable state lives under `<ns>:comments:{<ns>.0}:<generation>:` (see
//! `blogctl rebuild`): `comment:<id>` (hash: id, postId, content, status), `comments` (set of
//! those comment ids, for dropping the generation) and `posts` (set of the post ids it has
//! seen). Outside it: `...:generation`, `...:request:<request id>` (its
//! answer, for 24 hours) and `...:inbox`.

use std::sync::LazyLock;

use redis::RedisResult;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::generations::{self, ApplyCall, Calls, Generations, Rebuilder};
use crate::bus::{
    Delivery, Handler, Outcome, Plan, Step, StepKeys, StepReply, StepScript, applied_up_to,
};
use crate::connection::Connection;
use crate::error::Malformed;
use crate::events::{Comment, Event, EventKind, Status, validate_content};
use crate::keyspace::{Keys, Partition, Service};
use crate::request::{self, Inbox, Incoming, Reply, request_script};

pub const SERVICE: Service = Service::Comments;
pub const NAME: &str = SERVICE.name();
/// The one command of the comments inbox.
pub const CREATE_COMMENT: &str = "CreateComment";

/// Data of a `CreateComment` request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateComment {
    pub post_id: Uuid,
    pub content: String,
}

/// The comments service's apply functions (`learn_post`, `add_comment`, `set_status`, and
/// `index_comment` which the last two call), for its live steps and rebuilds.
const APPLY: &str = include_str!("lua/comments_apply.lua");

/// Creates a comment, pending. An unknown post changes nothing and leaves the request pending:
/// see [`Comments::unknown_post`].
static CREATE: LazyLock<StepScript> = LazyLock::new(|| {
    request_script(
        &generations::KEYS,
        &[
            generations::ARGS[0],
            "post_id",
            "comment_id",
            "content",
            "event",
            "response",
        ],
        &[
            &generations::lua(APPLY),
            include_str!("lua/comments_create.lua"),
        ],
    )
    .sharing(&generations::SHARED)
});

/// Learns that a post exists, from its `PostCreated`.
static LEARN_POST: LazyLock<StepScript> = LazyLock::new(|| {
    generations::step_script(
        &[],
        &["post_id"],
        APPLY,
        include_str!("lua/comments_learn_post.lua"),
    )
});

/// Records moderation's verdict on a pending comment and announces it (`event`).
static RECORD_VERDICT: LazyLock<StepScript> = LazyLock::new(|| {
    generations::step_script(
        &[],
        &["comment_id", "verdict", "event"],
        APPLY,
        include_str!("lua/comments_record_verdict.lua"),
    )
});

/// Applies batches of events for `blogctl rebuild comments`, with the same apply functions.
pub static REBUILDER: LazyLock<Rebuilder> = LazyLock::new(|| Rebuilder::new(APPLY));

/// How an event changes this service's state, as a rebuild applies the log: the events it
/// emitted itself (`CommentCreated`, `CommentUpdated`) carry the outcome of its own steps, and
/// `PostCreated` what it learnt. `None`: it does not change it (`CommentModerated` reaches the
/// state through `CommentUpdated`).
pub fn apply_call(event: &Event) -> Option<ApplyCall> {
    match event {
        Event::PostCreated(post) => Some(ApplyCall {
            function: "learn_post",
            args: vec![post.id.to_string()],
        }),
        Event::CommentCreated(comment) => Some(ApplyCall {
            function: "add_comment",
            args: vec![
                comment.id.to_string(),
                comment.post_id.to_string(),
                comment.content.clone(),
                comment.status.as_str().to_owned(),
            ],
        }),
        Event::CommentUpdated(comment) => Some(ApplyCall {
            function: "set_status",
            args: vec![comment.id.to_string(), comment.status.as_str().to_owned()],
        }),
        Event::CommentModerated(_) => None,
    }
}

/// The comments state's calls for a run of events (see [`Calls`]): a comment's update sets the
/// status it was created with (`add_comment`'s last argument), as `set_status` would.
pub fn calls() -> Calls {
    Calls::new(apply_call, |created, _, comment| {
        if let Some(status) = created.args.last_mut() {
            *status = comment.status.as_str().to_owned();
        }
    })
}

/// The call that lists, in a generation's index of comments, the comment `call` writes (if it
/// writes one). `blogctl rebuild comments` applies it to the generation it replaces, which an
/// earlier version may have written without an index, or with one begun only at the upgrade:
/// by the switch, that index then names every comment of the log, so that dropping the
/// generation leaves none of them behind.
pub fn index_call(call: &ApplyCall) -> Option<ApplyCall> {
    match call.function {
        "add_comment" | "set_status" => Some(ApplyCall {
            function: "index_comment",
            args: vec![call.args[0].clone()],
        }),
        _ => None,
    }
}

pub struct Comments {
    /// The posts' events stream: requests are stamped with its position.
    posts: String,
    inbox_stream: String,
    step_keys: StepKeys,
    generations: Generations,
    inbox: Inbox,
}

impl Comments {
    pub fn new(keys: &Keys, partition: Partition) -> Comments {
        Comments {
            posts: keys.events(request::STAMPED_FROM, partition),
            inbox_stream: keys.inbox(SERVICE, partition),
            step_keys: StepKeys::new(keys, SERVICE, partition),
            generations: Generations::new(keys, SERVICE, partition),
            inbox: Inbox::new(keys, SERVICE, partition),
        }
    }

    fn plan_event(&self, delivery: &Delivery) -> Plan {
        let envelope = match delivery.event() {
            Ok(Some(envelope)) => envelope,
            Ok(None) => return Plan::Skip,
            Err(reason) => return Plan::Dead(reason),
        };
        let step = |script| {
            let step = Step::new(script, &self.step_keys, delivery, &envelope.request_id);
            self.generations.fill(step)
        };
        match &envelope.event {
            Event::PostCreated(post) => {
                Plan::Run(step(&LEARN_POST).arg("post_id", post.id.to_string()))
            }
            Event::CommentModerated(verdict) => Plan::Run(
                step(&RECORD_VERDICT)
                    .arg("comment_id", verdict.id.to_string())
                    .arg("verdict", verdict.status.as_str())
                    .arg(
                        "event",
                        serde_json::to_string(verdict).expect("comments serialize"),
                    ),
            ),
            _ => Plan::Skip,
        }
    }

    fn plan_request(&self, delivery: &Delivery) -> Plan {
        let (request, command) = match parse_request(delivery) {
            Ok(parsed) => parsed,
            Err(reason) => return Plan::Dead(reason),
        };
        let content = match validate_content(&command.content) {
            Ok(content) => content,
            Err(failure) => {
                let reply = Reply::<()>::Invalid {
                    message: failure.message,
                };
                return Plan::Run(self.inbox.answer(delivery, &request, &reply));
            }
        };
        let comment = Comment {
            id: Uuid::now_v7(),
            post_id: command.post_id,
            content,
            status: Status::Pending,
        };
        let step = self
            .generations
            .fill(self.inbox.step(&CREATE, delivery, &request))
            .arg("post_id", comment.post_id.to_string())
            .arg("comment_id", comment.id.to_string())
            .arg("content", &comment.content)
            .arg(
                "event",
                serde_json::to_string(&comment).expect("comments serialize"),
            )
            .arg("response", Reply::Ok { value: &comment }.to_json());
        Plan::Run(step)
    }

    /// A comment on a post this service has not heard of. The post may have been created just
    /// before the request, its `PostCreated` still on its way to this service (or to another
    /// instance of it): only once every event of the posts' stream up to the request's `after`
    /// (its end when the request was sent) is applied does "unknown" mean "does not exist".
    async fn unknown_post(
        &mut self,
        connection: &mut Connection,
        delivery: &Delivery,
    ) -> RedisResult<Outcome> {
        let Ok((request, command)) = parse_request(delivery) else {
            return Ok(Outcome::Done);
        };
        if !applied_up_to(connection, &self.posts, NAME, &request.after).await? {
            return Ok(Outcome::Later);
        }
        // The post may have arrived in the meantime: try once more before answering.
        if let Plan::Run(step) = self.plan_request(delivery)
            && step.run(connection).await? == StepReply::UnknownPost
        {
            let message = format!("post {} does not exist", command.post_id);
            self.inbox
                .answer(delivery, &request, &Reply::<()>::NotFound { message })
                .run(connection)
                .await?;
        }
        Ok(Outcome::Done)
    }
}

fn parse_request(delivery: &Delivery) -> Result<(Incoming, CreateComment), Malformed> {
    let request = Incoming::parse(delivery)?;
    if request.command != CREATE_COMMENT {
        return Err(Malformed(format!("unknown command {:?}", request.command)));
    }
    let command = request.decode()?;
    Ok((request, command))
}

impl Handler for Comments {
    fn uses(&self, kind: EventKind) -> bool {
        matches!(kind, EventKind::PostCreated | EventKind::CommentModerated)
    }

    fn plan(&mut self, delivery: &Delivery) -> Plan {
        if delivery.stream == self.inbox_stream {
            self.plan_request(delivery)
        } else {
            self.plan_event(delivery)
        }
    }

    async fn settle(
        &mut self,
        connection: &mut Connection,
        delivery: &Delivery,
        reply: StepReply,
    ) -> RedisResult<Outcome> {
        match reply {
            StepReply::UnknownPost => self.unknown_post(connection, delivery).await,
            StepReply::UnknownComment => Ok(Outcome::Dead(Malformed(
                "a verdict for a comment that was never created".to_owned(),
            ))),
            _ => Ok(Outcome::Done),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Post;

    #[test]
    fn a_rebuild_applies_what_the_live_steps_did() {
        let post = Post {
            id: Uuid::now_v7(),
            title: "t".to_owned(),
        };
        let learnt = apply_call(&Event::PostCreated(post.clone())).unwrap();
        assert_eq!(learnt.function, "learn_post");
        assert_eq!(learnt.args, [post.id.to_string()]);
        let comment = Comment {
            id: Uuid::now_v7(),
            post_id: post.id,
            content: "hi".to_owned(),
            status: Status::Pending,
        };
        let created = apply_call(&Event::CommentCreated(comment.clone())).unwrap();
        assert_eq!(created.function, "add_comment");
        assert_eq!(created.args[3], "pending");
        let decided = Comment {
            status: Status::Rejected,
            ..comment.clone()
        };
        let updated = apply_call(&Event::CommentUpdated(decided.clone())).unwrap();
        assert_eq!(updated.function, "set_status");
        assert_eq!(
            updated.args,
            [comment.id.to_string(), "rejected".to_owned()]
        );
        // The verdict reaches the state through `CommentUpdated`.
        assert!(apply_call(&Event::CommentModerated(decided)).is_none());
        // The comment of each call that writes one is indexed; a post is not.
        for call in [&created, &updated] {
            let index = index_call(call).unwrap();
            assert_eq!(index.function, "index_comment");
            assert_eq!(index.args, [comment.id.to_string()]);
        }
        assert!(index_call(&learnt).is_none());
    }
}
