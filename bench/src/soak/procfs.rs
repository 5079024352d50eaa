//! What `/proc` says about a process of the soak: resident memory
//! (`VmRSS` of `/proc/PID/status`) and CPU time (`utime + stime` of
//! `/proc/PID/stat`).
//!
//! Only reads, bounded (at most [`MAX_READ`] bytes of a file), and never
//! panics on what it reads: a field that is missing, malformed or out of
//! range is `None`.

use std::io::Read;

/// The most of a `/proc` file read (`status` is about 1.5 KiB).
pub const MAX_READ: u64 = 64 * 1024;

/// A `kB` line of a `/proc/PID/status` text (e.g. `VmRSS:`), KiB.
pub fn status_kib(status: &str, field: &str) -> Option<u64> {
    let value = status.lines().find_map(|l| l.strip_prefix(field))?;
    let mut words = value.split_whitespace();
    let n = words.next()?.parse().ok()?;
    match (words.next(), words.next()) {
        (Some("kB"), None) => Some(n),
        _ => None,
    }
}

/// `utime + stime` of a `/proc/PID/stat` text, in clock ticks.
pub fn stat_ticks(stat: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces
    // and parentheses itself: the fields proper start after the last ')'.
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    // The first is field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    utime.checked_add(stime)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), `None` if unknown.
pub fn ticks_per_s() -> Option<f64> {
    // SAFETY: sysconf only reads a constant.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    (hz > 0).then_some(hz as f64)
}

/// At most [`MAX_READ`] bytes of `/proc/PID/NAME`, lossily as text.
fn read(pid: u32, name: &str) -> Option<String> {
    let mut buf = Vec::new();
    std::fs::File::open(format!("/proc/{pid}/{name}"))
        .ok()?
        .take(MAX_READ)
        .read_to_end(&mut buf)
        .ok()?;
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// A process's resident memory now, KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    status_kib(&read(pid, "status")?, "VmRSS:")
}

/// A process's CPU time so far (user + system), seconds.
pub fn cpu_s(pid: u32) -> Option<f64> {
    Some(stat_ticks(&read(pid, "stat")?)? as f64 / ticks_per_s()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tcachecast\nVmPeak:\t  123456 kB\nVmHWM:\t    9000 kB\nVmRSS:\t    8123 kB\nThreads:\t3\n";

    #[test]
    fn status_fields_are_read_in_kib() {
        assert_eq!(status_kib(STATUS, "VmRSS:"), Some(8123));
        assert_eq!(status_kib(STATUS, "VmHWM:"), Some(9000));
        assert_eq!(status_kib(STATUS, "VmSwap:"), None);
        // Not a kB line, or not a number: nothing.
        assert_eq!(status_kib(STATUS, "Threads:"), None);
        assert_eq!(status_kib("VmRSS:\tlots kB\n", "VmRSS:"), None);
        assert_eq!(status_kib("VmRSS:\t-5 kB\n", "VmRSS:"), None);
        assert_eq!(status_kib("VmRSS:\t1 kB extra\n", "VmRSS:"), None);
        assert_eq!(
            status_kib("VmRSS:\t99999999999999999999999 kB\n", "VmRSS:"),
            None
        );
        assert_eq!(status_kib("", "VmRSS:"), None);
    }

    #[test]
    fn stat_ticks_count_after_the_last_parenthesis() {
        // utime 1500 and stime 250 are fields 14 and 15.
        let tail = "S 1 2 3 4 5 6 7 8 9 10 1500 250 0 0 20 0 3 0 100 200 300";
        assert_eq!(stat_ticks(&format!("42 (cachecast) {tail}")), Some(1750));
        // A command name with spaces and parentheses.
        assert_eq!(stat_ticks(&format!("42 (a) b (c d) {tail}")), Some(1750));
        // Short, garbled, overflowing, empty: nothing, no panic.
        assert_eq!(stat_ticks("42 (x) S 1 2 3"), None);
        assert_eq!(stat_ticks("no parenthesis 1 2 3"), None);
        assert_eq!(
            stat_ticks("1 (x) S 1 2 3 4 5 6 7 8 9 10 x 250 0"),
            None,
            "utime not a number"
        );
        let max = u64::MAX;
        assert_eq!(
            stat_ticks(&format!("1 (x) S 1 2 3 4 5 6 7 8 9 10 {max} 1 0")),
            None
        );
        assert_eq!(stat_ticks(""), None);
        assert_eq!(stat_ticks(")"), None);
    }

    #[test]
    fn this_process_is_readable() {
        let pid = std::process::id();
        assert!(rss_kib(pid).is_some_and(|k| k > 100));
        assert!(cpu_s(pid).is_some_and(|s| s >= 0.0));
        // A process that does not exist.
        assert_eq!(rss_kib(u32::MAX), None);
        assert_eq!(cpu_s(u32::MAX), None);
    }
}
