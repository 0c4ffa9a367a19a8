//! The command line: every clap definition is reachable from here.

use std::time::Duration;

pub mod completions;
pub mod man;
pub mod values;

use clap::{Args, Parser, Subcommand};

use crate::bench::{self, BenchArgs};
use crate::client;
use crate::client::comment::CommentCommand;
use crate::client::post::PostCommand;
use crate::connection::{Access, Redis};
use crate::context::Context;
use crate::error::Failure;
use crate::keyspace::{Keys, Partitions};
use crate::ops;
use crate::rebuild::{self, RebuildArgs};
use crate::services::{self, ServeArgs};
use values::parse_seconds;

const EXAMPLES: &str = "\
Examples:
  blogctl serve all &
  id=$(blogctl post create \"Hello world\")
  blogctl comment create --wait \"$id\" \"Nice post\"
  blogctl post list";

/// A blog as four event-driven services on Redis Streams, and a shell client for it.
#[derive(Debug, Parser)]
#[command(name = "blogctl", version, after_help = EXAMPLES)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every subcommand takes.
#[derive(Debug, Args)]
pub struct Global {
    /// The Redis to use.
    #[arg(
        long,
        global = true,
        env = "BLOGCTL_REDIS_URL",
        hide_env_values = true,
        default_value = "redis://127.0.0.1:6379"
    )]
    pub redis_url: String,
    /// A file whose first line is the Redis password, so that it is neither in the URL, the
    /// environment nor the command line.
    #[arg(
        long,
        global = true,
        env = "BLOGCTL_REDIS_PASSWORD_FILE",
        value_name = "FILE"
    )]
    pub redis_password_file: Option<std::path::PathBuf>,
    /// For `rediss://` (TLS): a PEM file of the certificate authority to trust, instead of the
    /// system's.
    #[arg(long, global = true, env = "BLOGCTL_REDIS_CA", value_name = "FILE")]
    pub redis_ca: Option<std::path::PathBuf>,
    /// For `rediss://`: a PEM client certificate, for a Redis that asks for one (with
    /// --redis-key).
    #[arg(long, global = true, env = "BLOGCTL_REDIS_CERT", value_name = "FILE")]
    pub redis_cert: Option<std::path::PathBuf>,
    /// For `rediss://`: the PEM key of --redis-cert.
    #[arg(long, global = true, env = "BLOGCTL_REDIS_KEY", value_name = "FILE")]
    pub redis_key: Option<std::path::PathBuf>,
    /// Prefix of every key, so several blogs can share one Redis.
    #[arg(
        long,
        global = true,
        env = "BLOGCTL_NAMESPACE",
        hide_env_values = true,
        default_value = "blog"
    )]
    pub namespace: String,
    /// The namespace's partition count: fixed by its first `serve` (default 1), read from
    /// Redis by every other command; a command naming another count is refused.
    #[arg(
        long,
        global = true,
        env = "BLOGCTL_PARTITIONS",
        value_name = "P",
        value_parser = crate::partitions::parse
    )]
    pub partitions: Option<Partitions>,
    /// Print results as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    /// Seconds to wait for a service before giving up (exit code 5).
    #[arg(long, global = true, default_value = "5", value_parser = parse_seconds)]
    pub timeout: Duration,
    /// Microseconds to keep polling for I/O, instead of sleeping, after the last work (an entry
    /// delivered, a request sent, a read of the view); 0, the default, is off. Lower latency
    /// for up to a core of CPU while comments flow: only with a core to spare.
    #[arg(
        long,
        global = true,
        env = "BLOGCTL_BUSY_POLL",
        value_name = "MICROSECONDS",
        default_value = "0",
        value_parser = clap::value_parser!(u64).range(0..=crate::busy_poll::MAX_WINDOW_MICROS)
    )]
    pub busy_poll: u64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run services until SIGINT or SIGTERM.
    #[command(after_help = r#"Example: blogctl serve all   (or: blogctl serve posts comments)"#)]
    Serve(ServeArgs),
    /// Create, list and show posts.
    #[command(subcommand)]
    #[command(
        after_help = r#"Example: id=$(blogctl post create "Hello world") && blogctl post show "$id""#
    )]
    Post(PostCommand),
    /// Comment on posts.
    #[command(subcommand)]
    #[command(after_help = r#"Example: blogctl comment create --wait "$id" "Nice post""#)]
    Comment(CommentCommand),
    /// Show each consumer group: lag, pending entries, consumers, dead letters (--check: health).
    #[command(after_help = r#"Example: blogctl status --check --max-lag 100"#)]
    Status(ops::status::StatusArgs),
    /// List or follow the events, the services' streams merged in id order.
    #[command(after_help = r#"Example: blogctl events list --type PostCreated"#)]
    #[command(subcommand)]
    Events(ops::events::EventsCommand),
    /// Inspect dead letters, retry them for their service, or drop them.
    #[command(after_help = r#"Example: blogctl dead list"#)]
    #[command(subcommand)]
    Dead(ops::dead::DeadCommand),
    /// Archive, then remove, the events every group has acknowledged.
    #[command(after_help = r#"Example: blogctl trim --archive archive/ --yes"#)]
    Trim(ops::trim::TrimArgs),
    /// Write every event of the blog (and, with --archive, those `trim` archived) to a portable
    /// NDJSON file, oldest first, from a consistent cut taken while the services run.
    #[command(
        after_help = r#"Example: blogctl export backup.ndjson --archive archive/   (see the README, "Backups")"#
    )]
    Export(ops::transfer::export::ExportArgs),
    /// Fill an empty namespace from a file `blogctl export` wrote: its events in their posts'
    /// partitions (any --partitions), and the state they make.
    #[command(
        after_help = r#"Example: blogctl --namespace blog2 --partitions 8 import backup.ndjson"#
    )]
    Import(ops::transfer::import::ImportArgs),
    /// Print a Redis ACL file: a user per service, one for clients, one for operators, and
    /// the `default` user off.
    #[command(
        after_help = r#"Example: blogctl acl --passwords secrets > users.acl && redis-server --aclfile users.acl"#
    )]
    Acl(ops::acl::AclArgs),
    /// Print a shell completion script.
    #[command(after_help = r#"Example: blogctl completions bash > /etc/bash_completion.d/blogctl"#)]
    Completions(completions::CompletionsArgs),
    /// Write man pages for blogctl and each subcommand into a directory.
    #[command(
        after_help = r#"Example: blogctl man --dir ~/.local/share/man/man1 && man blogctl-post-create"#
    )]
    Man(man::ManArgs),
    /// Rebuild the query view or the comments state from the whole log, then switch to it.
    #[command(after_help = r#"Example: blogctl rebuild query --archive archive/"#)]
    Rebuild(RebuildArgs),
    /// Measure throughput, latency and memory of the whole pipeline, in a fresh namespace.
    #[command(
        after_help = r#"Example: blogctl --namespace bench-1 bench --embedded --comments 100000"#
    )]
    Bench(BenchArgs),
}

