//! The seccomp stage: the filters systemd installs for the unit's `SystemCallFilter=`
//! (with `SystemCallErrorNumber=` and `SystemCallArchitectures=native`),
//! `RestrictAddressFamilies=`, `MemoryDenyWriteExecute=` and `RestrictNamespaces=`, built
//! with libseccomp as systemd builds them, each its own filter, the system-call filter
//! loaded last.

use anyhow::{Context as _, Result};
use libseccomp::{ScmpAction, ScmpArgCompare, ScmpCompareOp, ScmpFilterContext, ScmpSyscall};

/// The namespace flags `RestrictNamespaces=yes` denies to unshare(2) and clone(2).
const NAMESPACE_FLAGS: [i32; 8] = [
    libc::CLONE_NEWCGROUP,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWUTS,
    0x80, // CLONE_NEWTIME
];

/// What the seccomp stage installs (the unit's directives, translated by the test).
#[derive(clap::Args)]
pub struct Plan {
    /// The system calls allowed, comma-separated (the effective `SystemCallFilter=`);
    /// every other one fails with `--errno`.
    #[arg(long, value_delimiter = ',', required = true)]
    allow: Vec<String>,
    /// The error number of a denied system call (`SystemCallErrorNumber=`).
    #[arg(long)]
    errno: i32,
    /// Address families socket(2) may create, comma-separated numbers
    /// (`RestrictAddressFamilies=`); any other fails with EAFNOSUPPORT.
    #[arg(long, value_delimiter = ',')]
    families: Vec<u64>,
    /// `MemoryDenyWriteExecute=yes`: no mapping both writable and executable.
    #[arg(long)]
    deny_write_execute: bool,
    /// `RestrictNamespaces=yes`: no new namespace, no setns(2).
    #[arg(long)]
    restrict_namespaces: bool,
}

/// Installs the filters of `plan` on this process (`no_new_privs` is set already, or set
/// by libseccomp).
pub fn apply(plan: &Plan) -> Result<()> {
    if !plan.families.is_empty() {
        address_families(&plan.families)?
            .load()
            .context("loading the families filter")?;
    }
    if plan.deny_write_execute {
        write_execute()?.load().context("loading the W^X filter")?;
    }
    if plan.restrict_namespaces {
        namespaces()?
            .load()
            .context("loading the namespaces filter")?;
    }
    system_calls(&plan.allow, plan.errno)?
        .load()
        .context("loading the system-call filter")
}

/// The allow-list: the default action fails with `errno`; architectures other than the
/// native one are not in the filter, so their calls are killed (libseccomp's bad-arch
/// action), as with `SystemCallArchitectures=native`. Names libseccomp does not know, or
/// that are no system call of this architecture, are skipped, as systemd skips them.
fn system_calls(allow: &[String], errno: i32) -> Result<ScmpFilterContext> {
    let mut filter = ScmpFilterContext::new(ScmpAction::Errno(errno))?;
    let mut skipped = Vec::new();
    for name in allow {
        match ScmpSyscall::from_name(name) {
            Ok(call) if call.as_raw_syscall() >= 0 => {
                filter
                    .add_rule_exact(ScmpAction::Allow, call)
                    .with_context(|| format!("allowing {name}"))?;
            }
            _ => skipped.push(name.as_str()),
        }
    }
    eprintln!(
        "unit-sandbox: {} system calls allowed, {} names skipped (not native or unknown to libseccomp): {}",
        allow.len() - skipped.len(),
        skipped.len(),
        skipped.join(" ")
    );
    Ok(filter)
}

/// socket(2) of a family outside `families` fails with EAFNOSUPPORT: below the lowest,
/// above the highest, and each gap between (systemd's rules).
fn address_families(families: &[u64]) -> Result<ScmpFilterContext> {
    let mut filter = ScmpFilterContext::new(ScmpAction::Allow)?;
    let deny = ScmpAction::Errno(libc::EAFNOSUPPORT);
    let socket = ScmpSyscall::from_name("socket")?;
    let (lowest, highest) = (
        *families.iter().min().context("no family")?,
        *families.iter().max().context("no family")?,
    );
    let arg0 = |op, value| [ScmpArgCompare::new(0, op, value)];
    filter.add_rule_conditional_exact(deny, socket, &arg0(ScmpCompareOp::Less, lowest))?;
    filter.add_rule_conditional_exact(deny, socket, &arg0(ScmpCompareOp::Greater, highest))?;
    for family in (lowest..highest).filter(|f| !families.contains(f)) {
        filter.add_rule_conditional_exact(deny, socket, &arg0(ScmpCompareOp::Equal, family))?;
    }
    Ok(filter)
}

/// No mapping writable and executable at once, and no later PROT_EXEC (systemd's rules).
fn write_execute() -> Result<ScmpFilterContext> {
    let mut filter = ScmpFilterContext::new(ScmpAction::Allow)?;
    let deny = ScmpAction::Errno(libc::EPERM);
    let masked = |arg, mask: i32| {
        let mask = mask as u64;
        [ScmpArgCompare::new(
            arg,
            ScmpCompareOp::MaskedEqual(mask),
            mask,
        )]
    };
    let write_exec = libc::PROT_WRITE | libc::PROT_EXEC;
    filter.add_rule_conditional_exact(
        deny,
        ScmpSyscall::from_name("mmap")?,
        &masked(2, write_exec),
    )?;
    for call in ["mprotect", "pkey_mprotect"] {
        let call = ScmpSyscall::from_name(call)?;
        filter.add_rule_conditional_exact(deny, call, &masked(2, libc::PROT_EXEC))?;
    }
    let shmat = ScmpSyscall::from_name("shmat")?;
    filter.add_rule_conditional_exact(deny, shmat, &masked(2, libc::SHM_EXEC))?;
    Ok(filter)
}

/// setns(2) fails, and so do unshare(2) and clone(2) with any namespace flag; clone3(2),
/// whose flags a filter cannot see, fails with ENOSYS so that the C library falls back to
/// clone(2) (systemd's rules).
fn namespaces() -> Result<ScmpFilterContext> {
    let mut filter = ScmpFilterContext::new(ScmpAction::Allow)?;
    let deny = ScmpAction::Errno(libc::EPERM);
    filter.add_rule_exact(deny, ScmpSyscall::from_name("setns")?)?;
    for flag in NAMESPACE_FLAGS {
        let flag = flag as u64;
        let masked = [ScmpArgCompare::new(
            0,
            ScmpCompareOp::MaskedEqual(flag),
            flag,
        )];
        for call in ["unshare", "clone"] {
            filter.add_rule_conditional_exact(deny, ScmpSyscall::from_name(call)?, &masked)?;
        }
    }
    let clone3 = ScmpSyscall::from_name("clone3")?;
    filter.add_rule_exact(ScmpAction::Errno(libc::ENOSYS), clone3)?;
    Ok(filter)
}
