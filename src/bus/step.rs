//! The atomic step: a Lua script that applies one entry and acknowledges it, exactly once; and
//! its batch form, which runs the steps of many entries of one stream, each on its own, in one
//! script call.

use redis::{Cmd, ErrorKind, RedisResult, Script, ServerErrorKind, ToRedisArgs, Value};

use super::entry::{DEAD_LETTER_FIELD_BYTES, Delivery};
use crate::connection::Connection;
use crate::events::{ENVELOPE_VERSION, EventKind};
use crate::keyspace::{Keys, Partition, Service};

/// Lua run at the start of every step, after the declarations of its KEYS and ARGV: `claim()`
/// and `publish()`.
///
/// Every step sees, by name: `stream` (where the entry came from), `events` (the service's
/// own events stream), `dead` (the dead-letter stream), `group` (the service), `entry_id`, `request_id`
/// (of the request that caused the entry) and `deliveries`; then the names its
/// [`StepScript`] declares; and `CLUSTER`, true in the form sent to a Redis Cluster.
const PRELUDE: &str = include_str!("lua/step_prelude.lua");

/// Lua run after the body, which defines `check()` and `apply()`: the check, the claim, then
/// the apply, protected.
///
/// `claim()` acknowledges the entry and says whether it was still pending: an entry no longer
/// pending was already applied, by this consumer or by another that took it over, and applying
/// it again would double its effect, so the step returns `stale` without calling `apply()`. The
/// acknowledgement and the writes are one atomic script, so neither happens without the other.
/// `check()` only reads; it returns a reply to end the step with the entry still pending (to be
/// tried again), or nil to go on.
///
/// Redis does not undo a script's writes when it fails, so an error in `apply()` would leave
/// the entry acknowledged (a retry finds it `stale`) and part-applied. Such an entry is
/// dead-lettered by the same script, with the error, so that it is never lost silently: the
/// reply is [`StepReply::FailedAfterClaim`]. An error before the claim changed nothing and is
/// raised again: the entry stays pending and is retried.
const EPILOGUE: &str = include_str!("lua/step_epilogue.lua");

/// Lua run once per script call, before its steps: `read_once()`, `now_ms()` and
/// `delete_later()`.
const CALL: &str = include_str!("lua/step_call.lua");

/// Lua run after the step, `one(k, a)`: runs it for each entry of the call, in order, each on
/// its own; the batch form answers with the list of their replies, a single step with its own.
const DRIVER: &str = include_str!("lua/step_batch.lua");

/// About how many dead letters the dead-letter stream keeps (`XADD ... MAXLEN ~`): the oldest
/// go first.
pub const DEAD_LETTERS_KEPT: u64 = 100_000;

/// The KEYS and ARGV every step starts with, before the script's own.
const COMMON_KEYS: [&str; 4] = ["stream", "events", "dead", "attempts"];
const COMMON_ARGS: [&str; 4] = ["group", "entry_id", "request_id", "deliveries"];
/// Of those, the ones every step of a batch gives the same (one stream, one service's keys, first
/// deliveries): a batch gives them once.
const COMMON_SHARED: [&str; 6] = [
    "stream",
    "events",
    "dead",
    "attempts",
    "group",
    "deliveries",
];

/// What every step of one service touches besides its own keys: its group, its own events
/// stream (the only one it publishes to), the dead-letter stream, and the hash counting tries of redelivered entries.
#[derive(Debug, Clone)]
pub struct StepKeys {
    pub group: String,
    pub events: String,
    pub dead: String,
    pub attempts: String,
}

impl StepKeys {
    pub fn new(keys: &Keys, service: Service, partition: Partition) -> StepKeys {
        StepKeys {
            group: service.name().to_owned(),
            events: keys.events(service, partition),
            dead: keys.dead(partition),
            attempts: keys.attempts(service, partition),
        }
    }
}

/// What a step script answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StepReply {
    /// Applied, and acknowledged.
    Applied,
    /// No longer pending: applied before, by this consumer or another. Nothing changed.
    Stale,
    /// Acknowledged, then failed: the entry is in the dead letters, with the error.
    FailedAfterClaim,
    /// Moved to the dead letters.
    Dead,
    /// A request answered without a change (invalid input, unknown post).
    Answered,
    /// A request its client gave up on, deleted unapplied.
    Abandoned,
    /// A request past its deadline, deleted unapplied.
    Expired,
    /// A request id answered before: the first answer again, nothing changed.
    Repeated,
    /// A comment on a post the comments service does not know (yet): left pending.
    UnknownPost,
    /// A verdict for a comment the comments service does not know: left pending.
    UnknownComment,
}

