//! The shell client: commands that send requests to services and read the query view.

pub mod comment;
pub mod post;

use std::time::{Duration, Instant};

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
