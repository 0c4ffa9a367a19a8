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
