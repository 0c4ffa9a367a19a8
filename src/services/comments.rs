//! The comments service: creates comments ("pending") on request, learns which posts exist from
//! `PostCreated`, and records moderation verdicts, announcing each with `CommentUpdated`.
//!
//! Keys: its rebuildable state lives under `<ns>:comments:{<ns>.0}:<generation>:` (see
//! [`crate::rebuild`]): `comment:<id>` (hash: id, postId, content, status) and `posts` (set of
//! the post ids it has seen). Outside it: `...:generation`, `...:request:<request id>` (its
//! answer, for 24 hours) and `...:inbox`.

use std::sync::LazyLock;

use redis::{RedisResult, Script};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::generations::{Generations, event_step_script, lua_base};
use crate::bus::{Delivery, Handler, Outcome, Plan, Step, applied_up_to};
use crate::connection::Connection;
use crate::events::{Comment, Event, Status, validate_content};
use crate::keyspace::{Generation, Keys, Partition, Service};
use crate::request::{Inbox, Incoming, Reply, request_script};

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

/// KEYS[5]: the generation pointer. ARGV[5]: the service's prefix, ARGV[6]: post id, ARGV[7]:
/// comment id, ARGV[8]: content, ARGV[9]: event data, ARGV[10]: answer. An unknown post changes
/// nothing and leaves the request pending: see [`Comments::unknown_post`].
static CREATE: LazyLock<Script> = LazyLock::new(|| {
    request_script(&format!(
        "{}{}",
        lua_base(5, 5),
        r#"
if redis.call('SISMEMBER', known_posts(base), ARGV[6]) == 0 then
  return 'unknown_post'
end
if not claim() then return 'stale' end
redis.call('HSET', comment_key(base, ARGV[7]), 'id', ARGV[7], 'postId', ARGV[6],
  'content', ARGV[8], 'status', 'pending')
publish('CommentCreated', ARGV[9])
remember(ARGV[10])
answer(ARGV[10])
return 'applied'
"#
    ))
});

/// KEYS[3]: the generation pointer. ARGV[4]: the service's prefix, ARGV[5]: the post id.
static LEARN_POST: LazyLock<Script> = LazyLock::new(|| {
    event_step_script(
        r#"
if not claim() then return 'stale' end
redis.call('SADD', known_posts(base), ARGV[5])
return 'applied'
"#,
    )
});

/// KEYS[3]: the generation pointer. ARGV[4]: the service's prefix, ARGV[5]: the comment id,
/// ARGV[6]: the verdict, ARGV[7]: the `CommentUpdated` data. A verdict for a comment already
/// decided changes nothing: one `CommentUpdated` per comment.
static RECORD_VERDICT: LazyLock<Script> = LazyLock::new(|| {
    event_step_script(
        r#"
local comment = comment_key(base, ARGV[5])
local status = redis.call('HGET', comment, 'status')
if not status then
  return 'unknown_comment'
end
if not claim() then return 'stale' end
if status == 'pending' then
  redis.call('HSET', comment, 'status', ARGV[6])
  publish('CommentUpdated', ARGV[7])
end
return 'applied'
"#,
    )
});

/// The writes that apply one event to the state in generation `base`, for a rebuild (which
/// applies the log in order into a generation the service does not use yet).
pub fn rebuild_commands(pipe: &mut redis::Pipeline, base: &Generation, event: &Event) {
    match event {
        Event::PostCreated(post) => {
            pipe.sadd(base.known_posts(), post.id.to_string()).ignore();
        }
        Event::CommentCreated(comment) => {
            let (id, post_id) = (comment.id.to_string(), comment.post_id.to_string());
            let fields = [
                ("id", id.as_str()),
                ("postId", post_id.as_str()),
                ("content", comment.content.as_str()),
                ("status", comment.status.as_str()),
            ];
            pipe.hset_multiple(base.comment(&id), &fields).ignore();
        }
        Event::CommentUpdated(comment) => {
            pipe.hset(
                base.comment(&comment.id.to_string()),
                "status",
                comment.status.as_str(),
            )
            .ignore();
        }
        Event::CommentModerated(_) => {}
    }
}

pub struct Comments {
    events: String,
    dead: String,
    generations: Generations,
    inbox: Inbox,
}

impl Comments {
    pub fn new(keys: &Keys) -> Comments {
        Comments {
            events: keys.events(Partition::FIRST),
            dead: keys.dead(Partition::FIRST),
            generations: Generations::new(keys, SERVICE, Partition::FIRST),
            inbox: Inbox::new(keys, SERVICE),
        }
    }

    fn plan_event(&self, delivery: &Delivery) -> Plan {
        let envelope = match delivery.event() {
            Ok(Some(envelope)) => envelope,
            Ok(None) => return Plan::Skip,
            Err(reason) => return Plan::Dead(reason),
        };
        let step = |script| {
            Step::new(
                script,
                delivery,
                NAME,
                &self.events,
                &self.dead,
                &envelope.request_id,
            )
            .key(self.generations.pointer())
            .arg(self.generations.prefix())
        };
        match &envelope.event {
            Event::PostCreated(post) => Plan::Run(step(&LEARN_POST).arg(post.id.to_string())),
            Event::CommentModerated(verdict) => Plan::Run(
                step(&RECORD_VERDICT)
                    .arg(verdict.id.to_string())
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
            .key(self.generations.pointer())
            .arg(self.generations.prefix())
            .arg(comment.post_id.to_string())
            .arg(comment.id.to_string())
            .arg(&comment.content)
            .arg(serde_json::to_string(&comment).expect("comments serialize"))
            .arg(Reply::Ok { value: &comment }.to_json());
        Plan::Run(step)
    }

    /// A comment on a post this service has not heard of. The post may have been created just
    /// before the request, its `PostCreated` still on its way to this service (or to another
    /// instance of it): only once every event up to the request's `after` (the end of the log
    /// when it was sent) is applied does "unknown" mean "does not exist".
    async fn unknown_post(
        &mut self,
        connection: &mut Connection,
        delivery: &Delivery,
    ) -> RedisResult<Outcome> {
        let Ok((request, command)) = parse_request(delivery) else {
            return Ok(Outcome::Done);
        };
        if !applied_up_to(connection, &self.events, NAME, &request.after).await? {
            return Ok(Outcome::Later);
        }
        // The post may have arrived in the meantime: try once more before answering.
        if let Plan::Run(step) = self.plan_request(delivery)
            && step.run(connection).await? == "unknown_post"
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
    fn uses(&self, kind: &str) -> bool {
        matches!(kind, "PostCreated" | "CommentModerated")
    }

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
