//! Socket steering (`--mode socket`): at socket lookup, a new TCP connection to an
//! enabled rule's FROM port, from an allowed source, is handed to a listening socket of
//! the rule's TO port. No packet is rewritten and no flow is tracked: the connection is an
//! ordinary one of the kernel's, with FROM as its local port.

use aya_ebpf::{bindings::bpf_sk_lookup, programs::SkLookupContext};
use redirector_common::{
    maps::{ListenerKey, LISTENER_V4, LISTENER_V6},
    stats::Counter,
};

use crate::maps::{count, source_allowed, with_rule_stats, LISTENERS, RULES};

/// `SK_PASS`: the lookup goes on with the socket this program selected, if any, else as
/// the kernel would do it without the program.
const SK_PASS: u32 = 1;
/// `SK_DROP`: the lookup fails; TCP answers the SYN with a RST (connection refused).
const SK_DROP: u32 = 0;
/// `IPPROTO_TCP`.
const IPPROTO_TCP: u32 = 6;
/// `AF_INET`.
const AF_INET: u32 = 2;
/// `ENOENT`: the key is not in the map.
const ENOENT: i32 = 2;

/// The verdict for one socket lookup.
#[inline(always)]
pub fn lookup(ctx: &SkLookupContext) -> u32 {
    let sk: *const bpf_sk_lookup = ctx.lookup;
    // SAFETY: `sk` is the context the kernel passed to this program, valid for the whole
    // run; `protocol`, `family` and `local_port` are readable 4-byte fields.
    let (protocol, family, local_port) =
        unsafe { ((*sk).protocol, (*sk).family, (*sk).local_port) };
    if protocol != IPPROTO_TCP {
        return SK_PASS;
    }
    // SAFETY: a hash lookup; `Rule` is plain data, copied out at once.
    let Some(rule) = (unsafe { RULES.get(local_port as u16) }).copied() else {
        return SK_PASS;
    };
    if rule.enabled == 0 {
        count(Counter::SteerPassRuleDisabled);
        return SK_PASS;
    }
    let v4 = family == AF_INET;
    let (remote, local) = addresses(sk, v4);
    if !source_allowed(&remote) {
        count(Counter::SteerPassSourceDenied);
        return SK_PASS;
    }
    let listener = |addr: [u8; 16], family: u8| ListenerKey {
        addr,
        port: rule.to_port,
        family,
        _pad: 0,
    };
    // As the kernel would match a connection to the TO port: a socket bound to the
    // connection's own address first, then a wildcard one (for IPv4 that may be an IPv6
    // wildcard socket that takes IPv4, which user space stores under both families).
    let family = if v4 { LISTENER_V4 } else { LISTENER_V6 };
    for key in [listener(local, family), listener([0; 16], family)] {
        // The reuseport group of the socket found (if any) still picks its member.
        match LISTENERS.redirect_sk_lookup(ctx, key, 0) {
            Ok(()) => {
                count(Counter::SteerAssigned);
                with_rule_stats(rule.slot, |stats| stats.flows_new += 1);
                return SK_PASS;
            }
            // Not in the map: the next candidate.
            Err(e) if e == -ENOENT => {}
            Err(_) => {
                count(Counter::SteerAssignFailed);
                return SK_PASS;
            }
        }
    }
    count(Counter::SteerNoListener);
    SK_DROP
}

/// The remote and local addresses of the lookup (IPv4 as IPv4-mapped IPv6).
#[inline(always)]
fn addresses(sk: *const bpf_sk_lookup, v4: bool) -> ([u8; 16], [u8; 16]) {
    // Every field is read up front, each with its own load at a constant offset from the
    // context pointer (the verifier refuses a load through a context pointer moved first,
    // which a read inside one branch can compile to).
    // SAFETY: `sk` is the context the kernel passed to this program, valid for the whole
    // run; these are its readable 4-byte address fields.
    let (r4, l4, r6, l6) = unsafe {
        let (r, l) = (&(*sk).remote_ip6, &(*sk).local_ip6);
        (
            core::ptr::read_volatile(&(*sk).remote_ip4),
            core::ptr::read_volatile(&(*sk).local_ip4),
            [
                core::ptr::read_volatile(&r[0]),
                core::ptr::read_volatile(&r[1]),
                core::ptr::read_volatile(&r[2]),
                core::ptr::read_volatile(&r[3]),
            ],
            [
                core::ptr::read_volatile(&l[0]),
                core::ptr::read_volatile(&l[1]),
                core::ptr::read_volatile(&l[2]),
                core::ptr::read_volatile(&l[3]),
            ],
        )
    };
    if v4 {
        (mapped(r4), mapped(l4))
    } else {
        (words(r6), words(l6))
    }
}

/// An IPv4 address field (network order in memory) as an IPv4-mapped IPv6 address.
#[inline(always)]
fn mapped(ip4: u32) -> [u8; 16] {
    let [a, b, c, d] = ip4.to_ne_bytes();
    [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d]
}

/// Four address words (each network order in memory) as address bytes.
#[inline(always)]
fn words(ip6: [u32; 4]) -> [u8; 16] {
    let mut addr = [0u8; 16];
    for (i, word) in ip6.iter().enumerate() {
        addr[i * 4..i * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    addr
}
