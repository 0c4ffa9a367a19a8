//! A blog of 8 partitions on a Redis Cluster under a client load: slots holding partitions
//! moved from master to master, keys and all (nothing lost, nothing doubled), and a master
//! killed so that its replica takes over (what replication had not carried yet is lost, whole:
//! a step's state change, event and acknowledgement together; nothing doubled); and steps that
//! meet their generation's keys half moved, on the old master or the new, failing whole before
//! their claim.

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use blogctl::keyspace::{Generation, Keys, Partition};

use crate::cluster::{RedisCluster, eight, request_id_in, with_8_partitions};
use crate::support::{Run, Service, groups_in, service_named, wait_until};

/// Client processes creating comments at once.
const WORKERS: usize = 3;
/// The longest a load or a settling may take before the test fails.
const LONG: Duration = Duration::from_secs(60);

/// One run of `comment create` by the load: its partition, when it ran, how it ended.
#[derive(Debug)]
struct Attempt {
    partition: Partition,
    started: Instant,
    ended: Instant,
    code: i32,
    stderr: String,
}

/// A comment the client got an id for (exit 0).
#[derive(Debug, Clone)]
struct Acked {
    id: String,
    post: String,
    content: String,
    orange: bool,
    partition: Partition,
    /// When the run that got the id began, and when it ended.
    sent: Instant,
    at: Instant,
}

/// Comments created on one post per partition, round robin, by [`WORKERS`] client processes
/// at a time, until stopped; each retried under its request id until acknowledged.
struct Load {
    url: String,
    posts: Vec<(Partition, String)>,
    stop: AtomicBool,
    next: AtomicUsize,
    attempts: Mutex<Vec<Attempt>>,
    acked: Mutex<Vec<Acked>>,
}

impl Load {
    /// A post in every partition, created through `url`, for the load to comment on.
    fn new(url: &str) -> Load {
        let posts = eight()
            .all()
            .map(|partition| {
                let request = request_id_in(partition, "post");
                let title = format!("Post {partition}");
                let args = ["post", "create", "--wait", "--request-id", &request, &title];
                (partition, client(url, &args))
            })
            .collect();
        Load::on(url, posts)
    }

    /// A load on `posts` (none: for [`Load::create`] alone).
    fn on(url: &str, posts: Vec<(Partition, String)>) -> Load {
        Load {
            url: url.to_owned(),
            posts,
            stop: AtomicBool::new(false),
            next: AtomicUsize::new(0),
            attempts: Mutex::new(Vec::new()),
            acked: Mutex::new(Vec::new()),
        }
    }

    fn acked_count(&self) -> usize {
        self.acked.lock().unwrap().len()
    }

    /// Waits until `more` comments more than now are acknowledged (at most `limit`).
    fn wait_for_more(&self, more: usize, limit: Duration) -> bool {
        let target = self.acked_count() + more;
        wait_until(limit, || self.acked_count() >= target)
    }

    /// One client's loop: comments until [`Load::stop`], each to the end.
    fn comment_until_stopped(&self) {
        while !self.stop.load(Ordering::SeqCst) {
            let n = self.next.fetch_add(1, Ordering::SeqCst);
            let (partition, post) = &self.posts[n % self.posts.len()];
            let orange = n.is_multiple_of(5);
            let content = if orange {
                format!("c {n} orange")
            } else {
                format!("c {n}")
            };
            let (id, sent) = self.create(*partition, post, &content, &format!("c-{n}"));
            self.acked.lock().unwrap().push(Acked {
                id,
                sent,
                post: post.clone(),
                content,
                orange,
                partition: *partition,
                at: Instant::now(),
            });
        }
    }

