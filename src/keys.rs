//! The Redis keyspace: every key name `blogctl` uses is built here.
//!
//! All keys of a namespace share one hash tag, `{<ns>.0}` (partition 0), so that every atomic
//! step (a Lua script touching a stream and a service's keys) stays in one Redis Cluster slot
//! once the log is split into partitions. Each service's keys live under its own prefix
//! `<ns>:<service>:{<ns>.0}:`, so a Redis ACL user per service can later be limited to them.

use crate::error::Failure;

/// Key names for one namespace.
#[derive(Debug, Clone)]
pub struct Keys {
    namespace: String,
}

impl Keys {
    /// Checks the namespace (letters, digits, `-`, `_`; 1 to 64 characters) and builds the names.
    pub fn new(namespace: &str) -> Result<Keys, Failure> {
        let valid = !namespace.is_empty()
            && namespace.len() <= 64
            && namespace
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if !valid {
            return Err(Failure::invalid(format!(
                "invalid namespace {namespace:?}: use 1 to 64 letters, digits, '-' or '_'"
            )));
        }
        Ok(Keys {
            namespace: namespace.to_owned(),
        })
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    fn tag(&self) -> String {
        format!("{{{}.0}}", self.namespace)
    }

    /// The event log: `<ns>:events:{<ns>.0}`.
    pub fn events(&self) -> String {
        format!("{}:events:{}", self.namespace, self.tag())
    }

    /// Dead letters: `<ns>:dead:{<ns>.0}`.
    pub fn dead(&self) -> String {
        format!("{}:dead:{}", self.namespace, self.tag())
    }

    /// The prefix every key of `service` starts with: `<ns>:<service>:{<ns>.0}:`.
    pub fn service_prefix(&self, service: &str) -> String {
        format!("{}:{}:{}:", self.namespace, service, self.tag())
    }

    /// The request stream a service reads its commands from.
    pub fn inbox(&self, service: &str) -> String {
        format!("{}inbox", self.service_prefix(service))
    }

    /// The lock a running `blogctl rebuild` of `service` holds (`blogctl trim` waits for it).
    pub fn rebuild_lock(&self, service: &str) -> String {
        format!("{}rebuilding", self.service_prefix(service))
    }

    /// Where the answer to one request is left for the client: `name` is the request's
    /// `reply_to` (a UUID the client picks), or its inbox entry id when it has none.
    pub fn reply(&self, name: &str) -> String {
        format!("{}:replies:{}:{}", self.namespace, self.tag(), name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_share_one_hash_tag() {
        let keys = Keys::new("blog").unwrap();
        assert_eq!(keys.events(), "blog:events:{blog.0}");
        assert_eq!(keys.dead(), "blog:dead:{blog.0}");
        assert_eq!(keys.inbox("posts"), "blog:posts:{blog.0}:inbox");
        assert_eq!(keys.reply("1-2"), "blog:replies:{blog.0}:1-2");
    }

    #[test]
    fn rejects_namespaces_that_would_break_key_names() {
        for bad in ["", "a:b", "a{b}", "a b", &"x".repeat(65)] {
            assert!(Keys::new(bad).is_err(), "{bad:?} accepted");
        }
    }
}
