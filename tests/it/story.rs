//! The seed story end to end, moderation, catch-up and rebuild from history.

use crate::support::{Blog, PATIENCE, wait_until};

#[test]
fn seed_story_through_the_real_binary() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    let post = blog.ok(&["post", "create", "Hello world"]);
    // A comment right after the post, as the next line of a script would make it.
    let comment = blog.ok(&["comment", "create", &post, "Nice post"]);
    let waited = blog.ok(&["comment", "create", "--wait", &post, "I like Oranges"]);
    let (rejected_id, status) = waited.split_once(' ').expect("id and status");
    assert_eq!(status, "rejected");

    let view = blog.wait_for_view(1, 2);
    assert_eq!(view[0]["id"], post.as_str());
    assert_eq!(view[0]["title"], "Hello world");
    let comments = view[0]["comments"].as_array().unwrap();
    assert_eq!(comments[0]["id"], comment.as_str());
    assert_eq!(comments[0]["content"], "Nice post");
    assert_eq!(comments[0]["status"], "approved");
    assert_eq!(comments[1]["id"], rejected_id);
    assert_eq!(comments[1]["status"], "rejected");

    let shown: serde_json::Value =
        serde_json::from_str(&blog.ok(&["post", "show", "--json", &post])).unwrap();
    assert_eq!(shown, view[0]);
    let table = blog.ok(&["post", "list"]);
    assert!(
        table.contains("Hello world")
            && table.contains("approved  ")
            && table.contains("rejected  "),
        "{table}"
    );

    // Exactly the four kinds of events, once each per post and comment.
    assert_eq!(blog.events_of("PostCreated").len(), 1);
    assert_eq!(blog.events_of("CommentCreated").len(), 2);
    assert_eq!(blog.events_of("CommentModerated").len(), 2);
    assert_eq!(blog.events_of("CommentUpdated").len(), 2);
}

#[test]
fn json_output_and_wait_on_post_create() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    let created: serde_json::Value =
        serde_json::from_str(&blog.ok(&["post", "create", "--json", "--wait", "  Padded  "]))
            .unwrap();
    assert_eq!(created["title"], "Padded");
    let id = created["id"].as_str().unwrap();
    // --wait returned only once the view had it.
    assert_eq!(blog.view()[0]["id"], id);
    let comment: serde_json::Value =
        serde_json::from_str(&blog.ok(&["comment", "create", "--json", id, "First!"])).unwrap();
    assert_eq!(comment["postId"], id);
    assert_eq!(comment["content"], "First!");
    assert_eq!(comment["status"], "pending");
    let waited: serde_json::Value =
        serde_json::from_str(&blog.ok(&["comment", "create", "--json", "--wait", id, "orange!"]))
            .unwrap();
    assert_eq!(waited["status"], "rejected");
}

#[test]
fn content_from_stdin() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    let post = blog.ok(&["post", "create", "Stdin"]);
    let run = blog.run_with_stdin(
        &["comment", "create", "--wait", &post, "-"],
        b"from a pipe\n",
    );
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.ends_with(" approved\n"), "{run:?}");
    assert_eq!(blog.view()[0]["comments"][0]["content"], "from a pipe");
}

#[test]
fn banned_words_are_configurable() {
    let blog = Blog::new();
    let _services = blog.serve(&["all", "--banned-words", "kiwi,Mango"]);
    let post = blog.ok(&["post", "create", "Fruit"]);
    assert_eq!(blog.verdict(&post, "MANGO season"), "rejected");
    assert_eq!(blog.verdict(&post, "orange is fine here"), "approved");
}

#[test]
fn a_stopped_service_catches_up_when_it_returns() {
    let blog = Blog::new();
    let _writers = blog.serve(&["posts", "comments", "moderation"]);
    let query = blog.serve(&["query"]);
    let first = blog.ok(&["post", "create", "Before"]);
    blog.ok(&["comment", "create", &first, "one"]);
    blog.wait_for_view(1, 1);

    let (code, _) = query.terminate();
    assert_eq!(code, 0);
    let second = blog.ok(&["post", "create", "While query was down"]);
    blog.ok(&["comment", "create", &second, "two orange"]);
    blog.ok(&["comment", "create", &first, "three"]);
    // Nothing reaches the view while the query service is down...
    assert_eq!(blog.view().as_array().unwrap().len(), 1);

    // ...and all of it once it is back.
    let _query = blog.serve(&["query"]);
    let view = blog.wait_for_view(2, 3);
    assert_eq!(view[1]["title"], "While query was down");
    assert_eq!(view[1]["comments"][0]["status"], "rejected");
}