    /// Creates one comment, retrying under the same request id while a command exits 4 (the
    /// Cluster does not serve the slot) or 5 (its service did not answer in time); returns the
    /// id printed, with when the run that printed it began. Any other exit fails the test.
    fn create(
        &self,
        partition: Partition,
        post: &str,
        content: &str,
        request_id: &str,
    ) -> (String, Instant) {
        let args = [
            "comment",
            "create",
            "--timeout",
            "3",
            "--request-id",
            request_id,
            post,
            content,
        ];
        let deadline = Instant::now() + LONG;
        loop {
            let started = Instant::now();
            let run: Run = with_8_partitions(&self.url)
                .args(args)
                .output()
                .unwrap()
                .into();
            self.attempts.lock().unwrap().push(Attempt {
                partition,
                started,
                ended: Instant::now(),
                code: run.code,
                stderr: run.stderr.clone(),
            });
            match run.code {
                0 => return (run.stdout.trim().to_owned(), started),
                4 | 5 => assert!(
                    Instant::now() < deadline,
                    "{args:?} never succeeded: {run:?}"
                ),
                _ => panic!("{args:?} failed: {run:?}"),
            }
            // Retried shortly, under the same request id.
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// How many runs on `partition` overlapped the time from `from` to `to`.
    fn runs_during(&self, partition: Partition, from: Instant, to: Instant) -> usize {
        let attempts = self.attempts.lock().unwrap();
        attempts
            .iter()
            .filter(|run| run.partition == partition && run.started < to && run.ended > from)
            .count()
    }

    /// The reasons runs that exited 4 gave, each with how many gave it.
    fn reasons_for_4(&self) -> BTreeSet<(String, usize)> {
        let mut reasons: HashMap<String, usize> = HashMap::new();
        for run in self
            .attempts
            .lock()
            .unwrap()
            .iter()
            .filter(|run| run.code == 4)
        {
            let reason = ["does not serve the slot", "Connection refused"]
                .into_iter()
                .find(|reason| run.stderr.contains(reason))
                .map_or_else(|| run.stderr.trim().to_owned(), str::to_owned);
            *reasons.entry(reason).or_default() += 1;
        }
        reasons.into_iter().collect()
    }

    /// How many runs ended with each exit code.
    fn codes(&self) -> BTreeSet<(i32, usize)> {
        let mut codes: HashMap<i32, usize> = HashMap::new();
        for attempt in self.attempts.lock().unwrap().iter() {
            *codes.entry(attempt.code).or_default() += 1;
        }
        codes.into_iter().collect()
    }
}

/// Runs a client command through `url` that must succeed; its stdout, trimmed.
fn client(url: &str, args: &[&str]) -> String {
    let run: Run = with_8_partitions(url).args(args).output().unwrap().into();
    assert_eq!(run.code, 0, "{args:?}: {run:?}");
    run.stdout.trim().to_owned()
}

/// Tells the load to stop when dropped: a test that fails meanwhile does not leave its client
/// threads running (and their scope waiting for them) forever.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Runs the load on [`WORKERS`] threads while `conduct` does what it does to the Cluster, then
/// stops it; returns what `conduct` returned.
fn under_load<T>(load: &Load, conduct: impl FnOnce() -> T) -> T {
    std::thread::scope(|scope| {
        let stop = StopOnDrop(&load.stop);
        let workers: Vec<_> = (0..WORKERS)
            .map(|_| scope.spawn(|| load.comment_until_stopped()))
            .collect();
        let result = conduct();
        drop(stop);
        for worker in workers {
            if let Err(panic) = worker.join() {
                std::panic::resume_unwind(panic);
            }
        }
        result
    })
}

/// Two instances of every service (`serve all`), each with a log of its own, through `url`.
fn serve_twice(url: &str) -> Vec<Service> {
    ["a", "b"]
        .iter()
        .map(|consumer| {
            let mut command = with_8_partitions(url);
            command.args(["serve", "all", "--consumer", consumer]);
            Service::start(command)
        })
        .collect()
}

/// Stops every service with SIGTERM: each must still be running, and stop cleanly.
fn stop_all(services: Vec<Service>) {
    for service in services {
        let log = service.log();
        let (code, _) = service.terminate();
        assert_eq!(
            code, 0,
            "a service had stopped or failed to stop; its log:\n{log}"
        );
    }
}

/// The services' warnings and errors, the last few of each, to show with a failure.
fn troubles(services: &[Service]) -> String {
    services
        .iter()
        .map(|service| {
            let log = service.log();
            let lines: Vec<&str> = log
                .lines()
                .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
                .collect();
            lines[lines.len().saturating_sub(15)..].join("\n")
        })
        .collect::<Vec<_>>()
        .join("\n--\n")
}

/// An event as the test reads it: its partition, type and `data`.
#[derive(Debug)]
struct Event {
    kind: String,
    data: serde_json::Value,
}

impl Event {
    fn id(&self) -> String {
        self.data["id"].as_str().unwrap_or_default().to_owned()
    }
}

/// Reads the blog's keys on the Cluster, each partition from the master serving its slot.
struct Inspector<'a> {
    cluster: &'a RedisCluster,
    keys: Keys,
}

impl Inspector<'_> {
    fn new(cluster: &RedisCluster) -> Inspector<'_> {
        Inspector {
            cluster,
            keys: Keys::new("blog").unwrap(),
        }
    }

    fn connection(&self, partition: Partition) -> redis::Connection {
        let master = self
            .cluster
            .master_of(self.cluster.slot_of_partition(partition));
        self.cluster.nodes[master].connection()
    }

    /// What is not done yet in `partition`, one line each: entries pending with a group or not
    /// delivered to it yet, requests in an inbox. Empty when the partition is quiet.
    fn unfinished(&self, partition: Partition) -> Vec<String> {
        use redis::streams::{StreamInfoGroupsReply, StreamInfoStreamReply};
        let mut connection = self.connection(partition);
        let mut left = Vec::new();
        for (stream, group) in groups_in(&self.keys, partition) {
            let info: StreamInfoStreamReply = redis::cmd("XINFO")
                .arg("STREAM")
                .arg(&stream)
                .query(&mut connection)
                .unwrap();
            let groups: StreamInfoGroupsReply = redis::cmd("XINFO")
                .arg("GROUPS")
                .arg(&stream)
                .query(&mut connection)
                .unwrap();
            let Some(found) = groups.groups.iter().find(|found| found.name == group) else {
                left.push(format!("no group {group} on {stream}"));
                continue;
            };
            if found.pending > 0 || found.last_delivered_id != info.last_generated_id {
                left.push(format!(
                    "{group} on {stream}: {found:?}, last {}",
                    info.last_generated_id
                ));
            }
            if stream.ends_with("inbox") && info.length > 0 {
                left.push(format!("{} requests in {stream}", info.length));
            }
        }
        left
    }

    /// The entries of a stream of `partition`, their fields by name.
    fn entries(&self, partition: Partition, stream: &str) -> Vec<HashMap<String, String>> {
        let reply: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(stream)
            .arg("-")
            .arg("+")
            .query(&mut self.connection(partition))
            .unwrap();
        reply
            .into_iter()
            .map(|(_, fields)| fields.into_iter().collect())
            .collect()
    }

    /// Every event of every partition (of the services, not of the test).
    fn events(&self) -> Vec<Event> {
        let mut events = Vec::new();
        for partition in eight().all() {
            for producer in ["posts", "comments", "moderation"] {
                let stream = self.keys.events(service_named(producer), partition);
                events.extend(
                    self.entries(partition, &stream)
                        .into_iter()
                        .map(|fields| Event {
                            kind: fields["type"].clone(),
                            data: serde_json::from_str(&fields["data"]).unwrap(),
                        }),
                );
            }
        }
        events
    }

    /// Tries still counted for redelivered entries, and dead letters, in every partition: one
    /// line each.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        for partition in eight().all() {
            let mut connection = self.connection(partition);
            for service in ["posts", "comments", "moderation", "query"] {
                let key = self.keys.attempts(service_named(service), partition);
                let tries: HashMap<String, String> = redis::cmd("HGETALL")
                    .arg(&key)
                    .query(&mut connection)
                    .unwrap();
                if !tries.is_empty() {
                    left.push(format!("{key}: {tries:?}"));
                }
            }
            let dead = self.keys.dead(partition);
            for letter in self.entries(partition, &dead) {
                left.push(format!("{dead}: {letter:?}"));
            }
        }
        left
    }

    /// Waits until every partition is quiet and every comment of the view is final; the view.
    fn settle(&self, url: &str) -> serde_json::Value {
        let mut view = serde_json::Value::Null;
        let mut unfinished = Vec::new();
        let settled = wait_until(LONG, || {
            unfinished = eight()
                .all()
                .flat_map(|partition| self.unfinished(partition))
                .collect();
            if !unfinished.is_empty() {
                return false;
            }
            view = serde_json::from_str(&client(url, &["post", "list", "--json"])).unwrap();
            comments_of(&view).all(|(_, comment)| comment["status"] != "pending")
        });
        assert!(settled, "the blog never settled: {unfinished:#?}\n{view}");
        view
    }
}

/// Every comment of a view, with the id of its post.
fn comments_of(view: &serde_json::Value) -> impl Iterator<Item = (&str, &serde_json::Value)> {
    view.as_array().unwrap().iter().flat_map(|post| {
        let id = post["id"].as_str().unwrap();
        post["comments"]
            .as_array()
            .unwrap()
            .iter()
            .map(move |comment| (id, comment))
    })
}

/// For each event type, how many events of it carry each id.
fn tally(events: &[Event]) -> HashMap<&str, HashMap<String, usize>> {
    let mut tally: HashMap<&str, HashMap<String, usize>> = HashMap::new();
    for event in events {
        *tally
            .entry(event.kind.as_str())
            .or_default()
            .entry(event.id())
            .or_default() += 1;
    }
    tally
}

/// No event type carries an id twice; returns the ids of each type.
fn assert_no_event_doubled(events: &[Event]) -> HashMap<&str, BTreeSet<String>> {
    let tally = tally(events);
    for (kind, ids) in &tally {
        let doubled: Vec<_> = ids.iter().filter(|&(_, &count)| count > 1).collect();
        assert!(doubled.is_empty(), "{kind} doubled: {doubled:?}");
    }
    tally
        .into_iter()
        .map(|(kind, ids)| (kind, ids.into_keys().collect()))
        .collect()
}

