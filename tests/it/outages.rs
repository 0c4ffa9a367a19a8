//! Redis going away, filling up or turning read-only, and other bad input of the README's table.

use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use blogctl::keyspace::{Partition, Service};

use crate::delivery::add_request;
use crate::support::{Blog, PATIENCE, RedisServer, wait_until};

/// CPU time (user + system, in clock ticks) a process has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

/// One field of `INFO <section>` (e.g. `replication`, `master_link_status`).
fn info(redis: &RedisServer, section: &str, field: &str) -> String {
    let text: String = redis::cmd("INFO")
        .arg(section)
        .query(&mut redis.connection())
        .unwrap();
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in INFO {section}: {text}"))
        .trim()
        .to_owned()
}

/// REPLICAOF: makes `server` a replica of `master`, or a primary again (None).
fn replicate(server: &RedisServer, master: Option<&RedisServer>) {
    let port = master.map(|master| master.port.to_string());
    let (host, port) = match &port {
        Some(port) => ("127.0.0.1", port.as_str()),
        None => ("NO", "ONE"),
    };
    let _: () = redis::cmd("REPLICAOF")
        .arg(host)
        .arg(port)
        .query(&mut server.connection())
        .unwrap();
}

/// Makes the blog's Redis a read-only replica with its data intact, and returns its master,
/// a second private Redis that the test owns (never a port nobody owns: whoever took it would
/// become the master).
///
/// A replica replaces its data with its master's when it syncs, so the master must hold the
/// same data first: the second Redis becomes a replica of the blog's and syncs, is promoted,
/// and the blog's Redis then syncs from it, getting back what it had. Nothing may write to the
/// blog's Redis between the promotion and its own switch (that write would be lost), so its
/// services must be idle when this is called.
fn make_read_only_replica(blog: &Blog) -> RedisServer {
    let master = RedisServer::start();
    for server in [&blog.redis, &master] {
        // A primary waits 5 s by default for more replicas before a full sync starts.
        let _: () = redis::cmd("CONFIG")
            .arg(&["SET", "repl-diskless-sync-delay", "0"])
            .query(&mut server.connection())
            .unwrap();
    }
    replicate(&master, Some(&blog.redis));
    assert!(
        wait_until(PATIENCE, || {
            info(&master, "replication", "master_link_status") == "up"
                && info(&master, "replication", "slave_repl_offset")
                    == info(&blog.redis, "replication", "master_repl_offset")
        }),
        "the copy did not sync"
    );
    replicate(&master, None);
    replicate(&blog.redis, Some(&master));
    assert!(
        wait_until(PATIENCE, || info(
            &blog.redis,
            "replication",
            "master_link_status"
        ) == "up"),
        "the blog's Redis did not sync from its new master"
    );
    master
}

