//! A Redis user per process (`blogctl acl`): the blog works with each process as its own user,
//! and Redis refuses each user what is not its own.

use crate::support::{Blog, PATIENCE, wait_until};

const SERVICES: [&str; 4] = ["posts", "comments", "moderation", "query"];

#[test]
fn the_story_runs_with_a_redis_user_per_process() {
    story_as_users(Blog::with_users());
}

/// The same on a 3-master Redis Cluster, each node with the ACL file.
#[test]
fn the_story_runs_with_a_redis_user_per_process_on_a_cluster() {
    story_as_users(Blog::with_users_on(&[], crate::cluster::blog_on_cluster).with_partitions(8));
}

/// With 8 partitions, the first serve of each service stores the count as its own user, after
/// looking at the streams it may read for events of an earlier version.
#[test]
fn the_story_runs_with_a_redis_user_per_process_and_eight_partitions() {
    let blog = Blog::with_users().with_partitions(8);
    // Comments first: it follows the posts' and moderation's streams, and looks at them too.
    let _first = blog.serve(&["comments"]);
    assert!(wait_until(PATIENCE, || {
        let stored: Option<String> = redis::cmd("GET")
            .arg(blog.keys().partitions())
            .query(&mut blog.redis.connection())
            .unwrap();
        stored.as_deref() == Some("8")
    }));
    story_as_users(blog);
}

fn story_as_users(blog: Blog) {
    let _services: Vec<_> = SERVICES.iter().map(|name| blog.serve(&[name])).collect();
    let post = blog.ok(&["post", "create", "--wait", "Least privilege"]);
    assert_eq!(blog.verdict(&post, "fine"), "approved");
    assert_eq!(blog.verdict(&post, "an orange"), "rejected");
    let view = blog.view();
    assert_eq!(view[0]["title"], "Least privilege", "{view}");
    assert_eq!(view[0]["comments"].as_array().unwrap().len(), 2, "{view}");
    blog.ok(&["post", "show", &post]);
    // The operator's commands.
    assert!(wait_until(PATIENCE, || blog
        .run(&["status", "--check"])
        .code
        == 0));
    assert_eq!(blog.ok(&["events", "list"]).lines().count(), 7);
    assert!(blog.ok(&["dead", "list"]).contains("no dead letters"));
    blog.ok(&["rebuild", "query"]);
    blog.ok(&["rebuild", "comments"]);
    assert_eq!(blog.view(), view);
    let dir = tempfile::tempdir().unwrap();
    blog.ok(&["trim", "--yes", "--archive", dir.path().to_str().unwrap()]);
    assert_eq!(blog.events_count(), 0);
    // Nothing was refused along the way.
    let log: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query(&mut blog.redis.connection())
        .unwrap();
    assert!(log.is_empty(), "refused: {log:?}");
}

#[test]
fn a_comment_on_a_missing_post_fails_with_exit_code_3() {
    let blog = Blog::with_users();
    let _services: Vec<_> = SERVICES.iter().map(|name| blog.serve(&[name])).collect();
    blog.ok(&["post", "create", "Not this one"]);
    // Comments answers "not found" once it has applied the posts' stream up to the request:
    // it looks at that stream (XREVRANGE, XINFO, XPENDING) as its own user.
    let missing = blog.run(&[
        "comment",
        "create",
        "00000000-0000-7000-8000-000000000000",
        "Hello?",
    ]);
    assert_eq!(missing.code, 3, "{missing:?}");
    let log: Vec<redis::Value> = redis::cmd("ACL")
        .arg("LOG")
        .query(&mut blog.redis.connection())
        .unwrap();
    assert!(log.is_empty(), "refused: {log:?}");
}

/// Runs `command` as `user` and returns Redis's error, if it refused it.
fn refused(blog: &Blog, user: &str, command: &mut redis::Cmd) -> Option<String> {
    let result: redis::RedisResult<redis::Value> = command.query(&mut blog.connection_as(user));
    result.err().map(|error| error.to_string())
}

#[test]
fn each_user_is_refused_outside_its_keys() {
    let blog = Blog::with_users();
    let keys = blog.keys();
    let p = blogctl::keyspace::Partition::FIRST;
    use blogctl::keyspace::Service::{Comments, Moderation, Posts, Query};
    let forged = |stream: String| {
        let mut xadd = redis::cmd("XADD");
        xadd.arg(stream)
            .arg("*")
            .arg("type")
            .arg("PostCreated")
            .arg("data")
            .arg("{}");
        xadd
    };
    let view_key = keys.generation(Query, p, 0).view_post("x");
    let script_adding_to = |stream: String| {
        let mut eval = redis::cmd("EVAL");
        eval.arg("return redis.call('XADD', KEYS[1], '*', 'type', 'PostCreated')")
            .arg(1)
            .arg(stream);
        eval
    };
    // (user, what it tries, what it must be refused)
    let mut cases: Vec<(&str, &str, redis::Cmd)> = vec![
        (
            "blog-query",
            "forge a PostCreated",
            forged(keys.events(Posts, p)),
        ),
        (
            "blog-comments",
            "forge a PostCreated",
            forged(keys.events(Posts, p)),
        ),
        (
            "blog-moderation",
            "write the comments' stream",
            forged(keys.events(Comments, p)),
        ),
        (
            "blog-comments",
            "add to a followed stream from a script",
            script_adding_to(keys.events(Moderation, p)),
        ),
        (
            "blog-posts",
            "write another service's keys",
            redis::cmd("HSET")
                .arg(&view_key)
                .arg("title")
                .arg("x")
                .clone(),
        ),
        (
            "blog-client",
            "forge an event",
            forged(keys.events(Posts, p)),
        ),
        (
            "blog-client",
            "change the view",
            redis::cmd("HSET")
                .arg(&view_key)
                .arg("title")
                .arg("x")
                .clone(),
        ),
        (
            "blog-client",
            "switch the view's generation",
            redis::cmd("SET")
                .arg(keys.generation_pointer(Query, p))
                .arg("7")
                .clone(),
        ),
        (
            "blog-client",
            "read another service's keys",
            redis::cmd("SMEMBERS")
                .arg(keys.generation(Comments, p, 0).known_posts())
                .clone(),
        ),
        (
            "blog-operator",
            "touch another namespace",
            redis::cmd("SET").arg("other:key").arg("1").clone(),
        ),
        (
            "blog-operator",
            "flush Redis",
            redis::cmd("FLUSHALL").clone(),
        ),
    ];
    for (user, what, command) in &mut cases {
        let refusal = refused(&blog, user, command);
        assert!(
            refusal
                .as_deref()
                .is_some_and(|error| error.contains("NoPerm") || error.contains("can't access")),
            "{user} could {what}: {refusal:?}"
        );
    }
    // A process run as the wrong user says so, with exit code 4.
    let status = blog
        .command_as("blog-client")
        .arg("status")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert_eq!(status.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("ACL does not permit"), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    // Nothing of it reached a stream.
    assert_eq!(blog.events_count(), 0);
    // And each user may do its own work: moderation publishes on its own stream.
    assert_eq!(
        refused(
            &blog,
            "blog-moderation",
            &mut forged(keys.events(Moderation, p))
        ),
        None
    );
}
