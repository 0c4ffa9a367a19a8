//! CPU time spent by Redis and by blogctl, read before and after a phase of the bench: its cost
//! per comment varies far less than wall-clock figures on a busy machine.

use std::time::Duration;

use color_eyre::Result;
use color_eyre::eyre::eyre;

use crate::connection::Connection;

/// CPU time used so far (user and system).
#[derive(Debug, Clone, Default)]
pub struct CpuTime {
    /// By the Redis server (`INFO cpu`), or by every master of a Cluster, summed.
    pub redis: Duration,
    /// By each master, by address (one, `""`, on a single Redis).
    pub masters: Vec<(String, Duration)>,
    /// By this process and the service processes given.
    pub blogctl: Duration,
}

impl CpuTime {
    /// Now: Redis's (every master's), this process's (`getrusage`) and that of each process in
    /// `services` (`/proc/<pid>/stat`; one that is gone counts for nothing).
    pub async fn now(connection: &mut Connection, services: &[u32]) -> Result<CpuTime> {
        let mut masters = Vec::new();
        for (address, info) in connection.info_of_masters(&["cpu"]).await? {
            masters.push((address, redis_cpu(&info)?));
        }
        let others: Duration = services.iter().filter_map(|&pid| process_cpu(pid)).sum();
        Ok(CpuTime {
            redis: masters.iter().map(|(_, used)| *used).sum(),
            masters,
            blogctl: own_cpu() + others,
        })
    }

    /// Each master's share of the Redis CPU used since `earlier`, by address.
    pub fn shares(&self, earlier: &CpuTime) -> Vec<(String, f64)> {
        let total = self.redis.saturating_sub(earlier.redis).as_secs_f64();
        self.masters
            .iter()
            .map(|(address, now)| {
                let then = earlier
                    .masters
                    .iter()
                    .find(|(other, _)| other == address)
                    .map_or(Duration::ZERO, |(_, then)| *then);
                let used = now.saturating_sub(then).as_secs_f64();
                (
                    address.clone(),
                    if total > 0.0 { used / total } else { 0.0 },
                )
            })
            .collect()
    }

    /// What was used between `earlier` and this, in microseconds per `count` (comments, events).
    pub fn per(&self, earlier: &CpuTime, count: u64) -> (f64, f64) {
        let each = |now: Duration, then: Duration| {
            now.saturating_sub(then).as_secs_f64() * 1e6 / count.max(1) as f64
        };
        (
            each(self.redis, earlier.redis),
            each(self.blogctl, earlier.blogctl),
        )
    }
}

/// `used_cpu_sys` + `used_cpu_user` of an `INFO cpu` reply.
fn redis_cpu(info: &str) -> Result<Duration> {
    let field = |name: &str| -> Result<f64> {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|value| value.trim().parse().ok())
            .ok_or_else(|| eyre!("INFO cpu has no {name}"))
    };
    Ok(Duration::from_secs_f64(
        field("used_cpu_sys")? + field("used_cpu_user")?,
    ))
}

/// This process's CPU time, every thread's.
fn own_cpu() -> Duration {
    // SAFETY: getrusage only writes the struct it is given.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    time(usage.ru_utime) + time(usage.ru_stime)
}

/// The CPU time of a local blogctl process, from `/proc/<pid>/stat` (`utime` + `stime`).
fn process_cpu(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: the fields that follow are after it.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf only reads a setting.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (per_second > 0).then(|| Duration::from_secs_f64(ticks as f64 / per_second as f64))
}

/// Whether `pid` is a local blogctl process (a consumer name's pid may be another host's).
pub fn is_blogctl(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|name| name.trim() == "blogctl")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_measured() {
        // Work until the clocks tick (`/proc` counts in ticks of 10 ms), or give up: a loop the
        // optimiser cannot fold away (`black_box`), so that release builds measure it too.
        let before = own_cpu();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let mut x: u64 = 0;
        while (own_cpu() <= before || process_cpu(std::process::id()) == Some(Duration::ZERO))
            && std::time::Instant::now() < deadline
        {
            for i in 0..1_000_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        assert!(own_cpu() > before);
        let by_proc = process_cpu(std::process::id()).expect("our own /proc entry");
        assert!(by_proc > Duration::ZERO);
    }
}
