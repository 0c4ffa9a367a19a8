//! The shell client: commands that send requests to services and read the query view.

pub mod comment;
pub mod post;

use std::io::Write;
use std::time::{Duration, Instant};

use crate::connection::{Connection, Redis};
use crate::error::Failure;
use crate::keys::Keys;

/// What every client command needs, from the global flags.
#[derive(Debug, Clone)]
pub struct Context {
    pub redis: Redis,
    pub keys: Keys,
    pub json: bool,
    pub timeout: Duration,
}

impl Context {
    /// A connection whose commands may block for up to the timeout (waiting for an answer).
    pub async fn connect(&self) -> Result<Connection, Failure> {
        self.redis
            .connect(Some(self.timeout + Duration::from_secs(2)))
            .await
    }
}

/// Prints one line on stdout; a closed pipe surfaces as an error the binary exits quietly on.
pub fn print_line(line: &str) -> std::io::Result<()> {
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{line}")?;
    stdout.flush()
}

/// Polls until a deadline with growing pauses (1 ms doubling to 50 ms): waiting on the view
/// must be quick when it is quick, and cheap when a service is slow or down.
#[derive(Debug)]
pub struct Poll {
    deadline: Instant,
    pause: Duration,
}

impl Poll {
    pub fn until(deadline: Instant) -> Poll {
        Poll {
            deadline,
            pause: Duration::from_millis(1),
        }
    }

    /// Pauses before the next look; false once the deadline has passed.
    pub async fn pause(&mut self) -> bool {
        let now = Instant::now();
        if now >= self.deadline {
            return false;
        }
        tokio::time::sleep(self.pause.min(self.deadline - now)).await;
        self.pause = (self.pause * 2).min(Duration::from_millis(50));
        true
    }
}

/// A progress bar on stderr when it is a terminal (and nothing otherwise): `what` names it.
pub fn progress_bar(length: u64, what: &'static str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(length);
    if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let style =
            indicatif::ProgressStyle::with_template("{msg:>9} {wide_bar} {pos}/{len} {per_sec}")
                .expect("the template is valid");
        bar.set_style(style);
        bar.set_message(what);
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    bar
}
