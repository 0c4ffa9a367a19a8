//! Generations: where the rebuildable state of a service (comments, query) lives, so that
//! `blogctl rebuild` can fill a new one beside the live one and switch in one step.
//!
//! The state lives under `<prefix><generation>:` and `<prefix>generation` names the live
//! generation (`0` until the first rebuild). Every step of the service and every read resolves
//! that pointer inside its own script, so each sees one generation, whole.

use redis::Script;

use crate::bus::step_script;
use crate::keyspace::{Generation, Keys, Partition, Service, generation_lua};

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
}

/// Lua that sets `base` to the live generation's base: KEYS[`pointer`] is the pointer key,
/// ARGV[`prefix`] the service's prefix. The key functions of [`generation_lua`] come first.
pub fn lua_base(pointer: usize, prefix: usize) -> String {
    format!(
        "{}local base = generation_base(ARGV[{prefix}], redis.call('GET', KEYS[{pointer}]))\n",
        generation_lua()
    )
}

/// A step script for an event that touches a service's rebuildable state: `body` starts with
/// `base` set from KEYS[3] (the pointer) and ARGV[4] (the service's prefix).
pub fn event_step_script(body: &str) -> Script {
    step_script(&format!("{}{body}", lua_base(3, 4)))
}
