//! The processes a backend starts on this machine (a box's agent, QEMU and swtpm): whether
//! one still runs and is the one recorded (`/proc/PID/stat` and `cmdline`), signals, and the
//! tail of its log for messages.

use std::fs;
use std::path::Path;

use rustix::process::{Pid, Signal};

fn pid_of(pid: u32) -> Option<Pid> {
    i32::try_from(pid).ok().and_then(Pid::from_raw)
}

/// Whether `pid` runs and is not a zombie.
pub(crate) fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

/// When process `pid` started, in clock ticks since boot (`/proc/PID/stat` field 22): with
/// the pid, it names one process, never a later one that reuses the pid.
pub fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces: state is
    // field 3, so start time (field 22) is the 20th after the closing parenthesis.
    stat.rsplit_once(')')?.1.split_whitespace().nth(19)?.parse().ok()
}

/// Whether process `pid` was started with `path` among its arguments.
pub(crate) fn mentions(pid: u32, path: &Path) -> bool {
    let needle = path.as_os_str().as_encoded_bytes();
    fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| cmdline.split(|b| *b == 0).any(|arg| arg == needle))
}

/// Sends `signal` to process `pid` (nothing when it is gone).
pub(crate) fn signal(pid: u32, signal: Signal) {
    if let Some(pid) = pid_of(pid) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

/// Sends `signal` to the process group that `pid` leads.
pub(crate) fn signal_group(pid: u32, signal: Signal) {
    if let Some(pid) = pid_of(pid) {
        let _ = rustix::process::kill_process_group(pid, signal);
    }
}

/// Collects `pid`'s exit status if it is this process's child (a no-op otherwise), so it does
/// not linger as a zombie.
pub(crate) fn reap(pid: u32) {
    if let Some(pid) = pid_of(pid) {
        let _ = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::NOHANG);
    }
}

/// The last lines of a log (at most eight, without blank lines, terminal escape sequences and
/// carriage returns), joined with ` | ` for a message.
pub(crate) fn log_tail(path: &Path) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let clean = strip_escapes(&text);
    let lines: Vec<&str> = clean
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .rev()
        .take(8)
        .collect();
    if lines.is_empty() {
        return format!("{} is empty", path.display());
    }
    lines.into_iter().rev().collect::<Vec<_>>().join(" | ")
}

/// Removes ANSI escape sequences (OVMF draws its screen with them) and carriage returns.
fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    while let Some(&n) = chars.peek() {
                        chars.next();
                        if n.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_lose_escape_codes_and_blank_lines() {
        assert_eq!(
            strip_escapes("\u{1b}[2J\u{1b}[01;01HBdsDxe: loading\r\n"),
            "BdsDxe: loading\n"
        );
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        assert!(log_tail(&log).ends_with("is empty"));
        fs::write(&log, "one\n\n\u{1b}[1mtwo\u{1b}[0m\r\n").unwrap();
        assert_eq!(log_tail(&log), "one | two");
    }

    #[test]
    fn this_process_runs_and_a_dead_pid_does_not() {
        let me = std::process::id();
        assert!(alive(me));
        assert!(start_time(me).is_some());
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        assert!(!alive(pid));
    }
}
