//! `blogctl bench`: measures the whole pipeline against a running set of services (or services
//! started in this process with `--embedded`): throughput, latency, memory, and the CPU time
//! each comment costs Redis and blogctl (see `cpu`).

mod cpu;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use clap::Args;
use color_eyre::Result;
use color_eyre::eyre::{WrapErr, bail};
use redis::AsyncCommands;
use redis::streams::StreamInfoGroupsReply;
use serde::Serialize;
use uuid::Uuid;

use crate::cli::values::ServiceChoice;
use crate::connection::Connection;
use crate::context::Context;
use crate::error::Failure;
use crate::events::{Comment, Post};
use crate::keyspace::{Partition, Partitions, Service};
use crate::ops::{ExpectedGroup, events_streams, expected_groups};
use crate::output::{print_line, progress_bar};
use crate::rebuild::{self, Target};
use crate::request::{Recipient, call, request_id};
use crate::services::comments::{self, CREATE_COMMENT, CreateComment};
use crate::services::posts::{self, CREATE_POST, CreatePost};
use crate::services::query::{self, View, Views};
use crate::services::{self, ServeArgs};
use crate::shutdown;
use cpu::CpuTime;

#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Posts to create first.
    #[arg(long, default_value_t = 100)]
    pub posts: usize,
    /// Comments to create for the throughput run (every tenth mentions orange).
    #[arg(long, default_value_t = 10_000)]
    pub comments: usize,
    /// Comment requests in flight at once during the throughput run.
    #[arg(long, default_value_t = 64)]
    pub in_flight: usize,
    /// Comments created one at a time for the latency run.
    #[arg(long, default_value_t = 1_000)]
    pub latency_samples: usize,
    /// Start the four services in this process instead of using running ones.
    #[arg(long)]
    pub embedded: bool,
}

