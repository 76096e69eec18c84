//! The host's memory, as Linux reports it: what a new allocation can still get, and this
//! process's peak. None elsewhere, or when /proc cannot be read.

/// Bytes new allocations can take: what the kernel estimates they can without swapping
/// (`MemAvailable` of /proc/meminfo: free memory plus the page cache and reclaimable slabs it
/// would give up), or less where this process's cgroup (a container's) has a memory limit.
pub fn host_available() -> Option<usize> {
    host_room().map(|r| r.bytes)
}

/// `host_available`'s bytes, and whether a cgroup's limit set them.
#[derive(Clone, Copy, Debug)]
pub struct HostRoom {
    pub bytes: usize,
    pub cgroup: bool,
}

pub fn host_room() -> Option<HostRoom> {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let machine = kib_field(&read("/proc/meminfo")?, "MemAvailable:")?;
    Some(match cgroup_room(&read) {
        Some(room) if room < machine => HostRoom {
            bytes: room,
            cgroup: true,
        },
        _ => HostRoom {
            bytes: machine,
            cgroup: false,
        },
    })
}

/// The room left under the memory limits of this process's cgroup and its ancestors (cgroup v2,
/// or v1's memory controller): each limit less its usage, the inactive page cache (which the
/// kernel reclaims before it kills) not counted as used. None where no limit is set.
fn cgroup_room(read: &dyn Fn(&str) -> Option<String>) -> Option<usize> {
    let number = |path: String| read(&path)?.trim().parse::<usize>().ok();
    let mut room: Option<usize> = None;
    for line in read("/proc/self/cgroup")?.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (root, limit, usage, inactive) = match controllers {
            "" => (
                "/sys/fs/cgroup",
                "memory.max",
                "memory.current",
                "inactive_file",
            ),
            c if c.split(',').any(|c| c == "memory") => (
                "/sys/fs/cgroup/memory",
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "total_inactive_file",
            ),
            _ => continue,
        };
        let mut dir = path.trim_end_matches('/').to_string();
        loop {
            let base = format!("{root}{dir}");
            // v2 writes "max" for no limit, v1 a number near 2^63.
            if let Some(limit) = number(format!("{base}/{limit}")).filter(|&l| l < 1 << 60) {
                let used = number(format!("{base}/{usage}")).unwrap_or(0);
                let stat = read(&format!("{base}/memory.stat")).unwrap_or_default();
                let inactive = (stat.lines())
                    .find_map(|l| l.strip_prefix(inactive)?.strip_prefix(' ')?.parse().ok())
                    .unwrap_or(0);
                let left = limit.saturating_sub(used.saturating_sub(inactive));
                room = Some(room.map_or(left, |r| r.min(left)));
            }
            if dir.is_empty() {
                break;
            }
            dir.truncate(dir.rfind('/').unwrap_or(0));
        }
    }
    room
}

/// This process's peak resident memory so far (`VmHWM` of /proc/self/status).
pub fn peak_resident() -> Option<usize> {
    kib_field(
        &std::fs::read_to_string("/proc/self/status").ok()?,
        "VmHWM:",
    )
}

/// A `Name:   1234 kB` line's value in bytes.
fn kib_field(text: &str, name: &str) -> Option<usize> {
    let line = text.lines().find(|l| l.starts_with(name))?;
    let kib: usize = line[name.len()..]
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

/// Bytes in decimal units (as disk and GPU makers count): GB to one decimal from 1 GB, MB below.
pub fn gb(bytes: usize) -> String {
    match bytes as f64 {
        b if b >= 1e9 => format!("{:.1} GB", b / 1e9),
        b => format!("{:.0} MB", (b / 1e6).max(1.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_of_proc_files_parse_to_bytes() {
        let text = "MemTotal:       24576000 kB\nMemAvailable:    1048576 kB\nVmHWM:\t  2048 kB\n";
        assert_eq!(kib_field(text, "MemAvailable:"), Some(1 << 30));
        assert_eq!(kib_field(text, "VmHWM:"), Some(2 << 20));
        assert_eq!(kib_field(text, "SwapFree:"), None);
        assert_eq!(kib_field("MemAvailable: lots\n", "MemAvailable:"), None);
    }

    /// A container's cgroup v2 limit of 8 GB with 3 GB used, 1 GB of it inactive page cache,
    /// under a parent limited to 10 GB with 9 GB used: the parent leaves less. Unlimited
    /// cgroups (v2's "max", v1's 2^63) and a machine without cgroups give none.
    #[test]
    fn cgroup_limits_bound_the_room() {
        let files = |entries: &'static [(&'static str, &'static str)]| {
            move |path: &str| {
                (entries.iter())
                    .find(|(p, _)| *p == path)
                    .map(|(_, text)| text.to_string())
            }
        };
        let v2 = files(&[
            ("/proc/self/cgroup", "0::/pod/box\n"),
            ("/sys/fs/cgroup/pod/box/memory.max", "8000000000\n"),
            ("/sys/fs/cgroup/pod/box/memory.current", "3000000000\n"),
            (
                "/sys/fs/cgroup/pod/box/memory.stat",
                "anon 1\ninactive_file 1000000000\n",
            ),
            ("/sys/fs/cgroup/pod/memory.max", "max\n"),
            ("/sys/fs/cgroup/memory.max", "max\n"),
        ]);
        assert_eq!(cgroup_room(&v2), Some(6_000_000_000));
        let nested = files(&[
            ("/proc/self/cgroup", "0::/pod/box\n"),
            ("/sys/fs/cgroup/pod/box/memory.max", "8000000000\n"),
            ("/sys/fs/cgroup/pod/box/memory.current", "3000000000\n"),
            ("/sys/fs/cgroup/pod/memory.max", "10000000000\n"),
            ("/sys/fs/cgroup/pod/memory.current", "9000000000\n"),
        ]);
        assert_eq!(cgroup_room(&nested), Some(1_000_000_000));
        let v1 = files(&[
            ("/proc/self/cgroup", "4:memory:/api/x\n0::/\n"),
            (
                "/sys/fs/cgroup/memory/api/x/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
            (
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "9223372036854771712\n",
            ),
        ]);
        assert_eq!(cgroup_room(&v1), None);
        let v1_limited = files(&[
            ("/proc/self/cgroup", "4:cpu,memory:/\n"),
            (
                "/sys/fs/cgroup/memory/memory.limit_in_bytes",
                "4000000000\n",
            ),
            (
                "/sys/fs/cgroup/memory/memory.usage_in_bytes",
                "1000000000\n",
            ),
            (
                "/sys/fs/cgroup/memory/memory.stat",
                "total_inactive_file 500000000\n",
            ),
        ]);
        assert_eq!(cgroup_room(&v1_limited), Some(3_500_000_000));
        assert_eq!(cgroup_room(&files(&[])), None);
    }

    #[test]
    fn sizes_read_in_decimal_units() {
        assert_eq!(gb(38_700_000_000), "38.7 GB");
        assert_eq!(gb(1_000_000_000), "1.0 GB");
        assert_eq!(gb(999_400_000), "999 MB");
        assert_eq!(gb(12), "1 MB");
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn this_machine_reports_its_memory() {
        let available = host_available().unwrap();
        assert!(available > 1 << 20 && available < 1 << 50, "{available}");
        // 256 MB touched: the peak holds at least that, in bytes (not kB, not pages).
        let v = std::hint::black_box(vec![1u8; 256 << 20]);
        let peak = peak_resident().unwrap();
        assert!((256 << 20..1 << 45).contains(&peak), "{peak}");
        drop(v);
    }
}
