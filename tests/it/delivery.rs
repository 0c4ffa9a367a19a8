//! Delivery guarantees: exactly-once effects, two instances, requests, dead letters.

use std::collections::{BTreeMap, HashMap, HashSet};

use blogctl::bus::{Delivery, Handler, Plan, RawEntry, ensure_group};
use blogctl::keyspace::{Keys, Partition, Service};
use blogctl::services::moderation::Moderation;

use crate::support::{Blog, PATIENCE, wait_until};

/// Adds a request to `service`'s inbox by hand, as the client writes one (README, Requests), on
/// `connection` (the blog's Redis, or a master it replicates), and returns its entry id. Every
/// hand-made request of the tests is made here, so the request format changes in one place.
/// `reply_to`: None for a request answered under `<service>-<entry id>`; `timeout_ms`: how long its client
/// waits for the answer.
pub fn add_request(
    connection: &mut redis::Connection,
    blog: &Blog,
    service: &str,
    request_id: &str,
    reply_to: Option<&str>,
    timeout_ms: u64,
    data: &str,
) -> String {
    let command = match service {
        "posts" => "CreatePost",
        "comments" => "CreateComment",
        other => panic!("{other} takes no requests"),
    };
    // Stamped as the client's script stamps it: the deadline by Redis's clock, and the last
    // entry of the posts' events stream.
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query(connection).unwrap();
    let deadline_ms = seconds * 1000 + micros / 1000 + timeout_ms;
    let last: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
        .arg(blog.events("posts"))
        .arg("+")
        .arg("-")
        .arg("COUNT")
        .arg(1)
        .query(connection)
        .unwrap();
    let after = last.first().map_or("0-0".to_owned(), |(id, _)| id.clone());
    let mut xadd = redis::cmd("XADD");
    xadd.arg(blog.inbox(service)).arg("*").arg(&[
        ("version", "3"),
        ("request_id", request_id),
        ("deadline_ms", &deadline_ms.to_string()),
        ("after", &after),
        ("command", command),
        ("data", data),
    ]);
    if let Some(reply_to) = reply_to {
        xadd.arg("reply_to").arg(reply_to);
    }
    xadd.query(connection).unwrap()
}

/// The key a request's answer (or its client's "abandoned" mark) is left under.
fn reply_key(blog: &Blog, name: &str) -> String {
    Keys::new(&blog.namespace)
        .unwrap()
        .reply(Partition::FIRST, name)
}

/// One field of a stream entry.
fn field(fields: &[(String, String)], name: &str) -> String {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| panic!("no field {name} in {fields:?}"))
}

fn titles_created(blog: &Blog) -> Vec<String> {
    blog.events_of("PostCreated")
        .iter()
        .map(|e| e["title"].as_str().unwrap().to_owned())
        .collect()
}

/// Consumer names of a group, as XINFO CONSUMERS lists them.
fn consumers(blog: &Blog, stream: &str, group: &str) -> Vec<String> {
    let reply: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(stream)
        .arg(group)
        .query(&mut blog.redis.connection())
        .unwrap_or_default();
    reply.consumers.into_iter().map(|c| c.name).collect()
}

/// Waits until every group of every service lists exactly the consumers `names`.
fn wait_until_consumers(blog: &Blog, names: &[&str]) {
    for (stream, group) in &blog.groups() {
        let mut listed = Vec::new();
        assert!(
            wait_until(PATIENCE, || {
                listed = consumers(blog, stream, group);
                listed.sort();
                listed == names
            }),
            "group {group} on {stream} lists {listed:?}, not {names:?}"
        );
    }
}

