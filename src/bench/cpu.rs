//! CPU time spent by Redis and by blogctl, read before and after a phase of the bench: its cost
//! per comment varies far less than wall-clock figures on a busy machine.

use std::time::Duration;

use color_eyre::Result;
use color_eyre::eyre::eyre;

use crate::connection::Connection;

/// CPU time used so far (user and system).
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuTime {
    /// By the Redis server (`INFO cpu`).
    pub redis: Duration,
    /// By this process and the service processes given.
    pub blogctl: Duration,
}

impl CpuTime {
    /// Now: Redis's (the server holding `key`), this process's (`getrusage`) and that of each process in `services`
    /// (`/proc/<pid>/stat`; one that is gone counts for nothing).
    pub async fn now(connection: &mut Connection, key: &str, services: &[u32]) -> Result<CpuTime> {
        let redis = redis_cpu(connection, key).await?;
        let others: Duration = services.iter().filter_map(|&pid| process_cpu(pid)).sum();
        Ok(CpuTime {
            redis,
            blogctl: own_cpu() + others,
        })
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

/// `used_cpu_sys` + `used_cpu_user` of `INFO cpu`.
async fn redis_cpu(connection: &mut Connection, key: &str) -> Result<Duration> {
    let info = connection.info(key, &["cpu"]).await?;
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
        let before = own_cpu();
        let mut x: u64 = 0;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(own_cpu() > before);
        let by_proc = process_cpu(std::process::id()).expect("our own /proc entry");
        assert!(by_proc > Duration::ZERO);
    }
}
