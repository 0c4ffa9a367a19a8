//! `blogctl rebuild`: a fresh copy from the whole log equals the live state, and the switch
//! loses nothing written meanwhile.

use std::collections::BTreeMap;

use blogctl::keyspace::{Partition, Partitions, Service};

use crate::support::{Blog, PATIENCE, wait_until};

/// A small blog: posts with approved and rejected comments, all settled.
fn story(blog: &Blog) -> serde_json::Value {
    for n in 0..4 {
        let post = blog.ok(&["post", "create", &format!("Post {n}")]);
        for m in 0..5 {
            let text = if m == 3 {
                format!("orange {m}")
            } else {
                format!("comment {m}")
            };
            blog.ok(&["comment", "create", &post, &text]);
        }
    }
    blog.wait_for_view(4, 20)
}

/// Every key under a prefix with its contents, as text, keyed by the part after the prefix.
fn dump(blog: &Blog, prefix: &str) -> BTreeMap<String, String> {
    let mut connection = blog.redis.connection();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query(&mut connection)
        .unwrap();
    keys.into_iter()
        .map(|key| {
            let kind: String = redis::cmd("TYPE").arg(&key).query(&mut connection).unwrap();
            let value = match kind.as_str() {
                "hash" => {
                    let all: BTreeMap<String, String> = redis::cmd("HGETALL")
                        .arg(&key)
                        .query(&mut connection)
                        .unwrap();
                    format!("{all:?}")
                }
                "set" => {
                    let mut members: Vec<String> = redis::cmd("SMEMBERS")
                        .arg(&key)
                        .query(&mut connection)
                        .unwrap();
                    members.sort();
                    format!("{members:?}")
                }
                "zset" => {
                    let members: Vec<String> = redis::cmd("ZRANGE")
                        .arg(&key)
                        .arg(0)
                        .arg(-1)
                        .query(&mut connection)
                        .unwrap();
                    format!("{members:?}")
                }
                other => panic!("unexpected {other} at {key}"),
            };
            (key[prefix.len()..].to_owned(), value)
        })
        .collect()
}

#[test]
fn a_rebuilt_query_view_equals_the_live_one_and_keeps_serving() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    let before = story(&blog);
    let live = dump(&blog, &blog.generation("query", 0));

    let report: serde_json::Value =
        serde_json::from_str(&blog.ok(&["rebuild", "query", "--json"])).unwrap();
    assert_eq!(report["generation"], 1);
    // Every event of the streams query follows: the posts' and the comments'.
    let followed =
        blog.entries(&blog.events("posts")).len() + blog.entries(&blog.events("comments")).len();
    assert_eq!(report["events"], followed, "{report}");
    assert!(report["events_per_second"].as_f64().unwrap() > 0.0);

    assert_eq!(blog.view(), before);
    assert_eq!(
        dump(&blog, &blog.generation("query", 1)),
        live,
        "the rebuilt keys differ"
    );
    assert!(
        dump(&blog, &blog.generation("query", 0)).is_empty(),
        "the old generation is left"
    );

    // The service writes the new generation from now on.
    let post = before[0]["id"].as_str().unwrap();
    assert_eq!(blog.verdict(post, "after the rebuild"), "approved");
    blog.wait_for_view(4, 21);
    let human = blog.ok(&["rebuild", "query"]);
    assert!(
        human.starts_with("rebuilt query: ") && human.ends_with("now generation 2"),
        "{human}"
    );
}

#[test]
fn a_rebuild_under_load_loses_nothing_written_meanwhile() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    story(&blog);
    let post = blog.ok(&["post", "create", "Busy"]);
    std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            for n in 0..40 {
                blog.ok(&["comment", "create", &post, &format!("meanwhile {n}")]);
            }
        });
        for _ in 0..3 {
            blog.ok(&["rebuild", "query"]);
        }
        writer.join().unwrap();
    });
    let view = blog.wait_for_view(5, 60);
    let busy = view
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == post.as_str())
        .unwrap();
    assert_eq!(busy["comments"].as_array().unwrap().len(), 40);
}