#[test]
fn moderation_down_leaves_comments_pending_until_it_returns() {
    let blog = Blog::new();
    let _others = blog.serve(&["posts", "comments", "query"]);
    let post = blog.ok(&["post", "create", "Pending"]);
    let comment = blog.ok(&["comment", "create", &post, "waiting for a verdict"]);
    assert!(wait_until(
        PATIENCE,
        || blog.view()[0]["comments"][0]["status"] == "pending"
    ));
    let _moderation = blog.serve(&["moderation"]);
    let view = blog.wait_for_view(1, 1);
    assert_eq!(view[0]["comments"][0]["id"], comment.as_str());
    assert_eq!(view[0]["comments"][0]["status"], "approved");
}

#[test]
fn a_service_started_for_the_first_time_rebuilds_from_history() {
    let blog = Blog::new();
    let writers = blog.serve(&["posts", "comments", "moderation"]);
    for n in 0..5 {
        let post = blog.ok(&["post", "create", &format!("Post {n}")]);
        for m in 0..3 {
            let text = if m == 2 {
                "orange".to_owned()
            } else {
                format!("comment {m}")
            };
            blog.ok(&["comment", "create", &post, &text]);
        }
    }
    assert!(wait_until(PATIENCE, || blog
        .events_of("CommentUpdated")
        .len()
        == 15));
    writers.terminate();
    assert_eq!(blog.view().as_array().unwrap().len(), 0);

    let _query = blog.serve(&["query"]);
    let view = blog.wait_for_view(5, 15);
    assert_eq!(
        Blog::titles(&view),
        ["Post 0", "Post 1", "Post 2", "Post 3", "Post 4"]
    );
    for post in view.as_array().unwrap() {
        let statuses: Vec<&str> = post["comments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["approved", "approved", "rejected"]);
    }
}

#[test]
fn sigterm_stops_a_service_promptly_with_exit_code_zero() {
    let blog = Blog::new();
    let services = blog.serve(&["all"]);
    blog.ok(&["post", "create", "--wait", "Up"]);
    let (code, took) = services.terminate();
    assert_eq!(code, 0);
    assert!(took < std::time::Duration::from_secs(2), "took {took:?}");
    // Holding nothing, it left its groups: stopped processes do not pile up as consumers.
    let mut connection = blog.redis.connection();
    for (stream, group) in [
        (blog.events("posts"), "query"),
        (blog.events("posts"), "comments"),
        (blog.inbox("posts"), "posts"),
    ] {
        let consumers: Vec<redis::Value> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&stream)
            .arg(group)
            .query(&mut connection)
            .unwrap();
        assert!(consumers.is_empty(), "{group} still lists {consumers:?}");
    }
}

#[test]
fn paging_through_the_list() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    let ids: Vec<String> = (0..5)
        .map(|n| blog.ok(&["post", "create", "--wait", &format!("P{n}")]))
        .collect();
    let page: serde_json::Value = serde_json::from_str(
        &blog.ok(&["post", "list", "--json", "--limit", "2", "--after", &ids[1]]),
    )
    .unwrap();
    let got: Vec<&str> = page
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, [ids[2].as_str(), ids[3].as_str()]);
    // A page that is not the last says on stderr where the next one starts; the last says
    // nothing.
    let run = blog.run(&["post", "list", "--limit", "2", "--after", &ids[1]]);
    assert_eq!(run.stdout.lines().count(), 2, "{run:?}");
    assert!(
        run.stderr
            .contains(&format!("blogctl post list --limit 2 --after {}", ids[3])),
        "{run:?}"
    );
    let last = blog.run(&["post", "list", "--limit", "2", "--after", &ids[3]]);
    assert_eq!(last.stdout.lines().count(), 1, "{last:?}");
    assert_eq!(last.stderr, "", "{last:?}");
}

