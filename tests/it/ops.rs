//! Operator commands (`status`, `events`, `dead`, `trim`, `completions`) through the real binary.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::{Blog, PATIENCE, producer_of, signal, wait_until};

/// The groups the services read with: (stream, group).
fn expected_groups(blog: &Blog) -> Vec<(String, &'static str)> {
    blog.groups()
}

fn status_json(blog: &Blog) -> Value {
    serde_json::from_str(&blog.ok(&["status", "--json"])).unwrap()
}

/// One group of `status --json`.
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

/// Waits until every group of every service has read and acknowledged everything.
fn wait_until_caught_up(blog: &Blog) -> Value {
    let mut last = Value::Null;
    let caught_up = wait_until(PATIENCE, || {
        last = status_json(blog);
        expected_groups(blog).iter().all(|(stream, name)| {
            let group = group(&last, stream, name);
            group["missing"] == false && group["lag"] == 0 && group["pending"] == 0
        })
    });
    assert!(caught_up, "groups did not catch up: {last}");
    last
}

fn xadd(blog: &Blog, stream: &str, fields: &[(&str, &[u8])]) -> String {
    let mut command = redis::cmd("XADD");
    command.arg(stream).arg("*");
    for (name, value) in fields {
        command.arg(*name).arg(*value);
    }
    command.query(&mut blog.redis.connection()).unwrap()
}

/// The stream [`add_event`] puts an event of type `kind` on: that of the service that produces
/// it, and the posts' stream for a type no service produces (which every reader skips).
fn stream_of(blog: &Blog, kind: &str) -> String {
    match kind {
        "PostCreated" | "CommentCreated" | "CommentUpdated" | "CommentModerated" => {
            blog.events(producer_of(kind))
        }
        _ => blog.events("posts"),
    }
}

/// Adds a well-formed event, as if `producer` had published it, on the stream of its type
/// ([`stream_of`]).
fn add_event(blog: &Blog, kind: &str, producer: &str, data: &str) -> String {
    xadd(
        blog,
        &stream_of(blog, kind),
        &[
            ("type", kind.as_bytes()),
            ("version", b"1"),
            ("request_id", b"test-request"),
            ("producer", producer.as_bytes()),
            ("data", data.as_bytes()),
        ],
    )
}

fn create_group(blog: &Blog, stream: &str, group: &str) {
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg(group)
        .arg("0")
        .arg("MKSTREAM")
        .query(&mut blog.redis.connection())
        .unwrap();
}

/// Delivers up to `count` new entries of `stream` to `group` (consumer "operator"), without
/// acknowledging them; returns their ids.
fn deliver(blog: &Blog, stream: &str, group: &str, count: usize) -> Vec<String> {
    let reply: redis::streams::StreamReadReply = redis::cmd("XREADGROUP")
        .arg("GROUP")
        .arg(group)
        .arg("operator")
        .arg("COUNT")
        .arg(count)
        .arg("STREAMS")
        .arg(stream)
        .arg(">")
        .query(&mut blog.redis.connection())
        .unwrap();
    reply
        .keys
        .into_iter()
        .flat_map(|key| key.ids)
        .map(|entry| entry.id)
        .collect()
}

/// Acknowledges entries of `stream` for `group`.
fn ack(blog: &Blog, stream: &str, group: &str, ids: &[String]) {
    let _: u64 = redis::cmd("XACK")
        .arg(stream)
        .arg(group)
        .arg(ids)
        .query(&mut blog.redis.connection())
        .unwrap();
}

fn ndjson(text: &str) -> Vec<Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// An archive's entry lines, without its check lines.
fn archived_entries(text: &str) -> Vec<Value> {
    ndjson(text)
        .into_iter()
        .filter(|line| line.get("check").is_none())
        .collect()
}

/// How many entry lines each check line of an archive covers, in order.
fn archive_checks(text: &str) -> Vec<u64> {
    ndjson(text)
        .iter()
        .filter_map(|line| line["check"]["entries"].as_u64())
        .collect()
}

fn ids_of(stream_entries: &[(String, Vec<(String, String)>)]) -> Vec<String> {
    stream_entries.iter().map(|(id, _)| id.clone()).collect()
}

#[test]
fn status_shows_every_group_caught_up_after_a_story_and_check_passes() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    let post = blog.ok(&["post", "create", "--wait", "Status"]);
    blog.ok(&["comment", "create", "--wait", &post, "fine"]);
    blog.ok(&["comment", "create", "--wait", &post, "orange"]);

    let status = wait_until_caught_up(&blog);
    // The events streams first, one per producer: a PostCreated on the posts' stream, two
    // CommentCreated and two CommentUpdated on the comments', two CommentModerated on
    // moderation's.
    for (index, (producer, length)) in [("posts", 1), ("comments", 4), ("moderation", 2)]
        .into_iter()
        .enumerate()
    {
        let events = &status["streams"][index];
        assert_eq!(events["stream"], blog.events(producer), "{status}");
        assert_eq!(events["length"], length, "{producer}: {status}");
        assert!(events["memory_bytes"].as_u64().unwrap() > 0);
    }
    for (stream, name) in expected_groups(&blog) {
        let group = group(&status, &stream, name);
        assert_eq!(group["expected"], true);
        assert_eq!(group["dead_letters"], 0);
        assert_eq!(group["consumers"].as_array().unwrap().len(), 1, "{group}");
        assert!(group["oldest_pending_id"].is_null());
        let stream_last = status["streams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["stream"] == stream)
            .unwrap()["last_id"]
            .clone();
        assert_eq!(group["last_delivered_id"], stream_last, "{group}");
    }
    assert_eq!(status["dead_letters"]["count"], 0);
    assert_eq!(status["problems"], serde_json::json!([]));

    let human = blog.ok(&["status"]);
    for name in ["comments", "moderation", "query", "posts"] {
        assert!(human.contains(name), "{human}");
    }
    assert!(!human.contains("MISSING"), "{human}");

    let check = blog.run(&["status", "--check"]);
    assert_eq!(check.code, 0, "{check:?}");
    assert_eq!(check.stderr, "");
}

