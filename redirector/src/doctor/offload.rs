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
    const ETHTOOL_GTXCSUM: u32 = 0x16;

    let mut value = EthtoolValue {
        cmd: ETHTOOL_GTXCSUM,
        data: 0,
    };
    // SAFETY: `EthtoolValue` is the complete `struct ethtool_value` that ETHTOOL_GTXCSUM
    // fills.
    unsafe { iface::ethtool_request(name, &mut value) }?;
    Some(value.data != 0)
}