impl StepReply {
    const ALL: [StepReply; 10] = [
        StepReply::Applied,
        StepReply::Stale,
        StepReply::FailedAfterClaim,
        StepReply::Dead,
        StepReply::Answered,
        StepReply::Abandoned,
        StepReply::Expired,
        StepReply::Repeated,
        StepReply::UnknownPost,
        StepReply::UnknownComment,
    ];

    /// The word the Lua returns.
    pub fn as_str(self) -> &'static str {
        match self {
            StepReply::Applied => "applied",
            StepReply::Stale => "stale",
            StepReply::FailedAfterClaim => "failed_after_claim",
            StepReply::Dead => "dead",
            StepReply::Answered => "answered",
            StepReply::Abandoned => "abandoned",
            StepReply::Expired => "expired",
            StepReply::Repeated => "repeated",
            StepReply::UnknownPost => "unknown_post",
            StepReply::UnknownComment => "unknown_comment",
        }
    }

    pub fn parse(word: &str) -> Option<StepReply> {
        StepReply::ALL
            .into_iter()
            .find(|reply| reply.as_str() == word)
    }
}

/// A step's Lua with the names of the KEYS and ARGV it takes beyond every step's: declared once,
/// here, they become Lua locals the body uses by name, and [`Step::key`] and [`Step::arg`]
/// check each value is given under the name the script expects, in order.
///
/// The `#!lua` line gives the script flags (none): Redis then refuses it whole, before it runs,
/// when memory is over `maxmemory` or the server is a read-only replica. The step fails with
/// nothing done and the entry is tried again once Redis recovers. (Without flags, Redis checks
/// only a script's first write, and the acknowledgement would let the rest through.)
///
/// Each script has a batch form too (`bus::batch::Batch`): the same Lua, run once per entry
/// inside one script call, which saves Redis the cost of a call per entry (its arguments, its
/// Lua tables), and gives once the names every step of the batch shares.
#[derive(Debug)]
pub struct StepScript {
    /// Its forms for a single Redis, where `touch()` does nothing ...
    on_single: Forms,
    /// ... and for a Redis Cluster, where `touch()` checks its keys are on the master (see
    /// `services::generations::TOUCH`).
    on_cluster: Forms,
    /// The step's Lua after the declarations of its names, the same in both forms.
    body: String,
    keys: Vec<&'static str>,
    args: Vec<&'static str>,
    /// The script's own names whose values are the same for every step of one consumer (see
    /// [`StepScript::sharing`]).
    shared: Vec<&'static str>,
    /// For each key, then each argument, of a step (every step's first): whether it is shared.
    pub(super) key_shared: Vec<bool>,
    pub(super) arg_shared: Vec<bool>,
}

impl StepScript {
    /// `parts`: the Lua, in order, that defines `check()` and `apply()` (with any helpers).
    pub fn new(keys: &[&'static str], args: &[&'static str], parts: &[&str]) -> StepScript {
        let body = parts.concat();
        // Only the event names the body publishes.
        let constants: String = EventKind::ALL
            .iter()
            .filter(|kind| mentions(&body, kind.lua_constant()))
            .map(|kind| format!("local {} = '{}'\n", kind.lua_constant(), kind.name()))
            .collect();
        let body = format!(
            "local ENVELOPE_VERSION = '{ENVELOPE_VERSION}'\n\
             local DEAD_LETTERS_KEPT = {DEAD_LETTERS_KEPT}\n\
             local DEAD_LETTER_FIELD_BYTES = {DEAD_LETTER_FIELD_BYTES}\n{constants}{}",
            keep_used(&format!("{PRELUDE}{body}{EPILOGUE}"), &["run_step"]),
        );
        let mut script = StepScript {
            on_single: Forms::empty(),
            on_cluster: Forms::empty(),
            body,
            keys: keys.to_vec(),
            args: args.to_vec(),
            shared: Vec::new(),
            key_shared: Vec::new(),
            arg_shared: Vec::new(),
        };
        script.mark_shared();
        script.on_single = script.forms(false);
        script.on_cluster = script.forms(true);
        script
    }

    fn forms(&self, cluster: bool) -> Forms {
        Forms {
            single: Script::new(&self.lua(false, cluster)),
            batch: Script::new(&self.lua(true, cluster)),
        }
    }

    /// The forms to send over `connection`: a Cluster's, or a single Redis's.
    pub(super) fn forms_for(&self, cluster: bool) -> &Forms {
        if cluster {
            &self.on_cluster
        } else {
            &self.on_single
        }
    }

