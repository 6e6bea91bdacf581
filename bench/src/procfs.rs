//! The broker's CPU time and memory from `/proc/<pid>`, and this process's
//! open-file limit. Parsing is pure and tested on sample text; [`sample`]
//! does the reading.

use std::io;

/// Clock ticks per second of `utime`/`stime` in `/proc/<pid>/stat`. This is
/// the kernel's `USER_HZ`, which is 100 on every Linux architecture this tool
/// runs on (x86, arm); reading `sysconf(_SC_CLK_TCK)` would need `unsafe`.
pub const CLOCK_TICKS_PER_SEC: u64 = 100;

/// One look at the broker process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSample {
    /// User plus system CPU time, in clock ticks.
    pub cpu_ticks: u64,
    /// Resident set size, in KiB.
    pub rss_kib: u64,
}

impl ProcSample {
    /// CPU seconds spent between `self` and a later sample.
    pub fn cpu_seconds_until(&self, later: &ProcSample) -> f64 {
        later.cpu_ticks.saturating_sub(self.cpu_ticks) as f64 / CLOCK_TICKS_PER_SEC as f64
    }
}

/// Reads `/proc/<pid>/stat` and `/proc/<pid>/status`.
pub fn sample(pid: u32) -> io::Result<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{what} of {pid}"));
    Ok(ProcSample {
        cpu_ticks: parse_cpu_ticks(&stat).ok_or_else(|| bad("/proc/stat"))?,
        rss_kib: parse_vm_rss_kib(&status).ok_or_else(|| bad("VmRSS"))?,
    })
}

/// `utime + stime` (fields 14 and 15) from a `/proc/<pid>/stat` line. The
/// command name (field 2) is in parentheses and may itself contain spaces
/// and parentheses, so fields are counted from the last `)`.
pub fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let after_comm = stat.get(stat.rfind(')')? + 1..)?;
    // Tokens from field 3 (state) on: utime is field 14, token 11.
    let mut fields = after_comm.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// `VmRSS` in KiB from `/proc/<pid>/status`.
pub fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The soft limit of "Max open files" from `/proc/self/limits`;
/// `None` when unlimited or unreadable.
pub fn parse_max_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files")
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// This process's open-file soft limit.
pub fn max_open_files() -> Option<u64> {
    parse_max_open_files(&std::fs::read_to_string("/proc/self/limits").ok()?)
}

/// `TcpExt: ListenOverflows` from `/proc/net/netstat`: connections the
/// kernel dropped because a listener's accept queue was full (a SYN retried a
/// second later). Host-wide, so read it before and after a run.
pub fn parse_listen_overflows(netstat: &str) -> Option<u64> {
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let names = lines.next()?;
    let values = lines.next()?;
    let index = names
        .split_whitespace()
        .position(|n| n == "ListenOverflows")?;
    values.split_whitespace().nth(index)?.parse().ok()
}

/// The host's listen overflows so far.
pub fn listen_overflows() -> Option<u64> {
    parse_listen_overflows(&std::fs::read_to_string("/proc/net/netstat").ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (tidemq) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
        350 125 0 0 20 0 3 0 987654 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 \
        4096 17475 0 0 0 17 0 0 0 0 0 0";

    #[test]
    fn cpu_ticks_are_utime_plus_stime() {
        assert_eq!(parse_cpu_ticks(STAT), Some(475));
    }

    #[test]
    fn command_names_with_spaces_and_parentheses() {
        let stat = STAT.replace("(tidemq)", "(my (odd) broker)");
        assert_eq!(parse_cpu_ticks(&stat), Some(475));
    }

    #[test]
    fn truncated_stat_is_none() {
        assert_eq!(parse_cpu_ticks("4242 (tidemq) S 1 2 3"), None);
        assert_eq!(parse_cpu_ticks(""), None);
    }

    #[test]
    fn cpu_seconds_use_user_hz() {
        let before = ProcSample {
            cpu_ticks: 100,
            rss_kib: 0,
        };
        let after = ProcSample {
            cpu_ticks: 350,
            rss_kib: 0,
        };
        assert_eq!(before.cpu_seconds_until(&after), 2.5);
        assert_eq!(after.cpu_seconds_until(&before), 0.0);
    }

    #[test]
    fn vm_rss_from_status() {
        let status = "Name:\ttidemq\nVmPeak:\t  999 kB\nVmRSS:\t   12345 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss_kib(status), Some(12_345));
        assert_eq!(parse_vm_rss_kib("Name:\tx\n"), None);
    }

    #[test]
    fn max_open_files_soft_limit() {
        let limits =
            "Limit                     Soft Limit           Hard Limit           Units     \n\
            Max cpu time              unlimited            unlimited            seconds   \n\
            Max open files            20000                65536                files     \n";
        assert_eq!(parse_max_open_files(limits), Some(20_000));
        let unlimited = limits.replace("20000", "unlimited");
        assert_eq!(parse_max_open_files(&unlimited), None);
    }

    #[test]
    fn listen_overflows_from_netstat() {
        let netstat = "TcpExt: SyncookiesSent DelayedACKs ListenOverflows ListenDrops\n\
            TcpExt: 0 12 70 70\n\
            IpExt: InNoRoutes ListenOverflows\n\
            IpExt: 0 99\n";
        assert_eq!(parse_listen_overflows(netstat), Some(70));
        assert_eq!(parse_listen_overflows("IpExt: a\nIpExt: 1\n"), None);
    }

    #[test]
    fn this_process_can_be_sampled() {
        let me = sample(std::process::id()).unwrap();
        assert!(me.rss_kib > 0);
    }
}
