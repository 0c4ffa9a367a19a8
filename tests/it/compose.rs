//! docker-compose.yml: every command it gives a service is a valid `blogctl` invocation that
//! starts and serves (no Docker engine runs here, so the commands run directly).

use crate::support::{Blog, compose_lists};

/// The `command: [...]` of each service in docker-compose.yml.
fn compose_commands() -> Vec<Vec<String>> {
    compose_lists("command:")
        .into_iter()
        .filter(|args| args.first().is_some_and(|first| first == "serve"))
        .collect()
}

#[test]
fn every_compose_service_command_starts_and_serves() {
    let commands = compose_commands();
    // The services each command serves: its words before the first flag.
    let mut served: Vec<String> = commands
        .iter()
        .flat_map(|args| {
            args[1..]
                .iter()
                .take_while(|arg| !arg.starts_with("--"))
                .cloned()
                .collect::<Vec<_>>()
        })
        .collect();
    served.sort();
    assert_eq!(
        served,
        ["comments", "moderation", "posts", "query"],
        "compose runs each service once"
    );

    let blog = Blog::new();
    // Each on a free loopback port for its metrics, where compose gives each container 9100.
    let commands: Vec<Vec<String>> = commands
        .into_iter()
        .map(|args| {
            let mut args = args[1..].to_vec();
            if let Some(at) = args.iter().position(|arg| arg == "--metrics") {
                args[at + 1] = format!("127.0.0.1:{}", crate::support::free_port());
            }
            args
        })
        .collect();
    let services: Vec<_> = commands
        .iter()
        .map(|args| blog.serve(&args.iter().map(String::as_str).collect::<Vec<_>>()))
        .collect();
    let post = blog.ok(&["post", "create", "--wait", "Composed"]);
    assert_eq!(blog.verdict(&post, "an orange"), "rejected");
    for service in services {
        assert_eq!(service.terminate().0, 0);
    }
}
