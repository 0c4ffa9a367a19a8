//! Bad input: a one-line error on stderr, the documented exit code, nothing written.

use std::time::{Duration, Instant};

use crate::support::{Blog, free_port};

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
    let length_before = blog.entries(&blog.key("events")).len();
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
    fails(&blog, &["post", "create"], 2, "TITLE");
    fails(
        &blog,
        &["--redis-url", "http://x", "post", "list"],
        2,
        "--redis-url",
    );
    assert_eq!(blog.run(&["post", "frobnicate"]).code, 2);
    assert_eq!(blog.run(&[]).code, 2);
    assert_eq!(
        blog.entries(&blog.key("events")).len(),
        length_before,
        "bad input wrote events"
    );
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

#[test]
fn redis_not_listening_exits_4_within_two_seconds_naming_the_url() {
    let blog = Blog::new();
    let url = format!("redis://127.0.0.1:{}", free_port());
    for args in [
        &["post", "list"][..],
        &["post", "create", "x"],
        &["comment", "create", &uuid::Uuid::now_v7().to_string(), "x"],
        &["serve", "all"],
    ] {
        let started = Instant::now();
        let run: crate::support::Run = blog
            .command()
            .env("BLOGCTL_REDIS_URL", &url)
            .args(args)
            .output()
            .unwrap()
            .into();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{args:?} took {:?}",
            started.elapsed()
        );
        assert_eq!(run.code, 4, "{args:?}: {run:?}");
        assert!(run.stderr.contains(&url), "{args:?}: {run:?}");
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
    let run = blog.run(&["--timeout", "1", "comment", "create", "--wait", &post, "hi"]);
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
