//! Whether an instance's programs are attached to each of its interfaces, as the kernel
//! says — its BPF links (XDP and TCX, with the interface index each is attached to) and the
//! maps their programs use; for socket steering its link on the network namespace) — not as
//! the instance file remembers: `status`, the `redirector_interface_attached` gauge and
//! `doctor` read it.

use std::{fmt, io, path::Path};

use aya::maps::MapData;
use serde::Serialize;

use super::{
    bpf_link::{
        self, LinkInfo, LINK_TYPE_NETNS, LINK_TYPE_TCX, LINK_TYPE_XDP, TCX_EGRESS, TCX_INGRESS,
    },
    iface,
};

/// The map every program of an instance uses: a link runs one of the instance's programs
/// if its program uses this map (by id).
const MARKER_MAP: &str = "STATS";

/// One interface's links.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// Ingress and egress programs are attached to the interface of that name.
    Attached,
    /// The interface exists but the programs are not (both) on it: their links went away
    /// with an earlier interface of that name (deleted, renamed) and none replaced them yet.
    Severed,
    /// No interface of that name in the namespace.
    Missing,
}

impl fmt::Display for LinkState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LinkState::Attached => "attached",
            LinkState::Severed => "severed",
            LinkState::Missing => "missing",
        })
    }
}

/// Reading the kernel's links failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkStateError {
    /// The instance's marker map could not be opened from its pin.
    #[error("opening the pinned {MARKER_MAP} map in {dir}: {source}")]
    Marker {
        /// Pin directory.
        dir: String,
        /// Cause.
        #[source]
        source: aya::maps::MapError,
    },
    /// Listing the links (or a program's maps) failed.
    #[error("listing the kernel's BPF links: {0}")]
    Links(#[source] io::Error),
}

/// What identifies an instance's programs in the kernel: the id of a map they all use.
#[derive(Clone, Copy, Debug)]
pub struct InstanceMarker(u32);

impl InstanceMarker {
    /// The marker of the instance pinned in `pin_dir`.
    pub fn from_pins(pin_dir: &Path) -> Result<Self, LinkStateError> {
        let err = |source| LinkStateError::Marker {
            dir: pin_dir.display().to_string(),
            source,
        };
        let map = MapData::from_pin(pin_dir.join(MARKER_MAP)).map_err(err)?;
        Ok(InstanceMarker(map.info().map_err(err)?.id()))
    }

    /// The state of each of `names` (in order).
    pub fn states(&self, names: &[String]) -> Result<Vec<(String, LinkState)>, LinkStateError> {
        let links = bpf_link::all_links().map_err(LinkStateError::Links)?;
        let mut ours = Vec::new();
        for link in links
            .iter()
            .filter(|l| l.ifindex != 0 && (l.kind == LINK_TYPE_XDP || l.kind == LINK_TYPE_TCX))
        {
            // A program released since the listing is not ours any more.
            let maps = bpf_link::prog_map_ids(link.prog_id).unwrap_or_default();
            if maps.contains(&self.0) {
                ours.push(*link);
            }
        }
        Ok(names
            .iter()
            .map(|name| {
                let state = state_of(iface::ifindex(name).ok(), &ours);
                (name.clone(), state)
            })
            .collect())
    }
}

impl InstanceMarker {
    /// The state of each of `names` (in order), for an instance that steers sockets
    /// (`steering`: its interfaces only name it) or rewrites packets on them. Steering,
    /// each is `attached` while the program is on the network namespace, else `severed`.
    pub fn states_for(
        &self,
        names: &[String],
        steering: bool,
    ) -> Result<Vec<(String, LinkState)>, LinkStateError> {
        if !steering {
            return self.states(names);
        }
        let state = if self.steering_attached()? {
            LinkState::Attached
        } else {
            LinkState::Severed
        };
        Ok(names.iter().map(|name| (name.clone(), state)).collect())
    }

    /// Socket steering: whether one of the instance's programs is attached to a network
    /// namespace (its `sk_lookup` link).
    pub fn steering_attached(&self) -> Result<bool, LinkStateError> {
        let links = bpf_link::all_links().map_err(LinkStateError::Links)?;
        Ok(links
            .iter()
            .filter(|l| l.kind == LINK_TYPE_NETNS)
            .any(|link| {
                bpf_link::prog_map_ids(link.prog_id)
                    .unwrap_or_default()
                    .contains(&self.0)
            }))
    }
}

/// The state of an interface of index `ifindex` (none: missing) given the attached links
/// that run the instance's programs.
fn state_of(ifindex: Option<u32>, ours: &[LinkInfo]) -> LinkState {
    let Some(ifindex) = ifindex else {
        return LinkState::Missing;
    };
    let on = |kind, attach_type| {
        ours.iter()
            .any(|l| l.ifindex == ifindex && l.kind == kind && l.attach_type == attach_type)
    };
    let ingress = on(LINK_TYPE_XDP, 0) || on(LINK_TYPE_TCX, TCX_INGRESS);
    if ingress && on(LINK_TYPE_TCX, TCX_EGRESS) {
        LinkState::Attached
    } else {
        LinkState::Severed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(kind: u32, ifindex: u32, attach_type: u32) -> LinkInfo {
        LinkInfo {
            kind,
            id: 1,
            prog_id: 1,
            ifindex,
            attach_type,
        }
    }

    #[test]
    fn attached_needs_both_directions_on_the_interface_of_that_name() {
        let both = [
            link(LINK_TYPE_XDP, 5, 0),
            link(LINK_TYPE_TCX, 5, TCX_EGRESS),
        ];
        assert_eq!(state_of(Some(5), &both), LinkState::Attached);
        assert_eq!(state_of(Some(6), &both), LinkState::Severed);
        assert_eq!(state_of(None, &both), LinkState::Missing);
        let tc = [
            link(LINK_TYPE_TCX, 5, TCX_INGRESS),
            link(LINK_TYPE_TCX, 5, TCX_EGRESS),
        ];
        assert_eq!(state_of(Some(5), &tc), LinkState::Attached);
        assert_eq!(state_of(Some(5), &tc[1..]), LinkState::Severed);
        assert_eq!(LinkState::Severed.to_string(), "severed");
    }
}
