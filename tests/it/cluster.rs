//! A Redis Cluster: `--redis-url` naming any node works, the client following `MOVED`. Every key
//! of a partition shares one hash tag, so each command and script goes to one node (one
//! partition today).

use std::process::{Command, Stdio};

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

/// A loopback Redis Cluster of `masters` masters and no replicas.
struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    fn start(masters: usize, extra: &[&str]) -> RedisCluster {
        let nodes: Vec<RedisServer> = (0..masters)
            .map(|_| RedisServer::start_cluster_node(extra))
            .collect();
        let addresses: Vec<String> = nodes
            .iter()
            .map(|node| format!("127.0.0.1:{}", node.port))
            .collect();
        let created = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli");
        assert!(created.status.success(), "{created:?}");
        let cluster = RedisCluster { nodes };
        let ready = wait_until(PATIENCE, || {
            cluster.nodes.iter().all(|node| {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut node.connection())
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
            })
        });
        assert!(ready, "the cluster never reached cluster_state:ok");
        cluster
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

    /// The index of the node serving `key`'s slot.
    fn serving(&self, key: &str) -> usize {
        let mut connection = self.nodes[0].connection();
        let slot: i64 = redis::cmd("CLUSTER")
            .arg("KEYSLOT")
            .arg(key)
            .query(&mut connection)
            .unwrap();
        // CLUSTER SLOTS: [start, end, [ip, port, id], replicas...] per range.
        let ranges: Vec<(i64, i64, Vec<redis::Value>)> = redis::cmd("CLUSTER")
            .arg("SLOTS")
            .query::<Vec<redis::Value>>(&mut connection)
            .unwrap()
            .into_iter()
            .map(|range| redis::from_redis_value(range).unwrap())
            .map(|range: Vec<redis::Value>| {
                let number =
                    |value: &redis::Value| redis::from_redis_value_ref::<i64>(value).unwrap();
                let master: Vec<redis::Value> = redis::from_redis_value_ref(&range[2]).unwrap();
                (number(&range[0]), number(&range[1]), master)
            })
            .collect();
        let (_, _, master) = ranges
            .iter()
            .find(|(start, end, _)| (*start..=*end).contains(&slot))
            .expect("the slot is served");
        let serving: i64 = redis::from_redis_value_ref(&master[1]).unwrap();
        self.nodes
            .iter()
            .position(|node| i64::from(node.port) == serving)
            .expect("a node of the cluster serves it")
    }
}

fn run(url: &str, args: &[&str]) -> (i32, String, String) {
    let output = blogctl(url, "blog").args(args).output().unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).trim().to_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn ok(url: &str, args: &[&str]) -> String {
    let (code, stdout, stderr) = run(url, args);
    assert_eq!(code, 0, "{args:?}: {stderr}");
    stdout
}

#[test]
fn the_story_runs_on_a_redis_cluster_through_any_node() {
    let cluster = RedisCluster::start(3, &[]);
    // A node that must redirect every command of the namespace elsewhere.
    let url = cluster.node_without("{blog.0}").url();
    // Two instances of every service, competing through the groups.
    let log = tempfile::NamedTempFile::new().unwrap();
    let mut services: Vec<_> = ["a", "b"]
        .iter()
        .map(|instance| {
            blogctl(&url, "blog")
                .args(["serve", "all", "--consumer", instance])
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log.reopen().unwrap())
                .spawn()
                .unwrap()
        })
        .collect();
    let post = ok(&url, &["post", "create", "--wait", "Clustered"]);
    let verdict = |content: &str| {
        let printed = ok(&url, &["comment", "create", "--wait", &post, content]);
        printed.split_once(' ').unwrap().1.to_owned()
    };
    for n in 0..10 {
        assert_eq!(verdict(&format!("fine {n}")), "approved");
    }
    assert_eq!(verdict("an orange"), "rejected");
    let view: serde_json::Value =
        serde_json::from_str(&ok(&url, &["post", "list", "--json"])).unwrap();
    assert_eq!(view[0]["title"], "Clustered", "{view}");
    assert_eq!(view[0]["comments"].as_array().unwrap().len(), 11, "{view}");
    assert!(wait_until(PATIENCE, || run(&url, &["status", "--check"]).0 == 0));
    assert_eq!(ok(&url, &["events", "list"]).lines().count(), 1 + 3 * 11);
    ok(&url, &["rebuild", "query"]);
    ok(&url, &["rebuild", "comments"]);
    let rebuilt: serde_json::Value =
        serde_json::from_str(&ok(&url, &["post", "list", "--json"])).unwrap();
    assert_eq!(rebuilt, view);
    let archive = tempfile::tempdir().unwrap();
    ok(
        &url,
        &[
            "trim",
            "--yes",
            "--archive",
            archive.path().to_str().unwrap(),
        ],
    );
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
    // Every key of the namespace is on the one node serving its slot.
    let holders = cluster
        .nodes
        .iter()
        .filter(|node| {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("blog:*")
                .query(&mut node.connection())
                .unwrap();
            !keys.is_empty()
        })
        .count();
    assert_eq!(holders, 1);
}

/// The master serving the namespace's slot is gone and no replica takes over: a client command
/// through another node fails at once with exit code 4, saying the Cluster does not serve it.
#[test]
fn a_slot_no_master_serves_is_exit_code_4_within_seconds() {
    let blog = blog_on_cluster(&[]);
    let other = blog.others[0].url();
    let (code, _, stderr) = run(&other, &["post", "list"]);
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
        let (code, _, stderr) = run(&other, args);
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
