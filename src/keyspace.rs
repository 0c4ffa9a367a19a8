//! The Redis keyspace: the only code that formats a key name, the tests' included.
//!
//! Every key of a namespace carries the hash tag of its partition, `{<ns>.<p>}`, so that every
//! atomic step (a Lua script touching a stream and a service's keys) stays in one Redis Cluster
//! slot. A namespace has [`Partitions`] (1 to 256), fixed by its first `serve` and stored under
//! [`Keys::partitions`]; a post and its comments live in one partition. Each
//! service's keys live under its own prefix `<ns>:<service>:{<ns>.<p>}:`, so a Redis ACL user per
//! service can be limited to `<ns>:<service>:*` ([`Keys::service_pattern`]).
//!
//! The rebuildable state of the comments and query services lives in generations (see
//! [`Generation`]); the step scripts resolve the live generation inside Redis, so they name
//! its keys in Lua, with the functions [`generation_lua`] writes from the same names.

use std::fmt;

use crate::error::Failure;

/// A service: its name is its consumer group and its key prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    Posts,
    Comments,
    Moderation,
    Query,
}

impl Service {
    pub const ALL: [Service; 4] = [
        Service::Posts,
        Service::Comments,
        Service::Moderation,
        Service::Query,
    ];

    /// The services that produce events, each on a stream of its own ([`Keys::events`]).
    pub const PRODUCERS: [Service; 3] = [Service::Posts, Service::Comments, Service::Moderation];

    pub const fn name(self) -> &'static str {
        match self {
            Service::Posts => "posts",
            Service::Comments => "comments",
            Service::Moderation => "moderation",
            Service::Query => "query",
        }
    }
}

impl fmt::Display for Service {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A partition of the blog: its keys share one hash tag, so one Redis Cluster slot holds it
/// whole. A post and its comments live in one partition ([`Partitions::of_post`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Partition(pub u32);

impl Partition {
    pub const FIRST: Partition = Partition(0);
}

impl fmt::Display for Partition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// How many partitions a namespace has: fixed when it is first served, and stored in Redis
/// ([`Keys::partitions`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partitions(u32);

impl Partitions {
    pub const ONE: Partitions = Partitions(1);
    /// The most partitions a namespace may have: every `serve` process holds two connections
    /// per partition and service it runs.
    pub const MAX: u32 = 256;

    /// `count` partitions, if from 1 to [`Partitions::MAX`].
    pub fn new(count: u32) -> Option<Partitions> {
        (1..=Self::MAX)
            .contains(&count)
            .then_some(Partitions(count))
    }

    pub fn count(self) -> u32 {
        self.0
    }

    /// Every partition, in order.
    pub fn all(self) -> impl DoubleEndedIterator<Item = Partition> + Clone {
        (0..self.0).map(Partition)
    }

    /// The partition of a post, and of its comments: the post id's last 16 hex digits, read
    /// as a number, modulo the partition count.
    pub fn of_post(self, post_id: &uuid::Uuid) -> Partition {
        let low = post_id.as_u128() as u64;
        Partition((low % u64::from(self.0)) as u32)
    }

    /// A partition picked at random: posts spread evenly over the partitions.
    pub fn random(self) -> Partition {
        let random = uuid::Uuid::now_v7().as_u128() as u32;
        Partition(random % self.0)
    }

    /// The partition a new post's request goes to: the FNV-1a hash (64 bits) of its request
    /// id, modulo the partition count. A retry with the same `--request-id` reaches the same
    /// partition, where its answer is remembered; a new request id is random (a UUIDv7), so
    /// posts spread evenly.
    pub fn of_request(self, request_id: &str) -> Partition {
        Partition((fnv1a(request_id.bytes()) % u64::from(self.0)) as u32)
    }