/// Each comment of the view once (by id and by content: a request applied twice would show
/// its content twice), on the post the client named, with the status its content earns, and
/// whole: its three events there. Returns the view's comments by id, with their content.
fn assert_view_whole(
    view: &serde_json::Value,
    events: &HashMap<&str, BTreeSet<String>>,
    acked: &[Acked],
) -> HashMap<String, String> {
    let asked: HashMap<&str, &Acked> = acked
        .iter()
        .map(|comment| (comment.content.as_str(), comment))
        .collect();
    let mut by_id = HashMap::new();
    let mut contents = BTreeSet::new();
    for (post, comment) in comments_of(view) {
        let id = comment["id"].as_str().unwrap().to_owned();
        let content = comment["content"].as_str().unwrap().to_owned();
        assert!(
            contents.insert(content.clone()),
            "{content:?} twice in the view"
        );
        let request = asked.get(content.as_str());
        let request = request.unwrap_or_else(|| panic!("{comment}: no client asked for it"));
        assert_eq!(request.post, post, "{comment} on {post}");
        let status = if request.orange {
            "rejected"
        } else {
            "approved"
        };
        assert_eq!(comment["status"], status, "{comment}");
        for kind in ["CommentCreated", "CommentModerated", "CommentUpdated"] {
            let found = events.get(kind).is_some_and(|ids| ids.contains(&id));
            assert!(found, "{comment} in the view without its {kind}");
        }
        assert!(
            by_id.insert(id, content).is_none(),
            "{comment} twice in the view"
        );
    }
    // And the other way: every comment an event tells of is in the view, whole.
    for kind in ["CommentCreated", "CommentModerated", "CommentUpdated"] {
        let ids = events.get(kind).cloned().unwrap_or_default();
        let extra: Vec<_> = ids.iter().filter(|id| !by_id.contains_key(*id)).collect();
        assert!(
            extra.is_empty(),
            "{kind} of comments not in the view: {extra:?}"
        );
    }
    by_id
}