#[test]
fn two_instances_of_every_service_give_the_same_view_as_one() {
    let blog = Blog::new();
    let a = blog.serve(&["all", "--consumer", "a"]);
    let b = blog.serve(&["all", "--consumer", "b"]);
    // Both read every group before the load starts, so both are there to share it.
    wait_until_consumers(&blog, &["a", "b"]);
    let posts: Vec<String> = (0..4)
        .map(|n| blog.ok(&["post", "create", &format!("Post {n}")]))
        .collect();
    std::thread::scope(|scope| {
        for post in &posts {
            scope.spawn(|| {
                for m in 0..10 {
                    let text = if m % 5 == 0 {
                        format!("orange {m}")
                    } else {
                        format!("comment {m}")
                    };
                    blog.ok(&["comment", "create", post, &text]);
                }
            });
        }
    });
    let view = blog.wait_for_view(4, 40);
    for post in view.as_array().unwrap() {
        for comment in post["comments"].as_array().unwrap() {
            let orange = comment["content"].as_str().unwrap().contains("orange");
            assert_eq!(
                comment["status"],
                if orange { "rejected" } else { "approved" }
            );
        }
    }
    let updated = blog.events_of("CommentUpdated");
    let distinct: HashSet<String> = updated.iter().map(|e| e["id"].to_string()).collect();
    assert_eq!(
        (updated.len(), distinct.len()),
        (40, 40),
        "one CommentUpdated per comment"
    );
    blog.wait_until_nothing_pending();

    // Each instance works on its own: with the other one stopped, a post and a comment pass
    // through all four of its services. (Redis 7.0's XINFO keeps no trace of past deliveries,
    // so this is how the test knows neither instance was a bystander that never worked.)
    assert_eq!(a.terminate().0, 0);
    wait_until_consumers(&blog, &["b"]);
    let post = blog.ok(&["post", "create", "--wait", "Served by b alone"]);
    assert_eq!(blog.verdict(&post, "b alone"), "approved");
    let a = blog.serve(&["all", "--consumer", "a"]);
    wait_until_consumers(&blog, &["a", "b"]);
    assert_eq!(b.terminate().0, 0);
    wait_until_consumers(&blog, &["a"]);
    let post = blog.ok(&["post", "create", "--wait", "Served by a alone"]);
    assert_eq!(blog.verdict(&post, "an orange for a"), "rejected");
    blog.wait_for_view(6, 42);
    assert_eq!(blog.events_of("CommentUpdated").len(), 42);
    drop(a);
}

#[tokio::test]
async fn a_redelivered_entry_has_no_second_effect() {
    let blog = Blog::new();
    let keys = Keys::new("blog").unwrap();
    let events = keys.events(Service::Comments, Partition::FIRST);
    let mut connection = blogctl::connection::Redis::open(&blog.redis.url())
        .unwrap()
        .try_connect(None)
        .await
        .unwrap();
    let comment = serde_json::json!({
        "id": uuid::Uuid::now_v7(), "postId": uuid::Uuid::now_v7(), "content": "hi", "status": "pending"
    });
    let _: String = redis::cmd("XADD")
        .arg(&events)
        .arg("*")
        .arg(&[
            ("type", "CommentCreated"),
            ("version", "1"),
            ("request_id", "r1"),
            ("producer", "test"),
        ])
        .arg("data")
        .arg(comment.to_string())
        .query_async(&mut connection)
        .await
        .unwrap();
    ensure_group(&mut connection, &events, "moderation")
        .await
        .unwrap();
    let mut read: Vec<(String, Vec<RawEntry>)> = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "moderation", "a", "STREAMS", &events, ">"])
        .query_async(&mut connection)
        .await
        .unwrap();
    let delivery = Delivery::new(&events, read[0].1.remove(0), 1);

    let mut handler = Moderation::new(&keys, Partition::FIRST, vec!["orange".into()]);
    // Delivered twice: to a consumer that stalled, and again to one that took it over.
    let results = [
        run_plan(handler.plan(&delivery), &mut connection).await,
        run_plan(handler.plan(&delivery), &mut connection).await,
    ];
    assert_eq!(results, ["applied", "stale"]);

    assert_eq!(blog.events_of("CommentModerated").len(), 1);
    assert_eq!(blog.pending(&events, "moderation"), 0);
}

async fn run_plan(plan: Plan, connection: &mut blogctl::connection::Connection) -> String {
    let Plan::Run(step) = plan else {
        panic!("expected a step, got {plan:?}")
    };
    step.run(connection).await.unwrap().as_str().to_owned()
}

