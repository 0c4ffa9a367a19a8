//! Bad input: a one-line error on stderr, the documented exit code, nothing written.

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::support::{Blog, PATIENCE, Run, blogctl, wait_until};

/// Runs a command that must fail with `code` and a one-line message containing `needle`.
fn fails(blog: &Blog, args: &[&str], code: i32, needle: &str) {
    let run = blog.run(args);
    assert_eq!(run.code, code, "blogctl {args:?}: {run:?}");
    assert_eq!(run.stdout, "", "blogctl {args:?} printed a result");
    assert_eq!(
        run.stderr.trim_end().lines().count(),
        1,
        "not one line: {:?}",
        run.stderr
    );
    assert!(
        run.stderr.contains(needle),
        "blogctl {args:?}: {:?} lacks {needle:?}",
        run.stderr
    );
}

#[test]
fn invalid_input_exits_2_and_writes_nothing() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    let post = blog.ok(&["post", "create", "--wait", "Real"]);
    let length_before = blog.events_count();
    let long_title = "t".repeat(201);
    let long_content = "c".repeat(5001);
    fails(&blog, &["post", "create", ""], 2, "title is empty");
    fails(&blog, &["post", "create", " \t "], 2, "title is empty");
    fails(&blog, &["post", "create", &long_title], 2, "at most 200");
    fails(
        &blog,
        &["comment", "create", &post, "   "],
        2,
        "content is empty",
    );
    fails(
        &blog,
        &["comment", "create", &post, &long_content],
        2,
        "at most 5000",
    );
    fails(
        &blog,
        &["comment", "create", "not-a-uuid", "hi"],
        2,
        "not a UUID",
    );
    fails(&blog, &["post", "show", "42"], 2, "not a UUID");
    fails(&blog, &["post", "list", "--after", "x"], 2, "not a UUID");
    fails(
        &blog,
        &["post", "create", "--request-id", "", "x"],
        2,
        "--request-id",
    );
    fails(
        &blog,
        &["--namespace", "a:b", "post", "list"],
        2,
        "invalid namespace",
    );
    fails(&blog, &["--timeout", "0", "post", "list"], 2, "--timeout");
    fails(&blog, &["--timeout=-1", "post", "list"], 2, "--timeout");
    fails(
        &blog,
        &["--busy-poll", "10001", "post", "list"],
        2,
        "--busy-poll",
    );
    assert_eq!(blog.run(&["--busy-poll", "10000", "post", "list"]).code, 0);
    fails(
        &blog,
        &["--busy-poll", "soon", "serve", "all"],
        2,
        "--busy-poll",
    );
    fails(&blog, &["post", "create"], 2, "TITLE");
    fails(
        &blog,
        &["--redis-url", "http://x", "post", "list"],
        2,
        "--redis-url",
    );
    assert_eq!(blog.run(&["post", "frobnicate"]).code, 2);
    // A typo gets clap's suggestion and the help of the subcommand at hand.
    fails(
        &blog,
        &["post", "creat", "hi"],
        2,
        "did you mean 'create'? (see 'blogctl post --help')",
    );
    fails(
        &blog,
        &["post", "list", "--limit", "0"],
        2,
        "--limit must be at least 1",
    );
    // Bare `blogctl` shows the help.
    let bare = blog.run(&[]);
    assert_eq!(bare.code, 0, "{bare:?}");
    assert!(bare.stdout.contains("Usage: blogctl"), "{bare:?}");
    assert_eq!(blog.events_count(), length_before, "bad input wrote events");
    // Exactly 200 and 5000 characters are fine.
    blog.ok(&["post", "create", &"é".repeat(200)]);
    blog.ok(&["comment", "create", &post, &"é".repeat(5000)]);
}

#[test]
fn missing_posts_exit_3() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    let ghost = uuid::Uuid::now_v7().to_string();
    fails(
        &blog,
        &["comment", "create", &ghost, "hello?"],
        3,
        "does not exist",
    );
    fails(&blog, &["post", "show", &ghost], 3, "not in the query view");
    assert!(blog.events_of("CommentCreated").is_empty());
}

/// Client and service commands, each of which needs Redis first.
fn commands_needing_redis() -> Vec<Vec<String>> {
    let post = uuid::Uuid::now_v7().to_string();
    [
        &["post", "list"][..],
        &["post", "create", "x"],
        &["comment", "create", &post, "x"],
        &["serve", "all"],
    ]
    .iter()
    .map(|args| args.iter().map(|arg| arg.to_string()).collect())
    .collect()
}

