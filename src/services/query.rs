//! The query service: keeps a ready-to-read view of posts with their comments, built from
//! `PostCreated`, `CommentCreated` and `CommentUpdated`; and the reads clients make of it.
//!
//! Each partition has a view of its own posts ([`View`]); [`Views`] merges them for clients.
//!
//! Keys: `<ns>:query:{<ns>.<p>}:generation` (the generation the view lives in, `0` until the first
//! `blogctl rebuild query`), and under `<ns>:query:{<ns>.<p>}:<generation>:` the view itself:
//! `posts` (sorted set of post ids, all with score 0, so ordered by id: UUIDv7 ids sort oldest
//! first), `post:<id>` (hash: id, title), `comments:<post id>` (hash: comment id ->
//! `{"id","content","status"}`). A rebuild fills a new generation while this one serves, then
//! switches the pointer in one step; reads resolve the pointer in the same script, so a reader
//! never sees half of each.
//!
//! The reads are read-only scripts run with `EVALSHA_RO` ([`ReadScript`]), so a client's Redis
//! user needs only read permission on the view's keys (`%R~<ns>:query:*`). Each touches
//! (`EXISTS`, with the pointer) the view keys it reads before it reads them, so that on a
//! Cluster slot half moved it is refused rather than answered from half the keys (see
//! `lua/query_read_posts.lua`).
//!
//! Events may be applied out of order when two instances share the work, so each write
//! commutes: a pending comment never overwrites a final status, and comments that arrive
//! before their post wait, unseen, until the post does.

use std::collections::VecDeque;
use std::sync::LazyLock;

use redis::{FromRedisValue, RedisResult, Script};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::generations::{self, ApplyCall, Calls, Generations, Rebuilder};
use crate::bus::{Delivery, Handler, Plan, Step, StepKeys, StepScript};
use crate::connection::Connection;
use crate::events::{Event, EventKind, Status};
use crate::keyspace::{Keys, Partition, Partitions, Service, generation_lua};

pub const SERVICE: Service = Service::Query;
pub const NAME: &str = SERVICE.name();

/// The view's apply functions (`add_post`, `put_comment`), for the live steps and rebuilds.
const APPLY: &str = include_str!("lua/query_apply.lua");

/// The live steps: each calls one apply function, with the arguments of [`apply_call`].
static ADD_POST: LazyLock<StepScript> = LazyLock::new(|| {
    generations::step_script(
        &[],
        &["post_id", "title"],
        APPLY,
        include_str!("lua/query_add_post.lua"),
    )
});
static PUT_COMMENT: LazyLock<StepScript> = LazyLock::new(|| {
    generations::step_script(
        &[],
        &["post_id", "comment_id", "view", "final"],
        APPLY,
        include_str!("lua/query_put_comment.lua"),
    )
});

/// Applies batches of events for `blogctl rebuild query`, with the same apply functions.
pub static REBUILDER: LazyLock<Rebuilder> = LazyLock::new(|| Rebuilder::new(APPLY));

/// How an event changes the view: which apply function, with which arguments. `None`: it does
/// not change it.
pub fn apply_call(event: &Event) -> Option<ApplyCall> {
    match event {
        Event::PostCreated(post) => Some(ApplyCall {
            function: "add_post",
            args: vec![post.id.to_string(), post.title.clone()],
        }),
        Event::CommentCreated(comment) | Event::CommentUpdated(comment) => {
            let view = CommentView {
                id: comment.id,
                content: comment.content.clone(),
                status: comment.status,
            };
            let final_status = if comment.status.is_final() { "1" } else { "0" };
            Some(ApplyCall {
                function: "put_comment",
                args: vec![
                    comment.post_id.to_string(),
                    comment.id.to_string(),
                    serde_json::to_string(&view).expect("comments serialize"),
                    final_status.to_owned(),
                ],
            })
        }
        Event::CommentModerated(_) => None,
    }
}

/// The view's calls for a run of events (see [`Calls`]): a comment's final status replaces the
/// pending one it was created with; a pending update changes nothing (`HSETNX`).
pub fn calls() -> Calls {
    Calls::new(apply_call, |created, update, comment| {
        if comment.status.is_final() {
            *created = update;
        }
    })
}

/// Reads posts with their comments from the current generation. KEYS[1]: the generation
/// pointer; ARGV[1]: the prefix; ARGV[2]: `ids` to read the posts ARGV[4..], else the start of a
/// ZRANGE BYLEX (`-` or `(<id>`) with ARGV[3] the most to read (-1: all).
static READ_POSTS: LazyLock<ReadScript> =
    LazyLock::new(|| ReadScript::new(include_str!("lua/query_read_posts.lua")));