#[test]
fn a_running_service_waits_out_a_redis_outage_and_resumes_on_an_empty_redis() {
    let blog = Blog::new();
    let services = blog.serve(&["all"]);
    blog.ok(&["post", "create", "--wait", "Before the outage"]);

    blog.redis.stop();
    // How soon it fails is bad_input's test (timed from the connection, not from the spawn).
    let run = blog.run(&["post", "list"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains(&blog.redis.url()), "{run:?}");
    let count = |text: &str| services.log().matches(text).count();
    assert!(
        wait_until(PATIENCE, || count("Redis is unavailable") >= 4),
        "{}",
        services.log()
    );

    // A measurement window, not a wait for anything: while Redis is away the services back
    // off (no busy loop) and say so once each, not once per try.
    let before = cpu_ticks(services.pid());
    std::thread::sleep(Duration::from_millis(1500));
    let used = cpu_ticks(services.pid()) - before;
    assert!(
        used < 30,
        "{used} ticks of CPU in 1.5 s while Redis was away"
    );
    assert_eq!(
        count("Redis is unavailable"),
        4,
        "log flooded: {}",
        services.log()
    );

    // Redis returns with nothing (no persistence here): groups are created again.
    blog.redis.start_again();
    assert!(
        wait_until(PATIENCE, || count("Redis is back") >= 4),
        "{}",
        services.log()
    );
    let post = blog.ok(&["post", "create", "--wait", "After the outage"]);
    assert_eq!(blog.verdict(&post, "still here"), "approved");
}

#[test]
fn a_full_or_read_only_redis_is_refused_with_exit_4_and_writes_nothing() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    let post = blog.ok(&["post", "create", "--wait", "Room"]);
    let length = blog.events_count();
    let mut connection = blog.redis.connection();
    let mut config = |args: &[&str]| {
        let _: () = redis::cmd(args[0])
            .arg(&args[1..])
            .query(&mut connection)
            .unwrap();
    };

    config(&["CONFIG", "SET", "maxmemory", "1"]);
    let run = blog.run(&["post", "create", "Too big"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("maxmemory"), "{run:?}");
    let run = blog.run(&["comment", "create", &post, "no room"]);
    assert_eq!(run.code, 4, "{run:?}");
    config(&["CONFIG", "SET", "maxmemory", "0"]);

    let _master = make_read_only_replica(&blog);
    let run = blog.run(&["post", "create", "Read only"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("read-only"), "{run:?}");
    replicate(&blog.redis, None);

    assert_eq!(blog.events_count(), length, "a refused write left events");
    // The services went on: the blog works again at once.
    let again = blog.ok(&["post", "create", "--wait", "Room again"]);
    assert_eq!(blog.verdict(&again, "fine"), "approved");
}

#[test]
fn a_wrong_namespace_sees_an_empty_blog_and_no_services() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    let post = blog.ok(&["post", "create", "--wait", "In blog"]);
    let other = |args: &[&str]| -> crate::support::Run {
        blog.command()
            .env("BLOGCTL_NAMESPACE", "other")
            .args(args)
            .output()
            .unwrap()
            .into()
    };
    let list = other(&["post", "list"]);
    // An empty blog: nothing on stdout (results only), so `| wc -l` says 0.
    assert_eq!((list.code, list.stdout.as_str()), (0, ""));
    let show = other(&["post", "show", &post]);
    assert_eq!(show.code, 3, "{show:?}");
    let create = other(&["--timeout", "0.5", "comment", "create", &post, "hi"]);
    assert_eq!(create.code, 5, "{create:?}");
}

#[test]
fn non_utf8_input_is_refused_with_exit_2() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    let post = blog.ok(&["post", "create", "--wait", "Bytes"]);
    let bad = std::ffi::OsStr::from_bytes(b"caf\xe9");
    let run: crate::support::Run = blog
        .command()
        .args(["post", "create"])
        .arg(bad)
        .output()
        .unwrap()
        .into();
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{run:?}");

    let run = blog.run_with_stdin(&["comment", "create", &post, "-"], b"\xff\xfe not text");
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("not UTF-8"), "{run:?}");
    assert!(blog.events_of("CommentCreated").is_empty());
}