#[test]
fn terminal_control_sequences_are_refused_or_never_printed_raw() {
    let blog = Blog::new();
    let services = blog.serve(&["all"]);
    let sequence = "Hi \u{1b}[31mRED \u{1b}]0;pwned\u{7} \u{9b}2J";
    // A title or comment holding one is refused (exit 2); a comment may hold newlines and tabs.
    let refused = blog.run(&["post", "create", sequence]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("U+001B"), "{refused:?}");
    let post = blog.ok(&["post", "create", "--wait", "Plain"]);
    let refused = blog.run(&["comment", "create", &post, sequence]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert_eq!(blog.verdict(&post, "two\nlines\tand a tab"), "approved");
    // Anyone who can write Redis can still put one in an event or a dead letter: every
    // command shows it escaped.
    let data = serde_json::json!({"id": uuid::Uuid::now_v7(), "title": sequence}).to_string();
    let _: String = redis::cmd("XADD")
        .arg(blog.events("posts"))
        .arg("*")
        .arg(&[
            ("type", "PostCreated"),
            ("version", "1"),
            ("request_id", sequence),
            ("producer", "test"),
            ("data", &data),
        ])
        .query(&mut blog.redis.connection())
        .unwrap();
    assert!(wait_until(PATIENCE, || !blog
        .entries(&blog.dead())
        .is_empty()));
    for args in [
        vec!["post", "list"],
        vec!["events", "list"],
        vec!["dead", "list"],
        vec!["status"],
        vec!["events", "list", "--json"],
    ] {
        let run = blog.run(&args);
        assert_eq!(run.code, 0, "{args:?}: {run:?}");
        assert!(
            !run.stdout
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'),
            "{args:?} printed a control character: {:?}",
            run.stdout
        );
    }
    assert!(blog.ok(&["events", "list"]).contains("Hi \\u001b[31mRED"));
    // Nor do the services' logs (the malformed event's dead letter was logged).
    assert!(!services.log().contains('\u{1b}'), "{}", services.log());
}

#[test]
fn listing_a_big_blog_reads_it_a_page_at_a_time_and_misses_nothing() {
    let blog = Blog::new();
    // 1,234 posts in the view, written as the query service writes them.
    let view = blog.keys().generation(
        blogctl::keyspace::Service::Query,
        blogctl::keyspace::Partition::FIRST,
        0,
    );
    let ids: Vec<String> = (0..1234)
        .map(|_| uuid::Uuid::now_v7().to_string())
        .collect();
    let mut pipe = redis::pipe();
    for id in &ids {
        pipe.cmd("HSET")
            .arg(view.view_post(id))
            .arg(&["id", id, "title", "t"])
            .ignore();
        pipe.cmd("ZADD")
            .arg(view.view_posts())
            .arg(0)
            .arg(id)
            .ignore();
    }
    let () = pipe.query(&mut blog.redis.connection()).unwrap();
    let listed: Vec<String> =
        serde_json::from_str::<serde_json::Value>(&blog.ok(&["post", "list", "--json"]))
            .unwrap()
            .as_array()
            .unwrap()
            .iter()
            .map(|post| post["id"].as_str().unwrap().to_owned())
            .collect();
    assert_eq!(listed, ids);
    assert_eq!(blog.ok(&["post", "list"]).lines().count(), 1234);
    let after: Vec<String> = serde_json::from_str::<serde_json::Value>(
        &blog.ok(&["post", "list", "--json", "--after", &ids[999]]),
    )
    .unwrap()
    .as_array()
    .unwrap()
    .iter()
    .map(|post| post["id"].as_str().unwrap().to_owned())
    .collect();
    assert_eq!(after, ids[1000..]);
    // An empty blog is an empty array in JSON.
    let _: () = redis::cmd("FLUSHALL")
        .query(&mut blog.redis.connection())
        .unwrap();
    assert_eq!(blog.ok(&["post", "list", "--json"]), "[]");
}