#[test]
fn a_retried_request_id_creates_nothing_new() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    let first = blog.ok(&["post", "create", "--request-id", "retry-1", "Once"]);
    let again = blog.ok(&["post", "create", "--request-id", "retry-1", "Once"]);
    assert_eq!(first, again);
    let c1 = blog.ok(&[
        "comment",
        "create",
        "--request-id",
        "c-1",
        &first,
        "only once",
    ]);
    let c2 = blog.ok(&[
        "comment",
        "create",
        "--request-id",
        "c-1",
        &first,
        "only once",
    ]);
    assert_eq!(c1, c2);
    // The same id for a different request is refused (exit 2), as idempotency keys are.
    for other in [
        vec!["post", "create", "--request-id", "retry-1", "Another title"],
        vec![
            "comment",
            "create",
            "--request-id",
            "c-1",
            &first,
            "other words",
        ],
    ] {
        let run = blog.run(&other);
        assert_eq!(run.code, 2, "{other:?}: {run:?}");
        assert!(
            run.stderr
                .contains("was already used for a different request"),
            "{run:?}"
        );
    }
    // ... and the first answer stays: the same request again still gets it.
    assert_eq!(
        blog.ok(&["post", "create", "--request-id", "retry-1", "Once"]),
        first
    );
    blog.wait_for_view(1, 1);
    assert_eq!(blog.events_of("PostCreated").len(), 1);
    assert_eq!(blog.events_of("CommentCreated").len(), 1);

    // The answers are remembered for 24 hours, not for good.
    let mut connection = blog.redis.connection();
    for key in [
        blog.answer("posts", "retry-1"),
        blog.answer("comments", "c-1"),
    ] {
        let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut connection).unwrap();
        assert!(
            ttl > 23 * 3_600_000 && ttl <= 24 * 3_600_000,
            "{key} expires in {ttl} ms"
        );
    }
}