    /// Names, among the script's own keys and arguments, that every step of one consumer gives
    /// the same value (such as a generation's pointer): a batch gives them once. A batch only
    /// joins steps whose shared values are equal, so a name wrongly called shared costs only
    /// smaller batches.
    pub fn sharing(mut self, names: &[&'static str]) -> StepScript {
        for name in names {
            assert!(
                self.keys.contains(name) || self.args.contains(name),
                "{name} is not a name of the script"
            );
        }
        self.shared = names.to_vec();
        self.mark_shared();
        self.on_single = self.forms(false);
        self.on_cluster = self.forms(true);
        self
    }

    fn mark_shared(&mut self) {
        self.key_shared = self.key_names().map(|name| self.is_shared(name)).collect();
        self.arg_shared = self.arg_names().map(|name| self.is_shared(name)).collect();
    }

    fn is_shared(&self, name: &str) -> bool {
        COMMON_SHARED.contains(&name) || self.shared.contains(&name)
    }

    pub(super) fn key_names(&self) -> impl Iterator<Item = &'static str> {
        COMMON_KEYS.into_iter().chain(self.keys.iter().copied())
    }

    pub(super) fn arg_names(&self) -> impl Iterator<Item = &'static str> {
        COMMON_ARGS.into_iter().chain(self.args.iter().copied())
    }

    /// The script's Lua, single or batch form: the step is a function `one(k, a)` of an entry's
    /// offsets in KEYS and ARGV, which the driver runs for each entry. The single form declares
    /// each name from its place in KEYS or ARGV; the batch form gives the shared names first,
    /// once, and each entry's own after `k` and `a`. `CLUSTER` says whether it runs on a Redis
    /// Cluster.
    ///
    /// Everything but `one` runs once per call: the names are the call's locals, which `one`
    /// sets to each entry's values, so the body's functions are made once per call rather than
    /// once per entry (each costs Redis an allocation and its upvalues). So the body's own code
    /// outside its functions may read only shared names; the state a step keeps between its
    /// functions is set by `check()`, and `claimed` by the epilogue, for each entry.
    pub(super) fn lua(&self, batch: bool, cluster: bool) -> String {
        let mut declared = String::new();
        let mut entry_names: Vec<&str> = Vec::new();
        let mut assigned = String::new();
        let mut declare = |table: &str, offset: &str, names: Vec<&'static str>| -> (usize, usize) {
            let (mut shared, mut own) = (0, 0);
            for name in names {
                if !batch || self.is_shared(name) {
                    shared += 1;
                    declared.push_str(&format!("local {name} = {table}[{shared}]\n"));
                } else {
                    own += 1;
                    entry_names.push(name);
                    assigned.push_str(&format!("  {name} = {table}[{offset} + {own}]\n"));
                }
            }
            (shared, own)
        };
        let (shared_keys, entry_keys) = declare("KEYS", "k", self.key_names().collect());
        let (shared_args, entry_args) = declare("ARGV", "a", self.arg_names().collect());
        if !entry_names.is_empty() {
            declared.push_str(&format!("local {}\n", entry_names.join(", ")));
        }
        format!(
            "#!lua\nlocal CLUSTER = {cluster}\n{CALL}{declared}{}\
             local function one(k, a)\n{assigned}  return run_step()\nend\n\
             local SINGLE = {}\n\
             local SHARED_KEYS, SHARED_ARGS = {shared_keys}, {shared_args}\n\
             local ENTRY_KEYS, ENTRY_ARGS = {entry_keys}, {entry_args}\n{DRIVER}",
            self.body, !batch
        )
    }
}

/// A step script's two forms: one step per call, and the batch form.
#[derive(Debug)]
pub(super) struct Forms {
    pub(super) single: Script,
    pub(super) batch: Script,
}

impl Forms {
    fn empty() -> Forms {
        Forms {
            single: Script::new(""),
            batch: Script::new(""),
        }
    }
}

