//! `--max-conns-per-ip`: how many connections each client address holds open, and a
//! permit per connection that gives its slot back when dropped.
//!
//! Clients are grouped by [`ClientKey`]: an IPv4 address on its own, an IPv6 address by
//! its /64 prefix (one host or LAN usually gets a whole /64, and picking a new address
//! inside it is free, so counting single IPv6 addresses would limit nothing). An
//! IPv4-mapped IPv6 peer (`::ffff:a.b.c.d`, on a dual-stack listener) counts as its IPv4
//! address.

use std::{
    collections::HashMap,
    net::{IpAddr, Ipv4Addr},
    sync::{Arc, Mutex, PoisonError},
};

/// What connections are counted under: an IPv4 address or an IPv6 /64 prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ClientKey {
    /// One IPv4 address.
    V4(Ipv4Addr),
    /// The upper 64 bits of an IPv6 address.
    V6Prefix64(u64),
}

impl ClientKey {
    /// The group `ip` belongs to.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => ClientKey::V4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey::V4(v4),
                None => ClientKey::V6Prefix64((u128::from(v6) >> 64) as u64),
            },
        }
    }
}

/// Open connections per client group, bounded by a limit.
#[derive(Debug)]
pub struct PerIpLimit {
    limit: u32,
    open: Mutex<HashMap<ClientKey, u32>>,
}

/// One counted connection; its slot is released on drop.
#[derive(Debug)]
pub struct IpPermit {
    limits: Arc<PerIpLimit>,
    key: ClientKey,
}

impl PerIpLimit {
    /// At most `limit` connections per group.
    pub fn new(limit: u32) -> Arc<Self> {
        Arc::new(PerIpLimit {
            limit,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A permit for one more connection from `ip`, or `None` if its group is at the limit.
    pub fn try_acquire(self: &Arc<Self>, ip: IpAddr) -> Option<IpPermit> {
        let key = ClientKey::of(ip);
        // The map is only ever updated by a single entry at a time: a panic cannot leave
        // it inconsistent, so a poisoned lock is still usable.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(key).or_insert(0);
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(IpPermit {
            limits: Arc::clone(self),
            key,
        })
    }

    /// Connections open from `ip`'s group.
    pub fn open(&self, ip: IpAddr) -> u32 {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&ClientKey::of(ip)).copied().unwrap_or(0)
    }

    /// Groups with at least one open connection.
    pub fn groups(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let mut open = self
            .limits
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.key) {
            *count -= 1;
            if *count == 0 {
                // Entries of idle groups go, so the map only holds open connections.
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_is_grouped_by_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            ClientKey::of(ip("2001:db8:1:2::1")),
            ClientKey::of(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"))
        );
        assert_ne!(
            ClientKey::of(ip("2001:db8:1:2::1")),
            ClientKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            ClientKey::of(ip("::ffff:192.0.2.7")),
            ClientKey::V4(Ipv4Addr::new(192, 0, 2, 7))
        );
        assert_ne!(
            ClientKey::of(ip("192.0.2.7")),
            ClientKey::of(ip("192.0.2.8"))
        );
    }

    #[test]
    fn limit_applies_per_group_and_permits_give_slots_back() {
        let limits = PerIpLimit::new(2);
        let a = ip("192.0.2.1");
        let first = limits.try_acquire(a).unwrap();
        let second = limits.try_acquire(a).unwrap();
        assert!(
            limits.try_acquire(a).is_none(),
            "third from the same address"
        );
        // Another address, and the same /64 counted together.
        let _b = limits.try_acquire(ip("192.0.2.2")).unwrap();
        let _v6 = limits.try_acquire(ip("2001:db8::1")).unwrap();
        let _v6b = limits.try_acquire(ip("2001:db8::2")).unwrap();
        assert!(limits.try_acquire(ip("2001:db8::3")).is_none(), "same /64");
        assert_eq!(limits.open(a), 2);
        drop(first);
        assert_eq!(limits.open(a), 1);
        let again = limits.try_acquire(a).unwrap();
        drop((second, again));
        assert_eq!(limits.open(a), 0);
        assert_eq!(limits.groups(), 2, "idle groups are forgotten");
    }
}
