//! Test helpers: a private redis-server per test, the real `blogctl` binary, polling.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use blogctl::keyspace::{self, Keys, Partition, Partitions};

/// The services that produce events, each on a stream of its own.
pub const PRODUCERS: [&str; 3] = ["posts", "comments", "moderation"];

/// How long any condition may take before a test fails.
pub const PATIENCE: Duration = Duration::from_secs(20);

/// A redis-server on a free loopback port in a temporary directory, killed on drop.
pub struct RedisServer {
    pub port: u16,
    args: Vec<String>,
    /// `user:password@` to probe it with, when its `default` user is off.
    credentials: String,
    process: Mutex<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        RedisServer::start_with(&[])
    }

    /// Starts with extra `redis-server` arguments (e.g. `--appendonly yes`).
    pub fn start_with(extra: &[&str]) -> RedisServer {
        RedisServer::start_probed_as(extra, "")
    }

    /// Starts with extra arguments that turn the `default` user off (an `--aclfile`): it is
    /// probed as `user`, with the password in `password_file`.
    pub fn start_with_user(extra: &[&str], user: &str, password_file: &Path) -> RedisServer {
        let password = std::fs::read_to_string(password_file).unwrap();
        RedisServer::start_probed_as(extra, &format!("{user}:{}@", password.trim()))
    }

    fn start_probed_as(extra: &[&str], credentials: &str) -> RedisServer {
        RedisServer::start_on(free_port, extra, credentials)
    }

    /// A node of a Redis Cluster: `cluster-enabled`, on a port whose cluster bus port (+10000)
    /// is free too; `extra` arguments after.
    pub fn start_cluster_node(extra: &[&str]) -> RedisServer {
        let mut args = vec![
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            "2000",
        ];
        args.extend_from_slice(extra);
        RedisServer::start_on(free_cluster_port, &args, "")
    }

    fn start_on(port: fn() -> u16, extra: &[&str], credentials: &str) -> RedisServer {
        for _ in 0..10 {
            let dir = tempfile::tempdir().expect("temp dir");
            // The port is free when probed but not held: another test may bind it before this
            // redis-server does. Then our child exits (address in use) and we try another port.
            let port = port();
            let process = spawn_redis(dir.path(), port, extra);
            let args = extra.iter().map(|arg| arg.to_string()).collect();
            let server = RedisServer {
                port,
                args,
                credentials: credentials.to_owned(),
                process: Mutex::new(process),
                dir,
            };
            if server.wait_until_serving() {
                return server;
            }
        }
        panic!("could not start redis-server");
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url())
            .unwrap()
            .get_connection()
            .expect("connect to test redis")
    }

    /// The URL that logs in as `user` (made by [`RedisServer::add_user`]).
    pub fn url_as(&self, user: &str) -> String {
        format!(
            "redis://{user}:{}@127.0.0.1:{}",
            password_of(user),
            self.port
        )
    }

    /// A connection as `user` (made by [`RedisServer::add_user`]).
    pub fn connection_as(&self, user: &str) -> redis::Connection {
        redis::Client::open(self.url_as(user))
            .unwrap()
            .get_connection()
            .expect("connect to test redis as a user")
    }

    /// Creates a Redis user with `ACL SETUSER`, as the default user: on, with a password of its
    /// own, allowed `rules` (ACL rules such as `%R~<pattern>` or `+get`) and nothing else.
    pub fn add_user(&self, user: &str, rules: &[&str]) {
        let _: () = redis::cmd("ACL")
            .arg("SETUSER")
            .arg(user)
            .arg("reset")
            .arg("on")
            .arg(format!(">{}", password_of(user)))
            .arg(rules)
            .query(&mut self.connection())
            .unwrap();
    }

    /// `INFO commandstats`: for each command Redis ran since its start (or `CONFIG RESETSTAT`),
    /// by name (`evalsha_ro`, `client|setinfo`), the fields of its line (`calls`, `failed_calls`).
    pub fn command_stats(&self) -> BTreeMap<String, BTreeMap<String, u64>> {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query(&mut self.connection())
            .unwrap();
        info.lines()
            .filter_map(|line| line.strip_prefix("cmdstat_"))
            .filter_map(|line| line.trim().split_once(':'))
            .map(|(command, fields)| {
                let fields = fields
                    .split(',')
                    .filter_map(|field| field.split_once('='))
                    .filter_map(|(name, value)| Some((name.to_owned(), value.parse().ok()?)))
                    .collect();
                (command.to_owned(), fields)
            })
            .collect()
    }

    /// Waits until our own child answers on the port, ready (PING, so not while it loads its
    /// data). False when the child exited (the port was taken) or it took too long.
    fn wait_until_serving(&self) -> bool {
        let own = self.process.lock().unwrap().id();
        let deadline = Instant::now() + PATIENCE;
        loop {
            // A PING answer alone could come from another test's server on this port.
            if self.answering_process() == Some(own) {
                return true;
            }
            let exited = self.process.lock().unwrap().try_wait().unwrap().is_some();
            if exited || Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The pid of the redis-server that answers PING on our port, if one does.
    fn answering_process(&self) -> Option<u32> {
        let url = format!("redis://{}127.0.0.1:{}", self.credentials, self.port);
        let client = redis::Client::open(url).ok()?;
        // Bounded, in case whatever holds the port accepts and never answers.
        let mut connection = client
            .get_connection_with_timeout(Duration::from_secs(1))
            .ok()?;
        connection
            .set_read_timeout(Some(Duration::from_secs(1)))
            .ok()?;
        let info: String = redis::cmd("INFO")
            .arg("server")
            .query(&mut connection)
            .ok()?;
        redis::cmd("PING").query::<String>(&mut connection).ok()?;
        info.lines()
            .find_map(|line| line.strip_prefix("process_id:"))?
            .trim()
            .parse()
            .ok()
    }

    /// Kills redis-server (SIGKILL), keeping its directory, until [`RedisServer::start_again`].
    pub fn stop(&self) {
        let mut process = self.process.lock().unwrap();
        let _ = process.kill();
        let _ = process.wait();
    }

    /// Starts a stopped redis-server again on the same port and directory.
    pub fn start_again(&self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        *self.process.lock().unwrap() = spawn_redis(self.dir.path(), self.port, &args);
        self.assert_back();
    }

    /// Kills redis-server (SIGKILL, keeping its directory) and starts it again on the same port.
    pub fn restart(&self) {
        let mut process = self.process.lock().unwrap();
        let _ = process.kill();
        let _ = process.wait();
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        *process = spawn_redis(self.dir.path(), self.port, &args);
        drop(process);
        self.assert_back();
    }

    /// After a start on the same port: the services under test know only this port, so a
    /// server of another test that took it meanwhile fails the test instead of being shared.
    /// A node of a Cluster also waits until the Cluster serves every slot again.
    fn assert_back(&self) {
        assert!(
            self.wait_until_serving(),
            "redis-server did not come back on port {} (another process took it?); log:\n{}",
            self.port,
            std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
        );
        if self.args.iter().any(|arg| arg == "--cluster-enabled") {
            let ok = wait_until(PATIENCE, || {
                redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query::<String>(&mut self.connection())
                    .is_ok_and(|info| info.contains("cluster_state:ok"))
            });
            assert!(ok, "the Cluster did not serve every slot again");
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let process = self
            .process
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let _ = process.kill();
        let _ = process.wait();
        // A failing test shows what its servers logged last (failovers, a node that restarted
        // or lost a key) beside its panic, before the directory goes.
        if std::thread::panicking() {
            let log =
                std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
            eprintln!(
                "--- last lines of redis.log of the server on port {}:\n{}",
                self.port,
                tail.join("\n")
            );
        }
    }
}

/// Lines of each server's log a failing test prints.
const LOG_TAIL_LINES: usize = 40;

fn spawn_redis(dir: &Path, port: u16, extra: &[&str]) -> Child {
    Command::new("redis-server")
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir)
        .args(["--logfile", "redis.log"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server must be installed (scripts/test.sh installs it)")
}

/// The password [`RedisServer::add_user`] gives `user`.
fn password_of(user: &str) -> String {
    format!("{user}-s3cret")
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free loopback port p, 20000 to 40000, whose p + 10000 (a Cluster node's bus) is free too.
pub fn free_cluster_port() -> u16 {
    let mut rng = Rng::new(u64::from(std::process::id()) ^ free_port() as u64);
    loop {
        let port = 20_000 + rng.below(20_000) as u16;
        let free = |port: u16| TcpListener::bind(("127.0.0.1", port)).is_ok();
        if free(port) && free(port + 10_000) {
            return port;
        }
    }
}

/// Polls `condition` every 10 ms until it holds (true) or `limit` passes (false).
pub fn wait_until(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The real binary, pointed at a Redis and a namespace, with nothing inherited from the caller.
pub fn blogctl(url: &str, namespace: &str) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_blogctl"));
    command
        .env("BLOGCTL_REDIS_URL", url)
        .env("BLOGCTL_NAMESPACE", namespace)
        .env_remove("BLOGCTL_BANNED_WORDS")
        .env_remove("BLOGCTL_PARTITIONS")
        .env_remove("BLOGCTL_BUSY_POLL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    command
}

/// The result of one client command.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Run {
        Run {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

/// A stream entry as XRANGE returns it: id, then field names and values as bytes.
type RawEntry = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// A blog under test: one Redis, one namespace, the services started by the test.
pub struct Blog {
    pub redis: RedisServer,
    pub namespace: String,
    /// With a Redis user per process ([`Blog::with_users`]): the directory of their passwords.
    pub passwords: Option<tempfile::TempDir>,
    /// On a Redis Cluster: the nodes besides `redis` (the one serving the namespace's slot).
    pub others: Vec<RedisServer>,
    /// The partition count every command is given (`BLOGCTL_PARTITIONS`), if any.
    pub partitions: Option<u32>,
}

impl Blog {
    pub fn new() -> Blog {
        Blog::on(RedisServer::start())
    }

    pub fn on(redis: RedisServer) -> Blog {
        Blog {
            redis,
            namespace: "blog".to_owned(),
            passwords: None,
            others: Vec::new(),
            partitions: None,
        }
    }

    /// This blog with `count` partitions: every command it runs is given `--partitions`.
    pub fn with_partitions(self, count: u32) -> Blog {
        Blog {
            partitions: Some(count),
            ..self
        }
    }

    /// `command` with the blog's partition count, if it has one.
    fn partitioned(&self, mut command: Command) -> Command {
        if let Some(count) = self.partitions {
            command.env("BLOGCTL_PARTITIONS", count.to_string());
        }
        command
    }

    /// A blog on a Redis whose ACL file is the one `blogctl acl` prints (kept across restarts),
    /// its `default` user on, for the tests to inspect Redis with: every `serve` of one service runs as
    /// that service's user, client commands as the client's, operator commands as the
    /// operator's.
    pub fn with_users() -> Blog {
        Blog::with_users_and(&[])
    }

    /// [`Blog::with_users`] with extra `redis-server` arguments.
    pub fn with_users_and(extra: &[&str]) -> Blog {
        Blog::with_users_on(extra, |args| Blog::on(RedisServer::start_with(args)))
    }

    /// [`Blog::with_users_and`] on the blog `start` makes from the Redis arguments.
    pub fn with_users_on(extra: &[&str], start: impl FnOnce(&[&str]) -> Blog) -> Blog {
        let passwords = tempfile::tempdir().unwrap();
        let acl = blogctl("redis://127.0.0.1:1", "blog")
            .args(["acl", "--passwords"])
            .arg(passwords.path())
            .output()
            .expect("run blogctl acl");
        assert!(acl.status.success(), "{acl:?}");
        let file = passwords.path().join("users.acl");
        // Its `default` user, off, replaced by the one the tests inspect Redis with.
        let rules: String = String::from_utf8(acl.stdout)
            .unwrap()
            .lines()
            .filter(|line| *line != "user default off")
            .map(|line| format!("{line}\n"))
            .collect();
        std::fs::write(
            &file,
            format!("user default on nopass ~* &* +@all\n{rules}"),
        )
        .unwrap();
        let mut args = vec!["--aclfile", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        Blog {
            passwords: Some(passwords),
            ..start(&args)
        }
    }

    pub fn command(&self) -> Command {
        self.partitioned(blogctl(&self.redis.url(), &self.namespace))
    }

    /// [`Blog::command`] as `user` (`<ns>-<role>`), with its password file.
    pub fn command_as(&self, user: &str) -> Command {
        let passwords = self.passwords.as_ref().expect("a blog with users");
        let url = format!("redis://{user}@127.0.0.1:{}", self.redis.port);
        let mut command = self.partitioned(blogctl(&url, &self.namespace));
        command.env(
            "BLOGCTL_REDIS_PASSWORD_FILE",
            passwords.path().join(format!("{user}.password")),
        );
        command
    }

    /// The command for `args`: as the user it needs when the blog has users.
    fn command_for(&self, args: &[&str]) -> Command {
        if self.passwords.is_none() {
            return self.command();
        }
        let role = match args.iter().find(|arg| !arg.starts_with('-')).copied() {
            Some("post" | "comment") => "client",
            Some("status" | "events" | "dead" | "trim" | "rebuild") => "operator",
            _ => return self.command(),
        };
        self.command_as(&format!("{}-{role}", self.namespace))
    }

    /// A connection to the blog's Redis as `user`.
    pub fn connection_as(&self, user: &str) -> redis::Connection {
        let passwords = self.passwords.as_ref().expect("a blog with users");
        let password =
            std::fs::read_to_string(passwords.path().join(format!("{user}.password"))).unwrap();
        let url = format!(
            "redis://{user}:{}@127.0.0.1:{}",
            password.trim(),
            self.redis.port
        );
        redis::Client::open(url).unwrap().get_connection().unwrap()
    }

    /// Runs a client command to completion.
    pub fn run(&self, args: &[&str]) -> Run {
        self.command_for(args)
            .args(args)
            .output()
            .expect("run blogctl")
            .into()
    }

    /// Runs a client command as Redis user `user` (made by [`RedisServer::add_user`]).
    pub fn run_as(&self, user: &str, args: &[&str]) -> Run {
        self.command()
            .env("BLOGCTL_REDIS_URL", self.redis.url_as(user))
            .args(args)
            .output()
            .expect("run blogctl")
            .into()
    }

    /// Runs a client command with `input` on its stdin.
    pub fn run_with_stdin(&self, args: &[&str], input: &[u8]) -> Run {
        use std::io::Write;
        let mut child = self
            .command_for(args)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run blogctl");
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().expect("run blogctl").into()
    }

    /// Runs a client command that must succeed, and returns its stdout, trimmed.
    pub fn ok(&self, args: &[&str]) -> String {
        let run = self.run(args);
        assert_eq!(run.code, 0, "blogctl {args:?} failed: {run:?}");
        run.stdout.trim().to_owned()
    }

    /// Comments with `--wait` and returns the final status it printed.
    pub fn verdict(&self, post: &str, content: &str) -> String {
        let printed = self.ok(&["comment", "create", "--wait", post, content]);
        let (_, status) = printed.split_once(' ').expect("an id and a status");
        status.to_owned()
    }

    /// Starts `blogctl serve <args>` (stopped on drop).
    pub fn serve(&self, args: &[&str]) -> Service {
        self.serve_with(args, &[])
    }

    /// [`Blog::serve`] with more environment variables.
    pub fn serve_with(&self, args: &[&str], env: &[(&str, String)]) -> Service {
        let mut command = match &self.passwords {
            // With users, one service per process, as its own user.
            Some(_) => {
                let services: Vec<&&str> = args
                    .iter()
                    .filter(|arg| keyspace::Service::ALL.iter().any(|s| s.name() == **arg))
                    .collect();
                assert_eq!(services.len(), 1, "with users, serve one service: {args:?}");
                self.command_as(&format!("{}-{}", self.namespace, services[0]))
            }
            None => self.command(),
        };
        command
            .arg("serve")
            .args(args)
            .envs(env.iter().map(|(name, value)| (*name, value.as_str())));
        Service::start(command)
    }

    /// The blog's key names, from the same module the services use.
    pub fn keys(&self) -> Keys {
        Keys::new(&self.namespace).unwrap()
    }

    /// The events stream `producer` writes (each producing service has its own).
    pub fn events(&self, producer: &str) -> String {
        self.keys()
            .events(service_named(producer), Partition::FIRST)
    }

    /// The blog's partitions: as many as every command is given, else the one.
    pub fn every_partition(&self) -> Vec<Partition> {
        Partitions::new(self.partitions.unwrap_or(1))
            .expect("a valid partition count")
            .all()
            .collect()
    }

    /// The events stream `producer` writes in every partition.
    pub fn events_everywhere(&self, producer: &str) -> Vec<String> {
        let keys = self.keys();
        self.every_partition()
            .into_iter()
            .map(|partition| keys.events(service_named(producer), partition))
            .collect()
    }

    /// How many entries the events streams of all producers hold together, in every partition.
    pub fn events_count(&self) -> usize {
        let mut connection = self.connection();
        PRODUCERS
            .iter()
            .flat_map(|producer| self.events_everywhere(producer))
            .map(|stream| entries_with(&mut *connection, &stream).len())
            .sum()
    }

    pub fn dead(&self) -> String {
        self.keys().dead(Partition::FIRST)
    }

    /// The dead letters of every partition, as (id, fields).
    pub fn dead_letters(&self) -> Vec<(String, Vec<(String, String)>)> {
        let (keys, mut connection) = (self.keys(), self.connection());
        self.every_partition()
            .into_iter()
            .flat_map(|partition| entries_with(&mut *connection, &keys.dead(partition)))
            .collect()
    }

    /// The tries `service` counts for redelivered entries, in every partition, by
    /// `<stream>/<entry id>`.
    pub fn counted_tries(&self, service: &str) -> BTreeMap<String, String> {
        let (keys, mut connection) = (self.keys(), self.connection());
        self.every_partition()
            .into_iter()
            .flat_map(|partition| {
                redis::cmd("HGETALL")
                    .arg(keys.attempts(service_named(service), partition))
                    .query::<BTreeMap<String, String>>(&mut *connection)
                    .unwrap()
            })
            .collect()
    }

    pub fn inbox(&self, service: &str) -> String {
        self.keys().inbox(service_named(service), Partition::FIRST)
    }

    pub fn attempts(&self, service: &str) -> String {
        self.keys()
            .attempts(service_named(service), Partition::FIRST)
    }

    /// Where `service` remembers its answer to `request_id`.
    pub fn answer(&self, service: &str, request_id: &str) -> String {
        self.keys()
            .answer(service_named(service), Partition::FIRST, request_id)
    }

    /// The prefix of generation `number` of a rebuildable service's state.
    pub fn generation(&self, service: &str, number: u64) -> String {
        self.keys()
            .generation(service_named(service), Partition::FIRST, number)
            .base()
            .to_owned()
    }

    /// All entries of a stream, as (id, fields).
    pub fn entries(&self, stream: &str) -> Vec<(String, Vec<(String, String)>)> {
        entries_with(&mut *self.connection(), stream)
    }

    /// Every Redis of the blog: its one, or every node of its Cluster.
    pub fn nodes(&self) -> Vec<&RedisServer> {
        std::iter::once(&self.redis).chain(&self.others).collect()
    }

    /// A connection that reaches every key of the blog: to its Redis, or on a Cluster one that
    /// sends each command to the node serving its key (following `MOVED`).
    pub fn connection(&self) -> Box<dyn redis::ConnectionLike> {
        if self.others.is_empty() {
            return Box::new(self.redis.connection());
        }
        let urls: Vec<String> = self.nodes().iter().map(|node| node.url()).collect();
        let client = redis::cluster::ClusterClient::new(urls).unwrap();
        Box::new(
            client
                .get_connection()
                .expect("connect to the test Cluster"),
        )
    }

    /// The Redis holding `partition`'s keys: the blog's one, or on a Cluster the master serving
    /// the partition's slot (the others answer `MOVED`).
    pub fn node_of(&self, partition: Partition) -> &RedisServer {
        let key = self.keys().dead(partition);
        self.nodes()
            .into_iter()
            .find(|node| {
                redis::cmd("EXISTS")
                    .arg(&key)
                    .query::<i64>(&mut node.connection())
                    .is_ok()
            })
            .unwrap_or_else(|| panic!("no node serves partition {partition}"))
    }

    /// Events of one type on the streams of the service that produces it, in every partition,
    /// their `data` parsed.
    pub fn events_of(&self, kind: &str) -> Vec<serde_json::Value> {
        let mut connection = self.connection();
        self.events_everywhere(producer_of(kind))
            .iter()
            .flat_map(|stream| entries_with(&mut *connection, stream))
            .filter(|(_, fields)| fields.iter().any(|(k, v)| k == "type" && v == kind))
            .filter(|(_, fields)| fields.iter().any(|(k, v)| k == "producer" && v != "test"))
            .map(|(_, fields)| {
                let data = fields
                    .iter()
                    .find(|(k, _)| k == "data")
                    .map(|(_, v)| v.clone())
                    .unwrap();
                serde_json::from_str(&data).unwrap()
            })
            .collect()
    }

    /// The titles of the posts of a view, in its order.
    pub fn titles(view: &serde_json::Value) -> Vec<String> {
        view.as_array()
            .unwrap()
            .iter()
            .map(|post| post["title"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The view as `post list --json` shows it.
    pub fn view(&self) -> serde_json::Value {
        serde_json::from_str(&self.ok(&["post", "list", "--json"])).unwrap()
    }

    /// Waits until every comment in the view has a final status and the view holds `comments`.
    pub fn wait_for_view(&self, posts: usize, comments: usize) -> serde_json::Value {
        self.wait_for_view_within(posts, comments, PATIENCE)
    }

    /// [`Blog::wait_for_view`] with a limit of its own.
    pub fn wait_for_view_within(
        &self,
        posts: usize,
        comments: usize,
        limit: Duration,
    ) -> serde_json::Value {
        let mut view = serde_json::Value::Null;
        let settled = wait_until(limit, || {
            view = self.view();
            let list = view.as_array().unwrap();
            let all: Vec<&serde_json::Value> = list
                .iter()
                .flat_map(|post| post["comments"].as_array().unwrap())
                .collect();
            list.len() == posts
                && all.len() == comments
                && all.iter().all(|comment| comment["status"] != "pending")
        });
        assert!(
            settled,
            "view did not settle to {posts} posts / {comments} final comments: {view}"
        );
        view
    }

    /// Every stream a service reads with its group, with that group, in every partition: the
    /// events streams each followed by the services that use their events, then the inboxes.
    pub fn groups(&self) -> Vec<(String, &'static str)> {
        let keys = self.keys();
        self.every_partition()
            .into_iter()
            .flat_map(|partition| groups_in(&keys, partition))
            .collect()
    }

    /// Pending entries of a group on a stream.
    pub fn pending(&self, stream: &str, group: &str) -> usize {
        pending_with(&mut *self.connection(), stream, group)
    }

    /// The groups of [`Blog::groups`] that hold pending entries, with how many.
    pub fn groups_with_pending(&self) -> Vec<(String, &'static str, usize)> {
        let mut connection = self.connection();
        self.groups()
            .into_iter()
            .map(|(stream, group)| {
                let pending = pending_with(&mut *connection, &stream, group);
                (stream, group, pending)
            })
            .filter(|(_, _, pending)| *pending > 0)
            .collect()
    }

    /// Waits until no group of any service holds a pending entry (they may still be
    /// acknowledging what they skip when the view settles).
    pub fn wait_until_nothing_pending(&self) {
        for (stream, group) in &self.groups() {
            assert!(
                wait_until(PATIENCE, || self.pending(stream, group) == 0),
                "group {group} on {stream} still has {} pending entries",
                self.pending(stream, group)
            );
        }
    }
}

/// All entries of a stream, as (id, fields), read through `connection`.
fn entries_with(
    connection: &mut dyn redis::ConnectionLike,
    stream: &str,
) -> Vec<(String, Vec<(String, String)>)> {
    let reply: Vec<RawEntry> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query(connection)
        .unwrap();
    let text = |bytes: Vec<u8>| String::from_utf8_lossy(&bytes).into_owned();
    reply
        .into_iter()
        .map(|(id, fields)| {
            (
                id,
                fields
                    .into_iter()
                    .map(|(k, v)| (text(k), text(v)))
                    .collect(),
            )
        })
        .collect()
}

/// Pending entries of a group on a stream, read through `connection`.
fn pending_with(connection: &mut dyn redis::ConnectionLike, stream: &str, group: &str) -> usize {
    let reply: redis::Value = redis::cmd("XPENDING")
        .arg(stream)
        .arg(group)
        .query(connection)
        .unwrap();
    match reply {
        redis::Value::Array(items) => match items.first() {
            Some(redis::Value::Int(count)) => *count as usize,
            _ => 0,
        },
        _ => 0,
    }
}

/// A running `blogctl serve` process; killed on drop if still running.
pub struct Service {
    child: Child,
    log: tempfile::NamedTempFile,
}

impl Service {
    /// Starts `command` (a `blogctl serve ...`), logging at `info` into a file of its own.
    pub fn start(mut command: Command) -> Service {
        let log = tempfile::NamedTempFile::new().unwrap();
        let child = command
            .env("RUST_LOG", "info")
            .stderr(log.reopen().unwrap())
            .stdout(Stdio::null())
            .spawn()
            .expect("start blogctl serve");
        Service { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and waits for the exit; returns the exit code and how long it took.
    pub fn terminate(mut self) -> (i32, Duration) {
        signal(self.child.id(), "TERM");
        // Timed from when `kill` has sent the signal: spawning `kill` is not the service's time.
        let started = Instant::now();
        let deadline = started + PATIENCE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status.code().unwrap_or(-1), started.elapsed());
            }
            assert!(
                Instant::now() < deadline,
                "service ignored SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// What it logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log.path()).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The service of that name.
pub fn service_named(name: &str) -> keyspace::Service {
    keyspace::Service::ALL
        .into_iter()
        .find(|service| service.name() == name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

/// The service that produces events of type `kind`, on its own stream (written out here, not
/// taken from the code under test).
pub fn producer_of(kind: &str) -> &'static str {
    match kind {
        "PostCreated" => "posts",
        "CommentCreated" | "CommentUpdated" => "comments",
        "CommentModerated" => "moderation",
        _ => panic!("no event type {kind}"),
    }
}

/// Sends a signal by name (TERM, KILL, ...) to a process.
pub fn signal(pid: u32, name: &str) {
    let status = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(status.success(), "kill -{name} {pid} failed");
}

/// A small seeded random generator (xorshift64*), so a failing run can be replayed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `range`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound.max(1)
    }
}

/// docker-compose.yml, as text.
pub fn compose_text() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docker-compose.yml")).unwrap()
}

/// One service of docker-compose.yml: its name and the lines of its block, comments left out.
/// (The file keeps to a plain shape so that lines are enough: two spaces before a service's
/// name, four before its keys, lists as one-line JSON.)
#[derive(Debug)]
pub struct ComposeService {
    pub name: String,
    lines: Vec<String>,
}

impl ComposeService {
    /// The text after `key:` among the service's own keys (`image`, `read_only`, ...).
    pub fn value(&self, key: &str) -> Option<String> {
        self.lines.iter().find_map(|line| {
            let rest = line.strip_prefix("    ")?;
            if rest.starts_with(' ') {
                return None;
            }
            Some(rest.strip_prefix(key)?.strip_prefix(':')?.trim().to_owned())
        })
    }

    /// The one-line JSON list after `key:`, at any depth (`command`, `secrets`, `test`, ...).
    pub fn list(&self, key: &str) -> Option<Vec<String>> {
        self.lines.iter().find_map(|line| {
            let list = line.trim().strip_prefix(key)?.strip_prefix(':')?;
            serde_json::from_str(list.trim()).ok()
        })
    }

    /// The `NAME: value` lines under `environment:`.
    pub fn environment(&self) -> Vec<(String, String)> {
        self.lines
            .iter()
            .skip_while(|line| line.trim() != "environment:")
            .skip(1)
            .take_while(|line| line.starts_with("      "))
            .filter_map(|line| {
                let (name, value) = line.trim().split_once(':')?;
                Some((name.to_owned(), value.trim().to_owned()))
            })
            .collect()
    }

    /// Whether the service runs the blogctl image (built from the Dockerfile).
    pub fn is_blogctl(&self) -> bool {
        self.value("build").as_deref() == Some(".")
    }
}

/// The services of docker-compose.yml, in order.
pub fn compose_services() -> Vec<ComposeService> {
    let mut services: Vec<ComposeService> = Vec::new();
    let mut inside = false;
    for line in compose_text().lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') {
            inside = line == "services:";
            continue;
        }
        if !inside {
            continue;
        }
        match line.strip_prefix("  ") {
            Some(name) if !name.starts_with(' ') => services.push(ComposeService {
                name: name.trim_end_matches(':').to_owned(),
                lines: Vec::new(),
            }),
            _ => services
                .last_mut()
                .expect("a service before its keys")
                .lines
                .push(line.to_owned()),
        }
    }
    services
}

/// Every stream a service reads in `partition`, with its group (written out here, not taken from
/// the code under test): the events streams each followed by the services that use their events,
/// then the inboxes.
pub fn groups_in(keys: &Keys, partition: Partition) -> Vec<(String, &'static str)> {
    let events = |producer| keys.events(service_named(producer), partition);
    let inbox = |service| keys.inbox(service_named(service), partition);
    vec![
        (events("posts"), "comments"),
        (events("posts"), "query"),
        (events("comments"), "moderation"),
        (events("comments"), "query"),
        (events("moderation"), "comments"),
        (inbox("posts"), "posts"),
        (inbox("comments"), "comments"),
    ]
}
