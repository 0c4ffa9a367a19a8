//! The fault suite: real service processes killed (SIGKILL) or paused (SIGSTOP) at random, a
//! Redis restart, poison entries, under a client load, on a namespace of 8 partitions; at the
//! end nothing is lost and nothing doubled, and entries were taken over from consumers that
//! went silent.
//!
//! Replay a run with `BLOGCTL_FAULT_SEED=<seed>`; soak longer with `BLOGCTL_FAULT_SCALE=<n>`
//! (n times the default 200 posts and 2,000 comments).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use blogctl::keyspace::Partition;

use crate::support::{Blog, PATIENCE, PRODUCERS, Rng, Service, service_named, signal, wait_until};

/// The namespace's partitions: every serve and client command is given this count.
const PARTITIONS: u32 = 8;
const COMMENTS_PER_POST: usize = 10;
const WORKERS: usize = 4;
/// The services' `--claim-idle`, in seconds: the default. A paused or killed process renews no
/// liveness key, so its entries are taken over once the key expires (about 3 s), long before
/// this; the suite measures how long after the pause that happens.
const CLAIM_IDLE: &str = "30";
/// The longest a paused process's entries may wait for a take-over.
const TAKE_OVER_WITHIN: Duration = Duration::from_secs(8);
/// The services with two instances: a paused one's entries can be taken over by the other.
const TWICE: [&str; 2] = ["comments", "query"];
/// Log line of a consumer that took entries over from another (see `bus::take_over_stuck`).
const TOOK_OVER: &str = "took over entries";

/// One service process the chaos may kill or pause: its `serve` arguments and consumer name.
struct Slot {
    service: &'static str,
    instance: &'static str,
    generation: u32,
    consumer: String,
    process: Service,
}

impl Slot {
    fn start(blog: &Blog, service: &'static str, instance: &'static str, generation: u32) -> Slot {
        let consumer = format!("{service}-{instance}-{generation}");
        let process = blog.serve(&[service, "--consumer", &consumer, "--claim-idle", CLAIM_IDLE]);
        Slot {
            service,
            instance,
            generation,
            consumer,
            process,
        }
    }

    /// Take-overs this process logged so far.
    fn take_overs(&self) -> usize {
        self.process.log().matches(TOOK_OVER).count()
    }

    /// The streams this slot's service reads with its group, in every partition.
    fn streams(&self, blog: &Blog) -> Vec<String> {
        blog.groups()
            .into_iter()
            .filter(|(_, group)| *group == self.service)
            .map(|(stream, _)| stream)
            .collect()
    }

    /// Entries pending with this slot's consumer on `streams`, asked through `connection` (kept
    /// across polls: on a Cluster, opening one connects to every node). A stream the service
    /// has not made its group on yet holds none for it: under load, with instances killed
    /// and started in turn, a partition's consumers may take a while to get there.
    fn held(&self, streams: &[String], connection: &mut dyn redis::ConnectionLike) -> usize {
        streams
            .iter()
            .map(|stream| {
                let pending: redis::RedisResult<Vec<redis::Value>> = redis::cmd("XPENDING")
                    .arg(&[stream, self.service, "-", "+", "1000", &self.consumer])
                    .query(connection);
                match pending {
                    Ok(pending) => pending.len(),
                    Err(error) if error.code() == Some("NOGROUP") => 0,
                    Err(error) => panic!("XPENDING {stream} {}: {error}", self.service),
                }
            })
            .sum()
    }