/// What a run measured.
#[derive(Debug, Serialize)]
pub struct Report {
    pub posts: usize,
    pub comments: usize,
    pub in_flight: usize,
    /// The namespace's partition count.
    pub partitions: u32,
    /// Each master's share of the Redis CPU of the comments phase, by address (on a single
    /// Redis, one, `""`).
    pub redis_cpu_share_by_master: Vec<(String, f64)>,
    /// Comments per second from the first create to every comment final in the view.
    pub comments_per_second: f64,
    /// Redis's CPU time (`INFO cpu`) per comment over the same phase, in microseconds.
    pub redis_cpu_us_per_comment: f64,
    /// blogctl's CPU time per comment over the same phase, in microseconds: this process's
    /// (`getrusage`; embedded, the services' too) and, when they run apart, that of each local
    /// service process found.
    pub blogctl_cpu_us_per_comment: f64,
    /// Create -> final status visible in the view, one comment at a time, in milliseconds.
    pub latency_ms: Latency,
    /// Redis's used memory per post and per comment, in bytes.
    pub redis_bytes_per_post: f64,
    pub redis_bytes_per_comment: f64,
    /// `rebuild query` over the whole log at the end.
    pub rebuild_events: u64,
    pub rebuild_events_per_second: f64,
    /// Redis's and this process's CPU time per event of the rebuild, in microseconds.
    pub rebuild_redis_cpu_us_per_event: f64,
    pub rebuild_blogctl_cpu_us_per_event: f64,
    /// Resident memory of each service process found, in KiB (embedded: this whole process).
    pub resident_kib: Vec<(String, u64)>,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub samples: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

pub async fn run(context: &Context, args: &BenchArgs) -> Result<()> {
    if args.posts == 0 || args.in_flight == 0 {
        return Err(Failure::invalid("--posts and --in-flight must be at least 1").into());
    }
    let mut connection = context.connect().await?;
    // A fresh namespace gets its partition count here, before any service starts.
    let partitions = crate::partitions::fix(
        &mut connection,
        &context.keys,
        context.partitions,
        &Service::ALL,
    )
    .await?;
    let mut events: usize = 0;
    for stream in events_streams(&context.keys, partitions) {
        let length: usize = connection.xlen(stream).await?;
        events += length;
    }
    if events > 0 {
        return Err(Failure::invalid(format!(
            "namespace {:?} already holds {events} events; bench a fresh one (--namespace bench-1)",
            context.keys.namespace()
        ))
        .into());
    }
    let (trigger, stop) = shutdown::channel();
    let embedded = if args.embedded {
        let context = context.clone();
        let serve = ServeArgs {
            services: vec![ServiceChoice::All],
            consumer: Some("bench".to_owned()),
            banned_words: vec!["orange".to_owned()],
            claim_idle: Duration::from_secs(30),
            max_deliveries: 5,
            metrics: None,
        };
        let mut stop = stop.clone();
        Some(tokio::spawn(async move {
            services::run(&context, &serve, async move { stop.wait().await }).await
        }))
    } else {
        None
    };
    let result = measure(context, args, partitions, &mut connection).await;
    trigger.fire();
    if let Some(task) = embedded {
        task.await.wrap_err("the embedded services")??;
    }
    let report = result?;
    if context.json {
        print_line(&serde_json::to_string(&report)?)?;
    } else {
        print_report(&report)?;
    }
    Ok(())
}

async fn measure(
    context: &Context,
    args: &BenchArgs,
    partitions: Partitions,
    connection: &mut Connection,
) -> Result<Report> {
    let memory_start = used_memory(connection).await?;
    let post_ids = create_posts(context, args, partitions, connection).await?;
    wait_until_idle(context, partitions, connection).await?;
    let memory_posts = used_memory(connection).await?;

    let post_ids = Arc::new(post_ids);
    let processes: Vec<u32> = if args.embedded {
        Vec::new()
    } else {
        service_processes(context, connection)
            .await?
            .into_iter()
            .map(|(_, pid)| pid)
            .collect()
    };
    let before = CpuTime::now(connection, &processes).await?;
    let elapsed = time_comment_creation(context, args, partitions, connection, &post_ids).await?;
    let after = CpuTime::now(connection, &processes).await?;
    let (redis_cpu, blogctl_cpu) = after.per(&before, args.comments as u64);
    let memory_comments = used_memory(connection).await?;
    let views = Views::new(&context.keys, partitions);
    check_every_comment_final(connection, &views, args.comments).await?;

    let view = views.of_post(&post_ids[0]);
    let samples = sample_latency(context, args, connection, view, post_ids[0]).await?;
    let resident_kib = resident_memory(context, connection, args.embedded).await?;
    let rebuild_before = CpuTime::now(connection, &[]).await?;
    let job = rebuild::Job {
        redis: &context.redis,
        keys: &context.keys,
        partitions,
        target: Target::Query,
        archives: &[],
    };
    let rebuilt = rebuild::rebuild(connection, &job).await?;
    let (rebuild_redis_cpu, rebuild_blogctl_cpu) = CpuTime::now(connection, &[])
        .await?
        .per(&rebuild_before, rebuilt.events);

    Ok(Report {
        posts: args.posts,
        comments: args.comments,
        in_flight: args.in_flight,
        partitions: partitions.count(),
        redis_cpu_share_by_master: after.shares(&before),
        comments_per_second: args.comments as f64 / elapsed.as_secs_f64(),
        redis_cpu_us_per_comment: redis_cpu,
        blogctl_cpu_us_per_comment: blogctl_cpu,
        latency_ms: latency(samples),
        redis_bytes_per_post: (memory_posts - memory_start) as f64 / args.posts as f64,
        redis_bytes_per_comment: (memory_comments - memory_posts) as f64
            / args.comments.max(1) as f64,
        rebuild_events: rebuilt.events,
        rebuild_events_per_second: rebuilt.events_per_second,
        rebuild_redis_cpu_us_per_event: rebuild_redis_cpu,
        rebuild_blogctl_cpu_us_per_event: rebuild_blogctl_cpu,
        resident_kib,
    })
}

/// Creates the posts one at a time; their ids, in order.
async fn create_posts(
    context: &Context,
    args: &BenchArgs,
    partitions: Partitions,
    connection: &mut Connection,
) -> Result<Vec<Uuid>> {
    let progress = progress_bar(args.posts as u64, "posts");
    let mut post_ids = Vec::with_capacity(args.posts);
    for n in 0..args.posts {
        let title = format!("Bench post {n}");
        let request_id = request_id(None)?;
        let post: Post = call(
            connection,
            &context.keys,
            Recipient {
                service: posts::SERVICE,
                partition: partitions.of_request(&request_id),
            },
            CREATE_POST,
            &CreatePost { title },
            &request_id,
            context.timeout,
        )
        .await?;
        post_ids.push(post.id);
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(post_ids)
}

/// The throughput run: `in_flight` clients create the comments, spread over the posts; the
/// time from the first create until the pipeline is idle again.
async fn time_comment_creation(
    context: &Context,
    args: &BenchArgs,
    partitions: Partitions,
    connection: &mut Connection,
    post_ids: &Arc<Vec<Uuid>>,
) -> Result<Duration> {
    // Each client has its own connection (BLPOP blocks it).
    let progress = progress_bar(args.comments as u64, "comments");
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..args.in_flight.min(args.comments.max(1)) {
        let (context, next, post_ids, progress, total) = (
            context.clone(),
            next.clone(),
            post_ids.clone(),
            progress.clone(),
            args.comments,
        );
        clients.spawn(async move {
            let mut connection = context.connect().await?;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    return Ok::<_, color_eyre::Report>(());
                }
                let post_id = post_ids[n % post_ids.len()];
                let partition = partitions.of_post(&post_id);
                create_comment(&context, &mut connection, partition, post_id, n).await?;
                progress.inc(1);
            }
        });
    }
    while let Some(result) = clients.join_next().await {
        result??;
    }
    progress.finish_and_clear();
    wait_until_idle(context, partitions, connection).await?;
    Ok(started.elapsed())
}

