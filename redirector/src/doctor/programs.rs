//! Check 7, `programs`: an XDP, tcx or tc (cls_bpf) program on the interface that is not
//! redirector's. A foreign XDP program runs before every ingress hook (it may drop or
//! redirect what redirector should see), and `run` never replaces one; a foreign tcx or tc
//! program shares the hook and may act before or after ours. Ours are the programs the running instance's
//! loader holds (`prog_id` in its `/proc/PID/fdinfo`) or its pinned links run.

use std::{collections::HashSet, fs, path::Path, process::Command};

use aya::programs::{
    links::{FdLink, PinnedLink},
    tc::{SchedClassifier, TcAttachType},
};

use super::{Check, RunningInstance, Settings, Status};
use crate::instance::paths;

const NAME: &str = "programs";

/// What redirector's program names start with (the kernel keeps 15 bytes of a name).
const OUR_PREFIX: &str = "redirector_";

/// A program attached to the interface.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Attached {
    /// `XDP`, `tcx ingress`, `tcx egress`.
    hook: &'static str,
    id: u32,
    name: String,
}

/// The findings for `iface`: one per program that is not ours, or one that all is well.
pub fn check(settings: &Settings, iface: &str) -> Vec<Check> {
    let ours = settings.instance.as_ref().map(our_program_ids);
    let mut attached = Vec::new();
    let mut skipped = Vec::new();
    for programs in [xdp_programs(iface), tc_filter_programs(iface)] {
        match programs {
            Ok(found) => attached.extend(found),
            Err(why) => skipped.push(why),
        }
    }
    for (direction, hook) in [
        (TcAttachType::Ingress, "tcx ingress"),
        (TcAttachType::Egress, "tcx egress"),
    ] {
        match SchedClassifier::query_tcx(iface, direction) {
            Ok((_, programs)) => attached.extend(programs.iter().map(|p| Attached {
                hook,
                id: p.id(),
                name: p.name_as_str().unwrap_or_default().to_string(),
            })),
            Err(e) => skipped.push(format!("tcx programs ({hook}: {e})")),
        }
    }
    let mut checks: Vec<Check> = attached
        .iter()
        .filter_map(|program| judge(iface, program, ours.as_ref()))
        .collect();
    if checks.is_empty() {
        let mut text = format!("no foreign XDP, tcx or tc program on {iface}");
        let count = attached.len();
        if count > 0 {
            text.push_str(&format!(" ({count} of redirector's attached)"));
        }
        if !skipped.is_empty() {
            text.push_str(&format!("; not checked: {}", skipped.join("; ")));
        }
        let status = if skipped.is_empty() {
            Status::Ok
        } else {
            Status::Skip
        };
        checks.push(Check::new(NAME, status, text));
    }
    checks
}

/// The finding for one attached program, none if it is the running instance's.
fn judge(iface: &str, program: &Attached, ours: Option<&HashSet<u32>>) -> Option<Check> {
    let Attached { hook, id, name } = program;
    if ours.is_some_and(|ids| ids.contains(id)) {
        return None;
    }
    let looks_ours = name.starts_with(OUR_PREFIX);
    if looks_ours && ours.is_none() {
        // No instance here to compare with: a program of ours left by a loader of another
        // version or another namespace's instance file.
        return Some(
            Check::new(
                NAME,
                Status::Warn,
                format!(
                    "{iface} carries {hook} program {id} `{name}`, a redirector program no \
                     instance of this network namespace knows (a loader of another version, \
                     or a persisted one whose files are gone)"
                ),
            )
            .with_fix(format!(
                "`redirector detach --iface {iface}` (with nsenter --net= for a namespace), or \
                 find its owner with `bpftool net show dev {iface}` and `bpftool link`"
            )),
        );
    }
    let owner = format!(
        "find its owner with `bpftool net show dev {iface}` and `bpftool link`, and detach it"
    );
    Some(if *hook == "XDP" {
        Check::new(
            NAME,
            Status::Fail,
            format!(
                "{iface} carries XDP program {id} `{name}` that is not redirector's: it runs \
                 before any ingress hook (it may drop or redirect the packets redirector must \
                 see), and run never replaces it"
            ),
        )
        .with_fix(owner)
    } else {
        Check::new(
            NAME,
            Status::Warn,
            format!(
                "{iface} carries {hook} program {id} `{name}` that is not redirector's: it \
                 shares the hook and may drop or rewrite redirected packets"
            ),
        )
        .with_fix(owner)
    })
}

/// The XDP programs attached to `iface` (native, generic, offloaded), as `ip -j -d link
/// show` reports them.
fn xdp_programs(iface: &str) -> Result<Vec<Attached>, String> {
    let json = command_json(
        "ip",
        &["-j", "-d", "link", "show", "dev", iface],
        "XDP programs",
    )?;
    let mut found = Vec::new();
    for link in json.as_array().into_iter().flatten() {
        if let Some(xdp) = link.get("xdp") {
            collect_progs(xdp, "XDP", &mut found);
        }
    }
    Ok(found)
}

