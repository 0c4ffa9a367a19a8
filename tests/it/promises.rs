//! The README's promises that no other test checked: retries and dead letters, malformed
//! requests, usage errors, a Redis that never answers, own pending entries first, no take-over
//! before `--claim-idle`, a graceful stop with work in hand, a service paused past its client's
//! timeout, and the stale check of every step script.

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use blogctl::bus::{Delivery, Handler, Plan, RawEntry, ensure_group};
use blogctl::connection::{CONNECT_TIMEOUT, Connection, Redis};
use blogctl::events::{Comment, Post};
use blogctl::keyspace::{Keys, Partition, Partitions, Service};
use blogctl::request::{Recipient, call};
use blogctl::services::comments::{self, Comments, CreateComment};
use blogctl::services::moderation::{self, Moderation};
use blogctl::services::posts::{self, CreatePost, Posts};
use blogctl::services::query::{self, Query};

use crate::support::{Blog, PATIENCE, RedisServer, Run, blogctl, producer_of, signal, wait_until};

/// The value of one field of an entry as [`Blog::entries`] returns it.
fn field<'a>(fields: &'a [(String, String)], name: &str) -> &'a str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map_or("", |(_, v)| v.as_str())
}

/// Adds an entry to `stream`; returns its id.
fn xadd(blog: &Blog, stream: &str, fields: &[(&str, &str)]) -> String {
    redis::cmd("XADD")
        .arg(stream)
        .arg("*")
        .arg(fields)
        .query(&mut blog.redis.connection())
        .unwrap()
}

/// Adds an event as a producer would, on the stream of the service that produces its type
/// (`producer` test, which [`Blog::events_of`] leaves out).
fn add_event(blog: &Blog, kind: &str, data: &serde_json::Value) -> String {
    let data = data.to_string();
    let fields = [
        ("type", kind),
        ("version", "1"),
        ("request_id", "by-hand"),
        ("producer", "test"),
        ("data", data.as_str()),
    ];
    xadd(blog, &blog.events(producer_of(kind)), &fields)
}

/// Adds a `PostCreated` for a new post titled `title`; returns the entry id.
fn add_post(blog: &Blog, title: &str) -> String {
    let data = serde_json::json!({"id": uuid::Uuid::now_v7(), "title": title});
    add_event(blog, "PostCreated", &data)
}

/// The request fields a client sends, written by hand: the one place to update when the
/// request envelope changes. (Tests that need well-formed requests send them through
/// `blogctl::request::call` or the binary instead.)
fn request_fields(request_id: &str, command: &str, data: &str) -> Vec<(&'static str, String)> {
    vec![
        ("version", "3".to_owned()),
        ("request_id", request_id.to_owned()),
        ("reply_to", uuid::Uuid::now_v7().to_string()),
        // Far ahead of Redis's clock: only the malformed field decides.
        (
            "deadline_ms",
            u64::from(u32::MAX).saturating_mul(1000).to_string(),
        ),
        ("after", "0-0".to_owned()),
        ("command", command.to_owned()),
        ("data", data.to_owned()),
    ]
}

/// Creates `group` on `stream` at its start, as the services do.
fn create_group(blog: &Blog, stream: &str, group: &str) {
    let _: () = redis::cmd("XGROUP")
        .arg(&["CREATE", stream, group, "0", "MKSTREAM"])
        .query(&mut blog.redis.connection())
        .unwrap();
}

/// Delivers every new entry of `stream` to `consumer` of `group`, which does not acknowledge
/// them: they stay pending with it, as with a process that read them and died.
fn deliver_to(blog: &Blog, stream: &str, group: &str, consumer: &str) -> usize {
    let read: Vec<(String, Vec<RawEntry>)> = redis::cmd("XREADGROUP")
        .arg(&["GROUP", group, consumer, "STREAMS", stream, ">"])
        .query(&mut blog.redis.connection())
        .unwrap();
    read.iter().map(|(_, entries)| entries.len()).sum()
}

