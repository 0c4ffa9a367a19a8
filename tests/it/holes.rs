//! Tests for the holes an audit found: each failed before its fix.

use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use blogctl::keyspace::{Keys, Partition, Service};

use crate::support::{Blog, PATIENCE, RedisServer, wait_until};

const P: Partition = Partition::FIRST;

fn keys() -> Keys {
    Keys::new("blog").unwrap()
}

/// Adds `count` `PostCreated` events to the posts' events stream, as if the posts service made
/// them.
fn seed_posts(blog: &Blog, count: usize) {
    let mut connection = blog.redis.connection();
    let events = keys().events(Service::Posts, P);
    for chunk in 0..count.div_ceil(10_000) {
        let mut pipe = redis::pipe();
        for _ in chunk * 10_000..((chunk + 1) * 10_000).min(count) {
            let post = serde_json::json!({"id": uuid::Uuid::now_v7(), "title": "seeded"});
            pipe.cmd("XADD")
                .arg(&events)
                .arg("*")
                .arg(&[
                    ("type", "PostCreated"),
                    ("version", "1"),
                    ("request_id", "seed"),
                    ("producer", "posts"),
                ])
                .arg("data")
                .arg(post.to_string())
                .ignore();
        }
        let () = pipe.query(&mut connection).unwrap();
    }
}

fn get(blog: &Blog, key: &str) -> Option<String> {
    redis::cmd("GET")
        .arg(key)
        .query(&mut blog.redis.connection())
        .unwrap()
}

