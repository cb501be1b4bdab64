//! dist/redirector.service read the way systemd reads the parts the tests apply: its
//! `[Service]` directives, the ExecStart, the capability set, the effective system-call
//! filter (groups expanded by `systemd-analyze syscall-filter`) and the `unit-sandbox`
//! arguments that emulate its sandbox without systemd as PID 1.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

/// The `[Service]` directives of the shipped unit, in file order.
pub struct Unit {
    entries: Vec<(String, String)>,
}

impl Unit {
    /// The unit file of the repository.
    pub fn path() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dist/redirector.service")
    }

    /// Reads the shipped unit; panics if it cannot.
    pub fn shipped() -> Self {
        let path = Self::path();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        Self::parse(&text)
    }

    /// The `Key=value` lines of the `[Service]` section of `text`.
    pub fn parse(text: &str) -> Self {
        let mut section = "";
        let mut entries = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
                continue;
            }
            if line.starts_with('[') {
                section = line;
                continue;
            }
            if section != "[Service]" {
                continue;
            }
            if let Some((key, value)) = line.split_once('=') {
                entries.push((key.trim().to_string(), value.trim().to_string()));
            }
        }
        Self { entries }
    }

    /// Every key of the `[Service]` section (a key given twice is listed twice).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(key, _)| key.as_str())
    }

    /// The values of every `key=` line, in file order.
    pub fn values(&self, key: &str) -> Vec<&str> {
        self.entries
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// The value of the last `key=` line (the one systemd uses for a single-valued key).
    pub fn value(&self, key: &str) -> Option<&str> {
        self.values(key).last().copied()
    }

    /// Whether boolean `key` is set to yes.
    pub fn enabled(&self, key: &str) -> bool {
        matches!(self.value(key), Some("yes" | "true" | "on" | "1"))
    }

    /// ExecStart split into words (the unit uses no quoting).
    pub fn exec_start(&self) -> Vec<String> {
        let line = self.value("ExecStart").expect("no ExecStart= in the unit");
        line.split_whitespace().map(str::to_string).collect()
    }

    /// The capability names (`CAP_BPF` …) of the `CapabilityBoundingSet=` lines.
    pub fn bounding_set(&self) -> Vec<String> {
        let caps: Vec<String> = self
            .values("CapabilityBoundingSet")
            .iter()
            .flat_map(|v| v.split_whitespace().map(str::to_string))
            .collect();
        assert!(!caps.is_empty(), "no CapabilityBoundingSet= in the unit");
        caps
    }

    /// The capability mask (`CapBnd`, `CapEff` of /proc/PID/status) of the bounding set.
    pub fn bounding_mask(&self) -> u64 {
        self.bounding_set().iter().map(|c| 1 << cap_number(c)).sum()
    }

    /// `setpriv` options giving a process started as root exactly the unit's bounding set
    /// (so its effective set is that set, as under systemd) and, with
    /// `NoNewPrivileges=yes`, `no_new_privs`.
    pub fn setpriv_args(&self) -> Vec<String> {
        let caps: Vec<String> = self
            .bounding_set()
            .iter()
            .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
            .collect();
        let mut args = vec![
            "--bounding-set".to_string(),
            format!("-all,{}", caps.join(",")),
            "--inh-caps=-all".to_string(),
        ];
        if self.enabled("NoNewPrivileges") {
            args.push("--no-new-privs".to_string());
        }
        args
    }

    /// The system calls the `SystemCallFilter=` lines allow, with systemd's semantics: the
    /// first line is an allow-list (to which systemd adds `@default`), a later plain line
    /// adds to it and a later `~` line removes from it, whatever an earlier line listed.
    /// `group` returns the direct members of a group (`@name` entries for nested groups).
    pub fn syscall_allow_list(
        &self,
        mut group: impl FnMut(&str) -> Vec<String>,
    ) -> BTreeSet<String> {
        let lines = self.values("SystemCallFilter");
        assert!(
            lines.first().is_some_and(|l| !l.starts_with('~')),
            "the unit's first SystemCallFilter= line must be an allow-list: {lines:?}"
        );
        let mut allowed = expand("@default", &mut group);
        for line in lines {
            let (deny, names) = match line.strip_prefix('~') {
                Some(rest) => (true, rest),
                None => (false, line),
            };
            for name in names.split_whitespace() {
                let calls = expand(name, &mut group);
                if deny {
                    allowed.retain(|call| !calls.contains(call));
                } else {
                    allowed.extend(calls);
                }
            }
        }
        allowed
    }

    /// The address family numbers `RestrictAddressFamilies=` allows.
    pub fn address_families(&self) -> Vec<u32> {
        let value = self
            .value("RestrictAddressFamilies")
            .expect("no RestrictAddressFamilies= in the unit");
        assert!(!value.starts_with('~'), "a deny-list of families: {value}");
        value
            .split_whitespace()
            .map(|name| match name {
                "AF_UNIX" => 1,
                "AF_INET" => 2,
                "AF_INET6" => 10,
                "AF_NETLINK" => 16,
                "AF_PACKET" => 17,
                other => panic!("address family {other} not known to this test"),
            })
            .collect()
    }
}

