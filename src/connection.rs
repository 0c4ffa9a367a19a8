//! Opening Redis connections, to a single Redis or to a Redis Cluster through any of its nodes,
//! with the timeouts and error messages users see.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster_async::ClusterConnection;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use redis::{AsyncConnectionConfig, RedisResult, Value};

use crate::error::{ExitCode, Failure};

/// One connection, shared by the steps of one service or one client command: to a single Redis,
/// or to a Redis Cluster (found out when connecting), whose client follows `MOVED` and `ASK`.
/// Every key of a partition shares one hash tag, so every command and script of blogctl goes to
/// one node.
#[derive(Clone)]
pub enum Connection {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl redis::aio::ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, Value> {
        match self {
            Connection::Single(connection) => connection.req_packed_command(cmd),
            Connection::Cluster(connection) => connection.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Single(connection) => connection.req_packed_commands(cmd, offset, count),
            Connection::Cluster(connection) => connection.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Single(connection) => connection.get_db(),
            Connection::Cluster(connection) => connection.get_db(),
        }
    }
}

impl Connection {
    /// Whether this is a connection to a Redis Cluster.
    pub fn is_cluster(&self) -> bool {
        matches!(self, Connection::Cluster(_))
    }

    /// `INFO <sections>` of the Redis holding `key`: on a Cluster, of the master serving its
    /// slot (a plain `INFO` there would ask every master).
    pub async fn info(&mut self, key: &str, sections: &[&str]) -> RedisResult<String> {
        let mut command = redis::cmd("INFO");
        for section in sections {
            command.arg(*section);
        }
        self.query_at(key, command).await
    }

    /// A command that names no key (`INFO`, `SCAN`), sent to the Redis holding `key`: on a
    /// Cluster, to the master serving its slot, where a client would pick any node.
    pub async fn query_at<T: redis::FromRedisValue>(
        &mut self,
        key: &str,
        command: redis::Cmd,
    ) -> RedisResult<T> {
        match self {
            Connection::Single(connection) => command.query_async(connection).await,
            Connection::Cluster(connection) => {
                use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
                let route = Route::with_key(key, SlotAddr::Master);
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route));
                let reply = connection.route_command(command, routing).await?;
                Ok(redis::from_redis_value(reply)?)
            }
        }
    }

    /// `INFO <sections>` of every master, by address (on a single Redis, that one, as `""`),
    /// in address order.
    pub async fn info_of_masters(
        &mut self,
        sections: &[&str],
    ) -> RedisResult<Vec<(String, String)>> {
        let mut command = redis::cmd("INFO");
        for section in sections {
            command.arg(*section);
        }
        match self {
            Connection::Single(connection) => Ok(vec![(
                String::new(),
                command.query_async(connection).await?,
            )]),
            Connection::Cluster(connection) => {
                use redis::cluster_routing::{MultipleNodeRoutingInfo, RoutingInfo};
                let routing = RoutingInfo::MultiNode((MultipleNodeRoutingInfo::AllMasters, None));
                let reply = connection.route_command(command, routing).await?;
                let mut masters: Vec<(String, String)> = redis::from_redis_value(reply)?;
                masters.sort();
                Ok(masters)
            }
        }
    }
}

/// How long opening a connection may take before Redis counts as unreachable: a little under
/// the 2 s the README promises, which include starting the process and reporting.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(1500);

/// Where Redis is, checked once so connecting again (after an outage) cannot fail on the URL.
#[derive(Clone)]
pub struct Redis {
    /// The URL with its password hidden: the only form that is ever printed or logged.
    shown: String,
    /// The user it authenticates as (`default` unless the URL names one).
    user: String,
    client: redis::Client,
    /// The node the URL names, for a Cluster client.
    node: redis::ConnectionInfo,
    /// Whether it is a Redis Cluster: found out by the first connection (`INFO cluster`).
    cluster: Arc<OnceLock<bool>>,
    /// Whether TLS certificates were given (a Cluster client is not offered them yet).
    tls: bool,
}

impl Redis {
    /// Checks the URL; exit code 2 when it is not a Redis URL.
    pub fn open(url: &str) -> Result<Redis, Failure> {
        Redis::open_with(url, &Access::default())
    }

