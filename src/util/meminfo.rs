//! The host's memory, as Linux reports it: what a new allocation can still get, and this
//! process's peak. None elsewhere, or when /proc cannot be read.

/// Bytes the kernel estimates new allocations can take without swapping (`MemAvailable` of
/// /proc/meminfo: free memory plus the page cache and reclaimable slabs it would give up).
pub fn host_available() -> Option<usize> {
    kib_field(
        &std::fs::read_to_string("/proc/meminfo").ok()?,
        "MemAvailable:",
    )
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
