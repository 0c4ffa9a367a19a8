//! Generations: where the rebuildable state of a service (comments, query) lives, so that
//! `blogctl rebuild` can fill a new one beside the live one and switch in one step.
//!
//! The state lives under `<prefix><generation>:` and `<prefix>generation` names the live
//! generation (`0` until the first rebuild). Every step of the service and every read resolves
//! that pointer inside its own script, so each sees one generation, whole.
//!
//! A service's rules for applying an event are Lua functions, written once: its live steps call
//! them on the live generation, and `blogctl rebuild` calls the same functions on a batch of
//! events ([`Rebuilder`]), each event turned into an [`ApplyCall`] by the service.

use std::collections::{HashMap, VecDeque};

use redis::Script;
use uuid::Uuid;

use crate::bus::Step;
use crate::events::{Comment, Event};
use crate::keyspace::{Generation, Keys, Partition, Service, generation_lua};

/// The key and argument every step on a generation takes before its own: the generation
/// pointer, and the service's prefix.
pub const KEYS: [&str; 1] = ["pointer"];
pub const ARGS: [&str; 1] = ["prefix"];
/// Both are the same for every step of one service's consumer: a batch of steps gives them once.
pub const SHARED: [&str; 2] = [KEYS[0], ARGS[0]];

/// The rebuild's batch: the service's apply functions over a list of calls.
const REBUILD_BATCH: &str = include_str!("lua/rebuild_batch.lua");

/// Where one service's rebuildable state lives, in one partition.
#[derive(Debug, Clone)]
pub struct Generations {
    pointer: String,
    prefix: String,
    keys: Keys,
    service: Service,
    partition: Partition,
}

impl Generations {
    pub fn new(keys: &Keys, service: Service, partition: Partition) -> Generations {
        Generations {
            pointer: keys.generation_pointer(service, partition),
            prefix: keys.service_prefix(service, partition),
            keys: keys.clone(),
            service,
            partition,
        }
    }

    pub fn partition(&self) -> Partition {
        self.partition
    }

    /// The key naming the live generation.
    pub fn pointer(&self) -> &str {
        &self.pointer
    }

    /// The service's prefix, which the Lua `generation_base` extends with the generation.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The keys of generation `number`.
    pub fn generation(&self, number: u64) -> Generation {
        self.keys.generation(self.service, self.partition, number)
    }

    /// The last generation number handed out.
    pub fn counter(&self) -> String {
        self.keys.generation_counter(self.service, self.partition)
    }

    /// The lock a running rebuild holds.
    pub fn lock(&self) -> String {
        self.keys.rebuild_lock(self.service, self.partition)
    }

    /// Gives a step the pointer and prefix (its first key and argument, see [`KEYS`]).
    pub fn fill(&self, step: Step) -> Step {
        step.key("pointer", &self.pointer)
            .arg("prefix", &self.prefix)
    }
}

/// Lua that names a generation's keys and sets `base` to the live generation's base, from the
/// step's `pointer` (read once per script call: no step writes it, so a batch's steps all see
/// the same) and `prefix`; then [`TOUCH`] and a service's apply functions, `apply_lua`.
pub fn lua(apply_lua: &str) -> String {
    format!(
        "{}local base = generation_base(prefix, read_once(pointer))\n{TOUCH}{apply_lua}",
        generation_lua()
    )
}

/// `touch(...)`: every step on a generation calls it in `check()`, before the claim, with every
/// generation key it reads or writes. The step names those keys inside Lua, not in `KEYS` (the
/// generation is looked up there), and while a Redis Cluster moves the partition's slot, Redis
/// checks them only as commands reach them: touched before the claim, a key not on this master
/// fails the step whole ("non local key") and the entry comes again; met in `apply()`, after
/// the claim, it would leave the step half-applied. The touch names the entry's `stream` too,
/// which is always on the master running the step: on the master importing the slot (reached
/// with `ASKING`), Redis checks a command only if it names several keys, and a one-key command
/// on a key still on the old master would read nothing there, or write a second copy of it.
/// A single Redis never moves a key, so there the touch does nothing (`CLUSTER`: see
/// [`crate::bus::StepScript`]).
pub const TOUCH: &str =
    "local function touch(...) if CLUSTER then redis.call('EXISTS', stream, ...) end end\n";

