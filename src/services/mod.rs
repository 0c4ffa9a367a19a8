//! `blogctl serve`: runs one or more services until SIGINT/SIGTERM.

pub mod comments;
pub mod generations;
pub mod moderation;
pub mod posts;
pub mod query;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use color_eyre::eyre::eyre;
use tokio::task::JoinSet;
use tracing::{error, info};

use crate::bus::{self, ConsumerConfig, Handler, StepKeys};
use crate::cli::values::{self, ServiceChoice, parse_seconds};
use crate::connection::{CONNECT_TIMEOUT, Connection, Redis, eviction_problem};
use crate::context::Context;
use crate::error::{ExitCode, Failure};
use crate::keyspace::{Keys, Partition, Partitions, Service};
use crate::metrics::Metrics;
use crate::shutdown::{Shutdown, Trigger};

/// The services whose state `blogctl rebuild` can rebuild (it lives in generations).
pub const REBUILDABLE: [Service; 2] = [Service::Query, Service::Comments];

/// The services whose events `service` follows, each on the stream that service writes.
pub const fn follows(service: Service) -> &'static [Service] {
    match service {
        Service::Posts => &[],
        Service::Comments => &[Service::Posts, Service::Moderation],
        Service::Moderation => &[Service::Comments],
        Service::Query => &[Service::Posts, Service::Comments],
    }
}

/// The events streams `service` follows, each with the one service that writes it.
pub fn followed_streams(
    keys: &Keys,
    service: Service,
    partition: Partition,
) -> Vec<(String, Service)> {
    follows(service)
        .iter()
        .map(|&producer| (keys.events(producer, partition), producer))
        .collect()
}

/// The streams `service` reads with its group, in the order each batch is handled (events
/// before requests: a batch's `PostCreated` is learnt before its comments are answered), and its
/// inbox if it has one. The one list of who reads what.
pub fn streams(
    keys: &Keys,
    service: Service,
    partition: Partition,
) -> (Vec<String>, Option<String>) {
    let mut streams: Vec<String> = followed_streams(keys, service, partition)
        .into_iter()
        .map(|(stream, _)| stream)
        .collect();
    let inbox = matches!(service, Service::Posts | Service::Comments)
        .then(|| keys.inbox(service, partition));
    streams.extend(inbox.clone());
    (streams, inbox)
}

/// Arguments of `blogctl serve`.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The services to run in this process (`all` for the four).
    #[arg(required = true, value_enum)]
    pub services: Vec<ServiceChoice>,
    /// This process's consumer name in each group: 1 to 64 letters, digits, `.`, `_`, `-`
    /// [default: `<host>-<pid>`].
    #[arg(long, value_parser = parse_consumer)]
    pub consumer: Option<String>,
    /// Words that get a comment rejected, comma-separated, matched ignoring case.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "orange",
        env = "BLOGCTL_BANNED_WORDS",
        hide_env_values = true
    )]
    pub banned_words: Vec<String>,
    /// Seconds an entry may stay with a silent consumer before another one takes it over.
    #[arg(long, default_value = "30", value_parser = parse_seconds)]
    pub claim_idle: Duration,
    /// Tries after which an entry that keeps failing goes to the dead-letter stream.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_deliveries: u64,
    /// Serve Prometheus metrics of this process at http://ADDR/metrics (e.g. 127.0.0.1:9100).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
}

/// A `--consumer` name: it shows in `status` and in keys, so nothing a terminal would act on.
fn parse_consumer(text: &str) -> Result<String, String> {
    let valid = !text.is_empty()
        && text.len() <= 64
        && text
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if valid {
        Ok(text.to_owned())
    } else {
        Err("use 1 to 64 letters, digits, '.', '_' or '-'".to_owned())
    }
}

