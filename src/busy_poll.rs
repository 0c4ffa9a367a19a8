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
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// Commands sent to Redis by this process (see [`note_work`]): what counts as work. Every hop
/// of a comment's path ends in one, and time alone cannot tell work from the thread being
/// preempted on a busy machine.
static SENT: AtomicU64 = AtomicU64::new(0);

/// Counts a command sent to Redis, which keeps a spin going (`Connection` calls it for each).
pub fn note_work() {
    SENT.fetch_add(1, Ordering::Relaxed);
}

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

    /// Spins after each wake-up until `window` passes without a command sent to Redis, then
    /// waits for the next wake-up.
    ///
    /// A spin is a loop of `yield_now`: with a task always ready, the runtime checks for I/O
    /// without blocking (`epoll_wait` with no timeout) instead of sleeping, and runs the tasks
    /// it wakes before this one again. Only a real sleep calls the unpark hook, so the spin
    /// never restarts itself.
    pub async fn run(self) {
        loop {
            self.woken.notified().await;
            let (mut last_work, mut seen) = (Instant::now(), SENT.load(Ordering::Relaxed));
            loop {
                tokio::task::yield_now().await;
                let now = Instant::now();
                let sent = SENT.load(Ordering::Relaxed);
                if sent != seen {
                    (last_work, seen) = (now, sent);
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
    use std::future::Future;
    use std::sync::Mutex;

    /// Runs `task` on a busy-polling runtime with `window`, then waits until the runtime has
    /// slept after `wake_ups` wake-ups; returns how long each wake-up lasted until the next
    /// sleep.
    fn awake_times(
        window: Duration,
        wake_ups: usize,
        task: impl Future<Output = ()>,
    ) -> Vec<Duration> {
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
        runtime.block_on(async {
            tokio::spawn(busy_poll.run());
            task.await;
            // Each timer wakes the thread; a spin that never ended would never let it sleep
            // again, and no more wake-ups would be measured.
            let deadline = Instant::now() + Duration::from_secs(10);
            let measured = awake.lock().unwrap().1.len();
            while awake.lock().unwrap().1.len() < measured + wake_ups {
                assert!(Instant::now() < deadline, "the runtime never slept again");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            awake.lock().unwrap().1.clone()
        })
    }

    /// The runtime sleeps again once the window has passed without work, and only then: every
    /// sleep comes at least a window after the wake-up before it.
    #[test]
    fn the_spin_ends_a_window_after_each_wake_up() {
        let window = Duration::from_millis(3);
        for lasted in awake_times(window, 5, async {}) {
            assert!(
                lasted >= window,
                "slept {lasted:?} after a wake-up, within the window"
            );
        }
    }

    /// Commands sent keep the spin going: work every millisecond for 30 ms, with a window of
    /// 10 ms, is one wake-up.
    #[test]
    fn work_keeps_the_runtime_awake() {
        let work = async {
            // The first timer puts the thread to sleep and wakes it: the spin starts.
            tokio::time::sleep(Duration::from_millis(1)).await;
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(30) {
                note_work();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let awake = awake_times(Duration::from_millis(10), 1, work);
        assert!(
            awake
                .iter()
                .any(|lasted| *lasted >= Duration::from_millis(30)),
            "no wake-up lasted through the work: {awake:?}"
        );
    }
}