/// Entries of `group` on `stream` pending with `consumer`.
fn held_by(blog: &Blog, stream: &str, group: &str, consumer: &str) -> usize {
    let pending: Vec<redis::Value> = redis::cmd("XPENDING")
        .arg(&[stream, group, "-", "+", "1000", consumer])
        .query(&mut blog.redis.connection())
        .unwrap();
    pending.len()
}

/// A service's `attempts` hash: counted tries of redelivered entries.
fn attempts(blog: &Blog, service: &str) -> BTreeMap<String, String> {
    redis::cmd("HGETALL")
        .arg(blog.attempts(service))
        .query(&mut blog.redis.connection())
        .unwrap()
}

/// The titles of the posts in the view.
fn titles(blog: &Blog) -> Vec<String> {
    blog.view()
        .as_array()
        .unwrap()
        .iter()
        .map(|post| post["title"].as_str().unwrap().to_owned())
        .collect()
}

/// Wakes a process paused with SIGSTOP when dropped, so a failing test still cleans up.
struct Paused(u32);

impl Paused {
    fn pause(pid: u32) -> Paused {
        signal(pid, "STOP");
        Paused(pid)
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        signal(self.0, "CONT");
    }
}

#[test]
fn an_entry_that_keeps_failing_is_dead_lettered_with_its_last_error_and_its_tries_forgotten() {
    let blog = Blog::new();
    // The verdicts' stream, which comments follows.
    let events = blog.events("moderation");
    create_group(&blog, &events, "comments");
    // A verdict whose comment key holds a string (written by hand): recording it fails on its
    // first read, before the step acknowledges anything, every time.
    let comment = uuid::Uuid::now_v7().to_string();
    let verdict = serde_json::json!({
        "id": comment, "postId": uuid::Uuid::now_v7(), "content": "hi", "status": "approved"
    });
    let entry = add_event(&blog, "CommentModerated", &verdict);
    let mut connection = blog.redis.connection();
    let comment_key = format!("{}comment:{comment}", blog.generation("comments", 0));
    let _: () = redis::cmd("SET")
        .arg(&[&comment_key, "not a hash"])
        .query(&mut connection)
        .unwrap();
    // Delivered once already to c1, which died after one counted try.
    assert_eq!(deliver_to(&blog, &events, "comments", "c1"), 1);
    let try_field = format!("{events}/{entry}");
    let _: () = redis::cmd("HSET")
        .arg(blog.attempts("comments"))
        .arg(&[&try_field, "1"])
        .query(&mut connection)
        .unwrap();

    let service = blog.serve(&["comments", "--consumer", "c1", "--max-deliveries", "4"]);
    let dead = blog.dead();
    assert!(
        wait_until(PATIENCE, || !blog.entries(&dead).is_empty()),
        "never dead-lettered; log:\n{}",
        service.log()
    );
    let letters = blog.entries(&dead);
    assert_eq!(letters.len(), 1, "{letters:?}");
    let letter = &letters[0].1;
    assert_eq!(field(letter, "id"), entry);
    assert_eq!(field(letter, "service"), "comments");
    // Two tries before this process (the uncounted first and the counted one), two by it.
    assert_eq!(field(letter, "deliveries"), "4", "{letter:?}");
    let reason = field(letter, "reason");
    assert!(
        reason.contains("failed 4 times") && reason.contains("WRONGTYPE"),
        "{reason}"
    );
    assert!(service.log().contains("retrying"), "{}", service.log());
    assert_eq!(blog.pending(&events, "comments"), 0);
    // Forgotten by a command of its own, just after the dead letter.
    assert!(
        wait_until(PATIENCE, || attempts(&blog, "comments").is_empty()),
        "tries not forgotten: {:?}",
        attempts(&blog, "comments")
    );
}

