//! Check 5, `offload`: tx checksum offload on a veth. A veth hands its packets over as
//! `CHECKSUM_PARTIAL`, which the receiving stack trusts without verifying, so a wrong
//! checksum written by a rewrite goes unnoticed on the veth and fails only on a real wire.
//! Tests and test beds should turn it off (the tests' topology does); on a NIC the
//! hardware computes the checksum and there is nothing to hide.

use super::{Check, Status};
use crate::dataplane::iface;

const NAME: &str = "offload";

/// One finding for `iface`.
pub fn check(iface: &str) -> Check {
    if !iface::is_veth(iface) {
        return Check::new(
            NAME,
            Status::Ok,
            format!("{iface} is not a veth: checksums offloaded to it are computed by the device"),
        );
    }
    match tx_checksum_offload(iface) {
        Some(true) => Check::new(
            NAME,
            Status::Warn,
            format!(
                "tx checksum offload is on on veth {iface}: its packets arrive CHECKSUM_PARTIAL \
                 and the receiver trusts them, so a checksum bug would go unnoticed when testing"
            ),
        )
        .with_fix(format!("ethtool -K {iface} tx off (when testing)")),
        Some(false) => Check::new(
            NAME,
            Status::Ok,
            format!("tx checksum offload is off on veth {iface}: receivers verify checksums"),
        ),
        None => Check::new(
            NAME,
            Status::Skip,
            format!("could not read the tx checksum offload of {iface} (ETHTOOL_GTXCSUM)"),
        ),
    }
}

/// Whether tx checksum offload is on (`ethtool -k IFACE`'s `tx-checksumming`), by the
/// ETHTOOL_GTXCSUM ioctl; `None` if the interface cannot be asked.
fn tx_checksum_offload(name: &str) -> Option<bool> {
    /// `struct ethtool_value` (include/uapi/linux/ethtool.h).
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    /// `struct ifreq` with its `ifr_data` member.
    #[repr(C)]
    struct IfReq {
        name: [u8; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    const ETHTOOL_GTXCSUM: u32 = 0x16;
    const SIOCETHTOOL: libc::c_ulong = 0x8946;

    if name.len() >= libc::IFNAMSIZ {
        return None;
    }
    let mut value = EthtoolValue {
        cmd: ETHTOOL_GTXCSUM,
        data: 0,
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: a plain socket call; the descriptor is closed below.
    let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if sock < 0 {
        return None;
    }
    // SAFETY: `req` is a valid `ifreq` whose data pointer names `value`, an
    // `ethtool_value` that outlives the call; the kernel writes at most its 8 bytes.
    let ret = unsafe { libc::ioctl(sock, SIOCETHTOOL, &mut req) };
    // SAFETY: `sock` is our open descriptor, closed once.
    unsafe { libc::close(sock) };
    (ret >= 0).then_some(value.data != 0)
}