impl Global {
    fn context(&self) -> Result<Context, Failure> {
        Ok(Context {
            redis: Redis::open_with(
                &self.redis_url,
                &Access {
                    password_file: self.redis_password_file.clone(),
                    tls_ca: self.redis_ca.clone(),
                    tls_cert: self.redis_cert.clone(),
                    tls_key: self.redis_key.clone(),
                },
            )?,
            keys: Keys::new(&self.namespace)?,
            partitions: self.partitions,
            json: self.json,
            timeout: self.timeout,
        })
    }
}

/// Runs a parsed command line; `shutdown` stops `serve` and `events tail`.
pub async fn run(
    cli: Cli,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> color_eyre::Result<()> {
    let context = cli.global.context()?;
    match &cli.command {
        Command::Serve(args) => services::run(&context, args, shutdown).await,
        Command::Post(command) => client::post::run(&context, command).await,
        Command::Comment(command) => client::comment::run(&context, command).await,
        Command::Status(args) => ops::status::run(&context, args).await,
        Command::Events(command) => ops::events::run(&context, command, shutdown).await,
        Command::Dead(command) => ops::dead::run(&context, command).await,
        Command::Trim(args) => ops::trim::run(&context, args).await,
        Command::Export(args) => ops::transfer::export::run(&context, args).await,
        Command::Import(args) => ops::transfer::import::run(&context, args).await,
        Command::Acl(args) => ops::acl::run(&context.keys, args),
        Command::Completions(args) => completions::run(args),
        Command::Man(args) => man::run(args),
        Command::Rebuild(args) => rebuild::run(&context, args).await,
        Command::Bench(args) => bench::run(&context, args).await,
    }
}
