//! Steps of one read in one script call: the batch form of a [`StepScript`].

use redis::{Cmd, RedisResult, Value};

#[cfg(doc)]
use super::step::StepScript;
use super::step::{Step, StepReply, read_value, unexpected};
use crate::connection::Connection;

impl Step {
    /// The step's keys and arguments that a batch gives once (`shared`), or those it gives
    /// for each step.
    fn part(
        &self,
        shared: bool,
    ) -> (
        impl Iterator<Item = &Vec<u8>>,
        impl Iterator<Item = &Vec<u8>>,
    ) {
        fn pick<'a>(
            values: &'a [Vec<u8>],
            marks: &'a [bool],
            shared: bool,
        ) -> impl Iterator<Item = &'a Vec<u8>> {
            values
                .iter()
                .zip(marks)
                .filter_map(move |(value, &mark)| (mark == shared).then_some(value))
        }
        (
            pick(&self.keys, &self.script.key_shared, shared),
            pick(&self.args, &self.script.arg_shared, shared),
        )
    }

    /// Whether `other` can join a batch of this step: the same script, and the same values
    /// where a batch gives them once.
    fn batches_with(&self, other: &Step) -> bool {
        let ((keys, args), (other_keys, other_args)) = (self.part(true), other.part(true));
        std::ptr::eq(self.script, other.script) && keys.eq(other_keys) && args.eq(other_args)
    }
}

/// Steps of one script, in order, that share their shared keys and arguments (entries of one
/// stream for one consumer): sent as one call of the script's batch form, which runs each step
/// in turn, each checked, claimed and protected on its own, and answers each step's reply.
#[derive(Debug)]
pub(super) struct Batch {
    steps: Vec<Step>,
}

impl Batch {
    pub(super) fn new(step: Step) -> Batch {
        Batch { steps: vec![step] }
    }

    /// Adds `step` when it can join the batch; gives it back otherwise.
    pub(super) fn push(&mut self, step: Step) -> Result<(), Step> {
        if self.steps[0].batches_with(&step) {
            self.steps.push(step);
            Ok(())
        } else {
            Err(step)
        }
    }

    pub(super) fn len(&self) -> usize {
        self.steps.len()
    }

    /// One step alone runs the single form; more, the batch form: the shared keys once, then
    /// each step's own, and the same for the arguments.
    pub(super) fn command(&self, cluster: bool) -> Cmd {
        let first = &self.steps[0];
        if self.steps.len() == 1 {
            return first.command(cluster);
        }
        let (keys, args) = first.part(true);
        let (mut keys, mut args): (Vec<&Vec<u8>>, Vec<&Vec<u8>>) = (keys.collect(), args.collect());
        for step in &self.steps {
            let (own_keys, own_args) = step.part(false);
            keys.extend(own_keys);
            args.extend(own_args);
        }
        let mut command = redis::cmd("EVALSHA");
        command
            .arg(first.script.forms_for(cluster).batch.get_hash())
            .arg(keys.len())
            .arg(keys)
            .arg(args);
        command
    }

    /// Each step's reply, in order, from the reply to [`Batch::command`]: an error of the
    /// whole call is every step's.
    pub(super) fn replies(&self, result: RedisResult<Value>) -> Vec<RedisResult<StepReply>> {
        let count = self.steps.len();
        let values = match result {
            Ok(value) if count == 1 => vec![Ok(value)],
            Ok(Value::Array(values)) if values.len() == count => {
                values.into_iter().map(Ok).collect()
            }
            Ok(other) => vec![Err(unexpected("step batch reply", format!("{other:?}"))); count],
            Err(error) => vec![Err(error); count],
        };
        values
            .into_iter()
            .map(|value| value.and_then(read_value))
            .collect()
    }

