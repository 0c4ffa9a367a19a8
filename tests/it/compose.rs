//! docker-compose.yml: hardened containers from pinned images, a Redis user per container, and
//! every command it gives a container valid and working. No Docker engine runs here, so the
//! commands run directly, each with its container's environment: its Redis user, and the
//! password file compose would mount at /run/secrets/, made by the one-time step
//! (scripts/compose-secrets.sh).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::support::{
    ComposeService, PATIENCE, RedisServer, Run, Service, compose_services, compose_text, free_port,
    wait_until,
};

/// Where compose mounts the secrets in a container.
const SECRETS: &str = "/run/secrets/";

/// The services compose runs with `blogctl serve`, and the tools run by hand.
const SERVED: [&str; 4] = ["posts", "comments", "moderation", "query"];
const TOOLS: [&str; 2] = ["client", "operator"];

fn service<'a>(services: &'a [ComposeService], name: &str) -> &'a ComposeService {
    services
        .iter()
        .find(|service| service.name == name)
        .unwrap_or_else(|| panic!("no service {name} in docker-compose.yml"))
}

/// Whether an image reference names a version (`redis:7.0.15`, `debian:12.12-slim`) or a
/// digest, rather than a tag that moves (`redis:7`, `rust:1-bookworm`, `latest`, none).
fn pinned(image: &str) -> bool {
    if image.contains("@sha256:") {
        return true;
    }
    let name = image.rsplit('/').next().unwrap();
    let Some((_, tag)) = name.split_once(':') else {
        return false;
    };
    let version: String = tag
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    version.contains('.') && !version.ends_with('.')
}

#[test]
fn pinned_means_a_version() {
    for image in [
        "redis:7.0.15",
        "rust:1.95.0-bookworm",
        "debian:12.12-slim",
        "a/b:1.2",
    ] {
        assert!(pinned(image), "{image}");
    }
    for image in [
        "redis:7",
        "redis",
        "redis:latest",
        "rust:1-bookworm",
        "debian:bookworm-slim",
    ] {
        assert!(!pinned(image), "{image}");
    }
}

#[test]
fn compose_runs_hardened_containers_from_pinned_images() {
    let services = compose_services();
    let names: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "redis",
            "posts",
            "comments",
            "moderation",
            "query",
            "client",
            "operator"
        ]
    );
    let text = compose_text();
    let code = text
        .lines()
        .filter(|line| !line.trim_start().starts_with('#'));
    for line in code {
        assert!(
            !line.trim_start().starts_with("ports:"),
            "no port is published: {line}"
        );
    }
    for service in &services {
        let name = &service.name;
        assert_eq!(
            service.value("read_only").as_deref(),
            Some("true"),
            "{name}"
        );
        assert_eq!(
            service.list("security_opt"),
            Some(vec!["no-new-privileges:true".to_owned()]),
            "{name}"
        );
        assert_eq!(
            service.list("cap_drop"),
            Some(vec!["ALL".to_owned()]),
            "{name}"
        );
        assert_eq!(service.value("privileged"), None, "{name}");
        match service.value("image") {
            Some(image) => assert!(pinned(&image), "{name}: {image} is not pinned"),
            None => assert!(
                service.is_blogctl(),
                "{name}: neither an image nor the build"
            ),
        }
    }
    // The images the blogctl image is built from, and the build front end.
    let dockerfile =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    let mut images: Vec<&str> = dockerfile
        .lines()
        .filter_map(|line| line.strip_prefix("FROM "))
        .map(|rest| rest.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(images.len(), 2, "a builder and a runtime: {images:?}");
    images.extend(
        dockerfile
            .lines()
            .filter_map(|line| line.strip_prefix("# syntax=")),
    );
    for image in images {
        assert!(pinned(image), "Dockerfile: {image} is not pinned");
    }

    // Redis: the users of the ACL file, a memory limit, and no eviction.
    let redis = service(&services, "redis").list("command").unwrap();
    let after = |flag: &str| {
        let at = redis.iter().position(|arg| arg == flag);
        at.and_then(|at| redis.get(at + 1)).map(String::as_str)
    };
    assert_eq!(
        after("--aclfile"),
        Some("/run/secrets/users.acl"),
        "{redis:?}"
    );
    assert_eq!(after("--maxmemory-policy"), Some("noeviction"), "{redis:?}");
    assert!(
        after("--maxmemory").is_some_and(|size| size.starts_with(|c: char| c.is_ascii_digit())),
        "{redis:?}"
    );

    // Each blogctl container: its own user, and that user's password file only.
    for name in SERVED.iter().chain(&TOOLS) {
        let service = service(&services, name);
        assert!(service.is_blogctl(), "{name}");
        let user = format!("blog-{name}");
        let secret = format!("{user}.password");
        assert_eq!(
            service.list("secrets"),
            Some(vec![secret.clone()]),
            "{name}"
        );
        let environment = service.environment();
        let variable = |wanted: &str| {
            environment
                .iter()
                .find(|(variable, _)| variable == wanted)
                .map(|(_, value)| value.as_str())
        };
        assert_eq!(
            variable("BLOGCTL_REDIS_URL"),
            Some(format!("redis://{user}@redis:6379").as_str()),
            "{name}"
        );
        assert_eq!(
            variable("BLOGCTL_REDIS_PASSWORD_FILE"),
            Some(format!("{SECRETS}{secret}").as_str()),
            "{name}"
        );
        assert!(
            text.contains(&format!("{secret}:\n    file: ./secrets/{secret}\n")),
            "{name}: the secret {secret} is ./secrets/{secret}"
        );
    }
    for name in SERVED {
        let check = service(&services, name).list("test").unwrap();
        assert_eq!(
            check,
            ["CMD", "blogctl", "status", "--check", "--service", name],
            "{name}'s healthcheck"
        );
    }
    // The passwords are never committed.
    let ignored =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.gitignore")).unwrap();
    assert!(ignored.lines().any(|line| line == "/secrets/"), "{ignored}");
}

