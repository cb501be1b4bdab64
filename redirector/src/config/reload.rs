//! `systemctl reload redirector` (SIGHUP): the settings a loader runs with compared with
//! the settings read again, as the [`ReloadPlan`] of what to change while it runs — or a
//! refusal ([`ReloadError`]) naming what cannot change without a restart.
//!
//! Only what differs between the two is changed, so a change made at runtime by a control
//! command (`redirector disable 443`) stays unless the file changes that same setting.

use std::{fmt, net::SocketAddr};

use super::{ConfigError, RulesSettingError, RunSettings};
use crate::{
    instance::info::TimeoutsInfo, packet_mark::PacketMark, rules::RedirectRule,
    source_filter::SourcePrefix,
};

/// The settings read again cannot be applied; nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file cannot be read, or a key or value in it is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Settings that only a restart can change differ (named as in the file).
    #[error(
        "{} cannot change while the loader runs (restart it to apply: `systemctl restart \
         redirector`; with `persist = true` the new loader adopts every connection)",
        .0.iter().map(|key| format!("`{key}`")).collect::<Vec<_>>().join(", ")
    )]
    Fixed(Vec<&'static str>),
    /// A bad rule set, or a disabled port without a rule.
    #[error(transparent)]
    Rules(#[from] RulesSettingError),
    /// A rule would take the sniffing proxy's port away from it.
    #[error("`redirects`: port {0} is the sniffing proxy's (`sniff.listen`); the kernel would move its connections away")]
    SniffPort(u16),
}

/// What a reload changes in the running loader; `None` (or empty): unchanged.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReloadPlan {
    /// Rules to remove, by FROM port (their tracked connections keep working).
    pub remove: Vec<u16>,
    /// Rules to add, enabled (a changed TO port: removed, then added).
    pub add: Vec<RedirectRule>,
    /// FROM ports whose rule stops redirecting new connections.
    pub disable: Vec<u16>,
    /// FROM ports whose rule redirects new connections again.
    pub enable: Vec<u16>,
    /// The new allow list (empty: every source).
    pub allow: Option<Vec<SourcePrefix>>,
    /// The new conntrack timeouts (in seconds; [`RunSettings::timeouts`] of the new
    /// settings has them as the reaper takes them).
    pub timeouts: Option<TimeoutsInfo>,
    /// The new packet mark (`Some(None)`: no mark any more).
    pub mark: Option<Option<PacketMark>>,
    /// The new metrics address (`Some(None)`: no metrics server any more).
    pub metrics: Option<Option<SocketAddr>>,
}

/// The settings only a restart changes, by their key in the file, if `old` and `new`
/// differ in them.
fn fixed_changes(old: &RunSettings, new: &RunSettings) -> Vec<&'static str> {
    let mut keys = Vec::new();
    if old.ifaces != new.ifaces {
        keys.push("ifaces");
    }
    if old.mode() != new.mode() {
        keys.push("mode");
    }
    if old.conntrack_size() != new.conntrack_size() {
        keys.push("conntrack_size");
    }
    if old.persist() != new.persist() {
        keys.push("persist");
    }
    if old.local != new.local {
        keys.push("local_cgroup/local");
    }
    if old.sniff != new.sniff {
        keys.push("[sniff]");
    }
    keys
}

