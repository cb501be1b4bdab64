//! Checks, before touching the kernel, that we hold the capabilities loading needs (and
//! socket steering's taking of listening sockets).

use std::fs;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_PTRACE: u32 = 19;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Missing privileges, with what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    /// Effective capabilities lack CAP_BPF/CAP_SYS_ADMIN or CAP_NET_ADMIN.
    #[error("insufficient privileges: loading and attaching eBPF programs, and using their maps, needs CAP_BPF (or CAP_SYS_ADMIN) and CAP_NET_ADMIN; run as root, e.g. `sudo redirector ...`")]
    Missing,
    /// /proc/self/status could not be read or parsed.
    #[error("cannot read capabilities from /proc/self/status: {0}")]
    Unreadable(String),
}

/// Returns Ok if the effective capability set allows loading and attaching.
pub fn check() -> Result<(), PrivilegeError> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| PrivilegeError::Unreadable(e.to_string()))?;
    let cap_eff = parse_cap_eff(&status)
        .ok_or_else(|| PrivilegeError::Unreadable("no CapEff line".into()))?;
    if has_required(cap_eff) {
        Ok(())
    } else {
        Err(PrivilegeError::Missing)
    }
}

/// True if the effective set holds CAP_SYS_PTRACE, which socket steering needs to take a
/// listening socket from the process that owns it (`pidfd_getfd`).
pub fn may_take_sockets() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| parse_cap_eff(&status))
        .is_some_and(|cap_eff| cap_eff & (1u64 << CAP_SYS_PTRACE) != 0)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

fn has_required(cap_eff: u64) -> bool {
    let has = |cap: u32| cap_eff & (1u64 << cap) != 0;
    (has(CAP_BPF) || has(CAP_SYS_ADMIN)) && has(CAP_NET_ADMIN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_bits() {
        assert!(has_required(u64::MAX));
        assert!(!has_required(0));
        assert!(!has_required(1 << CAP_BPF));
        assert!(has_required((1 << CAP_BPF) | (1 << CAP_NET_ADMIN)));
        assert_eq!(
            parse_cap_eff("Name:\tx\nCapEff:\t000001ffffffffff\n"),
            Some(0x1ff_ffff_ffff)
        );
    }
}
