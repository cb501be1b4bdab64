//! Attaching the programs to an interface: the hook mode for ingress, TC for egress.

use std::{fmt, io};

use clap::ValueEnum;

use std::path::Path;

use aya::programs::{
    links::{FdLink, LinkError, PinnedLink},
    tc::{SchedClassifierLink, SchedClassifierLinkId, TcAttachType},
    xdp::{XdpLink, XdpLinkId},
    ProgramError, XdpMode,
};

use super::{iface, Dataplane, DataplaneError};

/// Requested strategy and ingress hook (`--mode`, `mode =` in a config file); the names
/// are clap's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// TC ingress on a veth; elsewhere native XDP, else generic XDP, else TC ingress.
    #[default]
    Auto,
    /// Native (driver) XDP only.
    Xdp,
    /// Generic (skb) XDP only.
    XdpGeneric,
    /// TC ingress (TCX) only.
    Tc,
    /// No program on the interfaces: a new connection to a FROM port is handed to the TO
    /// port's listener at socket lookup, in the loader's network namespace.
    Socket,
}

impl Mode {
    /// Parses a mode name; the error names the accepted ones (the value parser of
    /// `--mode`, whose error text the CLI keeps, and of the config file's `mode`).
    pub fn parse(text: &str) -> Result<Mode, String> {
        Mode::from_str(text, false).map_err(|_| {
            let names: Vec<String> = Mode::value_variants()
                .iter()
                .map(ToString::to_string)
                .collect();
            let (last, rest) = names.split_last().expect("Mode has variants");
            format!(
                "invalid mode `{text}`: expected {} or {last}",
                rest.join(", ")
            )
        })
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = self.to_possible_value().expect("no variant is skipped");
        f.write_str(value.get_name())
    }
}

/// The ingress hook actually in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// Native XDP.
    XdpNative,
    /// Generic XDP.
    XdpGeneric,
    /// TC ingress.
    TcIngress,
}

impl fmt::Display for Hook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hook::XdpNative => "xdp",
            Hook::XdpGeneric => "xdp-generic",
            Hook::TcIngress => "tc",
        })
    }
}

/// Attaching failed.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// Another XDP program is on the interface; we never replace it.
    #[error("interface {iface} already has an XDP program attached (see `ip link show dev {iface}`); redirector will not replace it: detach it first or use --mode tc")]
    ForeignXdp {
        /// Interface name.
        iface: String,
    },
    /// XDP attach failed for another reason.
    #[error("attaching XDP ({mode}) to {iface} failed: {source}")]
    Xdp {
        /// Interface name.
        iface: String,
        /// Hook tried.
        mode: Hook,
        /// Cause.
        #[source]
        source: ProgramError,
    },
    /// TC attach failed.
    #[error("attaching TC {direction} to {iface} failed: {source}")]
    Tc {
        /// Interface name.
        iface: String,
        /// "ingress" or "egress".
        direction: &'static str,
        /// Cause.
        #[source]
        source: ProgramError,
    },
    /// Program lookup failed.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
    /// `--mode socket` puts no program on an interface.
    #[error("--mode socket steers at socket lookup in the network namespace: nothing attaches to {iface}")]
    NotAnInterfaceMode {
        /// Interface name.
        iface: String,
    },
    /// A link could not be taken over for pinning (`--persist`).
    #[error("taking over the {direction} link on {iface} for --persist: {source}")]
    TakeLink {
        /// Interface name.
        iface: String,
        /// "ingress" or "egress".
        direction: &'static str,
        /// Cause (e.g. a kernel without BPF links for this hook).
        #[source]
        source: LinkError,
    },
}

