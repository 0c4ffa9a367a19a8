//! A Redis Cluster: `--redis-url` naming any node works, the client following `MOVED`. Every key
//! of a partition shares one hash tag, `{blog.<p>}`, so each command and script goes to one
//! node, and a blog of 8 partitions spreads over the masters. (Slots moved and masters failed
//! over under load: `cluster_load.rs`.)

use std::process::{Command, Stdio};
use std::time::Duration;

use blogctl::keyspace::{Partition, Partitions};

use crate::support::{Blog, PATIENCE, RedisServer, blogctl, wait_until};

/// A blog on a 3-master Cluster, its `redis` the master serving the namespace's slot (so the
/// tests' own inspections find every key there); `extra`: arguments for every node.
pub fn blog_on_cluster(extra: &[&str]) -> Blog {
    let mut cluster = RedisCluster::start(3, extra);
    let serving = cluster.serving("{blog.0}");
    let redis = cluster.nodes.remove(serving);
    Blog {
        others: cluster.nodes,
        ..Blog::on(redis)
    }
}

/// How many keys one `MIGRATE` moves while a slot moves.
const MIGRATE_BATCH: usize = 5;

/// A loopback Redis Cluster of masters, each with the same number of replicas; every node is
/// killed on drop.
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// `masters` masters and no replicas.
    pub fn start(masters: usize, extra: &[&str]) -> RedisCluster {
        RedisCluster::start_with_replicas(masters, 0, extra)
    }

    /// `masters` masters with `replicas` replicas each (`redis-cli --cluster create` picks the
    /// pairs: see [`RedisCluster::replica_of`]); returns once every node sees every slot served
    /// and every replica is in sync with its master.
    pub fn start_with_replicas(masters: usize, replicas: usize, extra: &[&str]) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..masters * (1 + replicas))
            .map(|_| RedisServer::start_cluster_node(extra))
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli");
        assert!(created.status.success(), "{created:?}");
        let cluster = RedisCluster { nodes };
        let ready = wait_until(PATIENCE, || {
            cluster.nodes.iter().all(|node| {
                let info = |section: &str| -> String {
                    redis::cmd(section)
                        .arg(if section == "CLUSTER" {
                            "INFO"
                        } else {
                            "replication"
                        })
                        .query(&mut node.connection())
                        .unwrap_or_default()
                };
                let replication = info("INFO");
                info("CLUSTER").contains("cluster_state:ok")
                    && (replication.contains("role:master")
                        || replication.contains("master_link_status:up"))
            })
        });
        assert!(
            ready,
            "the cluster never reached cluster_state:ok, replicas in sync"
        );
        cluster
    }

    /// A direct connection to the first node that answers (some may have been killed).
    pub fn any_connection(&self) -> redis::Connection {
        self.nodes
            .iter()
            .find_map(|node| {
                let client = redis::Client::open(node.url()).ok()?;
                let mut connection = client
                    .get_connection_with_timeout(Duration::from_secs(1))
                    .ok()?;
                redis::cmd("PING").query::<String>(&mut connection).ok()?;
                Some(connection)
            })
            .expect("a node of the cluster answers")
    }

    /// The slot of `key`.
    pub fn slot(&self, key: &str) -> i64 {
        redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut self.any_connection())
            .unwrap()
    }

    /// The slot holding every key of `partition` (namespace `blog`).
    pub fn slot_of_partition(&self, partition: Partition) -> i64 {
        self.slot(&format!("{{blog.{partition}}}"))
    }

    /// The index of the master serving `slot`, as `node` sees the Cluster (None: no master
    /// serves it, or it names a node this cluster did not start).
    pub fn master_seen_by(&self, node: &RedisServer, slot: i64) -> Option<usize> {
        let mut connection = redis::Client::open(node.url())
            .ok()?
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        // CLUSTER SLOTS: [start, end, [ip, port, id], replicas...] per range.
        let ranges: Vec<redis::Value> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query(&mut connection)
            .ok()?;
        let port = ranges.into_iter().find_map(|range| {
            let range: Vec<redis::Value> = redis::from_redis_value(range).ok()?;
            let number = |value: &redis::Value| redis::from_redis_value_ref::<i64>(value).ok();
            let (start, end) = (number(&range[0])?, number(&range[1])?);
            let master: Vec<redis::Value> = redis::from_redis_value_ref(&range[2]).ok()?;
            (start..=end).contains(&slot).then(|| number(&master[1]))?
        })?;
        self.nodes
            .iter()
            .position(|node| i64::from(node.port) == port)
    }

    /// The index of the master serving `slot`, as the first node that answers sees it.
    pub fn master_of(&self, slot: i64) -> usize {
        self.nodes
            .iter()
            .find_map(|node| self.master_seen_by(node, slot))
            .expect("a master serves the slot")
    }

    /// The node id of the node at `index`.
    pub fn id_of(&self, index: usize) -> String {
        redis::cmd("CLUSTER")
            .arg("MYID")
            .query(&mut self.nodes[index].connection())
            .unwrap()
    }

    /// The index of a replica of the master at `master`.
    pub fn replica_of(&self, master: usize) -> usize {
        let port = self.nodes[master].port;
        self.nodes
            .iter()
            .position(|node| {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut node.connection())
                    .unwrap_or_default();
                info.contains("role:slave") && info.contains(&format!("master_port:{port}\r"))
            })
            .expect("the master has a replica")
    }

    /// Waits until every replica of the master at `master` has acknowledged everything the
    /// master wrote so far (its offset reached the master's).
    pub fn wait_until_replicated(&self, master: usize) {
        let replicated = wait_until(PATIENCE, || {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut self.nodes[master].connection())
                .unwrap();
            let field = |line: &str, name: &str| -> Option<u64> {
                line.split(',')
                    .find_map(|field| field.strip_prefix(name))?
                    .trim()
                    .parse()
                    .ok()
            };
            let written = info
                .lines()
                .find_map(|line| field(line, "master_repl_offset:"));
            let acknowledged: Vec<Option<u64>> = info
                .lines()
                .filter(|line| line.starts_with("slave"))
                .map(|line| field(line.split_once(':').map_or("", |(_, rest)| rest), "offset="))
                .collect();
            !acknowledged.is_empty() && acknowledged.iter().all(|offset| *offset >= written)
        });
        assert!(replicated, "the replicas never caught up with their master");
    }

    /// Has every replica authenticate to its master as a user of its own, `replicator`
    /// (`masteruser`), so that [`RedisCluster::cut_replication`] can shut it out.
    pub fn add_replication_user(&self) {
        for node in &self.nodes {
            let mut connection = node.connection();
            let _: () = redis::cmd("ACL")
                .arg(&["SETUSER", "replicator", "on", ">replicator-s3cret"])
                .arg(&["+psync", "+replconf", "+ping"])
                .query(&mut connection)
                .unwrap();
            for (name, value) in [
                ("masteruser", "replicator"),
                ("masterauth", "replicator-s3cret"),
            ] {
                let _: () = redis::cmd("CONFIG")
                    .arg(&["SET", name, value])
                    .query(&mut connection)
                    .unwrap();
            }
        }
    }

    /// Cuts the replication of the master at `master` (needs
    /// [`RedisCluster::add_replication_user`]): its replicas' user is turned off and their
    /// links dropped, so from now on the master acknowledges writes that no replica gets. It
    /// keeps serving clients; the Cluster bus is untouched. Returns once the replica says its
    /// link is down.
    pub fn cut_replication(&self, master: usize) {
        let mut connection = self.nodes[master].connection();
        let _: () = redis::cmd("ACL")
            .arg(&["SETUSER", "replicator", "off"])
            .query(&mut connection)
            .unwrap();
        let _: i64 = redis::cmd("CLIENT")
            .arg(&["KILL", "TYPE", "replica"])
            .query(&mut connection)
            .unwrap();
        let replica = &self.nodes[self.replica_of(master)];
        let down = wait_until(PATIENCE, || {
            redis::cmd("INFO")
                .arg("replication")
                .query::<String>(&mut replica.connection())
                .is_ok_and(|info| info.contains("master_link_status:down"))
        });
        assert!(down, "the replica's link to its master stayed up");
    }

    /// Moves `slot` to the master at `to`, keys and all, as `redis-cli --cluster reshard` does:
    /// [`RedisCluster::begin_move`], [`RedisCluster::migrate_slot_keys`] (calling `between`
    /// after each batch, so that clients and services work while the slot is half moved), then
    /// [`RedisCluster::end_move`]. Returns how many keys moved.
    pub fn move_slot(&self, slot: i64, to: usize, between: impl FnMut()) -> usize {
        let from = self.begin_move(slot, to);
        let moved = self.migrate_slot_keys(slot, from, to, between);
        self.end_move(slot, from, to);
        moved
    }

    /// Opens the move of `slot` to the master at `to`: the target imports it, then the source
    /// migrates it. From then on the slot is half moved: each key is served where it is, and a
    /// command over keys not all on one side is refused. Returns the source's index.
    pub fn begin_move(&self, slot: i64, to: usize) -> usize {
        let from = self.master_of(slot);
        assert_ne!(from, to, "slot {slot} is served by the target already");
        let (source_id, target_id) = (self.id_of(from), self.id_of(to));
        self.set_slot(to, slot, &["IMPORTING", &source_id]);
        self.set_slot(from, slot, &["MIGRATING", &target_id]);
        from
    }

    /// `MIGRATE`s `keys` from the master at `from` to the one at `to` (the slot half moved). A
    /// key on both sides (`BUSYKEY`: something wrote the target while the source held the key)
    /// fails the test.
    pub fn migrate(&self, from: usize, to: usize, keys: &[String]) {
        let migrated: redis::RedisResult<String> = redis::cmd("MIGRATE")
            .arg(&[
                "127.0.0.1",
                &self.nodes[to].port.to_string(),
                "",
                "0",
                "5000",
            ])
            .arg("KEYS")
            .arg(keys)
            .query(&mut self.nodes[from].connection());
        if let Err(error) = migrated {
            panic!("MIGRATE of {keys:?} to node {to} failed: {error}");
        }
    }

    /// Migrates every key of `slot` still on the master at `from` to the one at `to`,
    /// [`MIGRATE_BATCH`] at a time, calling `between` after each batch. Returns how many moved.
    pub fn migrate_slot_keys(
        &self,
        slot: i64,
        from: usize,
        to: usize,
        mut between: impl FnMut(),
    ) -> usize {
        let mut moved = 0;
        loop {
            let keys: Vec<String> = redis::cmd("CLUSTER")
                .arg("GETKEYSINSLOT")
                .arg(slot)
                .arg(MIGRATE_BATCH)
                .query(&mut self.nodes[from].connection())
                .unwrap();
            if keys.is_empty() {
                return moved;
            }
            self.migrate(from, to, &keys);
            moved += keys.len();
            between();
        }
    }

    /// Closes the move of `slot` from the master at `from` (which must hold none of its keys
    /// any more) to the one at `to`: every master is told its new owner, and this returns once
    /// every node names it.
    pub fn end_move(&self, slot: i64, from: usize, to: usize) {
        let target_id = self.id_of(to);
        // The new owner first, then the old one, then the other masters, as redis-cli does.
        let others = (0..self.nodes.len()).filter(|&index| index != to && index != from);
        for index in [to, from].into_iter().chain(others) {
            if self.is_master(index) {
                self.set_slot(index, slot, &["NODE", &target_id]);
            }
        }
        let known = wait_until(PATIENCE, || {
            self.nodes
                .iter()
                .all(|node| self.master_seen_by(node, slot) == Some(to))
        });
        assert!(
            known,
            "not every node learnt that node {to} serves slot {slot}"
        );
    }

    /// `CLUSTER SETSLOT <slot> <state...>` on the node at `index`.
    fn set_slot(&self, index: usize, slot: i64, state: &[&str]) {
        let _: () = redis::cmd("CLUSTER")
            .arg("SETSLOT")
            .arg(slot)
            .arg(state)
            .query(&mut self.nodes[index].connection())
            .unwrap_or_else(|error| panic!("CLUSTER SETSLOT {slot} {state:?}: {error}"));
    }

    /// Whether the node at `index` is a master.
    fn is_master(&self, index: usize) -> bool {
        redis::cmd("INFO")
            .arg("replication")
            .query::<String>(&mut self.nodes[index].connection())
            .is_ok_and(|info| info.contains("role:master"))
    }

    /// The index of the node serving `key`'s slot.
    fn serving(&self, key: &str) -> usize {
        self.master_of(self.slot(key))
    }

    /// The node that does not serve `key`'s slot (the first such one).
    fn node_without(&self, key: &str) -> &RedisServer {
        let serving = self.serving(key);
        self.nodes
            .iter()
            .enumerate()
            .find(|(index, _)| *index != serving)
            .map(|(_, node)| node)
            .expect("another node")
    }

    /// How many keys of the namespace each node holds, by node index.
    pub fn keys_per_node(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .map(|node| {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg("blog:*")
                    .query(&mut node.connection())
                    .unwrap();
                keys.len()
            })
            .collect()
    }
}

