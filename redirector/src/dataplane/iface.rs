//! Network interfaces: name → index, driver name, and the default-route interface.

use std::{ffi::CString, fs};

/// Interface lookup failures.
#[derive(Debug, thiserror::Error)]
pub enum IfaceError {
    /// No interface of that name in this network namespace.
    #[error("unknown interface `{name}` (interfaces here: {})", available.join(", "))]
    Unknown {
        /// The name asked for.
        name: String,
        /// What exists.
        available: Vec<String>,
    },
    /// No default route to infer `--iface` from.
    #[error("no default route found: pass --iface IFACE")]
    NoDefaultRoute,
}

/// Returns the interface index of `name`.
pub fn ifindex(name: &str) -> Result<u32, IfaceError> {
    let unknown = || IfaceError::Unknown {
        name: name.to_string(),
        available: list(),
    };
    let c_name = CString::new(name).map_err(|_| unknown())?;
    // SAFETY: `c_name` is a valid NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        Err(unknown())
    } else {
        Ok(index)
    }
}

/// Sends the ethtool request `data` (a `struct ethtool_*` whose first field is its `cmd`)
/// about interface `name` with the SIOCETHTOOL ioctl; the kernel fills `data` in. `None` if
/// the interface cannot be asked (no such interface, a name too long, no ethtool support).
///
/// # Safety
/// `T` must be the `#[repr(C)]` ethtool structure that its `cmd` names, complete: the
/// kernel writes up to that structure's size through the pointer.
pub unsafe fn ethtool_request<T>(name: &str, data: &mut T) -> Option<()> {
    /// `struct ifreq` with its `ifr_data` member.
    #[repr(C)]
    struct IfReq<T> {
        name: [u8; libc::IFNAMSIZ],
        data: *mut T,
        _pad: [u8; 16],
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;

    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data,
        _pad: [0; 16],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: a plain socket call; the descriptor is closed below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return None;
    }
    // SAFETY: `req` is a valid `ifreq` whose data pointer names the caller's `T`, which
    // outlives the call and is the structure its `cmd` asks for (this function's contract).
    let ret = unsafe { libc::ioctl(sock, SIOCETHTOOL, &mut req) };
    // SAFETY: `sock` is our open descriptor, closed once.
    unsafe { libc::close(sock) };
    (ret >= 0).then_some(())
}

/// The interface's driver as ethtool reports it (`veth`, `virtio_net`, `mlx5_core`, …), or
/// `None` if it cannot be asked (no such interface, no ethtool support).
pub fn driver(name: &str) -> Option<String> {
    /// `struct ethtool_drvinfo` (include/uapi/linux/ethtool.h).
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 4 * 32 + 12 + 5 * 4],
    }
    const ETHTOOL_GDRVINFO: u32 = 3;

    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 4 * 32 + 12 + 5 * 4],
    };
    // SAFETY: `DrvInfo` is the complete `struct ethtool_drvinfo` that ETHTOOL_GDRVINFO fills.
    unsafe { ethtool_request(name, &mut info) }?;
    let len = info.driver.iter().position(|&b| b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..len]).into_owned())
}

/// True if `name` is one end of a veth pair.
pub fn is_veth(name: &str) -> bool {
    driver(name).as_deref() == Some("veth")
}

/// Names of all interfaces in this network namespace.
pub fn list() -> Vec<String> {
    let mut names: Vec<String> = fs::read_to_string("/proc/net/dev")
        .unwrap_or_default()
        .lines()
        .skip(2)
        .filter_map(|l| l.split(':').next())
        .map(|n| n.trim().to_string())
        .collect();
    names.sort();
    names
}

/// The interface of the IPv4 (else IPv6) default route with the lowest metric.
pub fn default_route_interface() -> Result<String, IfaceError> {
    let v4 = fs::read_to_string("/proc/net/route").unwrap_or_default();
    let v6 = fs::read_to_string("/proc/net/ipv6_route").unwrap_or_default();
    default_v4(&v4)
        .or_else(|| default_v6(&v6))
        .ok_or(IfaceError::NoDefaultRoute)
}

/// `/proc/net/route`: Iface Destination Gateway Flags RefCnt Use Metric Mask ...
fn default_v4(table: &str) -> Option<String> {
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 7 && f[1] == "00000000" && f[7] == "00000000")
                .then(|| (f[6].parse::<u32>().unwrap_or(u32::MAX), f[0].to_string()))
        })
        .min()
        .map(|(_, name)| name)
}

/// `/proc/net/ipv6_route`: dst dst_len src src_len next_hop metric refcnt use flags iface.
fn default_v6(table: &str) -> Option<String> {
    table
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let is_default = f.len() == 10 && f[0].bytes().all(|b| b == b'0') && f[1] == "00";
            (is_default && f[9] != "lo").then(|| {
                (
                    u32::from_str_radix(f[5], 16).unwrap_or(u32::MAX),
                    f[9].to_string(),
                )
            })
        })
        .min()
        .map(|(_, name)| name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_lowest_metric_default_v4() {
        let table =
            "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n\
            eth1\t00000000\t0102A8C0\t0003\t0\t0\t200\t00000000\t0\t0\t0\n\
            eth0\t00000000\t0101A8C0\t0003\t0\t0\t100\t00000000\t0\t0\t0\n\
            eth0\t0001A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(default_v4(table).as_deref(), Some("eth0"));
        assert_eq!(default_v4("Iface\n"), None);
    }

    #[test]
    fn default_v6_skips_loopback() {
        let zeros = "00000000000000000000000000000000";
        let table = format!(
            "{zeros} 00 {zeros} 00 {zeros} ffffffff 00000001 00000000 00200200 lo\n\
             {zeros} 00 {zeros} 00 fe800000000000000000000000000001 00000400 00000001 00000000 00000003 ens3\n"
        );
        assert_eq!(default_v6(&table).as_deref(), Some("ens3"));
    }

    #[test]
    fn loopback_exists_and_unknown_is_reported() {
        assert!(ifindex("lo").is_ok());
        let err = ifindex("definitely-not-here0").unwrap_err();
        assert!(err.to_string().contains("definitely-not-here0"));
    }
}