/// The 8 posts are in the view, each with one `PostCreated`.
fn assert_posts_whole(
    view: &serde_json::Value,
    events: &HashMap<&str, BTreeSet<String>>,
    load: &Load,
) {
    let posts: BTreeSet<String> = load.posts.iter().map(|(_, post)| post.clone()).collect();
    let shown: BTreeSet<String> = view
        .as_array()
        .unwrap()
        .iter()
        .map(|post| post["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(shown, posts);
    assert_eq!(events.get("PostCreated"), Some(&posts));
}

/// A slot moved by the resharding test.
struct Move {
    partition: Partition,
    slot: i64,
    from: usize,
    to: usize,
    keys: usize,
    began: Instant,
    ended: Instant,
}

impl Move {
    /// Moves `partition`'s slot to the next master, a batch of keys each time the load has
    /// acknowledged 3 more comments (or a second passed).
    fn run(cluster: &RedisCluster, load: &Load, partition: Partition) -> Move {
        let slot = cluster.slot_of_partition(partition);
        let from = cluster.master_of(slot);
        let to = (from + 1) % cluster.nodes.len();
        let began = Instant::now();
        let keys = cluster.move_slot(slot, to, || {
            load.wait_for_more(3, Duration::from_secs(1));
        });
        assert_eq!(cluster.master_of(slot), to);
        Move {
            partition,
            slot,
            from,
            to,
            keys,
            began,
            ended: Instant::now(),
        }
    }

    /// What the move did, once the load is over; fails the test unless the load met the slot
    /// half moved (a comment on its partition in flight meanwhile).
    fn describe(&self, load: &Load) -> String {
        let met = load.runs_during(self.partition, self.began, self.ended);
        assert!(
            met > 0,
            "no comment on partition {} while it moved",
            self.partition
        );
        format!(
            "partition {} (slot {}): node {} to {}, {} keys in {:.1}s, {met} client runs on it \
             meanwhile",
            self.partition,
            self.slot,
            self.from,
            self.to,
            self.keys,
            (self.ended - self.began).as_secs_f64()
        )
    }
}

/// Every client run that exited 4 was on a partition while its slot moved, saying in one line
/// that the Cluster did not serve the slot right now (`TRYAGAIN`: the request's keys were on
/// both sides); any other run exited 0 or 5.
fn assert_exit_4_only_while_moving(load: &Load, moves: &[Move]) {
    for run in load.attempts.lock().unwrap().iter() {
        match run.code {
            0 | 5 => {}
            4 => {
                let moving = moves.iter().any(|done| {
                    done.partition == run.partition
                        && run.ended >= done.began
                        && run.started <= done.ended + EXIT_4_GRACE
                });
                assert!(moving, "exit 4 outside a move of its partition: {run:?}");
                assert!(run.stderr.contains("does not serve the slot"), "{run:?}");
                assert_eq!(run.stderr.trim().lines().count(), 1, "{run:?}");
            }
            _ => panic!("{run:?}"),
        }
    }
}

/// While clients comment on a post in each of the 8 partitions, the slots of two partitions
/// move to another master, one at a time, their keys migrated a few at a time (so the load
/// meets each slot half moved). Every comment a client got an id for ends final in the view
/// exactly once, with one event of each type; no request is applied twice; nothing is left
/// pending, counted or dead-lettered; client commands meanwhile succeed, or exit 5 (the service
/// did not answer in time) or 4 (the slot half moved), and are retried.
#[test]
fn partitions_move_between_masters_under_load_nothing_lost_nothing_doubled() {
    let started = Instant::now();
    let cluster = RedisCluster::start(3, &[]);
    let url = cluster.nodes[0].url();
    let services = serve_twice(&url);
    let load = Load::new(&url);
    // Partition 0 holds the partition count every command reads first.
    let moved = [Partition(0), Partition(5)];
    let moves = under_load(&load, || {
        assert!(load.wait_for_more(40, LONG), "no comment acknowledged");
        let moves: Vec<Move> = moved
            .iter()
            .map(|&partition| Move::run(&cluster, &load, partition))
            .collect();
        assert!(load.wait_for_more(10, LONG), "no comment after the moves");
        moves
    });
    assert_exit_4_only_while_moving(&load, &moves);
    let moves: Vec<String> = moves.iter().map(|done| done.describe(&load)).collect();
    let inspector = Inspector::new(&cluster);
    let view = inspector.settle(&url);
    let acked = load.acked.lock().unwrap().clone();
    println!(
        "resharding: {} comments acknowledged; moved {}; client exits (code, runs): {:?}, exit \
         4 saying {:?}; {:.1}s",
        acked.len(),
        moves.join("; "),
        load.codes(),
        load.reasons_for_4(),
        started.elapsed().as_secs_f64()
    );
    let events = inspector.events();
    let events = assert_no_event_doubled(&events);
    assert_posts_whole(&view, &events, &load);
    let shown = assert_view_whole(&view, &events, &acked);
    let acked_ids: BTreeSet<String> = acked.iter().map(|comment| comment.id.clone()).collect();
    let shown_ids: BTreeSet<String> = shown.into_keys().collect();
    assert_eq!(
        shown_ids, acked_ids,
        "the view's comments are not the acknowledged ones"
    );
    let leftovers = inspector.leftovers();
    assert!(
        leftovers.is_empty(),
        "{leftovers:#?}\n{}",
        troubles(&services)
    );
    crate::cluster::assert_partitions_spread(&cluster);
    stop_all(services);
}

/// How long after the Cluster serves a slot again a client command that began before may still
/// exit 4: its own retries (3, up to 0.5 s apart) and a loaded machine's scheduling.
const EXIT_4_GRACE: Duration = Duration::from_secs(2);

/// The master to kill: the one serving the most partitions, other than partition 0's (whose
/// slot holds the partition count every command reads first); with its partitions.
fn victim(cluster: &RedisCluster) -> (usize, Vec<Partition>) {
    let first = cluster.master_of(cluster.slot_of_partition(Partition(0)));
    let mut served: HashMap<usize, Vec<Partition>> = HashMap::new();
    for partition in eight().all() {
        let master = cluster.master_of(cluster.slot_of_partition(partition));
        served.entry(master).or_default().push(partition);
    }
    served
        .into_iter()
        .filter(|(master, _)| *master != first)
        .max_by_key(|(master, partitions)| (partitions.len(), *master))
        .expect("a master besides partition 0's")
}

/// What the failover tests do to the replica before killing its master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replication {
    /// Nothing: it follows its master as closely as replication allows.
    Live,
    /// Shut out ([`RedisCluster::cut_replication`]) while the master goes on acknowledging
    /// writes: what it acknowledges from then on is bound to be lost.
    Cut,
}

/// When things happened in a failover test.
struct Timeline {
    /// When the cut of the replication began, and when the replica's link was seen down
    /// ([`Replication::Cut`] only).
    cut: Option<(Instant, Instant)>,
    killed_at: Instant,
    /// When the node the clients go through named the replica as the master of every slot hit.
    served_at: Instant,
}

/// 3 masters with a replica each. While clients comment on a post in each of the 8
/// partitions, the master serving the most of them is killed (SIGKILL); its replica takes over
/// after the node timeout. Replication is asynchronous, so what the master acknowledged in its
/// last moments may be lost: the test measures it and prints it. What must hold: nothing is
/// doubled (an event per id, a comment per request), nothing is half-applied (each comment in
/// the view has its three events and each event's comment is in the view), every group drains,
/// no try is left counted and nothing is dead-lettered; the services carry on; client commands
/// exit 4 only on the killed master's partitions, and only until its replica serves them.
#[test]
fn a_master_killed_under_load_fails_over_to_its_replica_nothing_doubled_or_half_applied() {
    failover(Replication::Live);
}

/// The same, with the replica shut out of replication a moment before the kill: the comments
/// the master acknowledged since are lost (each with its request, its steps, its events and
/// its answer: whole), the comments before are all there, and the same must hold.
#[test]
fn what_a_master_acknowledged_after_its_replica_fell_behind_is_lost_whole_in_a_failover() {
    failover(Replication::Cut);
}

fn failover(replication: Replication) {
    let started = Instant::now();
    let cluster = RedisCluster::start_with_replicas(
        3,
        1,
        &[
            "--cluster-node-timeout",
            "1000",
            // A replica takes over however long its link has been down.
            "--cluster-replica-validity-factor",
            "0",
            // The other masters' slots stay served while one has none.
            "--cluster-require-full-coverage",
            "no",
        ],
    );
    if replication == Replication::Cut {
        cluster.add_replication_user();
    }
    let (victim, hit) = victim(&cluster);
    let survivor = cluster.master_of(cluster.slot_of_partition(Partition(0)));
    let url = cluster.nodes[survivor].url();
    let services = serve_twice(&url);
    let load = Load::new(&url);
    // The posts (and the groups) reached the replica: only comments are at stake.
    cluster.wait_until_replicated(victim);
    let replica = cluster.replica_of(victim);
    let timeline = under_load(&load, || {
        kill_under_load(
            &cluster,
            &load,
            (victim, &hit),
            survivor,
            replication,
            &services,
        )
    });
    let inspector = Inspector::new(&cluster);
    let view = inspector.settle(&url);
    let acked = load.acked.lock().unwrap().clone();
    let events = inspector.events();
    let events = assert_no_event_doubled(&events);
    assert_posts_whole(&view, &events, &load);
    let shown = assert_view_whole(&view, &events, &acked);
    let loss = Loss::measure(&acked, &shown);
    println!(
        "failover ({replication:?} replication): partitions {hit:?} on node {victim} \
         (SIGKILL), replica node {replica} serving them {:.1}s later; {} comments \
         acknowledged, {} lost after their acknowledgement ({} of them applied again by the \
         client's retry, under a new id): {:?}; client exits (code, runs): {:?}, exit 4 saying \
         {:?}; {:.1}s",
        (timeline.served_at - timeline.killed_at).as_secs_f64(),
        acked.len(),
        loss.lost.len() + loss.again.len(),
        loss.again.len(),
        loss.lost.iter().chain(&loss.again).collect::<Vec<_>>(),
        load.codes(),
        load.reasons_for_4(),
        started.elapsed().as_secs_f64()
    );
    if let Some(cut) = timeline.cut {
        assert_lost_since(&acked, &shown, &hit, cut, timeline.killed_at);
    }
    assert_exit_4_only_while_unserved(&load, &hit, timeline.killed_at, timeline.served_at);
    let leftovers = inspector.leftovers();
    assert!(
        leftovers.is_empty(),
        "{leftovers:#?}\n{}",
        troubles(&services)
    );
    stop_all(services);
}

/// Under the load: cuts the victim's replication if asked (and lets comments on its partitions
/// be acknowledged meanwhile), kills it (SIGKILL), waits until its replica serves its slots as
/// `survivor` sees the Cluster, then until the services have carried on there.
fn kill_under_load(
    cluster: &RedisCluster,
    load: &Load,
    (victim, hit): (usize, &[Partition]),
    survivor: usize,
    replication: Replication,
    services: &[Service],
) -> Timeline {
    let replica = cluster.replica_of(victim);
    let on_hit_since = |since: Instant| {
        let acked = load.acked.lock().unwrap();
        let hit_since = acked.iter().filter(|comment| comment.sent > since);
        hit_since
            .filter(|comment| hit.contains(&comment.partition))
            .count()
    };
    assert!(load.wait_for_more(30, LONG), "no comment acknowledged");
    let cut = (replication == Replication::Cut).then(|| {
        let began = Instant::now();
        cluster.cut_replication(victim);
        let cut_at = Instant::now();
        let acknowledged = wait_until(LONG, || on_hit_since(cut_at) >= 8);
        assert!(
            acknowledged,
            "no comment on the partitions hit since the cut"
        );
        (began, cut_at)
    });
    let killed_at = Instant::now();
    cluster.nodes[victim].stop();
    let slots: Vec<i64> = hit
        .iter()
        .map(|&partition| cluster.slot_of_partition(partition))
        .collect();
    let served = wait_until(LONG, || {
        slots
            .iter()
            .all(|&slot| cluster.master_seen_by(&cluster.nodes[survivor], slot) == Some(replica))
    });
    assert!(
        served,
        "the replica never took over\n{}",
        troubles(services)
    );
    let served_at = Instant::now();
    // The services carry on: comments on the partitions hit, sent and acknowledged after.
    let carried_on = wait_until(LONG, || on_hit_since(served_at) >= 10);
    assert!(
        carried_on,
        "no comment on the partitions hit after the failover"
    );
    Timeline {
        cut,
        killed_at,
        served_at,
    }
}

/// With replication cut: every comment on the partitions hit that was sent once the replica's
/// link was down and acknowledged before the kill is lost (not in the view under its id);
/// there are some; and every comment acknowledged before the cut began is there.
fn assert_lost_since(
    acked: &[Acked],
    shown: &HashMap<String, String>,
    hit: &[Partition],
    (began, cut_at): (Instant, Instant),
    killed_at: Instant,
) {
    let unreplicated: Vec<&Acked> = acked
        .iter()
        .filter(|comment| hit.contains(&comment.partition))
        .filter(|comment| comment.sent > cut_at && comment.at < killed_at)
        .collect();
    assert!(
        !unreplicated.is_empty(),
        "no comment acknowledged between cut and kill"
    );
    for comment in unreplicated {
        assert!(
            !shown.contains_key(&comment.id),
            "survived unreplicated: {comment:?}"
        );
    }
    for comment in acked.iter().filter(|comment| comment.at < began) {
        assert!(
            shown.contains_key(&comment.id),
            "lost before the cut: {comment:?}"
        );
    }
}

/// Comments a client got an id for that are not in the view afterwards.
struct Loss {
    /// Their content is nowhere in the view.
    lost: Vec<String>,
    /// Their content is in the view under another id: the request came again (the client's
    /// retry after a timeout, whose first answer was lost with the master) and was applied
    /// anew.
    again: Vec<String>,
}

impl Loss {
    fn measure(acked: &[Acked], shown: &HashMap<String, String>) -> Loss {
        let contents: BTreeSet<&String> = shown.values().collect();
        let (again, lost): (Vec<&Acked>, Vec<&Acked>) = acked
            .iter()
            .filter(|comment| !shown.contains_key(&comment.id))
            .partition(|comment| contents.contains(&comment.content));
        let contents = |comments: Vec<&Acked>| {
            comments
                .into_iter()
                .map(|comment| comment.content.clone())
                .collect()
        };
        Loss {
            lost: contents(lost),
            again: contents(again),
        }
    }
}

/// Every client run that exited 4 was on a partition of the killed master, and ran while no
/// master served its slot (began before the replica took over, with [`EXIT_4_GRACE`]); any
/// other run exited 0 or 5.
fn assert_exit_4_only_while_unserved(
    load: &Load,
    hit: &[Partition],
    killed_at: Instant,
    served_at: Instant,
) {
    for run in load.attempts.lock().unwrap().iter() {
        match run.code {
            0 | 5 => {}
            4 => {
                let during = run.ended >= killed_at && run.started <= served_at + EXIT_4_GRACE;
                assert!(
                    hit.contains(&run.partition) && during,
                    "exit 4 outside the failover ({:?} after the kill, the replica serving \
                     after {:?}): {run:?}",
                    run.started.saturating_duration_since(killed_at),
                    served_at - killed_at
                );
                // Said in one line: the Cluster does not serve the slot, or (before the
                // Cluster noticed) the dead master refused the connection.
                assert_eq!(run.stderr.trim().lines().count(), 1, "{run:?}");
            }
            _ => panic!("{run:?}"),
        }
    }
}

/// The partition the half-move test moves (not 0, whose slot holds the partition count every
/// command reads first).
const HALF_MOVED: Partition = Partition(3);

/// A `blogctl serve` of `services` alone, through `url`.
fn serve_apart(url: &str, services: &[&str]) -> Service {
    let mut command = with_8_partitions(url);
    command.arg("serve").args(services);
    Service::start(command)
}

/// On a 3-master Cluster with 8 partitions and rebuilt generations, events wait for the query
/// service (comments on a post) and for the comments service (a new post) while they are
/// stopped. Then one partition's slot is half moved: the keys of its two generations, and only
/// them, are migrated to another master, while every key the steps name stays on the old one
/// (each made to exist there: see [`name_every_step_key`]).
/// The services start again: each step touches the generation keys it writes before it claims
/// its entry, meets them moved, and fails whole (Redis: "non local key"); the entry stays
/// pending and is tried again until the move ends, with nothing dead-lettered and no try
/// counted. (Without the touch the step claimed its entry, then failed on the key in `apply()`:
/// dead-lettered as "failed after it was acknowledged".) A client's comment meanwhile waits it
/// out. Once the move ends, every comment is final in the view exactly once, and the new post
/// is known to the comments service.
#[test]
fn a_step_meeting_its_generation_half_moved_fails_before_its_claim_and_waits_for_the_move() {
    let started = Instant::now();
    let cluster = RedisCluster::start(3, &[]);
    let url = cluster.nodes[0].url();
    let inspector = Inspector::new(&cluster);
    let producers = serve_apart(&url, &["posts", "moderation"]);
    let (post, first, second_post) = events_waiting(&url, &inspector);
    let slot = cluster.slot_of_partition(HALF_MOVED);
    let from = cluster.master_of(slot);
    let to = (from + 1) % cluster.nodes.len();
    name_every_step_key(&cluster, from);
    cluster.begin_move(slot, to);
    let generations = generation_keys(&cluster, from);
    cluster.migrate(from, to, &generations);
    // A try counted for each failed step would dead-letter its entry at the third delivery.
    let services = [
        producers,
        serve_apart(&url, &["comments", "--max-deliveries", "2"]),
        serve_apart(&url, &["query", "--max-deliveries", "2"]),
    ];
    let load = Load::on(&url, Vec::new());
    let half = HalfMove {
        cluster: &cluster,
        slot,
        from,
        to,
    };
    let (during, tried, dead) = half.wait_out(&load, &post);
    assert!(
        dead.is_empty(),
        "dead-lettered while the slot was half moved:\n{dead}"
    );
    assert!(
        tried,
        "the steps were not tried again\n{}",
        troubles(&services)
    );
    // The comments service learnt the second post once the move ended.
    let mut expected = first;
    expected.push(("during".to_owned(), during));
    let moved = Moved {
        cluster: &cluster,
        to,
        url: &url,
        inspector: &inspector,
    };
    moved.check(&services, &post, &expected, &second_post);
    println!(
        "half move: {} generation keys of partition {HALF_MOVED} moved ahead; client exits \
         (code, runs): {:?}; {:.1}s",
        generations.len(),
        load.codes(),
        started.elapsed().as_secs_f64()
    );
    stop_all(services.into());
}

/// A slot half moved by the test: [`RedisCluster::begin_move`] done, some keys migrated.
struct HalfMove<'a> {
    cluster: &'a RedisCluster,
    slot: i64,
    from: usize,
    to: usize,
}