/// Adopting a persisted instance's link failed.
#[derive(Debug, thiserror::Error)]
pub enum AdoptLinkError {
    /// The pinned link could not be opened.
    #[error("opening the pinned link {}: {source}", path.display())]
    Open {
        /// Pin path.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: LinkError,
    },
    /// The pinned link is not of the kind the instance file says.
    #[error("the pinned link {} is not a {kind} link: {source}", path.display())]
    Kind {
        /// Pin path.
        path: std::path::PathBuf,
        /// Expected kind.
        kind: &'static str,
        /// Cause.
        #[source]
        source: LinkError,
    },
    /// `bpf_link_update` (or looking the program up) failed.
    #[error("replacing the program on {iface} {direction}: {source}")]
    Update {
        /// Interface name.
        iface: String,
        /// "ingress" or "egress".
        direction: &'static str,
        /// Cause.
        #[source]
        source: ProgramError,
    },
    /// Program lookup failed.
    #[error(transparent)]
    Dataplane(#[from] DataplaneError),
}

/// Adopts the links pinned at `ingress` and `egress` for `iface`: atomically replaces
/// (`bpf_link_update`) the program each runs by the matching program of `dp`, so the
/// interface is never without one. `hook` is the ingress hook the persisted instance used.
/// The links stay pinned; `dp`'s programs own the handles from now on (closing them does
/// not detach pinned links).
pub fn adopt(
    dp: &mut Dataplane,
    iface: &str,
    hook: Hook,
    ingress: &Path,
    egress: &Path,
) -> Result<Attached, AdoptLinkError> {
    let update_err = |direction| {
        let iface = iface.to_string();
        move |source| AdoptLinkError::Update {
            iface,
            direction,
            source,
        }
    };
    let ingress_link = open_pinned(ingress)?;
    let ingress_id = match hook {
        Hook::XdpNative | Hook::XdpGeneric => {
            let link = XdpLink::try_from(ingress_link).map_err(kind_err(ingress, "XDP"))?;
            IngressLinkId::Xdp(
                dp.xdp_ingress()?
                    .attach_to_link(link)
                    .map_err(update_err("ingress"))?,
            )
        }
        Hook::TcIngress => {
            let link =
                SchedClassifierLink::try_from(ingress_link).map_err(kind_err(ingress, "TCX"))?;
            IngressLinkId::Tc(
                dp.tc_ingress()?
                    .attach_to_link(link)
                    .map_err(update_err("ingress"))?,
            )
        }
    };
    let link =
        SchedClassifierLink::try_from(open_pinned(egress)?).map_err(kind_err(egress, "TCX"))?;
    let egress_id = dp
        .tc_egress()?
        .attach_to_link(link)
        .map_err(update_err("egress"))?;
    Ok(Attached {
        hook,
        iface: iface.to_string(),
        ingress: ingress_id,
        egress: egress_id,
    })
}

fn open_pinned(path: &Path) -> Result<FdLink, AdoptLinkError> {
    PinnedLink::from_pin(path)
        .map(FdLink::from)
        .map_err(|source| AdoptLinkError::Open {
            path: path.to_path_buf(),
            source,
        })
}

fn kind_err(path: &Path, kind: &'static str) -> impl FnOnce(LinkError) -> AdoptLinkError {
    let path = path.to_path_buf();
    move |source| AdoptLinkError::Kind { path, kind, source }
}

impl Hook {
    /// The hook named as in the instance file (`xdp`, `xdp-generic`, `tc`).
    pub fn from_name(name: &str) -> Option<Hook> {
        [Hook::XdpNative, Hook::XdpGeneric, Hook::TcIngress]
            .into_iter()
            .find(|hook| hook.to_string() == name)
    }

    /// The `--mode` that attaches exactly this hook (how an interface that comes back gets
    /// the hook it had).
    pub fn mode(self) -> Mode {
        match self {
            Hook::XdpNative => Mode::Xdp,
            Hook::XdpGeneric => Mode::XdpGeneric,
            Hook::TcIngress => Mode::Tc,
        }
    }

