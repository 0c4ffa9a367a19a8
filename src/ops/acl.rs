//! `blogctl acl`: a Redis ACL user per service, one for clients and one for operators, each
//! limited to the keys and commands it needs, so that Redis itself refuses (`NOPERM`) a process
//! that writes another service's keys or stream.
//!
//! The model (Redis 7 ACLs: key patterns, read-only `%R~` patterns, and selectors, each a set
//! of commands on a set of keys that a command must fit as a whole):
//! - a **service** reads and writes its own keys (`<ns>:<service>:*`, its own events stream
//!   included), adds dead letters and answers (`<ns>:dead:*`, `<ns>:replies:*`); a selector lets it
//!   read, acknowledge and claim entries of the streams it follows, and run its steps over them,
//!   but no command that adds to them; it may also read what its own health check
//!   (`status --check --service <name>`) looks at: the size of those streams and the shared
//!   stream of earlier versions, read-only;
//! - the **client** adds requests to the inboxes (by a script that also reads the posts' stream's
//!   last id), waits for and marks reply keys, and reads the query view with read-only scripts
//!   (`EVALSHA_RO`) and read-only key patterns;
//! - the **operator** may run any command but the dangerous and administrative ones, on the
//!   namespace's keys only;
//! - Redis's **`default`** user (what a connection is before `AUTH`) is off in the file, since
//!   Redis would add an open one (no password, every command) in its place; an administrator
//!   who wants one adds their own user to the file.
//!
//! What ACLs cannot stop: group names are not keys, so a service may acknowledge or claim
//! another group's entries on a stream it follows; and a service may create a group on such a
//! stream.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::Args;
use color_eyre::Result;
use color_eyre::eyre::WrapErr;

use crate::error::Failure;
use crate::keyspace::{Keys, Service};
use crate::output::print_line;
use crate::services;

/// Commands every user needs to connect and to tell what the server is (a Cluster client also
/// asks for the slots, and follows `ASK`).
const CONNECT: &str = "+ping +hello +auth +client|setname +client|id +select +info \
    +cluster|slots +cluster|shards +cluster|nodes +asking +readonly";

/// What a service runs on its own keys, including what its scripts call, and what its health
/// check (`status --check --service <name>`) reads.
const SERVICE: &str = "+evalsha +eval +script|load +time +xreadgroup +xack +xadd +xdel +xrange \
    +xrevrange +xlen +xinfo|groups +xinfo|consumers +xinfo|stream +xgroup|create \
    +xgroup|createconsumer +xgroup|delconsumer +xautoclaim +xclaim +xpending +get +set +del \
    +unlink +exists +type +memory|usage +expire +pexpire +hget +hset +hsetnx +hdel +hincrby \
    +hgetall +sadd +sismember +zadd +rpush +lpush";

/// What a service runs on the streams it follows (in a selector with its own keys, so that a
/// step's script, which names the followed stream and its own keys, fits it as a whole): no
/// command that adds to them. `exists` is for a step's touch, which names the entry's stream
/// with its generation's keys (see `services::generations::TOUCH`); `type` and `memory|usage`
/// are for its health check.
const FOLLOWER: &str = "+evalsha +eval +xreadgroup +xack +xrange +xrevrange +xlen +xinfo|groups \
    +xinfo|consumers +xinfo|stream +xgroup|create +xgroup|createconsumer +xgroup|delconsumer \
    +xautoclaim +xclaim +xpending +exists +type +memory|usage";

/// What the client runs: add a request (to an inbox, by a script reading the posts' stream),
/// wait for its answer, mark it given up, read the view with read-only scripts.
const CLIENT: &str = "+eval +eval_ro +evalsha_ro +time +xadd +xrevrange \
    +xinfo|consumers +blpop +lpop +set +get +exists +zrange +zcard +hget +hgetall +hmget +hvals +hlen";

/// The client's request script names an inbox and the posts' stream; it may only add to the
/// inbox (the selector has no command that writes a stream but the script itself).
const ENQUEUE: &str = "+eval";

/// What an operator runs: anything but dangerous or administrative commands.
const OPERATOR: &str = "+@all -@dangerous -@admin +info";