impl ReloadPlan {
    /// What changes from the running `old` settings to `new` (flags already merged over
    /// the file in both); refused if `new` is invalid or differs in a setting that cannot
    /// change at runtime.
    pub fn between(old: &RunSettings, new: &RunSettings) -> Result<Self, ReloadError> {
        let fixed = fixed_changes(old, new);
        if !fixed.is_empty() {
            return Err(ReloadError::Fixed(fixed));
        }
        new.check_rules()?;
        if let Some(listen) = &new.sniff.listen {
            if new.rules().iter().any(|r| r.from_port == listen.port()) {
                return Err(ReloadError::SniffPort(listen.port()));
            }
        }
        let (old_rules, new_rules) = (old.rules(), new.rules());
        let to_of = |rules: &[RedirectRule], port: u16| {
            rules
                .iter()
                .find(|r| r.from_port == port)
                .map(|r| r.to_port)
        };
        let mut plan = ReloadPlan::default();
        for rule in &old_rules {
            if to_of(&new_rules, rule.from_port) != Some(rule.to_port) {
                plan.remove.push(rule.from_port);
            }
        }
        for rule in &new_rules {
            let added = to_of(&old_rules, rule.from_port) != Some(rule.to_port);
            if added {
                plan.add.push(*rule);
            }
            let (was, is) = (
                old.disabled.contains(&rule.from_port),
                new.disabled.contains(&rule.from_port),
            );
            if is && (added || !was) {
                plan.disable.push(rule.from_port);
            } else if !is && was && !added {
                plan.enable.push(rule.from_port);
            }
        }
        if old.allow != new.allow {
            plan.allow = Some(new.allow.clone());
        }
        let (old_t, new_t) = (
            TimeoutsInfo::from(&old.timeouts()),
            TimeoutsInfo::from(&new.timeouts()),
        );
        if old_t != new_t {
            plan.timeouts = Some(new_t);
        }
        if old.mark != new.mark {
            plan.mark = Some(new.mark);
        }
        if old.metrics != new.metrics {
            plan.metrics = Some(new.metrics);
        }
        Ok(plan)
    }

    /// Nothing to change.
    pub fn is_empty(&self) -> bool {
        *self == ReloadPlan::default()
    }
}