/// One event applied to a service's state: the name of the Lua apply function and its
/// arguments after the generation's base.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApplyCall {
    pub function: &'static str,
    pub args: Vec<String>,
}

/// How a service folds a comment's update into the call that created it (see [`Calls`]): the
/// call to change, the update's own call, and the updated comment.
pub type Fold = fn(created: &mut ApplyCall, update: ApplyCall, comment: &Comment);

/// How many events a comment's creation is held back for its update (see [`Calls`]). The
/// comments service publishes a comment's update once moderation has judged it: in a log
/// written under load, a few thousand events after its creation.
const HOLD_FOR: u64 = 20_000;
/// How many bytes of arguments the creations held back may hold at most (a comment's content
/// may be 5,000 characters): beyond, the oldest go first.
const HOLD_BYTES: usize = 16 << 20;

/// The bytes of a call's arguments.
fn size_of(call: &ApplyCall) -> usize {
    call.args.iter().map(String::len).sum()
}

/// The apply calls of a run of events (a rebuild's stream, an import's partition) for one
/// service's state. A comment's creation is held back until its final status comes: each
/// update of the comment that comes meanwhile is folded into it by the service's [`Fold`], and
/// the events make one call. It is held for at most [`HOLD_FOR`] events, while those held hold
/// at most [`HOLD_BYTES`], and to the end of the run.
///
/// The end state is the same, with half the calls, which cost Redis most: the calls of one
/// comment keep their order, and calls on different comments touch different fields. Nothing
/// reads the state in between: it is a generation being filled, not yet served.
#[derive(Debug)]
pub struct Calls {
    apply: fn(&Event) -> Option<ApplyCall>,
    fold: Fold,
    /// Calls in the order they are to be written.
    ready: Vec<ApplyCall>,
    /// Creations held back, by comment, with the number of the event that made each ...
    held: HashMap<Uuid, (u64, ApplyCall)>,
    /// ... and in the order they came (some since folded or released).
    order: VecDeque<(u64, Uuid)>,
    /// Events added so far.
    events: u64,
    /// The bytes of the arguments of the creations held.
    held_bytes: usize,
}

impl Calls {
    /// `apply`: the service's call for an event, if the event changes its state.
    pub fn new(apply: fn(&Event) -> Option<ApplyCall>, fold: Fold) -> Calls {
        Calls {
            apply,
            fold,
            ready: Vec::new(),
            held: HashMap::new(),
            order: VecDeque::new(),
            events: 0,
            held_bytes: 0,
        }
    }

    /// Adds the call `event` makes, if any.
    pub fn add(&mut self, event: &Event) {
        self.events += 1;
        self.release_the_oldest();
        let Some(call) = (self.apply)(event) else {
            return;
        };
        match event {
            Event::CommentCreated(comment) => {
                // A second creation of one comment comes after the first.
                if let Some(earlier) = self.unhold(comment.id) {
                    self.ready.push(earlier);
                }
                self.held_bytes += size_of(&call);
                self.held.insert(comment.id, (self.events, call));
                self.order.push_back((self.events, comment.id));
                self.release_the_oldest();
            }
            Event::CommentUpdated(comment) => match self.held.get_mut(&comment.id) {
                Some((_, created)) => {
                    self.held_bytes -= size_of(created);
                    (self.fold)(created, call, comment);
                    self.held_bytes += size_of(created);
                    // No update comes after a final status but by replay: it is ready.
                    if comment.status.is_final()
                        && let Some(folded) = self.unhold(comment.id)
                    {
                        self.ready.push(folded);
                    }
                }
                None => self.ready.push(call),
            },
            _ => self.ready.push(call),
        }
    }

    /// Releases the creations held for [`HOLD_FOR`] events, and the oldest while those held
    /// hold more than [`HOLD_BYTES`].
    fn release_the_oldest(&mut self) {
        while let Some(&(number, id)) = self.order.front()
            && (number + HOLD_FOR <= self.events || self.held_bytes > HOLD_BYTES)
        {
            self.order.pop_front();
            self.release(number, id);
        }
    }

    /// Makes ready creation `number` of comment `id`, if it is still held.
    fn release(&mut self, number: u64, id: Uuid) {
        if self.held.get(&id).is_some_and(|(held, _)| *held == number)
            && let Some(call) = self.unhold(id)
        {
            self.ready.push(call);
        }
    }