/// Runs the chosen services until `shutdown` completes; each finishes the entry in hand.
/// Every service consumes every partition, each with a consumer (and connection) of its own.
pub async fn run(
    context: &Context,
    args: &ServeArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> color_eyre::Result<()> {
    let (redis, keys) = (&context.redis, &context.keys);
    let chosen = values::chosen(&args.services);
    let partitions = prepare_redis(context, &chosen).await?;
    let listener = match args.metrics {
        Some(address) => Some(crate::metrics::bind(address).await?),
        None => None,
    };
    let (trigger, shutdown) = Shutdown::from_future(shutdown);
    let metrics = listener.map(|listener| {
        let metrics = Arc::new(Metrics::new());
        tokio::spawn(crate::metrics::serve(
            listener,
            metrics.clone(),
            shutdown.clone(),
        ));
        metrics
    });
    let consumer = args.consumer.clone().unwrap_or_else(default_consumer_name);
    let names: Vec<&str> = chosen.iter().map(|service| service.name()).collect();
    info!(url = redis.url(), namespace = keys.namespace(), %partitions, %consumer,
        "serving {}", names.join(", "));
    let mut tasks = JoinSet::new();
    for service in chosen {
        for partition in partitions.all() {
            let config = consumer_config(keys, service, partition, &consumer, args, &metrics);
            let (redis, shutdown) = (redis.clone(), shutdown.clone());
            match service {
                Service::Posts => {
                    let handler = posts::Posts::new(keys, partitions, partition);
                    tasks.spawn(serve(redis, config, handler, shutdown))
                }
                Service::Comments => {
                    let handler = comments::Comments::new(keys, partition);
                    tasks.spawn(serve(redis, config, handler, shutdown))
                }
                Service::Moderation => {
                    let words = args.banned_words.clone();
                    let handler = moderation::Moderation::new(keys, partition, words);
                    tasks.spawn(serve(redis, config, handler, shutdown))
                }
                Service::Query => {
                    let handler = query::Query::new(keys, partition);
                    tasks.spawn(serve(redis, config, handler, shutdown))
                }
            };
        }
    }
    wait_for_services(tasks, &trigger).await
}

/// Who `service`'s consumer of `partition` is and what it reads.
fn consumer_config(
    keys: &Keys,
    service: Service,
    partition: Partition,
    consumer: &str,
    args: &ServeArgs,
    metrics: &Option<Arc<Metrics>>,
) -> ConsumerConfig {
    let (streams, inbox) = streams(keys, service, partition);
    ConsumerConfig {
        group: service.name().to_owned(),
        consumer: consumer.to_owned(),
        streams,
        inbox,
        producers: followed_streams(keys, service, partition),
        step_keys: StepKeys::new(keys, service, partition),
        claim_idle: args.claim_idle,
        alive_prefix: keys.alive_prefix(service, partition),
        max_deliveries: args.max_deliveries,
        metrics: metrics.clone(),
    }
}

/// Fixes the namespace's partition count on its first serve, and returns it; fails fast, with
/// exit code 4, when Redis is not there at all at start, or when the Redis holding any partition
/// (on a Cluster, each partition's master) would evict keys.
async fn prepare_redis(context: &Context, services: &[Service]) -> color_eyre::Result<Partitions> {
    let (redis, keys) = (&context.redis, &context.keys);
    let mut connection = redis.connect(Some(CONNECT_TIMEOUT)).await?;
    // Partition 0's Redis first: a refused serve stores no count.
    refuse_an_evicting_redis(context, &mut connection, Partition::FIRST).await?;
    let partitions =
        crate::partitions::fix(&mut connection, keys, context.partitions, services).await?;
    for partition in partitions.all().skip(1) {
        refuse_an_evicting_redis(context, &mut connection, partition).await?;
    }
    if services.contains(&Service::Query) {
        name_the_first_view(context, &mut connection, partitions).await?;
    }
    Ok(partitions)
}

/// Writes the query view's generation pointer where no rebuild has yet (`0`, the generation a
/// missing pointer means), so that every partition's view has a key that is always there: a
/// read touches it with the keys it reads (see `services::query`), and on a Redis Cluster moving
/// the partition's slot, the read is then refused only while its keys are split between the two
/// masters, not for the whole move.
async fn name_the_first_view(
    context: &Context,
    connection: &mut Connection,
    partitions: Partitions,
) -> color_eyre::Result<()> {
    for partition in partitions.all() {
        let pointer = context.keys.generation_pointer(Service::Query, partition);
        let set: redis::RedisResult<Option<String>> = redis::cmd("SET")
            .arg(&pointer)
            .arg(0)
            .arg("NX")
            .query_async(connection)
            .await;
        set.map_err(|error| context.redis.unreachable(&error))?;
    }
    Ok(())
}

async fn refuse_an_evicting_redis(
    context: &Context,
    connection: &mut Connection,
    partition: Partition,
) -> color_eyre::Result<()> {
    let key = context.keys.dead(partition);
    match eviction_problem(connection, &key).await {
        Ok(None) => Ok(()),
        Ok(Some(problem)) => Err(Failure::new(ExitCode::RedisUnreachable, problem).into()),
        Err(error) => Err(context.redis.unreachable(&error).into()),
    }
}

/// Waits until every service has ended; the first failure, if any, after stopping the others.
async fn wait_for_services(
    mut tasks: JoinSet<color_eyre::Result<()>>,
    trigger: &Trigger,
) -> color_eyre::Result<()> {
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