/// The blog's command with 8 partitions (`BLOGCTL_PARTITIONS`), through the node at `url`.
pub fn with_8_partitions(url: &str) -> Command {
    let mut command = blogctl(url, "blog");
    command.env("BLOGCTL_PARTITIONS", "8");
    command
}

/// The 8 partitions.
pub fn eight() -> Partitions {
    Partitions::new(8).unwrap()
}

/// A request id (`<label>-<n>`) that puts the post it creates in `partition` of 8.
pub fn request_id_in(partition: Partition, label: &str) -> String {
    (0..)
        .map(|n| format!("{label}-{n}"))
        .find(|id| eight().of_request(id) == partition)
        .unwrap()
}

fn run(mut command: Command, args: &[&str]) -> (i32, String, String) {
    let output = command.args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn ok(url: &str, args: &[&str]) -> String {
    let (code, stdout, stderr) = run(with_8_partitions(url), args);
    assert_eq!(code, 0, "{args:?}: {stderr}");
    stdout
}

/// Two instances of every service (`serve all`, consumers `a` and `b`) of the blog with 8
/// partitions, through `url`, logging at `info` into `log`.
fn serve_twice(url: &str, log: &tempfile::NamedTempFile) -> Vec<std::process::Child> {
    ["a", "b"]
        .iter()
        .map(|instance| {
            with_8_partitions(url)
                .args(["serve", "all", "--consumer", instance])
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log.reopen().unwrap())
                .spawn()
                .unwrap()
        })
        .collect()
}

