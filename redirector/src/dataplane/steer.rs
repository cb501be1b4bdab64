//! Socket steering (`--mode socket`), the strategy beside the packet rewrite: one
//! `sk_lookup` program on the loader's network namespace hands each new connection to an
//! enabled rule's FROM port to a listening socket of its TO port, which [`Steering::sync`]
//! keeps in `LISTENERS`. Its link is held by the loader, or pinned (`--persist`) and then
//! adopted by the next loader with the program replaced in place.

use std::{
    collections::HashSet,
    fs::File,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::programs::{links::FdLink, sk_lookup::SkLookupLinkId, ProgramError, ProgramType};
use redirector_common::maps::ListenerKey;

use super::{
    bpf_link,
    listeners::{self, ListenersError, Synced},
    Dataplane, DataplaneError,
};

/// What the instance file records as the "hook" of an instance that steers sockets: no
/// program is on its interface, which only names the instance.
pub const HOOK_NAME: &str = "socket";

/// The pin name of the namespace's `sk_lookup` link in an instance's links directory.
pub const LINK_PIN_NAME: &str = "netns-sk_lookup";

/// The network namespace the loader runs in (and steers).
const OWN_NETNS: &str = "/proc/self/ns/net";

/// Attaching or adopting the socket-lookup program failed.
#[derive(Debug, thiserror::Error)]
pub enum SteerError {
    /// The namespace could not be opened.
    #[error("opening {OWN_NETNS}: {0}")]
    Netns(#[source] std::io::Error),
    /// Attaching failed (e.g. a kernel before 5.9, which has no `sk_lookup`).
    #[error("attaching socket steering (sk_lookup) to the network namespace: {0}")]
    Attach(#[source] ProgramError),
    /// The link could not be taken over for pinning.
    #[error("taking over the sk_lookup link for --persist: {0}")]
    TakeLink(#[source] ProgramError),
    /// The persisted link could not be opened or given the new program.
    #[error("adopting the pinned sk_lookup link {}: {source}", path.display())]
    Adopt {
        /// Pin path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Program lookup failed.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

/// The link of a loader that steers, while it holds it (not pinned).
#[derive(Debug)]
pub struct Held(SkLookupLinkId);

/// Attaches the socket-lookup program to this network namespace.
pub fn attach(dp: &mut Dataplane) -> Result<Held, SteerError> {
    let netns = File::open(OWN_NETNS).map_err(SteerError::Netns)?;
    let id = dp.sk_lookup()?.attach(netns).map_err(SteerError::Attach)?;
    Ok(Held(id))
}

impl Held {
    /// Takes the link out of the program's ownership, so that dropping the `Dataplane` no
    /// longer detaches it (`--persist` pins it).
    pub fn take_link(self, dp: &mut Dataplane) -> Result<FdLink, SteerError> {
        let link = dp
            .sk_lookup()?
            .take_link(self.0)
            .map_err(SteerError::TakeLink)?;
        Ok(FdLink::from(link))
    }
}

/// Adopts the persisted link pinned at `path`: replaces its program by `dp`'s
/// (`bpf_link_update`: new connections are never without one). The link stays pinned.
pub fn adopt(dp: &mut Dataplane, path: &Path) -> Result<(), SteerError> {
    let adopt_err = |source| SteerError::Adopt {
        path: path.to_path_buf(),
        source,
    };
    let link = bpf_link::obj_get(path).map_err(adopt_err)?;
    let program = dp.sk_lookup()?;
    let fd = program.fd().map_err(SteerError::Attach)?;
    bpf_link::update(link.as_fd(), fd.as_fd()).map_err(adopt_err)
}

/// True if this kernel has `sk_lookup` programs (5.9).
pub fn supported() -> bool {
    aya::sys::is_program_supported(ProgramType::SkLookup).unwrap_or(false)
}

/// The listeners of the rules' TO ports, kept in `LISTENERS` while the loader runs.
#[derive(Debug, Default)]
pub struct Steering {
    /// What the last sync found, to log only what changed.
    last: Synced,
    /// The last sync's error, to log each only once in a row.
    failing: Option<String>,
}

impl Steering {
    /// [`Steering::sync`], its error logged once for as long as it repeats.
    pub fn sync_logged(&mut self, dp: &mut Dataplane) {
        match self.sync(dp) {
            Ok(()) => self.failing = None,
            Err(e) => {
                let text = e.to_string();
                if self.failing.as_deref() != Some(text.as_str()) {
                    log::warn!("socket steering: keeping the listeners: {text}");
                }
                self.failing = Some(text);
            }
        }
    }

    /// Puts the listening socket of each rule's TO port (present in the namespace and not
    /// yet in `LISTENERS`) in it; logs what changed since the last sync.
    pub fn sync(&mut self, dp: &mut Dataplane) -> Result<(), ListenersError> {
        let to_ports: HashSet<u16> = match dp.maps().rules() {
            Ok(rules) => rules.into_iter().map(|(_, rule)| rule.to_port).collect(),
            Err(e) => {
                log::warn!("reading the rules for socket steering: {e}");
                return Ok(());
            }
        };
        let synced = listeners::sync(dp.listeners_map(), &to_ports)?;
        self.log_changes(&synced);
        self.last = synced;
        Ok(())
    }

    fn log_changes(&self, now: &Synced) {
        if now.inserted > 0 {
            log::info!(
                "socket steering: {} listening socket(s) of the TO ports taken in",
                now.inserted
            );
        }
        for port in now
            .without_listener
            .iter()
            .filter(|port| !self.last.without_listener.contains(port))
        {
            log::warn!(
                "socket steering: nothing listens on TO port {port} in this namespace: new \
                 connections steered to it are refused until a server listens there"
            );
        }
        let was_untaken = |key: &ListenerKey| self.last.untaken.iter().any(|(k, _)| k == key);
        for (key, why) in now.untaken.iter().filter(|(key, _)| !was_untaken(key)) {
            log::warn!(
                "socket steering: the listening socket of TO port {} cannot be taken: {why}",
                key.port
            );
        }
    }
}

/// What `--mode auto` takes: socket steering, or the packet rewrite (whose hook
/// [`super::attach`] then picks per interface), and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoChoice {
    /// Socket steering is right here.
    pub socket: bool,
    /// Why, in one phrase.
    pub why: String,
}

/// `--mode auto`'s choice for `to_ports`: socket steering where it is right — a kernel
/// with `sk_lookup`, the privilege to take listening sockets from their owners
/// (CAP_SYS_PTRACE), a listener on every TO port in this namespace, and no NAT rule on a TO
/// port (a published container port must keep the rewrite, so that its DNAT stays in the
/// kernel) — else the rewrite.
pub fn auto_choice(to_ports: &[u16]) -> AutoChoice {
    let rewrite = |why: String| AutoChoice { socket: false, why };
    if !supported() {
        return rewrite("this kernel has no sk_lookup programs".into());
    }
    if !super::privileges::may_take_sockets() {
        return rewrite(
            "no CAP_SYS_PTRACE to take the listening sockets from their servers".into(),
        );
    }
    let wanted: HashSet<u16> = to_ports.iter().copied().collect();
    let listening = match crate::kernel_truth::sock_diag::listening_sockets(&wanted) {
        Ok(listening) => listening,
        Err(e) => return rewrite(format!("the socket table could not be read ({e})")),
    };
    let mut without: Vec<u16> = wanted
        .iter()
        .filter(|port| !listening.iter().any(|l| l.port == **port))
        .copied()
        .collect();
    without.sort_unstable();
    if !without.is_empty() {
        return rewrite(format!(
            "nothing listens on {} in this namespace (a server elsewhere, e.g. a container)",
            ports_text(&without)
        ));
    }
    match nat_rules::ports_with_nat(to_ports) {
        Ok(natted) if !natted.is_empty() => rewrite(format!(
            "a NAT rule redirects {} (a published container port keeps the rewrite)",
            ports_text(&natted)
        )),
        Ok(_) => AutoChoice {
            socket: true,
            why: format!(
                "{} listen in this namespace and no NAT rule applies to them",
                ports_text(&{
                    let mut ports = to_ports.to_vec();
                    ports.sort_unstable();
                    ports.dedup();
                    ports
                })
            ),
        },
        Err(e) => rewrite(format!("the NAT rules could not be read ({e})")),
    }
}

fn ports_text(ports: &[u16]) -> String {
    let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
    ports.join(", ")
}

mod nat_rules {
    //! The TO ports a netfilter NAT rule of this namespace rewrites (DNAT or redirect), from
    //! `nft list ruleset` (iptables-nft rules, Docker's among them, are in it).

    use std::process::Command;

    /// Those of `ports` that a rule in a `nat` chain matches as its destination port and
    /// then DNATs or redirects. No `nft` on the host: no nftables rules either.
    pub fn ports_with_nat(ports: &[u16]) -> Result<Vec<u16>, String> {
        let out = match Command::new("nft").args(["list", "ruleset"]).output() {
            Ok(out) => out,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(format!("running nft: {e}")),
        };
        if !out.status.success() {
            return Err(format!(
                "`nft list ruleset`: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(natted(&String::from_utf8_lossy(&out.stdout), ports))
    }

    /// The ports of `ports` that a DNAT or redirect rule in `ruleset` (nft's text) matches.
    pub fn natted(ruleset: &str, ports: &[u16]) -> Vec<u16> {
        let mut found = Vec::new();
        for line in ruleset.lines() {
            let line = line.trim();
            let rewrites = line.contains("dnat") || line.contains(" redirect");
            let Some((_, after)) = line.split_once("dport ") else {
                continue;
            };
            if !rewrites {
                continue;
            }
            // `dport 8080 …` or `dport { 80, 8080 } …`
            let matched = if let Some(set) = after.strip_prefix('{') {
                set.split('}').next().unwrap_or("")
            } else {
                after.split_whitespace().next().unwrap_or("")
            };
            for word in matched.split([',', ' ', '-']) {
                if let Ok(port) = word.trim().parse::<u16>() {
                    if ports.contains(&port) && !found.contains(&port) {
                        found.push(port);
                    }
                }
            }
        }
        found.sort_unstable();
        found
    }

    #[cfg(test)]
    mod tests {
        use super::natted;

        #[test]
        fn dnat_and_redirect_rules_name_their_ports_and_other_rules_do_not() {
            let ruleset = "table ip nat {\n chain DOCKER {\n  iifname != \"docker0\" \
                 meta l4proto tcp tcp dport 8080 counter dnat to 172.17.0.2:80\n }\n\
                 chain prerouting {\n  tcp dport { 443, 8443 } redirect to :9443\n  \
                 tcp dport 8081 accept\n }\n}\n";
            assert_eq!(natted(ruleset, &[8080, 8443, 8081, 9000]), [8080, 8443]);
            assert!(natted("", &[8080]).is_empty());
        }
    }
}