/// Runs `blogctl rebuild query` over a large log and calls `meddle` while it fills its new
/// generation (after its checks, before its switch). Returns the rebuild's exit code and
/// stderr, or `None` when the rebuild finished before `meddle` could run (the caller tries
/// again on a larger log).
fn meddle_during_rebuild(blog: &Blog, meddle: impl FnOnce()) -> Option<(i32, String)> {
    let mut rebuild: Child = blog
        .command()
        .args(["rebuild", "query"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let filling = keys().generation(Service::Query, P, 1).view_posts();
    let mut connection = blog.redis.connection();
    let started = wait_until(PATIENCE, || {
        let filled: u64 = redis::cmd("ZCARD")
            .arg(&filling)
            .query(&mut connection)
            .unwrap();
        filled > 0 || rebuild.try_wait().unwrap().is_some()
    });
    assert!(started, "the rebuild never started filling");
    if rebuild.try_wait().unwrap().is_some() {
        return None;
    }
    meddle();
    // Too late if the rebuild had switched already: try again.
    if get(blog, &keys().generation_pointer(Service::Query, P)).as_deref() == Some("1") {
        let _ = rebuild.wait();
        return None;
    }
    let output = rebuild.wait_with_output().unwrap();
    Some((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

/// Seeds a log and meddles with it during a rebuild, on a larger log while the rebuild is too
/// quick to catch.
fn rebuild_while(meddle: impl Fn(&Blog)) -> (Blog, i32, String) {
    for size in [100_000, 200_000, 400_000] {
        let blog = Blog::new();
        seed_posts(&blog, size);
        if let Some((code, stderr)) = meddle_during_rebuild(&blog, || meddle(&blog)) {
            return (blog, code, stderr);
        }
    }
    panic!("every rebuild finished before it could be meddled with");
}

#[test]
fn entries_trimmed_while_a_rebuild_reads_make_it_fail_without_switching() {
    // `trim` itself now waits for the rebuild's lock: an XTRIM behind its back (or a lock that
    // expired) must still not make the rebuild switch to a view that misses events.
    let (blog, code, stderr) = rebuild_while(|blog| {
        let mut connection = blog.redis.connection();
        let last: Vec<(String, Vec<(String, String)>)> = redis::cmd("XREVRANGE")
            .arg(keys().events(Service::Posts, P))
            .arg("+")
            .arg("-")
            .arg("COUNT")
            .arg(1)
            .query(&mut connection)
            .unwrap();
        let _: u64 = redis::cmd("XTRIM")
            .arg(keys().events(Service::Posts, P))
            .arg("MINID")
            .arg(&last[0].0)
            .query(&mut connection)
            .unwrap();
    });
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("trimmed"), "{stderr}");
    let pointer = keys().generation_pointer(Service::Query, P);
    assert_eq!(get(&blog, &pointer), None, "the rebuild switched");
    // Its half-built generation is gone.
    let left: Vec<String> = redis::cmd("KEYS")
        .arg(format!(
            "{}*",
            keys().generation(Service::Query, P, 1).base()
        ))
        .query(&mut blog.redis.connection())
        .unwrap();
    assert!(left.is_empty(), "{} keys left behind", left.len());
}

#[test]
fn a_rebuild_does_not_switch_over_another_rebuilds_switch() {
    let pointer = keys().generation_pointer(Service::Query, P);
    let (blog, code, stderr) = rebuild_while(|blog| {
        // Another rebuild (after this one's lock was freed by hand) switched meanwhile.
        let _: () = redis::cmd("SET")
            .arg(&pointer)
            .arg("7")
            .query(&mut blog.redis.connection())
            .unwrap();
    });
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("another rebuild switched"), "{stderr}");
    assert_eq!(get(&blog, &pointer).as_deref(), Some("7"));
}

#[test]
fn trim_refuses_while_a_rebuild_runs() {
    let blog = Blog::new();
    let services = blog.serve(&["all"]);
    let post = blog.ok(&["post", "create", "--wait", "hello"]);
    blog.verdict(&post, "first");
    let lock = keys().rebuild_lock(Service::Query, P);
    let _: () = redis::cmd("SET")
        .arg(&lock)
        .arg("someone")
        .query(&mut blog.redis.connection())
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let archive_path = archive.to_str().unwrap();
    let before = blog.events_count();
    let run = blog.run(&["trim", "--archive", archive_path, "--yes"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("rebuild"), "{run:?}");
    assert_eq!(blog.events_count(), before);
    assert!(!archive.exists(), "a refused trim wrote {archive:?}");
    // Without the lock, it trims.
    let _: () = redis::cmd("DEL")
        .arg(&lock)
        .query(&mut blog.redis.connection())
        .unwrap();
    blog.ok(&["trim", "--archive", archive_path, "--yes"]);
    assert!(blog.events_count() < before);
    assert!(archive.join("posts.ndjson").is_file());
    drop(services);
}

/// Adds an entry with an explicit id 10 minutes ahead of Redis's clock, then deletes it: the
/// stream's ids run ahead of the clock from then on, as after the clock stepped back or a
/// failover onto a host whose clock is behind.
fn push_ahead(blog: &Blog, stream: &str) {
    let mut connection = blog.redis.connection();
    let (seconds, _): (u64, u64) = redis::cmd("TIME").query(&mut connection).unwrap();
    let id: String = redis::cmd("XADD")
        .arg(stream)
        .arg(format!("{}-0", (seconds + 600) * 1000))
        .arg("type")
        .arg("Nothing")
        .query(&mut connection)
        .unwrap();
    let _: u64 = redis::cmd("XDEL")
        .arg(stream)
        .arg(&id)
        .query(&mut connection)
        .unwrap();
}

#[test]
fn a_comment_on_a_post_just_created_is_accepted_when_the_log_runs_ahead_of_the_clock() {
    let blog = Blog::new();
    // The posts' stream: requests are stamped with its position, and it holds the PostCreated.
    let events = keys().events(Service::Posts, P);
    push_ahead(&blog, &events);
    let posts = blog.serve(&["posts"]);
    let post = blog.ok(&["post", "create", "hello"]);
    // The post's `PostCreated` is held, unapplied, by a comments consumer that died: the
    // comments service learns the post only once it takes that entry over.
    let mut connection = blog.redis.connection();
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", &events, "comments", "0"])
        .query(&mut connection)
        .unwrap();
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&["GROUP", "comments", "ghost", "STREAMS", &events, ">"])
        .query(&mut connection)
        .unwrap();
    let comments = blog.serve(&["comments", "--claim-idle", "2"]);
    let run = blog.run(&["comment", "create", "--timeout", "15", &post, "first"]);
    assert_eq!(run.code, 0, "the comment was refused: {run:?}");
    drop((posts, comments));
}

#[test]
fn a_request_past_its_deadline_is_never_applied_when_the_inbox_runs_ahead_of_the_clock() {
    let blog = Blog::new();
    let inbox = keys().inbox(Service::Posts, P);
    push_ahead(&blog, &inbox);
    let mut client = blog
        .command()
        .args(["post", "create", "--timeout", "1", "late"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut connection = blog.redis.connection();
    let sent = wait_until(PATIENCE, || {
        redis::cmd("XLEN")
            .arg(&inbox)
            .query::<u64>(&mut connection)
            .unwrap()
            > 0
    });
    assert!(sent, "the request never reached the inbox");
    // The client dies before its timeout: it never marks the request given up.
    client.kill().unwrap();
    client.wait().unwrap();
    let sent_at = Instant::now();
    // Let its deadline (1 s by Redis's clock) pass before the service starts.
    let (start, _): (u64, u64) = redis::cmd("TIME").query(&mut connection).unwrap();
    let past = wait_until(PATIENCE, || {
        let (now, _): (u64, u64) = redis::cmd("TIME").query(&mut connection).unwrap();
        now >= start + 2
    });
    assert!(past && sent_at.elapsed() >= Duration::from_secs(1));
    let posts = blog.serve(&["posts"]);
    let handled = wait_until(PATIENCE, || {
        redis::cmd("XLEN")
            .arg(&inbox)
            .query::<u64>(&mut connection)
            .unwrap()
            == 0
    });
    assert!(handled, "the request was never handled");
    assert!(
        blog.events_of("PostCreated").is_empty(),
        "a request past its deadline was applied"
    );
    drop(posts);
}

#[test]
fn a_step_that_fails_after_acknowledging_is_dead_lettered_with_its_error() {
    let blog = Blog::new();
    let services = blog.serve(&["all"]);
    let post = blog.ok(&["post", "create", "--wait", "hello"]);
    // A key of the wrong type where the view keeps the post's comments: the query step
    // acknowledges its entry, then fails on it.
    let comments_key = keys().generation(Service::Query, P, 0).view_comments(&post);
    let _: () = redis::cmd("SET")
        .arg(&comments_key)
        .arg("not a hash")
        .query(&mut blog.redis.connection())
        .unwrap();
    blog.ok(&["comment", "create", &post, "first"]);
    let mut dead = Vec::new();
    let found = wait_until(PATIENCE, || {
        dead = blog.entries(&keys().dead(P));
        dead.iter().any(|(_, fields)| {
            let field = |name: &str| {
                fields
                    .iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            field("service") == "query"
                && field("reason").contains("WRONGTYPE")
                && field("entry").contains("CommentCreated")
        })
    });
    assert!(found, "no dead letter for the failed step: {dead:?}");
    // Its `CommentUpdated` fails the same way, and may still be in hand: nothing stays pending,
    // on any stream query reads.
    for producer in ["posts", "comments"] {
        let events = blog.events(producer);
        assert!(
            wait_until(PATIENCE, || blog.pending(&events, "query") == 0),
            "query still holds entries of {events}"
        );
    }
    drop(services);
}

/// The entries a service finds waiting go as one script call per run of steps of one script
/// (see `Batch`): a step in the middle that fails after acknowledging its entry dead-letters that
/// entry alone, and the steps around it are applied.
#[test]
fn a_step_failing_in_a_batch_dead_letters_its_entry_alone() {
    let blog = Blog::new();
    let others = blog.serve(&["posts", "comments", "moderation"]);
    let posts: Vec<String> = (0..3)
        .map(|n| blog.ok(&["post", "create", &format!("post {n}")]))
        .collect();
    // A key of the wrong type where the view keeps the middle post's comments.
    let broken = keys()
        .generation(Service::Query, P, 0)
        .view_comments(&posts[1]);
    let _: () = redis::cmd("SET")
        .arg(&broken)
        .arg("not a hash")
        .query(&mut blog.redis.connection())
        .unwrap();
    for post in &posts {
        blog.ok(&["comment", "create", post, "hello"]);
    }
    // Every comment decided, so that query finds 6 comment events waiting.
    assert!(wait_until(PATIENCE, || blog
        .events_of("CommentUpdated")
        .len()
        == 3));
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut blog.redis.connection())
        .unwrap();
    let query = blog.serve(&["query"]);
    // (The view cannot be listed: the broken key fails its read.)
    let generation = keys().generation(Service::Query, P, 0);
    for post in [&posts[0], &posts[2]] {
        let approved = wait_until(PATIENCE, || {
            let comments: Vec<String> = redis::cmd("HVALS")
                .arg(generation.view_comments(post))
                .query(&mut blog.redis.connection())
                .unwrap();
            comments.len() == 1 && comments[0].contains("approved")
        });
        assert!(approved, "the comment on {post} is not in the view");
    }
    let dead_for_query = || {
        blog.entries(&keys().dead(P))
            .into_iter()
            .filter(|(_, fields)| fields.contains(&("service".to_owned(), "query".to_owned())))
            .collect::<Vec<_>>()
    };
    assert!(
        wait_until(PATIENCE, || dead_for_query().len() == 2),
        "the broken post's two comment events are not dead-lettered: {:?}",
        dead_for_query()
    );
    for (_, fields) in dead_for_query() {
        let field = |name: &str| fields.iter().find(|(k, _)| k == name).unwrap().1.clone();
        assert!(field("reason").contains("WRONGTYPE"), "{fields:?}");
        assert!(field("entry").contains(&posts[1]), "{fields:?}");
    }
    let events = blog.events("comments");
    assert!(wait_until(PATIENCE, || blog.pending(&events, "query") == 0));
    // 3 posts and 6 comment events, in at most one call per stream (and a retry's few).
    let calls = blog.redis.command_stats()["evalsha"]["calls"];
    assert!(calls < 9, "{calls} script calls for 9 entries");
    drop((others, query));
}

/// A step in the middle of a batch that fails before acknowledging its entry leaves that entry
/// pending, to be tried again on its own (and dead-lettered once it has failed every try), and
/// the steps around it are applied.
#[test]
fn a_step_failing_before_its_claim_in_a_batch_leaves_its_entry_pending() {
    let blog = Blog::new();
    let others = blog.serve(&["posts", "comments", "query"]);
    let post = blog.ok(&["post", "create", "--wait", "hello"]);
    let comments: Vec<String> = (0..3)
        .map(|n| blog.ok(&["comment", "create", &post, &format!("comment {n}")]))
        .collect();
    // A key of the wrong type for the middle comment: recording its verdict fails in the
    // step's check, before the claim.
    let broken = keys()
        .generation(Service::Comments, P, 0)
        .comment(&comments[1]);
    let _: () = redis::cmd("SET")
        .arg(&broken)
        .arg("not a hash")
        .query(&mut blog.redis.connection())
        .unwrap();
    // Moderation judges the three in one call, so comments finds the verdicts together.
    let moderation = blog.serve(&["moderation"]);
    let updated = |id: &str| {
        blog.events_of("CommentUpdated")
            .iter()
            .any(|event| event["id"] == id)
    };
    assert!(wait_until(PATIENCE, || updated(&comments[0]) && updated(&comments[2])));
    let dead = || blog.entries(&keys().dead(P));
    let failed = wait_until(PATIENCE, || {
        dead().iter().any(|(_, fields)| {
            let field = |name: &str| fields.iter().find(|(k, _)| k == name).unwrap().1.clone();
            field("service") == "comments"
                && field("reason").starts_with("failed ")
                && field("reason").contains("WRONGTYPE")
                && field("entry").contains(&comments[1])
        })
    });
    assert!(failed, "no dead letter after its tries: {:?}", dead());
    assert!(!updated(&comments[1]));
    drop((others, moderation));
}

#[test]
fn an_evicting_maxmemory_policy_is_refused_by_serve_and_flagged_by_check() {
    let blog = Blog::on(RedisServer::start_with(&[
        "--maxmemory-policy",
        "allkeys-lru",
    ]));
    let mut serve = blog
        .command()
        .args(["serve", "all"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let exited = wait_until(PATIENCE, || serve.try_wait().unwrap().is_some());
    if !exited {
        let _ = serve.kill();
    }
    let output = serve.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(exited, "serve ran on an evicting Redis: {stderr}");
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("maxmemory-policy is allkeys-lru") && stderr.contains("noeviction"),
        "{stderr}"
    );
    let run = blog.run(&["status", "--check"]);
    assert_eq!(run.code, 6, "{run:?}");
    assert!(run.stderr.contains("maxmemory-policy"), "{run:?}");
}

#[test]
fn a_not_found_answer_is_remembered_for_retries() {
    let blog = Blog::new();
    let services = blog.serve(&["comments"]);
    let post = uuid::Uuid::now_v7().to_string();
    let first = blog.run(&["comment", "create", "--request-id", "r-1", &post, "hi"]);
    assert_eq!(first.code, 3, "{first:?}");
    // The post appears afterwards; the retry still gets the first answer.
    let data = serde_json::json!({"id": post, "title": "late"}).to_string();
    let _: String = redis::cmd("XADD")
        .arg(keys().events(Service::Posts, P))
        .arg("*")
        .arg(&[
            ("type", "PostCreated"),
            ("version", "1"),
            ("request_id", "elsewhere"),
            ("producer", "posts"),
            ("data", &data),
        ])
        .query(&mut blog.redis.connection())
        .unwrap();
    let learnt = wait_until(PATIENCE, || {
        blog.pending(&keys().events(Service::Posts, P), "comments") == 0
            && blog.run(&["comment", "create", &post, "probe"]).code == 0
    });
    assert!(learnt, "the comments service never learnt the post");
    let retry = blog.run(&["comment", "create", "--request-id", "r-1", &post, "hi"]);
    assert_eq!(
        retry.code, 3,
        "the retry created what was refused: {retry:?}"
    );
    assert_eq!(blog.events_of("CommentCreated").len(), 1);
    drop(services);
}

#[test]
fn a_group_destroyed_under_a_running_service_is_not_recreated_over_the_log() {
    let blog = Blog::new();
    let services = blog.serve(&["posts", "comments", "query"]);
    let moderation = blog.serve(&["moderation"]);
    let post = blog.ok(&["post", "create", "--wait", "hello"]);
    assert_eq!(blog.verdict(&post, "first"), "approved");
    // Moderation's one group is on the comments' stream, which query reads too.
    let events = keys().events(Service::Comments, P);
    let mut connection = blog.redis.connection();
    let _: u64 = redis::cmd("XGROUP")
        .arg(&["DESTROY", &events, "moderation"])
        .query(&mut connection)
        .unwrap();
    let noticed = wait_until(PATIENCE, || moderation.log().contains("vanished"));
    assert!(noticed, "log:\n{}", moderation.log());
    let groups: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
        .arg(&["GROUPS", &events])
        .query(&mut connection)
        .unwrap();
    let names: Vec<&str> = groups.groups.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(names, ["query"], "the moderation group was recreated");
    assert_eq!(blog.events_of("CommentModerated").len(), 1);
    // The operator recreates it where it was: the service resumes from there.
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", &events, "moderation", "$"])
        .query(&mut connection)
        .unwrap();
    assert_eq!(blog.verdict(&post, "second"), "approved");
    assert_eq!(blog.events_of("CommentModerated").len(), 2);
    drop((services, moderation));
}

#[test]
fn an_earlier_answer_under_the_same_reply_key_is_not_taken_for_an_abandoned_mark() {
    let blog = Blog::new();
    let mut connection = blog.redis.connection();
    let reply = keys().reply(P, "shared");
    let _: u64 = redis::cmd("RPUSH")
        .arg(&reply)
        .arg("an earlier answer")
        .query(&mut connection)
        .unwrap();
    crate::delivery::add_request(
        &mut connection,
        &blog,
        "posts",
        "second",
        Some("shared"),
        60_000,
        r#"{"title":"Second"}"#,
    );
    let posts = blog.serve(&["posts"]);
    let answered = wait_until(PATIENCE, || {
        redis::cmd("LLEN")
            .arg(&reply)
            .query::<u64>(&mut connection)
            .unwrap()
            == 2
    });
    assert!(answered, "the request was not answered");
    assert_eq!(blog.events_of("PostCreated").len(), 1);
    drop(posts);
}

/// Requests of every kind waiting together go as one batch (one script call), where each step is
/// settled on its own: the state one step keeps between its functions (abandoned, expired, an
/// earlier answer) is the call's and must not carry into the next entry's step.
#[test]
fn requests_of_every_kind_in_one_batch_are_each_settled_on_their_own() {
    let blog = Blog::new();
    let mut connection = blog.redis.connection();
    let reply = |name: &str| keys().reply(P, name);
    // The client of "gone" gave up on it: its mark is a string at its reply key.
    let _: () = redis::cmd("SET")
        .arg(reply("gone"))
        .arg("given up")
        .query(&mut connection)
        .unwrap();
    let requests = [
        ("r1", "first", 60_000, "One"),
        ("r2", "late", 1, "Two"),
        ("r1", "again", 60_000, "One"),
        ("r4", "gone", 60_000, "Four"),
        ("r5", "fresh", 60_000, "Five"),
    ];
    for (id, reply_to, timeout_ms, title) in requests {
        let data = format!(r#"{{"title":"{title}"}}"#);
        crate::delivery::add_request(
            &mut connection,
            &blog,
            "posts",
            id,
            Some(reply_to),
            timeout_ms,
            &data,
        );
    }
    // r2's deadline (1 ms by Redis's clock) passes before the service starts.
    let (start, _): (u64, u64) = redis::cmd("TIME").query(&mut connection).unwrap();
    assert!(wait_until(PATIENCE, || {
        let (now, _): (u64, u64) = redis::cmd("TIME").query(&mut connection).unwrap();
        now > start
    }));
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut connection)
        .unwrap();
    let posts = blog.serve(&["posts"]);
    let inbox = keys().inbox(Service::Posts, P);
    let handled = wait_until(PATIENCE, || {
        redis::cmd("XLEN")
            .arg(&inbox)
            .query::<u64>(&mut connection)
            .unwrap()
            == 0
    });
    assert!(handled, "the requests were not all handled");
    let answers = |name: &str| -> Vec<String> {
        redis::cmd("LRANGE")
            .arg(reply(name))
            .arg(0)
            .arg(-1)
            .query(&mut blog.redis.connection())
            .unwrap()
    };
    // The first and the fresh one applied; the repeat answered as the first; the expired and
    // the abandoned ones dropped unapplied and unanswered.
    let titles: Vec<serde_json::Value> = blog
        .events_of("PostCreated")
        .into_iter()
        .map(|post| post["title"].clone())
        .collect();
    assert_eq!(titles, ["One", "Five"]);
    assert_eq!(answers("first").len(), 1);
    assert_eq!(answers("again"), answers("first"));
    assert!(
        answers("fresh")[0].contains("Five"),
        "{:?}",
        answers("fresh")
    );
    assert!(answers("late").is_empty());
    let mark: String = redis::cmd("GET")
        .arg(reply("gone"))
        .query(&mut connection)
        .unwrap();
    assert_eq!(mark, "given up");
    // Five requests in fewer script calls: they went as a batch.
    let calls = blog.redis.command_stats()["evalsha"]["calls"];
    assert!(calls < 5, "{calls} script calls for 5 requests");
    drop(posts);
}