#[test]
fn a_request_the_client_gave_up_on_is_never_applied() {
    let blog = Blog::new();
    let inbox = blog.inbox("posts");
    let mut connection = blog.redis.connection();
    // No posts service runs: the client gives up, says so, and marks its request given up.
    let run = blog.run(&["--timeout", "0.3", "post", "create", "Too late"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(
        run.stderr.contains("posts service") && run.stderr.contains("blogctl serve posts"),
        "{run:?}"
    );
    let waiting = blog.entries(&inbox);
    assert_eq!(waiting.len(), 1, "{waiting:?}");
    let mark: Option<String> = redis::cmd("GET")
        .arg(reply_key(&blog, &field(&waiting[0].1, "reply_to")))
        .query(&mut connection)
        .unwrap();
    assert_eq!(mark.as_deref(), Some("abandoned"));

    // Two requests alike but for that mark, neither anywhere near its timeout: the mark alone
    // keeps the first one from being applied.
    let (given_up, wanted) = (
        uuid::Uuid::now_v7().to_string(),
        uuid::Uuid::now_v7().to_string(),
    );
    add_request(
        &mut connection,
        &blog,
        "posts",
        "given-up",
        Some(&given_up),
        600_000,
        r#"{"title":"Given up"}"#,
    );
    let _: () = redis::cmd("SET")
        .arg(reply_key(&blog, &given_up))
        .arg("abandoned")
        .query(&mut connection)
        .unwrap();
    add_request(
        &mut connection,
        &blog,
        "posts",
        "wanted",
        Some(&wanted),
        600_000,
        r#"{"title":"Wanted"}"#,
    );

    let _posts = blog.serve(&["posts"]);
    assert!(
        wait_until(PATIENCE, || blog.entries(&inbox).is_empty()),
        "requests not handled: {:?}",
        blog.entries(&inbox)
    );
    let answers: Vec<String> = redis::cmd("LRANGE")
        .arg(reply_key(&blog, &wanted))
        .arg(0)
        .arg(-1)
        .query(&mut connection)
        .unwrap();
    assert_eq!(answers.len(), 1, "{answers:?}");
    assert!(answers[0].contains(r#""title":"Wanted""#), "{answers:?}");
    let mark: Option<String> = redis::cmd("GET")
        .arg(reply_key(&blog, &given_up))
        .query(&mut connection)
        .unwrap();
    assert_eq!(mark.as_deref(), Some("abandoned"), "it was answered");
    assert_eq!(titles_created(&blog), ["Wanted"]);
    assert!(blog.entries(&blog.dead()).is_empty());
}

#[test]
fn a_request_older_than_its_timeout_is_never_applied() {
    let blog = Blog::new();
    let mut connection = blog.redis.connection();
    // Its client was killed before it could mark it given up: only its age tells.
    let old = add_request(
        &mut connection,
        &blog,
        "posts",
        "old",
        None,
        1,
        r#"{"title":"Ancient"}"#,
    );
    // Its 1 ms deadline (stamped from TIME just before the entry id) passes by Redis's clock,
    // which the service goes by, before any service reads it.
    let sent_ms: u64 = old.split('-').next().unwrap().parse().unwrap();
    assert!(wait_until(PATIENCE, || {
        let (seconds, micros): (u64, u64) = redis::cmd("TIME").query(&mut connection).unwrap();
        seconds * 1000 + micros / 1000 > sent_ms + 1
    }));

    let _posts = blog.serve(&["posts"]);
    blog.ok(&["post", "create", "On time"]);
    let inbox = blog.inbox("posts");
    assert!(
        wait_until(PATIENCE, || blog.entries(&inbox).is_empty()),
        "requests not handled"
    );
    assert_eq!(titles_created(&blog), ["On time"]);
    let answered: bool = redis::cmd("EXISTS")
        .arg(reply_key(&blog, &old))
        .query(&mut connection)
        .unwrap();
    assert!(!answered, "the old request was answered");
    assert!(blog.entries(&blog.dead()).is_empty());
}

#[test]
fn malformed_entries_are_dead_lettered_and_the_services_go_on() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    blog.ok(&["post", "create", "--wait", "Before"]);
    let (posts, comments, moderation) = (
        blog.events("posts"),
        blog.events("comments"),
        blog.events("moderation"),
    );
    let mut connection = blog.redis.connection();
    // Adds an entry to `stream` and returns the stream and the entry's id.
    let mut add = |stream: &str, fields: &[(&str, &[u8])]| -> (String, String) {
        let mut command = redis::cmd("XADD");
        command.arg(stream).arg("*");
        for (name, value) in fields {
            command.arg(*name).arg(*value);
        }
        (stream.to_owned(), command.query(&mut connection).unwrap())
    };
    let oversized = format!(
        r#"{{"id":"{}","title":"{}"}}"#,
        uuid::Uuid::now_v7(),
        "t".repeat(100_000)
    );
    let good = |kind: &'static str| {
        [
            ("type", kind.as_bytes()),
            ("version", b"1"),
            ("request_id", b"x"),
        ]
    };
    // Each malformed event, on the stream of the service that produces its type, with the
    // services that use that type: only they read it.
    let post_readers: &[&str] = &["comments", "query"];
    let malformed = [
        (
            add(
                &posts,
                &[&good("PostCreated")[..], &[("data", b"not json")]].concat(),
            ),
            post_readers,
        ),
        (add(&posts, &good("PostCreated")), post_readers),
        (
            add(
                &posts,
                &[
                    &good("PostCreated")[..],
                    &[("data", br#"{"id":5,"title":"x"}"#)],
                ]
                .concat(),
            ),
            post_readers,
        ),
        (
            add(
                &comments,
                &[&good("CommentCreated")[..], &[("data", b"\xff\xfe")]].concat(),
            ),
            &["moderation", "query"],
        ),
        (
            add(
                &moderation,
                &[&good("CommentModerated")[..], &[("data", b"[]")]].concat(),
            ),
            &["comments"],
        ),
        (
            add(
                &posts,
                &[
                    ("type", b"PostCreated"),
                    ("version", b"99"),
                    ("request_id", b"x"),
                    ("data", b"{}"),
                ],
            ),
            post_readers,
        ),
        (
            add(
                &posts,
                &[&good("PostCreated")[..], &[("data", oversized.as_bytes())]].concat(),
            ),
            post_readers,
        ),
        // No type at all: malformed for every service that reads the stream it is on.
        (
            add(&posts, &[("version", b"1"), ("data", b"{}")]),
            post_readers,
        ),
        (
            add(&comments, &[("version", b"1"), ("data", b"{}")]),
            &["moderation", "query"],
        ),
        (
            add(&moderation, &[("version", b"1"), ("data", b"{}")]),
            &["comments"],
        ),
    ];
    let unknown: Vec<(String, String)> = [&posts, &comments, &moderation]
        .into_iter()
        .map(|stream| {
            add(
                stream,
                &[&good("PostLiked")[..], &[("data", b"{}")]].concat(),
            )
        })
        .collect();
    // Not a request at all, so not made with add_request.
    let bad_request = {
        let mut connection = blog.redis.connection();
        let id: String = redis::cmd("XADD")
            .arg(blog.inbox("posts"))
            .arg("*")
            .arg("garbage")
            .arg("yes")
            .query(&mut connection)
            .unwrap();
        id
    };

    // Still serving, in order: a post made after the bad entries arrives.
    let after = blog.ok(&["post", "create", "--wait", "After"]);
    blog.ok(&["comment", "create", "--wait", &after, "still fine"]);

    // Each service that uses an event's type dead-letters each malformed one once.
    let expected: usize = malformed
        .iter()
        .map(|(_, readers)| readers.len())
        .sum::<usize>()
        + 1;
    assert!(wait_until(PATIENCE, || blog.entries(&blog.dead()).len() >= expected));
    let dead = blog.entries(&blog.dead());
    assert_eq!(dead.len(), expected);
    let mut per_id: HashMap<String, Vec<String>> = HashMap::new();
    for (_, fields) in &dead {
        assert!(!field(fields, "reason").is_empty());
        assert!(field(fields, "deliveries").parse::<u64>().unwrap() >= 1);
        per_id
            .entry(format!(
                "{} {}",
                field(fields, "stream"),
                field(fields, "id")
            ))
            .or_default()
            .push(field(fields, "service"));
    }
    for ((stream, id), readers) in &malformed {
        let mut services = per_id.remove(&format!("{stream} {id}")).unwrap_or_default();
        services.sort();
        assert_eq!(&services, readers, "dead letters of {id} on {stream}");
    }
    let inbox = blog.inbox("posts");
    assert_eq!(
        per_id.remove(&format!("{inbox} {bad_request}")),
        Some(vec!["posts".to_owned()])
    );
    assert!(
        per_id.is_empty(),
        "unexpected dead letters (unknown type {unknown:?}?): {per_id:?}"
    );
    blog.wait_until_nothing_pending();
    // A dead request is not put back: its client has given up on it.
    let (dead_request, _) = dead
        .iter()
        .find(|(_, fields)| fields.iter().any(|(k, v)| k == "service" && v == "posts"))
        .unwrap();
    let run = blog.run(&["dead", "retry", dead_request]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("not retried"), "{run:?}");
}

#[test]
fn a_redelivered_request_waiting_for_its_post_is_not_dead_lettered() {
    let blog = Blog::new();
    let _others = blog.serve(&["posts", "moderation", "query"]);
    let post = blog.ok(&["post", "create", "--wait", "Held back"]);
    let (events, inbox) = (blog.events("posts"), blog.inbox("comments"));
    let mut connection = blog.redis.connection();
    for stream in [&events, &inbox] {
        let _: () = redis::cmd("XGROUP")
            .arg(&["CREATE", stream, "comments", "0", "MKSTREAM"])
            .query(&mut connection)
            .unwrap();
    }
    // A comments consumer that died holding the PostCreated...
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "comments", "ghost", "STREAMS", &events, ">"])
        .query(&mut connection)
        .unwrap();
    let client = blog
        .command()
        .args(["--timeout", "15", "comment", "create", &post, "patience"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(PATIENCE, || blog.entries(&inbox).len() == 1));
    // ...and the request, delivered once already to the consumer that restarts below.
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "comments", "live", "STREAMS", &inbox, ">"])
        .query(&mut connection)
        .unwrap();

    // The restarted consumer finds the request again (a redelivery) and must wait, trying it
    // many times, until the ghost's PostCreated is taken over: it is not a failing entry.
    let _comments = blog.serve(&[
        "comments",
        "--consumer",
        "live",
        "--claim-idle",
        "1",
        "--max-deliveries",
        "2",
    ]);
    let output = client.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        blog.entries(&blog.dead()).is_empty(),
        "dead letters: {:?}",
        blog.entries(&blog.dead())
    );
    assert_eq!(
        blog.wait_for_view(1, 1)[0]["comments"][0]["content"],
        "patience"
    );
}

