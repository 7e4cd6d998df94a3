//! The processes a test started, found by what their command lines mention or where they run.

use std::fs;
use std::path::Path;

/// Live (not zombie) processes whose command line mentions `needle` (a workspace's folder,
/// say): what destroy must have stopped.
#[must_use]
pub fn mentioning(needle: &Path) -> Vec<u32> {
    let needle = needle.display().to_string();
    live(|pid| fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle)))
}

/// Live processes that mention `root` or run in a folder under it: a booted box's QEMU names
/// its disk, and its swtpm only runs in the box's folder.
#[must_use]
pub fn working_in(root: &Path) -> Vec<u32> {
    let mut found = mentioning(root);
    found.extend(live(|pid| {
        fs::read_link(format!("/proc/{pid}/cwd")).is_ok_and(|cwd| cwd.starts_with(root))
    }));
    found.sort_unstable();
    found.dedup();
    found
}

/// Live (not zombie) processes for which `matches` holds.
fn live(matches: impl Fn(u32) -> bool) -> Vec<u32> {
    fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| alive(*pid) && matches(*pid))
        .collect()
}

/// Whether process `pid` is alive (and not a zombie).
#[must_use]
pub fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}
