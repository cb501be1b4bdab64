//! Applying one configuration in the server namespace (rules, proxies, the redirector) and
//! removing it again when the returned guard is dropped.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result};

use super::plan::Config;
use super::servers::{nginx_conf, start_nginx, wait_listening};
use super::testbed::Testbed;
use testkit::cmd::Cmd;
use testkit::netns::Netns;
use testkit::process::Proc;

const LOADER_READY_TIMEOUT: Duration = Duration::from_secs(30);
/// nginx's stream module (TCP passthrough for 443), a dynamic module on Debian.
const NGINX_STREAM_MODULE: &str = "/usr/lib/nginx/modules/ngx_stream_module.so";
/// Name of the nftables table the benchmark adds (and deletes).
const NFT_TABLE: &str = "rdr_bench";
/// Debian's `iptables`: the nf_tables backend.
const IPTABLES: &str = "iptables-nft";
/// HAProxy's `maxconn` and the sniffing proxy's `--max-conns` when idle-capacity needs
/// fewer (the throughput loads open at most a few hundred at once).
const HAPROXY_MAXCONN: u32 = 8000;
const SNIFF_MAX_CONNS: u32 = 16384;
/// nginx's `worker_connections` when idle-capacity needs fewer.
const NGINX_WORKER_CONNECTIONS: u32 = 16384;

/// Tools and files every configuration needs, found once per benchmark.
pub struct Tools {
    pub redirector: PathBuf,
    /// For the pass-through baselines (`kernel-bench --attach-pass`).
    pub kernel_bench: PathBuf,
    pub work_dir: PathBuf,
    /// Connections the proxies must accept at once (idle-capacity's N).
    pub max_conns: u32,
    /// The hard open-file limit the proxies inherit (nginx's `worker_rlimit_nofile`).
    pub nofile_hard: u64,
}

/// What a configuration left running or installed; undone on drop.
pub struct Applied {
    processes: Vec<Proc>,
    rules: Option<Undo>,
}

/// Commands that remove rules again (run in order, errors reported, not fatal).
struct Undo(Vec<Cmd>);

impl Applied {
    /// The processes this configuration started (none for rules-only configurations).
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(Proc::id).collect()
    }

    /// Stops the processes and removes the rules; fails if the server namespace still has
    /// nftables rules afterwards (they would tax every later configuration).
    pub fn remove(mut self, ns: &Netns) -> Result<()> {
        self.undo();
        let left = ns.exec("nft").args(["list", "ruleset"]).run_captured()?;
        if !left.trim().is_empty() {
            anyhow::bail!("rules left in {} after removal:\n{left}", ns.name());
        }
        Ok(())
    }

    fn undo(&mut self) {
        // Processes first: a stopping proxy must not find its rules gone under it.
        self.processes.clear();
        if let Some(Undo(commands)) = self.rules.take() {
            for command in commands {
                let shown = command.to_string();
                if let Err(err) = command.run_captured() {
                    eprintln!("  warning: `{shown}` failed: {err:#}");
                }
            }
        }
    }
}

impl Drop for Applied {
    fn drop(&mut self) {
        self.undo();
    }
}