#[test]
fn requests_are_answered_under_their_reply_to_or_entry_id_and_a_bad_reply_to_is_refused() {
    let blog = Blog::new();
    let _services = blog.serve(&["posts"]);
    let mut connection = blog.redis.connection();
    let mut request = |reply_to: Option<&str>, title: &str| -> String {
        let data = format!(r#"{{"title":"{title}"}}"#);
        add_request(
            &mut connection,
            &blog,
            "posts",
            title,
            reply_to,
            5000,
            &data,
        )
    };
    let named = uuid::Uuid::now_v7().to_string();
    request(Some(&named), "Named");
    let entry = request(None, "Unnamed");
    let bad = request(Some("no/such key"), "Bad");

    let mut connection = blog.redis.connection();
    let mut answer = |name: &str| -> String {
        let popped: Option<(String, String)> = redis::cmd("BLPOP")
            .arg(reply_key(&blog, name))
            .arg(PATIENCE.as_secs())
            .query(&mut connection)
            .unwrap();
        popped.expect("an answer").1
    };
    assert!(answer(&named).contains("\"title\":\"Named\""));
    // Answered under the service and the entry id: two inboxes may give the same id.
    assert!(answer(&format!("posts-{entry}")).contains("\"title\":\"Unnamed\""));

    assert!(wait_until(PATIENCE, || blog.entries(&blog.dead()).len() == 1));
    let dead = &blog.entries(&blog.dead())[0].1;
    assert_eq!(field(dead, "id"), bad);
    assert!(field(dead, "reason").contains("reply_to"), "{dead:?}");
    assert_eq!(titles_created(&blog), ["Named", "Unnamed"]);
}

#[test]
fn what_the_client_would_refuse_is_refused_by_the_service_too_and_dead_letters_stay_small() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    blog.ok(&["post", "create", "--wait", "Before"]);
    let mut connection = blog.redis.connection();
    let huge_id = "x".repeat(1 << 20);
    add_request(
        &mut connection,
        &blog,
        "posts",
        &huge_id,
        None,
        5000,
        r#"{"title":"Huge id"}"#,
    );
    // A deadline ten days ahead: no client waits that long.
    add_request(
        &mut connection,
        &blog,
        "posts",
        "far",
        None,
        10 * 86_400_000,
        r#"{"title":"Far deadline"}"#,
    );
    // A megabyte of garbage where an event should be.
    let _: String = redis::cmd("XADD")
        .arg(blog.events("posts"))
        .arg("*")
        .arg(&[
            ("type", "PostCreated"),
            ("version", "1"),
            ("request_id", "x"),
            ("producer", "test"),
        ])
        .arg("data")
        .arg(vec![0xffu8; 1 << 20])
        .query(&mut connection)
        .unwrap();
    let inbox = blog.inbox("posts");
    assert!(wait_until(PATIENCE, || blog.entries(&inbox).is_empty()
        && blog.entries(&blog.dead()).len() >= 3));
    assert_eq!(titles_created(&blog), ["Before"]);
    let letters = blog.entries(&blog.dead());
    let reasons: Vec<String> = letters.iter().map(|(_, f)| field(f, "reason")).collect();
    assert!(
        reasons
            .iter()
            .any(|reason| reason.contains("request_id of 1048576 bytes")),
        "{reasons:?}"
    );
    for (_, fields) in &letters {
        let size: usize = fields.iter().map(|(k, v)| k.len() + v.len()).sum();
        assert!(size < 64 * 1024, "a dead letter of {size} bytes");
    }
}

