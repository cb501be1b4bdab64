//! Following the configured interfaces by name: when an interface of a configured name
//! appears (re-created, renamed to it, moved into the namespace) the same programs, with
//! the same maps, are attached to it at once; when it goes away (deleted, moved out, or
//! renamed to another name) its links are dropped and the loader waits for it. Driven by
//! the rtnetlink events of [`super::netlink`]; every attachment goes through
//! [`attach::attach`].

use std::{
    fs,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Instant,
};

use aya::programs::links::FdLink;

use super::{
    attach::{self, AttachError, Attached, Hook},
    bpf_link, iface,
    netlink::Event,
    Dataplane,
};
use crate::instance::paths;

/// Re-attaching failed.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// Attaching the programs failed.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// The new links could not be pinned in place of the old ones.
    #[error("pinning the link {}: {source}", path.display())]
    Pin {
        /// Pin path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

/// Where one configured interface stands.
#[derive(Debug)]
enum State {
    /// The programs are attached to the interface of index `ifindex`; `held`: the links
    /// this process's programs own (none for links only pinned).
    Attached {
        ifindex: u32,
        held: Option<Attached>,
    },
    /// No interface of this name, or the programs could not be attached to it.
    Missing,
}

/// One configured interface.
#[derive(Debug)]
struct Followed {
    name: String,
    /// The ingress hook it had: an interface that comes back gets the same.
    hook: Hook,
    state: State,
}

/// What a change did, for the caller's log and counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Attached to `iface` in `millis` ms from the event.
    Attached {
        /// Interface name.
        iface: String,
        /// From receiving the event to both links attached (and pinned).
        millis: u128,
    },
    /// `iface` went away (or was renamed to `renamed_to`): its links dropped.
    Lost {
        /// Interface name.
        iface: String,
        /// Its new name, if it was renamed.
        renamed_to: Option<String>,
    },
}

/// Each configured interface and whether the programs are attached to it, as the
/// follower last left it (for readers without the privilege to list the kernel's links).
pub type Published = Arc<Mutex<Vec<(String, bool)>>>;

/// The configured interfaces and their links.
#[derive(Debug)]
pub struct Follower {
    ifaces: Vec<Followed>,
    published: Published,
    /// The instance's pinned links directory, if its links are pinned (`--persist`, or an
    /// adopted instance): new links replace the pins there.
    links_dir: Option<PathBuf>,
}

impl Follower {
    /// No interface yet; `links_dir` as in [`Follower::links_dir`].
    pub fn new(links_dir: Option<PathBuf>) -> Self {
        Follower {
            ifaces: Vec::new(),
            published: Published::default(),
            links_dir,
        }
    }

    /// From now on new links are pinned in `links_dir` (once the instance is pinned).
    pub fn pin_links_in(&mut self, links_dir: PathBuf) {
        self.links_dir = Some(links_dir);
    }

    /// `name` is attached (ingress `hook`) to interface `ifindex`; `held`: the links the
    /// dataplane's programs own, if any.
    pub fn attached(&mut self, name: &str, hook: Hook, ifindex: u32, held: Option<Attached>) {
        self.ifaces.push(Followed {
            name: name.to_string(),
            hook,
            state: State::Attached { ifindex, held },
        });
    }

    /// `name` (ingress `hook` when it comes) is missing.
    pub fn missing(&mut self, name: &str, hook: Hook) {
        self.ifaces.push(Followed {
            name: name.to_string(),
            hook,
            state: State::Missing,
        });
    }

    /// Each interface's name and whether the programs are attached to it (this process's
    /// view, kept current in the handle returned; `status` asks the kernel).
    pub fn published(&self) -> Published {
        self.publish();
        Arc::clone(&self.published)
    }

    fn publish(&self) {
        let states = self
            .ifaces
            .iter()
            .map(|f| (f.name.clone(), matches!(f.state, State::Attached { .. })))
            .collect();
        *self
            .published
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = states;
    }

    /// Applies one rtnetlink event; `received` is when it was read. Returns what changed.
    pub fn on_event(
        &mut self,
        dp: &mut Dataplane,
        event: &Event,
        received: Instant,
    ) -> Vec<Change> {
        let changes = match event {
            Event::NewLink { index, name } => self.on_new_link(dp, *index, name, received),
            Event::DelLink { index, .. } => self.on_gone(dp, *index),
            Event::Addresses => Vec::new(),
            Event::Overrun => self.resync(dp, received),
        };
        if !changes.is_empty() {
            self.publish();
        }
        changes
    }

    /// Compares every interface with what the kernel has now (at start, after lost
    /// events): attaches where the name exists and is not ours, drops what went away.
    pub fn resync(&mut self, dp: &mut Dataplane, started: Instant) -> Vec<Change> {
        let mut changes = Vec::new();
        for i in 0..self.ifaces.len() {
            let now = iface::ifindex(&self.ifaces[i].name).ok();
            match (&self.ifaces[i].state, now) {
                (State::Attached { ifindex, .. }, Some(now)) if *ifindex == now => {}
                (State::Attached { .. }, _) => {
                    changes.extend(self.lose(dp, i, None));
                    if let Some(now) = now {
                        changes.extend(self.attach(dp, i, now, started));
                    }
                }
                (State::Missing, Some(now)) => changes.extend(self.attach(dp, i, now, started)),
                (State::Missing, None) => {}
            }
        }
        if !changes.is_empty() {
            self.publish();
        }
        changes
    }