/// One line per change, e.g. `rule 9000->8080 added, port 443 disabled, timeouts …`.
impl fmt::Display for ReloadPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("nothing changed");
        }
        let mut parts: Vec<String> = Vec::new();
        for port in &self.remove {
            if !self.add.iter().any(|r| r.from_port == *port) {
                parts.push(format!("rule for port {port} removed"));
            }
        }
        for rule in &self.add {
            parts.push(match self.remove.contains(&rule.from_port) {
                true => format!("rule {rule} replaced"),
                false => format!("rule {rule} added"),
            });
        }
        parts.extend(self.disable.iter().map(|p| format!("port {p} disabled")));
        parts.extend(self.enable.iter().map(|p| format!("port {p} enabled")));
        if let Some(allow) = &self.allow {
            parts.push(match allow.is_empty() {
                true => "sources: all".to_string(),
                false => format!(
                    "sources: {}",
                    allow
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            });
        }
        if let Some(t) = &self.timeouts {
            parts.push(format!(
                "timeouts: handshake {}s established {}s fin-wait {}s closing {}s",
                t.handshake_secs, t.established_secs, t.fin_wait_secs, t.closing_secs
            ));
        }
        match &self.mark {
            Some(Some(mark)) => parts.push(format!("mark {mark}")),
            Some(None) => parts.push("mark off".to_string()),
            None => {}
        }
        match &self.metrics {
            Some(Some(addr)) => parts.push(format!("metrics http://{addr}/metrics")),
            Some(None) => parts.push("metrics off".to_string()),
            None => {}
        }
        f.write_str(&parts.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn settings(text: &str) -> RunSettings {
        RunSettings::parse(text, Path::new("reload.toml")).unwrap()
    }

    fn plan(old: &str, new: &str) -> Result<ReloadPlan, ReloadError> {
        ReloadPlan::between(&settings(old), &settings(new))
    }

    #[test]
    fn the_same_settings_change_nothing() {
        let text = "ifaces = [\"eth0\"]\nredirects = [\"80:8080\"]\n[timeouts]\nclosing = 5";
        let plan = plan(text, text).unwrap();
        assert!(plan.is_empty());
        assert_eq!(plan.to_string(), "nothing changed");
        // Defaults written out are the defaults.
        assert!(super::ReloadPlan::between(
            &settings(""),
            &settings("redirects = [\"80:8080\", \"443:8443\"]\nmode = \"auto\"")
        )
        .unwrap()
        .is_empty());
    }

    #[test]
    fn rules_are_added_removed_and_replaced() {
        let plan = plan(
            "redirects = [\"80:8080\", \"443:8443\", \"22:2222\"]",
            "redirects = [\"80:8080\", \"443:9443\", \"9000:8080\"]",
        )
        .unwrap();
        assert_eq!(plan.remove, [443, 22]);
        assert_eq!(
            plan.add,
            ["443:9443".parse().unwrap(), "9000:8080".parse().unwrap()]
        );
        assert_eq!(
            plan.to_string(),
            "rule for port 22 removed, rule 443->9443 replaced, rule 9000->8080 added"
        );
    }

    #[test]
    fn disabled_ports_follow_the_file() {
        let plan = plan("disabled = [443]", "disabled = [80]").unwrap();
        assert_eq!((plan.disable, plan.enable), (vec![80], vec![443]));
        // A new rule listed disabled is added, then disabled.
        let plan = plan_ok(
            "",
            "redirects = [\"80:8080\", \"9000:9090\"]\ndisabled = [9000]",
        );
        assert_eq!(plan.add, ["9000:9090".parse().unwrap()]);
        assert_eq!(plan.disable, [9000]);
        assert_eq!(plan.remove, [443]);
    }

    fn plan_ok(old: &str, new: &str) -> ReloadPlan {
        plan(old, new).unwrap()
    }

    #[test]
    fn allow_timeouts_mark_and_metrics_are_applied() {
        let plan = plan_ok(
            "allow = [\"10.0.0.0/8\"]",
            "metrics = \"127.0.0.1:9464\"\nmark = \"0x42/0xff\"\n[timeouts]\nestablished = 60",
        );
        assert_eq!(plan.allow, Some(vec![]));
        assert_eq!(plan.timeouts.unwrap().established_secs, 60);
        assert_eq!(plan.mark.unwrap().unwrap().to_string(), "0x42/0xff");
        assert_eq!(plan.metrics, Some(Some("127.0.0.1:9464".parse().unwrap())));
        assert_eq!(
            plan.to_string(),
            "sources: all, timeouts: handshake 60s established 60s fin-wait 120s closing 10s, \
             mark 0x42/0xff, metrics http://127.0.0.1:9464/metrics"
        );
        let off = plan_ok("metrics = \"127.0.0.1:9464\"\nmark = \"0x1\"", "");
        assert_eq!((off.mark, off.metrics), (Some(None), Some(None)));
    }

    #[test]
    fn interfaces_mode_and_the_other_fixed_settings_are_refused_by_name() {
        let e = plan(
            "ifaces = [\"eth0\"]\nmode = \"tc\"",
            "ifaces = [\"eth1\"]\nmode = \"xdp\"\nconntrack_size = 1024\npersist = true\n\
             local = false\n[sniff]\nlisten = \"0.0.0.0:81\"",
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "`ifaces`, `mode`, `conntrack_size`, `persist`, `local_cgroup/local`, `[sniff]` \
             cannot change while the loader runs (restart it to apply: `systemctl restart \
             redirector`; with `persist = true` the new loader adopts every connection)"
        );
    }

    #[test]
    fn invalid_rules_are_refused() {
        let e = plan("", "redirects = [\"80:8080\", \"80:9090\"]").unwrap_err();
        assert!(e.to_string().contains("duplicate rule for port 80"), "{e}");
        let e = plan("", "disabled = [22]").unwrap_err();
        assert!(e.to_string().contains("port 22 has no rule"), "{e}");
        let sniff = "[sniff]\nlisten = \"0.0.0.0:80\"\nwebsocket = \"127.0.0.1:8080\"\n\
                     http = \"127.0.0.1:8000\"";
        let old = format!("redirects = [\"443:8443\"]\n{sniff}");
        let new = format!("redirects = [\"80:8080\"]\n{sniff}");
        let e = plan(&old, &new).unwrap_err();
        assert!(matches!(e, ReloadError::SniffPort(80)), "{e}");
    }
}