/// One comment's view in the current generation. KEYS[1]: the generation pointer; ARGV[1]: the
/// prefix, ARGV[2]: post id, ARGV[3]: comment id.
static READ_COMMENT: LazyLock<ReadScript> =
    LazyLock::new(|| ReadScript::new(include_str!("lua/query_read_comment.lua")));

/// A script that only reads the view, run with `EVALSHA_RO`: Redis lets it call read-only
/// commands only, and asks of the client's user only read permission on the keys it declares
/// (and on those its commands touch). `EVALSHA`, which [`Script`] sends, asks for write
/// permission on every declared key, whatever the script does.
#[derive(Debug)]
struct ReadScript {
    /// Its text, after the functions naming a generation's keys, flagged `no-writes`: Redis
    /// refuses a script declared with `#!lua` but without that flag with `EVALSHA_RO`.
    code: String,
    /// Its SHA1, by which Redis caches it.
    hash: String,
}

impl ReadScript {
    fn new(body: &str) -> ReadScript {
        let code = format!("#!lua flags=no-writes\n{}{body}", generation_lua());
        let hash = Script::new(&code).get_hash().to_owned();
        ReadScript { code, hash }
    }

    /// Runs the script with `keys` and `args`: `EVALSHA_RO`, one round trip while Redis has it
    /// cached; on `NOSCRIPT` (a Redis restarted or flushed since), `EVAL_RO` with its text,
    /// which caches it again (and needs no `SCRIPT LOAD` permission).
    async fn read<T: FromRedisValue>(
        &self,
        connection: &mut Connection,
        keys: &[&str],
        args: &[&str],
    ) -> RedisResult<T> {
        crate::busy_poll::note_work();
        match ReadScript::command("EVALSHA_RO", &self.hash, keys, args)
            .query_async(connection)
            .await
        {
            Err(error)
                if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
            {
                ReadScript::command("EVAL_RO", &self.code, keys, args)
                    .query_async(connection)
                    .await
            }
            result => result,
        }
    }

    /// `<name> <script> <number of keys> <keys...> <args...>`.
    fn command(name: &str, script: &str, keys: &[&str], args: &[&str]) -> redis::Cmd {
        let mut command = redis::cmd(name);
        command.arg(script).arg(keys.len()).arg(keys).arg(args);
        command
    }
}

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
    pub fn new(keys: &Keys, partition: Partition) -> View {
        View {
            generations: Generations::new(keys, SERVICE, partition),
        }
    }

    /// The partition whose view this is.
    pub fn partition(&self) -> Partition {
        self.generations.partition()
    }

    /// Posts oldest first, with their comments: `limit` posts after the post `after`.
    pub async fn list(
        &self,
        connection: &mut Connection,
        after: Option<Uuid>,
        limit: Option<usize>,
    ) -> RedisResult<Vec<PostView>> {
        let start = after.map_or("-".to_owned(), |id| format!("({id}"));
        let limit = limit.map_or(-1, |limit| limit as i64).to_string();
        let posts: Vec<(String, String, Vec<String>)> = READ_POSTS
            .read(
                connection,
                &[self.generations.pointer()],
                &[self.generations.prefix(), &start, &limit],
            )
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
            .read(
                connection,
                &[self.generations.pointer()],
                &[self.generations.prefix(), "ids", "0", &id.to_string()],
            )
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
            .read(
                connection,
                &[self.generations.pointer()],
                &[
                    self.generations.prefix(),
                    &post_id.to_string(),
                    &comment_id.to_string(),
                ],
            )
            .await?;
        Ok(view
            .and_then(|view| serde_json::from_str::<CommentView>(&view).ok())
            .map(|c| c.status))
    }
}

/// The view of every partition: a post's own, or all of them merged oldest first.
#[derive(Debug, Clone)]
pub struct Views {
    partitions: Partitions,
    views: Vec<View>,
}

impl Views {
    pub fn new(keys: &Keys, partitions: Partitions) -> Views {
        Views {
            partitions,
            views: partitions
                .all()
                .map(|partition| View::new(keys, partition))
                .collect(),
        }
    }

    /// The view of the partition `post_id` lives in.
    pub fn of_post(&self, post_id: &Uuid) -> &View {
        &self.views[self.partitions.of_post(post_id).0 as usize]
    }