    /// [`Redis::open`], with the password read from a file and TLS certificates when given.
    pub fn open_with(url: &str, access: &Access) -> Result<Redis, Failure> {
        let password_file = access.password_file.as_deref();
        let shown = without_password(url);
        let info = redis::IntoConnectionInfo::into_connection_info(url).map_err(|error| {
            // A value that is not even `scheme://...` is not echoed: it may be a password.
            let value = if url.contains("://") {
                format!(" {shown:?}")
            } else {
                String::new()
            };
            Failure::invalid(format!(
                "invalid --redis-url{value}: {error} (expected redis://[user:password@]host:port[/db])"
            ))
        })?;
        let info = match password_file {
            Some(path) => {
                let password = std::fs::read_to_string(path).map_err(|error| {
                    Failure::invalid(format!(
                        "cannot read --redis-password-file {}: {error}",
                        path.display()
                    ))
                })?;
                let password = password.lines().next().unwrap_or_default().to_owned();
                let settings = info.redis_settings().clone().set_password(password);
                info.set_redis_settings(settings)
            }
            None => info,
        };
        let user = info
            .redis_settings()
            .username()
            .unwrap_or("default")
            .to_owned();
        // rustls (for rediss://) needs its cryptography chosen once per process: ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let node = info.clone();
        let certificates = tls_certificates(access)?;
        let tls = certificates.is_some();
        let client = match certificates {
            Some(certificates) => redis::Client::build_with_tls(info, certificates),
            None => redis::Client::open(info),
        }
        .map_err(|error| Failure::invalid(format!("invalid --redis-url {shown:?}: {error}")))?;
        Ok(Redis {
            shown,
            user,
            client,
            node,
            cluster: Arc::new(OnceLock::new()),
            tls,
        })
    }

    /// The URL, its password (if any) replaced by `***`.
    pub fn url(&self) -> &str {
        &self.shown
    }

    /// Connects; `response_timeout` bounds every later command (None: wait as long as it takes,
    /// for blocking reads that carry their own timeout). The first connection finds out whether
    /// the URL names a node of a Redis Cluster; from then on a Cluster gets a Cluster client.
    pub async fn try_connect(
        &self,
        response_timeout: Option<Duration>,
    ) -> redis::RedisResult<Connection> {
        if self.cluster.get() == Some(&true) {
            return self.connect_cluster(response_timeout).await;
        }
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(response_timeout);
        let mut single = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        if self.cluster.get().is_none() {
            let info: RedisResult<String> = redis::cmd("INFO")
                .arg("cluster")
                .query_async(&mut single)
                .await;
            let info = match info {
                // A user that may not ask: a Cluster would need it, so a single Redis.
                Err(error)
                    if error.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoPerm) =>
                {
                    String::new()
                }
                info => info?,
            };
            let cluster = info.lines().any(|line| line.trim() == "cluster_enabled:1");
            let _ = self.cluster.set(cluster);
            if cluster {
                return self.connect_cluster(response_timeout).await;
            }
        }
        Ok(Connection::Single(single))
    }

    async fn connect_cluster(
        &self,
        response_timeout: Option<Duration>,
    ) -> redis::RedisResult<Connection> {
        if self.tls {
            return Err(redis::RedisError::from((
                redis::ErrorKind::Client,
                "TLS certificates with a Redis Cluster",
                "not supported yet: use a single Redis for TLS, or a Cluster without it".to_owned(),
            )));
        }
        // Blocking reads carry their own timeout: a day stands for "as long as it takes".
        let response_timeout = response_timeout.unwrap_or(Duration::from_secs(86_400));
        // A few quick retries (redirections, a node coming back), not the crate's 16 of at least
        // 1.28 s each: a Cluster that does not serve the slot fails a command within seconds,
        // and a service waits it out with its own backoff.
        let client = redis::cluster::ClusterClientBuilder::new(vec![self.node.clone()])
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(response_timeout)
            .retries(3)
            .min_retry_wait(50)
            .max_retry_wait(500)
            .build()?;
        Ok(Connection::Cluster(client.get_async_connection().await?))
    }

    /// Connects, or fails with exit code 4 and a message naming the URL.
    pub async fn connect(&self, response_timeout: Option<Duration>) -> Result<Connection, Failure> {
        self.try_connect(response_timeout)
            .await
            .map_err(|error| self.unreachable(&error))
    }

    /// The failure to report when Redis cannot be reached, or refuses the credentials.
    pub fn unreachable(&self, error: &redis::RedisError) -> Failure {
        if error.code() == Some("NOPERM") {
            return Failure::new(
                ExitCode::RedisUnreachable,
                format!(
                    "Redis at {} does not permit user {} what connecting needs ({}): give it \
                     the rules `blogctl acl` prints",
                    self.shown,
                    self.user,
                    error.detail().unwrap_or("NOPERM")
                ),
            );
        }
        let refused_credentials = error.kind() == redis::ErrorKind::AuthenticationFailed
            || matches!(error.code(), Some("WRONGPASS" | "NOAUTH"));
        if refused_credentials {
            return Failure::new(
                ExitCode::RedisUnreachable,
                format!(
                    "authentication failed for user {} at {} ({}): check the user and password \
                     (--redis-url, or --redis-password-file)",
                    self.user,
                    self.shown,
                    error.code().unwrap_or("AUTH failed")
                ),
            );
        }
        let text = error.to_string();
        if ["certificate", "Certificate", "TLS", "tls", "handshake"]
            .iter()
            .any(|word| text.contains(word))
        {
            return Failure::new(
                ExitCode::RedisUnreachable,
                format!(
                    "the TLS handshake with Redis at {} failed: {error}; check --redis-ca (the \
                     authority that signed Redis's certificate) and, if Redis asks for one, \
                     --redis-cert and --redis-key",
                    self.shown
                ),
            );
        }
        Failure::new(
            ExitCode::RedisUnreachable,
            format!(
                "cannot reach Redis at {}: {error}; start one (`redis-server`) or point \
                 --redis-url (BLOGCTL_REDIS_URL) at yours",
                self.shown
            ),
        )
    }
}

