//! Redis going away, filling up or turning read-only, and other bad input of the README's table.

use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant};

use crate::support::{Blog, PATIENCE, free_port, wait_until};

/// CPU time (user + system, in clock ticks) a process has used so far.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces) start at state, field 3.
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

#[test]
fn a_running_service_waits_out_a_redis_outage_and_resumes_on_an_empty_redis() {
    let blog = Blog::new();
    let services = blog.serve(&["all"]);
    blog.ok(&["post", "create", "--wait", "Before the outage"]);

    blog.redis.stop();
    let started = Instant::now();
    let run = blog.run(&["post", "list"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
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
    let events = blog.key("events");
    let length = blog.entries(&events).len();
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

    let port = free_port().to_string();
    config(&["REPLICAOF", "127.0.0.1", &port]);
    let run = blog.run(&["post", "create", "Read only"]);
    assert_eq!(run.code, 4, "{run:?}");
    assert!(run.stderr.contains("read-only"), "{run:?}");
    config(&["REPLICAOF", "NO", "ONE"]);

    assert_eq!(
        blog.entries(&events).len(),
        length,
        "a refused write left events"
    );
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
    assert_eq!((list.code, list.stdout.trim()), (0, "no posts yet"));
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
    let inbox = format!("{}inbox", blog.key("posts"));
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
    let events = blog.key("events");
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
    assert!(blog.entries(&blog.key("dead")).is_empty());

    let _: () = redis::cmd("CONFIG")
        .arg(&["SET", "maxmemory", "0"])
        .query(&mut connection)
        .unwrap();
    assert!(wait_until(PATIENCE, || blog.pending(&events, "moderation") == 0));
    let verdicts = blog.events_of("CommentModerated");
    assert_eq!(verdicts.len(), 1);
    assert_eq!(verdicts[0]["id"], comment.as_str());
    assert_eq!(verdicts[0]["status"], "approved");
    assert!(blog.entries(&blog.key("dead")).is_empty());
}