    /// True if `mode` (an explicit `--mode`) asks for this hook; `auto` accepts any.
    pub fn satisfies(self, mode: Mode) -> bool {
        match mode {
            Mode::Auto => true,
            Mode::Xdp => self == Hook::XdpNative,
            Mode::XdpGeneric => self == Hook::XdpGeneric,
            Mode::Tc => self == Hook::TcIngress,
            Mode::Socket => false,
        }
    }
}

/// The ingress link, whichever hook it is on.
#[derive(Debug)]
enum IngressLinkId {
    Xdp(XdpLinkId),
    Tc(SchedClassifierLinkId),
}

/// What [`attach`] attached to one interface.
#[derive(Debug)]
pub struct Attached {
    /// The ingress hook in use.
    pub hook: Hook,
    iface: String,
    ingress: IngressLinkId,
    egress: SchedClassifierLinkId,
}

impl Attached {
    /// Detaches both links (or, on a severed or pinned link, only closes this process's
    /// handle: a pinned link stays attached until unpinned or detached by
    /// [`super::bpf_link::detach`]).
    pub fn detach(self, dp: &mut Dataplane) -> Result<(), AttachError> {
        match self.ingress {
            IngressLinkId::Xdp(id) => dp
                .xdp_ingress()?
                .detach(id)
                .map_err(program_error(&self.iface, "ingress"))?,
            IngressLinkId::Tc(id) => dp
                .tc_ingress()?
                .detach(id)
                .map_err(program_error(&self.iface, "ingress"))?,
        }
        dp.tc_egress()?
            .detach(self.egress)
            .map_err(program_error(&self.iface, "egress"))
    }

