//! `blogctl export` and `blogctl import`: a blog copied through its export into another
//! namespace and onto a Redis Cluster with 8 partitions, an export taken while comments are
//! created, and files that are cut short or edited.

use std::collections::HashMap;
use std::path::Path;

use blogctl::keyspace::{Keys, Partitions};

use crate::cluster::blog_on_cluster;
use crate::support::{Blog, PATIENCE, Run, Service, blogctl, wait_until};

/// Runs `blogctl <args>` against namespace `namespace` of the blog's Redis.
fn run_in(blog: &Blog, namespace: &str, args: &[&str]) -> Run {
    blogctl(&blog.redis.url(), namespace)
        .args(args)
        .output()
        .expect("run blogctl")
        .into()
}

fn ok_in(blog: &Blog, namespace: &str, args: &[&str]) -> String {
    let run = run_in(blog, namespace, args);
    assert_eq!(
        run.code, 0,
        "blogctl {args:?} in {namespace} failed: {run:?}"
    );
    run.stdout.trim().to_owned()
}

fn view_in(blog: &Blog, namespace: &str) -> serde_json::Value {
    serde_json::from_str(&ok_in(blog, namespace, &["post", "list", "--json"])).unwrap()
}

/// The keys of a namespace.
fn keys_of(blog: &Blog, namespace: &str) -> Vec<String> {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{namespace}:*"))
        .query(&mut blog.redis.connection())
        .unwrap();
    keys.sort();
    keys
}

/// The event lines of an export, parsed, in order.
fn events_of(file: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter(|line| line.get("stream").is_some())
        .collect()
}

/// A blog with posts, an approved and a rejected comment, a dead letter, and a log trimmed
/// into `archive` with events after it; returns its view once settled.
fn a_blog_with_history(blog: &Blog, archive: &str) -> serde_json::Value {
    let first = blog.ok(&["post", "create", "First"]);
    assert_eq!(blog.verdict(&first, "Nice post"), "approved");
    assert_eq!(blog.verdict(&first, "I like oranges"), "rejected");
    // A malformed event on the comments' stream: moderation and query dead-letter it.
    let _: String = redis::cmd("XADD")
        .arg(blog.events("comments"))
        .arg("*")
        .arg(&["type", "CommentCreated", "version", "1", "request_id", "x"])
        .arg(&["producer", "test", "data", "not json"])
        .query(&mut blog.redis.connection())
        .unwrap();
    assert!(wait_until(PATIENCE, || blog.entries(&blog.dead()).len() == 2));
    blog.wait_until_nothing_pending();
    blog.ok(&["trim", "--archive", archive, "--yes"]);
    assert_eq!(blog.events_count(), 0, "trim left entries");
    let second = blog.ok(&["post", "create", "Second"]);
    assert_eq!(blog.verdict(&second, "After the trim"), "approved");
    assert_eq!(blog.verdict(&first, "Orange again"), "rejected");
    let view = blog.wait_for_view(2, 4);
    blog.wait_until_nothing_pending();
    view
}

/// Checks a copy: its view is the original's, it is healthy, a rebuild changes nothing, and
/// its services take new comments.
fn check_the_copy(copy: &Blog, namespace: &str, expected: &serde_json::Value) {
    assert!(
        wait_until(PATIENCE, || view_in(copy, namespace) == *expected),
        "the copy's view {} is not {expected}",
        view_in(copy, namespace)
    );
    let status = run_in(copy, namespace, &["status", "--check"]);
    assert_eq!(status.code, 0, "{status:?}");
    ok_in(copy, namespace, &["rebuild", "query"]);
    ok_in(copy, namespace, &["rebuild", "comments"]);
    assert_eq!(view_in(copy, namespace), *expected);
    let first = expected[0]["id"].as_str().unwrap();
    let waited = ok_in(
        copy,
        namespace,
        &["comment", "create", "--wait", first, "Orange!"],
    );
    assert!(waited.ends_with(" rejected"), "{waited}");
    // The posts service's records, each in its post's partition.
    let stored: String = redis::cmd("GET")
        .arg(Keys::new(namespace).unwrap().partitions())
        .query(&mut *copy.connection())
        .unwrap();
    let partitions = Partitions::new(stored.parse().unwrap()).unwrap();
    for post in expected.as_array().unwrap() {
        let id = post["id"].as_str().unwrap();
        let partition = partitions.of_post(&id.parse().unwrap());
        let record: HashMap<String, String> = redis::cmd("HGETALL")
            .arg(Keys::new(namespace).unwrap().post(partition, id))
            .query(&mut *copy.connection())
            .unwrap();
        let title = post["title"].as_str().unwrap();
        assert_eq!(
            record,
            HashMap::from([("id".into(), id.into()), ("title".into(), title.into())])
        );
    }
}