    /// Every post after `after`, oldest first across partitions, read `chunk` posts of a
    /// partition at a time, and only when that partition's are needed next.
    pub fn merged(&self, after: Option<Uuid>, chunk: usize) -> Merged<'_> {
        Merged {
            views: &self.views,
            read: self
                .views
                .iter()
                .map(|_| Partial {
                    buffered: VecDeque::new(),
                    after,
                    done: false,
                })
                .collect(),
            chunk: chunk.max(1),
        }
    }
}

/// Posts of every partition merged in id order (see [`Views::merged`]).
pub struct Merged<'a> {
    views: &'a [View],
    read: Vec<Partial>,
    chunk: usize,
}

/// What [`Merged`] has read of one partition.
struct Partial {
    buffered: VecDeque<PostView>,
    after: Option<Uuid>,
    done: bool,
}

impl Merged<'_> {
    /// The next post in id order, if any.
    pub async fn next(&mut self, connection: &mut Connection) -> RedisResult<Option<PostView>> {
        for (view, partial) in self.views.iter().zip(&mut self.read) {
            if partial.buffered.is_empty() && !partial.done {
                let posts = view
                    .list(connection, partial.after, Some(self.chunk))
                    .await?;
                partial.done = posts.len() < self.chunk;
                partial.after = posts.last().map(|post| post.id).or(partial.after);
                partial.buffered.extend(posts);
            }
        }
        let oldest = self
            .read
            .iter()
            .enumerate()
            .filter_map(|(index, partial)| Some((partial.buffered.front()?.id, index)))
            .min();
        Ok(oldest.and_then(|(_, index)| self.read[index].buffered.pop_front()))
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

pub struct Query {
    step_keys: StepKeys,
    view: View,
}

impl Query {
    pub fn new(keys: &Keys, partition: Partition) -> Query {
        Query {
            step_keys: StepKeys::new(keys, SERVICE, partition),
            view: View::new(keys, partition),
        }
    }
}

impl Handler for Query {
    fn uses(&self, kind: EventKind) -> bool {
        matches!(
            kind,
            EventKind::PostCreated | EventKind::CommentCreated | EventKind::CommentUpdated
        )
    }

    fn plan(&mut self, delivery: &Delivery) -> Plan {
        let envelope = match delivery.event() {
            Ok(Some(envelope)) => envelope,
            Ok(None) => return Plan::Skip,
            Err(reason) => return Plan::Dead(reason),
        };
        let Some(call) = apply_call(&envelope.event) else {
            return Plan::Skip;
        };
        let script = match call.function {
            "add_post" => &ADD_POST,
            _ => &PUT_COMMENT,
        };
        let step = Step::new(script, &self.step_keys, delivery, &envelope.request_id);
        Plan::Run(self.view.generations.fill(step).rest(call.args))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{Comment, Post};

    fn comment(status: Status) -> Comment {
        Comment {
            id: Uuid::now_v7(),
            post_id: Uuid::now_v7(),
            content: "hi".to_owned(),
            status,
        }
    }

    #[test]
    fn each_event_maps_to_one_apply_function_of_the_view() {
        let post = Post {
            id: Uuid::now_v7(),
            title: "t".to_owned(),
        };
        let call = apply_call(&Event::PostCreated(post.clone())).unwrap();
        assert_eq!(call.function, "add_post");
        assert_eq!(call.args, [post.id.to_string(), "t".to_owned()]);
        // Only a final status replaces what is there: a late `CommentCreated` never undoes a
        // verdict.
        let pending = apply_call(&Event::CommentCreated(comment(Status::Pending))).unwrap();
        let approved = apply_call(&Event::CommentUpdated(comment(Status::Approved))).unwrap();
        assert_eq!(
            (pending.function, approved.function),
            ("put_comment", "put_comment")
        );
        assert_eq!(
            (pending.args[3].as_str(), approved.args[3].as_str()),
            ("0", "1")
        );
        assert!(apply_call(&Event::CommentModerated(comment(Status::Rejected))).is_none());
    }

    /// What a client's user needs besides `EVALSHA_RO` and `EVAL_RO` is this list (the README's
    /// Security section gives it); `EVALSHA_RO` would refuse any write anyway.
    #[test]
    fn the_reads_are_flagged_no_writes_and_call_only_read_only_commands() {
        for script in [&*READ_POSTS, &*READ_COMMENT] {
            assert!(script.code.starts_with("#!lua flags=no-writes\n"));
            for call in script.code.split("redis.call('").skip(1) {
                let command = call.split('\'').next().unwrap();
                assert!(
                    ["GET", "EXISTS", "ZRANGE", "HGET", "HVALS"].contains(&command),
                    "{command} in a read script"
                );
            }
        }
    }
}