/// Runs `blogctl rebuild <args>` as a Redis user that may neither `SCAN` nor `KEYS`, and checks
/// Redis ran neither meanwhile; returns its stdout.
fn rebuild_without_scanning(blog: &Blog, args: &[&str]) -> String {
    blog.redis
        .add_user("rebuilder", &["~*", "+@all", "-scan", "-keys"]);
    let _: () = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query(&mut blog.redis.connection())
        .unwrap();
    let run = blog.run_as("rebuilder", &[&["rebuild"][..], args].concat());
    assert_eq!(run.code, 0, "{run:?}");
    let stats = blog.redis.command_stats();
    assert!(
        !stats.contains_key("scan") && !stats.contains_key("keys"),
        "{stats:?}"
    );
    run.stdout
}

/// The comments state's generation `number`.
fn comments_generation(blog: &Blog, number: u64) -> blogctl::keyspace::Generation {
    blog.keys()
        .generation(Service::Comments, Partition::FIRST, number)
}

#[test]
fn rebuilt_comments_state_equals_the_live_one() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    story(&blog);
    let live = dump(&blog, &blog.generation("comments", 0));
    assert!(live.len() > 20, "{live:?}");
    // The index lists each comment of the generation.
    let comment_keys: Vec<String> = live
        .keys()
        .filter_map(|key| key.strip_prefix("comment:"))
        .map(str::to_owned)
        .collect();
    assert_eq!(comment_keys.len(), 20);
    assert_eq!(live["comments"], format!("{comment_keys:?}"));

    rebuild_without_scanning(&blog, &["comments"]);
    assert_eq!(dump(&blog, &blog.generation("comments", 1)), live);
    assert!(dump(&blog, &blog.generation("comments", 0)).is_empty());
    // The comments service goes on from the new generation: it still knows every post.
    let post = blog.view()[3]["id"].as_str().unwrap().to_owned();
    assert_eq!(blog.verdict(&post, "still known"), "approved");
    assert!(wait_until(PATIENCE, || blog
        .events_of("CommentUpdated")
        .len()
        == 21));
}