/// The Lua without comments and without the `local function`s nothing calls (but `roots`, which
/// code outside `lua` calls): each script call creates every function it defines, and the
/// shared Lua (key names, apply functions, request helpers) defines more than one script uses.
/// A function is a line `local function name(...) ... end`, or starts with such a line and ends
/// at a line `end` in the first column.
fn keep_used(lua: &str, roots: &[&str]) -> String {
    // (the function's name, its text); `None` for the code around functions.
    let mut items: Vec<(Option<&str>, String)> = Vec::new();
    let mut lines = lua
        .lines()
        .filter(|line| !line.trim_start().starts_with("--"));
    while let Some(line) = lines.next() {
        let Some(signature) = line.strip_prefix("local function ") else {
            items.push((None, format!("{line}\n")));
            continue;
        };
        let name = signature.split('(').next().unwrap_or_default();
        let mut text = format!("{line}\n");
        if !line.trim_end().ends_with(" end") {
            for line in lines.by_ref() {
                text.push_str(line);
                text.push('\n');
                if line == "end" {
                    break;
                }
            }
        }
        items.push((Some(name), text));
    }
    let mut kept: Vec<bool> = items
        .iter()
        .map(|(name, _)| name.is_none_or(|name| roots.contains(&name)))
        .collect();
    loop {
        let reached: Vec<usize> = (0..items.len())
            .filter(|&index| !kept[index])
            .filter(|&index| {
                let name = items[index].0.unwrap_or_default();
                items
                    .iter()
                    .zip(&kept)
                    .any(|((_, text), &kept)| kept && mentions(text, name))
            })
            .collect();
        if reached.is_empty() {
            break;
        }
        for index in reached {
            kept[index] = true;
        }
    }
    items
        .into_iter()
        .zip(kept)
        .filter_map(|((_, text), kept)| kept.then_some(text))
        .collect()
}

/// Whether `text` uses the identifier `name` (not as part of a longer one).
fn mentions(text: &str, name: &str) -> bool {
    let is_identifier = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(name).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + name.len()..].chars().next();
        !before.is_some_and(is_identifier) && !after.is_some_and(is_identifier)
    })
}

/// One atomic step ready to run: a step script with its keys and arguments.
///
/// Steps of a batch are sent in one pipeline (one round trip); each still runs atomically and
/// checks on its own that its entry is pending.
#[derive(Debug, Clone)]
pub struct Step {
    pub(super) script: &'static StepScript,
    pub(super) keys: Vec<Vec<u8>>,
    pub(super) args: Vec<Vec<u8>>,
    /// How many of the script's own keys and arguments are given so far.
    named_keys: usize,
    named_args: usize,
}

impl Step {
    /// A step for `delivery`, caused by request `request_id`, with every step's keys and
    /// arguments filled in.
    pub fn new(
        script: &'static StepScript,
        keys: &StepKeys,
        delivery: &Delivery,
        request_id: &str,
    ) -> Step {
        let mut step = Step {
            script,
            keys: Vec::with_capacity(COMMON_KEYS.len() + script.keys.len()),
            args: Vec::with_capacity(COMMON_ARGS.len() + script.args.len()),
            named_keys: 0,
            named_args: 0,
        };
        for key in [&delivery.stream, &keys.events, &keys.dead, &keys.attempts] {
            key.write_redis_args(&mut step.keys);
        }
        for arg in [&keys.group, &delivery.id, request_id] {
            arg.write_redis_args(&mut step.args);
        }
        delivery.deliveries.write_redis_args(&mut step.args);
        step
    }

    /// Gives the script's next key, `name`.
    pub fn key(mut self, name: &str, key: impl ToRedisArgs) -> Step {
        let expected = self.script.keys.get(self.named_keys);
        assert_eq!(
            expected,
            Some(&name),
            "the script's next key is {expected:?}"
        );
        key.write_redis_args(&mut self.keys);
        self.named_keys += 1;
        self
    }

    /// Gives the script's next argument, `name`.
    pub fn arg(mut self, name: &str, arg: impl ToRedisArgs) -> Step {
        let expected = self.script.args.get(self.named_args);
        assert_eq!(
            expected,
            Some(&name),
            "the script's next argument is {expected:?}"
        );
        arg.write_redis_args(&mut self.args);
        self.named_args += 1;
        self
    }

    /// Gives the script's remaining arguments, in the order it declares them.
    pub fn rest<T: ToRedisArgs>(mut self, values: impl IntoIterator<Item = T>) -> Step {
        for value in values {
            let name = self.script.args[self.named_args];
            self = self.arg(name, value);
        }
        self
    }

    /// The step's command, for a Redis Cluster or a single Redis (`cluster`).
    pub(super) fn command(&self, cluster: bool) -> Cmd {
        debug_assert_eq!(self.named_keys, self.script.keys.len(), "keys missing");
        debug_assert_eq!(self.named_args, self.script.args.len(), "arguments missing");
        let mut command = redis::cmd("EVALSHA");
        command
            .arg(self.script.forms_for(cluster).single.get_hash())
            .arg(self.keys.len())
            .arg(&self.keys)
            .arg(&self.args);
        command
    }