/// Capability number of `CAP_NAME` (the ones a loader unit may list).
pub fn cap_number(name: &str) -> u32 {
    match name {
        "CAP_SETGID" => 6,
        "CAP_SETUID" => 7,
        "CAP_SETPCAP" => 8,
        "CAP_NET_BIND_SERVICE" => 10,
        "CAP_NET_ADMIN" => 12,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYS_RESOURCE" => 24,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("capability {other} not known to this test"),
    }
}

/// `name` (a system call, or an `@group` expanded recursively) as a set of system calls.
fn expand(name: &str, group: &mut impl FnMut(&str) -> Vec<String>) -> BTreeSet<String> {
    if !name.starts_with('@') {
        return BTreeSet::from([name.to_string()]);
    }
    group(name)
        .iter()
        .flat_map(|member| expand(member, group))
        .collect()
}

/// The direct members of system-call group `name` (`@system-service`) as
/// `systemd-analyze syscall-filter` lists them: system calls, and `@group` entries for
/// nested groups.
pub fn systemd_syscall_group(name: &str) -> Vec<String> {
    let out = Command::new("systemd-analyze")
        .args(["syscall-filter", "--no-pager", name])
        .output()
        .expect("running systemd-analyze (installed by `cargo xtask setup`)");
    assert!(
        out.status.success(),
        "systemd-analyze syscall-filter {name}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let members: Vec<String> = text
        .lines()
        .skip(1) // the group's own name
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    assert!(!members.is_empty(), "no members in group {name}:\n{text}");
    members
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups(name: &str) -> Vec<String> {
        let members: &[&str] = match name {
            "@default" => &["read", "exit"],
            "@system-service" => &["@default", "@process", "socket"],
            "@process" => &["clone", "execve"],
            "@debug" => &["perf_event_open", "ptrace"],
            other => panic!("no group {other}"),
        };
        members.iter().map(|m| m.to_string()).collect()
    }

    #[test]
    fn a_later_deny_line_removes_what_the_allow_line_listed() {
        let unit = Unit::parse(
            "[Unit]\nSystemCallFilter=ignored\n[Service]\n\
             SystemCallFilter=@system-service bpf perf_event_open\n\
             SystemCallFilter=~@debug execve\n",
        );
        let allowed: Vec<String> = unit.syscall_allow_list(groups).into_iter().collect();
        assert_eq!(allowed, ["bpf", "clone", "exit", "read", "socket"]);
    }

    #[test]
    fn default_is_added_to_an_allow_list() {
        let unit = Unit::parse("[Service]\nSystemCallFilter=bpf\n");
        let allowed: Vec<String> = unit.syscall_allow_list(groups).into_iter().collect();
        assert_eq!(allowed, ["bpf", "exit", "read"]);
    }

    #[test]
    fn setpriv_args_follow_the_bounding_set() {
        let unit = Unit::parse(
            "[Service]\nCapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN\nNoNewPrivileges=yes\n",
        );
        assert_eq!(
            unit.setpriv_args(),
            [
                "--bounding-set",
                "-all,+bpf,+net_admin",
                "--inh-caps=-all",
                "--no-new-privs"
            ]
        );
    }
}