#[test]
fn redis_not_listening_exits_4_naming_the_url() {
    // Port 1 is privileged: no test's redis-server can be listening there.
    let url = "redis://127.0.0.1:1";
    for args in commands_needing_redis() {
        let run: Run = blogctl(url, "blog").args(&args).output().unwrap().into();
        assert_eq!(run.code, 4, "{args:?}: {run:?}");
        assert!(run.stderr.contains(url), "{args:?}: {run:?}");
        assert_eq!(run.stderr.trim_end().lines().count(), 1, "{run:?}");
    }
}

/// A command started against a Redis that accepts its connection and never answers.
struct Hung {
    args: Vec<String>,
    url: String,
    /// Held by the test, so no other process can answer on the port.
    listener: TcpListener,
    /// The accepted connection, kept open: closing it would fail the command at once.
    connection: Option<(TcpStream, Instant)>,
    child: Child,
    exited: Option<Instant>,
}

#[test]
fn a_redis_that_never_answers_is_given_up_on_within_two_seconds() {
    // The commands run at once, each against a silent listener of its own. The clock starts
    // when a command has connected, so its own start-up (slow on a busy machine) is not
    // counted, and stops when its exit is seen.
    let mut hung: Vec<Hung> = commands_needing_redis()
        .into_iter()
        .map(|args| {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let url = format!(
                "redis://127.0.0.1:{}",
                listener.local_addr().unwrap().port()
            );
            let child = blogctl(&url, "blog")
                .args(&args)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            Hung {
                args,
                url,
                listener,
                connection: None,
                child,
                exited: None,
            }
        })
        .collect();
    // Each command's exit is checked below.
    wait_until(PATIENCE, || {
        for command in &mut hung {
            if command.connection.is_none()
                && let Ok((stream, _)) = command.listener.accept()
            {
                command.connection = Some((stream, Instant::now()));
            }
            if command.exited.is_none() && command.child.try_wait().unwrap().is_some() {
                command.exited = Some(Instant::now());
            }
        }
        hung.iter().all(|command| command.exited.is_some())
    });
    for mut command in hung {
        let _ = command.child.kill();
        let status = command.child.wait().unwrap();
        let mut stderr = String::new();
        command
            .child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
        let args = &command.args;
        let exited = command
            .exited
            .unwrap_or_else(|| panic!("{args:?} still ran after {PATIENCE:?}: {stderr}"));
        let (_, connected) = command.connection.expect("the command connected");
        let took = exited - connected;
        // Its connection timeout is the promised 2 s; the rest is for reporting and exiting.
        assert!(
            took < Duration::from_secs(3),
            "{args:?} gave up {took:?} after connecting"
        );
        assert_eq!(status.code(), Some(4), "{args:?}: {stderr}");
        assert!(stderr.contains(&command.url), "{args:?}: {stderr}");
    }
}

#[test]
fn a_service_that_is_not_running_exits_5_naming_it() {
    let blog = Blog::new();
    let _others = blog.serve(&["posts", "query"]);
    let post = blog.ok(&["post", "create", "--wait", "No comments service"]);
    fails(
        &blog,
        &["--timeout", "0.5", "comment", "create", &post, "hi"],
        5,
        "blogctl serve comments",
    );
    // With moderation down the comment is created but never decided: --wait prints its id (it
    // exists), then fails with exit code 5 naming what to start.
    let _comments = blog.serve(&["comments"]);
    // First a comment that shows comments answering and query showing it, so that the one
    // below runs out waiting for moderation only, not for a service still starting.
    let warm_up = blog.ok(&["comment", "create", &post, "warming up"]);
    assert!(wait_until(PATIENCE, || blog.view()[0]["comments"]
        .as_array()
        .unwrap()
        .iter()
        .any(|comment| comment["id"] == warm_up.as_str())));
    let run = blog.run(&["--timeout", "2", "comment", "create", "--wait", &post, "hi"]);
    assert_eq!(run.code, 5, "{run:?}");
    let id = run.stdout.trim();
    assert!(uuid::Uuid::parse_str(id).is_ok(), "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("comment {id} was created but is still pending")),
        "{run:?}"
    );
    assert!(run.stderr.contains("blogctl serve moderation"), "{run:?}");
    assert_eq!(run.stderr.trim_end().lines().count(), 1, "{run:?}");
}
