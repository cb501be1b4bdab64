//! Check 4, `hook`: which ingress hook `--mode` gets on an interface, and why — the choice
//! `dataplane::attach` makes: `auto` takes TC ingress on a veth (native XDP there copies
//! each packet and turns off the peer's TSO) and with `--mark` (the mark lives in the
//! skb); elsewhere native XDP, else generic XDP (a driver without native XDP), else TC.
//! Informational for `auto`; a warning where the hook costs something.

use super::{xdp_features, Check, Settings, Status};
use crate::dataplane::{
    attach::{Hook, Mode},
    iface, steer,
};

const NAME: &str = "hook";

/// One finding for `iface`: the running instance's hook on it, or what `run` would pick
/// (`auto`: what `--mode auto` picks, [`Settings::auto_choice`]).
pub fn check(settings: &Settings, iface: &str, auto: Option<&steer::AutoChoice>) -> Check {
    let driver = iface::driver(iface);
    let is_veth = driver.as_deref() == Some("veth");
    let driver_text = driver.as_deref().unwrap_or("unknown");
    let running = settings
        .instance
        .as_ref()
        .and_then(|i| i.hook_on(iface))
        .and_then(Hook::from_name);
    match running {
        Some(hook) => running_hook(settings.mode, iface, driver_text, is_veth, hook),
        None => planned_hook(settings, iface, (driver_text, is_veth), auto),
    }
}

/// What the running instance got on `iface`.
fn running_hook(mode: Mode, iface: &str, driver: &str, is_veth: bool, hook: Hook) -> Check {
    let head = format!("{iface} (driver {driver}): ingress at {hook} with --mode {mode}");
    match (mode, hook) {
        (Mode::Auto, Hook::XdpGeneric) => Check::new(
            NAME,
            Status::Warn,
            format!(
                "{head}: {}, so auto fell back to generic XDP, which runs after the skb is \
                 built and costs as much as TC",
                match native(iface) {
                    Some(false) => "the driver has no native XDP (xdp-features)",
                    _ => "native XDP was refused (see the loader's log)",
                }
            ),
        )
        .with_fix(
            "`RUST_LOG=info redirector run` logs why native XDP failed; --mode tc is \
             equivalent and also allows --mark",
        ),
        (Mode::Auto, Hook::TcIngress) if is_veth => Check::new(
            NAME,
            Status::Ok,
            format!("{head}: auto takes TC on a veth, where native XDP would copy each packet and turn off the peer's TSO"),
        ),
        (Mode::Auto, Hook::TcIngress) => Check::new(
            NAME,
            Status::Ok,
            format!("{head}: TC ingress (--mark, or neither XDP mode could attach: `RUST_LOG=info` shows why)"),
        ),
        (Mode::Xdp, Hook::XdpNative) if is_veth => Check::new(
            NAME,
            Status::Warn,
            format!("{head}: native XDP on a veth copies each TCP data packet into an XDP buffer and turns off TSO on its peer"),
        )
        .with_fix("--mode auto (TC on a veth)"),
        _ => Check::new(NAME, Status::Ok, head),
    }
}

/// Whether `iface`'s driver has native XDP, if the kernel says.
fn native(iface: &str) -> Option<bool> {
    xdp_features::native_xdp(iface::ifindex(iface).ok()?)
}

/// What `run` with these settings would pick on `iface`; for `auto`, also why it is not
/// socket steering when it is not.
fn planned_hook(
    settings: &Settings,
    iface: &str,
    (driver, is_veth): (&str, bool),
    auto: Option<&steer::AutoChoice>,
) -> Check {
    let mut check = planned(settings, iface, (driver, is_veth), auto);
    if let Some(choice) = auto.filter(|c| !c.socket) {
        check.message = format!("{}; not socket steering: {}", check.message, choice.why);
    }
    check
}

fn planned(
    settings: &Settings,
    iface: &str,
    (driver, is_veth): (&str, bool),
    auto: Option<&steer::AutoChoice>,
) -> Check {
    let head = format!("{iface} (driver {driver}), --mode {}", settings.mode);
    match (settings.mode, settings.mark) {
        (Mode::Socket, Some(mark)) => Check::new(
            NAME,
            Status::Fail,
            format!("{head}: --mark {mark} is for the packet rewrite; run refuses it with socket steering"),
        )
        .with_fix("drop --mark: with socket steering INPUT sees the FROM port"),
        (Mode::Socket, None) => Check::new(
            NAME,
            Status::Ok,
            format!("{head}: socket steering: nothing attaches to {iface}; new connections to a FROM port are handed to the TO port's listener at socket lookup"),
        ),
        (Mode::Auto, None) if auto.is_some_and(|c| c.socket) => Check::new(
            NAME,
            Status::Ok,
            format!(
                "{head}: socket steering ({}): nothing attaches to {iface}",
                auto.map_or("", |c| c.why.as_str())
            ),
        ),
        (Mode::Auto | Mode::Tc, Some(mark)) => Check::new(
            NAME,
            Status::Ok,
            format!("{head}: TC ingress (--mark {mark} lives in the skb, which XDP runs before)"),
        ),
        (Mode::Xdp | Mode::XdpGeneric, Some(mark)) => Check::new(
            NAME,
            Status::Fail,
            format!("{head}: --mark {mark} needs the TC ingress hook; run refuses this"),
        )
        .with_fix("--mode auto or tc with --mark"),
        (Mode::Auto, None) if is_veth => Check::new(
            NAME,
            Status::Ok,
            format!("{head}: TC ingress (on a veth native XDP would copy each packet and turn off the peer's TSO)"),
        ),
        (Mode::Auto, None) => match native(iface) {
            Some(true) => Check::new(
                NAME,
                Status::Ok,
                format!("{head}: native XDP (the driver has it; generic XDP, then TC, if attaching fails)"),
            ),
            Some(false) => Check::new(
                NAME,
                Status::Ok,
                format!("{head}: generic XDP: the driver has no native XDP (xdp-features), so auto falls back to XDP after the skb is built, which costs as much as TC"),
            ),
            None => Check::new(
                NAME,
                Status::Ok,
                format!("{head}: native XDP, else generic XDP (a driver without native XDP), else TC; the ready line says which"),
            ),
        },
        (Mode::Xdp, None) if native(iface) == Some(false) => Check::new(
            NAME,
            Status::Fail,
            format!("{head}: the driver has no native XDP (xdp-features): run would fail to attach"),
        )
        .with_fix("--mode auto (generic XDP) or --mode tc"),
        (Mode::Xdp, None) if is_veth => Check::new(
            NAME,
            Status::Warn,
            format!("{head}: native XDP on a veth copies each TCP data packet into an XDP buffer and turns off TSO on its peer"),
        )
        .with_fix("--mode auto (TC on a veth)"),
        (mode, None) => Check::new(
            NAME,
            Status::Ok,
            format!("{head}: {}", match mode {
                Mode::Xdp => "native XDP only (fails if the driver has none)",
                Mode::XdpGeneric => "generic XDP",
                _ => "TC ingress",
            }),
        ),
    }
}
