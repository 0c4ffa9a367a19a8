//! The comments service: creates comments ("pending") on request, learns which posts exist from
//! `PostCreated`, and records moderation verdicts, announcing each with `CommentUpdated`.
//!
//! Keys: `<ns>:comments:{<ns>.0}:comment:<id>` (hash: id, postId, content, status),
//! `...:posts` (set of the post ids it has seen), `...:requests`, `...:inbox`.

use redis::{RedisResult, Script};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::bus::{
    Delivery, Handler, Outcome, acknowledge, applied_up_to, invoke_step, step_script,
};
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
/// ARGV[7]: content, ARGV[8]: event data, ARGV[9]: answer.
const CREATE: &str = r#"
if redis.call('SISMEMBER', KEYS[5], ARGV[5]) == 0 then
  return 'unknown_post'
end
redis.call('HSET', KEYS[6], 'id', ARGV[6], 'postId', ARGV[5], 'content', ARGV[7], 'status', 'pending')
publish('CommentCreated', ARGV[8])
redis.call('HSET', KEYS[4], ARGV[3], ARGV[9])
answer(ARGV[9])
return 'applied'
"#;

/// KEYS[3]: known posts. ARGV[4]: the post id.
const LEARN_POST: &str = r#"
redis.call('SADD', KEYS[3], ARGV[4])
settle()
return 'applied'
"#;

/// KEYS[3]: the comment's hash. ARGV[4]: the verdict, ARGV[5]: the `CommentUpdated` data.
/// A verdict for a comment already decided changes nothing: one `CommentUpdated` per comment.
const RECORD_VERDICT: &str = r#"
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
"#;

pub struct Comments {
    events: String,
    prefix: String,
    inbox: Inbox,
    create: Script,
    learn_post: Script,
    record_verdict: Script,
}

impl Comments {
    pub fn new(keys: &Keys) -> Comments {
        Comments {
            events: keys.events(),
            prefix: keys.service_prefix(NAME),
            inbox: Inbox::new(keys, NAME),
            create: request_script(CREATE),
            learn_post: step_script(LEARN_POST),
            record_verdict: step_script(RECORD_VERDICT),
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

    /// Runs the create step: 'applied', or 'unknown_post' with nothing changed.
    async fn try_create(
        &self,
        connection: &mut Connection,
        delivery: &Delivery,
        request: &Incoming,
        comment: &Comment,
    ) -> RedisResult<String> {
        self.inbox
            .invoke(&self.create, delivery, request)
            .key(self.known_posts())
            .key(self.comment_key(comment.id))
            .arg(comment.post_id.to_string())
            .arg(comment.id.to_string())
            .arg(&comment.content)
            .arg(serde_json::to_string(comment).expect("comments serialize"))
            .arg(Reply::Ok { value: comment }.to_json())
            .invoke_async(connection)
            .await
    }

    async fn handle_event(
        &mut self,
        connection: &mut Connection,
        delivery: &Delivery,
    ) -> RedisResult<Outcome> {
        let envelope = match delivery.event() {
            Ok(Some(envelope)) => envelope,
            Ok(None) => return acknowledge(connection, NAME, delivery).await,
            Err(reason) => return Ok(Outcome::Dead(reason)),
        };
        let request_id = envelope.request_id.as_str();
        match envelope.event {
            Event::PostCreated(post) => {
                let _: String =
                    invoke_step(&self.learn_post, delivery, NAME, &self.events, request_id)
                        .key(self.known_posts())
                        .arg(post.id.to_string())
                        .invoke_async(connection)
                        .await?;
                Ok(Outcome::Done)
            }
            Event::CommentModerated(verdict) => {
                let updated = serde_json::to_string(&verdict).expect("comments serialize");
                let result: String = invoke_step(
                    &self.record_verdict,
                    delivery,
                    NAME,
                    &self.events,
                    request_id,
                )
                .key(self.comment_key(verdict.id))
                .arg(verdict.status.as_str())
                .arg(updated)
                .invoke_async(connection)
                .await?;
                if result == "unknown_comment" {
                    return Ok(Outcome::Dead(format!(
                        "a verdict for comment {} that was never created",
                        verdict.id
                    )));
                }
                Ok(Outcome::Done)
            }
            _ => acknowledge(connection, NAME, delivery).await,
        }
    }

    async fn handle_request(
        &mut self,
        connection: &mut Connection,
        delivery: &Delivery,
    ) -> RedisResult<Outcome> {
        let request = match Incoming::parse(delivery) {
            Ok(request) if request.command == CREATE_COMMENT => request,
            Ok(request) => {
                return Ok(Outcome::Dead(format!(
                    "unknown command {:?}",
                    request.command
                )));
            }
            Err(reason) => return Ok(Outcome::Dead(reason)),
        };
        let command: CreateComment = match request.decode() {
            Ok(command) => command,
            Err(reason) => return Ok(Outcome::Dead(reason)),
        };
        let content = match validate_content(&command.content) {
            Ok(content) => content,
            Err(failure) => {
                let reply = Reply::<()>::Invalid {
                    message: failure.message,
                };
                self.inbox
                    .answer(connection, delivery, &request, &reply)
                    .await?;
                return Ok(Outcome::Done);
            }
        };
        let comment = Comment {
            id: Uuid::now_v7(),
            post_id: command.post_id,
            content,
            status: Status::Pending,
        };
        let result = self
            .try_create(connection, delivery, &request, &comment)
            .await?;
        if result != "unknown_post" {
            return Ok(Outcome::Done);
        }
        // The post may have been created just before this request, its `PostCreated` still on
        // its way to this service (or to another instance of it). Only once every event older
        // than the request is applied does "unknown" mean "does not exist".
        if !applied_up_to(connection, &self.events, NAME, &delivery.id).await? {
            return Ok(Outcome::Later);
        }
        let result = self
            .try_create(connection, delivery, &request, &comment)
            .await?;
        if result == "unknown_post" {
            let reply = Reply::<()>::NotFound {
                message: format!("post {} does not exist", comment.post_id),
            };
            self.inbox
                .answer(connection, delivery, &request, &reply)
                .await?;
        }
        Ok(Outcome::Done)
    }
}

impl Handler for Comments {
    async fn handle(
        &mut self,
        connection: &mut Connection,
        delivery: &Delivery,
    ) -> RedisResult<Outcome> {
        if delivery.stream == self.events {
            self.handle_event(connection, delivery).await
        } else {
            self.handle_request(connection, delivery).await
        }
    }
}