impl HalfMove<'_> {
    /// While a client comments on `post` (retrying under its request id), waits until every
    /// step waiting in [`HALF_MOVED`] was delivered 4 times, or something is dead-lettered;
    /// reads the dead letters, then ends the move (so that a failing check does not leave the
    /// client retrying). Returns the client's comment id, whether the steps were tried, and
    /// `dead list --json`. Fails unless a run of the client overlapped the half move.
    fn wait_out(&self, load: &Load, post: &str) -> (String, bool, String) {
        let (cluster, from) = (self.cluster, self.from);
        let (during, began, ended, tried, dead) = std::thread::scope(|scope| {
            let commenter =
                scope.spawn(|| load.create(HALF_MOVED, post, "during", "during-the-move"));
            let began = Instant::now();
            let tried = wait_until(LONG, || {
                steps_tried(cluster, from, 4) || has_dead(cluster, from)
            });
            let dead = client(&load.url, &["dead", "list", "--json"]);
            let ended = Instant::now();
            cluster.migrate_slot_keys(self.slot, from, self.to, || {});
            cluster.end_move(self.slot, from, self.to);
            (commenter.join().unwrap().0, began, ended, tried, dead)
        });
        assert!(
            load.runs_during(HALF_MOVED, began, ended) > 0,
            "the client's comment did not meet the slot half moved"
        );
        (during, tried, dead)
    }
}

/// On a 3-master Cluster, a new post's `PostCreated` and moderation's verdict on a comment of
/// [`HALF_MOVED`] wait for the comments service, stopped. Then the partition's slot is half
/// moved the other way round from the test above: every key of the slot is migrated to the new
/// master (each key the steps name made to exist first: see [`name_every_step_key`]) except
/// the two generation keys the steps touch, the known posts and the comment index. The old
/// master then sends each step to the new one (`ASK`), where Redis checks a command inside a
/// script only if it names several keys: a touch of one key passed there, and the step wrote a
/// second copy of it (the move's `MIGRATE` then failed, `BUSYKEY`). Each touch now names the
/// entry's stream too: the steps are refused and wait for the move (see [`new_master_ahead`]).
#[test]
fn a_step_sent_to_the_new_master_ahead_of_the_generation_keys_it_writes_waits_for_the_move() {
    new_master_ahead(Waiting::PostAndVerdict, |generation, _| {
        vec![generation.known_posts(), generation.comment_ids()]
    });
}

