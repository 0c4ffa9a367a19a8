//! Busy polling (`--busy-poll`): the runtime keeps checking for I/O, without sleeping, until a
//! while has passed without work.
//!
//! A comment's path crosses four services in turn, and at one comment at a time most of its
//! time goes to waking sleeping processes: on a virtual machine, a thread woken from its sleep
//! in `epoll_wait` starts late, and the sleep and the wake-up cost more CPU than the work between
//! them (BENCHMARKS.md). A process that is still polling when the next reply comes is not woken.
//! What it costs is the CPU it spins, a core's worth while a comment is in flight: an option,
//! off by default, for a process that has a core to itself.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The longest window `--busy-poll` takes, in microseconds: a hop of a comment's path takes
/// about 0.1 ms, so 10 ms covers any gap between them.
pub const MAX_WINDOW_MICROS: u64 = 10_000;

thread_local! {
    /// Work noted on this thread (see [`note_work`]). A current-thread runtime runs its tasks
    /// on the thread that made it, so other threads' runtimes (rebuild's and export's reading
    /// threads) count their own and never keep this one's spin going.
    static WORK: Cell<u64> = const { Cell::new(0) };
    /// Whether a spin waits for work on this thread ...
    static WAITING: Cell<bool> = const { Cell::new(false) };
    /// ... and what wakes it.
    static START: Arc<Notify> = Arc::new(Notify::new());
}

/// Time spent spinning, in nanoseconds (the metrics' `blogctl_busy_poll_seconds_total`).
static SPUN_NANOS: AtomicU64 = AtomicU64::new(0);

/// How long this process has spent in its spins' windows so far, the work done meanwhile
/// included: at most the CPU busy polling cost it.
pub fn spun() -> Duration {
    Duration::from_nanos(SPUN_NANOS.load(Ordering::Relaxed))
}

/// Notes work on the current thread: an entry delivered to a service, a request sent, a read
/// of the view. It starts a spin, or keeps one going. The rest (a blocking read coming back
/// empty, a consumer's liveness mark, take-over's searches) is not work, so that an idle
/// service does not spin.
pub fn note_work() {
    WORK.with(|work| work.set(work.get() + 1));
    if WAITING.with(|waiting| waiting.replace(false)) {
        START.with(|start| start.notify_one());
    }
}

/// Keeps a current-thread runtime polling for `window` after its last work. Spawn
/// [`BusyPoll::run`] on the runtime.
#[derive(Debug)]
pub struct BusyPoll {
    window: Duration,
}

impl BusyPoll {
    pub fn new(window: Duration) -> BusyPoll {
        BusyPoll { window }
    }

    /// Waits for work; then spins until `window` passes without more, and waits again.
    ///
    /// A spin is a loop of `yield_now`: with a task always ready, the runtime checks for I/O
    /// without blocking (`epoll_wait` with no timeout) instead of sleeping, and runs the tasks
    /// it wakes before this one again.
    pub async fn run(self) {
        let start = START.with(Arc::clone);
        // Dropped with the runtime while waiting: no later work on this thread (a test's) is
        // to leave a start behind for another spin.
        let _waiting = NotWaitingOnDrop;
        loop {
            // Nothing runs between this and the first poll of `notified()`, so no work can be
            // noted in between and leave a stale start behind.
            WAITING.with(|waiting| waiting.set(true));
            start.notified().await;
            let (mut last_work, mut seen) = (Instant::now(), WORK.with(Cell::get));
            let mut counted = last_work;
            loop {
                tokio::task::yield_now().await;
                let now = Instant::now();
                let spun = u64::try_from((now - counted).as_nanos()).unwrap_or(u64::MAX);
                SPUN_NANOS.fetch_add(spun, Ordering::Relaxed);
                counted = now;
                let work = WORK.with(Cell::get);
                if work != seen {
                    (last_work, seen) = (now, work);
                }
                if now - last_work >= self.window {
                    break;
                }
            }
        }
    }
}

/// Clears this thread's `WAITING` when dropped.
struct NotWaitingOnDrop;

impl Drop for NotWaitingOnDrop {
    fn drop(&mut self) {
        // (Gone already when the thread itself is ending.)
        let _ = WAITING.try_with(|waiting| waiting.set(false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;
    use std::sync::Mutex;

    /// Runs `task` on a current-thread runtime busy-polling with `window`, then until the
    /// runtime has slept `more` more times; returns how long the thread stayed awake after
    /// each wake-up.
    fn awake_times(window: Duration, more: usize, task: impl Future<Output = ()>) -> Vec<Duration> {
        // (when the thread last woke, how long each wake-up lasted until the next sleep)
        let awake = Arc::new(Mutex::new((None::<Instant>, Vec::<Duration>::new())));
        let (on_wake, on_sleep) = (Arc::clone(&awake), Arc::clone(&awake));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .on_thread_unpark(move || on_wake.lock().unwrap().0 = Some(Instant::now()))
            .on_thread_park(move || {
                let mut awake = on_sleep.lock().unwrap();
                if let Some(woke) = awake.0.take() {
                    awake.1.push(woke.elapsed());
                }
            })
            .build()
            .unwrap();
        runtime.block_on(async {
            tokio::spawn(BusyPoll::new(window).run());
            task.await;
            // Each timer wakes the thread; a spin that never ended would never let it sleep
            // again.
            let deadline = Instant::now() + Duration::from_secs(10);
            let slept = awake.lock().unwrap().1.len();
            while awake.lock().unwrap().1.len() < slept + more {
                assert!(Instant::now() < deadline, "the runtime never slept again");
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            awake.lock().unwrap().1.clone()
        })
    }

    /// Work every millisecond for 30 ms, with a window of 10 ms: the thread stays awake
    /// through it (a spin that work did not keep going would last about 10 ms), and sleeps
    /// again once the work has stopped.
    #[test]
    fn work_keeps_the_runtime_awake_for_the_window_after_it() {
        let work = async {
            let started = Instant::now();
            while started.elapsed() < Duration::from_millis(30) {
                note_work();
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        };
        let awake = awake_times(Duration::from_millis(10), 3, work);
        assert!(
            awake
                .iter()
                .any(|lasted| *lasted >= Duration::from_millis(25)),
            "no wake-up lasted through the work: {awake:?}"
        );
    }

    /// Another thread's work does not keep this runtime's spin going: started by work of its
    /// own, the spin ends a window later while another thread notes work without pause.
    #[test]
    fn another_threads_work_does_not_keep_the_spin_going() {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let busy_elsewhere = std::thread::spawn({
            let stop = Arc::clone(&stop);
            move || {
                while !stop.load(Ordering::Relaxed) {
                    note_work();
                    std::thread::yield_now();
                }
            }
        });
        let window = Duration::from_millis(10);
        let awake = awake_times(window, 3, async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            note_work();
        });
        stop.store(true, Ordering::Relaxed);
        busy_elsewhere.join().unwrap();
        assert!(
            // Were it kept going, it would never end: any bound tells, a loose one is not fooled
            // by a test thread preempted on a loaded machine.
            awake.iter().all(|lasted| *lasted < Duration::from_secs(1)),
            "spun on another thread's work: {awake:?}"
        );
    }

    /// Without work the runtime sleeps at every chance: an idle service wakes for its timers,
    /// and does not spin.
    #[test]
    fn without_work_the_runtime_never_spins() {
        let window = Duration::from_millis(200);
        let awake = awake_times(window, 20, async {});
        assert!(
            awake.iter().all(|lasted| *lasted < window),
            "spun without work: {awake:?}"
        );
    }
}
