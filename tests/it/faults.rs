//! The fault suite: real service processes killed at random, a Redis restart, poison entries,
//! under a client load; at the end nothing is lost and nothing doubled.
//!
//! Replay a run with `BLOGCTL_FAULT_SEED=<seed>`; soak longer with `BLOGCTL_FAULT_SCALE=<n>`
//! (n times the default 200 posts and 2,000 comments).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::{Blog, RedisServer, Rng, Service, wait_until};

const COMMENTS_PER_POST: usize = 10;
const WORKERS: usize = 4;

/// One service process the chaos may kill: its `serve` arguments and consumer name.
struct Slot {
    service: &'static str,
    instance: &'static str,
    generation: u32,
    process: Service,
}

impl Slot {
    fn start(blog: &Blog, service: &'static str, instance: &'static str, generation: u32) -> Slot {
        let consumer = format!("{service}-{instance}-{generation}");
        let process = blog.serve(&[service, "--consumer", &consumer, "--claim-idle", "1"]);
        Slot {
            service,
            instance,
            generation,
            process,
        }
    }
}

/// Creates something through the real binary, retrying with the same request id until it is
/// acknowledged; returns the printed id.
fn create(blog: &Blog, args: &[&str], request_id: &str) -> String {
    let mut full = vec!["--timeout", "3", "--request-id", request_id];
    full.splice(0..0, args.iter().copied());
    // `post create --timeout ...`: global flags may follow the subcommand.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let run = blog.run(&full);
        match run.code {
            0 => return run.stdout.trim().to_owned(),
            2 | 3 => panic!("blogctl {full:?} was refused: {run:?}"),
            _ => assert!(
                Instant::now() < deadline,
                "blogctl {full:?} never succeeded: {run:?}"
            ),
        }
        // Redis restarting or a service down: try again shortly, same request id.
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn nothing_lost_nothing_doubled_under_kills_restarts_and_poison() {
    let seed: u64 = std::env::var("BLOGCTL_FAULT_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let scale: usize = std::env::var("BLOGCTL_FAULT_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let posts = 200 * scale;
    println!("fault suite: seed {seed} (replay with BLOGCTL_FAULT_SEED={seed}), {posts} posts");

    // Redis is killed (SIGKILL) once, so it runs with `appendfsync always`: with `everysec` a
    // crashed Redis may lose the last second or two of acknowledged writes (see the README).
    let blog = Blog::on(RedisServer::start_with(&[
        "--appendonly",
        "yes",
        "--appendfsync",
        "always",
    ]));
    let slots: Mutex<Vec<Slot>> = Mutex::new(
        [
            ("posts", "a"),
            ("comments", "a"),
            ("comments", "b"),
            ("moderation", "a"),
            ("query", "a"),
            ("query", "b"),
        ]
        .into_iter()
        .map(|(service, instance)| Slot::start(&blog, service, instance, 0))
        .collect(),
    );

    let done = AtomicBool::new(false);
    let progress = AtomicUsize::new(0);
    let kills = AtomicUsize::new(0);
    let poison: Mutex<Vec<(String, usize)>> = Mutex::new(Vec::new());
    let post_ids: Mutex<HashMap<usize, String>> = Mutex::new(HashMap::new());
    let comment_ids: Mutex<HashMap<String, (String, bool)>> = Mutex::new(HashMap::new());
    let total = posts + posts * COMMENTS_PER_POST;

    std::thread::scope(|scope| {
        // The chaos: kill a random service every 100-400 ms, restart it (under the same consumer
        // name, or a new one so its entries must be taken over), restart Redis once halfway,
        // and slip poison onto the stream.
        scope.spawn(|| {
            let mut rng = Rng::new(seed);
            let mut restarted_redis = false;
            while !done.load(Ordering::SeqCst) {
                let pause = Duration::from_millis(100 + rng.below(300));
                let until = Instant::now() + pause;
                wait_until(pause, || {
                    done.load(Ordering::SeqCst) || Instant::now() >= until
                });
                let mut slots = slots.lock().unwrap();
                let index = rng.below(slots.len() as u64) as usize;
                let slot = slots.remove(index);
                let generation = slot.generation + rng.below(2) as u32;
                slot.process.kill();
                kills.fetch_add(1, Ordering::SeqCst);
                slots.insert(
                    index,
                    Slot::start(&blog, slot.service, slot.instance, generation),
                );
                drop(slots);
                if !restarted_redis && progress.load(Ordering::SeqCst) * 2 >= total {
                    blog.redis.restart();
                    restarted_redis = true;
                    println!(
                        "restarted redis-server after {} writes",
                        progress.load(Ordering::SeqCst)
                    );
                }
                if rng.below(3) == 0
                    && let Some(poisoned) = inject_poison(&blog, &mut rng)
                {
                    poison.lock().unwrap().push(poisoned);
                }
            }
        });

        // The load: posts, then comments on them, from several client workers at once.
        let workers: Vec<_> = (0..WORKERS)
            .map(|worker| {
                let (blog, progress, post_ids, comment_ids) =
                    (&blog, &progress, &post_ids, &comment_ids);
                scope.spawn(move || {
                    for n in (worker..posts).step_by(WORKERS) {
                        let id = create(
                            blog,
                            &["post", "create", &format!("post {n}")],
                            &format!("p-{n}"),
                        );
                        post_ids.lock().unwrap().insert(n, id);
                        progress.fetch_add(1, Ordering::SeqCst);
                    }
                    for n in (worker..posts).step_by(WORKERS) {
                        let post = post_ids.lock().unwrap()[&n].clone();
                        for m in 0..COMMENTS_PER_POST {
                            let index = n * COMMENTS_PER_POST + m;
                            let orange = index.is_multiple_of(10);
                            let text = if orange {
                                format!("c {index} orange")
                            } else {
                                format!("c {index}")
                            };
                            let id = create(
                                blog,
                                &["comment", "create", &post, &text],
                                &format!("c-{index}"),
                            );
                            comment_ids
                                .lock()
                                .unwrap()
                                .insert(id, (post.clone(), orange));
                            progress.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker.join().unwrap();
        }
        done.store(true, Ordering::SeqCst);
    });
    let kills = kills.load(Ordering::SeqCst);
    println!("fault suite: seed {seed}, {kills} kills, {total} writes acknowledged");
    assert!(kills > 0, "the chaos never struck");

    // Every acknowledged write is in the view exactly once, with the right final status.
    let view =
        blog.wait_for_view_within(posts, posts * COMMENTS_PER_POST, Duration::from_secs(120));
    let post_ids: HashSet<String> = post_ids.into_inner().unwrap().into_values().collect();
    let comment_ids = comment_ids.into_inner().unwrap();
    let mut seen_comments = HashSet::new();
    let view_posts: HashSet<String> = view
        .as_array()
        .unwrap()
        .iter()
        .map(|post| post["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        view_posts, post_ids,
        "posts in the view differ from the acknowledged ones (seed {seed})"
    );
    for post in view.as_array().unwrap() {
        for comment in post["comments"].as_array().unwrap() {
            let id = comment["id"].as_str().unwrap().to_owned();
            let (owner, orange) = comment_ids
                .get(&id)
                .unwrap_or_else(|| panic!("unacknowledged comment {id}"));
            assert_eq!(owner, post["id"].as_str().unwrap());
            assert_eq!(
                comment["status"],
                if *orange { "rejected" } else { "approved" },
                "seed {seed}"
            );
            assert!(
                seen_comments.insert(id),
                "comment twice in the view (seed {seed})"
            );
        }
    }
    assert_eq!(seen_comments.len(), comment_ids.len());

    // Exactly one event of each kind per post and comment.
    let count_ids = |kind: &str| -> HashMap<String, usize> {
        let mut counts = HashMap::new();
        for data in blog.events_of(kind) {
            *counts
                .entry(data["id"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
        counts
    };
    for (kind, expected) in [
        ("PostCreated", posts),
        ("CommentCreated", comment_ids.len()),
        ("CommentUpdated", comment_ids.len()),
    ] {
        let counts = count_ids(kind);
        assert_eq!(
            counts.len(),
            expected,
            "{kind}: wrong number of distinct ids (seed {seed})"
        );
        assert!(
            counts.values().all(|&n| n == 1),
            "{kind} doubled (seed {seed})"
        );
    }

    // Every poison entry is dead-lettered by each service that uses its type, and nothing else
    // is; no group is left with pending entries.
    let poison = poison.into_inner().unwrap();
    let expected_dead: usize = poison.iter().map(|(_, readers)| readers).sum();
    let events = blog.key("events");
    let settled = wait_until(Duration::from_secs(60), || {
        blog.entries(&blog.key("dead")).len() >= expected_dead
            && ["comments", "moderation", "query"]
                .iter()
                .all(|group| blog.pending(&events, group) == 0)
    });
    let dead = blog.entries(&blog.key("dead"));
    assert!(
        settled,
        "dead letters {} of {expected_dead}, or entries still pending (seed {seed})",
        dead.len()
    );
    let dead_ids: Vec<String> = dead
        .iter()
        .map(|(_, fields)| fields.iter().find(|(k, _)| k == "id").unwrap().1.clone())
        .collect();
    let mut expected: Vec<String> = poison
        .iter()
        .flat_map(|(id, readers)| vec![id.clone(); *readers])
        .collect();
    let mut dead_sorted = dead_ids.clone();
    expected.sort();
    dead_sorted.sort();
    assert_eq!(
        dead_sorted, expected,
        "dead letters are not exactly the poison (seed {seed})"
    );
    for service in ["posts", "comments"] {
        let inbox = format!("{}inbox", blog.key(service));
        assert_eq!(
            blog.pending(&inbox, service),
            0,
            "{service} inbox has pending requests (seed {seed})"
        );
    }
    println!(
        "fault suite passed: seed {seed}, {kills} kills, {} poison entries",
        poison.len()
    );
}

/// An entry's fields, as XADD takes them.
type Fields = &'static [(&'static str, &'static [u8])];

/// Adds a malformed entry (or, one time in four, an entry of an unknown type, which is skipped
/// and not dead-lettered); returns the id of a malformed one with the number of services that
/// use its type (each dead-letters it). None when Redis is down.
fn inject_poison(blog: &Blog, rng: &mut Rng) -> Option<(String, usize)> {
    let mut connection = redis::Client::open(blog.redis.url())
        .ok()?
        .get_connection()
        .ok()?;
    // Readers: PostCreated is used by comments and query, CommentCreated by moderation and
    // query, CommentUpdated by query.
    let bodies: [(Fields, usize); 4] = [
        (
            &[
                ("type", b"PostCreated"),
                ("version", b"1"),
                ("request_id", b"x"),
                ("data", b"{oops"),
            ],
            2,
        ),
        (
            &[
                ("type", b"CommentCreated"),
                ("version", b"1"),
                ("request_id", b"x"),
            ],
            2,
        ),
        (
            &[
                ("type", b"CommentUpdated"),
                ("version", b"1"),
                ("request_id", b"x"),
                ("data", b"\xc3\x28"),
            ],
            1,
        ),
        (
            &[
                ("type", b"PostCreated"),
                ("version", b"1"),
                ("request_id", b"x"),
                ("data", br#"{"id":[],"title":1}"#),
            ],
            2,
        ),
    ];
    let unknown = rng.below(4) == 0;
    let mut command = redis::cmd("XADD");
    command.arg(blog.key("events")).arg("*");
    if unknown {
        command.arg(&[
            ("type", "PostPinned"),
            ("version", "1"),
            ("request_id", "x"),
            ("data", "{}"),
        ]);
        let _: String = command.query(&mut connection).ok()?;
        return None;
    }
    let (body, readers) = bodies[rng.below(4) as usize];
    for (name, value) in body {
        command.arg(*name).arg(*value);
    }
    let id: String = command.query(&mut connection).ok()?;
    Some((id, readers))
}
