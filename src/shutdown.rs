//! A shutdown signal that many tasks can watch: set once, seen by all.

use std::future::Future;
use std::time::Duration;

use tokio::sync::watch;

/// Watches for the request to stop.
#[derive(Debug, Clone)]
pub struct Shutdown {
    receiver: watch::Receiver<bool>,
}

/// Sets the shutdown; dropping it does not.
#[derive(Debug)]
pub struct Trigger {
    sender: watch::Sender<bool>,
}

impl Trigger {
    pub fn fire(&self) {
        self.sender.send_replace(true);
    }
}

/// A trigger and the shutdown it sets.
pub fn channel() -> (Trigger, Shutdown) {
    let (sender, receiver) = watch::channel(false);
    (Trigger { sender }, Shutdown { receiver })
}

impl Shutdown {
    /// A shutdown that is set when `signal` completes.
    pub fn from_future(signal: impl Future<Output = ()> + Send + 'static) -> (Trigger, Shutdown) {
        let (trigger, shutdown) = channel();
        let sender = trigger.sender.clone();
        tokio::spawn(async move {
            signal.await;
            sender.send_replace(true);
        });
        (trigger, shutdown)
    }

    pub fn requested(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Completes once shutdown is requested.
    pub async fn wait(&mut self) {
        // An error means every trigger is gone: nobody can ask any more, so wait forever.
        if self.receiver.wait_for(|stop| *stop).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// Sleeps for `duration` unless shutdown comes first; true when it did.
    pub async fn sleep(&mut self, duration: Duration) -> bool {
        tokio::select! {
            () = self.wait() => true,
            () = tokio::time::sleep(duration) => self.requested(),
        }
    }
}