#[test]
fn the_story_runs_with_8_partitions_on_a_redis_cluster_through_any_node() {
    let cluster = RedisCluster::start(3, &[]);
    // A node that must redirect the commands of partition 0 (and so of every command) elsewhere.
    let url = cluster.node_without("{blog.0}").url();
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut services = serve_twice(&url, &log);
    // A post in every partition, each with an approved and a rejected comment.
    let mut posts = Vec::new();
    for partition in eight().all() {
        let request = request_id_in(partition, "post");
        let title = format!("Post {partition}");
        let post = ok(
            &url,
            &["post", "create", "--wait", "--request-id", &request, &title],
        );
        let uuid: uuid::Uuid = post.parse().unwrap();
        assert_eq!(eight().of_post(&uuid), partition);
        for (content, verdict) in [("fine", "approved"), ("an orange", "rejected")] {
            let printed = ok(&url, &["comment", "create", "--wait", &post, content]);
            assert_eq!(printed.split_once(' ').unwrap().1, verdict, "{post}");
        }
        posts.push(post);
    }
    let view: serde_json::Value =
        serde_json::from_str(&ok(&url, &["post", "list", "--json"])).unwrap();
    // Merged oldest first across the partitions, each post with its two comments.
    let titles: Vec<String> = (0..8).map(|p| format!("Post {p}")).collect();
    assert_eq!(Blog::titles(&view), titles, "{view}");
    for post in view.as_array().unwrap() {
        assert_eq!(post["comments"].as_array().unwrap().len(), 2, "{view}");
    }
    assert!(ok(&url, &["post", "show", &posts[5]]).contains("Post 5"));
    assert!(wait_until(PATIENCE, || {
        run(with_8_partitions(&url), &["status", "--check"]).0 == 0
    }));
    ok(&url, &["rebuild", "query"]);
    ok(&url, &["rebuild", "comments"]);
    let rebuilt: serde_json::Value =
        serde_json::from_str(&ok(&url, &["post", "list", "--json"])).unwrap();
    assert_eq!(rebuilt, view);
    let archive = tempfile::tempdir().unwrap();
    let archive_path = archive.path().to_str().unwrap();
    ok(&url, &["trim", "--yes", "--archive", archive_path]);
    assert!(archive.path().join("comments.ndjson").is_file());
    for service in &mut services {
        let _ = service.kill();
        let _ = service.wait();
    }
    // Nothing went wrong inside the services either (a script sent to the wrong node, say).
    let log = std::fs::read_to_string(log.path()).unwrap();
    assert!(log.contains("serving"), "{log}");
    for trouble in ["WARN", "ERROR", "non local key"] {
        assert!(
            !log.contains(trouble),
            "{trouble} in the services' log:\n{log}"
        );
    }
    assert_partitions_spread(&cluster);
}

