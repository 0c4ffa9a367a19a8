//! Integration tests: real redis-server processes, the real `blogctl` binary.

mod bad_input;
mod bench;
mod cluster;
mod cluster_load;
mod compose;
mod delivery;
mod faults;
mod holes;
mod ops;
mod outages;
mod partitioned_ops;
mod partitions;
mod promises;
mod rebuild;
mod story;
mod support;
mod transfer;
mod users;