/// The programs of classic tc BPF filters (cls_bpf on a clsact qdisc, what aya attaches
/// on kernels without tcx and `tc filter add … bpf` does) on `iface`, both directions.
fn tc_filter_programs(iface: &str) -> Result<Vec<Attached>, String> {
    let mut found = Vec::new();
    for (direction, hook) in [("ingress", "tc ingress"), ("egress", "tc egress")] {
        let json = command_json(
            "tc",
            &["-j", "filter", "show", "dev", iface, direction],
            "tc filters",
        )?;
        collect_progs(&json, hook, &mut found);
    }
    Ok(found)
}

/// The JSON `program ARGS` prints (nothing printed: null); `Err` says why not, for `what`.
fn command_json(program: &str, args: &[&str], what: &str) -> Result<serde_json::Value, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{what} (`{program}`: {e})"))?;
    if !out.status.success() {
        return Err(format!(
            "{what} (`{program} {}`: {})",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Null);
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("{what} (`{program} -j` output: {e})"))
}

/// Every `"prog": {"id": …, "name": …}` object under `value` (one program is printed
/// directly, several under `attached`).
fn collect_progs(value: &serde_json::Value, hook: &'static str, found: &mut Vec<Attached>) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, inner) in map {
                let id = inner.get("id").and_then(serde_json::Value::as_u64);
                match (key.as_str(), id) {
                    ("prog", Some(id)) => {
                        let program = Attached {
                            hook,
                            id: u32::try_from(id).unwrap_or(u32::MAX),
                            name: inner
                                .get("name")
                                .and_then(serde_json::Value::as_str)
                                .unwrap_or_default()
                                .to_string(),
                        };
                        if !found.contains(&program) {
                            found.push(program);
                        }
                    }
                    _ => collect_progs(inner, hook, found),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| collect_progs(v, hook, found)),
        _ => {}
    }
}

/// The ids of the programs the instance runs: those its loader holds open (programs and
/// links both show a `prog_id` in fdinfo) and those its pinned links run.
fn our_program_ids(instance: &RunningInstance) -> HashSet<u32> {
    let mut ids = HashSet::new();
    if instance.loader_running {
        let fdinfo = Path::new("/proc")
            .join(instance.info.pid.to_string())
            .join("fdinfo");
        for entry in fs::read_dir(fdinfo).into_iter().flatten().flatten() {
            let Ok(text) = fs::read_to_string(entry.path()) else {
                continue;
            };
            ids.extend(text.lines().filter_map(|line| {
                line.strip_prefix("prog_id:")
                    .and_then(|id| id.trim().parse::<u32>().ok())
            }));
        }
    }
    let links = instance
        .info
        .pin_dir_from_here(instance.loader_running)
        .join(paths::LINKS_DIR);
    for entry in fs::read_dir(links).into_iter().flatten().flatten() {
        // Opening a pin only reads it: dropping the handle neither unpins nor detaches.
        if let Ok(link) = PinnedLink::from_pin(entry.path()) {
            if let Ok(info) = FdLink::from(link).info() {
                ids.insert(info.program_id());
            }
        }
    }
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_xdp_programs_in_ip_json_single_and_multi() {
        let one = serde_json::json!({"mode": 2, "prog": {"id": 7, "name": "xdp_foo", "tag": "ab"}});
        let multi = serde_json::json!({"mode": 4, "attached": [
            {"mode": 1, "prog": {"id": 8, "name": "redirector_xdp_"}},
            {"mode": 2, "prog": {"id": 9, "name": "other"}}]});
        let mut found = Vec::new();
        collect_progs(&one, "XDP", &mut found);
        collect_progs(&multi, "XDP", &mut found);
        let ids: Vec<u32> = found.iter().map(|p| p.id).collect();
        assert_eq!(ids, [7, 8, 9]);
        assert_eq!(found[0].name, "xdp_foo");
    }

    #[test]
    fn only_programs_that_are_not_the_instances_are_reported() {
        let foreign = Attached {
            hook: "XDP",
            id: 7,
            name: "xdp_foo".into(),
        };
        let ours: HashSet<u32> = [8].into();
        assert_eq!(
            judge("eth0", &foreign, Some(&ours)).unwrap().status,
            Status::Fail
        );
        let mine = Attached {
            hook: "tcx ingress",
            id: 8,
            name: "redirector_tc_i".into(),
        };
        assert!(judge("eth0", &mine, Some(&ours)).is_none());
        assert_eq!(judge("eth0", &mine, None).unwrap().status, Status::Warn);
        let tcx = Attached {
            hook: "tcx egress",
            ..foreign
        };
        assert_eq!(
            judge("eth0", &tcx, Some(&ours)).unwrap().status,
            Status::Warn
        );
    }
}