/// Every key of a partition is on the master serving its slot and on no other node, and the
/// 8 partitions' keys are on more than one master.
pub fn assert_partitions_spread(cluster: &RedisCluster) {
    let mut holders = std::collections::BTreeSet::new();
    for partition in eight().all() {
        let serving = cluster.master_of(cluster.slot_of_partition(partition));
        for (index, node) in cluster.nodes.iter().enumerate() {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("blog:*{{blog.{partition}}}*"))
                .query(&mut node.connection())
                .unwrap();
            if index == serving {
                assert!(!keys.is_empty(), "partition {partition} has no keys");
                holders.insert(index);
            } else {
                assert!(
                    keys.is_empty(),
                    "keys of partition {partition} on node {index}"
                );
            }
        }
    }
    assert!(
        holders.len() > 1,
        "all 8 partitions on one master: {holders:?}"
    );
    assert_eq!(
        cluster
            .keys_per_node()
            .iter()
            .filter(|&&keys| keys > 0)
            .count(),
        holders.len()
    );
}

/// The master serving the namespace's slot is gone and no replica takes over: a client command
/// through another node fails at once with exit code 4, saying the Cluster does not serve it.
#[test]
fn a_slot_no_master_serves_is_exit_code_4_within_seconds() {
    let blog = blog_on_cluster(&[]);
    let other = blog.others[0].url();
    let (code, _, stderr) = run(blogctl(&other, "blog"), &["post", "list"]);
    assert_eq!(code, 0, "{stderr}");
    blog.redis.stop();
    let failed = wait_until(PATIENCE, || {
        redis::cmd("CLUSTER")
            .arg("INFO")
            .query::<String>(&mut blog.others[0].connection())
            .is_ok_and(|info| info.contains("cluster_state:fail"))
    });
    assert!(failed, "the Cluster never noticed its master was gone");
    for args in [&["post", "list"][..], &["post", "create", "Lost"]] {
        let started = std::time::Instant::now();
        let (code, _, stderr) = run(blogctl(&other, "blog"), args);
        assert_eq!(code, 4, "{args:?}: {stderr}");
        assert!(stderr.contains("does not serve the slot"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(
            started.elapsed() < std::time::Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }
}