    /// Takes comment `id`'s creation out of those held, if it is.
    fn unhold(&mut self, id: Uuid) -> Option<ApplyCall> {
        let (_, call) = self.held.remove(&id)?;
        self.held_bytes -= size_of(&call);
        Some(call)
    }

    /// How many calls are ready.
    pub fn ready(&self) -> usize {
        self.ready.len()
    }

    /// The calls ready to be written; the creations held back stay.
    pub fn take(&mut self) -> Vec<ApplyCall> {
        std::mem::take(&mut self.ready)
    }

    /// Every call left, the held creations last, oldest first: for the end of the run.
    pub fn finish(&mut self) -> Vec<ApplyCall> {
        while let Some((number, id)) = self.order.pop_front() {
            self.release(number, id);
        }
        self.take()
    }
}

/// Applies batches of [`ApplyCall`]s to a generation with a service's apply functions.
#[derive(Debug)]
pub struct Rebuilder {
    script: Script,
}

impl Rebuilder {
    pub fn new(apply_lua: &str) -> Rebuilder {
        // The batch finds each apply function by name in `calls`.
        let functions: Vec<String> = apply_lua
            .lines()
            .filter_map(|line| line.strip_prefix("local function "))
            .filter_map(|signature| signature.split('(').next())
            .map(|name| format!("{name} = {name}"))
            .collect();
        Rebuilder {
            script: Script::new(&format!(
                "#!lua\n{}{apply_lua}local calls = {{{}}}\n{REBUILD_BATCH}",
                generation_lua(),
                functions.join(", ")
            )),
        }
    }

    /// The command that applies `calls` to `generation`, in order (`EVALSHA`: see
    /// [`Rebuilder::load`]). Consecutive calls of one function with as many arguments each are
    /// sent as one run (the function's name, the count of arguments, the count of calls, then
    /// their arguments), not named and counted one by one: each argument costs Redis an
    /// object and a Lua string, and a batch of a rebuild is nearly all runs of one function.
    pub fn batch(&self, generation: &Generation, calls: &[ApplyCall]) -> redis::Cmd {
        let arguments: usize = calls.iter().map(|call| call.args.len()).sum();
        let bytes: usize = calls
            .iter()
            .flat_map(|call| &call.args)
            .map(String::len)
            .sum();
        let mut command = redis::Cmd::with_capacity(arguments + 16, bytes + 256);
        // The base is named as a key (it is none, but holds the partition's hash tag) so that a
        // Cluster routes the script to the node of its slot.
        command
            .arg("EVALSHA")
            .arg(self.script.get_hash())
            .arg(1)
            .arg(generation.base());
        for run in calls.chunk_by(|one, next| {
            one.function == next.function && one.args.len() == next.args.len()
        }) {
            command
                .arg(run[0].function)
                .arg(run[0].args.len())
                .arg(run.len());
            for call in run {
                command.arg(&call.args);
            }
        }
        command
    }

    /// Loads the script into Redis, for [`Rebuilder::batch`] after a `NOSCRIPT`.
    pub async fn load(
        &self,
        connection: &mut crate::connection::Connection,
    ) -> redis::RedisResult<()> {
        self.script.load_async(connection).await.map(drop)
    }
}