#[test]
fn a_missing_archive_is_refused() {
    let blog = Blog::new();
    let run = blog.run(&["rebuild", "query", "--archive", "/nonexistent/archive"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("/nonexistent/archive"), "{run:?}");
    assert!(run.stderr.contains("not a directory"), "{run:?}");
}

/// A blog written by a version with one events stream for every service: this one reads none
/// of it, and says so instead of rebuilding an empty state over it.
#[test]
fn an_earlier_versions_log_is_pointed_at_and_not_rebuilt_over() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    let before = story(&blog);
    let shared = blog
        .keys()
        .shared_events(blogctl::keyspace::Partition::FIRST);
    let _: String = redis::cmd("XADD")
        .arg(&shared)
        .arg("*")
        .arg("type")
        .arg("PostCreated")
        .query(&mut blog.redis.connection())
        .unwrap();
    let run = blog.run(&["rebuild", "query"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains(&shared), "{run:?}");
    assert!(run.stderr.contains("Upgrading"), "{run:?}");
    assert_eq!(blog.view(), before);
    let check = blog.run(&["status", "--check"]);
    assert_eq!(check.code, 6, "{check:?}");
    assert!(
        check.stderr.contains(&format!(
            "{shared} holds 1 event written by an earlier blogctl"
        )),
        "{check:?}"
    );
    let status = blog.run(&["status"]);
    assert_eq!(status.code, 0, "{status:?}");
    assert!(status.stderr.contains("warning"), "{status:?}");
}

#[test]
fn a_last_archive_line_cut_short_is_ignored_but_a_bad_one_inside_is_refused() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    let before = story(&blog);
    let dir = tempfile::tempdir().unwrap();
    let torn = dir.path().join("torn");
    std::fs::create_dir(&torn).unwrap();
    std::fs::write(
        torn.join("posts.ndjson"),
        r#"{"id":"1-1","fields":{"type":"PostCr"#,
    )
    .unwrap();
    blog.ok(&["rebuild", "query", "--archive", torn.to_str().unwrap()]);
    assert_eq!(blog.view(), before);

    let broken = dir.path().join("broken");
    std::fs::create_dir(&broken).unwrap();
    std::fs::write(broken.join("comments.ndjson"), "not an entry\n{}\n").unwrap();
    let run = blog.run(&["rebuild", "query", "--archive", broken.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("line 1"), "{run:?}");
    assert_eq!(blog.view(), before, "a refused rebuild changed the view");
    // The refused rebuild was filling generation 2: nothing of it is left.
    let half_built = dump(&blog, &blog.generation("query", 2));
    assert!(
        half_built.is_empty(),
        "half-built keys left: {half_built:?}"
    );
}

#[test]
fn a_log_trimmed_to_nothing_is_rebuilt_from_its_archive() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    let before = story(&blog);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let archive = archive.to_str().unwrap();
    blog.ok(&["trim", "--archive", archive, "--yes"]);
    assert_eq!(blog.events_count(), 0, "trim left entries");
    // Without the archive the rebuilt view would miss every trimmed event: refused.
    let run = blog.run(&["rebuild", "query"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--archive"), "{run:?}");
    assert_eq!(blog.view(), before);

    let report: serde_json::Value =
        serde_json::from_str(&blog.ok(&["rebuild", "query", "--archive", archive, "--json"]))
            .unwrap();
    assert_eq!(report["from_archives"], report["events"]);
    assert_eq!(blog.view(), before);
    blog.ok(&["rebuild", "comments", "--archive", archive]);
    let post = before[0]["id"].as_str().unwrap();
    assert_eq!(blog.verdict(post, "after trim and rebuild"), "approved");
}

#[test]
fn a_rebuild_skips_entries_put_back_for_another_service() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    let before = story(&blog);
    assert_eq!(before.as_array().unwrap().len(), 4);
    let live = dump(&blog, &blog.generation("comments", 0));
    // An event `dead retry` put back for the query service only, on a stream comments follows
    // too (the posts'): the comments rebuild must not learn that post.
    let data = serde_json::json!({"id": uuid::Uuid::now_v7(), "title": "for query only"});
    let mut connection = blog.redis.connection();
    let _: String = redis::cmd("XADD")
        .arg(blog.events("posts"))
        .arg("*")
        .arg(&[
            ("type", "PostCreated"),
            ("version", "1"),
            ("request_id", "r"),
            ("producer", "posts"),
        ])
        .arg(&[("for_service", "query")])
        .arg("data")
        .arg(data.to_string())
        .query(&mut connection)
        .unwrap();
    blog.ok(&["rebuild", "comments"]);
    assert_eq!(
        dump(&blog, &blog.generation("comments", 1)),
        live,
        "the comments rebuild applied it"
    );
}

#[test]
fn a_log_of_events_that_change_nothing_rebuilds_to_an_empty_view() {
    let blog = Blog::new();
    let mut connection = blog.redis.connection();
    // Types query does not use, on the streams it follows; and verdicts, on moderation's
    // stream, which query does not follow at all (so they are not even read).
    for (producer, kind) in [
        ("posts", "PostPinned"),
        ("comments", "CommentPinned"),
        ("comments", "CommentLiked"),
        ("moderation", "CommentModerated"),
        ("moderation", "CommentModerated"),
    ] {
        let _: String = redis::cmd("XADD")
            .arg(blog.events(producer))
            .arg("*")
            .arg(&[
                ("type", kind),
                ("version", "1"),
                ("request_id", "x"),
                ("producer", "test"),
                ("data", "{}"),
            ])
            .query(&mut connection)
            .unwrap();
    }
    let report: serde_json::Value =
        serde_json::from_str(&blog.ok(&["rebuild", "query", "--json"])).unwrap();
    assert_eq!(report["events"], 3);
    assert_eq!(report["skipped"], 3);
    assert!(dump(&blog, &blog.generation("query", 1)).is_empty());
}

/// A generation an earlier version wrote has no index of its comments, or one begun at the
/// upgrade: the rebuild completes it from the log, and the old generation is dropped whole.
#[test]
fn a_comments_generation_written_without_an_index_is_dropped_whole() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    let view = story(&blog);
    // As an earlier version left it: no index. Then one comment by this version, indexed.
    let old = comments_generation(&blog, 0);
    let _: () = redis::cmd("DEL")
        .arg(old.comment_ids())
        .query(&mut blog.redis.connection())
        .unwrap();
    let post = view[0]["id"].as_str().unwrap();
    assert_eq!(blog.verdict(post, "after the upgrade"), "approved");
    let mut live = dump(&blog, old.base());
    assert_eq!(
        live.keys()
            .filter(|key| key.starts_with("comment:"))
            .count(),
        21
    );
    let begun: Vec<String> = redis::cmd("SMEMBERS")
        .arg(old.comment_ids())
        .query(&mut blog.redis.connection())
        .unwrap();
    assert_eq!(begun.len(), 1, "{begun:?}");

    rebuild_without_scanning(&blog, &["comments"]);
    let left = dump(&blog, old.base());
    assert!(left.is_empty(), "left of the old generation: {left:?}");
    // The new generation indexes every comment.
    let rebuilt = dump(&blog, &blog.generation("comments", 1));
    let mut ids: Vec<&str> = rebuilt
        .keys()
        .filter_map(|key| key.strip_prefix("comment:"))
        .collect();
    ids.sort();
    assert_eq!(rebuilt["comments"], format!("{ids:?}"));
    live.remove("comments");
    let mut rebuilt = rebuilt;
    rebuilt.remove("comments");
    assert_eq!(rebuilt, live);
}

