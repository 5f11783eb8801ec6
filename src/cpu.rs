//! What the machine is: physical core count (the default thread count) and a one-line CPU description for
//! benchmark reports.

use std::collections::BTreeSet;

/// Physical cores (distinct `(package, core)` pairs in Linux's sysfs topology), falling back to the logical CPU
/// count where that is not available. Hyper-threads share a core's SIMD units and its memory bandwidth, so the
/// kernels gain nothing from them.
pub fn physical_cores() -> usize {
    let logical = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut cores = BTreeSet::new();
    for cpu in 0..logical.max(1) * 4 {
        let base = format!("/sys/devices/system/cpu/cpu{cpu}/topology");
        let read = |f: &str| std::fs::read_to_string(format!("{base}/{f}")).ok();
        if let (Some(pkg), Some(core)) = (read("physical_package_id"), read("core_id")) {
            cores.insert((pkg.trim().to_string(), core.trim().to_string()));
        }
    }
    if cores.is_empty() {
        logical
    } else {
        cores.len().min(logical)
    }
}

/// The CPU's model name (from /proc/cpuinfo on Linux, else the architecture).
pub fn model_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}