/// As above, with moderation's verdict waiting alone, and the comment's own key left on the
/// old master. The verdict step reads that key in its `check()`: on the new master, a one-key
/// read of it found nothing, and the step dead-lettered the verdict as an unknown comment. Its
/// touch now names the comment's key: the step is refused and waits for the move.
#[test]
fn a_verdict_sent_to_the_new_master_ahead_of_its_comment_waits_for_the_move() {
    new_master_ahead(Waiting::VerdictAlone, |generation, comment| {
        vec![generation.comment(comment)]
    });
}

/// What waits for the comments service in [`new_master_ahead`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Waiting {
    PostAndVerdict,
    VerdictAlone,
}

impl Waiting {
    /// How many entries wait.
    fn entries(self) -> usize {
        match self {
            Waiting::PostAndVerdict => 2,
            Waiting::VerdictAlone => 1,
        }
    }
}

/// Leaves `waiting` for the comments service (see [`steps_waiting`]), half moves the slot of
/// [`HALF_MOVED`] with every key migrated but those `behind` names (from the comments
/// service's live generation and the comment's id), and starts the comments service: each
/// step must be refused until the move ends, nothing written on the new master that the old
/// one holds, nothing dead-lettered and no try counted. Then the move ends, every key moved
/// (none on both masters), and the comment is approved, the second post known (a comment on
/// it approved too).
fn new_master_ahead(waiting: Waiting, behind: fn(&Generation, &str) -> Vec<String>) {
    let started = Instant::now();
    let cluster = RedisCluster::start(3, &[]);
    let url = cluster.nodes[0].url();
    let inspector = Inspector::new(&cluster);
    let (mut services, post, comment, second_post) = steps_waiting(&url, &inspector, waiting);
    let slot = cluster.slot_of_partition(HALF_MOVED);
    let from = cluster.master_of(slot);
    let to = (from + 1) % cluster.nodes.len();
    name_every_step_key(&cluster, from);
    let behind = behind(&live_generation(&cluster, from, "comments"), &comment);
    cluster.begin_move(slot, to);
    let mut ahead: Vec<String> = redis::cmd("CLUSTER")
        .arg("GETKEYSINSLOT")
        .arg(slot)
        .arg(1000)
        .query(&mut cluster.nodes[from].connection())
        .unwrap();
    ahead.retain(|key| !behind.contains(key));
    cluster.migrate(from, to, &ahead);
    // A try counted for each refused step would dead-letter its entry at the third delivery.
    services.push(serve_apart(&url, &["comments", "--max-deliveries", "2"]));
    assert_refused_while_behind(&cluster, to, &behind, waiting.entries(), &services);
    // Fails on a key on both masters (`BUSYKEY`).
    cluster.migrate_slot_keys(slot, from, to, || {});
    cluster.end_move(slot, from, to);
    let moved = Moved {
        cluster: &cluster,
        to,
        url: &url,
        inspector: &inspector,
    };
    let expected = [("first".to_owned(), comment)];
    moved.check(&services, &post, &expected, &second_post);
    println!(
        "new master ahead ({waiting:?}): {} keys of partition {HALF_MOVED} moved, {behind:?} \
         left behind; {:.1}s",
        ahead.len(),
        started.elapsed().as_secs_f64()
    );
    stop_all(services);
}

/// Waits until each of the `entries` pending with the comments service in [`HALF_MOVED`] was
/// refused twice more (delivered 3 times), or a step went through; fails if one did: wrote a
/// key `behind` on the master at `to` (which imports the slot) or dead-lettered its entry.
fn assert_refused_while_behind(
    cluster: &RedisCluster,
    to: usize,
    behind: &[String],
    entries: usize,
    services: &[Service],
) {
    let dead_letters = Keys::new("blog").unwrap().dead(HALF_MOVED);
    let dead = || -> usize { asking(cluster, to, redis::cmd("XLEN").arg(&dead_letters)) };
    let copied = || -> Vec<&String> {
        let on_new = |key: &&String| asking(cluster, to, redis::cmd("EXISTS").arg(*key));
        behind.iter().filter(on_new).collect()
    };
    let waited = wait_until(LONG, || {
        let delivered = deliveries_to_comments(cluster, to);
        let refused = delivered.len() == entries && delivered.iter().all(|&count| count >= 3);
        refused || dead() > 0 || !copied().is_empty()
    });
    assert!(
        copied().is_empty(),
        "a step wrote {:?} on the new master while the old one held it\n{}",
        copied(),
        troubles(services)
    );
    let letters: Vec<(String, HashMap<String, String>)> = asking(
        cluster,
        to,
        redis::cmd("XRANGE").arg(&[&dead_letters, "-", "+"]),
    );
    assert_eq!(
        dead(),
        0,
        "dead-lettered while the slot was half moved:\n{letters:?}"
    );
    assert!(
        waited,
        "the steps did not wait for the move: {:?}\n{}",
        deliveries_to_comments(cluster, to),
        troubles(services)
    );
}

/// Starts the services one by one, has them apply a post of [`HALF_MOVED`], rebuilds the
/// comments service (so the partition has a generation pointer), creates a comment while
/// moderation is stopped and stops the comments service, so that moderation's verdict waits
/// for it. A second post (in the view) waits for it too, unless `waiting` is the verdict alone
/// (then it is learnt first). Returns the services still running (posts, query, moderation),
/// the post, the comment's id and the second post.
fn steps_waiting(
    url: &str,
    inspector: &Inspector,
    waiting: Waiting,
) -> (Vec<Service>, String, String, String) {
    let posts = serve_apart(url, &["posts"]);
    let query = serve_apart(url, &["query"]);
    let comments = serve_apart(url, &["comments"]);
    let create_post = |label: &str, title: &str| {
        let request = request_id_in(HALF_MOVED, label);
        client(
            url,
            &["post", "create", "--wait", "--request-id", &request, title],
        )
    };
    let post = create_post("post", "Moved");
    client(url, &["rebuild", "comments"]);
    let comment = client(url, &["comment", "create", &post, "first"]);
    let mut second_post = None;
    if waiting == Waiting::VerdictAlone {
        let second = create_post("second", "Learnt late");
        wait_until_known(inspector, &second);
        second_post = Some(second);
    }
    stop_all(vec![comments]);
    let second_post = second_post.unwrap_or_else(|| create_post("second", "Learnt late"));
    let moderation = serve_apart(url, &["moderation"]);
    let stream = inspector
        .keys
        .events(service_named("moderation"), HALF_MOVED);
    let judged = wait_until(LONG, || inspector.entries(HALF_MOVED, &stream).len() == 1);
    assert!(judged, "the comment was not moderated");
    (vec![posts, query, moderation], post, comment, second_post)
}

/// Waits until the comments service of [`HALF_MOVED`] knows `post`.
fn wait_until_known(inspector: &Inspector, post: &str) {
    let known = wait_until(LONG, || {
        let mut connection = inspector.connection(HALF_MOVED);
        let generation = live_generation_on(&mut connection, "comments");
        redis::cmd("SISMEMBER")
            .arg(&[&generation.known_posts(), post])
            .query::<bool>(&mut connection)
            .unwrap()
    });
    assert!(known, "the comments service did not learn {post}");
}

/// The live generation of `service` in [`HALF_MOVED`], read on the master at `from`.
fn live_generation(cluster: &RedisCluster, from: usize, service: &str) -> Generation {
    live_generation_on(&mut cluster.nodes[from].connection(), service)
}