/// When the counter of generation numbers is lost, the next number may be one a rebuild that
/// died was filling: what that rebuild wrote is dropped before the number is filled again,
/// through the comments state's index (never scanning), and by a scan for the view's keys (a
/// half-built view may hold comments of posts it does not list yet).
#[test]
fn a_generation_a_dead_rebuild_left_is_dropped_before_its_number_is_used_again() {
    let blog = Blog::new();
    let _services = blog.serve(&["all"]);
    let view = story(&blog);
    // Both states live in generation 1; a rebuild that died was filling generation 2.
    blog.ok(&["rebuild", "comments"]);
    blog.ok(&["rebuild", "query"]);
    let post = view[0]["id"].as_str().unwrap();
    let stranger = uuid::Uuid::now_v7().to_string();
    let mut connection = blog.redis.connection();
    // What the dead rebuild wrote: a comment of its own, a post, and of the view a post with
    // its comments and a comment on a real post.
    let dead = comments_generation(&blog, 2);
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(dead.comment(&stranger))
        .arg(&[("id", stranger.as_str()), ("status", "pending")])
        .cmd("SADD")
        .arg(dead.comment_ids())
        .arg(&stranger)
        .cmd("SADD")
        .arg(dead.known_posts())
        .arg(&stranger)
        .query(&mut connection)
        .unwrap();
    let dead_view = blog.keys().generation(Service::Query, Partition::FIRST, 2);
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg(dead_view.view_post(&stranger))
        .arg(&[("id", stranger.as_str()), ("title", "Half-built")])
        .cmd("ZADD")
        .arg(dead_view.view_posts())
        .arg(0)
        .arg(&stranger)
        .cmd("HSET")
        .arg(dead_view.view_comments(&stranger))
        .arg(&stranger)
        .arg("{}")
        .cmd("HSET")
        .arg(dead_view.view_comments(post))
        .arg(&stranger)
        .arg("{}")
        .query(&mut connection)
        .unwrap();
    for service in [Service::Comments, Service::Query] {
        let _: () = redis::cmd("DEL")
            .arg(blog.keys().generation_counter(service, Partition::FIRST))
            .query(&mut connection)
            .unwrap();
    }
    for target in ["comments", "query"] {
        let live = dump(&blog, &blog.generation(target, 1));
        let report = match target {
            "comments" => rebuild_without_scanning(&blog, &[target, "--json"]),
            _ => blog.ok(&["rebuild", target, "--json"]),
        };
        let report: serde_json::Value = serde_json::from_str(&report).unwrap();
        assert_eq!(report["generation"], 2);
        assert_eq!(
            dump(&blog, &blog.generation(target, 2)),
            live,
            "{target}: the dead rebuild's keys are left"
        );
        assert!(dump(&blog, &blog.generation(target, 1)).is_empty());
    }
    assert_eq!(blog.view(), view);
}