    /// Pauses the process (SIGSTOP) at a moment it holds entries, keeps it paused until the
    /// other instance has taken them over (past `--claim-idle`), then wakes it (SIGCONT): what
    /// it had in hand must then have no second effect. Ok(None) when it was never caught
    /// holding entries (it was between batches each time), else Ok(how long after the pause
    /// they were taken over); Err when they were not taken over in [`TAKE_OVER_WITHIN`].
    fn pause_until_taken_over(&self, blog: &Blog) -> Result<Option<Duration>, String> {
        let pid = self.process.pid();
        let streams = self.streams(blog);
        let mut connection = blog.connection();
        for _ in 0..50 {
            signal(pid, "STOP");
            let paused = Instant::now();
            if self.held(&streams, &mut *connection) > 0 {
                // Paused, it cannot acknowledge them: they leave it only by a take-over.
                let taken = wait_until(TAKE_OVER_WITHIN, || {
                    self.held(&streams, &mut *connection) == 0
                });
                let delay = paused.elapsed();
                let pending: Vec<(String, redis::Value)> = streams
                    .iter()
                    .map(|stream| {
                        let pending = redis::cmd("XPENDING")
                            .arg(&[stream, self.service, "-", "+", "20"])
                            .query(&mut *connection)
                            .unwrap_or_else(|error| redis::Value::SimpleString(error.to_string()));
                        (stream.clone(), pending)
                    })
                    .filter(|(_, pending)| *pending != redis::Value::Array(Vec::new()))
                    .collect();
                signal(pid, "CONT");
                if !taken {
                    return Err(format!(
                        "entries of paused {} not taken over within {TAKE_OVER_WITHIN:?}: \
                         {pending:?}",
                        self.consumer
                    ));
                }
                return Ok(Some(delay));
            }
            signal(pid, "CONT");
        }
        Ok(None)
    }
}

/// What the chaos did.
#[derive(Debug, Default)]
struct Tally {
    kills: usize,
    /// Kills followed by a restart under a new consumer name.
    renamed: usize,
    pauses: usize,
    /// Pauses that caught a process holding entries, which the other instance then took over.
    paused_take_overs: usize,
    /// How long after each such pause its entries were taken over.
    take_over_delays: Vec<Duration>,
    /// "took over entries" lines in the logs of the processes killed.
    logged_take_overs: usize,
    redis_restarts: usize,
    /// The Redis restarted, with the partitions it serves (on a Cluster, some; else all).
    restarted: String,
    poison: Vec<(String, usize)>,
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
            // Only "Redis unreachable" and "service timed out" mean try again; anything else
            // (1: an unexpected error) is a failure, not something to retry for two minutes.
            4 | 5 => assert!(
                Instant::now() < deadline,
                "blogctl {full:?} never succeeded: {run:?}"
            ),
            _ => panic!("blogctl {full:?} failed: {run:?}"),
        }
        // Redis restarting or a service down or paused: try again shortly, same request id.
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn nothing_lost_nothing_doubled_under_kills_pauses_restarts_and_poison() {
    // Redis is killed (SIGKILL) once, so it runs with `appendfsync always`: with `everysec` a
    // crashed Redis may lose the last second or two of acknowledged writes (see the README).
    // Every process runs as its own Redis user (`blogctl acl`).
    fault_suite(
        Blog::with_users_and(&["--appendonly", "yes", "--appendfsync", "always"])
            .with_partitions(PARTITIONS),
    );
}

/// The same on a 3-master Redis Cluster, with the same users; the partitions spread over the
/// masters, and the one Redis the chaos kills is a master serving at least one of them (the
/// seed picks a partition, its master is killed).
#[test]
fn nothing_lost_nothing_doubled_on_a_redis_cluster() {
    fault_suite(
        Blog::with_users_on(
            &["--appendonly", "yes", "--appendfsync", "always"],
            crate::cluster::blog_on_cluster,
        )
        .with_partitions(PARTITIONS),
    );
}

