//! The posts service: creates posts on request and announces them with `PostCreated`.
//!
//! Keys: `<ns>:posts:{<ns>.0}:post:<id>` (hash: id, title), `...:request:<request id>` (its
//! answer, for 24 hours), `...:inbox` (its request stream).

use std::sync::LazyLock;

use serde::{Deserialize, Serialize};

use crate::bus::{Delivery, Handler, Plan, StepScript};
use crate::error::Malformed;
use crate::events::{Post, validate_title};
use crate::keyspace::{Keys, Partition, Partitions, Service};
use crate::request::{Inbox, Incoming, Reply, request_script};

pub const SERVICE: Service = Service::Posts;
pub const NAME: &str = SERVICE.name();
/// The one command of the posts inbox.
pub const CREATE_POST: &str = "CreatePost";

/// Data of a `CreatePost` request.
#[derive(Debug, Serialize, Deserialize)]
pub struct CreatePost {
    pub title: String,
}

/// Creates a post: its record, `PostCreated`, the answer.
static CREATE: LazyLock<StepScript> = LazyLock::new(|| {
    request_script(
        &["post"],
        &["post_id", "title", "event", "response"],
        &[include_str!("lua/posts_create.lua")],
    )
});

pub struct Posts {
    keys: Keys,
    partitions: Partitions,
    partition: Partition,
    inbox: Inbox,
}

impl Posts {
    pub fn new(keys: &Keys, partitions: Partitions, partition: Partition) -> Posts {
        Posts {
            keys: keys.clone(),
            partitions,
            partition,
            inbox: Inbox::new(keys, SERVICE, partition),
        }
    }
}

impl Handler for Posts {
    fn plan(&mut self, delivery: &Delivery) -> Plan {
        let request = match Incoming::parse(delivery) {
            Ok(request) if request.command == CREATE_POST => request,
            Ok(request) => {
                let reason = format!("unknown command {:?}", request.command);
                return Plan::Dead(Malformed(reason));
            }
            Err(reason) => return Plan::Dead(reason),
        };
        let command: CreatePost = match request.decode() {
            Ok(command) => command,
            Err(reason) => return Plan::Dead(reason),
        };
        let title = match validate_title(&command.title) {
            Ok(title) => title,
            Err(failure) => {
                let reply = Reply::<()>::Invalid {
                    message: failure.message,
                };
                return Plan::Run(self.inbox.answer(delivery, &request, &reply));
            }
        };
        let post = Post {
            // An id of this partition: its comments go where the post is.
            id: self.partitions.new_post_id(self.partition),
            title,
        };
        let step = self
            .inbox
            .step(&CREATE, delivery, &request)
            .key("post", self.keys.post(self.partition, &post.id.to_string()))
            .arg("post_id", post.id.to_string())
            .arg("title", &post.title)
            .arg(
                "event",
                serde_json::to_string(&post).expect("posts serialize"),
            )
            .arg("response", Reply::Ok { value: &post }.to_json());
        Plan::Run(step)
    }
}