/// The partition count of the partitioned tests below.
const PARTITIONS: u32 = 8;

/// The partition without posts in [`story_in_partitions`]: it is trimmed and rebuilt too.
const EMPTY: u32 = 6;

/// A request id that sends a new post to `partition` (its post id is drawn into it).
fn request_id_for(partition: u32, label: &str) -> String {
    let partitions = Partitions::new(PARTITIONS).unwrap();
    (0..)
        .map(|n| format!("{label}-{partition}-{n}"))
        .find(|id| partitions.of_request(id) == Partition(partition))
        .unwrap()
}

/// A post created in `partition`; its id.
fn post_in(blog: &Blog, partition: u32, title: &str) -> String {
    let request_id = request_id_for(partition, &title.replace(' ', "-"));
    blog.ok(&["post", "create", "--request-id", &request_id, title])
}

/// A blog of [`PARTITIONS`] partitions with a post in each but [`EMPTY`], each post with three
/// comments, one of them rejected; returns the view once settled, every group of every
/// partition caught up.
fn story_in_partitions(blog: &Blog) -> serde_json::Value {
    for partition in (0..PARTITIONS).filter(|&p| p != EMPTY) {
        let post = post_in(blog, partition, &format!("Post {partition}"));
        for text in ["first", "orange", "third"] {
            blog.ok(&["comment", "create", &post, text]);
        }
    }
    let view = blog.wait_for_view(PARTITIONS as usize - 1, 3 * (PARTITIONS as usize - 1));
    assert!(
        wait_until(PATIENCE, || settled_in_every_partition(blog)),
        "some group of some partition is behind"
    );
    view
}

/// Whether every group of every partition has read and acknowledged everything.
fn settled_in_every_partition(blog: &Blog) -> bool {
    let keys = blog.keys();
    let mut connection = blog.redis.connection();
    (0..PARTITIONS).all(|partition| {
        Service::ALL.into_iter().all(|service| {
            let (streams, inbox) = blogctl::services::streams(&keys, service, Partition(partition));
            streams.into_iter().chain(inbox).all(|stream| {
                let info: redis::streams::StreamInfoGroupsReply = redis::cmd("XINFO")
                    .arg("GROUPS")
                    .arg(&stream)
                    .query(&mut connection)
                    .unwrap();
                info.groups
                    .iter()
                    .any(|g| g.name == service.name() && g.pending == 0 && g.lag == Some(0))
            })
        })
    })
}

/// The events stream of `producer` in `partition`.
fn events_in(blog: &Blog, producer: &str, partition: u32) -> String {
    blog.keys().events(
        crate::support::service_named(producer),
        Partition(partition),
    )
}

/// Every events stream of every partition with its entries' ids.
fn every_stream(blog: &Blog) -> BTreeMap<String, Vec<String>> {
    (0..PARTITIONS)
        .flat_map(|partition| {
            crate::support::PRODUCERS.map(|producer| events_in(blog, producer, partition))
        })
        .map(|stream| {
            let ids = blog
                .entries(&stream)
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            (stream, ids)
        })
        .collect()
}

/// The base of generation `number` of `service`'s state in `partition`.
fn generation_in(blog: &Blog, service: Service, partition: u32, number: u64) -> String {
    blog.keys()
        .generation(service, Partition(partition), number)
        .base()
        .to_owned()
}

/// Each partition's live generation of `service`, as its pointer names it (missing: 0, as the
/// comments service's pointer is until its first rebuild).
fn pointers(blog: &Blog, service: Service) -> Vec<u64> {
    (0..PARTITIONS)
        .map(|partition| {
            let pointer: Option<u64> = redis::cmd("GET")
                .arg(
                    blog.keys()
                        .generation_pointer(service, Partition(partition)),
                )
                .query(&mut blog.redis.connection())
                .unwrap();
            pointer.unwrap_or(0)
        })
        .collect()
}

