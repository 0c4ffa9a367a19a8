//! The query service: keeps a ready-to-read view of posts with their comments, built from
//! `PostCreated`, `CommentCreated` and `CommentUpdated`; and the reads clients make of it.
//!
//! Keys: `<ns>:query:{<ns>.0}:posts` (sorted set of post ids, all with score 0, so ordered by id:
//! UUIDv7 ids sort oldest first), `...:post:<id>` (hash: id, title), `...:comments:<post id>`
//! (hash: comment id -> `{"id","content","status"}`).
//!
//! Events may be applied out of order when two instances share the work, so each write
//! commutes: a pending comment never overwrites a final status, and comments that arrive
//! before their post wait, unseen, until the post does.

use std::sync::LazyLock;

use redis::{AsyncCommands, RedisResult, Script};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::bus::{Delivery, Handler, Plan, Step, step_script};
use crate::connection::Connection;
use crate::events::{Event, Status};
use crate::keys::Keys;

pub const NAME: &str = "query";

/// KEYS[3]: the post index, KEYS[4]: the post's hash. ARGV[4]: id, ARGV[5]: title.
static ADD_POST: LazyLock<Script> = LazyLock::new(|| {
    step_script(
        r#"
redis.call('HSET', KEYS[4], 'id', ARGV[4], 'title', ARGV[5])
redis.call('ZADD', KEYS[3], 0, ARGV[4])
settle()
return 'applied'
"#,
    )
});

/// KEYS[3]: the post's comments. ARGV[4]: comment id, ARGV[5]: its view, ARGV[6]: '1' when the
/// status is final (it then replaces whatever is there; a pending one never does).
static PUT_COMMENT: LazyLock<Script> = LazyLock::new(|| {
    step_script(
        r#"
if ARGV[6] == '1' then
  redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
else
  redis.call('HSETNX', KEYS[3], ARGV[4], ARGV[5])
end
settle()
return 'applied'
"#,
    )
});

/// A post as the view shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PostView {
    pub id: Uuid,
    pub title: String,
    pub comments: Vec<CommentView>,
}

/// A comment as the view shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommentView {
    pub id: Uuid,
    pub content: String,
    pub status: Status,
}

/// The query keyspace, for the service that writes it and the clients that read it.
#[derive(Debug, Clone)]
pub struct View {
    prefix: String,
}

impl View {
    pub fn new(keys: &Keys) -> View {
        View {
            prefix: keys.service_prefix(NAME),
        }
    }

    fn index(&self) -> String {
        format!("{}posts", self.prefix)
    }

    fn post_key(&self, id: Uuid) -> String {
        format!("{}post:{id}", self.prefix)
    }

    fn comments_key(&self, post_id: Uuid) -> String {
        format!("{}comments:{post_id}", self.prefix)
    }

    /// Posts oldest first, with their comments: `limit` posts after the post `after`.
    pub async fn list(
        &self,
        connection: &mut Connection,
        after: Option<Uuid>,
        limit: Option<usize>,
    ) -> RedisResult<Vec<PostView>> {
        let start = after.map_or("-".to_owned(), |id| format!("({id}"));
        let mut command = redis::cmd("ZRANGE");
        command.arg(self.index()).arg(start).arg("+").arg("BYLEX");
        if let Some(limit) = limit {
            command.arg("LIMIT").arg(0).arg(limit);
        }
        let ids: Vec<String> = command.query_async(connection).await?;
        let ids: Vec<Uuid> = ids
            .iter()
            .filter_map(|id| Uuid::parse_str(id).ok())
            .collect();
        self.read_posts(connection, &ids)
            .await
            .map(|posts| posts.into_iter().flatten().collect())
    }

    /// One post with its comments, if the view has it.
    pub async fn get(
        &self,
        connection: &mut Connection,
        id: Uuid,
    ) -> RedisResult<Option<PostView>> {
        Ok(self.read_posts(connection, &[id]).await?.pop().flatten())
    }

    /// A comment's status in the view, if the view has it.
    pub async fn comment_status(
        &self,
        connection: &mut Connection,
        post_id: Uuid,
        comment_id: Uuid,
    ) -> RedisResult<Option<Status>> {
        let view: Option<String> = connection
            .hget(self.comments_key(post_id), comment_id.to_string())
            .await?;
        Ok(view
            .and_then(|view| serde_json::from_str::<CommentView>(&view).ok())
            .map(|c| c.status))
    }

    /// Reads posts in one round trip.
    async fn read_posts(
        &self,
        connection: &mut Connection,
        ids: &[Uuid],
    ) -> RedisResult<Vec<Option<PostView>>> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hget(self.post_key(*id), "title")
                .hvals(self.comments_key(*id));
        }
        let replies: Vec<(Option<String>, Vec<String>)> = pipe.query_async(connection).await?;
        let posts = ids
            .iter()
            .zip(replies)
            .map(|(id, (title, comments))| {
                let title = title?;
                let mut comments: Vec<CommentView> = comments
                    .iter()
                    .filter_map(|view| serde_json::from_str(view).ok())
                    .collect();
                comments.sort_by_key(|comment| comment.id);
                Some(PostView {
                    id: *id,
                    title,
                    comments,
                })
            })
            .collect();
        Ok(posts)
    }
}

pub struct Query {
    events: String,
    view: View,
}

impl Query {
    pub fn new(keys: &Keys) -> Query {
        Query {
            events: keys.events(),
            view: View::new(keys),
        }
    }

    pub fn streams(keys: &Keys) -> Vec<String> {
        vec![keys.events()]
    }
}

impl Handler for Query {
    fn plan(&mut self, delivery: &Delivery) -> Plan {
        let envelope = match delivery.event() {
            Ok(Some(envelope)) => envelope,
            Ok(None) => return Plan::Skip,
            Err(reason) => return Plan::Dead(reason),
        };
        let step = |script| Step::new(script, delivery, NAME, &self.events, &envelope.request_id);
        match &envelope.event {
            Event::PostCreated(post) => Plan::Run(
                step(&ADD_POST)
                    .key(self.view.index())
                    .key(self.view.post_key(post.id))
                    .arg(post.id.to_string())
                    .arg(&post.title),
            ),
            Event::CommentCreated(comment) | Event::CommentUpdated(comment) => {
                let view = CommentView {
                    id: comment.id,
                    content: comment.content.clone(),
                    status: comment.status,
                };
                Plan::Run(
                    step(&PUT_COMMENT)
                        .key(self.view.comments_key(comment.post_id))
                        .arg(comment.id.to_string())
                        .arg(serde_json::to_string(&view).expect("comments serialize"))
                        .arg(if comment.status.is_final() { "1" } else { "0" }),
                )
            }
            Event::CommentModerated(_) => Plan::Skip,
        }
    }
}