/// Every consumer group on every stream of the blog, as XINFO GROUPS reports it: by (stream,
/// group), the group's `entries-read` (how many entries of the stream were delivered to it,
/// redeliveries not counted), or `None` while any group lags or holds a pending entry. Redis
/// reports no `entries-read` (nil) for a group that never read an entry: 0 then, as long as
/// nothing was ever added to its stream (the services create their groups at its start).
fn entries_read_when_idle(blog: &Blog) -> Option<BTreeMap<(String, String), usize>> {
    let mut connection = blog.redis.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{}:*", blog.namespace))
        .query(&mut connection)
        .unwrap();
    let mut read = BTreeMap::new();
    for key in keys {
        let kind: String = redis::cmd("TYPE").arg(&key).query(&mut connection).unwrap();
        if kind != "stream" {
            continue;
        }
        let stream: HashMap<String, redis::Value> = redis::cmd("XINFO")
            .arg("STREAM")
            .arg(&key)
            .query(&mut connection)
            .unwrap();
        let added: usize = redis::from_redis_value_ref(&stream["entries-added"]).unwrap();
        let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&key)
            .query(&mut connection)
            .unwrap();
        for group in groups.groups {
            if group.pending != 0 || group.lag != Some(0) {
                return None;
            }
            let entries_read = match group.entries_read {
                Some(read) => read,
                None if added == 0 => 0,
                None => panic!(
                    "no entries-read for {} on {key}, to which {added} entries were added",
                    group.name
                ),
            };
            read.insert((key.clone(), group.name), entries_read);
        }
    }
    Some(read)
}