#[test]
fn malformed_requests_are_dead_lettered_and_deleted_from_the_inbox() {
    let blog = Blog::new();
    let _services = blog.serve(&["posts", "comments"]);
    let posts_inbox = blog.inbox("posts");
    let comments_inbox = blog.inbox("comments");
    let mut no_command = request_fields("r-1", "CreatePost", r#"{"title":"No command"}"#);
    no_command.retain(|(name, _)| *name != "command");
    let bad_json = request_fields("r-2", "CreateComment", r#"{"postId": oops"#);
    let mut connection = blog.redis.connection();
    let mut send = |inbox: &str, fields: &[(&str, String)]| -> String {
        redis::cmd("XADD")
            .arg(inbox)
            .arg("*")
            .arg(fields)
            .query(&mut connection)
            .unwrap()
    };
    let first = send(&posts_inbox, &no_command);
    let second = send(&comments_inbox, &bad_json);

    let dead = blog.dead();
    assert!(wait_until(PATIENCE, || blog.entries(&dead).len() >= 2));
    let letters = blog.entries(&dead);
    assert_eq!(letters.len(), 2, "{letters:?}");
    // Two streams may give the same id: an entry is its stream and its id.
    let letter_of = |stream: &str, id: &str| {
        &letters
            .iter()
            .find(|(_, fields)| field(fields, "stream") == stream && field(fields, "id") == id)
            .unwrap_or_else(|| panic!("no dead letter for {stream} {id}: {letters:?}"))
            .1
    };
    let missing = letter_of(&posts_inbox, &first);
    let invalid = letter_of(&comments_inbox, &second);
    assert_eq!(field(missing, "service"), "posts");
    assert!(field(missing, "reason").contains("command"), "{missing:?}");
    assert_eq!(field(invalid, "service"), "comments");
    assert!(field(invalid, "reason").contains("invalid"), "{invalid:?}");
    for (inbox, group) in [(&posts_inbox, "posts"), (&comments_inbox, "comments")] {
        assert_eq!(blog.entries(inbox), Vec::new(), "{inbox} still holds it");
        assert_eq!(blog.pending(inbox, group), 0);
    }
    assert_eq!(blog.events_count(), 0);
}

#[test]
fn an_unknown_flag_is_one_line_naming_it_and_exit_2() {
    // Parsing fails before any connection, so no Redis is needed.
    let run: Run = blogctl("redis://127.0.0.1:1", "blog")
        .args(["post", "list", "--bogus"])
        .output()
        .unwrap()
        .into();
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.stdout, "");
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{run:?}");
    assert!(
        run.stderr.starts_with("blogctl: error: ") && run.stderr.contains("--bogus"),
        "{run:?}"
    );
}

#[test]
fn a_redis_that_never_answers_fails_within_the_connect_timeout_with_exit_4() {
    let redis = RedisServer::start();
    let info: String = redis::cmd("INFO")
        .arg("server")
        .query(&mut redis.connection())
        .unwrap();
    let pid: u32 = info
        .lines()
        .find_map(|line| line.strip_prefix("process_id:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // Paused, it still accepts connections (the kernel completes them) but never answers.
    let _paused = Paused::pause(pid);
    let url = redis.url();
    let commands: [&[&str]; 3] = [
        &["post", "list"],
        &["post", "create", "x"],
        &["serve", "all"],
    ];
    std::thread::scope(|scope| {
        for args in commands {
            let url = &url;
            scope.spawn(move || {
                let started = Instant::now();
                let run: Run = blogctl(url, "blog").args(args).output().unwrap().into();
                let took = started.elapsed();
                assert_eq!(run.code, 4, "{args:?}: {run:?}");
                assert!(run.stderr.contains(url.as_str()), "{args:?}: {run:?}");
                assert_eq!(run.stderr.trim_end().lines().count(), 1, "{run:?}");
                // Connecting gives up after CONNECT_TIMEOUT; the margin is for starting the
                // process on a busy machine.
                let limit = CONNECT_TIMEOUT + Duration::from_secs(1);
                assert!(took < limit, "{args:?} took {took:?}");
            });
        }
    });
}

#[test]
fn a_restarted_consumer_applies_its_own_pending_entries_before_claim_idle() {
    let blog = Blog::new();
    let events = blog.events("posts");
    // Long enough that a take-over cannot be what applies them within PATIENCE.
    let args = ["query", "--consumer", "q1", "--claim-idle", "60"];
    let query = blog.serve(&args);
    add_post(&blog, "Seen");
    blog.wait_for_view(1, 0);
    query.kill();
    // What q1 had read, but not applied, when it was killed.
    for title in ["Held 1", "Held 2", "Held 3"] {
        add_post(&blog, title);
    }
    assert_eq!(deliver_to(&blog, &events, "query", "q1"), 3);

    let query = blog.serve(&args);
    blog.wait_for_view(4, 0);
    assert_eq!(held_by(&blog, &events, "query", "q1"), 0);
    assert!(!query.log().contains("took over"), "{}", query.log());
}

#[test]
fn entries_of_a_silent_consumer_are_taken_over_after_claim_idle_and_not_before() {
    let claim_idle = Duration::from_secs(3);
    let blog = Blog::new();
    let events = blog.events("posts");
    create_group(&blog, &events, "query");
    add_post(&blog, "Held 1");
    add_post(&blog, "Held 2");
    // Idle time counts from the delivery, which is after this instant.
    let delivered = Instant::now();
    assert_eq!(deliver_to(&blog, &events, "query", "silent"), 2);
    // Silent but alive (its liveness key stays): only --claim-idle lets another take over.
    let alive = blog.keys().alive_prefix(Service::Query, Partition::FIRST) + "silent";
    let _: () = redis::cmd("SET")
        .arg(&alive)
        .arg("1")
        .query(&mut blog.redis.connection())
        .unwrap();

    let live = blog.serve(&["query", "--consumer", "live", "--claim-idle", "3"]);
    // Once a new post is in the view, live has scanned for stuck entries at least once.
    add_post(&blog, "Fresh");
    assert!(wait_until(PATIENCE, || titles(&blog) == ["Fresh"]));
    // Lower bound: while the entries have been idle less than claim-idle (checked up to half a
    // second before it), they stay with the silent consumer, whatever the machine's speed.
    let window = (delivered + claim_idle - Duration::from_millis(500))
        .saturating_duration_since(Instant::now());
    if window.is_zero() {
        eprintln!(
            "too slow to check the lower bound: {:?}",
            delivered.elapsed()
        );
    } else {
        let taken_early = wait_until(window, || held_by(&blog, &events, "query", "silent") < 2);
        assert!(
            !taken_early,
            "taken over after {:?}, before --claim-idle {claim_idle:?}",
            delivered.elapsed()
        );
    }
    // Then live takes them over and applies them.
    assert!(
        wait_until(PATIENCE, || titles(&blog).len() == 3),
        "not taken over; log:\n{}",
        live.log()
    );
    assert!(delivered.elapsed() >= claim_idle);
    assert_eq!(held_by(&blog, &events, "query", "silent"), 0);
    assert_eq!(blog.pending(&events, "query"), 0);
    assert!(
        live.log().contains("took over entries idle for"),
        "{}",
        live.log()
    );
}

/// A `blogctl serve` process this file stops with a signal of its choice (support's
/// [`crate::support::Service`] sends only SIGTERM); killed on drop if still running.
struct Server {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Server {
    fn start(blog: &Blog, args: &[&str]) -> Server {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = blog
            .command()
            .arg("serve")
            .args(args)
            .env("RUST_LOG", "info")
            .stderr(log.reopen().unwrap())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        Server { child, log }
    }

    /// Sends `name` (TERM, INT) and waits for the exit: its code and how long it took.
    fn stop(&mut self, name: &str) -> (Option<i32>, Duration) {
        let started = Instant::now();
        signal(self.child.id(), name);
        let mut code = None;
        let exited = wait_until(PATIENCE, || {
            code = self.child.try_wait().unwrap().map(|status| status.code());
            code.is_some()
        });
        assert!(exited, "ignored SIG{name}; log:\n{}", self.log());
        (code.unwrap(), started.elapsed())
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A comments service stopped by `signal` while it holds a request back (its post's
/// `PostCreated` is held by a dead consumer, so "unknown post" cannot be decided yet).
fn a_stop_leaves_the_work_in_hand_pending_for_the_restart(signal: &str) {
    let blog = Blog::new();
    let _others = blog.serve(&["posts", "moderation", "query"]);
    let post = blog.ok(&["post", "create", "--wait", "Held back"]);
    let events = blog.events("posts");
    let inbox = blog.inbox("comments");
    create_group(&blog, &events, "comments");
    create_group(&blog, &inbox, "comments");
    assert_eq!(deliver_to(&blog, &events, "comments", "ghost"), 1);
    let mut comments = Server::start(&blog, &["comments", "--consumer", "live"]);
    let client = blog
        .command()
        .args(["--timeout", "20", "comment", "create", &post, "in hand"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    assert!(wait_until(PATIENCE, || held_by(
        &blog, &inbox, "comments", "live"
    ) == 1));

    let (code, took) = comments.stop(signal);
    assert_eq!(code, Some(0), "SIG{signal}; log:\n{}", comments.log());
    assert!(took < Duration::from_secs(2), "SIG{signal} took {took:?}");
    // Left pending with live: not answered, not dead-lettered, not half-applied.
    assert_eq!(held_by(&blog, &inbox, "comments", "live"), 1);
    assert!(blog.entries(&blog.dead()).is_empty());
    assert!(blog.events_of("CommentCreated").is_empty());

    // Restarted under its name, it resumes the request and applies it once the ghost's
    // PostCreated is taken over.
    let _comments = blog.serve(&["comments", "--consumer", "live", "--claim-idle", "1"]);
    let output = client.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let view = blog.wait_for_view(1, 1);
    assert_eq!(view[0]["comments"][0]["content"], "in hand");
    assert_eq!(blog.events_of("CommentCreated").len(), 1);
    assert_eq!(blog.pending(&inbox, "comments"), 0);
    // Its tries are forgotten (by a command of their own, just after the step).
    assert!(
        wait_until(PATIENCE, || attempts(&blog, "comments").is_empty()),
        "tries not forgotten: {:?}",
        attempts(&blog, "comments")
    );
}

#[test]
fn sigterm_while_holding_work_exits_0_and_leaves_it_pending_for_the_restart() {
    a_stop_leaves_the_work_in_hand_pending_for_the_restart("TERM");
}

#[test]
fn sigint_while_holding_work_exits_0_and_leaves_it_pending_for_the_restart() {
    a_stop_leaves_the_work_in_hand_pending_for_the_restart("INT");
}

#[test]
fn a_service_paused_past_its_clients_timeout_never_applies_the_request() {
    let blog = Blog::new();
    let posts = blog.serve(&["posts"]);
    blog.ok(&["post", "create", "Before"]);
    let paused = Paused::pause(posts.pid());
    let run = blog.run(&[
        "--timeout",
        "1",
        "post",
        "create",
        "--request-id",
        "paused-1",
        "Too late",
    ]);
    assert_eq!(run.code, 5, "{run:?}");
    drop(paused);

    // Awake, it finds the request given up on and deletes it unapplied.
    let inbox = blog.inbox("posts");
    assert!(
        wait_until(PATIENCE, || blog.entries(&inbox).is_empty()),
        "{}",
        posts.log()
    );
    blog.ok(&["post", "create", "After"]);
    let created: Vec<String> = blog
        .events_of("PostCreated")
        .iter()
        .map(|post| post["title"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(created, ["Before", "After"]);
    let remembered: bool = redis::cmd("EXISTS")
        .arg(blog.answer("posts", "paused-1"))
        .query(&mut blog.redis.connection())
        .unwrap();
    assert!(
        !remembered,
        "an answer was recorded for the abandoned request"
    );
    assert!(blog.entries(&blog.dead()).is_empty());
}

/// Every key with its DUMP (type, value, and for streams their groups and pending entries).
async fn keyspace(connection: &mut Connection) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let keys: Vec<Vec<u8>> = redis::cmd("KEYS")
        .arg("*")
        .query_async(connection)
        .await
        .unwrap();
    let mut dumps = BTreeMap::new();
    for key in keys {
        let dump: Vec<u8> = redis::cmd("DUMP")
            .arg(&key)
            .query_async(connection)
            .await
            .unwrap();
        dumps.insert(key, dump);
    }
    dumps
}

/// Delivers to consumer `a` of `group` the next new entry of `stream` (of type `kind`, if
/// given: others are acknowledged, as services acknowledge the types they do not use).
async fn next(
    connection: &mut Connection,
    stream: &str,
    group: &str,
    kind: Option<&str>,
) -> Delivery {
    loop {
        let mut read: Vec<(String, Vec<RawEntry>)> = redis::cmd("XREADGROUP")
            .arg(&["GROUP", group, "a", "COUNT", "1", "BLOCK", "5000"])
            .arg(&["STREAMS", stream, ">"])
            .query_async(connection)
            .await
            .unwrap();
        assert!(!read.is_empty(), "nothing new on {stream} for {group}");
        let delivery = Delivery::new(stream, read.remove(0).1.remove(0), 1);
        if kind.is_none_or(|kind| delivery.field("type") == Ok(kind)) {
            return delivery;
        }
        acknowledge(connection, &delivery, group).await;
    }
}

async fn acknowledge(connection: &mut Connection, delivery: &Delivery, group: &str) {
    let _: u64 = redis::cmd("XACK")
        .arg(&[&delivery.stream, group, &delivery.id])
        .query_async(connection)
        .await
        .unwrap();
}

/// Plans `delivery` and runs its step; the step's result.
async fn run(
    connection: &mut Connection,
    handler: &mut impl Handler,
    delivery: &Delivery,
) -> String {
    match handler.plan(delivery) {
        Plan::Run(step) => step.run(connection).await.unwrap().as_str().to_owned(),
        plan => panic!("{}: expected a step, got {plan:?}", delivery.id),
    }
}

/// The first run of `delivery`'s step gives `result` and changes something.
async fn applies(
    connection: &mut Connection,
    handler: &mut impl Handler,
    delivery: &Delivery,
    result: &str,
) {
    let before = keyspace(connection).await;
    assert_eq!(run(connection, handler, delivery).await, result);
    assert_ne!(
        keyspace(connection).await,
        before,
        "{delivery:?} changed nothing"
    );
}

/// Its entry no longer pending, a step (planned afresh, as a redelivery would be) is stale and
/// leaves every key as it was.
async fn is_stale(connection: &mut Connection, handler: &mut impl Handler, delivery: &Delivery) {
    let before = keyspace(connection).await;
    assert_eq!(
        run(connection, handler, delivery).await,
        "stale",
        "{delivery:?}"
    );
    assert!(
        keyspace(connection).await == before,
        "the stale step of {delivery:?} changed keys"
    );
}

/// Sends a request through the library's client call, as `blogctl` does, on a task and a
/// connection of its own; the answer comes once a step applies it.
fn send<C, T>(
    redis: &Redis,
    keys: &Keys,
    service: Service,
    command: &'static str,
    data: C,
) -> tokio::task::JoinHandle<color_eyre::Result<T>>
where
    C: serde::Serialize + Send + Sync + 'static,
    T: serde::de::DeserializeOwned + Send + 'static,
{
    let (redis, keys) = (redis.clone(), keys.clone());
    tokio::spawn(async move {
        let mut connection = redis.try_connect(None).await?;
        let request_id = uuid::Uuid::now_v7().to_string();
        let timeout = Duration::from_secs(10);
        call(
            &mut connection,
            &keys,
            Recipient {
                service,
                partition: Partition::FIRST,
            },
            command,
            &data,
            &request_id,
            timeout,
        )
        .await
    })
}

#[tokio::test]
async fn every_step_script_is_stale_for_an_entry_no_longer_pending_and_changes_nothing() {
    let blog = Blog::new();
    let keys = Keys::new(&blog.namespace).unwrap();
    let redis = Redis::open(&blog.redis.url()).unwrap();
    let mut connection = redis.try_connect(None).await.unwrap();
    let connection = &mut connection;
    // Each producer's events stream, read by the services that follow it.
    let (posts_events, comments_events, verdicts) = (
        keys.events(posts::SERVICE, Partition::FIRST),
        keys.events(comments::SERVICE, Partition::FIRST),
        keys.events(moderation::SERVICE, Partition::FIRST),
    );
    let (posts_inbox, comments_inbox) = (
        keys.inbox(posts::SERVICE, Partition::FIRST),
        keys.inbox(comments::SERVICE, Partition::FIRST),
    );
    for (stream, group) in [
        (&posts_inbox, posts::NAME),
        (&comments_inbox, comments::NAME),
        (&posts_events, comments::NAME),
        (&posts_events, query::NAME),
        (&comments_events, moderation::NAME),
        (&comments_events, query::NAME),
        (&verdicts, comments::NAME),
    ] {
        ensure_group(connection, stream, group).await.unwrap();
    }
    let mut posts = Posts::new(&keys, Partitions::ONE, Partition::FIRST);
    let mut comments = Comments::new(&keys, Partition::FIRST);
    let mut moderation = Moderation::new(&keys, Partition::FIRST, vec!["orange".to_owned()]);
    let mut query = Query::new(&keys, Partition::FIRST);

    // posts: CreatePost, applied then stale (the answer is remembered, so a second run goes
    // through the remembered-answer path).
    let title = CreatePost {
        title: "Once".to_owned(),
    };
    let sent = send::<_, Post>(&redis, &keys, posts::SERVICE, posts::CREATE_POST, title);
    let request = next(connection, &posts_inbox, posts::NAME, None).await;
    assert_eq!(run(connection, &mut posts, &request).await, "applied");
    let post = sent.await.unwrap().unwrap();
    is_stale(connection, &mut posts, &request).await;

    // posts: an invalid title is only answered; then stale.
    let empty = CreatePost {
        title: " ".to_owned(),
    };
    let sent = send::<_, Post>(&redis, &keys, posts::SERVICE, posts::CREATE_POST, empty);
    let request = next(connection, &posts_inbox, posts::NAME, None).await;
    assert_eq!(run(connection, &mut posts, &request).await, "answered");
    assert!(sent.await.unwrap().is_err(), "an empty title was accepted");
    is_stale(connection, &mut posts, &request).await;

    // posts: a request acknowledged before its step ran (dead-lettered by another consumer,
    // say) is stale at the step's own check.
    let title = CreatePost {
        title: "Never".to_owned(),
    };
    let waiting = send::<_, Post>(&redis, &keys, posts::SERVICE, posts::CREATE_POST, title);
    let request = next(connection, &posts_inbox, posts::NAME, None).await;
    acknowledge(connection, &request, posts::NAME).await;
    is_stale(connection, &mut posts, &request).await;
    waiting.abort();

    // comments and query learn the post.
    let created = next(
        connection,
        &posts_events,
        comments::NAME,
        Some("PostCreated"),
    )
    .await;
    applies(connection, &mut comments, &created, "applied").await;
    is_stale(connection, &mut comments, &created).await;
    let created = next(connection, &posts_events, query::NAME, Some("PostCreated")).await;
    applies(connection, &mut query, &created, "applied").await;
    is_stale(connection, &mut query, &created).await;

    // comments: CreateComment, applied then stale; and one acknowledged before its step.
    let comment = |content: &str| CreateComment {
        post_id: post.id,
        content: content.to_owned(),
    };
    let sent = send::<_, Comment>(
        &redis,
        &keys,
        comments::SERVICE,
        comments::CREATE_COMMENT,
        comment("Once"),
    );
    let request = next(connection, &comments_inbox, comments::NAME, None).await;
    assert_eq!(run(connection, &mut comments, &request).await, "applied");
    sent.await.unwrap().unwrap();
    is_stale(connection, &mut comments, &request).await;
    let waiting = send::<_, Comment>(
        &redis,
        &keys,
        comments::SERVICE,
        comments::CREATE_COMMENT,
        comment("Never"),
    );
    let request = next(connection, &comments_inbox, comments::NAME, None).await;
    acknowledge(connection, &request, comments::NAME).await;
    is_stale(connection, &mut comments, &request).await;
    waiting.abort();

    // moderation judges the comment; query shows it pending.
    let created = next(
        connection,
        &comments_events,
        moderation::NAME,
        Some("CommentCreated"),
    )
    .await;
    applies(connection, &mut moderation, &created, "applied").await;
    is_stale(connection, &mut moderation, &created).await;
    let created = next(
        connection,
        &comments_events,
        query::NAME,
        Some("CommentCreated"),
    )
    .await;
    applies(connection, &mut query, &created, "applied").await;
    is_stale(connection, &mut query, &created).await;

    // comments records the verdict; query shows the final status.
    let verdict = next(
        connection,
        &verdicts,
        comments::NAME,
        Some("CommentModerated"),
    )
    .await;
    applies(connection, &mut comments, &verdict, "applied").await;
    is_stale(connection, &mut comments, &verdict).await;
    let updated = next(
        connection,
        &comments_events,
        query::NAME,
        Some("CommentUpdated"),
    )
    .await;
    applies(connection, &mut query, &updated, "applied").await;
    is_stale(connection, &mut query, &updated).await;

    // The view shows the one post with its one approved comment.
    let view = blog.view();
    assert_eq!(view.as_array().unwrap().len(), 1, "{view}");
    assert_eq!(view[0]["comments"][0]["status"], "approved", "{view}");
    assert_eq!(view[0]["comments"].as_array().unwrap().len(), 1, "{view}");
}

/// The consumers of `group` on `stream`.
fn consumer_names(blog: &Blog, stream: &str, group: &str) -> Vec<String> {
    let info: redis::streams::StreamInfoConsumersReply = redis::cmd("XINFO")
        .arg(&["CONSUMERS", stream, group])
        .query(&mut blog.redis.connection())
        .unwrap();
    info.consumers
        .into_iter()
        .map(|consumer| consumer.name)
        .collect()
}

#[test]
fn a_killed_consumers_entries_are_taken_over_in_seconds_and_it_leaves_the_group() {
    let blog = Blog::new();
    let _posts = blog.serve(&["posts"]);
    let events = blog.events("posts");
    create_group(&blog, &events, "query");
    for title in ["one", "two", "three"] {
        blog.ok(&["post", "create", title]);
    }
    // Held by a consumer that was killed: it renews no liveness key.
    assert_eq!(deliver_to(&blog, &events, "query", "killed"), 3);
    let started = Instant::now();
    let query = blog.serve(&["query", "--claim-idle", "60"]);
    let taken = wait_until(PATIENCE, || blog.view().as_array().unwrap().len() == 3);
    let delay = started.elapsed();
    assert!(taken, "never taken over; log:\n{}", query.log());
    println!("a killed consumer's entries were taken over after {delay:?} (claim-idle 60 s)");
    assert!(delay < Duration::from_secs(10), "took {delay:?}");
    assert!(
        query.log().contains("consumer that is gone"),
        "{}",
        query.log()
    );
    let left = wait_until(PATIENCE, || {
        !consumer_names(&blog, &events, "query").contains(&"killed".to_owned())
    });
    assert!(left, "the gone consumer stayed in the group");
}

#[test]
fn a_live_but_slow_consumer_keeps_its_entries_until_claim_idle() {
    let blog = Blog::new();
    let _posts = blog.serve(&["posts"]);
    let events = blog.events("posts");
    create_group(&blog, &events, "query");
    for title in ["one", "two"] {
        blog.ok(&["post", "create", title]);
    }
    assert_eq!(deliver_to(&blog, &events, "query", "slow"), 2);
    let alive = format!(
        "{}slow",
        blog.keys().alive_prefix(Service::Query, Partition::FIRST)
    );
    let mut connection = blog.redis.connection();
    let mut renew = || {
        let _: () = redis::cmd("SET")
            .arg(&alive)
            .arg("1")
            .arg("PX")
            .arg(3000)
            .query(&mut connection)
            .unwrap();
    };
    renew();
    let query = blog.serve(&["query", "--claim-idle", "60", "--consumer", "q"]);
    assert!(wait_until(PATIENCE, || consumer_names(
        &blog, &events, "query"
    )
    .contains(&"q".to_owned())));
    // Longer than a liveness key lives, with the slow consumer renewing its own: its entries
    // stay with it.
    let lost = wait_until(Duration::from_secs(5), || {
        renew();
        held_by(&blog, &events, "query", "slow") != 2
    });
    assert!(
        !lost,
        "a live consumer's entries were taken; log:\n{}",
        query.log()
    );
    // It stops renewing (killed): they are taken over.
    let taken = wait_until(PATIENCE, || blog.view().as_array().unwrap().len() == 2);
    assert!(taken, "never taken over; log:\n{}", query.log());
}