/// Applies `config`; returns once it carries traffic.
pub fn apply(config: Config, testbed: &Testbed, tools: &Tools) -> Result<Applied> {
    let ns = &testbed.topology.server;
    let ip = testbed.server_ip();
    let mut applied = Applied {
        processes: Vec::new(),
        rules: None,
    };
    match config {
        Config::Direct => {}
        Config::PassXdp | Config::PassTc => {
            let hook = if config == Config::PassXdp {
                "xdp"
            } else {
                "tc"
            };
            let mut baseline = Proc::background(
                "pass-through",
                ns.enter_net_only(&tools.kernel_bench).args([
                    "--attach-pass",
                    testbed.server_if(),
                    "--hook",
                    hook,
                ]),
            )?;
            baseline.wait_for_stdout("`pass-through attached`", LOADER_READY_TIMEOUT, |line| {
                line.starts_with("pass-through attached")
            })?;
            applied.processes.push(baseline);
        }
        Config::Iptables => applied.rules = Some(iptables(ns, ip)?),
        Config::Nftables => applied.rules = Some(nftables(ns, ip, &tools.work_dir)?),
        Config::HaproxyTcp | Config::HaproxyHttp => {
            let http = config == Config::HaproxyHttp;
            let maxconn = tools.max_conns.max(HAPROXY_MAXCONN);
            let conf = haproxy_conf(ip, http, maxconn);
            let conf = write(&tools.work_dir, "haproxy.cfg", &conf)?;
            let mut haproxy =
                Proc::background("haproxy", ns.exec("haproxy").args(["-db", "-f"]).arg(conf))?;
            wait_listening(ns, 80, &mut haproxy)?;
            wait_listening(ns, 443, &mut haproxy)?;
            applied.processes.push(haproxy);
        }
        Config::Nginx => {
            let stream = Path::new(NGINX_STREAM_MODULE).exists();
            let conf = nginx_proxy_conf(ip, &tools.work_dir, stream, tools);
            let conf = write(&tools.work_dir, "nginx-proxy.conf", &conf)?;
            applied
                .processes
                .push(start_nginx(ns, "nginx-proxy", &conf, 80)?);
        }
        Config::RedirectorXdp
        | Config::RedirectorXdpGeneric
        | Config::RedirectorTc
        | Config::RedirectorSocket => {
            let mode = match config {
                Config::RedirectorXdp => "xdp",
                Config::RedirectorXdpGeneric => "xdp-generic",
                Config::RedirectorSocket => "socket",
                _ => "tc",
            };
            // nsenter, not `ip netns exec`: the loader pins under the host's /sys/fs/bpf.
            let mut loader = Proc::background(
                "redirector",
                // --no-local: no cgroup programs (they would go on the host's root
                // cgroup); the benchmark measures the interface path.
                ns.enter_net_only(&tools.redirector).args([
                    "run",
                    "--no-local",
                    "--iface",
                    testbed.server_if(),
                    "--mode",
                    mode,
                ]),
            )?;
            loader.wait_for_stdout("`redirector ready`", LOADER_READY_TIMEOUT, |line| {
                line.starts_with("redirector ready")
            })?;
            applied.processes.push(loader);
        }
        Config::RedirectorSniff => {
            let mut sniff = Proc::background(
                "redirector-sniff",
                ns.exec(&tools.redirector)
                    .arg("sniff")
                    .args(["--listen", &format!("{ip}:80")])
                    .args(["--websocket", &format!("{ip}:8080")])
                    .args(["--http", &format!("{ip}:8080")])
                    .args(["--tls-listen", &format!("{ip}:443")])
                    .args(["--tls-websocket", &format!("{ip}:8443")])
                    .args(["--tls-http", &format!("{ip}:8443")])
                    .args([
                        "--max-conns",
                        &tools.max_conns.max(SNIFF_MAX_CONNS).to_string(),
                    ]),
            )?;
            sniff.wait_for_stdout("`redirector sniff ready`", LOADER_READY_TIMEOUT, |line| {
                line.starts_with("redirector sniff ready")
            })?;
            wait_listening(ns, 443, &mut sniff)?;
            applied.processes.push(sniff);
        }
    }
    Ok(applied)
}

fn write(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    fs::write(&path, text).with_context(|| format!("could not write {}", path.display()))?;
    Ok(path)
}

/// `-j REDIRECT` for 80 and 443 to this address, with `iptables` as Debian ships it (the
/// nf_tables backend, `iptables-nft`).
///
/// The undo deletes the whole `nat` table, not just the rules: while any NAT hook is
/// registered the namespace runs netfilter conntrack for every packet, which would tax
/// every configuration measured after this one (and fill the conntrack table with the
/// connection-rate loads' TIME_WAIT entries until SYNs are dropped). The legacy xtables
/// `nat` table cannot be unregistered once created, which is why it is not used.
fn iptables(ns: &Netns, ip: &str) -> Result<Undo> {
    let rule = |from: &str, to: &str| {
        ns.exec(IPTABLES)
            .args(["-t", "nat", "-A", "PREROUTING", "-p", "tcp", "-d", ip])
            .args(["--dport", from, "-j", "REDIRECT", "--to-ports", to])
    };
    let undo = Undo(vec![ns.exec("nft").args(["delete", "table", "ip", "nat"])]);
    rule("80", "8080").run_captured()?;
    rule("443", "8443").run_captured()?;
    Ok(undo)
}

fn nftables(ns: &Netns, ip: &str, work_dir: &Path) -> Result<Undo> {
    let rules = format!(
        "table ip {NFT_TABLE} {{\n\
         \x20 chain prerouting {{\n\
         \x20   type nat hook prerouting priority dstnat; policy accept;\n\
         \x20   ip daddr {ip} tcp dport 80 redirect to :8080\n\
         \x20   ip daddr {ip} tcp dport 443 redirect to :8443\n\
         \x20 }}\n\
         }}\n"
    );
    let file = write(work_dir, "rules.nft", &rules)?;
    ns.exec("nft").arg("-f").arg(file).run_captured()?;
    Ok(Undo(vec![ns
        .exec("nft")
        .args(["delete", "table", "ip", NFT_TABLE])]))
}