/// Waits until every group has read and acknowledged everything; their `entries-read` then.
fn entries_read_once_idle(blog: &Blog) -> BTreeMap<(String, String), usize> {
    let mut read = None;
    assert!(
        wait_until(PATIENCE, || {
            read = entries_read_when_idle(blog);
            read.is_some()
        }),
        "the groups never caught up"
    );
    read.unwrap()
}

#[test]
fn a_comment_costs_six_group_deliveries() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    let post = blog.ok(&["post", "create", "--wait", "Counted"]);
    let before = entries_read_once_idle(&blog);
    // The groups are exactly those the services read with, and no other.
    let mut groups: Vec<(String, String)> = before.keys().cloned().collect();
    let mut expected: Vec<(String, String)> = blog
        .groups()
        .into_iter()
        .map(|(stream, group)| (stream, group.to_owned()))
        .collect();
    groups.sort();
    expected.sort();
    assert_eq!(groups, expected);

    assert_eq!(blog.verdict(&post, "a comment to count"), "approved");
    let after = entries_read_once_idle(&blog);
    // Deliveries per group: the growth of its entries-read (groups that got none left out).
    let measured: BTreeMap<(String, String), usize> = after
        .into_iter()
        .map(|(group, read)| {
            let delivered = read - before.get(&group).copied().unwrap_or(0);
            (group, delivered)
        })
        .filter(|(_, delivered)| *delivered > 0)
        .collect();
    // One comment through the whole pipeline, each entry delivered once to each group that
    // follows its stream (a group's entries-read counts first deliveries; with every group
    // caught up, none was left unread):
    // - its CreateComment request, on the comments inbox: 1 (comments);
    // - its CommentCreated, on the comments' stream: 2 (moderation, query);
    // - its CommentModerated, on moderation's stream: 1 (comments);
    // - its CommentUpdated, on the comments' stream: 2 (moderation, which skips it, and query).
    // The posts' stream and inbox deliver nothing for it. With the one shared stream of
    // earlier versions, each of its three events went to all three groups: 10 deliveries.
    let key = |stream: String, group: &str| (stream, group.to_owned());
    let expected: BTreeMap<(String, String), usize> = [
        (key(blog.inbox("comments"), "comments"), 1),
        (key(blog.events("comments"), "moderation"), 2),
        (key(blog.events("comments"), "query"), 2),
        (key(blog.events("moderation"), "comments"), 1),
    ]
    .into_iter()
    .collect();
    assert_eq!(measured, expected);
    assert_eq!(measured.values().sum::<usize>(), 6);
}