#[test]
fn losing_redis_while_waiting_for_an_answer_says_how_to_retry_safely() {
    let blog = Blog::new();
    let client = blog
        .command()
        .args([
            "--timeout",
            "20",
            "post",
            "create",
            "--request-id",
            "lost-1",
            "In flight",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // No posts service runs: the request waits in the inbox until Redis goes away.
    let inbox = blog.inbox("posts");
    assert!(wait_until(PATIENCE, || blog.entries(&inbox).len() == 1));
    blog.redis.stop();
    let output = client.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("--request-id lost-1"), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
}

#[test]
fn a_service_applies_nothing_while_redis_is_full_and_catches_up_after() {
    let blog = Blog::new();
    let moderation = blog.serve(&["moderation"]);
    // Moderation reads the comments' stream.
    let events = blog.events("comments");
    let mut connection = blog.redis.connection();
    assert!(wait_until(PATIENCE, || {
        let groups: redis::RedisResult<redis::Value> = redis::cmd("XINFO")
            .arg(&["GROUPS", &events])
            .query(&mut connection);
        format!("{groups:?}").contains("moderation")
    }));

    // A new comment reaches moderation just as Redis fills up.
    let comment = uuid::Uuid::now_v7().to_string();
    let data = format!(
        r#"{{"id":"{comment}","postId":"{}","content":"while full","status":"pending"}}"#,
        uuid::Uuid::now_v7()
    );
    let _: redis::Value = redis::pipe()
        .atomic()
        .cmd("XADD")
        .arg(&events)
        .arg("*")
        .arg(&[
            ("type", "CommentCreated"),
            ("version", "1"),
            ("request_id", "full"),
            ("producer", "test"),
            ("data", &data),
        ])
        .cmd("CONFIG")
        .arg(&["SET", "maxmemory", "1"])
        .query(&mut connection)
        .unwrap();

    // Delivered, but Redis turns the step away whole: it stays pending, unapplied.
    assert!(
        wait_until(PATIENCE, || moderation.log().contains("maxmemory")),
        "{}",
        moderation.log()
    );
    assert_eq!(blog.pending(&events, "moderation"), 1);
    assert!(blog.events_of("CommentModerated").is_empty());
    assert!(blog.entries(&blog.dead()).is_empty());

    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory", "0"])
        .query(&mut connection)
        .unwrap();
    assert!(wait_until(PATIENCE, || blog.pending(&events, "moderation") == 0));
    let verdicts = blog.events_of("CommentModerated");
    assert_eq!(verdicts.len(), 1);
    assert_eq!(verdicts[0]["id"], comment.as_str());
    assert_eq!(verdicts[0]["status"], "approved");
    assert!(blog.entries(&blog.dead()).is_empty());
}

#[test]
fn running_services_wait_out_a_switch_to_a_read_only_replica_and_back() {
    let blog = Blog::new();
    let services = blog.serve(&["all", "--consumer", "c"]);
    let before = blog.ok(&["post", "create", "--wait", "Before"]);
    assert_eq!(blog.verdict(&before, "before the switch"), "approved");
    blog.wait_until_nothing_pending();
    let events = blog.events("posts");
    let (posts_inbox, comments_inbox) = (blog.inbox("posts"), blog.inbox("comments"));
    // Counted over every producer's stream.
    let logged_events = blog.events_count();

    let master = make_read_only_replica(&blog);
    assert!(
        wait_until(PATIENCE, || services.log().contains("read only replica")),
        "the services did not meet the read-only Redis: {}",
        services.log()
    );

    // Meanwhile, requests and an event are made on the master and reach the replica: a request
    // already delivered to the posts service (as if Redis turned read-only between its read
    // and its step), a request not read yet, and an event.
    let mut on_master = master.connection();
    let (post_reply, comment_reply) = (
        uuid::Uuid::now_v7().to_string(),
        uuid::Uuid::now_v7().to_string(),
    );
    add_request(
        &mut on_master,
        &blog,
        "posts",
        "meanwhile-post",
        Some(&post_reply),
        600_000,
        r#"{"title":"Requested meanwhile"}"#,
    );
    let _: redis::Value = redis::cmd("XREADGROUP")
        .arg(&[
            "GROUP",
            "posts",
            "c",
            "COUNT",
            "1",
            "STREAMS",
            &posts_inbox,
            ">",
        ])
        .query(&mut on_master)
        .unwrap();
    add_request(
        &mut on_master,
        &blog,
        "comments",
        "meanwhile-comment",
        Some(&comment_reply),
        600_000,
        &format!(r#"{{"postId":"{before}","content":"commented meanwhile"}}"#),
    );
    let event_post = uuid::Uuid::now_v7().to_string();
    let _: String = redis::cmd("XADD")
        .arg(&events)
        .arg("*")
        .arg(&[
            ("type", "PostCreated"),
            ("version", "1"),
            ("request_id", "meanwhile-event"),
            ("producer", "posts"),
            (
                "data",
                &format!(r#"{{"id":"{event_post}","title":"Published meanwhile"}}"#),
            ),
        ])
        .query(&mut on_master)
        .unwrap();
    assert!(
        wait_until(PATIENCE, || blog.events_count() == logged_events + 1
            && blog.entries(&comments_inbox).len() == 1
            && blog.pending(&posts_inbox, "posts") == 1),
        "what the master got did not reach the replica"
    );
    // Nothing of it is applied, nor dead-lettered, while Redis is read-only: the requests
    // are still there, and no event was added.
    let run = blog.run(&["post", "create", "Refused"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert_eq!(blog.entries(&posts_inbox).len(), 1);
    assert_eq!(blog.events_count(), logged_events + 1);
    assert!(blog.entries(&blog.dead()).is_empty());

    // Back to a primary: all of it is applied, once.
    replicate(&blog.redis, None);
    let view = blog.wait_for_view(3, 2);
    let mut titles = Blog::titles(&view);
    titles.sort();
    assert_eq!(
        titles,
        ["Before", "Published meanwhile", "Requested meanwhile"]
    );
    let commented = view
        .as_array()
        .unwrap()
        .iter()
        .find(|post| post["id"] == before.as_str())
        .unwrap();
    assert_eq!(commented["comments"][1]["content"], "commented meanwhile");
    assert_eq!(commented["comments"][1]["status"], "approved");
    blog.wait_until_nothing_pending();
    let mut created: Vec<String> = blog
        .events_of("PostCreated")
        .iter()
        .map(|event| event["title"].as_str().unwrap().to_owned())
        .collect();
    created.sort();
    assert_eq!(created, titles);
    for kind in ["CommentCreated", "CommentModerated", "CommentUpdated"] {
        assert_eq!(blog.events_of(kind).len(), 2, "{kind}");
    }
    let mut connection = blog.redis.connection();
    let keys = blogctl::keyspace::Keys::new(&blog.namespace).unwrap();
    for (reply, answer) in [
        (&post_reply, "Requested meanwhile"),
        (&comment_reply, "commented meanwhile"),
    ] {
        let answers: Vec<String> = redis::cmd("LRANGE")
            .arg(keys.reply(blogctl::keyspace::Partition::FIRST, reply))
            .arg(0)
            .arg(-1)
            .query(&mut connection)
            .unwrap();
        assert_eq!(answers.len(), 1, "{answers:?}");
        assert!(answers[0].contains(answer), "{answers:?}");
    }
    assert!(blog.entries(&posts_inbox).is_empty());
    assert!(blog.entries(&comments_inbox).is_empty());
    assert!(blog.entries(&blog.dead()).is_empty());
}

#[test]
fn a_timeout_says_redis_is_full_when_it_refuses_the_step_and_the_request_is_never_applied() {
    let blog = Blog::new();
    // The groups exist; then the posts service is down while a request waits.
    let posts = blog.serve(&["posts"]);
    blog.ok(&["post", "create", "First"]);
    assert_eq!(posts.terminate().0, 0);
    let client = blog
        .command()
        .args(["post", "create", "--timeout", "2", "Too late"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let inbox = blog.inbox("posts");
    assert!(wait_until(PATIENCE, || blog.entries(&inbox).len() == 1));
    // Redis is full: the service, back, cannot apply the request.
    let mut connection = blog.redis.connection();
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory", "1"])
        .query(&mut connection)
        .unwrap();
    let _posts = blog.serve(&["posts"]);
    let run: crate::support::Run = client.wait_with_output().unwrap().into();
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("Redis is full"), "{run:?}");
    assert!(run.stderr.contains("will never be applied"), "{run:?}");
    // Memory back: the request, past its deadline, is dropped unapplied.
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory", "0"])
        .query(&mut connection)
        .unwrap();
    assert!(wait_until(PATIENCE, || blog.entries(&inbox).is_empty()));
    assert_eq!(blog.events_of("PostCreated").len(), 1);
}

#[test]
fn a_timeout_with_no_consumer_alive_says_so() {
    let blog = Blog::new();
    let run = blog.run(&["post", "create", "--timeout", "0.3", "Nobody"]);
    assert_eq!(run.code, 5, "{run:?}");
    assert!(
        run.stderr.contains("no consumer of it is alive")
            && run.stderr.contains("blogctl serve posts"),
        "{run:?}"
    );
}

#[test]
fn the_redis_password_is_never_printed_and_a_wrong_one_is_named() {
    let blog = Blog::new();
    // (Set after the start: the harness checks the server is its own without a password.)
    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "requirepass", "s3cret"])
        .query(&mut blog.redis.connection())
        .unwrap();
    let port = blog.redis.port;
    let with = |password: &str| format!("redis://default:{password}@127.0.0.1:{port}");
    // A wrong password: exit 4, said to be the credentials, the password not shown.
    let wrong = blog
        .command()
        .env("BLOGCTL_REDIS_URL", with("wr0ng"))
        .args(["post", "list"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&wrong.stderr);
    assert_eq!(wrong.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("authentication failed for user default"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("wr0ng") && stderr.contains("default:***@"),
        "{stderr}"
    );
    // Unreachable, an unparsable URL, `--help` with the variable set: never the password.
    for args in [
        vec![
            "--redis-url",
            "redis://user:s3cret@127.0.0.1:1",
            "post",
            "list",
        ],
        vec!["--redis-url", "redis://user:s3cret@[bad", "post", "list"],
        vec!["--help"],
    ] {
        let run = blog
            .command()
            .env("BLOGCTL_REDIS_URL", with("s3cret"))
            .args(&args)
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&run.stdout),
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(!all.contains("s3cret"), "{args:?}: {all}");
    }
    // The password from a file: the URL, the environment and the command line hold none.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, "s3cret\n").unwrap();
    let run = blog
        .command()
        .env("BLOGCTL_REDIS_URL", format!("redis://127.0.0.1:{port}"))
        .env("BLOGCTL_REDIS_PASSWORD_FILE", &file)
        .args(["post", "list"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    std::fs::write(&file, "wr0ng\n").unwrap();
    let run = blog
        .command()
        .env("BLOGCTL_REDIS_URL", format!("redis://127.0.0.1:{port}"))
        .args([
            "--redis-password-file",
            file.to_str().unwrap(),
            "post",
            "list",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("authentication failed") && !stderr.contains("wr0ng"),
        "{stderr}"
    );
    // The services' logs, at start and on trouble.
    let services = blog
        .command()
        .env("BLOGCTL_REDIS_URL", with("s3cret"))
        .env("RUST_LOG", "info")
        .args(["serve", "posts"])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run = blog
        .command()
        .env("BLOGCTL_REDIS_URL", with("s3cret"))
        .args(["post", "create", "Secretly"])
        .output()
        .unwrap();
    assert_eq!(run.status.code(), Some(0), "{run:?}");
    crate::support::signal(services.id(), "TERM");
    let output = services.wait_with_output().unwrap();
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(log.contains("default:***@"), "{log}");
    assert!(!log.contains("s3cret"), "{log}");
}

/// A client whose Redis user may only read the query view lists and shows posts: the reads are
/// read-only scripts (`EVALSHA_RO`, with `EVAL_RO` when Redis has not cached them), which need
/// no write permission on the keys they name. The same user cannot write the view.
#[test]
fn a_client_that_may_only_read_the_view_lists_and_shows_posts_and_writes_nothing() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    let post = blog.ok(&["post", "create", "Readable"]);
    assert_eq!(blog.verdict(&post, "nice"), "approved");
    let view = blog.wait_for_view(1, 1);
    let query = blog.keys().service_pattern(Service::Query);
    let read_view = format!("%R~{query}");
    let read_count = format!("%R~{}", blog.keys().partitions_pattern());
    // The commands the read scripts call, and nothing for connecting but the password.
    let reads = [
        "+evalsha_ro",
        "+eval_ro",
        "+get",
        "+exists",
        "+zrange",
        "+hget",
        "+hvals",
    ];
    blog.redis.add_user(
        "reader",
        &[&[read_view.as_str(), read_count.as_str()][..], &reads].concat(),
    );
    // Nothing cached: the first read falls back to `EVAL_RO`, which caches the script.
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query(&mut blog.redis.connection())
        .unwrap();
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut blog.redis.connection())
        .unwrap();
    let list = blog.run_as("reader", &["post", "list", "--json"]);
    assert_eq!(list.code, 0, "{list:?}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&list.stdout).unwrap(),
        view
    );
    for _ in 0..2 {
        let show = blog.run_as("reader", &["post", "show", &post, "--json"]);
        assert_eq!(show.code, 0, "{show:?}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&show.stdout).unwrap(),
            view[0]
        );
    }
    // One `EVAL_RO` after the flush, then one `EVALSHA_RO` per read: one round trip each.
    let stats = blog.redis.command_stats();
    let calls = |command: &str| {
        stats
            .get(command)
            .map_or((0, 0), |fields| (fields["calls"], fields["failed_calls"]))
    };
    assert_eq!(calls("eval_ro"), (1, 0), "{stats:?}");
    assert_eq!(calls("evalsha_ro"), (3, 1), "{stats:?}");
    assert_eq!(calls("evalsha"), (0, 0), "{stats:?}");
    assert_eq!(calls("eval"), (0, 0), "{stats:?}");

    // Writing the view, or running a script that could write it, is refused.
    let mut reader = blog.redis.connection_as("reader");
    let post_key = blog
        .keys()
        .generation(Service::Query, Partition::FIRST, 0)
        .view_post(&post);
    let written: redis::RedisResult<i64> = redis::cmd("HSET")
        .arg(&post_key)
        .arg("title")
        .arg("Defaced")
        .query(&mut reader);
    assert_eq!(written.unwrap_err().code(), Some("NOPERM"));
    let written: redis::RedisResult<i64> = redis::cmd("EVAL")
        .arg("return redis.call('HSET', KEYS[1], 'title', 'Defaced')")
        .arg(1)
        .arg(&post_key)
        .query(&mut reader);
    assert_eq!(written.unwrap_err().code(), Some("NOPERM"));
    // Even allowed `HSET`, the user's read-only key pattern refuses it, and `EVALSHA` on a key
    // it may only read.
    blog.redis.add_user(
        "reader",
        &[&[read_view.as_str(), "+hset", "+evalsha"][..], &reads].concat(),
    );
    let mut reader = blog.redis.connection_as("reader");
    let written: redis::RedisResult<i64> = redis::cmd("HSET")
        .arg(&post_key)
        .arg("title")
        .arg("Defaced")
        .query(&mut reader);
    assert_eq!(written.unwrap_err().code(), Some("NOPERM"));
    let pointer = blog
        .keys()
        .generation_pointer(Service::Query, Partition::FIRST);
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg("#!lua flags=no-writes\nreturn redis.call('GET', KEYS[1])")
        .query(&mut blog.redis.connection())
        .unwrap();
    let read: redis::RedisResult<Option<String>> = redis::cmd("EVALSHA")
        .arg(&sha)
        .arg(1)
        .arg(&pointer)
        .query(&mut reader);
    assert_eq!(read.unwrap_err().code(), Some("NOPERM"), "EVALSHA would do");
    assert_eq!(blog.view(), view, "the view changed");

    // A client that creates posts and comments, its view read-only, waits on the view too.
    blog.redis.add_user(
        "writer",
        &[
            &format!("~{}", blog.keys().service_pattern(Service::Posts)),
            &format!("~{}", blog.keys().service_pattern(Service::Comments)),
            &format!("~{}", blog.keys().reply(Partition::FIRST, "*")),
            &read_view,
            &read_count,
            "+@all",
        ],
    );
    let created = blog.run_as("writer", &["post", "create", "--wait", "Written"]);
    assert_eq!(created.code, 0, "{created:?}");
    let commented = blog.run_as(
        "writer",
        &["comment", "create", "--wait", created.stdout.trim(), "fine"],
    );
    assert_eq!(commented.code, 0, "{commented:?}");
    assert!(
        commented.stdout.trim().ends_with(" approved"),
        "{commented:?}"
    );
}

/// Runs openssl, which must succeed.
fn openssl(dir: &std::path::Path, args: &[&str]) {
    let status = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("openssl must be installed (scripts/test.sh installs it)");
    assert!(status.success(), "openssl {args:?} failed");
}

/// A certificate authority `name` in `dir` (`<name>.crt`, `<name>.key`), and certificates it
/// signs for 127.0.0.1 (`server`) and for a client (`client`).
fn make_certificates(dir: &std::path::Path, name: &str) {
    let (crt, key) = (format!("{name}.crt"), format!("{name}.key"));
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &crt,
            "-days",
            "2",
            "-subj",
            &format!("/CN={name}"),
        ],
    );
    std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
    for who in ["server", "client"] {
        let prefix = format!("{name}-{who}");
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{prefix}.key"),
                "-out",
                &format!("{prefix}.csr"),
                "-subj",
                "/CN=127.0.0.1",
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{prefix}.csr"),
                "-CA",
                &crt,
                "-CAkey",
                &key,
                "-CAcreateserial",
                "-out",
                &format!("{prefix}.crt"),
                "-days",
                "2",
                "-extfile",
                "san.ext",
            ],
        );
    }
}

#[test]
fn the_story_runs_over_tls_with_client_certificates_and_a_wrong_ca_fails_clearly() {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path(), "ca");
    make_certificates(dir.path(), "other");
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let tls_port = crate::support::free_port().to_string();
    let blog = Blog::on(RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &path("ca-server.crt"),
        "--tls-key-file",
        &path("ca-server.key"),
        "--tls-ca-cert-file",
        &path("ca.crt"),
        "--tls-auth-clients",
        "yes",
    ]));
    let url = format!("rediss://127.0.0.1:{tls_port}");
    let tls = |command: &mut std::process::Command| {
        command
            .env("BLOGCTL_REDIS_URL", &url)
            .env("BLOGCTL_REDIS_CA", path("ca.crt"))
            .env("BLOGCTL_REDIS_CERT", path("ca-client.crt"))
            .env("BLOGCTL_REDIS_KEY", path("ca-client.key"));
    };
    let _services = blog.serve_with(
        &["all"],
        &[
            ("BLOGCTL_REDIS_URL", url.clone()),
            ("BLOGCTL_REDIS_CA", path("ca.crt")),
            ("BLOGCTL_REDIS_CERT", path("ca-client.crt")),
            ("BLOGCTL_REDIS_KEY", path("ca-client.key")),
        ],
    );
    let run = |args: &[&str], with_client_certificate: bool| -> crate::support::Run {
        let mut command = blog.command();
        tls(&mut command);
        if !with_client_certificate {
            command
                .env_remove("BLOGCTL_REDIS_CERT")
                .env_remove("BLOGCTL_REDIS_KEY");
        }
        command.args(args).output().unwrap().into()
    };
    let post = run(&["post", "create", "--wait", "Over TLS"], true);
    assert_eq!(post.code, 0, "{post:?}");
    let comment = run(
        &[
            "comment",
            "create",
            "--wait",
            post.stdout.trim(),
            "encrypted",
        ],
        true,
    );
    assert_eq!(comment.code, 0, "{comment:?}");
    assert!(comment.stdout.contains("approved"), "{comment:?}");
    // The same data through the plain port the test owns: the services wrote it over TLS.
    assert_eq!(blog.view()[0]["title"], "Over TLS");
    // Without a client certificate, Redis refuses: exit 4.
    let refused = run(&["post", "list"], false);
    assert_eq!(refused.code, 4, "{refused:?}");
    assert!(refused.stderr.contains("--redis-cert"), "{refused:?}");
    // A CA that did not sign the server's certificate: exit 4, naming the URL.
    let mut wrong = blog.command();
    tls(&mut wrong);
    let wrong: crate::support::Run = wrong
        .env("BLOGCTL_REDIS_CA", path("other.crt"))
        .args(["post", "list"])
        .output()
        .unwrap()
        .into();
    assert_eq!(wrong.code, 4, "{wrong:?}");
    assert!(
        wrong.stderr.contains(&url) && wrong.stderr.contains("TLS handshake"),
        "{wrong:?}"
    );
}
