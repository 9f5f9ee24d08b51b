//! The CPU time a function's environments use, from `/proc/<pid>/stat` (utime + stime, all
//! of the process's threads). Each environment is read after every invocation and once more
//! before it is dropped, so the CPU of environments that have exited is kept too.

use std::sync::OnceLock;

/// User plus system CPU of the process `pid` so far, in clock ticks; `None` once it is gone.
pub(super) fn process_ticks(pid: u32) -> Option<u64> {
    parse_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// utime + stime (fields 14 and 15) of a `/proc/<pid>/stat` line. The command name (field 2)
/// may hold spaces and parentheses, so the fields are counted from its last `)`.
pub(super) fn parse_ticks(stat: &str) -> Option<u64> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
pub fn ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        // SAFETY: sysconf only reads a system constant.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        u64::try_from(ticks).ok().filter(|t| *t > 0).unwrap_or(100)
    })
}

/// One environment's CPU reading: what it had used when last read.
#[derive(Debug, Default)]
pub(super) struct CpuMeter {
    seen_ticks: u64,
}

impl CpuMeter {
    /// The ticks used since the last reading (0 if the process is gone: a reaped process's
    /// last slice is lost, which is why every invocation's end is read).
    pub(super) fn take(&mut self, pid: u32) -> u64 {
        self.advance(process_ticks(pid))
    }

    fn advance(&mut self, now: Option<u64>) -> u64 {
        let Some(now) = now else { return 0 };
        let used = now.saturating_sub(self.seen_ticks);
        self.seen_ticks = self.seen_ticks.max(now);
        used
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_user_plus_system_ticks() {
        // A command name with spaces and a parenthesis must not shift the fields.
        let line = "4242 (work (er) x) S 1 4242 4242 0 -1 4194304 1234 0 0 0 37 5 0 0 20 0 3 0 999 1000 200 18446744073709551615";
        assert_eq!(parse_ticks(line), Some(42));
        assert_eq!(
            parse_ticks("1 (init) S 0 1 1 0 -1 0 0 0 0 0 7 11 0 0"),
            Some(18)
        );
        assert_eq!(parse_ticks("1 (short) S 0 1"), None);
        assert_eq!(parse_ticks("no parenthesis"), None);
    }

    #[test]
    fn readings_add_up_to_the_total_and_a_gone_process_adds_nothing() {
        let mut meter = CpuMeter::default();
        assert_eq!(meter.advance(Some(10)), 10);
        assert_eq!(meter.advance(Some(10)), 0);
        assert_eq!(meter.advance(Some(25)), 15);
        assert_eq!(meter.advance(None), 0);
        // A lower reading (never for one pid) does not count anything twice.
        assert_eq!(meter.advance(Some(20)), 0);
        assert_eq!(meter.advance(Some(26)), 1);
    }

    #[test]
    fn reads_this_process() {
        let mut meter = CpuMeter::default();
        let total = meter.take(std::process::id());
        assert_eq!(
            process_ticks(std::process::id()).map(|t| t >= total),
            Some(true)
        );
        assert!(ticks_per_second() > 0);
        assert_eq!(process_ticks(u32::MAX), None);
    }
}