/// What is wrong with Redis's `maxmemory-policy`, if anything. Any policy but `noeviction` lets
/// Redis delete keys when it is full: a remembered answer (a retry would then apply twice), a
/// generation pointer, a service's state. Read from `INFO memory`, which works where `CONFIG`
/// is not allowed.
pub async fn eviction_problem(
    connection: &mut Connection,
    key: &str,
) -> RedisResult<Option<String>> {
    let info = connection.info(key, &["memory"]).await?;
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

/// How to prove who we are to Redis, and whom to trust, beyond the URL (`redis://` or
/// `rediss://` for TLS).
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// A file whose first line is the password.
    pub password_file: Option<PathBuf>,
    /// PEM file of the certificate authority to trust for `rediss://` (else the system's).
    pub tls_ca: Option<PathBuf>,
    /// PEM files of a client certificate and its key, for Redis servers that ask for one.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

/// The TLS certificates `access` names, read; `None` when it names none.
fn tls_certificates(access: &Access) -> Result<Option<redis::TlsCertificates>, Failure> {
    let read = |path: &Option<PathBuf>, flag: &str| -> Result<Option<Vec<u8>>, Failure> {
        path.as_ref()
            .map(|path| {
                std::fs::read(path).map_err(|error| {
                    Failure::invalid(format!("cannot read {flag} {}: {error}", path.display()))
                })
            })
            .transpose()
    };
    let root_cert = read(&access.tls_ca, "--redis-ca")?;
    let client_tls = match (
        read(&access.tls_cert, "--redis-cert")?,
        read(&access.tls_key, "--redis-key")?,
    ) {
        (Some(client_cert), Some(client_key)) => Some(redis::ClientTlsConfig {
            client_cert,
            client_key,
        }),
        (None, None) => None,
        _ => {
            return Err(Failure::invalid(
                "--redis-cert and --redis-key go together: give both or neither",
            ));
        }
    };
    if root_cert.is_none() && client_tls.is_none() {
        return Ok(None);
    }
    Ok(Some(redis::TlsCertificates {
        client_tls,
        root_cert,
    }))
}

/// Shows the URL without its password (the client's own form would show it).
impl std::fmt::Debug for Redis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redis")
            .field("url", &self.shown)
            .field("user", &self.user)
            .finish()
    }
}

/// `url` with the password of its user part replaced by `***` (`redis://user:***@host:6379`),
/// as far as it can be found even in a URL that does not parse.
pub fn without_password(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let user = &rest[..at];
    let shown_user = match user.split_once(':') {
        Some((name, _)) => format!("{name}:***"),
        None => user.to_owned(),
    };
    format!("{scheme}://{shown_user}{}", &rest[at..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_never_shown() {
        assert_eq!(
            without_password("redis://user:s3cret@127.0.0.1:1/0"),
            "redis://user:***@127.0.0.1:1/0"
        );
        assert_eq!(
            without_password("rediss://:p@ss@host"),
            "rediss://:***@host"
        );
        assert_eq!(
            without_password("redis://127.0.0.1:6379"),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(without_password("redis://user@host"), "redis://user@host");
        assert_eq!(without_password("not a url s3cret"), "not a url s3cret");
    }
}
