//! Partitions on one Redis: a namespace's partition count, fixed by its first `serve`; posts
//! spread over the partitions, each post whole in its own; the client merging them.

use std::collections::BTreeSet;

use blogctl::keyspace::{Partition, Partitions, Service};
use uuid::Uuid;

use crate::support::{Blog, PATIENCE, blogctl, wait_until};

fn ids(view: &serde_json::Value) -> Vec<String> {
    view.as_array()
        .unwrap()
        .iter()
        .map(|post| post["id"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn posts_spread_over_eight_partitions_each_whole_in_its_own_and_listed_oldest_first() {
    let blog = Blog::new().with_partitions(8);
    let _services = blog.serve(&["all"]);
    // A second instance of every service competes for each partition's entries.
    let _more = blog.serve(&["all"]);
    let posts: Vec<String> = (0..24)
        .map(|n| blog.ok(&["post", "create", &format!("Post {n}")]))
        .collect();
    for post in &posts {
        blog.ok(&["comment", "create", post, "Nice"]);
        blog.ok(&["comment", "create", post, "An orange"]);
    }
    let view = blog.wait_for_view(24, 48);

    // Oldest first across partitions: the creation order, which is the ids' order.
    assert_eq!(ids(&view), posts);
    let mut sorted = posts.clone();
    sorted.sort();
    assert_eq!(sorted, posts);

    let partitions = Partitions::new(8).unwrap();
    let keys = blog.keys();
    let mut connection = blog.redis.connection();
    let mut used = BTreeSet::new();
    for post in view.as_array().unwrap() {
        let id: Uuid = post["id"].as_str().unwrap().parse().unwrap();
        let home = partitions.of_post(&id);
        used.insert(home);
        let statuses: Vec<&str> = post["comments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|comment| comment["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["approved", "rejected"], "{post}");
        // The post's record, its view and its comments' state are in its partition only.
        for partition in partitions.all() {
            let here = partition == home;
            let record: bool = redis::cmd("EXISTS")
                .arg(keys.post(partition, &id.to_string()))
                .query(&mut connection)
                .unwrap();
            let shown: bool = redis::cmd("EXISTS")
                .arg(
                    keys.generation(Service::Query, partition, 0)
                        .view_post(&id.to_string()),
                )
                .query(&mut connection)
                .unwrap();
            assert_eq!(
                (record, shown),
                (here, here),
                "post {id} in partition {partition}"
            );
        }
        let shown: serde_json::Value =
            serde_json::from_str(&blog.ok(&["post", "show", "--json", &id.to_string()])).unwrap();
        assert_eq!(&shown, post);
    }
    assert!(used.len() >= 4, "24 posts in only {used:?}");

    // Exactly one event of each kind per post and comment, over every partition's streams.
    let mut created = 0;
    for partition in partitions.all() {
        let length: usize = redis::cmd("XLEN")
            .arg(keys.events(Service::Posts, partition))
            .query(&mut connection)
            .unwrap();
        created += length;
        let comments: usize = redis::cmd("XLEN")
            .arg(keys.events(Service::Comments, partition))
            .query(&mut connection)
            .unwrap();
        let verdicts: usize = redis::cmd("XLEN")
            .arg(keys.events(Service::Moderation, partition))
            .query(&mut connection)
            .unwrap();
        // Per comment: CommentCreated and CommentUpdated on the comments stream, one verdict.
        assert_eq!(comments, 2 * verdicts, "partition {partition}");
    }
    assert_eq!(created, 24);

    // Pages of 5 read across partitions add up to the whole list, in order.
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let mut args = vec!["post", "list", "--json", "--limit", "5"];
        if let Some(after) = &after {
            args.extend(["--after", after.as_str()]);
        }
        let page: serde_json::Value = serde_json::from_str(&blog.ok(&args)).unwrap();
        let page = ids(&page);
        assert!(page.len() <= 5);
        after = page.last().cloned();
        let done = page.len() < 5;
        paged.extend(page);
        if done {
            break;
        }
    }
    assert_eq!(paged, posts);
}

#[test]
fn a_namespace_keeps_the_partition_count_it_was_first_served_with() {
    let blog = Blog::new().with_partitions(4);
    let _services = blog.serve(&["all"]);
    let post = blog.ok(&["post", "create", "Kept"]);
    let mut connection = blog.redis.connection();
    let stored: Option<String> = redis::cmd("GET")
        .arg(blog.keys().partitions())
        .query(&mut connection)
        .unwrap();
    assert_eq!(stored.as_deref(), Some("4"));

    // Another count, asked by a serve or a client command, is refused with exit code 2.
    for args in [
        &["serve", "posts", "--partitions", "2"][..],
        &["post", "list", "--partitions", "1"],
        &["--partitions", "8", "comment", "create", &post, "hi"],
    ] {
        let run = blog.run(args);
        assert_eq!(run.code, 2, "{args:?}: {run:?}");
        assert!(
            run.stderr
                .contains("has 4 partitions, fixed when it was first served")
                && run.stderr.lines().count() == 1,
            "{run:?}"
        );
    }
    // Outside 1 to 256, or not a number: exit code 2 before anything is read.
    for count in ["0", "257", "many"] {
        let run = blog.run(&["post", "list", "--partitions", count]);
        assert_eq!(run.code, 2, "{run:?}");
        assert!(
            run.stderr.contains("use a whole number from 1 to 256"),
            "{run:?}"
        );
    }
    // Without --partitions, commands read the stored count.
    let plain = blogctl(&blog.redis.url(), &blog.namespace)
        .args(["post", "show", &post])
        .output()
        .unwrap();
    assert!(plain.status.success(), "{plain:?}");
    let stored: Option<String> = redis::cmd("GET")
        .arg(blog.keys().partitions())
        .query(&mut connection)
        .unwrap();
    assert_eq!(stored.as_deref(), Some("4"));
}

#[test]
fn a_namespace_served_before_counts_were_stored_has_one_partition() {
    let blog = Blog::new();
    let keys = blog.keys();
    let mut connection = blog.redis.connection();
    // An event from an earlier version, and no partition count.
    let _: String = redis::cmd("XADD")
        .arg(keys.events(Service::Posts, Partition::FIRST))
        .arg("*")
        .arg("type")
        .arg("PostCreated")
        .query(&mut connection)
        .unwrap();
    let refused = blog.run(&["serve", "comments", "--partitions", "8"]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused
            .stderr
            .contains("was served before partition counts were stored"),
        "{refused:?}"
    );
    let stored: Option<String> = redis::cmd("GET")
        .arg(keys.partitions())
        .query(&mut connection)
        .unwrap();
    assert_eq!(stored, None, "a refused serve wrote the count");

    let _services = blog.serve(&["comments"]);
    assert!(wait_until(PATIENCE, || {
        let stored: Option<String> = redis::cmd("GET")
            .arg(keys.partitions())
            .query(&mut blog.redis.connection())
            .unwrap();
        stored.as_deref() == Some("1")
    }));
}

#[test]
fn a_partition_count_blogctl_did_not_write_is_refused_with_exit_code_4() {
    let blog = Blog::new();
    let _: () = redis::cmd("SET")
        .arg(blog.keys().partitions())
        .arg("lots\u{1b}[31m")
        .query(&mut blog.redis.connection())
        .unwrap();
    for args in [&["post", "list"][..], &["serve", "all"]] {
        let run = blog.run(args);
        assert_eq!(run.code, 4, "{args:?}: {run:?}");
        assert!(
            run.stderr.contains("not a partition count from 1 to 256")
                && !run.stderr.contains('\u{1b}'),
            "{run:?}"
        );
    }
}
