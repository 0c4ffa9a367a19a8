//! The operator commands `status`, `events` and `dead` on a namespace of 8 partitions, on a
//! single Redis and on a Redis Cluster whose master of some partitions is gone.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use blogctl::keyspace::{Partition, Partitions, Service};
use serde_json::Value;

use crate::support::{Blog, PATIENCE, signal, wait_until};

const COUNT: u32 = 8;

fn blog() -> Blog {
    Blog::new().with_partitions(COUNT)
}

fn ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

fn json(blog: &Blog, args: &[&str]) -> Value {
    serde_json::from_str(&blog.ok(args)).unwrap()
}

fn xadd(blog: &Blog, stream: &str, id: &str, fields: &[(&str, &str)]) -> String {
    let mut command = redis::cmd("XADD");
    command.arg(stream).arg(id);
    for (name, value) in fields {
        command.arg(*name).arg(*value);
    }
    command.query(&mut *blog.connection()).unwrap()
}

/// Adds an event of `kind` on `producer`'s stream of `partition`, as `test` wrote it.
fn add_event(blog: &Blog, producer: Service, partition: u32, kind: &str, data: &str) -> String {
    let stream = blog.keys().events(producer, Partition(partition));
    let fields = [
        ("type", kind),
        ("version", "1"),
        ("request_id", "test-request"),
        ("producer", "test"),
        ("data", data),
    ];
    xadd(blog, &stream, "*", &fields)
}

/// Waits until Redis's clock is past the millisecond of entry `id`.
fn after_the_millisecond_of(blog: &Blog, id: &str) {
    let ms: u64 = id.split('-').next().unwrap().parse().unwrap();
    let mut connection = blog.redis.connection();
    assert!(wait_until(PATIENCE, || {
        let (seconds, micros): (u64, u64) = redis::cmd("TIME").query(&mut connection).unwrap();
        seconds * 1000 + micros / 1000 > ms
    }));
}

/// Creates every group the services read with, in every partition, as their first run would.
fn create_groups(blog: &Blog) {
    let keys = blog.keys();
    for partition in Partitions::new(COUNT).unwrap().all() {
        for service in Service::ALL {
            let (streams, _) = blogctl::services::streams(&keys, service, partition);
            for stream in streams {
                let _: () = redis::cmd("XGROUP")
                    .arg("CREATE")
                    .arg(&stream)
                    .arg(service.name())
                    .arg("0")
                    .arg("MKSTREAM")
                    .query(&mut blog.redis.connection())
                    .unwrap();
            }
        }
    }
}

/// A stream id as numbers, to compare.
fn id_key(id: &str) -> (u64, u64) {
    let (ms, seq) = id.split_once('-').unwrap();
    (ms.parse().unwrap(), seq.parse().unwrap())
}

/// The group `name` of the stream `stream` in a `status --json` report.
fn group<'a>(status: &'a Value, stream: &str, name: &str) -> &'a Value {
    status["streams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stream"] == stream)
        .and_then(|s| {
            s["groups"]
                .as_array()
                .unwrap()
                .iter()
                .find(|g| g["group"] == name)
        })
        .unwrap_or_else(|| panic!("no group {name} on {stream} in {status}"))
}