#[test]
fn check_exits_6_when_a_stopped_service_falls_behind() {
    let blog = Blog::new();
    let all = blog.serve(&["all"]);
    blog.ok(&["post", "create", "--wait", "Before"]);
    wait_until_caught_up(&blog);
    assert_eq!(all.terminate().0, 0);

    // Query is down while posts are created: its lag grows, the others keep up.
    let _others = blog.serve(&["posts", "comments", "moderation"]);
    for title in ["One", "Two", "Three"] {
        blog.ok(&["post", "create", title]);
    }
    // The new posts are on the posts' stream, which comments reads too; moderation reads only
    // the comments' stream, where nothing new is.
    let (events, comments) = (blog.events("posts"), blog.events("comments"));
    let others_caught_up = wait_until(PATIENCE, || {
        let status = status_json(&blog);
        group(&status, &events, "comments")["lag"] == 0
            && group(&status, &comments, "moderation")["lag"] == 0
    });
    assert!(others_caught_up);
    let status = status_json(&blog);
    assert_eq!(group(&status, &events, "query")["lag"], 3, "{status}");
    assert_eq!(group(&status, &comments, "query")["lag"], 0, "{status}");

    let check = blog.run(&["status", "--check", "--max-lag", "0"]);
    assert_eq!(check.code, 6, "{check:?}");
    let problems: Vec<&str> = check
        .stderr
        .lines()
        .filter(|line| line.contains("unhealthy"))
        .collect();
    assert_eq!(problems.len(), 2, "{}", check.stderr);
    assert!(
        problems[0].contains("no consumer of group query")
            && problems[0].contains("3 entries wait")
    );
    assert!(problems[1].contains("group query") && problems[1].contains("lags 3 entries"));
    assert!(
        check.stdout.contains("query"),
        "the report is still printed"
    );

    // Each service's own check only looks at its groups.
    let posts = blog.run(&["status", "--check", "--max-lag", "0", "--service", "posts"]);
    assert_eq!(posts.code, 0, "{posts:?}");
    assert!(!posts.stdout.contains("moderation"), "{}", posts.stdout);
    let query = blog.run(&["status", "--check", "--max-lag", "0", "--service", "query"]);
    assert_eq!(query.code, 6, "{query:?}");
    // Under the default threshold, the lag alone is fine; that no query consumer is alive is not.
    let dead = blog.run(&["status", "--check"]);
    assert_eq!(dead.code, 6, "{dead:?}");
    assert!(
        dead.stderr.contains("no consumer of group query"),
        "{dead:?}"
    );
    let _query = blog.serve(&["query"]);
    assert!(wait_until(PATIENCE, || blog
        .run(&["status", "--check"])
        .code
        == 0));
}

#[test]
fn check_exits_6_for_missing_groups_and_old_pending_entries() {
    let blog = Blog::new();
    let missing = blog.run(&["status", "--check"]);
    assert_eq!(missing.code, 6, "{missing:?}");
    for (stream, name) in expected_groups(&blog) {
        assert!(
            missing
                .stderr
                .lines()
                .any(|line| line.contains(&format!("group {name} on {stream} is missing"))),
            "{}",
            missing.stderr
        );
    }
    assert!(missing.stdout.contains("MISSING"), "{}", missing.stdout);
    let status = status_json(&blog);
    for producer in ["posts", "comments"] {
        assert_eq!(
            group(&status, &blog.events(producer), "query")["missing"],
            true
        );
    }

    // Every group there, and an entry of the posts' stream delivered to query that nobody
    // acknowledges.
    for (stream, name) in expected_groups(&blog) {
        create_group(&blog, &stream, name);
    }
    let stuck = add_event(&blog, "Unknown", "test", "{}");
    assert_eq!(
        deliver(&blog, &blog.events("posts"), "query", 10),
        std::slice::from_ref(&stuck)
    );
    // Held by a consumer that is alive (its liveness key is there), only slow.
    let alive = blog.keys().alive_prefix(
        blogctl::keyspace::Service::Query,
        blogctl::keyspace::Partition::FIRST,
    ) + "operator";
    let _: () = redis::cmd("SET")
        .arg(&alive)
        .arg("1")
        .query(&mut blog.redis.connection())
        .unwrap();
    let check = |age: &str| blog.run(&["status", "--check", "--max-pending-age", age]);
    // (The groups with lag and no consumer alive are problems of their own.)
    let patient = check("600");
    assert!(!patient.stderr.contains("pending for"), "{patient:?}");
    assert!(
        !patient.stderr.contains("no consumer of group query"),
        "{patient:?}"
    );
    let mut run = check("0.05");
    assert!(
        wait_until(PATIENCE, || {
            run = check("0.05");
            run.code == 6 && run.stderr.contains("pending for")
        }),
        "{run:?}"
    );
    assert!(
        run.stderr.contains(&format!(
            "group query on {} has had entry {stuck} pending for",
            blog.events("posts")
        )),
        "{}",
        run.stderr
    );
    let status = status_json(&blog);
    let query = group(&status, &blog.events("posts"), "query");
    assert_eq!(query["pending"], 1);
    assert_eq!(query["oldest_pending_id"], stuck.as_str());
    assert_eq!(query["consumers"][0]["name"], "operator");
    assert_eq!(query["consumers"][0]["pending"], 1);
    assert_eq!(group(&status, &blog.events("posts"), "comments")["lag"], 1);
}

/// Waits until Redis's clock is past the millisecond of entry `id`: an entry added afterwards,
/// on any stream, gets a greater id. (Entries of different streams made within one millisecond
/// may share an id; the merged log then orders them by stream, not by when they were added.)
fn after_the_millisecond_of(blog: &Blog, id: &str) {
    let ms: u64 = id.split('-').next().unwrap().parse().unwrap();
    let mut connection = blog.redis.connection();
    assert!(wait_until(PATIENCE, || {
        let (seconds, micros): (u64, u64) = redis::cmd("TIME").query(&mut connection).unwrap();
        seconds * 1000 + micros / 1000 > ms
    }));
}