/// Arguments of `blogctl acl`.
#[derive(Debug, Args)]
pub struct AclArgs {
    /// Directory of the users' passwords, one `<user>.password` file each (its first line);
    /// a missing one is created with a random password, readable by its owner only.
    #[arg(long, value_name = "DIR")]
    pub passwords: PathBuf,
    /// Print `ACL SETUSER` commands (for `redis-cli`) instead of the lines of an ACL file
    /// (which also turns Redis's `default` user off; these leave it as it is).
    #[arg(long)]
    pub setuser: bool,
}

/// The user Redis authenticates a connection as before `AUTH`.
const DEFAULT_USER: &str = "default";

/// One user of the model: its name and its rules, password aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub rules: String,
}

/// The user a service runs as: `<ns>-<service>`.
pub fn service_user(keys: &Keys, service: Service) -> String {
    format!("{}-{service}", keys.namespace())
}

/// The user clients run as: `<ns>-client`.
pub fn client_user(keys: &Keys) -> String {
    format!("{}-client", keys.namespace())
}

/// The user operators run as: `<ns>-operator`.
pub fn operator_user(keys: &Keys) -> String {
    format!("{}-operator", keys.namespace())
}

/// Every user of the namespace, with its rules.
pub fn users(keys: &Keys) -> Vec<User> {
    let mut users: Vec<User> = Service::ALL
        .into_iter()
        .map(|service| User {
            name: service_user(keys, service),
            rules: service_rules(keys, service),
        })
        .collect();
    users.push(User {
        name: client_user(keys),
        rules: client_rules(keys),
    });
    users.push(User {
        name: operator_user(keys),
        rules: format!("{CONNECT} {OPERATOR} ~{}", keys.namespace_pattern()),
    });
    users
}

fn service_rules(keys: &Keys, service: Service) -> String {
    // Every service may fix the partition count on the namespace's first serve.
    let own = [
        keys.service_pattern(service),
        keys.dead_pattern(),
        keys.replies_pattern(),
        keys.partitions_pattern(),
    ];
    let patterns =
        |list: &[String]| -> String { list.iter().map(|pattern| format!(" ~{pattern}")).collect() };
    // Its health check looks for entries left on the shared stream of earlier versions.
    let mut rules = format!(
        "{CONNECT} {SERVICE}{} %R~{}",
        patterns(&own),
        keys.shared_events_pattern()
    );
    let followed: Vec<String> = services::follows(service)
        .iter()
        .map(|&producer| keys.events_pattern(producer))
        .collect();
    if !followed.is_empty() {
        let keys_of_steps = [&followed[..], &own[..]].concat();
        let _ = write!(rules, " ({FOLLOWER}{})", patterns(&keys_of_steps));
    }
    rules
}

fn client_rules(keys: &Keys) -> String {
    let inboxes: Vec<String> = Service::ALL
        .into_iter()
        .filter(|&service| {
            services::streams(keys, service, crate::keyspace::Partition::FIRST)
                .1
                .is_some()
        })
        .map(|service| keys.inbox_pattern(service))
        .collect();
    let stamped = keys.events_pattern(crate::request::STAMPED_FROM);
    let mut rules = format!(
        "{CONNECT} {CLIENT} ~{} %R~{} %R~{stamped} %R~{}",
        keys.replies_pattern(),
        keys.service_pattern(Service::Query),
        keys.partitions_pattern(),
    );
    for inbox in &inboxes {
        let _ = write!(rules, " ~{inbox}");
    }
    for service in Service::ALL {
        let _ = write!(rules, " %R~{}", keys.alive_pattern(service));
    }
    let enqueue: String = inboxes.iter().map(|inbox| format!(" ~{inbox}")).collect();
    let _ = write!(rules, " ({ENQUEUE}{enqueue} ~{stamped})");
    rules
}

pub fn run(keys: &Keys, args: &AclArgs) -> Result<()> {
    for line in lines(keys, args)? {
        print_line(&line)?;
    }
    Ok(())
}

