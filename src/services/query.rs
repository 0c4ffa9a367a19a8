//! The query service: keeps a ready-to-read view of posts with their comments, built from
//! `PostCreated`, `CommentCreated` and `CommentUpdated`; and the reads clients make of it.
//!
//! Keys: `<ns>:query:{<ns>.0}:generation` (the generation the view lives in, `0` until the first
//! `blogctl rebuild query`), and under `<ns>:query:{<ns>.0}:<generation>:` the view itself:
//! `posts` (sorted set of post ids, all with score 0, so ordered by id: UUIDv7 ids sort oldest
//! first), `post:<id>` (hash: id, title), `comments:<post id>` (hash: comment id ->
//! `{"id","content","status"}`). A rebuild fills a new generation while this one serves, then
//! switches the pointer in one step; reads resolve the pointer in the same script, so a reader
//! never sees half of each.
//!
//! Events may be applied out of order when two instances share the work, so each write
//! commutes: a pending comment never overwrites a final status, and comments that arrive
//! before their post wait, unseen, until the post does.

use std::sync::LazyLock;

use redis::{RedisResult, Script};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::generations::{Generations, event_step_script};
use crate::bus::{Delivery, Handler, Plan, Step};
use crate::connection::Connection;
use crate::events::{Event, Status};
use crate::keyspace::{Generation, Keys, Partition, Service, generation_lua};

pub const SERVICE: Service = Service::Query;
pub const NAME: &str = SERVICE.name();

/// ARGV[5]: post id, ARGV[6]: title.
static ADD_POST: LazyLock<Script> = LazyLock::new(|| {
    event_step_script(
        r#"
if not claim() then return 'stale' end
redis.call('HSET', view_post(base, ARGV[5]), 'id', ARGV[5], 'title', ARGV[6])
redis.call('ZADD', view_posts(base), 0, ARGV[5])
return 'applied'
"#,
    )
});

/// ARGV[5]: post id, ARGV[6]: comment id, ARGV[7]: its view, ARGV[8]: '1' when the status is
/// final (it then replaces whatever is there; a pending one never does).
static PUT_COMMENT: LazyLock<Script> = LazyLock::new(|| {
    event_step_script(
        r#"
if not claim() then return 'stale' end
local comments = view_comments(base, ARGV[5])
if ARGV[8] == '1' then
  redis.call('HSET', comments, ARGV[6], ARGV[7])
else
  redis.call('HSETNX', comments, ARGV[6], ARGV[7])
end
return 'applied'
"#,
    )
});

/// Reads posts with their comments from the current generation. KEYS[1]: the generation
/// pointer; ARGV[1]: the prefix; ARGV[2]: `ids` to read the posts ARGV[4..], else the start of a
/// ZRANGE BYLEX (`-` or `(<id>`) with ARGV[3] the most to read (-1: all).
static READ_POSTS: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "#!lua flags=no-writes\n{}{}",
        generation_lua(),
        r#"local base = generation_base(ARGV[1], redis.call('GET', KEYS[1]))
local ids
if ARGV[2] == 'ids' then
  ids = {unpack(ARGV, 4)}
else
  ids = redis.call('ZRANGE', view_posts(base), ARGV[2], '+', 'BYLEX', 'LIMIT', 0, tonumber(ARGV[3]))
end
local posts = {}
for _, id in ipairs(ids) do
  local title = redis.call('HGET', view_post(base, id), 'title')
  if title then
    posts[#posts + 1] = {id, title, redis.call('HVALS', view_comments(base, id))}
  end
end
return posts
"#
    ))
});

/// One comment's view in the current generation. KEYS[1]: the generation pointer; ARGV[1]: the
/// prefix, ARGV[2]: post id, ARGV[3]: comment id.
static READ_COMMENT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        "#!lua flags=no-writes\n{}{}",
        generation_lua(),
        r#"local base = generation_base(ARGV[1], redis.call('GET', KEYS[1]))
return redis.call('HGET', view_comments(base, ARGV[2]), ARGV[3])
"#
    ))
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
    generations: Generations,
}

impl View {
    pub fn new(keys: &Keys) -> View {
        View {
            generations: Generations::new(keys, SERVICE, Partition::FIRST),
        }
    }