fn fault_suite(blog: Blog) {
    let started = Instant::now();
    let seed = seed();
    let load = Load::new(200 * scale());
    announce(&blog, seed, load.posts);
    let slots = Mutex::new(start_services(&blog));
    let tally = std::thread::scope(|scope| {
        let chaos = scope.spawn(|| chaos(&blog, &slots, &load, seed));
        let workers: Vec<_> = (0..WORKERS)
            .map(|worker| {
                let (blog, load) = (&blog, &load);
                scope.spawn(move || write_load(blog, load, worker))
            })
            .collect();
        // Every worker is joined before the chaos is told to stop, so a failing worker does
        // not leave the chaos running (and the scope waiting for it) forever.
        let joined: Vec<_> = workers.into_iter().map(|worker| worker.join()).collect();
        load.done.store(true, Ordering::SeqCst);
        for result in joined {
            if let Err(panic) = result {
                std::panic::resume_unwind(panic);
            }
        }
        chaos.join().unwrap()
    });
    let slots = slots.into_inner().unwrap();
    let logged = report_the_chaos(&tally, &slots, seed, load.total(), started);
    check_the_chaos_struck(&tally, logged, seed);

    let posts = load.posts;
    let post_ids: HashSet<String> = load.post_ids.into_inner().unwrap().into_values().collect();
    let comment_ids = load.comment_ids.into_inner().unwrap();
    check_the_view(&blog, posts, &post_ids, &comment_ids, seed);
    check_posts_in_every_partition(&blog, seed);
    check_one_event_of_each_kind(&blog, &post_ids, &comment_ids, seed);
    check_dead_letters_are_the_poison(&blog, &tally.poison, seed);
    check_no_request_pending(&blog, seed);
    check_tries_forgotten(&blog, seed);
    check_no_acl_refusal(&blog);

    println!(
        "fault suite passed: seed {seed}, in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// The seed of the run's randomness: `BLOGCTL_FAULT_SEED`, else the clock.
fn seed() -> u64 {
    std::env::var("BLOGCTL_FAULT_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// How many times the default load to write: `BLOGCTL_FAULT_SCALE`, else 1.
fn scale() -> usize {
    std::env::var("BLOGCTL_FAULT_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1)
}

/// Prints the seed, the load and where the partitions live (checking that on a Cluster they
/// spread over the masters).
fn announce(blog: &Blog, seed: u64, posts: usize) {
    let layout = partitions_by_node(blog);
    // On a Cluster the partitions spread over the masters, so killing one leaves others serving.
    assert!(
        blog.others.is_empty() || layout.len() > 1,
        "every partition on one master: {layout:?}"
    );
    println!(
        "fault suite: seed {seed} (replay with BLOGCTL_FAULT_SEED={seed}), {posts} posts, \
         partitions by Redis: {}",
        layout
            .iter()
            .map(|(port, partitions)| format!("port {port}: {}", listed(partitions)))
            .collect::<Vec<_>>()
            .join("; ")
    );
}

/// One process of each service, two of those in [`TWICE`].
fn start_services(blog: &Blog) -> Vec<Slot> {
    [
        ("posts", "a"),
        ("comments", "a"),
        ("comments", "b"),
        ("moderation", "a"),
        ("query", "a"),
        ("query", "b"),
    ]
    .into_iter()
    .map(|(service, instance)| Slot::start(blog, service, instance, 0))
    .collect()
}

/// The client load, shared by its workers and watched by the chaos.
struct Load {
    posts: usize,
    /// Set once every worker is done: the chaos stops.
    done: AtomicBool,
    /// Writes acknowledged so far.
    progress: AtomicUsize,
    /// The id printed for each post, by its number.
    post_ids: Mutex<HashMap<usize, String>>,
    /// Each comment's post and whether it is to be rejected, by the comment's printed id.
    comment_ids: Mutex<HashMap<String, (String, bool)>>,
}

impl Load {
    fn new(posts: usize) -> Load {
        Load {
            posts,
            done: AtomicBool::new(false),
            progress: AtomicUsize::new(0),
            post_ids: Mutex::new(HashMap::new()),
            comment_ids: Mutex::new(HashMap::new()),
        }
    }

    /// Writes in all: the posts and their comments.
    fn total(&self) -> usize {
        self.posts + self.posts * COMMENTS_PER_POST
    }
}

/// One client worker's share of the load: posts, then comments on them (one in ten with a
/// word moderation rejects).
fn write_load(blog: &Blog, load: &Load, worker: usize) {
    for n in (worker..load.posts).step_by(WORKERS) {
        let id = create(
            blog,
            &["post", "create", &format!("post {n}")],
            &format!("p-{n}"),
        );
        load.post_ids.lock().unwrap().insert(n, id);
        load.progress.fetch_add(1, Ordering::SeqCst);
    }
    for n in (worker..load.posts).step_by(WORKERS) {
        let post = load.post_ids.lock().unwrap()[&n].clone();
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
            load.comment_ids
                .lock()
                .unwrap()
                .insert(id, (post.clone(), orange));
            load.progress.fetch_add(1, Ordering::SeqCst);
        }
    }
}

/// The chaos, every 100-400 ms until the load is done: kill a random service and restart it
/// (under the same consumer name, or a new one so its entries must be taken over), or pause an
/// instance of a service that runs two past --claim-idle; restart Redis once halfway; slip
/// poison onto the stream. Until one pause has led to a take-over, every turn is a pause, so
/// each run has one.
fn chaos(blog: &Blog, slots: &Mutex<Vec<Slot>>, load: &Load, seed: u64) -> Tally {
    let mut rng = Rng::new(seed);
    let mut tally = Tally::default();
    while !load.done.load(Ordering::SeqCst) {
        let pause = Duration::from_millis(100 + rng.below(300));
        let until = Instant::now() + pause;
        wait_until(pause, || {
            load.done.load(Ordering::SeqCst) || Instant::now() >= until
        });
        let mut slots = slots.lock().unwrap();
        let index = rng.below(slots.len() as u64) as usize;
        let wants_pause = tally.paused_take_overs == 0 || rng.below(15) == 0;
        if wants_pause && load.progress.load(Ordering::SeqCst) > 0 {
            pause_an_instance(blog, &slots, &mut rng, &mut tally, seed);
        } else {
            kill_and_restart(blog, &mut slots, index, &mut rng, &mut tally);
        }
        if tally.redis_restarts == 0 && load.progress.load(Ordering::SeqCst) * 2 >= load.total() {
            restart_redis(blog, &slots, &mut rng, &mut tally, seed);
            println!(
                "restarted {} after {} writes",
                tally.restarted,
                load.progress.load(Ordering::SeqCst)
            );
        }
        drop(slots);
        if rng.below(3) == 0
            && let Some(poisoned) = inject_poison(blog, &mut rng)
        {
            tally.poison.push(poisoned);
        }
    }
    tally
}

/// Pauses a random instance of a service that runs two until the other took its entries over
/// (see [`Slot::pause_until_taken_over`]); panics, with the logs of both, when it did not.
fn pause_an_instance(blog: &Blog, slots: &[Slot], rng: &mut Rng, tally: &mut Tally, seed: u64) {
    let twice: Vec<usize> = (0..slots.len())
        .filter(|&i| TWICE.contains(&slots[i].service))
        .collect();
    let slot = &slots[twice[rng.below(twice.len() as u64) as usize]];
    tally.pauses += 1;
    match slot.pause_until_taken_over(blog) {
        Ok(Some(delay)) => {
            tally.paused_take_overs += 1;
            tally.take_over_delays.push(delay);
        }
        Ok(None) => {}
        Err(stuck) => {
            let logs: Vec<String> = slots
                .iter()
                .filter(|other| other.service == slot.service)
                .map(|other| format!("{}:\n{}", other.consumer, other.process.log()))
                .collect();
            panic!("{stuck} (seed {seed}); logs:\n{}", logs.join("\n"));
        }
    }
}

/// Kills (SIGKILL) the process of slot `index` and starts its service again, under the same
/// consumer name or the next.
fn kill_and_restart(
    blog: &Blog,
    slots: &mut Vec<Slot>,
    index: usize,
    rng: &mut Rng,
    tally: &mut Tally,
) {
    let slot = slots.remove(index);
    let generation = slot.generation + rng.below(2) as u32;
    tally.logged_take_overs += slot.take_overs();
    slot.process.kill();
    tally.kills += 1;
    if generation != slot.generation {
        tally.renamed += 1;
    }
    slots.insert(
        index,
        Slot::start(blog, slot.service, slot.instance, generation),
    );
}

/// Restarts the Redis of a partition the seed picks, once every service process is serving.
fn restart_redis(blog: &Blog, slots: &[Slot], rng: &mut Rng, tally: &mut Tally, seed: u64) {
    // A service that cannot reach Redis when it starts exits (code 4, as documented), so
    // Redis goes down only once every process got through.
    let connected = wait_until(PATIENCE, || {
        slots
            .iter()
            .all(|slot| slot.process.log().contains("serving"))
    });
    assert!(connected, "a service never connected (seed {seed})");
    tally.restarted = restart_a_partitions_redis(blog, rng);
    tally.redis_restarts += 1;
}

/// Prints what the chaos did (shown, see .config/nextest.toml, whether the checks after pass
/// or not); returns the take-overs the processes logged.
fn report_the_chaos(
    tally: &Tally,
    slots: &[Slot],
    seed: u64,
    total: usize,
    started: Instant,
) -> usize {
    let logged = tally.logged_take_overs + slots.iter().map(Slot::take_overs).sum::<usize>();
    let mut delays = tally.take_over_delays.clone();
    delays.sort();
    let delays_text: Vec<String> = delays
        .iter()
        .map(|delay| format!("{:.2}s", delay.as_secs_f64()))
        .collect();
    println!(
        "fault suite: seed {seed}, {total} writes acknowledged, {} kills ({} restarted under a \
         new consumer name), {} pauses ({} taken over while paused, after {}; --claim-idle \
         {CLAIM_IDLE}), {logged} take-overs logged, {} Redis restart(s) ({}), {} poison \
         entries, load done in {:.1}s",
        tally.kills,
        tally.renamed,
        tally.pauses,
        tally.paused_take_overs,
        delays_text.join(", "),
        tally.redis_restarts,
        tally.restarted,
        tally.poison.len(),
        started.elapsed().as_secs_f64()
    );
    logged
}

/// The chaos killed, and entries were taken over from silent consumers: the chaos makes sure
/// of one at least.
fn check_the_chaos_struck(tally: &Tally, logged: usize, seed: u64) {
    assert!(tally.kills > 0, "the chaos never struck (seed {seed})");
    assert!(
        tally.paused_take_overs > 0,
        "no pause led to a take-over (seed {seed})"
    );
    assert!(logged > 0, "no take-over logged (seed {seed})");
}

/// Every acknowledged write is in the view exactly once, with the right final status.
fn check_the_view(
    blog: &Blog,
    posts: usize,
    post_ids: &HashSet<String>,
    comment_ids: &HashMap<String, (String, bool)>,
    seed: u64,
) {
    let view =
        blog.wait_for_view_within(posts, posts * COMMENTS_PER_POST, Duration::from_secs(120));
    let mut seen_comments = HashSet::new();
    let view_posts: HashSet<String> = view
        .as_array()
        .unwrap()
        .iter()
        .map(|post| post["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        &view_posts, post_ids,
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
}

/// The partition count reached the clients and the services: posts went to every partition.
fn check_posts_in_every_partition(blog: &Blog, seed: u64) {
    let empty: Vec<String> = blog
        .events_everywhere("posts")
        .into_iter()
        .filter(|stream| blog.entries(stream).is_empty())
        .collect();
    assert!(empty.is_empty(), "no post in {empty:?} (seed {seed})");
}

/// Exactly one event of each kind per acknowledged post and comment, by id (the poison
/// entries, which name no producer, are not counted).
fn check_one_event_of_each_kind(
    blog: &Blog,
    post_ids: &HashSet<String>,
    comment_ids: &HashMap<String, (String, bool)>,
    seed: u64,
) {
    let comment_set: HashSet<String> = comment_ids.keys().cloned().collect();
    for (kind, ids) in [
        ("PostCreated", post_ids),
        ("CommentCreated", &comment_set),
        ("CommentModerated", &comment_set),
        ("CommentUpdated", &comment_set),
    ] {
        let mut counts: HashMap<String, usize> = HashMap::new();
        for data in blog.events_of(kind) {
            *counts
                .entry(data["id"].as_str().unwrap().to_owned())
                .or_insert(0) += 1;
        }
        let doubled: Vec<_> = counts.iter().filter(|&(_, &n)| n > 1).collect();
        assert!(
            doubled.is_empty(),
            "{kind} doubled: {doubled:?} (seed {seed})"
        );
        let found: HashSet<String> = counts.into_keys().collect();
        assert!(
            &found == ids,
            "{kind}: {} ids, {} expected; missing {:?}, extra {:?} (seed {seed})",
            found.len(),
            ids.len(),
            ids.difference(&found).take(5).collect::<Vec<_>>(),
            found.difference(ids).take(5).collect::<Vec<_>>()
        );
    }
}

/// Every poison entry is dead-lettered by each service that uses its type, and nothing else
/// is; no group is left with pending entries (the inboxes' groups included), in any partition.
fn check_dead_letters_are_the_poison(blog: &Blog, poison: &[(String, usize)], seed: u64) {
    let expected_dead: usize = poison.iter().map(|(_, readers)| readers).sum();
    let settled = wait_until(Duration::from_secs(60), || {
        blog.dead_letters().len() >= expected_dead && blog.groups_with_pending().is_empty()
    });
    let dead = blog.dead_letters();
    assert!(
        settled,
        "dead letters {} of {expected_dead}, or entries still pending: {:?} (seed {seed})",
        dead.len(),
        blog.groups_with_pending()
    );
    // Entries are named by stream and id: the ids of different streams may coincide.
    let dead_ids: Vec<String> = dead
        .iter()
        .map(|(_, fields)| {
            let field = |name: &str| fields.iter().find(|(k, _)| k == name).unwrap().1.clone();
            format!("{} {}", field("stream"), field("id"))
        })
        .collect();
    let mut expected: Vec<String> = poison
        .iter()
        .flat_map(|(id, readers)| vec![id.clone(); *readers])
        .collect();
    let mut dead_sorted = dead_ids.clone();
    expected.sort();
    dead_sorted.sort();
    let reasons: Vec<String> = dead
        .iter()
        .map(|(_, fields)| {
            let field = |name: &str| fields.iter().find(|(k, _)| k == name).unwrap().1.clone();
            format!("{} {}: {}", field("stream"), field("id"), field("reason"))
        })
        .collect();
    assert_eq!(
        dead_sorted, expected,
        "dead letters are not exactly the poison (seed {seed}): {reasons:#?}"
    );
}

/// No inbox of any partition is left with pending requests.
fn check_no_request_pending(blog: &Blog, seed: u64) {
    let keys = blog.keys();
    for service in ["posts", "comments"] {
        for partition in blog.every_partition() {
            let inbox = keys.inbox(service_named(service), partition);
            assert_eq!(
                blog.pending(&inbox, service),
                0,
                "{service} inbox of partition {partition} has pending requests (seed {seed})"
            );
        }
    }
}

/// Every try counted for a redelivered entry is forgotten once it is applied or
/// dead-lettered: no service is left with counted tries, in any partition.
fn check_tries_forgotten(blog: &Blog, seed: u64) {
    let services = ["posts", "comments", "moderation", "query"];
    let forgotten = wait_until(Duration::from_secs(5), || {
        services
            .iter()
            .all(|service| blog.counted_tries(service).is_empty())
    });
    assert!(
        forgotten,
        "tries left counted (seed {seed}): {:?}",
        services.map(|service| (service, blog.counted_tries(service)))
    );
}

/// No process was refused anything by its Redis user, on any node (since the restarted
/// one's restart, which empties its log).
fn check_no_acl_refusal(blog: &Blog) {
    for node in blog.nodes() {
        let refused: Vec<redis::Value> = redis::cmd("ACL")
            .arg("LOG")
            .query(&mut node.connection())
            .unwrap();
        assert!(
            refused.is_empty(),
            "refused by the ACL of the Redis on port {}: {refused:?}",
            node.port
        );
    }
}

/// Kills (SIGKILL) and restarts the Redis serving a partition the seed picks: the blog's one,
/// or on a Cluster the master serving that partition's slot; returns which it was and the
/// partitions it serves. The restart waits until the Redis answers again (on a Cluster, until
/// it reports `cluster_state:ok`: see `RedisServer::restart`).
fn restart_a_partitions_redis(blog: &Blog, rng: &mut Rng) -> String {
    let partitions = blog.every_partition();
    let victim = blog.node_of(partitions[rng.below(partitions.len() as u64) as usize]);
    let (_, served) = partitions_by_node(blog)
        .into_iter()
        .find(|(port, _)| *port == victim.port)
        .expect("the victim serves a partition");
    victim.restart();
    format!(
        "the redis-server on port {}, serving partitions {}",
        victim.port,
        listed(&served)
    )
}

/// The partitions each Redis serves, by port, for the Redis that serve any.
fn partitions_by_node(blog: &Blog) -> Vec<(u16, Vec<Partition>)> {
    let mut by_node: Vec<(u16, Vec<Partition>)> = Vec::new();
    for partition in blog.every_partition() {
        let port = blog.node_of(partition).port;
        match by_node.iter_mut().find(|(known, _)| *known == port) {
            Some((_, served)) => served.push(partition),
            None => by_node.push((port, vec![partition])),
        }
    }
    by_node
}

fn listed(partitions: &[Partition]) -> String {
    let numbers: Vec<String> = partitions.iter().map(Partition::to_string).collect();
    numbers.join(", ")
}

/// An entry's fields, as XADD takes them.
type Fields = &'static [(&'static str, &'static [u8])];

/// Adds a malformed entry to the stream of the service that produces its type, in a random
/// partition (or, one time in four, an entry of an unknown type to any of the streams, which is
/// skipped and not dead-lettered); returns a malformed one's stream and id (`<stream> <id>`)
/// with the number of services that use its type (each dead-letters it). None for an unknown
/// type.
fn inject_poison(blog: &Blog, rng: &mut Rng) -> Option<(String, usize)> {
    let mut connection = blog.connection();
    let partitions = blog.every_partition();
    let partition = partitions[rng.below(partitions.len() as u64) as usize];
    let stream_of = |producer| blog.keys().events(service_named(producer), partition);
    // Readers: PostCreated (on the posts' stream) is used by comments and query, CommentCreated
    // (on the comments') by moderation and query, CommentUpdated (on the comments') by query.
    let bodies: [(&str, Fields, usize); 4] = [
        (
            "posts",
            &[
                ("type", b"PostCreated"),
                ("version", b"1"),
                ("request_id", b"x"),
                ("data", b"{oops"),
            ],
            2,
        ),
        (
            "comments",
            &[
                ("type", b"CommentCreated"),
                ("version", b"1"),
                ("request_id", b"x"),
            ],
            2,
        ),
        (
            "comments",
            &[
                ("type", b"CommentUpdated"),
                ("version", b"1"),
                ("request_id", b"x"),
                ("data", b"\xc3\x28"),
            ],
            1,
        ),
        (
            "posts",
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
    if unknown {
        let producer = PRODUCERS[rng.below(PRODUCERS.len() as u64) as usize];
        command.arg(stream_of(producer)).arg("*").arg(&[
            ("type", "PostPinned"),
            ("version", "1"),
            ("request_id", "x"),
            ("data", "{}"),
        ]);
        let _: String = command.query(&mut *connection).unwrap();
        return None;
    }
    let (producer, body, readers) = bodies[rng.below(4) as usize];
    let stream = stream_of(producer);
    command.arg(&stream).arg("*");
    for (name, value) in body {
        command.arg(*name).arg(*value);
    }
    let id: String = command.query(&mut *connection).unwrap();
    Some((format!("{stream} {id}"), readers))
}
