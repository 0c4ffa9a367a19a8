//! Opening Redis connections, with the timeouts and error messages users see.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use std::collections::BTreeMap;

use redis::{AsyncConnectionConfig, RedisResult, Value};

use crate::error::{ExitCode, Failure};

/// One connection, shared by the steps of one service or one client command.
pub type Connection = MultiplexedConnection;

/// How long opening a connection may take before Redis counts as unreachable: a little under
/// the 2 s the README promises, which include starting the process and reporting.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

/// Where Redis is, checked once so connecting again (after an outage) cannot fail on the URL.
#[derive(Debug, Clone)]
pub struct Redis {
    url: String,
    client: redis::Client,
}

impl Redis {
    /// Checks the URL; exit code 2 when it is not a Redis URL.
    pub fn open(url: &str) -> Result<Redis, Failure> {
        let client = redis::Client::open(url)
            .map_err(|error| Failure::invalid(format!("invalid --redis-url {url:?}: {error}")))?;
        Ok(Redis {
            url: url.to_owned(),
            client,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The client, for a connection of its own on another thread (a blocking one).
    pub fn client(&self) -> &redis::Client {
        &self.client
    }

    /// Connects; `response_timeout` bounds every later command (None: wait as long as it takes,
    /// for blocking reads that carry their own timeout).
    pub async fn try_connect(
        &self,
        response_timeout: Option<Duration>,
    ) -> redis::RedisResult<Connection> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(response_timeout);
        self.client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    /// Connects, or fails with exit code 4 and a message naming the URL.
    pub async fn connect(&self, response_timeout: Option<Duration>) -> Result<Connection, Failure> {
        self.try_connect(response_timeout)
            .await
            .map_err(|error| self.unreachable(&error))
    }

    /// The failure to report when Redis cannot be reached.
    pub fn unreachable(&self, error: &redis::RedisError) -> Failure {
        Failure::new(
            ExitCode::RedisUnreachable,
            format!(
                "cannot reach Redis at {}: {error}; start one (`redis-server`) or point \
                 --redis-url (BLOGCTL_REDIS_URL) at yours",
                self.url
            ),
        )
    }
}

/// What is wrong with Redis's `maxmemory-policy`, if anything. Any policy but `noeviction` lets
/// Redis delete keys when it is full: a remembered answer (a retry would then apply twice), a
/// generation pointer, a service's state. Read from `INFO memory`, which works where `CONFIG`
/// is not allowed.
pub async fn eviction_problem(connection: &mut Connection) -> RedisResult<Option<String>> {
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(connection)
        .await?;
    let policy = info
        .lines()
        .find_map(|line| line.strip_prefix("maxmemory_policy:"))
        .map(str::trim);
    Ok(match policy {
        None | Some("noeviction") => None,
        Some(policy) => Some(format!(
            "Redis's maxmemory-policy is {policy}: when full it may evict keys blogctl relies on \
             (remembered answers, generation pointers, state); set it to noeviction \
             (`redis-cli CONFIG SET maxmemory-policy noeviction`, and in redis.conf)"
        )),
    })
}

/// A reply that is a map (RESP3) or a flat list of names and values (RESP2), by name.
pub fn map_of(value: Value) -> BTreeMap<String, Value> {
    let pairs: Vec<(Value, Value)> = match value {
        Value::Map(pairs) => pairs,
        Value::Array(items) => {
            let mut items = items.into_iter();
            let mut pairs = Vec::new();
            while let (Some(name), Some(value)) = (items.next(), items.next()) {
                pairs.push((name, value));
            }
            pairs
        }
        _ => Vec::new(),
    };
    pairs
        .into_iter()
        .filter_map(|(name, value)| {
            redis::from_redis_value::<String>(name)
                .ok()
                .map(|name| (name, value))
        })
        .collect()
}