/// What `run` prints: the ACL file's lines, or the `ACL SETUSER` commands.
fn lines(keys: &Keys, args: &AclArgs) -> Result<Vec<String>> {
    let mut lines = Vec::new();
    if !args.setuser {
        // Redis adds a `default` user the file does not name, and that one is open: on, no
        // password, every command and key.
        lines.push(format!("user {DEFAULT_USER} off"));
    }
    for user in &users(keys) {
        let password = password(&args.passwords, &user.name)?;
        let hash = sha256_hex(password.as_bytes());
        lines.push(if args.setuser {
            format!(
                "ACL SETUSER {} reset on #{hash} resetchannels {}",
                user.name, user.rules
            )
        } else {
            format!("user {} on #{hash} resetchannels {}", user.name, user.rules)
        });
    }
    Ok(lines)
}

/// The password of `user`, from `<directory>/<user>.password`, created when missing.
fn password(directory: &Path, user: &str) -> Result<String> {
    let path = directory.join(format!("{user}.password"));
    if !path.exists() {
        std::fs::create_dir_all(directory)
            .wrap_err_with(|| format!("creating {}", directory.display()))?;
        let created = random_password()?;
        write_private(&path, &format!("{created}\n"))?;
        eprintln!("blogctl: created {} (a random password)", path.display());
    }
    let text = std::fs::read_to_string(&path)
        .map_err(|error| Failure::invalid(format!("cannot read {}: {error}", path.display())))?;
    let password = text.lines().next().unwrap_or_default().to_owned();
    if password.is_empty() || password.contains(char::is_whitespace) {
        return Err(Failure::invalid(format!(
            "{}: the first line must be a password without spaces",
            path.display()
        ))
        .into());
    }
    Ok(password)
}

/// 32 random bytes from the operating system, as hex.
fn random_password() -> Result<String> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| color_eyre::eyre::eyre!("no random bytes from the operating system"))?;
    Ok(hex(&bytes))
}

/// Writes a file only its owner may read.
fn write_private(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .wrap_err_with(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .wrap_err_with(|| format!("writing {}", path.display()))
}

/// SHA-256 as hex, as Redis's `#<hash>` password rules take it.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_follows_streams_only_through_its_selector() {
        let keys = Keys::new("blog").unwrap();
        let comments = service_rules(&keys, Service::Comments);
        let (root, selector) = comments.split_once(" (").unwrap();
        assert!(root.contains("+xadd"));
        assert!(root.contains("~blog:comments:*"));
        assert!(!root.contains("blog:posts"));
        assert!(selector.contains("~blog:posts:{blog.*}:events"));
        assert!(selector.contains("~blog:moderation:{blog.*}:events"));
        assert!(!selector.contains("+xadd"), "{selector}");
        // Posts follows nothing: no selector.
        assert!(!service_rules(&keys, Service::Posts).contains('('));
    }

    #[test]
    fn the_client_reads_the_view_and_adds_only_to_inboxes() {
        let keys = Keys::new("blog").unwrap();
        let client = client_rules(&keys);
        assert!(client.contains("%R~blog:query:*"));
        assert!(!client.contains(" ~blog:query:*"));
        assert!(client.contains(" ~blog:posts:{blog.*}:inbox"));
        assert!(client.contains(" ~blog:comments:{blog.*}:inbox"));
        assert!(client.contains("%R~blog:posts:{blog.*}:events"));
    }

    #[test]
    fn the_file_turns_the_default_user_off_and_setuser_leaves_it() {
        let keys = Keys::new("blog").unwrap();
        let dir = tempfile::tempdir().unwrap();
        let args = |setuser| AclArgs {
            passwords: dir.path().to_owned(),
            setuser,
        };
        let file = lines(&keys, &args(false)).unwrap();
        assert_eq!(file[0], "user default off");
        assert_eq!(file.len(), 7, "{file:?}");
        assert!(file[1..].iter().all(|line| line.starts_with("user blog-")));
        let setuser = lines(&keys, &args(true)).unwrap();
        assert_eq!(setuser.len(), 6);
        assert!(!setuser.iter().any(|line| line.contains("default")));
        // The same passwords, kept in their files.
        assert_eq!(file[1..].len(), setuser.len());
        for (line, command) in file[1..].iter().zip(&setuser) {
            let hash = |text: &str| text.split(" #").nth(1).unwrap()[..64].to_owned();
            assert_eq!(hash(line), hash(command));
        }
    }

    #[test]
    fn hashes_are_sha256() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
