//! Resident memory of a process in KiB, read from `/proc/<pid>/status` (`VmRSS`), for the
//! benches, the fault soak and the tests that bound memory; `None` when it cannot be read.

/// `pid` is a process id, or `None` for this process.
pub fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/status"),
        None => "/proc/self/status".to_owned(),
    };
    std::fs::read_to_string(path)
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}