#[test]
fn events_list_filters_counts_and_prints_ndjson() {
    let blog = Blog::new();
    let post = r#"{"id":"01a215bb-4e3f-7046-934b-202e71f70de3","title":"Listed"}"#;
    // Events on all three streams, each added in a later millisecond than the one before, so
    // the merged log lists them in the order they were added.
    let first = add_event(&blog, "PostCreated", "posts", post);
    after_the_millisecond_of(&blog, &first);
    let second = add_event(&blog, "CommentCreated", "comments", r#"{"id":"x"}"#);
    after_the_millisecond_of(&blog, &second);
    let third = add_event(&blog, "PostCreated", "posts", "not json");
    after_the_millisecond_of(&blog, &third);
    let odd = xadd(
        &blog,
        &blog.events("moderation"),
        &[("type", b"Odd"), ("data", b"bytes \xff\xfe here")],
    );

    let human = blog.ok(&["events", "list"]);
    let lines: Vec<&str> = human.lines().collect();
    assert_eq!(lines.len(), 4, "{human}");
    // id, stream, type, producer, request id, data; in columns.
    let line = |id: &str, stream: &str, kind: &str, producer: &str, request: &str, data: &str| {
        format!("{id}  {stream:<10}  {kind:<16}  {producer:<10}  {request}  {data}")
    };
    assert_eq!(
        lines,
        [
            line(
                &first,
                "posts",
                "PostCreated",
                "posts",
                "test-request",
                post
            ),
            line(
                &second,
                "comments",
                "CommentCreated",
                "comments",
                "test-request",
                r#"{"id":"x"}"#
            ),
            line(
                &third,
                "posts",
                "PostCreated",
                "posts",
                "test-request",
                "not json"
            ),
            line(
                &odd,
                "moderation",
                "Odd",
                "-",
                "-",
                "bytes \u{fffd}\u{fffd} here"
            ),
        ]
    );

    let all = ndjson(&blog.ok(&["events", "list", "--json"]));
    assert_eq!(all.len(), 4);
    assert_eq!(all[0]["id"], first.as_str());
    assert_eq!(all[0]["stream"], "posts");
    assert_eq!(all[0]["type"], "PostCreated");
    assert_eq!(all[0]["version"], "1");
    assert_eq!(all[0]["request_id"], "test-request");
    assert_eq!(all[0]["producer"], "posts");
    assert_eq!(all[0]["data"]["title"], "Listed", "data is parsed JSON");
    assert_eq!(all[1]["id"], second.as_str());
    assert_eq!(all[1]["stream"], "comments");
    assert_eq!(all[2]["stream"], "posts");
    assert_eq!(
        all[2]["data"], "not json",
        "data that is not JSON stays text"
    );
    assert_eq!(all[3]["id"], odd.as_str());
    assert_eq!(all[3]["stream"], "moderation");
    assert!(all[3]["producer"].is_null());

    let posts = ndjson(&blog.ok(&["events", "list", "--json", "--type", "PostCreated"]));
    let ids: Vec<&str> = posts.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [first.as_str(), third.as_str()]);
    let comments = ndjson(&blog.ok(&["events", "list", "--json", "--type", "CommentCreated"]));
    let ids: Vec<&str> = comments.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [second.as_str()]);
    let one = ndjson(&blog.ok(&[
        "events",
        "list",
        "--json",
        "--type",
        "PostCreated",
        "--count",
        "1",
    ]));
    assert_eq!(one.len(), 1);
    let from = ndjson(&blog.ok(&[
        "events", "list", "--json", "--from", &second, "--count", "2",
    ]));
    let ids: Vec<&str> = from.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [second.as_str(), third.as_str()]);

    let bad = blog.run(&["events", "list", "--from", "yesterday"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert_eq!(bad.stderr.lines().count(), 1, "{}", bad.stderr);
    assert_eq!(blog.run(&["events", "list", "--count", "0"]).code, 2);
    assert_eq!(blog.ok(&["--namespace", "empty", "events", "list"]), "");
}

/// Starts `events tail --json <args>`; its lines arrive on the receiver as it prints them.
fn tail(blog: &Blog, args: &[&str]) -> (std::process::Child, mpsc::Receiver<String>) {
    let mut tail = blog
        .command()
        .args(["events", "tail", "--json"])
        .args(args)
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

#[test]
fn events_tail_prints_new_events_and_stops_on_sigterm() {
    let blog = Blog::new();
    add_event(&blog, "PostCreated", "posts", r#"{"title":"old"}"#);
    let (mut tail, received) = tail(&blog, &["--type", "PostCreated"]);
    let next_line = |limit: Duration| received.recv_timeout(limit).ok();

    // Tail starts after the entries already there: add probes until one shows up.
    let deadline = Instant::now() + PATIENCE;
    let first = loop {
        assert!(Instant::now() < deadline, "tail printed nothing");
        add_event(&blog, "PostCreated", "posts", r#"{"title":"probe"}"#);
        if let Some(line) = next_line(Duration::from_millis(200)) {
            break line;
        }
    };
    let first: Value = serde_json::from_str(&first).unwrap();
    assert_eq!(
        first["data"]["title"], "probe",
        "the old entry is not printed"
    );

    add_event(
        &blog,
        "CommentCreated",
        "comments",
        r#"{"title":"filtered out"}"#,
    );
    let last = add_event(&blog, "PostCreated", "posts", r#"{"title":"last"}"#);
    loop {
        let line = next_line(PATIENCE).expect("tail printed the last event");
        let event: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(event["type"], "PostCreated", "{line}");
        if event["id"] == last.as_str() {
            assert_eq!(event["data"]["title"], "last");
            break;
        }
        assert_eq!(event["data"]["title"], "probe", "{line}");
    }

    signal(tail.id(), "TERM");
    let deadline = Instant::now() + PATIENCE;
    let status = loop {
        if let Some(status) = tail.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "tail ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut tail.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert_eq!(stderr, "");
}

/// More entries on one stream than `events tail` reads at once, and one on another stream in
/// their midst: it is printed in its place, not after the first batch.
#[test]
fn events_tail_keeps_id_order_across_streams_past_a_full_batch() {
    let blog = Blog::new();
    let (mut tail, received) = tail(&blog, &[]);
    let deadline = Instant::now() + PATIENCE;
    while received.recv_timeout(Duration::from_millis(200)).is_err() {
        assert!(Instant::now() < deadline, "tail printed nothing");
        add_event(&blog, "PostCreated", "posts", r#"{"title":"probe"}"#);
    }
    // Ids far ahead of the probes, all added at once.
    let base: u64 = 9_000_000_000_000;
    let mut pipe = redis::pipe();
    pipe.atomic();
    for n in 1..=1200 {
        pipe.cmd("XADD")
            .arg(blog.events("posts"))
            .arg(format!("{}-0", base + n))
            .arg("type")
            .arg("Unknown")
            .ignore();
    }
    let middle = format!("{}-5", base + 100);
    pipe.cmd("XADD")
        .arg(blog.events("comments"))
        .arg(&middle)
        .arg("type")
        .arg("Unknown")
        .ignore();
    let _: () = pipe.query(&mut blog.redis.connection()).unwrap();
    let mut printed: Vec<(String, String)> = Vec::new();
    while printed.len() < 1201 {
        let line = received
            .recv_timeout(PATIENCE)
            .expect("tail printed every entry");
        let event: Value = serde_json::from_str(&line).unwrap();
        let id = event["id"].as_str().unwrap().to_owned();
        if id.starts_with('9') {
            printed.push((id, event["stream"].as_str().unwrap().to_owned()));
        }
    }
    signal(tail.id(), "TERM");
    let _ = tail.wait();
    let at = printed.iter().position(|(id, _)| *id == middle).unwrap();
    assert_eq!(printed[at].1, "comments");
    assert_eq!(printed[at - 1].0, format!("{}-0", base + 100));
    assert_eq!(printed[at + 1].0, format!("{}-0", base + 101));
}

#[test]
fn dead_letters_are_listed_dropped_all_or_nothing_and_ids_checked() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    blog.ok(&["post", "create", "--wait", "Dead letters"]);
    // Dead-lettered by the services that use the type, each read from its producer's stream:
    // comments and query, then comments.
    let (posts, moderation) = (blog.events("posts"), blog.events("moderation"));
    let bad_post = add_event(&blog, "PostCreated", "test", "not json");
    let bad_verdict = add_event(&blog, "CommentModerated", "test", "not json");
    // Two streams may give the same id: a letter's entry type says which one it came from.
    let stream_of_letter = |letter: &Value| {
        if letter["entry"]["type"] == "PostCreated" {
            posts.as_str()
        } else {
            moderation.as_str()
        }
    };

    let mut letters = Vec::new();
    assert!(wait_until(PATIENCE, || {
        letters = ndjson(&blog.ok(&["dead", "list", "--json"]));
        letters.len() == 3
    }));
    let mut services: Vec<(&str, &str, &str)> = letters
        .iter()
        .map(|letter| {
            (
                letter["stream"].as_str().unwrap(),
                letter["id"].as_str().unwrap(),
                letter["service"].as_str().unwrap(),
            )
        })
        .collect();
    services.sort();
    let mut expected = [
        (posts.as_str(), bad_post.as_str(), "comments"),
        (posts.as_str(), bad_post.as_str(), "query"),
        (moderation.as_str(), bad_verdict.as_str(), "comments"),
    ];
    expected.sort();
    assert_eq!(services, expected);
    for letter in &letters {
        assert_eq!(letter["stream"], stream_of_letter(letter));
        let kind = letter["entry"]["type"].as_str().unwrap();
        assert!(
            letter["reason"]
                .as_str()
                .unwrap()
                .contains(&format!("{kind} data is invalid"))
        );
        assert!(letter["deliveries"].as_u64().unwrap() >= 1);
        assert_eq!(letter["entry"]["data"], "not json");
        assert_eq!(letter["entry"]["producer"], "test");
    }
    let dead_ids: Vec<String> = letters
        .iter()
        .map(|letter| letter["dead_id"].as_str().unwrap().to_owned())
        .collect();
    let human = blog.ok(&["dead", "list"]);
    assert_eq!(human.lines().count(), 4, "a header and three rows: {human}");
    assert!(human.lines().nth(1).unwrap().starts_with(&dead_ids[0]));

    // An unknown id among known ones: exit 3, nothing dropped.
    let partly = blog.run(&["dead", "drop", &dead_ids[0], "1-1"]);
    assert_eq!(partly.code, 3, "{partly:?}");
    assert!(partly.stderr.contains("1-1"));
    assert_eq!(blog.entries(&blog.dead()).len(), 3);
    let retry_unknown = blog.run(&["dead", "retry", &dead_ids[0], "1-1"]);
    assert_eq!(retry_unknown.code, 3, "{retry_unknown:?}");
    assert_eq!(blog.entries(&blog.dead()).len(), 3);
    assert_eq!(blog.run(&["dead", "drop", "not-an-id"]).code, 2);
    assert_eq!(blog.run(&["dead", "retry"]).code, 2);

    assert_eq!(
        blog.ok(&["dead", "drop", &dead_ids[0], &dead_ids[1], &dead_ids[0]]),
        format!("dropped {}\ndropped {}", dead_ids[0], dead_ids[1])
    );
    let left = ids_of(&blog.entries(&blog.dead()));
    assert_eq!(left, [dead_ids[2].clone()]);
    assert_eq!(blog.run(&["dead", "drop", &dead_ids[0]]).code, 3);

    // Retried, the malformed entry fails again for its one service only.
    let retried = blog.ok(&["--json", "dead", "retry", &dead_ids[2]]);
    let retried: Value = serde_json::from_str(&retried).unwrap();
    let service = letters[2]["service"].as_str().unwrap();
    assert_eq!(retried["service"], service);
    assert_eq!(retried["stream"], stream_of_letter(&letters[2]));
    let mut again = Vec::new();
    assert!(
        wait_until(PATIENCE, || {
            again = ndjson(&blog.ok(&["dead", "list", "--json"]));
            again.len() == 1 && again[0]["id"] == retried["id"]
        }),
        "{again:?}"
    );
    assert_eq!(again[0]["service"], service);
    assert_eq!(again[0]["entry"]["for_service"], service);
    wait_until_caught_up(&blog);
}

/// A dead letter naming a service that does not read its stream (edited, or hand-made) is not
/// put back: no group would ever handle it.
#[test]
fn dead_retry_refuses_a_letter_for_a_service_that_does_not_read_its_stream() {
    let blog = Blog::new();
    let letter = xadd(
        &blog,
        &blog.dead(),
        &[
            ("stream", blog.events("posts").as_bytes()),
            ("id", b"1-1"),
            ("service", b"moderation"),
            ("reason", b"made by hand"),
            ("entry", br#"{"type":"PostCreated"}"#),
        ],
    );
    let run = blog.run(&["dead", "retry", &letter]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("does not read"), "{run:?}");
    assert_eq!(blog.entries(&blog.dead()).len(), 1);
    assert!(blog.entries(&blog.events("posts")).is_empty());
}

#[test]
fn dead_retry_puts_an_event_back_for_its_service_only() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    blog.ok(&["post", "create", "--wait", "Alive"]);
    let events = blog.events("posts");
    wait_until_caught_up(&blog);

    // A PostCreated that query failed on: it only ever reached the dead letters.
    let post_id = "01a215bb-0000-7000-8000-00000000abcd";
    let data = format!(r#"{{"id":"{post_id}","title":"Revived"}}"#);
    let entry = serde_json::json!({
        "type": "PostCreated", "version": "1", "request_id": "revival",
        "producer": "posts", "data": data,
    })
    .to_string();
    let dead_id = xadd(
        &blog,
        &blog.dead(),
        &[
            ("stream", events.as_bytes()),
            ("id", b"1-1"),
            ("service", b"query"),
            ("reason", b"failed 5 times; last error: test"),
            ("deliveries", b"5"),
            ("entry", entry.as_bytes()),
        ],
    );
    let listed = ndjson(&blog.ok(&["dead", "list", "--json"]));
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["dead_id"], dead_id.as_str());
    assert_eq!(listed[0]["deliveries"], 5);

    let out = blog.ok(&["dead", "retry", &dead_id]);
    assert!(
        out.starts_with(&format!("retried {dead_id}: back on {events} as ")),
        "{out}"
    );
    assert!(
        blog.entries(&blog.dead()).is_empty(),
        "the dead letter is gone"
    );

    let view = blog.wait_for_view(2, 0);
    assert!(
        view.as_array()
            .unwrap()
            .iter()
            .any(|post| post["title"] == "Revived")
    );
    wait_until_caught_up(&blog);
    // Comments skipped it: it never learnt the post, so a comment on it is refused.
    let comment = blog.run(&["comment", "create", post_id, "hello?"]);
    assert_eq!(comment.code, 3, "{comment:?}");

    let put_back = ndjson(&blog.ok(&["events", "list", "--json", "--type", "PostCreated"]));
    let put_back = put_back.last().unwrap();
    assert_eq!(put_back["for_service"], "query");
    assert_eq!(put_back["request_id"], "revival");
    assert_eq!(put_back["data"]["title"], "Revived");
    assert!(blog.ok(&["dead", "list"]).contains("no dead letters"));
    assert_eq!(blog.run(&["dead", "retry", &dead_id]).code, 3);
}

#[test]
fn trim_archives_exactly_the_acknowledged_entries() {
    let blog = Blog::new();
    let services = blog.serve(&["all"]);
    let post = blog.ok(&["post", "create", "--wait", "Trimmed"]);
    blog.ok(&["comment", "create", "--wait", &post, "old news"]);
    blog.ok(&["comment", "create", "--wait", &post, "older news"]);
    // A dead letter: a malformed request, which comments dead-letters (the events stay as they are).
    let comments_inbox = blog.inbox("comments");
    xadd(&blog, &comments_inbox, &[("garbage", b"yes")]);
    assert!(wait_until(PATIENCE, || blog.entries(&blog.dead()).len() == 1));
    wait_until_caught_up(&blog);
    assert_eq!(services.terminate().0, 0);
    // A request waiting in the posts inbox while its service is stopped.
    let waiting = blog.run(&["--timeout", "0.3", "post", "create", "Waiting"]);
    assert_eq!(waiting.code, 5, "{waiting:?}");
    let posts_inbox = blog.inbox("posts");
    let untouchable = [posts_inbox, comments_inbox, blog.dead()];
    let before: Vec<_> = untouchable.iter().map(|key| blog.entries(key)).collect();
    assert_eq!(
        before.iter().map(Vec::len).collect::<Vec<_>>(),
        [1, 0, 1],
        "{before:?}"
    );
    // The comments' stream: each comment created, then updated with its verdict.
    let events = blog.events("comments");
    let story = blog.entries(&events);
    assert_eq!(story.len(), 4);

    // Two more events on it: both groups reading it get both; query acknowledges only the
    // second.
    let newer = [
        xadd(&blog, &events, &[("type", b"Unknown"), ("data", b"{}")]),
        xadd(&blog, &events, &[("type", b"Unknown"), ("data", b"{}")]),
    ];
    for group in ["moderation", "query"] {
        assert_eq!(deliver(&blog, &events, group, 10), newer);
    }
    ack(&blog, &events, "moderation", &newer);
    ack(&blog, &events, "query", &newer[1..]);

    let dir = tempfile::tempdir().unwrap();
    let archive_dir = dir.path().join("archive");
    let archive_arg = archive_dir.to_str().unwrap();
    let archive = archive_dir.join("comments.ndjson");
    // A first trim that stopped after archiving one entry, mid-way through the second line.
    let fields: serde_json::Map<String, Value> = story[0]
        .1
        .iter()
        .map(|(name, value)| (name.clone(), Value::String(value.clone())))
        .collect();
    let first_line = serde_json::json!({ "id": story[0].0, "fields": fields });
    std::fs::create_dir(&archive_dir).unwrap();
    std::fs::write(&archive, format!("{first_line}\n{{\"id\":\"{}", story[1].0)).unwrap();

    let no = blog.run(&["trim", "--archive", archive_arg]);
    assert_eq!(no.code, 2, "without --yes and no terminal: {no:?}");
    assert!(no.stderr.contains("--yes"));
    assert_eq!(blog.entries(&events).len(), 6);

    let out = blog.ok(&["trim", "--archive", archive_arg, "--yes"]);
    assert!(
        out.contains(&format!(
            "archived 3 entries to {} (1 entry was already there)\n\
             removed 4 entries from {events} (every entry before {})",
            archive.display(),
            newer[0]
        )),
        "{out}"
    );
    // The other streams, read by groups that acknowledged everything, are trimmed whole.
    for producer in ["posts", "moderation"] {
        assert!(
            blog.entries(&blog.events(producer)).is_empty(),
            "{producer}"
        );
        let text = std::fs::read_to_string(archive_dir.join(format!("{producer}.ndjson")));
        assert_eq!(
            archived_entries(&text.unwrap()).len(),
            [1, 2][(producer == "moderation") as usize]
        );
    }
    assert_eq!(
        ids_of(&blog.entries(&events)),
        newer,
        "what query still needs stays"
    );
    let text = std::fs::read_to_string(&archive).unwrap();
    let archived = archived_entries(&text);
    let archived_ids: Vec<&str> = archived.iter().map(|l| l["id"].as_str().unwrap()).collect();
    assert_eq!(archived_ids, ids_of(&story), "each entry once, in order");
    // One check, covering the line the stopped trim left and the three this one wrote.
    assert_eq!(archive_checks(&text), [4]);
    for (line, (id, fields)) in archived.iter().zip(&story) {
        assert_eq!(line["id"], id.as_str());
        let object = line["fields"].as_object().unwrap();
        assert_eq!(object.len(), fields.len());
        for (name, value) in fields {
            assert_eq!(object[name], value.as_str());
        }
    }

    // Nothing more to trim until query acknowledges its pending entry; one line per stream.
    let of_comments = |out: &str| -> Value {
        let lines = ndjson(out);
        assert_eq!(lines.len(), 3, "{out}");
        lines
            .into_iter()
            .find(|line| line["stream"] == events.as_str())
            .unwrap()
    };
    let again = of_comments(&blog.ok(&["--json", "trim", "--archive", archive_arg, "--yes"]));
    assert_eq!(again["removed"], 0);
    assert_eq!(again["archived"], 0);
    ack(&blog, &events, "query", &newer[..1]);
    let last = of_comments(&blog.ok(&["--json", "trim", "--archive", archive_arg, "--yes"]));
    assert_eq!(
        (last["archived"].as_u64(), last["removed"].as_u64()),
        (Some(2), Some(2))
    );
    assert!(blog.entries(&events).is_empty());
    let text = std::fs::read_to_string(&archive).unwrap();
    assert_eq!(archive_checks(&text), [4, 2]);
    let archived = archived_entries(&text);
    assert_eq!(archived.len(), 6);
    assert_eq!(archived[4]["id"], newer[0].as_str());
    assert_eq!(archived[5]["fields"]["type"], "Unknown");
    // Inboxes and dead letters are never touched.
    let after: Vec<_> = untouchable.iter().map(|key| blog.entries(key)).collect();
    assert_eq!(after, before);
}

#[test]
fn trim_refuses_when_a_group_is_missing_or_behind() {
    let blog = Blog::new();
    let events = blog.events("posts");
    // Every group but query's on the posts' stream.
    for (stream, name) in expected_groups(&blog) {
        if (stream.as_str(), name) != (events.as_str(), "query") {
            create_group(&blog, &stream, name);
        }
    }
    for _ in 0..3 {
        add_event(&blog, "Unknown", "test", "{}");
    }
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let archive_arg = archive.to_str().unwrap();

    let missing = blog.run(&["trim", "--archive", archive_arg, "--yes"]);
    assert_eq!(missing.code, 2, "{missing:?}");
    assert_eq!(missing.stderr.lines().count(), 1, "{}", missing.stderr);
    assert!(
        missing.stderr.contains("query is missing"),
        "{}",
        missing.stderr
    );
    assert_eq!(blog.entries(&events).len(), 3);
    assert!(!archive.exists());

    create_group(&blog, &events, "query");
    for group in ["comments", "query"] {
        let ids = deliver(&blog, &events, group, 10);
        ack(&blog, &events, group, &ids);
    }
    add_event(&blog, "Unknown", "test", "{}");
    let behind = blog.run(&["trim", "--archive", archive_arg, "--yes", "--max-lag", "0"]);
    assert_eq!(behind.code, 2, "{behind:?}");
    assert!(behind.stderr.contains("lags 1 entry"), "{}", behind.stderr);
    assert_eq!(blog.entries(&events).len(), 4);
    assert!(!archive.exists());

    // A file where the archive directory should be is refused.
    std::fs::write(&archive, "my notes\n").unwrap();
    let file = blog.run(&["trim", "--archive", archive_arg, "--yes"]);
    assert_eq!(file.code, 2, "{file:?}");
    assert!(file.stderr.contains("not a directory"), "{}", file.stderr);
    assert_eq!(std::fs::read_to_string(&archive).unwrap(), "my notes\n");

    // A file in the directory that is not an archive is not appended to, and no stream is
    // trimmed: every archive is opened before any stream is touched.
    let ids = deliver(&blog, &events, "comments", 10);
    ack(&blog, &events, "comments", &ids);
    let comments = blog.events("comments");
    add_event(&blog, "CommentCreated", "comments", "{}");
    for group in ["moderation", "query"] {
        let ids = deliver(&blog, &comments, group, 10);
        ack(&blog, &comments, group, &ids);
    }
    std::fs::remove_file(&archive).unwrap();
    std::fs::create_dir(&archive).unwrap();
    std::fs::write(archive.join("comments.ndjson"), "my notes\n").unwrap();
    let other = blog.run(&["trim", "--archive", archive_arg, "--yes"]);
    assert_eq!(other.code, 2, "{other:?}");
    assert!(
        other.stderr.contains("not a blogctl archive"),
        "{}",
        other.stderr
    );
    assert_eq!(
        std::fs::read_to_string(archive.join("comments.ndjson")).unwrap(),
        "my notes\n"
    );
    assert_eq!(
        blog.entries(&events).len(),
        4,
        "the posts' stream was trimmed"
    );
    assert_eq!(blog.entries(&comments).len(), 1);
    assert!(
        !archive.join("posts.ndjson").exists(),
        "a refused trim created an archive"
    );
}

#[test]
fn completions_are_generated_for_each_shell() {
    let blog = Blog::new();
    let top = [
        "serve",
        "post",
        "comment",
        "status",
        "events",
        "dead",
        "trim",
        "completions",
        "rebuild",
        "bench",
    ];
    let bash = blog.ok(&["completions", "bash"]);
    assert!(bash.starts_with("_blogctl() {"), "defines _blogctl: {bash}");
    assert!(bash.contains("complete -F _blogctl"), "{bash}");
    let zsh = blog.ok(&["completions", "zsh"]);
    assert!(zsh.starts_with("#compdef blogctl\n"), "{zsh}");
    let fish = blog.ok(&["completions", "fish"]);
    // Each shell offers every subcommand, in its own syntax.
    for name in top {
        assert!(bash.contains(&format!("blogctl,{name})")), "bash: {name}");
        assert!(zsh.contains(&format!("\n'{name}:")), "zsh: {name}");
        let fish_line =
            format!(r#"complete -c blogctl -n "__fish_blogctl_needs_command" -f -a "{name}""#);
        assert!(fish.contains(&fish_line), "fish: {name}");
    }
    // And the second level of the tree: `dead retry`, `events tail`.
    for (parent, name) in [("dead", "retry"), ("events", "tail")] {
        assert!(
            bash.contains(&format!("__{parent},{name})")),
            "bash: {parent} {name}"
        );
        assert!(zsh.contains(&format!("\n'{name}:")), "zsh: {parent} {name}");
        assert!(
            fish.lines()
                .any(|line| line.contains(&format!("using_subcommand {parent}"))
                    && line.contains(&format!(r#"-a "{name}""#))),
            "fish: {parent} {name}"
        );
    }
    assert_eq!(blog.run(&["completions", "tcsh"]).code, 2);
}

#[test]
fn a_rebuild_reads_the_trim_archive_then_the_rest_of_the_log() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    for title in ["First", "Second"] {
        let post = blog.ok(&["post", "create", "--wait", title]);
        blog.ok(&["comment", "create", "--wait", &post, "an orange"]);
    }
    wait_until_caught_up(&blog);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let archive_arg = archive.to_str().unwrap();
    // One line per stream: 2 PostCreated; 2 CommentCreated and 2 CommentUpdated; 2
    // CommentModerated.
    let trimmed = ndjson(&blog.ok(&["--json", "trim", "--archive", archive_arg, "--yes"]));
    let removed: Vec<u64> = trimmed
        .iter()
        .map(|line| line["removed"].as_u64().unwrap())
        .collect();
    assert_eq!(removed, [2, 4, 2]);
    let post = blog.ok(&["post", "create", "--wait", "Third"]);
    blog.ok(&["comment", "create", "--wait", &post, "fine"]);
    wait_until_caught_up(&blog);
    let live = blog.view();
    assert_eq!(live.as_array().unwrap().len(), 3);

    let rebuilt: Value =
        serde_json::from_str(&blog.ok(&["--json", "rebuild", "query", "--archive", archive_arg]))
            .unwrap();
    // Query's state is built from the posts' and the comments' streams.
    assert_eq!(rebuilt["from_archives"], 6, "{rebuilt}");
    assert_eq!(blog.view(), live);
}

#[test]
fn check_exits_6_when_requests_wait_and_no_consumer_is_alive() {
    let blog = Blog::new();
    let all = blog.serve(&["all"]);
    blog.ok(&["post", "create", "--wait", "Before"]);
    wait_until_caught_up(&blog);
    assert_eq!(blog.run(&["status", "--check"]).code, 0);
    assert_eq!(all.terminate().0, 0);
    // A request waits in the posts inbox, and nothing serves it.
    let waiting = blog.run(&["post", "create", "--timeout", "0.2", "Nobody home"]);
    assert_eq!(waiting.code, 5, "{waiting:?}");
    let check = blog.run(&["status", "--check"]);
    assert_eq!(check.code, 6, "{check:?}");
    assert!(
        check.stderr.contains(&format!(
            "no consumer of group posts on {} is alive, and 1 entry wait",
            blog.inbox("posts")
        )),
        "{}",
        check.stderr
    );
    let _posts = blog.serve(&["posts"]);
    assert!(wait_until(PATIENCE, || blog
        .run(&["status", "--check"])
        .code
        == 0));
}

#[test]
fn man_pages_are_written_for_every_subcommand() {
    let blog = Blog::new();
    let dir = tempfile::tempdir().unwrap();
    let dir_text = dir.path().to_str().unwrap();
    let listed = blog.ok(&["man", "--dir", dir_text]);
    for name in [
        "blogctl",
        "blogctl-post-create",
        "blogctl-dead-retry",
        "blogctl-rebuild",
    ] {
        let path = dir.path().join(format!("{name}.1"));
        assert!(listed.contains(path.to_str().unwrap()), "{listed}");
        let page = std::fs::read_to_string(&path).unwrap();
        assert!(
            page.contains(&format!(".TH {} 1", name.to_uppercase())),
            "{name}: {page}"
        );
        assert!(page.contains(&name.replace('-', " ")), "{name}: {page}");
    }
    let post_create = std::fs::read_to_string(dir.path().join("blogctl-post-create.1")).unwrap();
    assert!(post_create.contains("request\\-id"), "{post_create}");
    let missing = blog.run(&["man", "--dir", "/nonexistent/blogctl-man"]);
    assert_eq!(missing.code, 2, "{missing:?}");
    assert!(missing.stderr.contains("is not a directory"), "{missing:?}");
}

/// What an HTTP GET of `path` on `port` answers, whole; `None` while nothing listens.
fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: test\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}

#[test]
fn serve_exposes_prometheus_metrics_that_move() {
    let blog = Blog::new();
    let port = crate::support::free_port();
    let address = format!("127.0.0.1:{port}");
    let _services = blog.serve(&["all", "--metrics", &address]);
    let mut scraped = String::new();
    assert!(wait_until(PATIENCE, || {
        scraped = http_get(port, "/metrics").unwrap_or_default();
        scraped.starts_with("HTTP/1.1 200")
    }));
    let post = blog.ok(&["post", "create", "--wait", "Measured"]);
    assert_eq!(blog.verdict(&post, "counted"), "approved");
    let (posts, comments) = (blog.events("posts"), blog.events("comments"));
    // Moderation reads only the comments' stream: it applies the CommentCreated and skips the
    // CommentUpdated that follows the verdict.
    let expected = [
        r#"blogctl_entries_handled_total{service="posts",type="CreatePost",outcome="applied"} 1"#
            .to_owned(),
        r#"blogctl_entries_handled_total{service="moderation",type="CommentCreated",outcome="applied"} 1"#
            .to_owned(),
        r#"blogctl_entries_handled_total{service="moderation",type="CommentUpdated",outcome="skipped"} 1"#
            .to_owned(),
        format!(r#"blogctl_group_lag{{group="query",stream="{posts}"}} 0"#),
        format!(r#"blogctl_group_lag{{group="query",stream="{comments}"}} 0"#),
        format!(r#"blogctl_group_consumers{{group="query",stream="{posts}"}} 1"#),
        format!(r#"blogctl_group_consumers{{group="query",stream="{comments}"}} 1"#),
        // Without --busy-poll, never a moment spun.
        "blogctl_busy_poll_seconds_total 0.0".to_owned(),
    ];
    let moved = wait_until(PATIENCE, || {
        scraped = http_get(port, "/metrics").unwrap_or_default();
        expected.iter().all(|line| scraped.contains(line.as_str()))
    });
    assert!(moved, "{scraped}");
    // It never sees a PostCreated, so never skips one.
    assert!(
        !scraped
            .contains(r#"blogctl_entries_handled_total{service="moderation",type="PostCreated""#),
        "{scraped}"
    );
    assert!(
        scraped.contains(r#"blogctl_step_duration_seconds_count{service="query"}"#),
        "{scraped}"
    );
    assert!(
        http_get(port, "/other")
            .unwrap()
            .starts_with("HTTP/1.1 404")
    );
    // An address that cannot be served is refused at start.
    let taken = blog.serve(&["posts", "--metrics", &address]);
    let refused = wait_until(PATIENCE, || taken.log().contains("cannot serve metrics"));
    assert!(refused, "{}", taken.log());
}

/// `--busy-poll`: a process spins while work flows (its metrics count the time), and once
/// the work has stopped it goes to sleep and the count stands still: an idle service spins
/// for nothing.
#[test]
fn a_busy_polling_process_spins_while_work_flows_and_sleeps_when_idle() {
    let blog = Blog::new();
    let port = crate::support::free_port();
    let address = format!("127.0.0.1:{port}");
    let service = blog.serve(&["all", "--busy-poll", "10000", "--metrics", &address]);
    let spun = || -> Option<f64> {
        let scraped = http_get(port, "/metrics")?;
        let line = scraped
            .lines()
            .find(|line| line.starts_with("blogctl_busy_poll_seconds_total "))?;
        line.rsplit(' ').next()?.parse().ok()
    };
    assert!(wait_until(PATIENCE, || spun().is_some()));
    let post = blog.ok(&["post", "create", "--wait", "Spun for"]);
    assert_eq!(blog.verdict(&post, "quickly"), "approved");
    assert!(
        wait_until(PATIENCE, || spun().unwrap_or(0.0) > 0.0),
        "no time spun: {:?}",
        spun()
    );

    let state = || {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", service.pid())).unwrap();
        // The state follows the command's name, which is in parentheses.
        let (_, after_name) = stat.rsplit_once(')').unwrap();
        after_name.trim_start().chars().next().unwrap()
    };
    // Asleep, and seen so many times in a row: not a moment between two polls.
    let asleep = wait_until(Duration::from_secs(20), || (0..200).all(|_| state() == 'S'));
    assert!(
        asleep,
        "the busy-polling process never went to sleep (state {})",
        state()
    );
    // Its housekeeping goes on (blocking reads coming back empty, liveness marks), and is not
    // work: over a dozen more reads, no time spun.
    let reads = || blog.redis.command_stats()["xreadgroup"]["calls"];
    let (before, reads_before) = (spun(), reads());
    assert!(wait_until(Duration::from_secs(20), || reads() >= reads_before + 12));
    assert_eq!(spun(), before, "it spun again with no work");
}

#[test]
fn a_rebuild_refuses_an_archive_that_was_edited_and_accepts_one_a_trim_left_behind() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    for title in ["First", "Second"] {
        blog.ok(&["post", "create", "--wait", title]);
    }
    wait_until_caught_up(&blog);
    let dir = tempfile::tempdir().unwrap();
    let archive_dir = dir.path().join("archive");
    let archive_arg = archive_dir.to_str().unwrap().to_owned();
    blog.ok(&["trim", "--archive", &archive_arg, "--yes"]);
    // Only the posts' stream held anything.
    let archive = archive_dir.join("posts.ndjson");
    blog.ok(&["post", "create", "--wait", "Only on the stream"]);
    wait_until_caught_up(&blog);
    let live = blog.view();
    let original = std::fs::read_to_string(&archive).unwrap();
    let line = |id: &str| {
        format!(
            r#"{{"id":"{id}","fields":{{"type":"Nothing","version":"1","request_id":"x","producer":"p","data":"{{}}"}}}}"#
        )
    };
    // A line with a huge id appended: the post only on the stream would be skipped.
    std::fs::write(
        &archive,
        format!("{original}{}\n", line("99999999999999-0")),
    )
    .unwrap();
    let refused = blog.run(&["rebuild", "query", "--archive", &archive_arg]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("not archives of this log"),
        "{refused:?}"
    );
    // A line out of order.
    std::fs::write(&archive, format!("{original}{}\n", line("1-0"))).unwrap();
    let refused = blog.run(&["rebuild", "query", "--archive", &archive_arg]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("line 4") || refused.stderr.contains("does not follow"),
        "{refused:?}"
    );
    assert_eq!(blog.view(), live, "a refused rebuild changed the view");
    // A line edited, or dropped, inside what a trim wrote: its check no longer matches.
    let edited = original.replacen("First", "Forged", 1);
    assert_ne!(edited, original);
    for tampered in [
        edited,
        original.lines().skip(1).map(|l| format!("{l}\n")).collect(),
    ] {
        std::fs::write(&archive, tampered).unwrap();
        let refused = blog.run(&["rebuild", "query", "--archive", &archive_arg]);
        assert_eq!(refused.code, 2, "{refused:?}");
        assert!(
            refused.stderr.contains("the check does not match"),
            "{refused:?}"
        );
    }
    // An archive that also holds entries still on the stream (a trim stopped before its
    // XTRIM) is fine: those are read once.
    let on_stream = blog.entries(&blog.events("posts"));
    let mut overlap = original.clone();
    for (id, fields) in &on_stream[..1] {
        let fields: std::collections::BTreeMap<&str, &str> = fields
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        overlap.push_str(&serde_json::json!({"id": id, "fields": fields}).to_string());
        overlap.push('\n');
    }
    std::fs::write(&archive, overlap).unwrap();
    blog.ok(&["rebuild", "query", "--archive", &archive_arg]);
    assert_eq!(blog.view(), live);
}