/// Fails unless the view shows exactly `expected` comments with a final status.
async fn check_every_comment_final(
    connection: &mut Connection,
    views: &Views,
    expected: usize,
) -> Result<()> {
    let mut final_comments = 0;
    let mut posts = views.merged(None, 500);
    while let Some(post) = posts.next(connection).await? {
        final_comments += post.comments.iter().filter(|c| c.status.is_final()).count();
    }
    if final_comments != expected {
        bail!("the view shows {final_comments} final comments, not {expected}");
    }
    Ok(())
}

/// The latency run: comments on `post` one at a time, each timed from the request to its final
/// status in the view, in milliseconds.
async fn sample_latency(
    context: &Context,
    args: &BenchArgs,
    connection: &mut Connection,
    view: &View,
    post: Uuid,
) -> Result<Vec<f64>> {
    let progress = progress_bar(args.latency_samples as u64, "latency");
    let mut samples = Vec::with_capacity(args.latency_samples);
    for n in 0..args.latency_samples {
        let started = Instant::now();
        let partition = view.partition();
        let comment =
            create_comment(context, connection, partition, post, args.comments + n).await?;
        let deadline = started + context.timeout;
        wait_until_final(context, connection, view, post, comment.id, deadline).await?;
        samples.push(started.elapsed().as_secs_f64() * 1000.0);
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(samples)
}

/// Polls the view without pause until the comment has a final status; a service timeout
/// after `deadline`.
async fn wait_until_final(
    context: &Context,
    connection: &mut Connection,
    view: &View,
    post: Uuid,
    comment: Uuid,
    deadline: Instant,
) -> Result<()> {
    while !matches!(view.comment_status(connection, post, comment).await?, Some(status) if status.is_final())
    {
        if Instant::now() > deadline {
            return Err(Failure::service_timeout(
                query::NAME,
                "show a final status",
                context.timeout,
            )
            .into());
        }
    }
    Ok(())
}

async fn create_comment(
    context: &Context,
    connection: &mut Connection,
    partition: Partition,
    post_id: Uuid,
    n: usize,
) -> Result<Comment> {
    let content = if n.is_multiple_of(10) {
        format!("comment {n} about an orange")
    } else {
        format!("comment {n}")
    };
    call(
        connection,
        &context.keys,
        Recipient {
            service: comments::SERVICE,
            partition,
        },
        CREATE_COMMENT,
        &CreateComment { post_id, content },
        &request_id(None)?,
        context.timeout,
    )
    .await
}

/// Waits until every group has read and acknowledged every event: the pipeline is idle.
async fn wait_until_idle(
    context: &Context,
    partitions: Partitions,
    connection: &mut Connection,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let events = events_streams(&context.keys, partitions);
    let expected: Vec<ExpectedGroup> = expected_groups(&context.keys, partitions)
        .into_iter()
        .filter(|expected| events.contains(&expected.stream))
        .collect();
    loop {
        let mut idle = true;
        for expected in &expected {
            let groups: StreamInfoGroupsReply = connection.xinfo_groups(&expected.stream).await?;
            idle &= groups.groups.iter().any(|group| {
                group.name == expected.group && group.pending == 0 && group.lag == Some(0)
            });
        }
        if idle {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the services did not catch up within 5 minutes");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Redis's `used_memory`, once nothing deleted earlier (an earlier run's dropped generation,
/// say) is still being freed in the background, which would make the figure drift.
async fn used_memory(connection: &mut Connection) -> Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(60);
    'again: loop {
        let mut used = 0;
        for (_, info) in connection.info_of_masters(&["memory"]).await? {
            let field = |name: &str| -> Option<i64> {
                info.lines()
                    .find_map(|line| line.strip_prefix(name))
                    .and_then(|value| value.trim().parse().ok())
            };
            used += field("used_memory:")
                .ok_or_else(|| color_eyre::eyre::eyre!("INFO memory has no used_memory"))?;
            if field("lazyfree_pending_objects:").unwrap_or(0) > 0 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue 'again;
            }
        }
        return Ok(used);
    }
}

/// RSS of the service processes: this process when embedded, else the local processes named by
/// the consumers (`<host>-<pid>`) of each group.
async fn resident_memory(
    context: &Context,
    connection: &mut Connection,
    embedded: bool,
) -> Result<Vec<(String, u64)>> {
    if embedded {
        return Ok(vec![(
            "all (embedded, with the bench client)".to_owned(),
            rss_kib(std::process::id()).unwrap_or(0),
        )]);
    }
    Ok(service_processes(context, connection)
        .await?
        .into_iter()
        .filter_map(|(name, pid)| Some((name, rss_kib(pid)?)))
        .collect())
}

/// The local blogctl processes named by the consumers (`<host>-<pid>`) of each service's group,
/// each once, with a label: `<service> (<consumer>)`.
async fn service_processes(
    context: &Context,
    connection: &mut Connection,
) -> Result<Vec<(String, u32)>> {
    let mut found: Vec<(String, u32)> = Vec::new();
    for service in Service::ALL {
        // Every stream a service reads has the same consumers: the first will do.
        let (streams, _) = services::streams(&context.keys, service, Partition::FIRST);
        let consumers: redis::streams::StreamInfoConsumersReply = connection
            .xinfo_consumers(&streams[0], service.name())
            .await
            .unwrap_or_default();
        for consumer in consumers.consumers {
            let pid = consumer
                .name
                .rsplit('-')
                .next()
                .and_then(|pid| pid.parse::<u32>().ok())
                .filter(|&pid| cpu::is_blogctl(pid));
            if let Some(pid) = pid.filter(|pid| !found.iter().any(|(_, seen)| seen == pid)) {
                found.push((format!("{service} ({})", consumer.name), pid));
            }
        }
    }
    Ok(found)
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn latency(mut samples: Vec<f64>) -> Latency {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        samples
            .get(((samples.len() as f64 * q) as usize).min(samples.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    Latency {
        samples: samples.len(),
        p50: at(0.50),
        p95: at(0.95),
        p99: at(0.99),
        max: samples.last().copied().unwrap_or(0.0),
    }
}

fn print_report(report: &Report) -> std::io::Result<()> {
    let latency = &report.latency_ms;
    print_line(&format!(
        "posts                     {} ({} partition{})",
        report.posts,
        report.partitions,
        if report.partitions == 1 { "" } else { "s" }
    ))?;
    print_line(&format!(
        "comments                  {} ({} in flight)",
        report.comments, report.in_flight
    ))?;
    print_line(&format!(
        "throughput                {:.0} comments/s, create to final in the view",
        report.comments_per_second
    ))?;
    print_line(&format!(
        "cpu per comment           redis {:.1} us  blogctl {:.1} us",
        report.redis_cpu_us_per_comment, report.blogctl_cpu_us_per_comment
    ))?;
    if report.redis_cpu_share_by_master.len() > 1 {
        let shares: Vec<String> = report
            .redis_cpu_share_by_master
            .iter()
            .map(|(address, share)| format!("{address} {:.0} %", share * 100.0))
            .collect();
        print_line(&format!("redis cpu by master       {}", shares.join("  ")))?;
    }
    print_line(&format!(
        "latency (ms, {} samples)  p50 {:.3}  p95 {:.3}  p99 {:.3}  max {:.3}",
        latency.samples, latency.p50, latency.p95, latency.p99, latency.max
    ))?;
    print_line(&format!(
        "redis memory              {:.0} B/post  {:.0} B/comment",
        report.redis_bytes_per_post, report.redis_bytes_per_comment
    ))?;
    print_line(&format!(
        "rebuild query             {:.0} events/s over {} events; cpu per event redis {:.2} us  blogctl {:.2} us",
        report.rebuild_events_per_second,
        report.rebuild_events,
        report.rebuild_redis_cpu_us_per_event,
        report.rebuild_blogctl_cpu_us_per_event
    ))?;
    for (service, kib) in &report.resident_kib {
        print_line(&format!(
            "resident                  {:.1} MiB  {service}",
            *kib as f64 / 1024.0
        ))?;
    }
    Ok(())
}