    /// Posts oldest first, with their comments: `limit` posts after the post `after`.
    pub async fn list(
        &self,
        connection: &mut Connection,
        after: Option<Uuid>,
        limit: Option<usize>,
    ) -> RedisResult<Vec<PostView>> {
        let start = after.map_or("-".to_owned(), |id| format!("({id}"));
        let limit = limit.map_or(-1, |limit| limit as i64);
        let posts: Vec<(String, String, Vec<String>)> = READ_POSTS
            .key(self.generations.pointer())
            .arg(self.generations.prefix())
            .arg(start)
            .arg(limit)
            .invoke_async(connection)
            .await?;
        Ok(posts.into_iter().filter_map(post_view).collect())
    }

    /// One post with its comments, if the view has it.
    pub async fn get(
        &self,
        connection: &mut Connection,
        id: Uuid,
    ) -> RedisResult<Option<PostView>> {
        let posts: Vec<(String, String, Vec<String>)> = READ_POSTS
            .key(self.generations.pointer())
            .arg(self.generations.prefix())
            .arg("ids")
            .arg(0)
            .arg(id.to_string())
            .invoke_async(connection)
            .await?;
        Ok(posts.into_iter().find_map(post_view))
    }

    /// A comment's status in the view, if the view has it.
    pub async fn comment_status(
        &self,
        connection: &mut Connection,
        post_id: Uuid,
        comment_id: Uuid,
    ) -> RedisResult<Option<Status>> {
        let view: Option<String> = READ_COMMENT
            .key(self.generations.pointer())
            .arg(self.generations.prefix())
            .arg(post_id.to_string())
            .arg(comment_id.to_string())
            .invoke_async(connection)
            .await?;
        Ok(view
            .and_then(|view| serde_json::from_str::<CommentView>(&view).ok())
            .map(|c| c.status))
    }
}

/// A post as the read script returns it, comments in id (creation) order.
fn post_view((id, title, comments): (String, String, Vec<String>)) -> Option<PostView> {
    let mut comments: Vec<CommentView> = comments
        .iter()
        .filter_map(|view| serde_json::from_str(view).ok())
        .collect();
    comments.sort_by_key(|comment| comment.id);
    Some(PostView {
        id: Uuid::parse_str(&id).ok()?,
        title,
        comments,
    })
}

/// The writes that apply one event to the view in a given generation, for a rebuild (which
/// applies the log in order into a generation no reader sees yet). The same rules as the
/// service's steps: a pending comment never replaces a final one.
pub fn rebuild_commands(pipe: &mut redis::Pipeline, base: &Generation, event: &Event) {
    match event {
        Event::PostCreated(post) => {
            let id = post.id.to_string();
            pipe.hset_multiple(
                base.view_post(&id),
                &[("id", id.as_str()), ("title", post.title.as_str())],
            )
            .ignore();
            pipe.zadd(base.view_posts(), &id, 0).ignore();
        }
        Event::CommentCreated(comment) | Event::CommentUpdated(comment) => {
            let key = base.view_comments(&comment.post_id.to_string());
            let view = CommentView {
                id: comment.id,
                content: comment.content.clone(),
                status: comment.status,
            };
            let view = serde_json::to_string(&view).expect("comments serialize");
            if comment.status.is_final() {
                pipe.hset(key, comment.id.to_string(), view).ignore();
            } else {
                pipe.hset_nx(key, comment.id.to_string(), view).ignore();
            }
        }
        Event::CommentModerated(_) => {}
    }
}

pub struct Query {
    events: String,
    dead: String,
    view: View,
}

impl Query {
    pub fn new(keys: &Keys) -> Query {
        Query {
            events: keys.events(Partition::FIRST),
            dead: keys.dead(Partition::FIRST),
            view: View::new(keys),
        }
    }
}

impl Handler for Query {
    fn uses(&self, kind: &str) -> bool {
        matches!(kind, "PostCreated" | "CommentCreated" | "CommentUpdated")
    }

    fn plan(&mut self, delivery: &Delivery) -> Plan {
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
            .key(self.view.generations.pointer())
            .arg(self.view.generations.prefix())
        };
        match &envelope.event {
            Event::PostCreated(post) => {
                Plan::Run(step(&ADD_POST).arg(post.id.to_string()).arg(&post.title))
            }
            Event::CommentCreated(comment) | Event::CommentUpdated(comment) => {
                let view = CommentView {
                    id: comment.id,
                    content: comment.content.clone(),
                    status: comment.status,
                };
                Plan::Run(
                    step(&PUT_COMMENT)
                        .arg(comment.post_id.to_string())
                        .arg(comment.id.to_string())
                        .arg(serde_json::to_string(&view).expect("comments serialize"))
                        .arg(if comment.status.is_final() { "1" } else { "0" }),
                )
            }
            Event::CommentModerated(_) => Plan::Skip,
        }
    }
}
