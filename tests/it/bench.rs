//! `blogctl bench`: it measures what it says, on a real pipeline.

use serde_json::Value;

use crate::support::Blog;

fn bench(blog: &Blog, extra: &[&str]) -> Value {
    let mut args = vec![
        "--json",
        "bench",
        "--posts",
        "5",
        "--comments",
        "300",
        "--in-flight",
        "16",
        "--latency-samples",
        "10",
        // A loaded machine (the suite runs tests side by side) can be slow to answer.
        "--timeout",
        "30",
    ];
    args.extend_from_slice(extra);
    serde_json::from_str(&blog.ok(&args)).unwrap()
}

#[test]
fn bench_reports_the_cpu_each_comment_costs_redis_and_blogctl() {
    let blog = Blog::new();
    let embedded = bench(&blog, &["--embedded"]);
    for field in [
        "comments_per_second",
        "redis_cpu_us_per_comment",
        "blogctl_cpu_us_per_comment",
        "rebuild_redis_cpu_us_per_event",
        "rebuild_blogctl_cpu_us_per_event",
    ] {
        let value = embedded[field].as_f64().unwrap_or(0.0);
        assert!(value > 0.0, "{field}: {embedded}");
    }
    // The query view is rebuilt from the posts' and the comments' streams: each post, and each
    // comment created, then updated with its verdict.
    assert_eq!(embedded["rebuild_events"], 5 + 2 * (300 + 10), "{embedded}");

    // Services apart: each one's process is found, and its CPU counted.
    let apart = Blog {
        namespace: "apart".to_owned(),
        ..Blog::on(crate::support::RedisServer::start())
    };
    let _services: Vec<_> = ["posts", "comments", "moderation", "query"]
        .iter()
        .map(|name| apart.serve(&[name]))
        .collect();
    let report = bench(&apart, &[]);
    let resident = report["resident_kib"].as_array().unwrap();
    assert_eq!(resident.len(), 4, "{report}");
    assert!(report["blogctl_cpu_us_per_comment"].as_f64().unwrap() > 0.0);
}

/// On a 3-master Cluster with 8 partitions, the Redis CPU is every master's, and each one's share
/// is reported: the namespace's partitions spread over all three.
#[test]
fn bench_on_a_cluster_with_eight_partitions_reports_each_masters_share() {
    let blog = crate::cluster::blog_on_cluster(&[]);
    let run = blog.ok(&[
        "--json",
        "--partitions",
        "8",
        "bench",
        "--embedded",
        "--posts",
        "40",
        "--comments",
        "400",
        "--latency-samples",
        "5",
    ]);
    let report: Value = serde_json::from_str(&run).unwrap();
    assert_eq!(report["partitions"], 8, "{report}");
    let shares = report["redis_cpu_share_by_master"].as_array().unwrap();
    assert_eq!(shares.len(), 3, "{report}");
    // Partitions 0 and 4 on the first master, 1, 2, 5, 6 on the second, 3 and 7 on the third:
    // 40 posts, each in a random partition, leave none of them idle.
    let shares: Vec<f64> = shares
        .iter()
        .map(|share| share[1].as_f64().unwrap())
        .collect();
    assert!(shares.iter().all(|&share| share > 0.05), "{report}");
    let total: f64 = shares.iter().sum();
    assert!((total - 1.0).abs() < 1e-6, "{report}");
    assert!(report["redis_cpu_us_per_comment"].as_f64().unwrap() > 0.0);
    // The rebuild covers every partition: each post, each comment created then updated.
    assert_eq!(report["rebuild_events"], 40 + 2 * (400 + 5), "{report}");
}

/// `--busy-poll`: the whole pipeline runs in a process that polls instead of sleeping (that it
/// spins, and stops, is in `ops.rs`, through the metrics).
#[test]
fn bench_runs_with_busy_polling() {
    let report = bench(&Blog::new(), &["--embedded", "--busy-poll", "500"]);
    assert!(
        report["latency_ms"]["p50"].as_f64().unwrap() > 0.0,
        "{report}"
    );
}