/// A container's environment as it is here: the Redis at `port`, the secrets in `secrets`.
fn environment_here(service: &ComposeService, port: u16, secrets: &Path) -> Vec<(String, String)> {
    service
        .environment()
        .into_iter()
        .map(|(name, value)| {
            let value = value
                .replace("@redis:6379", &format!("@127.0.0.1:{port}"))
                .replace(SECRETS, &format!("{}/", secrets.display()));
            (name, value)
        })
        .collect()
}

/// `blogctl` as compose runs it in `service`'s container, here.
fn blogctl_in(service: &ComposeService, port: u16, secrets: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_blogctl"));
    command
        .env_remove("BLOGCTL_NAMESPACE")
        .env_remove("BLOGCTL_BANNED_WORDS")
        .env_remove("RUST_LOG")
        .envs(environment_here(service, port, secrets))
        .stdin(Stdio::null());
    command
}

fn run(mut command: Command, args: &[&str]) -> Run {
    command.args(args).output().expect("run blogctl").into()
}

/// The one-time step: the ACL file and the passwords, in `dir`.
fn make_secrets(dir: &Path) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/compose-secrets.sh");
    let made = Command::new("bash")
        .arg(script)
        .arg(dir)
        .env("BLOGCTL_BIN", env!("CARGO_BIN_EXE_blogctl"))
        .env_remove("BLOGCTL_NAMESPACE")
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
    // Only their owner may enter the directory; compose mounts the files as they are, and the
    // containers' users must read them.
    assert_eq!(mode(dir), 0o700);
    for name in SERVED.iter().chain(&TOOLS) {
        assert_eq!(mode(&dir.join(format!("blog-{name}.password"))), 0o644);
    }
    assert_eq!(mode(&dir.join("users.acl")), 0o644);
}

