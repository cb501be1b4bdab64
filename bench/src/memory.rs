//! Memory readings for idle-capacity: the resident memory of process trees (VmRSS of
//! /proc/PID/status), the kernel's TCP socket memory (the `mem` pages of the `TCP:` line of
//! /proc/net/sockstat: buffers of queued data, every network namespace, so machine-wide) and
//! its unreclaimable slab (`SUnreclaim` of /proc/meminfo, machine-wide: where the socket
//! structures themselves live).

use std::fs;

use anyhow::{bail, Context as _, Result};
use nix::unistd::{sysconf, SysconfVar};

use super::cpu::tree_pids;

/// Resident memory of the processes in the trees under `roots`, in KiB (each process's
/// VmRSS, summed: pages two processes share are counted twice, which the difference between
/// two readings of the same processes cancels out). Fails if a root is gone.
pub fn tree_rss_kib(roots: &[u32]) -> Result<u64> {
    let mut total = 0;
    for pid in tree_pids(roots)? {
        // A child that exits between the listing and the read is left out.
        if let Ok(status) = fs::read_to_string(format!("/proc/{pid}/status")) {
            total += parse_vm_rss_kib(&status).unwrap_or(0);
        }
    }
    Ok(total)
}

/// The `VmRSS:` line of a /proc/PID/status (absent for kernel threads).
fn parse_vm_rss_kib(status: &str) -> Option<u64> {
    let value = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?;
    let mut words = value.split_whitespace();
    let kib = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib)
}

/// Memory the kernel has allocated to TCP sockets' buffers, all namespaces, in bytes.
pub fn tcp_socket_memory_bytes() -> Result<u64> {
    let text = fs::read_to_string("/proc/net/sockstat").context("could not read sockstat")?;
    let pages = parse_tcp_mem_pages(&text).context("no `TCP: … mem N` in /proc/net/sockstat")?;
    Ok(pages * page_size()?)
}

/// The `mem` field of the `TCP:` line: `TCP: inuse 5 orphan 0 tw 2 alloc 7 mem 1`.
fn parse_tcp_mem_pages(text: &str) -> Option<u64> {
    let fields = text.lines().find_map(|l| l.strip_prefix("TCP:"))?;
    let words: Vec<&str> = fields.split_whitespace().collect();
    words
        .chunks(2)
        .find(|pair| pair.first() == Some(&"mem"))
        .and_then(|pair| pair.get(1)?.parse().ok())
}

/// The kernel's unreclaimable slab memory (sockets, their files and epoll entries among it),
/// machine-wide, in bytes.
pub fn unreclaimable_slab_bytes() -> Result<u64> {
    let text = fs::read_to_string("/proc/meminfo").context("could not read /proc/meminfo")?;
    let kib =
        parse_meminfo_kib(&text, "SUnreclaim:").context("no `SUnreclaim:` in /proc/meminfo")?;
    Ok(kib * 1024)
}

/// A `Name:   123 kB` line of /proc/meminfo.
fn parse_meminfo_kib(text: &str, name: &str) -> Option<u64> {
    let value = text.lines().find_map(|l| l.strip_prefix(name))?;
    let mut words = value.split_whitespace();
    let kib = words.next()?.parse().ok()?;
    (words.next() == Some("kB")).then_some(kib)
}

fn page_size() -> Result<u64> {
    match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(bytes)) if bytes > 0 => Ok(bytes as u64),
        other => bail!("sysconf(_SC_PAGESIZE) gave {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockstat_mem_is_read_from_the_tcp_line() {
        let text = "sockets: used 310\n\
                    TCP: inuse 12 orphan 0 tw 3 alloc 15 mem 42\n\
                    UDP: inuse 2 mem 7\n\
                    FRAG: inuse 0 memory 0\n";
        assert_eq!(parse_tcp_mem_pages(text), Some(42));
        assert_eq!(parse_tcp_mem_pages("UDP: inuse 2 mem 7\n"), None);
        assert_eq!(parse_tcp_mem_pages("TCP: inuse 1 mem x\n"), None);
        assert!(tcp_socket_memory_bytes().is_ok());
    }

    #[test]
    fn meminfo_lines_are_read_in_kib() {
        let text = "MemTotal:       24684000 kB\nSlab:             500000 kB\n\
                    SReclaimable:     300000 kB\nSUnreclaim:       200000 kB\n";
        assert_eq!(parse_meminfo_kib(text, "SUnreclaim:"), Some(200_000));
        assert_eq!(parse_meminfo_kib(text, "Slab:"), Some(500_000));
        assert_eq!(parse_meminfo_kib(text, "Missing:"), None);
        assert!(unreclaimable_slab_bytes().unwrap() > 0);
    }

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\thaproxy\nVmPeak:\t  9000 kB\nVmRSS:\t    5120 kB\nThreads:\t2\n";
        assert_eq!(parse_vm_rss_kib(status), Some(5120));
        assert_eq!(parse_vm_rss_kib("Name:\tkthreadd\n"), None);
        assert_eq!(parse_vm_rss_kib("VmRSS:\t12 pages\n"), None);
        assert!(tree_rss_kib(&[std::process::id()]).unwrap() > 0);
    }
}
