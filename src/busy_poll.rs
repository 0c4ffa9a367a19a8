//! Busy polling (`--busy-poll`): the runtime keeps checking for I/O, without sleeping, until a
//! while has passed without work.
//!
//! A comment's path crosses four services in turn, and at one comment at a time most of its
//! time goes to waking sleeping processes: on a virtual machine, a thread woken from its sleep
//! in `epoll_wait` starts late, and the sleep and the wake-up cost more CPU than the work between
//! them (BENCHMARKS.md). A process that is still polling when the next reply comes is not woken.
//! What it costs is the CPU it spins, a core's worth while a comment is in flight: an option,
//! off by default, for a process that has a core to itself.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// A pass of the spin that took longer than this ran other tasks: there was work.
const WORK: Duration = Duration::from_micros(10);

/// Keeps a current-thread runtime polling for `window` after its last work. Install
/// [`BusyPoll::on_unpark`] as the runtime's `on_thread_unpark` hook, and spawn
/// [`BusyPoll::run`] on it.
#[derive(Debug)]
pub struct BusyPoll {
    window: Duration,
    woken: Arc<Notify>,
}

impl BusyPoll {
    pub fn new(window: Duration) -> BusyPoll {
        BusyPoll {
            window,
            woken: Arc::new(Notify::new()),
        }
    }

    /// The hook the runtime calls when its thread wakes from a sleep: starts a spin.
    pub fn on_unpark(&self) -> impl Fn() + Send + Sync + 'static {
        let woken = Arc::clone(&self.woken);
        move || woken.notify_one()
    }

    /// Spins after each wake-up until `window` passes without work, then waits for the next.
    ///
    /// A spin is a loop of `yield_now`: with a task always ready, the runtime checks for I/O
    /// without blocking (`epoll_wait` with no timeout) instead of sleeping, and runs the tasks
    /// it wakes before this one again. Only a real sleep calls the unpark hook, so the spin
    /// never restarts itself.
    pub async fn run(self) {
        loop {
            self.woken.notified().await;
            let mut last_work = Instant::now();
            loop {
                let before = Instant::now();
                tokio::task::yield_now().await;
                let now = Instant::now();
                if now - before > WORK {
                    last_work = now;
                }
                if now - last_work >= self.window {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// The runtime sleeps again once the window has passed without work, and only then: every
    /// sleep comes at least a window after the wake-up before it.
    #[test]
    fn the_spin_ends_a_window_after_each_wake_up() {
        let window = Duration::from_millis(3);
        let busy_poll = BusyPoll::new(window);
        // (when the thread last woke, how long each wake-up lasted until the next sleep)
        let awake = Arc::new(Mutex::new((None::<Instant>, Vec::<Duration>::new())));
        let (on_wake, on_sleep) = (Arc::clone(&awake), Arc::clone(&awake));
        let unpark = busy_poll.on_unpark();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_unpark(move || {
                on_wake.lock().unwrap().0 = Some(Instant::now());
                unpark();
            })
            .on_thread_park(move || {
                let mut awake = on_sleep.lock().unwrap();
                if let Some(woke) = awake.0.take() {
                    awake.1.push(woke.elapsed());
                }
            })
            .build()
            .unwrap();
        let awake_times = runtime.block_on(async {
            tokio::spawn(busy_poll.run());
            // Each timer wakes the thread; without the spin ending it would never sleep again,
            // and no wake-up would be measured.
            let deadline = Instant::now() + Duration::from_secs(10);
            while awake.lock().unwrap().1.len() < 5 {
                assert!(Instant::now() < deadline, "the runtime never slept again");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            awake.lock().unwrap().1.clone()
        });
        for lasted in awake_times {
            assert!(
                lasted >= window,
                "slept {lasted:?} after a wake-up, within the window"
            );
        }
    }
}