/// The live generation of `service` in [`HALF_MOVED`], read through `connection`.
fn live_generation_on(connection: &mut redis::Connection, service: &str) -> Generation {
    let keys = Keys::new("blog").unwrap();
    let service = service_named(service);
    let live: u64 = redis::cmd("GET")
        .arg(keys.generation_pointer(service, HALF_MOVED))
        .query(connection)
        .unwrap();
    keys.generation(service, HALF_MOVED, live)
}

/// How many times each entry pending with the comments service in [`HALF_MOVED`] (a
/// `PostCreated`, a verdict) was delivered, read on the master at `to`, which imports them.
fn deliveries_to_comments(cluster: &RedisCluster, to: usize) -> Vec<u64> {
    let keys = Keys::new("blog").unwrap();
    ["posts", "moderation"]
        .iter()
        .flat_map(|producer| {
            let stream = keys.events(service_named(producer), HALF_MOVED);
            let pending: Vec<(String, String, u64, u64)> = asking(
                cluster,
                to,
                redis::cmd("XPENDING").arg(&[&stream, "comments", "-", "+", "10"]),
            );
            pending.into_iter().map(|entry| entry.3)
        })
        .collect()
}

/// `command`'s reply from the master at `index`, sent as a client redirected there by `ASK`
/// sends it: a master importing a slot serves its keys only so.
fn asking<T: redis::FromRedisValue>(
    cluster: &RedisCluster,
    index: usize,
    command: &redis::Cmd,
) -> T {
    let (reply,): (T,) = redis::pipe()
        .cmd("ASKING")
        .ignore()
        .add_command(command.clone())
        .query(&mut cluster.nodes[index].connection())
        .unwrap();
    reply
}
/// Starts the comments and query services, has them apply a post of [`HALF_MOVED`] with a
/// comment, rebuilds both (so each partition has a generation pointer), then leaves events
/// waiting: three comments on the post for the query service, stopped, then a second post for
/// the comments service, stopped too. Returns the post, its comments (content and id), and the
/// second post.
fn events_waiting(url: &str, inspector: &Inspector) -> (String, Vec<(String, String)>, String) {
    let comments = serve_apart(url, &["comments"]);
    let query = serve_apart(url, &["query"]);
    let request = request_id_in(HALF_MOVED, "post");
    let post = client(
        url,
        &[
            "post",
            "create",
            "--wait",
            "--request-id",
            &request,
            "Moved",
        ],
    );
    let first = client(url, &["comment", "create", "--wait", &post, "first"]);
    let mut created = vec![(
        "first".to_owned(),
        first.split(' ').next().unwrap().to_owned(),
    )];
    client(url, &["rebuild", "query"]);
    client(url, &["rebuild", "comments"]);
    stop_all(vec![query]);
    for content in ["c 1", "c 2 orange", "c 3"] {
        let id = client(url, &["comment", "create", &post, content]);
        created.push((content.to_owned(), id));
    }
    // Moderated, and the verdicts recorded: only the query service is behind.
    let stream = inspector.keys.events(service_named("comments"), HALF_MOVED);
    let updated = wait_until(LONG, || {
        let entries = inspector.entries(HALF_MOVED, &stream);
        let updated = entries
            .iter()
            .filter(|fields| fields["type"] == "CommentUpdated");
        updated.count() == created.len()
    });
    assert!(updated, "the comments were not all moderated");
    stop_all(vec![comments]);
    let request = request_id_in(HALF_MOVED, "second");
    let second = client(
        url,
        &["post", "create", "--request-id", &request, "Learnt late"],
    );
    (post, created, second)
}

/// The tries hash of the comments and query services, given a field of the test's own.
const PLACEHOLDER: &str = "placeholder";

/// Makes every key the steps of [`HALF_MOVED`] name exist on the master at `from`: Redis runs
/// a script on a half-moved slot's old master only if every key it names is there, and refuses
/// it whole (`TRYAGAIN`) before it starts otherwise. A partition with some history has the
/// dead letters (`dead drop` leaves the stream, empty) and the tries hashes (while an entry is
/// retried); the query service's own events stream, which its steps name like every step's
/// although it publishes nothing, is made here too. So the steps get as far as their
/// generation's keys.
fn name_every_step_key(cluster: &RedisCluster, from: usize) {
    let keys = Keys::new("blog").unwrap();
    let mut connection = cluster.nodes[from].connection();
    let emptied = [
        keys.dead(HALF_MOVED),
        keys.events(service_named("query"), HALF_MOVED),
    ];
    for stream in emptied {
        let id: String = redis::cmd("XADD")
            .arg(&[&stream, "*", PLACEHOLDER, "1"])
            .query(&mut connection)
            .unwrap();
        let _: () = redis::cmd("XDEL")
            .arg(&[&stream, &id])
            .query(&mut connection)
            .unwrap();
    }
    for service in ["comments", "query"] {
        let attempts = keys.attempts(service_named(service), HALF_MOVED);
        let _: () = redis::cmd("HSET")
            .arg(&[&attempts, PLACEHOLDER, "0"])
            .query(&mut connection)
            .unwrap();
    }
}

/// A half move of the slot of [`HALF_MOVED`] ended: the slot served by the node at `to`.
struct Moved<'a> {
    cluster: &'a RedisCluster,
    to: usize,
    url: &'a str,
    inspector: &'a Inspector<'a>,
}

impl Moved<'_> {
    /// A comment on `second_post` (which the comments service must have learnt) is approved;
    /// `post` holds the `expected` comments and `second_post` that one, each once, with no event
    /// doubled; once the step keys the test made are taken back, nothing is left pending,
    /// counted or dead-lettered.
    fn check(
        &self,
        services: &[Service],
        post: &str,
        expected: &[(String, String)],
        second_post: &str,
    ) {
        let late = client(
            self.url,
            &["comment", "create", "--wait", second_post, "late"],
        );
        let late = late.split(' ').next().unwrap().to_owned();
        let view = self.inspector.settle(self.url);
        assert_comments_once(&view, post, expected);
        assert_comments_once(&view, second_post, &[("late".to_owned(), late)]);
        assert_no_event_doubled(&self.inspector.events());
        take_back_step_keys(self.cluster, self.to);
        let leftovers = self.inspector.leftovers();
        assert!(
            leftovers.is_empty(),
            "{leftovers:#?}\n{}",
            troubles(services)
        );
    }
}

/// Deletes the tries hashes' [`PLACEHOLDER`] field, on the master at `to`.
fn take_back_step_keys(cluster: &RedisCluster, to: usize) {
    let keys = Keys::new("blog").unwrap();
    for service in ["comments", "query"] {
        let attempts = keys.attempts(service_named(service), HALF_MOVED);
        let _: () = redis::cmd("HDEL")
            .arg(&[&attempts, PLACEHOLDER])
            .query(&mut cluster.nodes[to].connection())
            .unwrap();
    }
}

/// The keys of the live generations of the comments and query services in [`HALF_MOVED`], on
/// the master at `from`.
fn generation_keys(cluster: &RedisCluster, from: usize) -> Vec<String> {
    let keys = Keys::new("blog").unwrap();
    let mut connection = cluster.nodes[from].connection();
    let mut found = Vec::new();
    for service in ["comments", "query"] {
        let service = service_named(service);
        let pointer = keys.generation_pointer(service, HALF_MOVED);
        let live: u64 = redis::cmd("GET")
            .arg(&pointer)
            .query(&mut connection)
            .unwrap();
        let generation = keys.generation(service, HALF_MOVED, live);
        let mut listed: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}*", generation.base()))
            .query(&mut connection)
            .unwrap();
        assert!(!listed.is_empty(), "no keys in {}", generation.base());
        found.append(&mut listed);
    }
    found
}