    fn on_new_link(
        &mut self,
        dp: &mut Dataplane,
        index: u32,
        name: &str,
        received: Instant,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        // Renamed away: the name is what is configured, not the device.
        for i in 0..self.ifaces.len() {
            let followed = &self.ifaces[i];
            if followed.name != name
                && matches!(followed.state, State::Attached { ifindex, .. } if ifindex == index)
            {
                changes.extend(self.lose(dp, i, Some(name.to_string())));
            }
        }
        if let Some(i) = self.ifaces.iter().position(|f| f.name == name) {
            match self.ifaces[i].state {
                State::Attached { ifindex, .. } if ifindex == index => {}
                State::Attached { .. } => {
                    changes.extend(self.lose(dp, i, None));
                    changes.extend(self.attach(dp, i, index, received));
                }
                State::Missing => changes.extend(self.attach(dp, i, index, received)),
            }
        }
        changes
    }

    fn on_gone(&mut self, dp: &mut Dataplane, index: u32) -> Vec<Change> {
        let mut changes = Vec::new();
        for i in 0..self.ifaces.len() {
            if matches!(self.ifaces[i].state, State::Attached { ifindex, .. } if ifindex == index) {
                changes.extend(self.lose(dp, i, None));
            }
        }
        changes
    }

    /// Drops the links of interface `i` (gone or renamed away): this process's handles,
    /// and, where pinned, detaches the pinned links (they stay pinned, severed, until new
    /// ones replace them).
    fn lose(&mut self, dp: &mut Dataplane, i: usize, renamed_to: Option<String>) -> Option<Change> {
        let followed = &mut self.ifaces[i];
        let State::Attached { held, .. } = std::mem::replace(&mut followed.state, State::Missing)
        else {
            return None;
        };
        if let Some(held) = held {
            if let Err(e) = held.detach(dp) {
                log::debug!("dropping the links of {}: {e}", followed.name);
            }
        }
        if let Some(dir) = &self.links_dir {
            for direction in ["ingress", "egress"] {
                let path = dir.join(paths::link_pin_name(&followed.name, direction));
                if let Err(e) = bpf_link::obj_get(&path).and_then(|fd| bpf_link::detach(fd.as_fd()))
                {
                    log::debug!("detaching {}: {e}", path.display());
                }
            }
        }
        Some(Change::Lost {
            iface: followed.name.clone(),
            renamed_to,
        })
    }

    /// Attaches interface `i` (index `ifindex`) with its hook; pins the new links in place
    /// of the old ones if links are pinned.
    fn attach(
        &mut self,
        dp: &mut Dataplane,
        i: usize,
        ifindex: u32,
        started: Instant,
    ) -> Option<Change> {
        let followed = &mut self.ifaces[i];
        match attach_pinned(dp, &followed.name, followed.hook, self.links_dir.as_deref()) {
            Ok(held) => {
                followed.state = State::Attached { ifindex, held };
                Some(Change::Attached {
                    iface: followed.name.clone(),
                    millis: started.elapsed().as_millis(),
                })
            }
            Err(e) => {
                log::warn!(
                    "attaching to {} (index {ifindex}) failed: {e}; waiting for it to change \
                     again",
                    followed.name
                );
                None
            }
        }
    }
}

/// Attaches `name` with ingress `hook`; with `links_dir`, pins both links there in place
/// of the old ones (`None` returned: the pins own them), else the programs own them.
pub fn attach_pinned(
    dp: &mut Dataplane,
    name: &str,
    hook: Hook,
    links_dir: Option<&Path>,
) -> Result<Option<Attached>, FollowError> {
    let attached = attach::attach(dp, name, hook.mode())?;
    let Some(dir) = links_dir else {
        return Ok(Some(attached));
    };
    let (ingress, egress) = attached.take_links(dp)?;
    repin(dir, &paths::link_pin_name(name, "ingress"), ingress)?;
    repin(dir, &paths::link_pin_name(name, "egress"), egress)?;
    Ok(None)
}

/// Pins `link` as `dir/name`, replacing what is pinned there: pinned under a temporary
/// name, then renamed over the old pin (which releases the old link).
fn repin(dir: &Path, name: &str, link: FdLink) -> Result<(), FollowError> {
    let pin_err = |path: &Path| {
        let path = path.to_path_buf();
        move |source| FollowError::Pin { path, source }
    };
    fs::create_dir_all(dir).map_err(pin_err(dir))?;
    let tmp = dir.join(format!("new-{}-{name}", std::process::id()));
    let path = dir.join(name);
    link.pin(&tmp)
        .map_err(|e| pin_err(&tmp)(std::io::Error::other(e)))?;
    if let Err(e) = fs::rename(&tmp, &path) {
        let _ = fs::remove_file(&tmp);
        return Err(pin_err(&path)(e));
    }
    Ok(())
}