#[test]
fn both_rebuilds_switch_every_partition_to_a_copy_of_its_live_state() {
    let blog = Blog::new().with_partitions(PARTITIONS);
    let _services = blog.serve(&["all"]);
    let before = story_in_partitions(&blog);
    for (service, target) in [(Service::Query, "query"), (Service::Comments, "comments")] {
        let live: Vec<_> = (0..PARTITIONS)
            .map(|p| dump(&blog, &generation_in(&blog, service, p, 0)))
            .collect();
        assert!(live[EMPTY as usize].is_empty() && !live[0].is_empty());
        let report: serde_json::Value =
            serde_json::from_str(&blog.ok(&["rebuild", target, "--json"])).unwrap();
        assert_eq!(report["generation"], 1, "{report}");
        assert_eq!(
            report["generations"],
            serde_json::json!(vec![1; PARTITIONS as usize])
        );
        let followed: usize = (0..PARTITIONS)
            .map(|p| {
                blog.entries(&events_in(&blog, "posts", p)).len()
                    + blog.entries(&events_in(&blog, "comments", p)).len()
            })
            .sum();
        assert_eq!(report["events"], followed, "{report}");
        for partition in 0..PARTITIONS {
            let rebuilt = dump(&blog, &generation_in(&blog, service, partition, 1));
            assert_eq!(rebuilt, live[partition as usize], "{target} {partition}");
            assert!(dump(&blog, &generation_in(&blog, service, partition, 0)).is_empty());
        }
        assert_eq!(blog.view(), before, "after rebuild {target}");
    }
    let human = blog.ok(&["rebuild", "query"]);
    assert!(
        human.ends_with("now generation 2 in each of the 8 partitions"),
        "{human}"
    );
    // The services go on in the new generations, in every partition.
    let post = post_in(&blog, EMPTY, "Late");
    assert_eq!(blog.verdict(&post, "known after the rebuild"), "approved");
    blog.wait_for_view(PARTITIONS as usize, 3 * (PARTITIONS as usize - 1) + 1);
}

/// The ids of the entry lines of an archive file.
fn archived_ids(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter_map(|line| {
            let line: serde_json::Value = serde_json::from_str(line).unwrap();
            line["id"].as_str().map(str::to_owned)
        })
        .collect()
}

#[test]
fn trim_archives_every_partition_and_a_rebuild_reads_them_back() {
    let blog = Blog::new().with_partitions(PARTITIONS);
    let _services = blog.serve(&["all"]);
    story_in_partitions(&blog);
    let streams = every_stream(&blog);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let archive_arg = archive.to_str().unwrap();
    let out = blog.ok(&["trim", "--archive", archive_arg, "--yes", "--json"]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 3 * PARTITIONS as usize, "{out}");
    for partition in 0..PARTITIONS {
        for producer in crate::support::PRODUCERS {
            let stream = events_in(&blog, producer, partition);
            let line = lines
                .iter()
                .find(|l| l["stream"] == stream.as_str())
                .unwrap();
            let file = match partition {
                0 => archive.join(format!("{producer}.ndjson")),
                p => archive.join(format!("{producer}.{p}.ndjson")),
            };
            assert_eq!(line["archive"], file.to_str().unwrap(), "{line}");
            let had = &streams[&stream];
            assert_eq!(line["archived"], had.len(), "{line}");
            assert_eq!(line["removed"], had.len(), "{line}");
            assert!(blog.entries(&stream).is_empty(), "{stream} left");
            match had.is_empty() {
                true => assert!(!file.exists(), "{file:?} written for nothing"),
                false => assert_eq!(&archived_ids(&file), had, "{file:?}"),
            }
        }
    }
    assert!(streams[&events_in(&blog, "posts", EMPTY)].is_empty());
    assert!(!streams[&events_in(&blog, "posts", 3)].is_empty());
    // Every group goes on reading its stream, in every partition.
    let late = post_in(&blog, EMPTY, "Late");
    assert_eq!(blog.verdict(&late, "after the trim"), "approved");
    let view = blog.wait_for_view(PARTITIONS as usize, 3 * (PARTITIONS as usize - 1) + 1);

    // Without the archives, refused before any partition is switched.
    let run = blog.run(&["rebuild", "query"]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("--archive"), "{run:?}");
    assert_eq!(
        pointers(&blog, Service::Query),
        vec![0; PARTITIONS as usize]
    );
    let report: serde_json::Value =
        serde_json::from_str(&blog.ok(&["rebuild", "query", "--archive", archive_arg, "--json"]))
            .unwrap();
    let archived: usize = streams
        .iter()
        .filter(|(stream, _)| !stream.contains(":moderation:"))
        .map(|(_, ids)| ids.len())
        .sum();
    assert_eq!(report["from_archives"], archived, "{report}");
    // The refused rebuild took no generation number: it stopped before any partition began.
    assert_eq!(
        report["generations"],
        serde_json::json!(vec![1; PARTITIONS as usize])
    );
    assert_eq!(blog.view(), view);
    blog.ok(&["rebuild", "comments", "--archive", archive_arg]);
    // The rebuilt comments state knows every post, the trimmed ones included.
    let post = view[3]["id"].as_str().unwrap();
    assert_eq!(blog.verdict(post, "after trim and rebuild"), "approved");
}