    /// Loads the script's batch form (after `NOSCRIPT`: a Redis restarted or flushed).
    pub(super) async fn load(&self, connection: &mut Connection) -> RedisResult<()> {
        let forms = self.steps[0].script.forms_for(connection.is_cluster());
        let form = if self.steps.len() == 1 {
            &forms.single
        } else {
            &forms.batch
        };
        form.load_async(connection).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::entry::Delivery;
    use crate::bus::step::StepScript;
    use crate::bus::step::tests::{step_keys, words};

    /// A script on a generation: `pointer` and `prefix` shared, `reply` and `title` each step's.
    static SHARING: std::sync::LazyLock<StepScript> = std::sync::LazyLock::new(|| {
        StepScript::new(
            &["pointer", "reply"],
            &["prefix", "title"],
            &["local function check() end\nlocal function apply() end\n"],
        )
        .sharing(&["pointer", "prefix"])
    });

    fn sharing_step(id: &str, pointer: &str) -> Step {
        let delivery = Delivery::new("s", (id.to_owned(), Vec::new()), 1);
        Step::new(&SHARING, &step_keys(), &delivery, &format!("r{id}"))
            .key("pointer", pointer)
            .key("reply", format!("reply{id}"))
            .arg("prefix", "x:")
            .arg("title", format!("t{id}"))
    }

    #[test]
    fn a_batch_gives_the_shared_keys_and_arguments_once_then_each_steps_own() {
        let mut batch = Batch::new(sharing_step("1-0", "p"));
        batch.push(sharing_step("2-0", "p")).unwrap();
        let command = batch.command(false);
        assert_eq!(
            words(&command)[1],
            SHARING.forms_for(false).batch.get_hash()
        );
        assert_eq!(
            words(&command)[2..],
            [
                "7", "s", "e", "d", "a", "p", "reply1-0", "reply2-0", "query", "1", "x:", "1-0",
                "r1-0", "t1-0", "2-0", "r2-0", "t2-0"
            ]
        );
        let lua = SHARING.lua(true, false);
        assert!(lua.contains("local pointer = KEYS[5]\n"));
        assert!(lua.contains("  reply = KEYS[k + 1]\n"));
        assert!(lua.contains("local prefix = ARGV[3]\n"));
        assert!(lua.contains("  title = ARGV[a + 3]\n"));
        // Each entry's names are the call's locals, which `one` sets for each entry.
        assert!(lua.contains("local reply, entry_id, request_id, title\n"));
        assert!(lua.contains("local SHARED_KEYS, SHARED_ARGS = 5, 3\n"));
        assert!(lua.contains("local ENTRY_KEYS, ENTRY_ARGS = 1, 3\n"));
        // One step alone is sent as the single form.
        let alone = Batch::new(sharing_step("1-0", "p"));
        assert_eq!(
            words(&alone.command(false)),
            words(&sharing_step("1-0", "p").command(false))
        );
    }

    #[test]
    fn only_steps_of_one_script_with_the_same_shared_values_batch() {
        let mut batch = Batch::new(sharing_step("1-0", "p"));
        assert!(batch.push(sharing_step("2-0", "other pointer")).is_err());
        static OTHER: std::sync::LazyLock<StepScript> =
            std::sync::LazyLock::new(|| StepScript::new(&[], &[], &[]));
        let delivery = Delivery::new("s", ("3-0".to_owned(), Vec::new()), 1);
        assert!(
            batch
                .push(Step::new(&OTHER, &step_keys(), &delivery, "r"))
                .is_err()
        );
        assert_eq!(batch.len(), 1);
    }

    #[test]
    fn each_step_of_a_batch_gets_its_own_reply() {
        let mut batch = Batch::new(sharing_step("1-0", "p"));
        batch.push(sharing_step("2-0", "p")).unwrap();
        let replies = batch.replies(Ok(Value::Array(vec![
            Value::BulkString(b"applied".to_vec()),
            Value::BulkString(b"stale".to_vec()),
        ])));
        assert_eq!(replies[0].as_ref().unwrap(), &StepReply::Applied);
        assert_eq!(replies[1].as_ref().unwrap(), &StepReply::Stale);
        // A reply of the wrong length fails every step: none is taken for another's.
        let short = batch.replies(Ok(Value::Array(vec![Value::BulkString(
            b"applied".to_vec(),
        )])));
        assert!(short.iter().all(Result::is_err));
    }
}
