//! Failures a user can act on, each with the documented exit code the binary returns.
//!
//! Anything that is not a [`Failure`] exits with code 1 ("unexpected error"), except Redis
//! connection errors anywhere in the chain, which exit with 4.

use std::fmt;

/// The exit codes `blogctl` documents in its README.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// 2: the input or the usage was wrong; nothing was written.
    InvalidInput = 2,
    /// 3: the post (or comment) does not exist.
    NotFound = 3,
    /// 4: Redis could not be reached, or refused to work (full, read-only, loading).
    RedisUnreachable = 4,
    /// 5: a service did not answer within `--timeout`.
    ServiceTimeout = 5,
    /// 6: `blogctl status --check` found a group missing, too far behind or stuck.
    Unhealthy = 6,
}

/// Why an entry can never be applied (not JSON, a field missing, an unknown version): the
/// reason it is dead-lettered with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl fmt::Display for Malformed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An expected failure: a one-line message for stderr and the exit code that goes with it.
#[derive(Debug)]
pub struct Failure {
    pub code: ExitCode,
    pub message: String,
}

impl Failure {
    pub fn new(code: ExitCode, message: impl Into<String>) -> Self {
        Failure {
            code,
            message: message.into(),
        }
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Failure::new(ExitCode::InvalidInput, message)
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Failure::new(ExitCode::NotFound, message)
    }

    /// A service did not answer: name it and say how to start it.
    pub fn service_timeout(service: &str, what: &str, timeout: std::time::Duration) -> Self {
        Failure::new(
            ExitCode::ServiceTimeout,
            format!(
                "the {service} service did not {what} within {:.1}s; is it running? \
                 Start it with `blogctl serve {service}` (same --redis-url and --namespace)",
                timeout.as_secs_f64()
            ),
        )
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Failure {}

/// The exit code for an error report: the [`Failure`]'s own, 4 when Redis is unreachable or
/// refuses to work (full, read-only, loading), else 1.
pub fn exit_code(report: &color_eyre::Report) -> i32 {
    for cause in report.chain() {
        if let Some(failure) = cause.downcast_ref::<Failure>() {
            return failure.code as i32;
        }
        if let Some(error) = cause.downcast_ref::<redis::RedisError>()
            && is_unavailable(error)
        {
            return ExitCode::RedisUnreachable as i32;
        }
    }
    1
}

/// What to do about an error report, when Redis refused to work for a reason the user can fix.
pub fn hint(report: &color_eyre::Report) -> Option<&'static str> {
    report
        .chain()
        .filter_map(|cause| cause.downcast_ref::<redis::RedisError>())
        .find_map(refusal_hint)
}

/// Redis is up but refuses commands: a condition to wait out or fix, not a bug.
fn refusal_hint(error: &redis::RedisError) -> Option<&'static str> {
    // A script's command that the user may not run fails with ERR and this text.
    let script_refused = error
        .detail()
        .is_some_and(|detail| detail.starts_with("The user executing the script can't"));
    let no_permission = error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm);
    if script_refused || no_permission {
        return Some(
            "Redis's ACL does not permit this to the user: run each process as the user \
             `blogctl acl` made for it (--redis-url redis://<user>@..., --redis-password-file)",
        );
    }
    // A script touched a key of a slot a Cluster is moving, on the side where it is not.
    if error.to_string().contains("access a non local key") {
        return Some("the Redis Cluster does not serve the slot right now: try again in a moment");
    }
    match error.code()? {
        "OOM" => Some("Redis is full (maxmemory reached): free memory or raise maxmemory"),
        "READONLY" => Some("Redis is read-only (a replica?): point --redis-url at the primary"),
        "MISCONF" => {
            Some("Redis cannot persist to disk and refuses writes: check its disk and logs")
        }
        "LOADING" => Some("Redis is still loading its data: try again in a moment"),
        // A redirection the Cluster client still met after its retries: the slot was moving
        // or failing over meanwhile (its owner changed more than once, or was unreachable).
        "CLUSTERDOWN" | "TRYAGAIN" | "MOVED" | "ASK" => {
            Some("the Redis Cluster does not serve the slot right now: try again in a moment")
        }
        "BUSY" | "MASTERDOWN" | "NOREPLICAS" => {
            Some("Redis is busy or degraded: try again in a moment")
        }
        _ => None,
    }
}

/// Whether Redis is up but refuses the command (full, read-only, loading, ...).
pub fn is_refusal(error: &redis::RedisError) -> bool {
    refusal_hint(error).is_some()
}

/// Whether Redis is gone or refuses to work for now (full, read-only, loading): a condition to
/// wait out, not a failure of the command itself.
pub fn is_unavailable(error: &redis::RedisError) -> bool {
    is_connection_error(error) || refusal_hint(error).is_some()
}

/// Whether a Redis error means the connection is gone (as opposed to a command that failed).
pub fn is_connection_error(error: &redis::RedisError) -> bool {
    error.is_io_error()
        || error.is_connection_refusal()
        || error.is_connection_dropped()
        || error.is_timeout()
        || error.is_unrecoverable_error()
}

#[cfg(test)]
mod tests {
    use super::*;
    use redis::{ErrorKind, RedisError, ServerErrorKind};

    #[test]
    fn a_cluster_slot_moving_or_failing_over_is_waited_out() {
        for kind in [
            ServerErrorKind::Moved,
            ServerErrorKind::Ask,
            ServerErrorKind::TryAgain,
            ServerErrorKind::ClusterDown,
        ] {
            let error = RedisError::from((ErrorKind::Server(kind), "slot", "9748 x:1".into()));
            assert!(is_unavailable(&error), "{error}");
        }
        let script = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "script",
            "user_script:1: bad".into(),
        ));
        assert!(!is_unavailable(&script));
        let moving = RedisError::from((
            ErrorKind::Server(ServerErrorKind::ResponseError),
            "script",
            "Script attempted to access a non local key in a cluster node".into(),
        ));
        assert!(is_unavailable(&moving));
    }
}
