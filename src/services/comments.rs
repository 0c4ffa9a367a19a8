//! The comments service: creates comments ("pending") on request, learns which posts exist from
//! `PostCreated`, and records moderation verdicts, announcing each with `CommentUpdated`.
//!
//! Keys: `<ns>:comments:{<ns>.0}:comment:<id>` (hash: id, postId, content, status),
//! `...:posts` (set of the post ids it has seen), `...:requests`, `...:inbox`.

use std::sync::LazyLock;

use redis::{RedisResult, Script};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::bus::{Delivery, Handler, Outcome, Plan, Step, applied_up_to, step_script};
use crate::connection::Connection;
use crate::events::{Comment, Event, Status, validate_content};
use crate::keys::Keys;
use crate::request::{Inbox, Incoming, Reply, request_script};

pub const NAME: &str = "comments";
/// The one command of the comments inbox.
pub const CREATE_COMMENT: &str = "CreateComment";

/// Data of a `CreateComment` request.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateComment {
    pub post_id: Uuid,
    pub content: String,
}

/// KEYS[5]: known posts, KEYS[6]: the comment's hash. ARGV[5]: post id, ARGV[6]: comment id,
/// ARGV[7]: content, ARGV[8]: event data, ARGV[9]: answer. An unknown post changes nothing and
/// leaves the request pending: see [`Comments::settle`].
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    request_script(
        r#"
if redis.call('SISMEMBER', KEYS[5], ARGV[5]) == 0 then
  return 'unknown_post'
end
redis.call('HSET', KEYS[6], 'id', ARGV[6], 'postId', ARGV[5], 'content', ARGV[7], 'status', 'pending')
publish('CommentCreated', ARGV[8])
redis.call('HSET', KEYS[4], ARGV[3], ARGV[9])
answer(ARGV[9])
return 'applied'
"#,
    )
});

/// KEYS[3]: known posts. ARGV[4]: the post id.
static LEARN_POST: LazyLock<Script> = LazyLock::new(|| {
    step_script(
        r#"
redis.call('SADD', KEYS[3], ARGV[4])
settle()
return 'applied'
"#,
    )
});

/// KEYS[3]: the comment's hash. ARGV[4]: the verdict, ARGV[5]: the `CommentUpdated` data.
/// A verdict for a comment already decided changes nothing: one `CommentUpdated` per comment.
static RECORD_VERDICT: LazyLock<Script> = LazyLock::new(|| {
    step_script(
        r#"
local status = redis.call('HGET', KEYS[3], 'status')
if not status then
  return 'unknown_comment'
end
if status == 'pending' then
  redis.call('HSET', KEYS[3], 'status', ARGV[4])
  publish('CommentUpdated', ARGV[5])
end
settle()
return 'applied'
"#,
    )
});

pub struct Comments {
    events: String,
    prefix: String,
    inbox: Inbox,
}

impl Comments {
    pub fn new(keys: &Keys) -> Comments {
        Comments {
            events: keys.events(),
            prefix: keys.service_prefix(NAME),
            inbox: Inbox::new(keys, NAME),
        }
    }

    /// Events first: a batch's `PostCreated` is learnt before its requests are answered.
    pub fn streams(keys: &Keys) -> Vec<String> {
        vec![keys.events(), keys.inbox(NAME)]
    }

    fn known_posts(&self) -> String {
        format!("{}posts", self.prefix)
    }

    fn comment_key(&self, id: Uuid) -> String {
        format!("{}comment:{id}", self.prefix)
    }

    fn plan_event(&self, delivery: &Delivery) -> Plan {
        let envelope = match delivery.event() {
            Ok(Some(envelope)) => envelope,
            Ok(None) => return Plan::Skip,
            Err(reason) => return Plan::Dead(reason),
        };
        let step = |script| Step::new(script, delivery, NAME, &self.events, &envelope.request_id);
        match &envelope.event {
            Event::PostCreated(post) => Plan::Run(
                step(&LEARN_POST)
                    .key(self.known_posts())
                    .arg(post.id.to_string()),
            ),
            Event::CommentModerated(verdict) => Plan::Run(
                step(&RECORD_VERDICT)
                    .key(self.comment_key(verdict.id))
                    .arg(verdict.status.as_str())
                    .arg(serde_json::to_string(verdict).expect("comments serialize")),
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
            .inbox
            .step(&CREATE, delivery, &request)
            .key(self.known_posts())
            .key(self.comment_key(comment.id))
            .arg(comment.post_id.to_string())
            .arg(comment.id.to_string())
            .arg(&comment.content)
            .arg(serde_json::to_string(&comment).expect("comments serialize"))
            .arg(Reply::Ok { value: &comment }.to_json());
        Plan::Run(step)
    }

    /// A comment on a post this service has not heard of. The post may have been created just
    /// before the request, its `PostCreated` still on its way to this service (or to another
    /// instance of it): only once every event older than the request is applied does "unknown"
    /// mean "does not exist".
    async fn unknown_post(
        &mut self,
        connection: &mut Connection,
        delivery: &Delivery,
    ) -> RedisResult<Outcome> {
        if !applied_up_to(connection, &self.events, NAME, &delivery.id).await? {
            return Ok(Outcome::Later);
        }
        // The post may have arrived in the meantime: try once more before answering.
        if let Plan::Run(step) = self.plan_request(delivery)
            && step.run(connection).await? == "unknown_post"
            && let Ok((request, command)) = parse_request(delivery)
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

fn parse_request(delivery: &Delivery) -> Result<(Incoming, CreateComment), String> {
    let request = Incoming::parse(delivery)?;
    if request.command != CREATE_COMMENT {
        return Err(format!("unknown command {:?}", request.command));
    }
    let command = request.decode()?;
    Ok((request, command))
}

impl Handler for Comments {
    fn plan(&mut self, delivery: &Delivery) -> Plan {
        if delivery.stream == self.events {
            self.plan_event(delivery)
        } else {
            self.plan_request(delivery)
        }
    }

    async fn settle(
        &mut self,
        connection: &mut Connection,
        delivery: &Delivery,
        result: &str,
    ) -> RedisResult<Outcome> {
        match result {
            "unknown_post" => self.unknown_post(connection, delivery).await,
            "unknown_comment" => Ok(Outcome::Dead(
                "a verdict for a comment that was never created".to_owned(),
            )),
            _ => Ok(Outcome::Done),
        }
    }
}