    /// Takes both links out of the programs' ownership, so that dropping the `Dataplane`
    /// no longer detaches them (`--persist` pins them): `(ingress, egress)`.
    pub fn take_links(self, dp: &mut Dataplane) -> Result<(FdLink, FdLink), AttachError> {
        let take_err = |direction| {
            let iface = self.iface.clone();
            move |source| AttachError::TakeLink {
                iface,
                direction,
                source,
            }
        };
        let ingress = match self.ingress {
            IngressLinkId::Xdp(id) => {
                let link = dp
                    .xdp_ingress()?
                    .take_link(id)
                    .map_err(program_error(&self.iface, "ingress"))?;
                FdLink::try_from(link).map_err(take_err("ingress"))?
            }
            IngressLinkId::Tc(id) => {
                let link = dp
                    .tc_ingress()?
                    .take_link(id)
                    .map_err(program_error(&self.iface, "ingress"))?;
                FdLink::try_from(link).map_err(take_err("ingress"))?
            }
        };
        let link = dp
            .tc_egress()?
            .take_link(self.egress)
            .map_err(program_error(&self.iface, "egress"))?;
        let egress = FdLink::try_from(link).map_err(take_err("egress"))?;
        Ok((ingress, egress))
    }
}

/// The error of a program's operation on the `direction` link of `iface`.
fn program_error(iface: &str, direction: &'static str) -> impl FnOnce(ProgramError) -> AttachError {
    let iface = iface.to_owned();
    move |source| AttachError::Tc {
        iface,
        direction,
        source,
    }
}

/// Attaches ingress (per `mode`) and egress programs to `iface`.
///
/// On error nothing stays attached by this call beyond what the `Dataplane` owns: the
/// caller drops it, which detaches every link.
pub fn attach(dp: &mut Dataplane, iface: &str, mode: Mode) -> Result<Attached, AttachError> {
    let (hook, ingress) = match mode {
        Mode::Xdp => {
            if iface::is_veth(iface) {
                log::warn!("{iface} is a veth: {VETH_XDP_COST}; --mode tc avoids that");
            }
            attach_xdp(dp, iface, Hook::XdpNative)?
        }
        Mode::XdpGeneric => attach_xdp(dp, iface, Hook::XdpGeneric)?,
        Mode::Tc => (
            Hook::TcIngress,
            IngressLinkId::Tc(attach_tc(dp, iface, TcAttachType::Ingress)?),
        ),
        Mode::Auto => attach_auto(dp, iface)?,
        Mode::Socket => {
            return Err(AttachError::NotAnInterfaceMode {
                iface: iface.to_string(),
            })
        }
    };
    let egress = attach_tc(dp, iface, TcAttachType::Egress)?;
    Ok(Attached {
        hook,
        iface: iface.to_string(),
        ingress,
        egress,
    })
}

/// Why `auto` avoids XDP on a veth, and what `--mode xdp` there costs.
const VETH_XDP_COST: &str = "native XDP on a veth copies each TCP data packet into an XDP \
     buffer and turns off TSO on its peer (docs/BENCH.md measures it)";

fn attach_auto(dp: &mut Dataplane, iface: &str) -> Result<(Hook, IngressLinkId), AttachError> {
    if iface::is_veth(iface) {
        log::info!(
            "{iface} is a veth: auto uses tc ingress ({VETH_XDP_COST}; --mode xdp forces XDP)"
        );
        let id = attach_tc(dp, iface, TcAttachType::Ingress)?;
        return Ok((Hook::TcIngress, IngressLinkId::Tc(id)));
    }
    for hook in [Hook::XdpNative, Hook::XdpGeneric] {
        match attach_xdp(dp, iface, hook) {
            Ok(attached) => return Ok(attached),
            Err(e @ (AttachError::ForeignXdp { .. } | AttachError::Dataplane(_))) => return Err(e),
            Err(e) => log::info!("{e}; trying the next mode"),
        }
    }
    let id = attach_tc(dp, iface, TcAttachType::Ingress)?;
    Ok((Hook::TcIngress, IngressLinkId::Tc(id)))
}

fn attach_xdp(
    dp: &mut Dataplane,
    iface: &str,
    hook: Hook,
) -> Result<(Hook, IngressLinkId), AttachError> {
    let mode = match hook {
        Hook::XdpGeneric => XdpMode::Skb,
        _ => XdpMode::Driver,
    };
    match dp.xdp_ingress()?.attach(iface, mode) {
        Ok(id) => Ok((hook, IngressLinkId::Xdp(id))),
        Err(source) if is_busy(&source) => Err(AttachError::ForeignXdp {
            iface: iface.to_string(),
        }),
        Err(source) => Err(AttachError::Xdp {
            iface: iface.to_string(),
            mode: hook,
            source,
        }),
    }
}

fn attach_tc(
    dp: &mut Dataplane,
    iface: &str,
    direction: TcAttachType,
) -> Result<SchedClassifierLinkId, AttachError> {
    let (program, name) = match direction {
        TcAttachType::Ingress => (dp.tc_ingress()?, "ingress"),
        _ => (dp.tc_egress()?, "egress"),
    };
    program
        .attach(iface, direction)
        .map_err(|source| AttachError::Tc {
            iface: iface.to_string(),
            direction: name,
            source,
        })
}

/// EBUSY: a program is attached in this mode; EEXIST: one is attached in the other mode.
fn is_busy(err: &ProgramError) -> bool {
    let code = match err {
        ProgramError::SyscallError(e) => e.io_error.raw_os_error(),
        _ => None,
    };
    matches!(code, Some(libc::EBUSY) | Some(libc::EEXIST))
        || matches!(err, ProgramError::SyscallError(e) if e.io_error.kind() == io::ErrorKind::AlreadyExists)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_by_their_names_and_a_bad_one_is_explained() {
        for mode in Mode::value_variants() {
            assert_eq!(Mode::parse(&mode.to_string()), Ok(*mode));
        }
        let names: Vec<String> = Mode::value_variants().iter().map(Mode::to_string).collect();
        assert_eq!(names, ["auto", "xdp", "xdp-generic", "tc", "socket"]);
        assert_eq!(
            Mode::parse("fast").unwrap_err(),
            "invalid mode `fast`: expected auto, xdp, xdp-generic, tc or socket"
        );
    }
}