    /// A new post id (a UUIDv7: ordered by time) that falls in `partition`: a fresh id with its
    /// last bits moved to the nearest value of the partition, its random part kept otherwise.
    pub fn new_post_id(self, partition: Partition) -> uuid::Uuid {
        let count = u64::from(self.0);
        loop {
            let id = uuid::Uuid::now_v7().as_u128();
            let low = id as u64;
            // The low 64 bits are the variant (`10`) and 62 random bits: stay within them.
            let Some(moved) = (low - low % count).checked_add(u64::from(partition.0)) else {
                continue;
            };
            if moved >> 62 == low >> 62 {
                let id = uuid::Uuid::from_u128((id & !u128::from(u64::MAX)) | u128::from(moved));
                debug_assert_eq!(self.of_post(&id), partition);
                return id;
            }
        }
    }
}

/// The FNV-1a hash, 64 bits: short, stable and documented, for ids written by anyone.
pub fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

impl fmt::Display for Partitions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Key names for one namespace.
#[derive(Debug, Clone)]
pub struct Keys {
    namespace: String,
}

impl Keys {
    /// Checks the namespace (letters, digits, `-`, `_`; 1 to 64 characters) and builds the names.
    pub fn new(namespace: &str) -> Result<Keys, Failure> {
        let valid = !namespace.is_empty()
            && namespace.len() <= 64
            && namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(Failure::invalid(format!(
                "invalid namespace {namespace:?}: use 1 to 64 letters, digits, '-' or '_'"
            )));
        }
        Ok(Keys {
            namespace: namespace.to_owned(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn tag(&self, partition: Partition) -> String {
        format!("{{{}.{}}}", self.namespace, partition.0)
    }

    /// The events stream `service` writes, and no one else: `<prefix>events`. Its readers
    /// follow it with groups of their own.
    pub fn events(&self, service: Service, partition: Partition) -> String {
        format!("{}events", self.service_prefix(service, partition))
    }

    /// The one events stream of earlier versions, `<ns>:events:{<ns>.<p>}`, which every service
    /// wrote: read by nothing now, only named so that `status` can point at one left behind
    /// and `rebuild` refuse to build over it.
    pub fn shared_events(&self, partition: Partition) -> String {
        format!("{}:events:{}", self.namespace, self.tag(partition))
    }

    /// A pattern matching the shared events stream of earlier versions in every partition.
    pub fn shared_events_pattern(&self) -> String {
        format!("{}:events:{{{}.*}}", self.namespace, self.namespace)
    }

    /// The namespace's partition count ([`Partitions`]), set once by the first `serve`:
    /// `<ns>:partitions:{<ns>.0}`.
    pub fn partitions(&self) -> String {
        format!(
            "{}:partitions:{}",
            self.namespace,
            self.tag(Partition::FIRST)
        )
    }

    /// A pattern matching [`Keys::partitions`] (for ACL key patterns).
    pub fn partitions_pattern(&self) -> String {
        format!("{}:partitions:*", self.namespace)
    }

    /// Dead letters: `<ns>:dead:{<ns>.<p>}`.
    pub fn dead(&self, partition: Partition) -> String {
        format!("{}:dead:{}", self.namespace, self.tag(partition))
    }

    /// The prefix every key of `service` starts with: `<ns>:<service>:{<ns>.<p>}:`.
    pub fn service_prefix(&self, service: Service, partition: Partition) -> String {
        format!("{}:{service}:{}:", self.namespace, self.tag(partition))
    }

    /// A pattern matching every key of `service`, in every partition (for ACL key patterns).
    pub fn service_pattern(&self, service: Service) -> String {
        format!("{}:{service}:*", self.namespace)
    }

    /// A pattern matching `producer`'s events stream in every partition (for ACL key patterns).
    pub fn events_pattern(&self, producer: Service) -> String {
        format!(
            "{}:{producer}:{{{}.*}}:events",
            self.namespace, self.namespace
        )
    }

    /// A pattern matching `service`'s inbox in every partition (for ACL key patterns).
    pub fn inbox_pattern(&self, service: Service) -> String {
        format!(
            "{}:{service}:{{{}.*}}:inbox",
            self.namespace, self.namespace
        )
    }

    /// A pattern matching the liveness keys of `service`'s consumers in every partition.
    pub fn alive_pattern(&self, service: Service) -> String {
        format!(
            "{}:{service}:{{{}.*}}:alive:*",
            self.namespace, self.namespace
        )
    }

    /// A pattern matching the dead-letter streams of every partition.
    pub fn dead_pattern(&self) -> String {
        format!("{}:dead:*", self.namespace)
    }

    /// A pattern matching every reply key of every partition.
    pub fn replies_pattern(&self) -> String {
        format!("{}:replies:*", self.namespace)
    }

    /// A pattern matching every key of the namespace.
    pub fn namespace_pattern(&self) -> String {
        format!("{}:*", self.namespace)
    }

    /// The request stream a service reads its commands from: `<prefix>inbox`.
    pub fn inbox(&self, service: Service, partition: Partition) -> String {
        format!("{}inbox", self.service_prefix(service, partition))
    }

    /// Tries of redelivered entries, by `<stream>/<entry id>`: `<prefix>attempts`.
    pub fn attempts(&self, service: Service, partition: Partition) -> String {
        format!("{}attempts", self.service_prefix(service, partition))
    }

    /// The prefix of the liveness keys of a service's consumers: `<prefix>alive:`; a running
    /// consumer keeps `<prefix>alive:<consumer>` with a short expiry.
    pub fn alive_prefix(&self, service: Service, partition: Partition) -> String {
        format!("{}alive:", self.service_prefix(service, partition))
    }

    /// Where a service remembers its answer to one request id: `<prefix>request:<id>`.
    pub fn answer(&self, service: Service, partition: Partition, request_id: &str) -> String {
        format!(
            "{}request:{request_id}",
            self.service_prefix(service, partition)
        )
    }

    /// The posts service's record of one post: `<ns>:posts:{<ns>.<p>}:post:<id>`.
    pub fn post(&self, partition: Partition, id: &str) -> String {
        format!(
            "{}post:{id}",
            self.service_prefix(Service::Posts, partition)
        )
    }

    /// Where the answer to one request is left for the client: `name` is the request's
    /// `reply_to` (a UUID the client picks), or its inbox entry id when it has none.
    pub fn reply(&self, partition: Partition, name: &str) -> String {
        format!("{}:replies:{}:{name}", self.namespace, self.tag(partition))
    }

    /// The key naming the live generation of a service's rebuildable state: `<prefix>generation`.
    pub fn generation_pointer(&self, service: Service, partition: Partition) -> String {
        format!("{}generation", self.service_prefix(service, partition))
    }

    /// The last generation number handed out: `<prefix>generations`.
    pub fn generation_counter(&self, service: Service, partition: Partition) -> String {
        format!("{}generations", self.service_prefix(service, partition))
    }

    /// The lock a running `blogctl rebuild` of `service` holds: `<prefix>rebuilding`.
    pub fn rebuild_lock(&self, service: Service, partition: Partition) -> String {
        format!("{}rebuilding", self.service_prefix(service, partition))
    }

    /// One generation of a service's rebuildable state: `<prefix><generation>:`.
    pub fn generation(&self, service: Service, partition: Partition, number: u64) -> Generation {
        Generation {
            base: format!("{}{number}:", self.service_prefix(service, partition)),
        }
    }
}

/// The keys of one generation of a service's rebuildable state, under its base
/// `<ns>:<service>:{<ns>.<p>}:<generation>:`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    base: String,
}

/// The names of a generation's keys, after its base; [`generation_lua`] writes the same
/// names as Lua functions.
const VIEW_POSTS: &str = "posts";
const VIEW_POST: &str = "post:";
const VIEW_COMMENTS: &str = "comments:";
const KNOWN_POSTS: &str = "posts";
const COMMENT: &str = "comment:";
const COMMENT_IDS: &str = "comments";

impl Generation {
    /// The prefix of every key of this generation.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Query: the post ids, a sorted set with all scores 0 (ordered by id, so oldest first).
    pub fn view_posts(&self) -> String {
        format!("{}{VIEW_POSTS}", self.base)
    }

    /// Query: one post, a hash (`id`, `title`).
    pub fn view_post(&self, id: &str) -> String {
        format!("{}{VIEW_POST}{id}", self.base)
    }

    /// Query: one post's comments, a hash (comment id -> `{"id","content","status"}`).
    pub fn view_comments(&self, post_id: &str) -> String {
        format!("{}{VIEW_COMMENTS}{post_id}", self.base)
    }

    /// Comments: the post ids it learnt from `PostCreated`, a set.
    pub fn known_posts(&self) -> String {
        format!("{}{KNOWN_POSTS}", self.base)
    }

    /// Comments: one comment, a hash (`id`, `postId`, `content`, `status`).
    pub fn comment(&self, id: &str) -> String {
        format!("{}{COMMENT}{id}", self.base)
    }

    /// Comments: the ids of this generation's [`Generation::comment`] keys, a set, written with
    /// each of them by the same apply functions: dropping the generation finds its comments
    /// here, without scanning the keyspace.
    pub fn comment_ids(&self) -> String {
        format!("{}{COMMENT_IDS}", self.base)
    }
}

/// Lua that names a generation's keys as [`Generation`] does: `generation_base(prefix,
/// pointer)` from the service's prefix and the generation pointer's value (`nil` before the
/// first rebuild: generation 0), then one function per key from that base.
pub fn generation_lua() -> String {
    format!(
        r#"local function generation_base(prefix, pointer) return prefix .. (pointer or '0') .. ':' end
local function view_posts(base) return base .. '{VIEW_POSTS}' end
local function view_post(base, id) return base .. '{VIEW_POST}' .. id end
local function view_comments(base, post_id) return base .. '{VIEW_COMMENTS}' .. post_id end
local function known_posts(base) return base .. '{KNOWN_POSTS}' end
local function comment_key(base, id) return base .. '{COMMENT}' .. id end
local function comment_ids(base) return base .. '{COMMENT_IDS}' end
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Partition = Partition::FIRST;

    #[test]
    fn names_share_their_partitions_hash_tag() {
        let keys = Keys::new("blog").unwrap();
        assert_eq!(keys.events(Service::Posts, P), "blog:posts:{blog.0}:events");
        assert_eq!(keys.dead(Partition(3)), "blog:dead:{blog.3}");
        assert_eq!(keys.inbox(Service::Posts, P), "blog:posts:{blog.0}:inbox");
        assert_eq!(keys.reply(P, "1-2"), "blog:replies:{blog.0}:1-2");
        assert_eq!(
            keys.answer(Service::Comments, P, "r"),
            "blog:comments:{blog.0}:request:r"
        );
        assert_eq!(
            keys.generation(Service::Query, P, 2).view_post("x"),
            "blog:query:{blog.0}:2:post:x"
        );
        assert_eq!(keys.service_pattern(Service::Query), "blog:query:*");
        assert_eq!(
            keys.events_pattern(Service::Posts),
            "blog:posts:{blog.*}:events"
        );
        assert_eq!(
            keys.alive_pattern(Service::Comments),
            "blog:comments:{blog.*}:alive:*"
        );
    }

    #[test]
    fn a_new_post_id_falls_in_its_partition_and_keeps_its_time_order() {
        for count in [1, 2, 3, 8, 255, Partitions::MAX] {
            let partitions = Partitions::new(count).unwrap();
            let mut seen = std::collections::HashSet::new();
            for _ in 0..2000 {
                let partition = partitions.random();
                assert!(partition.0 < count);
                seen.insert(partition);
                let before = uuid::Uuid::now_v7();
                let id = partitions.new_post_id(partition);
                assert_eq!(partitions.of_post(&id), partition);
                assert_eq!(id.get_version_num(), 7);
                assert_eq!(id.get_variant(), uuid::Variant::RFC4122);
                assert!(
                    id.as_u128() >> 64 >= before.as_u128() >> 64,
                    "older than before"
                );
            }
            if count <= 8 {
                assert_eq!(seen.len(), count as usize, "{count} partitions");
            }
        }
        let id: uuid::Uuid = "0190c4b2-6f1e-7abc-8def-0123456789ab".parse().unwrap();
        let partitions = Partitions::new(8).unwrap();
        assert_eq!(
            partitions.of_post(&id),
            Partition((0x8def_0123_4567_89ab_u64 % 8) as u32)
        );
        assert!(Partitions::new(0).is_none() && Partitions::new(Partitions::MAX + 1).is_none());
    }

    #[test]
    fn rejects_namespaces_that_would_break_key_names() {
        for bad in ["", "a:b", "a{b}", "a b", &"x".repeat(65)] {
            assert!(Keys::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_lua_names_match_the_rust_ones() {
        let lua = generation_lua();
        for (function, suffix) in [
            ("view_posts(base)", VIEW_POSTS),
            ("view_post(base, id)", VIEW_POST),
            ("view_comments(base, post_id)", VIEW_COMMENTS),
            ("known_posts(base)", KNOWN_POSTS),
            ("comment_key(base, id)", COMMENT),
            ("comment_ids(base)", COMMENT_IDS),
        ] {
            assert!(
                lua.contains(&format!("function {function} return base .. '{suffix}'")),
                "{function}"
            );
        }
    }

    /// Every key the README's keyspace table lists is built here as the table says.
    #[test]
    fn the_readme_keyspace_table_matches() {
        let readme = include_str!("../README.md");
        let table =
            &readme[readme.find("## The keyspace").unwrap()..readme.find("## Requests").unwrap()];
        let keys = Keys::new("NS").unwrap();
        let generation = |service| keys.generation(service, P, 7);
        let names = [
            keys.events(Service::Posts, P),
            keys.events(Service::Comments, P),
            keys.events(Service::Moderation, P),
            keys.dead(P),
            keys.inbox(Service::Posts, P),
            keys.post(P, "<id>"),
            keys.answer(Service::Posts, P, "<request id>"),
            keys.inbox(Service::Comments, P),
            generation(Service::Comments).comment("<id>"),
            generation(Service::Comments).known_posts(),
            generation(Service::Comments).comment_ids(),
            keys.answer(Service::Comments, P, "<request id>"),
            generation(Service::Query).view_posts(),
            generation(Service::Query).view_post("<id>"),
            generation(Service::Query).view_comments("<post id>"),
            keys.generation_pointer(Service::Query, P)
                .replace("query", "<service>"),
            keys.generation_counter(Service::Query, P)
                .replace("query", "<service>"),
            keys.rebuild_lock(Service::Query, P)
                .replace("query", "<service>"),
            keys.attempts(Service::Query, P)
                .replace("query", "<service>"),
            format!("{}<consumer>", keys.alive_prefix(Service::Query, P))
                .replace("query", "<service>"),
            keys.reply(P, "<reply_to>"),
        ];
        for name in names {
            let name = name.replace("{NS.0}", "{NS.<p>}");
            let documented = format!("`{}", name.replace("NS", "<ns>").replace(":7:", ":<g>:"));
            assert!(
                table.contains(&documented),
                "{documented} is not in the README's table"
            );
        }
        let count = keys.partitions().replace("NS", "<ns>");
        assert!(table.contains(&format!("`{count}`")), "{count}");
    }
}