#[test]
fn a_refused_trim_touches_nothing_in_any_partition() {
    let blog = Blog::new().with_partitions(PARTITIONS);
    let services = blog.serve(&["all"]);
    story_in_partitions(&blog);
    assert_eq!(services.terminate().0, 0);
    let before = every_stream(&blog);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let archive_arg = archive.to_str().unwrap();
    let trim = || blog.run(&["trim", "--archive", archive_arg, "--yes"]);
    let mut connection = blog.redis.connection();

    // A rebuild running in partition 3.
    let lock = blog.keys().rebuild_lock(Service::Comments, Partition(3));
    let _: () = redis::cmd("SET")
        .arg(&lock)
        .arg("someone")
        .query(&mut connection)
        .unwrap();
    let run = trim();
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains(&lock), "{run:?}");
    assert!(!archive.exists(), "a refused trim wrote {archive:?}");
    assert_eq!(every_stream(&blog), before);
    let _: () = redis::cmd("DEL").arg(&lock).query(&mut connection).unwrap();

    // Something else where partition 5's archive of the comments' stream goes.
    std::fs::create_dir(&archive).unwrap();
    let notes = archive.join("comments.5.ndjson");
    std::fs::write(&notes, "my notes\n").unwrap();
    let run = trim();
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains("not a blogctl archive"), "{run:?}");
    assert!(run.stderr.contains("comments.5.ndjson"), "{run:?}");
    assert_eq!(std::fs::read_to_string(&notes).unwrap(), "my notes\n");
    assert_eq!(std::fs::read_dir(&archive).unwrap().count(), 1);
    assert_eq!(every_stream(&blog), before);
    std::fs::remove_file(&notes).unwrap();

    // A group missing in the last partition.
    let stream = events_in(&blog, "posts", PARTITIONS - 1);
    let _: () = redis::cmd("XGROUP")
        .arg("DESTROY")
        .arg(&stream)
        .arg("query")
        .query(&mut connection)
        .unwrap();
    let run = trim();
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains(&stream), "{run:?}");
    assert!(run.stderr.contains("query is missing"), "{run:?}");
    assert_eq!(std::fs::read_dir(&archive).unwrap().count(), 0);
    assert_eq!(every_stream(&blog), before);
}