/// Whether every entry waiting for the comments and query services in [`HALF_MOVED`] (the
/// comments' 3 `CommentCreated` and 3 `CommentUpdated` for query, the second post's
/// `PostCreated` for both) is pending, delivered `times` times at least, on the master at
/// `from`.
fn steps_tried(cluster: &RedisCluster, from: usize, times: u64) -> bool {
    let keys = Keys::new("blog").unwrap();
    let events = |producer| keys.events(service_named(producer), HALF_MOVED);
    let waiting = [
        (events("comments"), "query", 6),
        (events("posts"), "query", 1),
        (events("posts"), "comments", 1),
    ];
    let mut connection = cluster.nodes[from].connection();
    waiting.iter().all(|(stream, group, count)| {
        let pending: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
            .arg(&[stream, *group, "-", "+", "100"])
            .query(&mut connection)
            .unwrap();
        pending.len() == *count && pending.iter().all(|entry| entry.3 >= times)
    })
}

/// Whether the dead-letter stream of [`HALF_MOVED`] holds anything, on the master at `from`.
fn has_dead(cluster: &RedisCluster, from: usize) -> bool {
    let length: usize = redis::cmd("XLEN")
        .arg(Keys::new("blog").unwrap().dead(HALF_MOVED))
        .query(&mut cluster.nodes[from].connection())
        .unwrap();
    length > 0
}

/// The view shows on `post` exactly the `expected` comments (content and id), each once and
/// final: rejected for an orange, approved otherwise.
fn assert_comments_once(view: &serde_json::Value, post: &str, expected: &[(String, String)]) {
    let shown: Vec<&serde_json::Value> = comments_of(view)
        .filter(|(on, _)| *on == post)
        .map(|(_, comment)| comment)
        .collect();
    assert_eq!(shown.len(), expected.len(), "{view}");
    for (content, id) in expected {
        let found: Vec<_> = shown
            .iter()
            .filter(|comment| comment["id"] == *id)
            .collect();
        assert_eq!(found.len(), 1, "{id} ({content}) in {view}");
        let status = if content.contains("orange") {
            "rejected"
        } else {
            "approved"
        };
        assert_eq!(found[0]["content"], *content, "{view}");
        assert_eq!(found[0]["status"], status, "{view}");
    }
}

/// On a 3-master Cluster with 8 partitions, a post of [`HALF_MOVED`] with two comments (one
/// rejected), the query view rebuilt (so the partition has a generation pointer). Its slot is
/// half moved: first the query service's pointer alone is migrated, then the view's index of
/// posts too, while the post's and its comments' hashes stay on the old master. The old master
/// sends a read, which names only the pointer, to the new one (`ASK`), where Redis checks a
/// command inside a script only if it names several keys: a one-key read of a hash still on
/// the old master found nothing, so `post list` left the post out and `post show` exited 3,
/// "not in the query view". Each read now touches the keys it reads with the pointer first:
/// refused (exit 4) while they are apart, never a wrong answer. Once the move ends, both show
/// the post whole.
#[test]
fn a_read_sent_to_the_new_master_ahead_of_the_view_is_refused_not_answered_wrong() {
    let started = Instant::now();
    let cluster = RedisCluster::start(3, &[]);
    let url = cluster.nodes[0].url();
    let (post, expected) = post_with_comments(&url, true);
    let slot = cluster.slot_of_partition(HALF_MOVED);
    let view = live_generation(&cluster, cluster.master_of(slot), "query");
    let to = (cluster.master_of(slot) + 1) % cluster.nodes.len();
    let from = cluster.begin_move(slot, to);
    let keys = Keys::new("blog").unwrap();
    let pointer = keys.generation_pointer(service_named("query"), HALF_MOVED);
    let mut codes = Vec::new();
    for ahead in [pointer, view.view_posts()] {
        cluster.migrate(from, to, &[ahead]);
        codes.extend(reads_whole_or_refused(&url, &post, &expected));
    }
    cluster.migrate_slot_keys(slot, from, to, || {});
    cluster.end_move(slot, from, to);
    assert_eq!(reads_whole_or_refused(&url, &post, &expected), [0, 0]);
    println!(
        "reads ahead of the view: exits {codes:?} while half moved; {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// Creates a post of [`HALF_MOVED`] with a comment approved and one rejected, through `url`,
/// rebuilds the query view if asked, and stops the services. Returns the post and its comments.
fn post_with_comments(url: &str, rebuild: bool) -> (String, Vec<(String, String)>) {
    let services = serve_apart(url, &["all"]);
    let request = request_id_in(HALF_MOVED, "post");
    let post = client(
        url,
        &["post", "create", "--wait", "--request-id", &request, "Read"],
    );
    let expected: Vec<(String, String)> = ["kept", "an orange"]
        .iter()
        .map(|content| {
            let created = client(url, &["comment", "create", "--wait", &post, content]);
            let id = created.split(' ').next().unwrap().to_owned();
            ((*content).to_owned(), id)
        })
        .collect();
    if rebuild {
        client(url, &["rebuild", "query"]);
    }
    stop_all(vec![services]);
    (post, expected)
}

/// A view never rebuilt has its generation pointer all the same (the query service writes it
/// when it first serves): while the partition's slot moves, a read whose keys are all on one
/// master is answered, before any key moved and once all did. (Without the pointer, the old
/// master sent every read to the new one, which refused it for the whole move.)
#[test]
fn reads_of_a_view_never_rebuilt_are_answered_while_its_keys_are_on_one_master() {
    let started = Instant::now();
    let cluster = RedisCluster::start(3, &[]);
    let url = cluster.nodes[0].url();
    let (post, expected) = post_with_comments(&url, false);
    let slot = cluster.slot_of_partition(HALF_MOVED);
    let to = (cluster.master_of(slot) + 1) % cluster.nodes.len();
    let from = cluster.begin_move(slot, to);
    assert_eq!(reads_whole_or_refused(&url, &post, &expected), [0, 0]);
    cluster.migrate_slot_keys(slot, from, to, || {});
    assert_eq!(reads_whole_or_refused(&url, &post, &expected), [0, 0]);
    cluster.end_move(slot, from, to);
    assert_eq!(reads_whole_or_refused(&url, &post, &expected), [0, 0]);
    println!(
        "reads of a view never rebuilt, its slot moving: {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// Runs `post list --json` and `post show <post> --json` through `url`: each must exit 4 (the
/// Cluster does not serve the slot right now) or show `post` with exactly the `expected`
/// comments. Returns their exit codes.
fn reads_whole_or_refused(url: &str, post: &str, expected: &[(String, String)]) -> [i32; 2] {
    let reads: [&[&str]; 2] = [
        &["post", "list", "--json"],
        &["post", "show", post, "--json"],
    ];
    reads.map(|args| {
        let run: Run = with_8_partitions(url).args(args).output().unwrap().into();
        match run.code {
            4 => assert!(
                run.stderr.contains("does not serve the slot"),
                "{args:?}: {run:?}"
            ),
            0 => {
                let shown: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
                let view = if shown.is_array() {
                    shown
                } else {
                    serde_json::Value::Array(vec![shown])
                };
                assert_comments_once(&view, post, expected);
            }
            _ => panic!("{args:?}: neither the post whole nor refused: {run:?}"),
        }
        run.code
    })
}