    /// Runs the step alone, loading its script first if Redis does not have it (after a restart).
    pub async fn run(&self, connection: &mut Connection) -> RedisResult<StepReply> {
        let cluster = connection.is_cluster();
        let reply = match self.command(cluster).query_async(connection).await {
            Err(error) if error.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                let script = &self.script.forms_for(cluster).single;
                script.load_async(connection).await?;
                self.command(cluster)
                    .query_async::<String>(connection)
                    .await
            }
            result => result,
        }?;
        read_reply(&reply)
    }
}

/// One step's reply, a word or an error.
pub(super) fn read_value(value: Value) -> RedisResult<StepReply> {
    match value {
        Value::BulkString(bytes) => read_reply(&String::from_utf8_lossy(&bytes)),
        Value::SimpleString(word) => read_reply(&word),
        Value::ServerError(error) => Err(error.into()),
        other => Err(unexpected("step reply", format!("{other:?}"))),
    }
}

pub(super) fn unexpected(what: &'static str, detail: String) -> redis::RedisError {
    redis::RedisError::from((ErrorKind::UnexpectedReturnType, what, detail))
}

/// A step's reply word as a [`StepReply`]; any other is an error (and the entry is retried).
pub fn read_reply(word: &str) -> RedisResult<StepReply> {
    StepReply::parse(word).ok_or_else(|| unexpected("unknown step reply", word.to_owned()))
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    pub(in crate::bus) fn step_keys() -> StepKeys {
        StepKeys {
            group: "query".to_owned(),
            events: "e".to_owned(),
            dead: "d".to_owned(),
            attempts: "a".to_owned(),
        }
    }

    /// A command's words, as Redis gets them.
    pub(in crate::bus) fn words(command: &Cmd) -> Vec<String> {
        command
            .args_iter()
            .filter_map(|arg| match arg {
                redis::Arg::Simple(bytes) => Some(String::from_utf8_lossy(bytes).into_owned()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn every_reply_word_reads_back() {
        for reply in StepReply::ALL {
            assert_eq!(StepReply::parse(reply.as_str()), Some(reply));
        }
        assert_eq!(StepReply::parse("applied "), None);
    }

    #[test]
    fn keys_and_arguments_are_given_by_name_in_order() {
        static SCRIPT: std::sync::LazyLock<StepScript> = std::sync::LazyLock::new(|| {
            StepScript::new(
                &["pointer"],
                &["post_id", "title"],
                &["local function check() end\nlocal function apply() end\n"],
            )
        });
        let delivery = Delivery::new("s", ("1-0".to_owned(), Vec::new()), 1);
        let step = Step::new(&SCRIPT, &step_keys(), &delivery, "r")
            .key("pointer", "p")
            .arg("post_id", "x")
            .arg("title", "t");
        assert_eq!(
            words(&step.command(false))[2..],
            [
                "5", "s", "e", "d", "a", "p", "query", "1-0", "r", "1", "x", "t"
            ]
        );
        // The same keys and arguments to a Cluster, with the form whose `touch()` checks keys.
        let (single, cluster) = (words(&step.command(false)), words(&step.command(true)));
        assert_ne!(single[1], cluster[1]);
        assert_eq!(single[2..], cluster[2..]);
        assert!(SCRIPT.lua(false, false).contains("local CLUSTER = false\n"));
        assert!(SCRIPT.lua(true, true).contains("local CLUSTER = true\n"));
    }

    #[test]
    fn functions_nothing_calls_are_left_out() {
        let lua = "local function unused(a) return a end\n\
                   local function helper(a) return a end\n\
                   -- a comment naming unused()\n\
                   local function used(a)\n  return helper(a)\nend\n\
                   return used(1)\n";
        assert_eq!(
            keep_used(lua, &[]),
            "local function helper(a) return a end\n\
             local function used(a)\n  return helper(a)\nend\n\
             return used(1)\n"
        );
        assert!(mentions("x = view_post(base)", "view_post"));
        assert!(!mentions("x = view_posts(base)", "view_post"));
    }

    #[test]
    #[should_panic(expected = "next argument")]
    fn a_misnamed_argument_is_refused() {
        static SCRIPT: std::sync::LazyLock<StepScript> =
            std::sync::LazyLock::new(|| StepScript::new(&[], &["post_id"], &[]));
        let delivery = Delivery::new("s", ("1-0".to_owned(), Vec::new()), 1);
        let _ = Step::new(&SCRIPT, &step_keys(), &delivery, "r").arg("title", "t");
    }
}
