//! The open-file budget of the proxy: each relayed connection holds two sockets, and pipes
//! only while a splice is in flight, so `--max-conns 4096` cannot work under the common
//! soft limit of 1,024 descriptors. At start the soft limit is raised as far as needed, up
//! to the hard limit, as nginx (`worker_rlimit_nofile`) and HAProxy do.
//!
//! Without `--max-conns`, the limit is derived from the hard open-file limit as HAProxy
//! derives `maxconn` from `ulimit-n`: two descriptors per connection plus a pipe (two more)
//! for every fourth one (HAProxy's `maxpipes = maxconn / 4`), after a reserve
//! ([`default_max_conns`]). A splice that finds no descriptor left copies instead.

use std::io;

/// Descriptors per connection, times two: client and backend sockets (2 × 2), and a
/// pipe's two ends for every fourth connection (1), so 2.5 each.
const HALF_FDS_PER_CONN: u64 = 5;
/// Listeners, the metrics socket, the runtime's own descriptors, logs.
const FDS_SPARE: u64 = 64;
/// Largest derived default (the largest `--max-conns` accepts).
pub const MAX_DEFAULT_CONNS: usize = 1_000_000;

/// What [`ensure`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft limit before.
    pub before: u64,
    /// The soft limit now.
    pub now: u64,
    /// Descriptors `max_conns` connections need.
    pub needed: u64,
}

impl FdBudget {
    /// Connections the limit allows.
    pub fn connections(&self) -> u64 {
        connections_within(self.now)
    }
}

/// Descriptors needed for `max_conns` connections.
pub fn needed(max_conns: usize) -> u64 {
    (max_conns as u64)
        .saturating_mul(HALF_FDS_PER_CONN)
        .div_ceil(2)
        .saturating_add(FDS_SPARE)
}

/// Connections that `limit` descriptors allow.
fn connections_within(limit: u64) -> u64 {
    limit.saturating_sub(FDS_SPARE).saturating_mul(2) / HALF_FDS_PER_CONN
}

/// The default `--max-conns`: what the hard open-file limit allows (the soft one is raised
/// to it), at least 1 and at most [`MAX_DEFAULT_CONNS`]; [`MAX_DEFAULT_CONNS`] if the limit
/// cannot be read.
pub fn default_max_conns() -> usize {
    match nofile() {
        Ok(limit) => max_conns_for(limit.rlim_max),
        Err(_) => MAX_DEFAULT_CONNS,
    }
}

/// The default `--max-conns` under a hard open-file limit of `hard`.
pub fn max_conns_for(hard: u64) -> usize {
    let allowed = connections_within(hard).min(MAX_DEFAULT_CONNS as u64) as usize;
    allowed.max(1)
}

fn nofile() -> io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(limit)
}

/// Raises RLIMIT_NOFILE's soft limit towards what `max_conns` needs (never above the hard
/// limit, never lowering it).
pub fn ensure(max_conns: usize) -> io::Result<FdBudget> {
    let needed = needed(max_conns);
    let mut limit = nofile()?;
    let before = limit.rlim_cur;
    let target = needed.min(limit.rlim_max);
    if target > before {
        limit.rlim_cur = target;
        // SAFETY: setrlimit reads the struct we own; a soft limit ≤ the hard one is allowed
        // for unprivileged processes too.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(FdBudget {
        before,
        now: before.max(target),
        needed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_for_the_default_max_conns_and_never_lowered() {
        let budget = ensure(4096).unwrap();
        assert!(budget.now >= budget.before);
        assert_eq!(budget.needed, 4096 * 5 / 2 + FDS_SPARE);
        // A smaller need afterwards leaves the raised limit alone.
        let again = ensure(1).unwrap();
        // (Other tests of this process may only have raised it further meanwhile.)
        assert!(again.before >= budget.now, "{again:?} after {budget:?}");
        assert_eq!(again.now, again.before);
    }

    #[test]
    fn connections_allowed_follow_the_limit() {
        let budget = FdBudget {
            before: 1024,
            now: 1024,
            needed: needed(4096),
        };
        assert_eq!(budget.connections(), (1024 - FDS_SPARE) * 2 / 5);
    }

    #[test]
    fn the_default_follows_the_hard_limit_within_bounds() {
        assert_eq!(max_conns_for(1024), 384);
        assert_eq!(max_conns_for(1_048_576), 419_404);
        assert_eq!(max_conns_for(u64::MAX), MAX_DEFAULT_CONNS);
        assert_eq!(max_conns_for(10), 1, "never 0");
        // What the default needs fits under the limit it came from.
        for hard in [1024u64, 4096, 65_536, 524_288, 1_048_576] {
            assert!(needed(max_conns_for(hard)) <= hard, "{hard}");
        }
        let derived = default_max_conns();
        assert!((1..=MAX_DEFAULT_CONNS).contains(&derived));
    }
}