#[test]
fn status_sums_the_partitions_and_shows_each_on_request() {
    let blog = blog();
    let _services = blog.serve(&["all"]);
    let mut posts = Vec::new();
    for n in 0..12 {
        posts.push(blog.ok(&["post", "create", "--wait", &format!("Post {n}")]));
    }
    for post in &posts[..4] {
        blog.ok(&["comment", "create", "--wait", post, "fine"]);
    }
    blog.wait_for_view(12, 4);
    let mut by_partition = Value::Null;
    let caught_up = wait_until(PATIENCE, || {
        by_partition = json(&blog, &["status", "--json", "--by-partition"]);
        by_partition["streams"]
            .as_array()
            .unwrap()
            .iter()
            .all(|stream| {
                stream["groups"].as_array().unwrap().iter().all(|group| {
                    group["lag"] == 0 && group["pending"] == 0 && group["missing"] == false
                })
            })
    });
    assert!(caught_up, "{by_partition}");
    let streams = by_partition["streams"].as_array().unwrap();
    assert_eq!(streams.len(), 8 * 5, "{by_partition}");
    assert_eq!(by_partition["partitions"], COUNT);
    let keys = blog.keys();
    let posts_events = |partition| keys.events(Service::Posts, Partition(partition));
    let used: Vec<&Value> = streams
        .iter()
        .filter(|s| s["stream"].as_str().unwrap().ends_with(":events") && s["length"] != 0)
        .collect();
    let partitions: std::collections::BTreeSet<u64> = used
        .iter()
        .map(|s| s["partition"].as_u64().unwrap())
        .collect();
    assert!(
        partitions.len() > 1,
        "12 posts in one partition? {by_partition}"
    );
    for stream in streams {
        let partition = stream["partition"].as_u64().unwrap() as u32;
        assert!(
            stream["stream"]
                .as_str()
                .unwrap()
                .contains(&format!("{{blog.{partition}}}"))
        );
    }
    let dead_by_partition = by_partition["dead_letters_by_partition"]
        .as_array()
        .unwrap();
    assert_eq!(dead_by_partition.len(), 8);
    assert_eq!(dead_by_partition[3]["stream"], keys.dead(Partition(3)));

    // Summed: one row per kind of stream, its length that of every partition's.
    let summed = json(&blog, &["status", "--json"]);
    let rows = summed["streams"].as_array().unwrap();
    assert_eq!(rows.len(), 5, "{summed}");
    let pattern = keys.events_pattern(Service::Posts);
    assert_eq!(rows[0]["stream"], pattern.as_str());
    assert!(rows[0]["partition"].is_null());
    let lengths: u64 = (0..COUNT)
        .map(|p| {
            streams
                .iter()
                .find(|s| s["stream"] == posts_events(p))
                .unwrap()["length"]
                .as_u64()
                .unwrap()
        })
        .sum();
    assert_eq!(lengths, 12);
    assert_eq!(rows[0]["length"], 12, "{summed}");
    let query = group(&summed, &pattern, "query");
    assert_eq!(
        (query["lag"].as_u64(), query["pending"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(query["consumers"].as_array().unwrap().len(), 1, "{query}");
    assert_eq!(
        query["consumers"][0]["alive"], true,
        "alive in every partition"
    );
    assert_eq!(summed["dead_letters"]["count"], 0);
    assert_eq!(summed["dead_letters"]["stream"], keys.dead_pattern());
    assert!(summed.get("dead_letters_by_partition").is_none());
    assert_eq!(summed["problems"], serde_json::json!([]));

    let human = blog.ok(&["status"]);
    assert!(human.contains(&format!("{pattern}  12 entries")), "{human}");
    assert!(!human.contains("{blog.3}"), "{human}");
    let each = blog.ok(&["status", "--by-partition"]);
    assert!(
        each.contains("{blog.3}") && each.contains("{blog.7}"),
        "{each}"
    );
    let check = blog.run(&["status", "--check"]);
    assert_eq!((check.code, check.stderr.as_str()), (0, ""), "{check:?}");
}

#[test]
fn check_names_the_partition_of_a_missing_group_and_of_a_stuck_entry() {
    let blog = blog();
    create_groups(&blog);
    let keys = blog.keys();
    let (five, three) = (
        keys.events(Service::Posts, Partition(5)),
        keys.events(Service::Posts, Partition(3)),
    );
    let _: () = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(&five)
        .arg("query")
        .query(&mut blog.redis.connection())
        .unwrap();
    // An entry of partition 3 delivered to query's consumer, alive and never acknowledging.
    let stuck = add_event(&blog, Service::Posts, 3, "Unknown", "{}");
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg("query")
        .arg("operator")
        .arg("STREAMS")
        .arg(&three)
        .arg(">")
        .query(&mut blog.redis.connection())
        .unwrap();
    let alive = keys.alive_prefix(Service::Query, Partition(3)) + "operator";
    let _: () = redis::cmd("SET")
        .arg(&alive)
        .arg("1")
        .query(&mut blog.redis.connection())
        .unwrap();

    let mut run = blog.run(&["status", "--check", "--max-pending-age", "0.05"]);
    assert!(
        wait_until(PATIENCE, || {
            run = blog.run(&["status", "--check", "--max-pending-age", "0.05"]);
            run.stderr.contains("pending for")
        }),
        "{run:?}"
    );
    assert_eq!(run.code, 6, "{run:?}");
    let problems: Vec<&str> = run
        .stderr
        .lines()
        .filter_map(|line| line.strip_prefix("blogctl: unhealthy: "))
        .collect();
    assert!(
        problems.iter().all(|p| p.starts_with("partition ")),
        "{problems:?}"
    );
    assert!(
        problems.contains(&format!("partition 5: group query on {five} is missing: start the service once (`blogctl serve query`)").as_str()),
        "{problems:?}"
    );
    assert!(
        problems.iter().any(|p| p.starts_with(&format!(
            "partition 3: group query on {three} has had entry {stuck} pending for"
        ))),
        "{problems:?}"
    );
    // The comments group of partition 3 has the entry to read, and no consumer.
    assert!(
        problems.contains(&format!("partition 3: no consumer of group comments on {three} is alive, and 1 entry wait: start the service (`blogctl serve comments`)").as_str()),
        "{problems:?}"
    );
    assert_eq!(problems.len(), 3, "{problems:?}");

    // Summed, the report says where.
    let summed = json(&blog, &["status", "--json"]);
    let query = group(&summed, &keys.events_pattern(Service::Posts), "query");
    assert_eq!(query["missing"], true);
    assert_eq!(query["missing_in"], serde_json::json!([5]));
    assert_eq!(query["pending"], 1);
    assert_eq!(query["oldest_pending_partition"], 3);
    assert_eq!(query["oldest_pending_id"], stuck.as_str());
    let human = blog.ok(&["status"]);
    assert!(human.contains("query (MISSING in partitions 5)"), "{human}");
    // A per-service check looks at that service's groups only, in every partition.
    let posts = blog.run(&["status", "--check", "--service", "posts"]);
    assert_eq!(posts.code, 0, "{posts:?}");
}

#[test]
fn events_list_merges_every_partition_in_id_order_a_page_at_a_time() {
    let blog = blog();
    // One event in each of four partitions, each a millisecond after the one before, in an
    // order the partitions' own does not give.
    let mut added = Vec::new();
    for (producer, partition) in [
        (Service::Comments, 6),
        (Service::Posts, 1),
        (Service::Moderation, 0),
        (Service::Posts, 7),
    ] {
        let id = add_event(&blog, producer, partition, "Odd", r#"{"n":1}"#);
        after_the_millisecond_of(&blog, &id);
        added.push((id, producer, partition));
    }
    let listed = ndjson(&blog.ok(&["events", "list", "--json"]));
    let seen: Vec<(String, String, u64)> = listed
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap().to_owned(),
                e["stream"].as_str().unwrap().to_owned(),
                e["partition"].as_u64().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(String, String, u64)> = added
        .iter()
        .map(|(id, producer, partition)| {
            (
                id.clone(),
                producer.name().to_owned(),
                u64::from(*partition),
            )
        })
        .collect();
    assert_eq!(seen, expected);
    let human = blog.ok(&["events", "list"]);
    let first = human.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("{}  6/comments      Odd", added[0].0)),
        "{human}"
    );
    let from = ndjson(&blog.ok(&[
        "events",
        "list",
        "--json",
        "--from",
        &added[1].0,
        "--count",
        "2",
    ]));
    let ids: Vec<&str> = from.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [added[1].0.as_str(), added[2].0.as_str()]);

    // More than a page (1000) on one partition's stream, another partition's entries among them.
    let base: u64 = 9_000_000_000_000;
    let mut pipe = redis::pipe();
    let keys = blog.keys();
    for n in 1..=1500 {
        pipe.cmd("XADD")
            .arg(keys.events(Service::Posts, Partition(2)))
            .arg(format!("{}-0", base + n))
            .arg("type")
            .arg("Unknown")
            .ignore();
    }
    for n in [500, 1200] {
        pipe.cmd("XADD")
            .arg(keys.events(Service::Comments, Partition(5)))
            .arg(format!("{}-1", base + n))
            .arg("type")
            .arg("Unknown")
            .ignore();
    }
    let _: () = pipe.query(&mut blog.redis.connection()).unwrap();
    let all = ndjson(&blog.ok(&["events", "list", "--json", "--from", &base.to_string()]));
    assert_eq!(all.len(), 1502);
    let ids: Vec<&str> = all.iter().map(|e| e["id"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort_by_key(|id| id_key(id));
    assert_eq!(ids, sorted);
    let at = ids
        .iter()
        .position(|id| *id == format!("{}-1", base + 1200))
        .unwrap();
    assert_eq!(all[at]["partition"], 5);
    assert_eq!(all[at - 1]["id"], format!("{}-0", base + 1200));
}

/// Starts `events tail --json`; its lines arrive on the receiver as it prints them.
fn tail(blog: &Blog) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut tail = blog
        .command()
        .args(["events", "tail", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, received) = mpsc::channel();
    let stdout = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    (tail, received)
}

/// `events tail` follows every partition: probes in partition 7 until it prints one; then, on
/// a single Redis, a full batch and more on partition 3 with an entry of partition 6 in their
/// midst, written at once (MULTI), each printed in its place; then entries written at the same
/// time to partitions 2, 5 and 0 by three writers (ids chosen by Redis), all printed in id
/// order.
fn tail_follows_every_partition_in_id_order(blog: &Blog) {
    let (mut tail, received) = tail(blog);
    let deadline = Instant::now() + PATIENCE;
    while received.recv_timeout(Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "tail printed nothing");
        add_event(blog, Service::Posts, 7, "Probe", "{}");
    }
    let keys = blog.keys();
    let next_event = || -> Value {
        let line = received
            .recv_timeout(PATIENCE)
            .expect("tail printed every entry");
        serde_json::from_str(&line).unwrap()
    };
    if blog.others.is_empty() {
        let base: u64 = 9_000_000_000_000;
        let middle = format!("{}-5", base + 100);
        let mut pipe = redis::pipe();
        pipe.atomic();
        for n in 1..=1200 {
            pipe.cmd("XADD")
                .arg(keys.events(Service::Posts, Partition(3)))
                .arg(format!("{}-0", base + n))
                .arg("type")
                .arg("Unknown")
                .ignore();
        }
        pipe.cmd("XADD")
            .arg(keys.events(Service::Comments, Partition(6)))
            .arg(&middle)
            .arg("type")
            .arg("Unknown")
            .ignore();
        let _: () = pipe.query(&mut blog.redis.connection()).unwrap();
        let printed: Vec<Value> = (0..1201).map(|_| next_event()).collect();
        let at = printed
            .iter()
            .position(|e| e["id"] == middle.as_str())
            .unwrap();
        assert_eq!(printed[at]["partition"], 6);
        assert_eq!(printed[at - 1]["id"], format!("{}-0", base + 100));
        assert_eq!(printed[at + 1]["id"], format!("{}-0", base + 101));
        // Later entries get ids after those.
        let _: () = redis::cmd("XADD")
            .arg(keys.events(Service::Posts, Partition(3)))
            .arg(format!("{}-0", base + 5000))
            .arg("type")
            .arg("Unknown")
            .query(&mut blog.redis.connection())
            .unwrap();
        assert_eq!(next_event()["id"], format!("{}-0", base + 5000));
    }
    let writer = |partition: u32, producer: Service, count: usize, chunk: usize| {
        let stream = keys.events(producer, Partition(partition));
        let mut connection = blog.node_of(Partition(partition)).connection();
        move || {
            for _ in 0..count / chunk {
                let mut pipe = redis::pipe();
                for _ in 0..chunk {
                    pipe.cmd("XADD")
                        .arg(&stream)
                        .arg("*")
                        .arg("type")
                        .arg("Together")
                        .ignore();
                }
                let _: () = pipe.query(&mut connection).unwrap();
            }
        }
    };
    std::thread::scope(|scope| {
        scope.spawn(writer(2, Service::Posts, 1200, 40));
        scope.spawn(writer(5, Service::Comments, 120, 1));
        scope.spawn(writer(0, Service::Moderation, 30, 1));
    });
    // (Probes added before the first was printed may still come first.)
    let mut printed: Vec<Value> = Vec::new();
    while printed.len() < 1350 {
        let event = next_event();
        if event["type"] == "Together" {
            printed.push(event);
        }
    }
    let ids: Vec<(u64, u64)> = printed
        .iter()
        .map(|e| id_key(e["id"].as_str().unwrap()))
        .collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] <= pair[1]),
        "out of order"
    );
    for (partition, count) in [(2, 1200), (5, 120), (0, 30)] {
        let seen = printed
            .iter()
            .filter(|e| e["partition"] == partition)
            .count();
        assert_eq!(seen, count, "partition {partition}");
    }
    signal(tail.id(), "TERM");
    let status = tail.wait().unwrap();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn events_tail_follows_every_partition_in_id_order() {
    tail_follows_every_partition_in_id_order(&blog());
}