/// A step script on a service's rebuildable state: the generation's key and argument, then
/// `keys` and `args`; `apply_lua` (the service's apply functions) and `body` (its `check()` and
/// `apply()`) see `base`, the live generation's base.
pub fn step_script(
    keys: &[&'static str],
    args: &[&'static str],
    apply_lua: &str,
    body: &str,
) -> crate::bus::StepScript {
    crate::bus::StepScript::new(
        &[&KEYS[..], keys].concat(),
        &[&ARGS[..], args].concat(),
        &[&lua(apply_lua), body],
    )
    .sharing(&SHARED)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::Status;
    use crate::services::{comments, query};

    fn comment() -> Comment {
        Comment {
            id: Uuid::now_v7(),
            post_id: Uuid::now_v7(),
            content: "hi".to_owned(),
            status: Status::Pending,
        }
    }

    fn updated(comment: &Comment, status: Status) -> Event {
        Event::CommentUpdated(Comment {
            status,
            ..comment.clone()
        })
    }

    #[test]
    fn a_comments_update_is_folded_into_its_creation() {
        let (comment, other) = (comment(), comment());
        let (mut view, mut state) = (query::calls(), comments::calls());
        for event in [
            &Event::CommentCreated(comment.clone()),
            &Event::CommentCreated(other.clone()),
            &updated(&comment, Status::Pending),
            &updated(&comment, Status::Rejected),
        ] {
            view.add(event);
            state.add(event);
        }
        // The view: a pending update changes nothing, a final one replaces the creation, and
        // makes it ready.
        let rejected = updated(&comment, Status::Rejected);
        assert_eq!(view.take(), [query::apply_call(&rejected).unwrap()]);
        // The comments state: the creation, with the last status.
        let ready = state.take();
        assert_eq!(ready.len(), 1);
        assert_eq!(ready[0].function, "add_comment");
        assert_eq!(ready[0].args[0], comment.id.to_string());
        assert_eq!(ready[0].args[3], "rejected");
        // An update after the final status is a call of its own.
        view.add(&rejected);
        assert_eq!(view.take(), [query::apply_call(&rejected).unwrap()]);
        // The other comment's creation, held, comes out at the end.
        let created = Event::CommentCreated(other.clone());
        assert_eq!(view.finish(), [query::apply_call(&created).unwrap()]);
        assert_eq!(state.finish(), [comments::apply_call(&created).unwrap()]);
    }

    #[test]
    fn a_creation_is_held_back_for_so_many_events_only() {
        let comment = self::comment();
        let mut view = query::calls();
        view.add(&Event::CommentCreated(comment.clone()));
        // Events that make no call of the view's count too.
        let moderated = Event::CommentModerated(comment.clone());
        for _ in 1..HOLD_FOR {
            view.add(&moderated);
        }
        assert_eq!(view.ready(), 0, "held for {} events", HOLD_FOR - 1);
        let approved = updated(&comment, Status::Approved);
        view.add(&approved);
        let created = Event::CommentCreated(comment.clone());
        assert_eq!(
            view.take(),
            [
                query::apply_call(&created).unwrap(),
                query::apply_call(&approved).unwrap()
            ],
            "released, then the update on its own"
        );
    }

    #[test]
    fn the_creations_held_back_hold_so_many_bytes_only() {
        let mut view = query::calls();
        let long = "x".repeat(crate::events::MAX_CONTENT_CHARS);
        let first = Comment {
            content: long.clone(),
            ..comment()
        };
        view.add(&Event::CommentCreated(first.clone()));
        while view.ready() == 0 {
            view.add(&Event::CommentCreated(Comment {
                content: long.clone(),
                ..comment()
            }));
        }
        let ready = view.take();
        let created = query::apply_call(&Event::CommentCreated(first)).unwrap();
        assert_eq!(
            ready,
            std::slice::from_ref(&created),
            "the oldest goes first, alone"
        );
        assert!(
            view.held_bytes <= HOLD_BYTES,
            "{} bytes held",
            view.held_bytes
        );
        assert!(view.held_bytes + 2 * size_of(&created) > HOLD_BYTES);
    }

    #[test]
    fn a_batch_names_each_run_of_one_function_once() {
        let rebuilder =
            Rebuilder::new("local function one(base, x) end\nlocal function two(base, x, y) end\n");
        let keys = Keys::new("blog").expect("a namespace");
        let generation = keys.generation(Service::Query, Partition::FIRST, 3);
        let call = |function, args: &[&str]| ApplyCall {
            function,
            args: args.iter().map(|arg| arg.to_string()).collect(),
        };
        let command = rebuilder.batch(
            &generation,
            &[
                call("one", &["a"]),
                call("one", &["b"]),
                call("two", &["c", "d"]),
                call("one", &["e"]),
            ],
        );
        let args: Vec<String> = command
            .args_iter()
            .map(|arg| match arg {
                redis::Arg::Simple(bytes) => String::from_utf8_lossy(bytes).into_owned(),
                _ => String::new(),
            })
            .collect();
        assert_eq!(
            args[..4],
            [
                "EVALSHA",
                rebuilder.script.get_hash(),
                "1",
                generation.base()
            ]
        );
        assert_eq!(
            args[4..],
            [
                "one", "1", "2", "a", "b", "two", "2", "1", "c", "d", "one", "1", "1", "e"
            ]
        );
    }
}