#[test]
fn every_compose_command_works_as_its_own_redis_user() {
    let services = compose_services();
    let workdir = tempfile::tempdir().unwrap();
    let secrets = workdir.path().join("secrets");
    make_secrets(&secrets);

    // Redis as compose starts it (here, on a free loopback port), probed as the operator.
    let redis_command = service(&services, "redis").list("command").unwrap();
    assert_eq!(redis_command[0], "redis-server");
    let here = format!("{}/", secrets.display());
    let redis_args: Vec<String> = redis_command[1..]
        .iter()
        .map(|arg| arg.replace(SECRETS, &here))
        .collect();
    let redis = RedisServer::start_with_user(
        &redis_args.iter().map(String::as_str).collect::<Vec<_>>(),
        "blog-operator",
        &secrets.join("blog-operator.password"),
    );
    let port = redis.port;
    // Its default user is off: a connection that does not authenticate may do nothing.
    let anonymous: redis::RedisResult<String> = redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .and_then(|mut connection| redis::cmd("PING").query(&mut connection));
    assert!(
        anonymous
            .as_ref()
            .is_err_and(|error| error.to_string().contains("NOAUTH")),
        "{anonymous:?}"
    );
    // Its healthcheck works all the same (a shell command: compose's `$$` is a `$`).
    let check = service(&services, "redis").list("test").unwrap();
    assert_eq!(check[0], "CMD-SHELL");
    let shell = check[1]
        .replace("$$", "$")
        .replace(SECRETS, &here)
        .replace("redis-cli ", &format!("redis-cli -p {port} "));
    let healthy = Command::new("sh").arg("-c").arg(&shell).output().unwrap();
    assert!(healthy.status.success(), "{shell}: {healthy:?}");
    // Its memory limit, without eviction, as the operator sees it.
    let password = std::fs::read_to_string(secrets.join("blog-operator.password")).unwrap();
    let url = format!("redis://blog-operator:{}@127.0.0.1:{port}", password.trim());
    let mut connection = redis::Client::open(url).unwrap().get_connection().unwrap();
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query(&mut connection)
        .unwrap();
    assert!(info.contains("maxmemory_policy:noeviction"), "{info}");
    assert!(!info.contains("maxmemory:0\r"), "{info}");

    // Each service's healthcheck, as its own user: unhealthy before the service ran.
    let healthcheck = |name: &str| {
        let check = service(&services, name).list("test").unwrap();
        assert_eq!(check[..2], ["CMD", "blogctl"]);
        let args: Vec<&str> = check[2..].iter().map(String::as_str).collect();
        run(blogctl_in(service(&services, name), port, &secrets), &args)
    };
    for name in SERVED {
        let check = healthcheck(name);
        assert_eq!(
            check.code, 6,
            "{name}'s healthcheck before it ran: {check:?}"
        );
    }

    // Every serving command, with its container's environment (its metrics on a free port
    // here, where compose gives each container 9100).
    let mut served: Vec<(String, Service)> = Vec::new();
    for compose_service in services.iter().filter(|s| s.is_blogctl()) {
        let Some(args) = compose_service.list("command") else {
            continue;
        };
        assert_eq!(args[0], "serve", "{}", compose_service.name);
        let mut args = args.clone();
        if let Some(at) = args.iter().position(|arg| arg == "--metrics") {
            args[at + 1] = format!("127.0.0.1:{}", free_port());
        }
        let mut command = blogctl_in(compose_service, port, &secrets);
        command.args(&args);
        served.push((compose_service.name.clone(), Service::start(command)));
    }
    let names: Vec<&str> = served.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, SERVED, "compose runs each service once");

    // The client creates, the operator reads the view.
    let client = service(&services, "client");
    let operator = service(&services, "operator");
    let post = run(
        blogctl_in(client, port, &secrets),
        &["post", "create", "Composed"],
    );
    assert_eq!(post.code, 0, "{post:?}");
    let post = post.stdout.trim().to_owned();
    let comment = run(
        blogctl_in(client, port, &secrets),
        &["comment", "create", &post, "an orange"],
    );
    assert_eq!(comment.code, 0, "{comment:?}");
    let mut shown = String::new();
    let rejected = wait_until(PATIENCE, || {
        let show = run(
            blogctl_in(operator, port, &secrets),
            &["--json", "post", "show", &post],
        );
        shown = format!("{show:?}");
        serde_json::from_str::<serde_json::Value>(&show.stdout)
            .is_ok_and(|view| view["comments"][0]["status"] == "rejected")
    });
    assert!(
        rejected,
        "the comment was not rejected in the view: {shown}"
    );

    // Healthy now, each as its own user.
    for name in SERVED {
        let mut last = None;
        let healthy = wait_until(PATIENCE, || {
            let check = healthcheck(name);
            let passed = check.code == 0;
            last = Some(check);
            passed
        });
        assert!(healthy, "{name}'s healthcheck: {last:?}");
    }
    for (name, service) in served {
        let log = service.log();
        assert!(
            !log.to_lowercase().contains("noperm"),
            "{name} was refused something: {log}"
        );
        assert_eq!(service.terminate().0, 0, "{name}");
    }
}
