//! The `blogctl` binary: error reporting, logging, the command line, signals.

use std::io::IsTerminal;
use std::time::Duration;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser};
use tracing_subscriber::EnvFilter;

use blogctl::busy_poll::BusyPoll;
use blogctl::cli::{Cli, Command};
use blogctl::error::{exit_code, hint};

fn main() {
    let cli = parse_command_line();
    // Errors are reported in one line, never with a backtrace, so none is captured: with
    // RUST_BACKTRACE=1 capturing one per error would cost most of a second. Panics still follow
    // RUST_BACKTRACE.
    // SAFETY: nothing else runs yet: the runtime starts below.
    unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    if let Err(error) = color_eyre::install() {
        eprintln!("blogctl: {error}");
    }
    // Services log what they do; one-shot commands only warnings (not the redis crate's: a
    // Cluster node it cannot reach is reported once, by blogctl). RUST_LOG overrides either.
    let default_level = if matches!(cli.command, Command::Serve(_)) {
        "info"
    } else {
        "warn,redis=error"
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)),
        )
        .init();
    // One thread: every task waits on Redis, whose Lua steps are the bottleneck, so a second
    // worker only competes with Redis for the cores (measured: lower latency, same throughput).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("blogctl: error: cannot start the async runtime: {error}");
            std::process::exit(1);
        }
    };
    if cli.global.busy_poll > 0 {
        runtime.spawn(BusyPoll::new(Duration::from_micros(cli.global.busy_poll)).run());
    }
    let result = runtime.block_on(blogctl::cli::run(cli, stop_signal()));
    if let Err(report) = result {
        if is_broken_pipe(&report) {
            std::process::exit(0);
        }
        let mut message: Vec<String> = report.chain().map(ToString::to_string).collect();
        message.extend(hint(&report).map(str::to_owned));
        let message = message.join(": ").replace('\n', " ");
        eprintln!("blogctl: error: {}", blogctl::without_controls(&message));
        std::process::exit(exit_code(&report));
    }
}

/// Parses the command line; a usage error is one line on stderr and exit code 2, with clap's
/// suggestion ("did you mean ...?") and the help of the subcommand at hand. Bare `blogctl`
/// shows the help.
fn parse_command_line() -> Cli {
    if std::env::args_os().len() == 1 {
        let mut command = Cli::command();
        let _ = command.print_help();
        std::process::exit(0);
    }
    match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error)
            if !error.use_stderr()
                || error.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            error.exit()
        }
        Err(error) => {
            let rendered = error.render().to_string();
            // The message is everything before the usage block, on one line.
            let message: Vec<&str> = rendered
                .lines()
                .take_while(|line| !line.trim().is_empty())
                .map(str::trim)
                .collect();
            let message = message.join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            let line = format!(
                "blogctl: error: {message}{} (see '{} --help')",
                suggestion(&rendered),
                subcommand_at_hand()
            );
            eprintln!("{}", blogctl::without_controls(&line));
            std::process::exit(2);
        }
    }
}

/// Clap's "a similar ... exists: 'x'" tip, as "; did you mean 'x'?".
fn suggestion(rendered: &str) -> String {
    rendered
        .lines()
        .map(str::trim)
        .filter_map(|line| line.strip_prefix("tip: "))
        .find(|tip| tip.contains("similar"))
        .and_then(|tip| tip.rsplit_once(": "))
        .map(|(_, names)| format!("; did you mean {names}?"))
        .unwrap_or_default()
}

/// `blogctl` and the subcommands the arguments name before the first that is not one
/// (`blogctl post` for `blogctl post creat hi`).
fn subcommand_at_hand() -> String {
    let mut command = Cli::command();
    let mut path = vec!["blogctl".to_owned()];
    let args = std::env::args_os()
        .skip(1)
        .map(|arg| arg.to_string_lossy().into_owned());
    for arg in args.filter(|arg| !arg.starts_with('-')) {
        let Some(sub) = command.find_subcommand(&arg).cloned() else {
            break;
        };
        path.push(arg);
        command = sub;
    }
    path.join(" ")
}

/// Completes on SIGINT or SIGTERM.
async fn stop_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// A closed stdout (`blogctl post list | head -1`) is not an error worth a message.
fn is_broken_pipe(report: &color_eyre::Report) -> bool {
    report.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|error| error.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// mimalloc: measured to cut the client's and the services' CPU per event (BENCHMARKS.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