/// HAProxy on 80 (tcp, or http routing `Upgrade: websocket` to its own backend as the PaaS
/// seed configurations do) and 443 (tcp passthrough: TLS stays end to end), accepting
/// `maxconn` connections at once (HAProxy sizes its descriptors from it: 2 per connection).
fn haproxy_conf(ip: &str, http: bool, maxconn: u32) -> String {
    let front = if http {
        "  mode http\n\
         \x20 option http-keep-alive\n\
         \x20 acl is_websocket hdr(Upgrade) -i WebSocket\n\
         \x20 use_backend websocket if is_websocket\n"
    } else {
        "  mode tcp\n"
    };
    let mode = if http { "http" } else { "tcp" };
    format!(
        "global\n\
         \x20 maxconn {maxconn}\n\
         defaults\n\
         \x20 timeout connect 5s\n\
         \x20 timeout client 60s\n\
         \x20 timeout server 60s\n\
         \x20 timeout tunnel 1h\n\
         frontend plain\n\
         \x20 bind {ip}:80\n\
         {front}\
         \x20 default_backend web\n\
         backend web\n\
         \x20 mode {mode}\n\
         \x20 server s1 {ip}:8080\n\
         backend websocket\n\
         \x20 mode {mode}\n\
         \x20 server s1 {ip}:8080\n\
         frontend tls\n\
         \x20 bind {ip}:443\n\
         \x20 mode tcp\n\
         \x20 default_backend tls\n\
         backend tls\n\
         \x20 mode tcp\n\
         \x20 server s1 {ip}:8443\n"
    )
}

/// nginx as the PaaS guides set it up: `proxy_pass` with HTTP/1.1 and the Upgrade/Connection
/// headers, upstream keep-alive for plain requests; 443 through the stream module. Each
/// worker may hold every connection of idle-capacity on both sides (2 per connection), in
/// case one worker accepts them all.
fn nginx_proxy_conf(ip: &str, work_dir: &Path, stream: bool, tools: &Tools) -> String {
    let (load_stream, stream_block) = if stream {
        (
            format!("load_module {NGINX_STREAM_MODULE};\n"),
            format!(
                "stream {{\n\
                 \x20 server {{ listen {ip}:443 backlog=4096; proxy_pass {ip}:8443; }}\n\
                 }}\n"
            ),
        )
    } else {
        (String::new(), String::new())
    };
    let http = format!(
        "\x20 map $http_upgrade $connection_upgrade {{ default upgrade; '' ''; }}\n\
         \x20 upstream backend {{ server {ip}:8080; keepalive 64; keepalive_requests 10000000; }}\n\
         \x20 server {{\n\
         \x20   listen {ip}:80 backlog=4096;\n\
         \x20   location / {{\n\
         \x20     proxy_pass http://backend;\n\
         \x20     proxy_http_version 1.1;\n\
         \x20     proxy_set_header Upgrade $http_upgrade;\n\
         \x20     proxy_set_header Connection $connection_upgrade;\n\
         \x20     proxy_set_header Host $host;\n\
         \x20     proxy_read_timeout 3600s;\n\
         \x20   }}\n\
         \x20 }}\n"
    );
    format!(
        "{load_stream}{}{stream_block}",
        nginx_conf(
            work_dir,
            "nginx-proxy",
            (2 * tools.max_conns + 64).max(NGINX_WORKER_CONNECTIONS),
            tools.nofile_hard,
            &http
        )
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_http_mode_routes_websocket_upgrades() {
        let conf = haproxy_conf("10.0.0.2", true, 9900);
        assert!(conf.contains("acl is_websocket hdr(Upgrade) -i WebSocket"));
        assert!(conf.contains("bind 10.0.0.2:443\n  mode tcp"));
        assert!(conf.contains("global\n  maxconn 9900\n"));
        assert!(!haproxy_conf("10.0.0.2", false, 8000).contains("mode http"));
    }

    #[test]
    fn nginx_passes_upgrade_headers() {
        let tools = Tools {
            redirector: PathBuf::new(),
            kernel_bench: PathBuf::new(),
            work_dir: PathBuf::from("/w"),
            max_conns: 9900,
            nofile_hard: 20000,
        };
        let conf = nginx_proxy_conf("10.0.0.2", Path::new("/w"), true, &tools);
        assert!(conf.starts_with("load_module"));
        assert!(conf.contains("proxy_set_header Upgrade $http_upgrade;"));
        assert!(conf.contains("proxy_pass 10.0.0.2:8443;"));
        assert!(!nginx_proxy_conf("10.0.0.2", Path::new("/w"), false, &tools).contains("stream {"));
        assert!(conf.contains("worker_rlimit_nofile 20000;\n"), "{conf}");
        assert!(conf.contains("worker_connections 19864;"), "{conf}");
        assert!(conf.contains("pid /w/nginx-proxy.pid;\nerror_log /w/nginx-proxy.error.log warn;"));
        assert!(conf.contains("http {\n  access_log off;\n  keepalive_requests 10000000;\n  map "));
        assert!(conf.ends_with("  }\n}\nstream {\n  server { listen 10.0.0.2:443 backlog=4096; proxy_pass 10.0.0.2:8443; }\n}\n"), "{conf}");
    }
}
