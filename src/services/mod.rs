//! `blogctl serve`: runs one or more services until SIGINT/SIGTERM.

pub mod comments;
pub mod moderation;
pub mod posts;
pub mod query;

use std::future::Future;
use std::time::Duration;

use clap::ValueEnum;
use color_eyre::eyre::eyre;
use tokio::task::JoinSet;
use tracing::{error, info};

use crate::bus::{self, ConsumerConfig, Handler};
use crate::connection::{CONNECT_TIMEOUT, Redis, eviction_problem};
use crate::error::{ExitCode, Failure};
use crate::keys::Keys;
use crate::shutdown::Shutdown;

/// A service to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ServiceName {
    /// Creates posts.
    Posts,
    /// Creates comments and records moderation verdicts.
    Comments,
    /// Approves or rejects comments.
    Moderation,
    /// Keeps the readable view of posts and comments.
    Query,
    /// All four in one process.
    All,
}

impl ServiceName {
    const EACH: [ServiceName; 4] = [
        ServiceName::Posts,
        ServiceName::Comments,
        ServiceName::Moderation,
        ServiceName::Query,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ServiceName::Posts => posts::NAME,
            ServiceName::Comments => comments::NAME,
            ServiceName::Moderation => moderation::NAME,
            ServiceName::Query => query::NAME,
            ServiceName::All => "all",
        }
    }
}

/// Arguments of `blogctl serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The services to run in this process (`all` for the four).
    #[arg(required = true, value_enum)]
    pub services: Vec<ServiceName>,
    /// This process's consumer name in each group [default: <host>-<pid>].
    #[arg(long)]
    pub consumer: Option<String>,
    /// Words that get a comment rejected, comma-separated, matched ignoring case.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "orange",
        env = "BLOGCTL_BANNED_WORDS"
    )]
    pub banned_words: Vec<String>,
    /// Seconds an entry may stay with a silent consumer before another one takes it over.
    #[arg(long, default_value = "30", value_parser = parse_seconds)]
    pub claim_idle: Duration,
    /// Tries after which an entry that keeps failing goes to the dead-letter stream.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_deliveries: u64,
}

/// Seconds, possibly fractional, as a duration.
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    let seconds: f64 = text
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(seconds > 0.0 && seconds <= 86_400.0) {
        return Err(format!(
            "{text} seconds: must be more than 0 and at most 86400"
        ));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Runs the chosen services until `shutdown` completes; each finishes the entry in hand.
pub async fn run(
    redis: &Redis,
    keys: &Keys,
    args: &ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> color_eyre::Result<()> {
    // Fail fast, with exit code 4, when Redis is not there at all at start, or would evict keys.
    let mut connection = redis.connect(Some(CONNECT_TIMEOUT)).await?;
    if let Some(problem) = eviction_problem(&mut connection)
        .await
        .map_err(|error| redis.unreachable(&error))?
    {
        return Err(Failure::new(ExitCode::RedisUnreachable, problem).into());
    }
    drop(connection);
    let (trigger, shutdown) = Shutdown::from_future(shutdown);
    let consumer = args.consumer.clone().unwrap_or_else(default_consumer_name);
    let mut chosen: Vec<ServiceName> = if args.services.contains(&ServiceName::All) {
        ServiceName::EACH.to_vec()
    } else {
        args.services.clone()
    };
    chosen.sort_by_key(|service| service.name());
    chosen.dedup();
    info!(url = redis.url(), namespace = keys.namespace(), %consumer, "serving {:?}", chosen);
    let mut tasks = JoinSet::new();
    for service in chosen {
        let config = ConsumerConfig {
            group: service.name().to_owned(),
            consumer: consumer.clone(),
            streams: Vec::new(),
            inbox: None,
            dead: keys.dead(),
            attempts: format!("{}attempts", keys.service_prefix(service.name())),
            claim_idle: args.claim_idle,
            max_deliveries: args.max_deliveries,
        };
        let (redis, keys, shutdown) = (redis.clone(), keys.clone(), shutdown.clone());
        match service {
            ServiceName::Posts => {
                let config = ConsumerConfig {
                    streams: posts::Posts::streams(&keys),
                    inbox: Some(keys.inbox(posts::NAME)),
                    ..config
                };
                tasks.spawn(serve(redis, config, posts::Posts::new(&keys), shutdown));
            }
            ServiceName::Comments => {
                let config = ConsumerConfig {
                    streams: comments::Comments::streams(&keys),
                    inbox: Some(keys.inbox(comments::NAME)),
                    ..config
                };
                tasks.spawn(serve(
                    redis,
                    config,
                    comments::Comments::new(&keys),
                    shutdown,
                ));
            }
            ServiceName::Moderation => {
                let config = ConsumerConfig {
                    streams: moderation::Moderation::streams(&keys),
                    ..config
                };
                let handler = moderation::Moderation::new(&keys, args.banned_words.clone());
                tasks.spawn(serve(redis, config, handler, shutdown));
            }
            ServiceName::Query => {
                let config = ConsumerConfig {
                    streams: query::Query::streams(&keys),
                    ..config
                };
                tasks.spawn(serve(redis, config, query::Query::new(&keys), shutdown));
            }
            ServiceName::All => unreachable!("`all` was expanded above"),
        }
    }
    let mut failure = None;
    while let Some(result) = tasks.join_next().await {
        let outcome = result
            .map_err(|error| eyre!(error))
            .and_then(|result| result);
        if let Err(report) = outcome {
            error!("{report:#}");
            // A service that died (a panic: Redis trouble is waited out, never an error) stops
            // the others: a half-running process would hide it.
            trigger.fire();
            failure.get_or_insert(report);
        }
    }
    failure.map_or(Ok(()), Err)
}

async fn serve(
    redis: Redis,
    config: ConsumerConfig,
    mut handler: impl Handler,
    shutdown: Shutdown,
) -> color_eyre::Result<()> {
    bus::consume(&redis, &config, &mut handler, shutdown).await
}

/// `<host>-<pid>`: unique per process, and tells an operator where a consumer runs.
fn default_consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|host| host.trim().to_owned())
        .filter(|host| !host.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}-{}", std::process::id())
}