/// A rebuild that fails in one partition leaves those before it switched and the others as
/// they were, every partition whole; run again, it rebuilds them all.
#[test]
fn a_rebuild_stopped_midway_leaves_every_partition_whole_and_runs_again() {
    let blog = Blog::new().with_partitions(PARTITIONS);
    let _services = blog.serve(&["all"]);
    let before = story_in_partitions(&blog);
    // In the way of partition 5's rebuilt view: a key of another type where its list of posts
    // goes.
    let in_the_way = blog
        .keys()
        .generation(Service::Query, Partition(5), 1)
        .view_posts();
    let _: () = redis::cmd("SET")
        .arg(&in_the_way)
        .arg("not a sorted set")
        .query(&mut blog.redis.connection())
        .unwrap();
    let run = blog.run(&["rebuild", "query"]);
    assert_ne!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .contains("stopped at partition 5 (of 0 to 7): partitions 0 to 4 were switched"),
        "{run:?}"
    );
    assert!(
        run.stderr.contains("safe to run the rebuild again"),
        "{run:?}"
    );
    let switched: Vec<u64> = (0..PARTITIONS).map(|p| u64::from(p < 5)).collect();
    assert_eq!(pointers(&blog, Service::Query), switched);
    assert!(dump(&blog, &generation_in(&blog, Service::Query, 5, 1)).is_empty());
    assert_eq!(blog.view(), before);

    let report: serde_json::Value =
        serde_json::from_str(&blog.ok(&["rebuild", "query", "--json"])).unwrap();
    assert_eq!(
        report["generations"],
        serde_json::json!([2, 2, 2, 2, 2, 2, 1, 1])
    );
    assert_eq!(report["generation"], 2);
    assert_eq!(blog.view(), before);
    let human = blog.ok(&["rebuild", "query"]);
    assert!(
        human.ends_with("now generations 2 to 3 (by partition: 3, 3, 3, 3, 3, 3, 2, 2)"),
        "{human}"
    );
}

/// On a Redis Cluster the partitions live in slots of different masters: every step of a trim
/// and of a rebuild stays in one (a script naming keys of two slots would fail).
#[test]
fn trim_and_rebuild_work_across_partitions_on_a_redis_cluster() {
    let blog = crate::cluster::blog_on_cluster(&[]).with_partitions(4);
    let _services = blog.serve(&["all"]);
    for partition in 0..4 {
        let post = post_in(&blog, partition, &format!("Post {partition}"));
        blog.ok(&["comment", "create", &post, "orange"]);
    }
    let view = blog.wait_for_view(4, 4);
    let dir = tempfile::tempdir().unwrap();
    let archive = dir.path().join("archive");
    let archive_arg = archive.to_str().unwrap();
    let out = blog.ok(&["trim", "--archive", archive_arg, "--yes", "--json"]);
    assert_eq!(out.lines().count(), 12, "{out}");
    // Each post's `PostCreated` was read by both its groups before its comment was accepted.
    for file in [
        "posts.ndjson",
        "posts.1.ndjson",
        "posts.2.ndjson",
        "posts.3.ndjson",
    ] {
        assert_eq!(archived_ids(&archive.join(file)).len(), 1, "{file}");
    }
    // A rebuild that fails in partition 3 drops what it wrote there, on that partition's master
    // (whose keys a scan of another node would not find).
    let in_the_way = blog
        .keys()
        .generation(Service::Query, Partition(3), 1)
        .view_posts();
    let nodes: Vec<&crate::support::RedisServer> =
        std::iter::once(&blog.redis).chain(&blog.others).collect();
    let placed = nodes.iter().any(|node| {
        redis::cmd("SET")
            .arg(&in_the_way)
            .arg("not a sorted set")
            .query::<()>(&mut node.connection())
            .is_ok()
    });
    assert!(placed, "no node took {in_the_way}");
    let run = blog.run(&["rebuild", "query", "--archive", archive_arg]);
    assert!(
        run.code != 0 && run.stderr.contains("stopped at partition 3"),
        "{run:?}"
    );
    let pattern = format!("{}*", in_the_way.trim_end_matches("posts"));
    for node in &nodes {
        let left: Vec<String> = redis::cmd("KEYS")
            .arg(&pattern)
            .query(&mut node.connection())
            .unwrap();
        assert!(left.is_empty(), "{left:?} left on port {}", node.port);
    }
    for target in ["query", "comments"] {
        let report: serde_json::Value = serde_json::from_str(&blog.ok(&[
            "rebuild",
            target,
            "--archive",
            archive_arg,
            "--json",
        ]))
        .unwrap();
        // query: the second rebuild (the first stopped at partition 3, after using its number).
        let generation = if target == "query" { 2 } else { 1 };
        assert_eq!(
            report["generations"],
            serde_json::json!(vec![generation; 4])
        );
        assert!(report["from_archives"].as_u64().unwrap() >= 4, "{report}");
    }
    assert_eq!(blog.view(), view);
    let post = view[2]["id"].as_str().unwrap();
    assert_eq!(blog.verdict(post, "after trim and rebuild"), "approved");
}
