//! The open-file budget of the proxy: each relayed connection holds two sockets (and up to
//! four pipe ends while splicing), so `--max-conns 4096` cannot work under the common soft
//! limit of 1,024 descriptors. At start the soft limit is raised as far as needed, up to the
//! hard limit, as nginx (`worker_rlimit_nofile`) and HAProxy do.

use std::io;

/// Descriptors one connection may hold: client and backend sockets, two pipes.
const FDS_PER_CONN: u64 = 6;
/// Listeners, the metrics socket, the runtime's own descriptors, logs.
const FDS_SPARE: u64 = 64;

/// What [`ensure`] found and did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FdBudget {
    /// The soft limit before.
    pub before: u64,
    /// The soft limit now.
    pub now: u64,
    /// Descriptors `max_conns` connections need at most.
    pub needed: u64,
}

impl FdBudget {
    /// Connections the limit allows at worst (all of them splicing).
    pub fn connections(&self) -> u64 {
        self.now.saturating_sub(FDS_SPARE) / FDS_PER_CONN
    }
}

/// Descriptors needed for `max_conns` connections at most.
pub fn needed(max_conns: usize) -> u64 {
    (max_conns as u64)
        .saturating_mul(FDS_PER_CONN)
        .saturating_add(FDS_SPARE)
}

/// Raises RLIMIT_NOFILE's soft limit towards what `max_conns` needs (never above the hard
/// limit, never lowering it).
pub fn ensure(max_conns: usize) -> io::Result<FdBudget> {
    let needed = needed(max_conns);
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(io::Error::last_os_error());
    }
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
        assert_eq!(budget.needed, 4096 * FDS_PER_CONN + FDS_SPARE);
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
        assert_eq!(budget.connections(), (1024 - FDS_SPARE) / FDS_PER_CONN);
    }
}