#[test]
fn a_blog_round_trips_through_export_and_import_into_another_namespace_and_a_cluster() {
    let blog = Blog::new();
    let services = blog.serve(&["all"]);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let archive = archive.to_str().unwrap();
    let view = a_blog_with_history(&blog, archive);
    let file = dir.path().join("blog.ndjson");
    let file = file.to_str().unwrap();

    // Without the archive the export would lack the trimmed events: refused, nothing written.
    let run = blog.run(&["export", file]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--archive"), "{run:?}");
    assert!(!Path::new(file).exists());
    let summary: serde_json::Value =
        serde_json::from_str(&blog.ok(&["export", file, "--json", "--archive", archive])).unwrap();
    let events = events_of(Path::new(file));
    assert_eq!(summary["events"], events.len());
    assert!(summary["archived"].as_u64().unwrap() > 0, "{summary}");
    drop(services);

    // Into another namespace of the same Redis, with 3 partitions.
    let imported = ok_in(
        &blog,
        "copy",
        &["--partitions", "3", "import", file, "--json"],
    );
    let imported: serde_json::Value = serde_json::from_str(&imported).unwrap();
    assert_eq!(imported["events"], events.len());
    let mut serve = blogctl(&blog.redis.url(), "copy");
    serve.args(["serve", "all"]);
    let _copy = Service::start(serve);
    check_the_copy(&blog, "copy", &view);
    assert!(
        blog.entries(&blog.dead()).len() == 2,
        "the original's dead letters"
    );

    // Onto a Redis Cluster, with 8 partitions.
    let cluster = blog_on_cluster(&[]).with_partitions(8);
    let run = cluster.run(&["import", file]);
    assert_eq!(run.code, 0, "{run:?}");
    let _services = cluster.serve(&["all"]);
    check_the_copy(&cluster, &cluster.namespace, &view);
    let partitions: String = redis::cmd("GET")
        .arg(cluster.keys().partitions())
        .query(&mut *cluster.connection())
        .unwrap();
    assert_eq!(partitions, "8");
}

#[test]
fn an_export_taken_while_comments_are_created_is_a_consistent_cut() {
    let blog = Blog::new().with_partitions(2);
    let _services = blog.serve(&["all"]);
    let posts: Vec<String> = (0..4)
        .map(|n| blog.ok(&["post", "create", &format!("Post {n}")]))
        .collect();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let dir = tempfile::tempdir().unwrap();
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for n in 0.. {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let post = &posts[n % posts.len()];
                let content = if n % 3 == 0 { "orange" } else { "fine" };
                blog.ok(&["comment", "create", post, &format!("{content} {n}")]);
            }
        });
        for round in 0..4 {
            // Let comments come between the exports.
            let before = blog.events_count();
            assert!(wait_until(PATIENCE, || blog.events_count() > before + 20));
            let file = dir.path().join(format!("{round}.ndjson"));
            blog.ok(&["export", file.to_str().unwrap()]);
            check_the_cut(&blog, &file);
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

/// Every comment in the export has its `CommentCreated` before its verdict and its
/// `CommentUpdated`, and each stream's events in it are the start of that stream.
fn check_the_cut(blog: &Blog, file: &Path) {
    let mut created: HashMap<String, usize> = HashMap::new();
    let mut per_stream: HashMap<(String, u64), Vec<String>> = HashMap::new();
    for (index, event) in events_of(file).iter().enumerate() {
        let fields = &event["fields"];
        let data: serde_json::Value =
            serde_json::from_str(fields["data"].as_str().unwrap()).unwrap();
        let comment = data["id"].as_str().unwrap().to_owned();
        match fields["type"].as_str().unwrap() {
            "CommentCreated" => {
                created.insert(comment, index);
            }
            "CommentModerated" | "CommentUpdated" => assert!(
                created.get(&comment).is_some_and(|at| *at < index),
                "{event} without its CommentCreated before it"
            ),
            _ => {}
        }
        let stream = (
            event["stream"].as_str().unwrap().to_owned(),
            event["partition"].as_u64().unwrap(),
        );
        per_stream
            .entry(stream)
            .or_default()
            .push(event["id"].as_str().unwrap().to_owned());
    }
    assert!(
        created.len() >= 5,
        "{} comments in {}",
        created.len(),
        file.display()
    );
    for ((producer, partition), ids) in per_stream {
        let stream = blog.keys().events(
            crate::support::service_named(&producer),
            blogctl::keyspace::Partition(partition as u32),
        );
        let on_stream: Vec<String> = blog
            .entries(&stream)
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(
            ids,
            on_stream[..ids.len()],
            "{stream} in {}",
            file.display()
        );
    }
}

#[test]
fn a_file_cut_short_or_edited_and_a_used_namespace_are_refused_with_nothing_written() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    let post = blog.ok(&["post", "create", "Hello"]);
    blog.verdict(&post, "Nice");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("blog.ndjson");
    blog.ok(&["export", file.to_str().unwrap()]);
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let joined = |lines: &[&str]| {
        lines
            .iter()
            .map(|line| format!("{line}\n"))
            .collect::<String>()
    };
    let mut swapped = lines.clone();
    swapped.swap(1, 2);
    let cases = [
        ("cut mid-line", text[..text.len() - 20].to_owned(), "line 6"),
        ("cut at a line's end", joined(&lines[..4]), "line 4"),
        ("edited", text.replacen("Nice", "Mean", 1), "line 3"),
        ("swapped", joined(&swapped), "line 2"),
        (
            "a line dropped",
            joined(&[&lines[..2], &lines[3..]].concat()),
            "line 3",
        ),
        ("doubled", format!("{text}{text}"), "line 7"),
        ("not an export", "hello\n".to_owned(), "line 1"),
    ];
    for (what, content, line) in cases {
        let bad = dir.path().join("bad.ndjson");
        std::fs::write(&bad, content).unwrap();
        let run = run_in(&blog, "copy", &["import", bad.to_str().unwrap()]);
        assert_eq!(run.code, 2, "{what}: {run:?}");
        assert!(run.stderr.contains(&format!("{line}:")), "{what}: {run:?}");
        assert_eq!(run.stderr.lines().count(), 1, "{what}: {run:?}");
        assert!(keys_of(&blog, "copy").is_empty(), "{what} wrote keys");
    }
    // A namespace holding a blog already: refused, unchanged.
    let before = keys_of(&blog, "blog");
    let run = blog.run(&["import", file.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("holds a blog already"), "{run:?}");
    assert_eq!(keys_of(&blog, "blog"), before);
    // A missing archive, or a file that is not one: refused.
    let run = blog.run(&["export", "-", "--archive", "/nonexistent/posts.ndjson"]);
    assert_eq!(run.code, 2, "{run:?}");
    let run = blog.run(&["export", "-", "--archive", file.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("not named as"), "{run:?}");
}

/// How many events of type `kind` the streams of `namespace` (one partition) hold.
fn count_in(blog: &Blog, namespace: &str, kind: &str) -> usize {
    let keys = Keys::new(namespace).unwrap();
    let producer = crate::support::service_named(crate::support::producer_of(kind));
    blog.entries(&keys.events(producer, blogctl::keyspace::Partition(0)))
        .iter()
        .filter(|(_, fields)| fields.iter().any(|(k, v)| k == "type" && v == kind))
        .count()
}

#[test]
fn a_comment_exported_before_its_verdict_or_its_update_gets_each_once_in_the_copy() {
    let blog = Blog::new();
    let _others = blog.serve(&["posts", "query"]);
    let comments = blog.serve(&["comments"]);
    let moderation = blog.serve(&["moderation"]);
    let post = blog.ok(&["post", "create", "Hello"]);
    assert_eq!(blog.verdict(&post, "Nice"), "approved");
    drop(moderation);
    blog.ok(&["comment", "create", &post, "Orange, awaiting its verdict"]);
    assert!(wait_until(PATIENCE, || blog
        .events_of("CommentCreated")
        .len()
        == 2));
    let dir = tempfile::tempdir().unwrap();
    let before_verdict = dir.path().join("before-verdict.ndjson");
    blog.ok(&["export", before_verdict.to_str().unwrap()]);
    // The verdict, without the comments service to record it.
    drop(comments);
    let _moderation = blog.serve(&["moderation"]);
    assert!(wait_until(PATIENCE, || blog
        .events_of("CommentModerated")
        .len()
        == 2));
    let before_update = dir.path().join("before-update.ndjson");
    blog.ok(&["export", before_update.to_str().unwrap()]);

    for (namespace, file) in [("a", &before_verdict), ("b", &before_update)] {
        let imported = ok_in(
            &blog,
            namespace,
            &["import", file.to_str().unwrap(), "--json"],
        );
        let imported: serde_json::Value = serde_json::from_str(&imported).unwrap();
        let awaiting = if namespace == "a" { 1 } else { 0 };
        assert_eq!(imported["awaiting_moderation"], awaiting, "{imported}");
        let mut serve = blogctl(&blog.redis.url(), namespace);
        serve.args(["serve", "all"]);
        let _copy = Service::start(serve);
        assert!(
            wait_until(PATIENCE, || {
                let view = view_in(&blog, namespace);
                view[0]["comments"][1]["status"] == "rejected"
            }),
            "{namespace}: {}",
            view_in(&blog, namespace)
        );
        ok_in(
            &blog,
            namespace,
            &["comment", "create", "--wait", &post, "Later"],
        );
        let status = run_in(&blog, namespace, &["status", "--check"]);
        assert_eq!(status.code, 0, "{status:?}");
        // One verdict and one update per comment: nothing given twice.
        assert_eq!(
            count_in(&blog, namespace, "CommentModerated"),
            3,
            "{namespace}"
        );
        assert_eq!(
            count_in(&blog, namespace, "CommentUpdated"),
            3,
            "{namespace}"
        );
        assert!(
            blog.entries(
                &Keys::new(namespace)
                    .unwrap()
                    .dead(blogctl::keyspace::Partition(0))
            )
            .is_empty()
        );
    }
}