#[test]
fn events_list_and_tail_follow_every_partition_on_a_redis_cluster() {
    let blog = crate::cluster::blog_on_cluster(&[]).with_partitions(COUNT);
    tail_follows_every_partition_in_id_order(&blog);
    let listed = ndjson(&blog.ok(&["events", "list", "--json", "--type", "Together"]));
    assert_eq!(listed.len(), 1350);
    let ids: Vec<(u64, u64)> = listed
        .iter()
        .map(|e| id_key(e["id"].as_str().unwrap()))
        .collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] <= pair[1]),
        "out of order"
    );
    let partitions: std::collections::BTreeSet<u64> = listed
        .iter()
        .map(|e| e["partition"].as_u64().unwrap())
        .collect();
    assert_eq!(partitions, [0, 2, 5].into());
}

/// Waits until `dead list --json` shows `count` letters, and returns them.
fn dead_letters(blog: &Blog, count: usize) -> Vec<Value> {
    let mut letters = Vec::new();
    let listed = wait_until(PATIENCE, || {
        letters = ndjson(&blog.ok(&["dead", "list", "--json"]));
        letters.len() == count
    });
    assert!(listed, "{letters:?}");
    letters
}

#[test]
fn dead_letters_of_two_partitions_are_listed_retried_and_dropped() {
    let blog = blog();
    let _services = blog.serve(&["all"]);
    blog.ok(&["post", "create", "--wait", "Dead letters"]);
    let keys = blog.keys();
    // Dead-lettered by comments and query in partition 3, by comments in partition 5.
    let bad_post = add_event(&blog, Service::Posts, 3, "PostCreated", "not json");
    let bad_verdict = add_event(
        &blog,
        Service::Moderation,
        5,
        "CommentModerated",
        "not json",
    );
    let letters = dead_letters(&blog, 3);
    let mut seen: Vec<(u64, String, String, String)> = letters
        .iter()
        .map(|letter| {
            let partition = letter["partition"].as_u64().unwrap();
            let dead_id = letter["dead_id"].as_str().unwrap();
            let (named, id) = dead_id.split_once('/').unwrap();
            assert_eq!(named, partition.to_string());
            let stored = blog.entries(&keys.dead(Partition(partition as u32)));
            assert!(stored.iter().any(|(stored, _)| stored == id), "{dead_id}");
            (
                partition,
                letter["stream"].as_str().unwrap().to_owned(),
                letter["id"].as_str().unwrap().to_owned(),
                letter["service"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    seen.sort();
    let (three, five) = (
        keys.events(Service::Posts, Partition(3)),
        keys.events(Service::Moderation, Partition(5)),
    );
    assert_eq!(
        seen,
        [
            (3, three.clone(), bad_post.clone(), "comments".to_owned()),
            (3, three.clone(), bad_post.clone(), "query".to_owned()),
            (5, five.clone(), bad_verdict.clone(), "comments".to_owned()),
        ]
    );
    let ids: Vec<(u64, u64)> = letters
        .iter()
        .map(|l| id_key(l["dead_id"].as_str().unwrap().split_once('/').unwrap().1))
        .collect();
    assert!(
        ids.windows(2).all(|pair| pair[0] <= pair[1]),
        "oldest first"
    );
    let human = blog.ok(&["dead", "list"]);
    assert_eq!(human.lines().count(), 4, "{human}");
    assert!(
        human
            .lines()
            .nth(1)
            .unwrap()
            .starts_with(letters[0]["dead_id"].as_str().unwrap())
    );

    // The query letter of partition 3 is put back on partition 3's stream, for query only,
    // and fails there again.
    let query = letters.iter().find(|l| l["service"] == "query").unwrap();
    let name = query["dead_id"].as_str().unwrap();
    let retried: Value =
        serde_json::from_str(&blog.ok(&["--json", "dead", "retry", name])).unwrap();
    assert_eq!(retried["dead_id"], name);
    assert_eq!(retried["stream"], three.as_str());
    let back = blog.entries(&three);
    let (_, fields) = back
        .iter()
        .find(|(id, _)| *id == retried["id"])
        .expect("back on partition 3");
    assert!(
        fields.contains(&("for_service".to_owned(), "query".to_owned())),
        "{fields:?}"
    );
    let again = dead_letters(&blog, 3);
    let requeued = again
        .iter()
        .find(|l| l["id"] == retried["id"])
        .expect("dead again");
    assert_eq!(
        (requeued["partition"].as_u64(), requeued["service"].as_str()),
        (Some(3), Some("query"))
    );

    // Two letters of two partitions dropped in one command; the others stay.
    let comments: Vec<&str> = again
        .iter()
        .filter(|l| l["service"] == "comments")
        .map(|l| l["dead_id"].as_str().unwrap())
        .collect();
    assert_eq!(comments.len(), 2);
    let dropped = blog.ok(&["dead", "drop", comments[0], comments[1]]);
    assert_eq!(
        dropped,
        format!("dropped {}\ndropped {}", comments[0], comments[1])
    );
    let left = ndjson(&blog.ok(&["dead", "list", "--json"]));
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["id"], retried["id"]);
    assert!(blog.entries(&keys.dead(Partition(5))).is_empty());
}

#[test]
fn dead_letters_are_named_by_partition_and_checked_against_it() {
    let blog = blog();
    let keys = blog.keys();
    let posts = |partition| keys.events(Service::Posts, Partition(partition));
    let letter = |stream: &str, service: &str| {
        let entry = serde_json::json!({"type": "PostCreated", "data": "{}"}).to_string();
        [
            ("stream", stream.to_owned()),
            ("id", "1-1".to_owned()),
            ("service", service.to_owned()),
            ("reason", "made by hand".to_owned()),
            ("entry", entry),
        ]
    };
    let add = |partition: u32, id: &str, fields: &[(&str, String)]| {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
        xadd(&blog, &keys.dead(Partition(partition)), id, &fields)
    };
    // The same id in partitions 1 and 6; one letter of partition 4 naming partition 2's stream.
    add(1, "5-1", &letter(&posts(1), "query"));
    add(6, "5-1", &letter(&posts(6), "query"));
    add(4, "7-1", &letter(&posts(2), "query"));
    let snapshot = || {
        (0..COUNT)
            .map(|p| blog.entries(&keys.dead(Partition(p))).len())
            .collect::<Vec<usize>>()
    };
    let before = snapshot();

    let listed = ndjson(&blog.ok(&["dead", "list", "--json"]));
    let names: Vec<&str> = listed
        .iter()
        .map(|l| l["dead_id"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["1/5-1", "6/5-1", "4/7-1"]);
    for (args, code, says) in [
        (
            &["dead", "drop", "5-1"][..],
            2,
            "in several partitions: name one of 1/5-1, 6/5-1",
        ),
        (&["dead", "retry", "5-1"], 2, "in several partitions"),
        (&["dead", "drop", "8/5-1"], 2, "has 8 partitions (0 to 7)"),
        (&["dead", "drop", "x/5-1"], 2, "is not a partition number"),
        (
            &["dead", "drop", "3/5-1"],
            3,
            "no dead letter 3/5-1 in blog:dead:{blog.3}",
        ),
        (&["dead", "drop", "9-9"], 3, "no dead letter"),
        (&["dead", "drop", "1/5-1", "2/5-1"], 3, "2/5-1"),
        // A letter of partition 4 never goes to partition 2's stream.
        (
            &["dead", "retry", "4/7-1"],
            2,
            "which no service of namespace blog reads in partition 4",
        ),
        (&["dead", "retry", "7-1"], 2, "partition 4"),
    ] {
        let run = blog.run(args);
        assert_eq!(run.code, code, "{args:?}: {run:?}");
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
        assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
        assert_eq!(snapshot(), before, "{args:?} changed something");
    }
    assert!(blog.entries(&posts(2)).is_empty() && blog.entries(&posts(4)).is_empty());

    // Named by its partition, or by its id alone where it is the only one.
    assert_eq!(
        blog.ok(&["dead", "drop", "6/5-1", "7-1"]),
        "dropped 6/5-1\ndropped 4/7-1"
    );
    let retried = blog.ok(&["dead", "retry", "5-1"]);
    assert!(
        retried.starts_with(&format!("retried 1/5-1: back on {} as ", posts(1))),
        "{retried}"
    );
    assert_eq!(blog.entries(&posts(1)).len(), 1);
    assert!(blog.ok(&["dead", "list"]).contains("no dead letters"));
}

/// A Cluster that serves the slots it can (`cluster-require-full-coverage no`) loses the master
/// of some partitions: `status --check` names each of them and its slot (exit code 6) and still
/// reports the others; once the Cluster serves no slot at all, nothing can be read (exit 4).
#[test]
fn check_names_each_partition_whose_slot_no_master_serves() {
    let blog = crate::cluster::blog_on_cluster(&["--cluster-require-full-coverage", "no"])
        .with_partitions(COUNT);
    let services = blog.serve(&["all"]);
    blog.ok(&["post", "create", "--wait", "Before"]);
    assert!(wait_until(PATIENCE, || blog
        .run(&["status", "--check"])
        .code
        == 0));
    services.kill();
    let keys = blog.keys();
    // Another node than the one of partition 0 (where the partition count is kept).
    let serves = |node: &crate::support::RedisServer, partition: u32| {
        redis::cmd("EXISTS")
            .arg(keys.dead(Partition(partition)))
            .query::<i64>(&mut node.connection())
            .is_ok()
    };
    let (lost, node) = blog
        .others
        .iter()
        .map(|node| {
            (
                (0..COUNT)
                    .filter(|&p| serves(node, p))
                    .collect::<Vec<u32>>(),
                node,
            )
        })
        .find(|(partitions, _)| !partitions.is_empty())
        .expect("another master serves some partition");
    let slots: Vec<i64> = lost
        .iter()
        .map(|&p| {
            redis::cmd("CLUSTER")
                .arg("KEYSLOT")
                .arg(keys.dead(Partition(p)))
                .query(&mut blog.redis.connection())
                .unwrap()
        })
        .collect();
    node.stop();

    let mut run = blog.run(&["status", "--check"]);
    let reported = wait_until(PATIENCE, || {
        run = blog.run(&["status", "--check"]);
        run.stderr.contains("is not served")
    });
    assert!(reported, "{run:?}");
    assert_eq!(run.code, 6, "{run:?}");
    let problems: Vec<&str> = run
        .stderr
        .lines()
        .filter_map(|line| line.strip_prefix("blogctl: unhealthy: "))
        .collect();
    assert_eq!(problems.len(), lost.len(), "{problems:?}");
    for (partition, slot) in lost.iter().zip(&slots) {
        let line = format!("partition {partition}: Redis Cluster slot {slot} is not served");
        assert!(
            problems.iter().any(|p| p.starts_with(&line)),
            "{line}: {problems:?}"
        );
    }
    // The partitions still served are read as before.
    let status = json(&blog, &["status", "--json", "--by-partition"]);
    let unserved: Vec<u64> = status["unserved"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["partition"].as_u64().unwrap())
        .collect();
    assert_eq!(
        unserved,
        lost.iter().map(|&p| u64::from(p)).collect::<Vec<u64>>()
    );
    let read: std::collections::BTreeSet<u64> = status["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["partition"].as_u64().unwrap())
        .collect();
    assert_eq!(read.len() + lost.len(), COUNT as usize, "{status}");
    assert!(lost.iter().all(|p| !read.contains(&u64::from(*p))));
    assert!(blog.ok(&["status"]).contains("NOT SERVED"));

    // Every slot refused: nothing to report on, exit code 4.
    for other in std::iter::once(&blog.redis)
        .chain(&blog.others)
        .filter(|n| n.port != node.port)
    {
        let _: () = redis::cmd("CONFIG")
            .arg("SET")
            .arg("cluster-require-full-coverage")
            .arg("yes")
            .query(&mut other.connection())
            .unwrap();
    }
    let mut down = blog.run(&["status", "--check"]);
    assert!(
        wait_until(PATIENCE, || {
            down = blog.run(&["status", "--check"]);
            down.code == 4
        }),
        "{down:?}"
    );
    assert!(down.stderr.contains("does not serve the slot"), "{down:?}");
}
