//! Check 8, `interfaces`: whether the instance's programs are attached to each of its
//! interfaces, from the kernel's links ([`crate::dataplane::link_state`]): an interface
//! that went away (missing) or whose links were severed (it was re-created or renamed while
//! no loader ran) carries no redirect until the loader attaches again.

use super::{Check, RunningInstance, Status};
use crate::dataplane::link_state::{InstanceMarker, LinkState};

const NAME: &str = "interfaces";

/// One finding per interface of the running (or persisted) instance; without one, that
/// nothing is attached yet.
pub fn check(instance: Option<&RunningInstance>) -> Vec<Check> {
    let Some(instance) = instance else {
        return vec![Check::new(
            NAME,
            Status::Ok,
            "no redirector instance in this network namespace: nothing attached yet",
        )];
    };
    let names: Vec<String> = instance
        .info
        .interfaces
        .iter()
        .map(|i| i.name.clone())
        .collect();
    let dir = instance.info.pin_dir_from_here(instance.loader_running);
    let steering = instance.info.steers_sockets();
    let states = match InstanceMarker::from_pins(&dir).and_then(|m| m.states_for(&names, steering))
    {
        Ok(states) => states,
        Err(e) => return vec![Check::new(NAME, Status::Skip, format!("{e}"))],
    };
    if steering {
        let attached = states
            .iter()
            .all(|(_, state)| *state == LinkState::Attached);
        return vec![judge_steering(attached, &names.join(", "))];
    }
    states
        .into_iter()
        .map(|(name, state)| judge(&name, state, instance.loader_running))
        .collect()
}

/// Socket steering: one link, on the network namespace; the interfaces only name it.
fn judge_steering(attached: bool, names: &str) -> Check {
    if attached {
        Check::new(
            NAME,
            Status::Ok,
            format!(
                "socket steering: the sk_lookup program is on the network namespace (no \
                 program on {names}, which names the instance)"
            ),
        )
    } else {
        Check::new(
            NAME,
            Status::Fail,
            "socket steering: its program is not on the network namespace: new connections \
             are not steered",
        )
        .with_fix("start the loader again (`systemctl restart redirector`)")
    }
}

fn judge(name: &str, state: LinkState, loader_running: bool) -> Check {
    match (state, loader_running) {
        (LinkState::Attached, _) => Check::new(
            NAME,
            Status::Ok,
            format!("{name}: ingress and egress programs attached"),
        ),
        (LinkState::Missing, true) => Check::new(
            NAME,
            Status::Warn,
            format!(
                "{name} is missing: no redirect until an interface of that name appears; the \
                 loader keeps the flows and attaches at once when it does"
            ),
        )
        .with_fix(format!(
            "bring back the interface {name} (or stop the loader)"
        )),
        (LinkState::Missing, false) => Check::new(
            NAME,
            Status::Warn,
            format!(
                "{name} is missing and no loader runs: no redirect on it; its pinned flows are \
                 kept"
            ),
        )
        .with_fix(format!(
            "start the loader (`systemctl start redirector`): it adopts the flows and attaches \
             to {name} as soon as it exists"
        )),
        (LinkState::Severed, true) => Check::new(
            NAME,
            Status::Fail,
            format!("{name} exists but the running loader's programs are not on it"),
        )
        .with_fix("restart the loader (with --persist it keeps every flow)"),
        (LinkState::Severed, false) => Check::new(
            NAME,
            Status::Fail,
            format!(
                "{name} exists but its pinned links are severed (it was re-created or renamed \
                 while no loader ran): no redirect on it"
            ),
        )
        .with_fix(
            "start the loader (`systemctl start redirector`): it attaches afresh with every \
             pinned flow",
        ),
    }
}