#[test]
fn an_event_on_the_wrong_stream_is_dead_lettered_never_applied() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    let real = blog.ok(&["post", "create", "--wait", "Real"]);
    blog.wait_until_nothing_pending();
    // A well-formed PostCreated, on the comments service's stream: only posts produces it.
    let forged = uuid::Uuid::now_v7().to_string();
    let data = serde_json::json!({"id": forged, "title": "Forged"}).to_string();
    let comments_stream = blog.events("comments");
    let misplaced: String = redis::cmd("XADD")
        .arg(&comments_stream)
        .arg("*")
        .arg(&[
            ("type", "PostCreated"),
            ("version", "1"),
            ("request_id", "misplaced"),
            ("producer", "posts"),
            ("data", &data),
        ])
        .query(&mut blog.redis.connection())
        .unwrap();

    // Each reader of that stream dead-letters it once: moderation and query.
    let dead = blog.dead();
    assert!(
        wait_until(PATIENCE, || blog.entries(&dead).len() >= 2),
        "dead letters: {:?}",
        blog.entries(&dead)
    );
    for (stream, group) in [
        (&comments_stream, "moderation"),
        (&comments_stream, "query"),
    ] {
        assert!(
            wait_until(PATIENCE, || blog.pending(stream, group) == 0),
            "{group} still holds entries of {stream}"
        );
    }
    let letters = blog.entries(&dead);
    assert_eq!(letters.len(), 2, "{letters:?}");
    let mut services: Vec<String> = letters
        .iter()
        .map(|(_, fields)| {
            assert_eq!(field(fields, "stream"), comments_stream);
            assert_eq!(field(fields, "id"), misplaced);
            assert_eq!(field(fields, "deliveries"), "1", "{fields:?}");
            let reason = field(fields, "reason");
            assert!(
                reason.contains("a PostCreated does not belong on the comments service's stream"),
                "{reason}"
            );
            assert!(field(fields, "entry").contains("Forged"), "{fields:?}");
            field(fields, "service")
        })
        .collect();
    services.sort();
    assert_eq!(services, ["moderation", "query"]);

    // Never applied: the view does not show the post, and the comments service does not know it.
    let view = blog.view();
    assert_eq!(view.as_array().unwrap().len(), 1, "{view}");
    assert_eq!(view[0]["id"], real.as_str());
    let shown = blog.run(&["post", "show", &forged]);
    assert_eq!(shown.code, 3, "{shown:?}");
    let commented = blog.run(&["comment", "create", &forged, "on a forged post"]);
    assert_eq!(commented.code, 3, "{commented:?}");

    // The pipeline goes on: a PostCreated where it belongs is applied, and a comment passes
    // through the stream the misplaced event is on.
    let genuine = uuid::Uuid::now_v7().to_string();
    let data = serde_json::json!({"id": genuine, "title": "Genuine"}).to_string();
    let _: String = redis::cmd("XADD")
        .arg(blog.events("posts"))
        .arg("*")
        .arg(&[
            ("type", "PostCreated"),
            ("version", "1"),
            ("request_id", "well-placed"),
            ("producer", "posts"),
            ("data", &data),
        ])
        .query(&mut blog.redis.connection())
        .unwrap();
    assert_eq!(blog.verdict(&real, "still flowing"), "approved");
    let view = blog.wait_for_view(2, 1);
    assert_eq!(Blog::titles(&view), ["Real", "Genuine"]);
    assert_eq!(blog.verdict(&genuine, "on the genuine post"), "approved");
    blog.wait_until_nothing_pending();
    assert_eq!(blog.entries(&dead).len(), 2, "{:?}", blog.entries(&dead));
}
