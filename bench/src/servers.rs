//! The servers on 8080/8443 in the server namespace, one set per phase: nginx with a static
//! page, ws-echo (ws and wss), or iperf3. Dropping the returned processes stops them.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};

use super::plan::Phase;
use super::testbed::Testbed;
use testkit::netns::Netns;
use testkit::process::Proc;

const READY_TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(50);
/// Size of the static page nginx serves (a typical small HTML document).
const PAGE_BYTES: usize = 1024;

/// Starts the servers of `phase`.
pub fn start(
    phase: Phase,
    testbed: &Testbed,
    work_dir: &Path,
    ws_echo: &Path,
) -> Result<Vec<Proc>> {
    let ns = &testbed.topology.server;
    let ip = testbed.server_ip();
    match phase {
        Phase::Http => Ok(vec![start_nginx_static(ns, ip, work_dir)?]),
        Phase::WebSocket => Ok(vec![start_ws_echo(ns, ip, ws_echo)?]),
        Phase::Bulk => {
            let mut iperf = Proc::background(
                "iperf3",
                ns.exec("iperf3")
                    .args(["--server", "--bind", ip, "--port", "8080"])
                    // Its per-second reports would drown the progress lines.
                    .arg("--logfile")
                    .arg(work_dir.join("iperf3.log")),
            )?;
            wait_listening(ns, 8080, &mut iperf)?;
            Ok(vec![iperf])
        }
    }
}

fn start_nginx_static(ns: &Netns, ip: &str, work_dir: &Path) -> Result<Proc> {
    let root = work_dir.join("www");
    fs::create_dir_all(&root)?;
    fs::write(root.join("index.html"), static_page())?;
    let conf = work_dir.join("nginx-static.conf");
    let server = format!(
        "\x20 server {{\n\
         \x20   listen {ip}:8080 backlog=4096;\n\
         \x20   root {root};\n\
         \x20 }}\n",
        root = root.display(),
    );
    fs::write(
        &conf,
        nginx_conf(work_dir, "nginx-static", 8192, 0, &server),
    )?;
    start_nginx(ns, "nginx-static", &conf, 8080)
}

/// The main context every nginx of the bench runs with: pid file and error log named after
/// `label` in `work_dir`, `worker_connections`, the workers' open-file limit
/// (`worker_rlimit_nofile`, left to the inherited one when 0), and an `http` block (no
/// access log, no cap on keep-alive requests) around `http_body`.
pub fn nginx_conf(
    work_dir: &Path,
    label: &str,
    worker_connections: u32,
    rlimit_nofile: u64,
    http_body: &str,
) -> String {
    let rlimit = if rlimit_nofile > 0 {
        format!("worker_rlimit_nofile {rlimit_nofile};\n")
    } else {
        String::new()
    };
    format!(
        "worker_processes auto;\n\
         {rlimit}\
         pid {dir}/{label}.pid;\n\
         error_log {dir}/{label}.error.log warn;\n\
         events {{ worker_connections {worker_connections}; }}\n\
         http {{\n\
         \x20 access_log off;\n\
         \x20 keepalive_requests 10000000;\n\
         {http_body}\
         }}\n",
        dir = work_dir.display(),
    )
}

/// Runs nginx with `conf` in the foreground in `ns`; returns once it listens on `port`.
pub fn start_nginx(ns: &Netns, label: &'static str, conf: &Path, port: u16) -> Result<Proc> {
    let mut nginx = Proc::background(
        label,
        ns.exec("nginx")
            .args(["-e", "stderr", "-g", "daemon off;", "-c"])
            .arg(conf),
    )?;
    wait_listening(ns, port, &mut nginx)?;
    Ok(nginx)
}

fn static_page() -> String {
    let head = "<!doctype html><html><head><title>redirector bench</title></head><body><p>";
    let tail = "</p></body></html>\n";
    let filler = "x".repeat(PAGE_BYTES - head.len() - tail.len());
    format!("{head}{filler}{tail}")
}

fn start_ws_echo(ns: &Netns, ip: &str, ws_echo: &Path) -> Result<Proc> {
    let mut echo = Proc::background(
        "ws-echo",
        ns.exec(ws_echo)
            .args(["--listen", &format!("{ip}:8080")])
            .args(["--tls-listen", &format!("{ip}:8443")])
            .args(["--cert-name", ip]),
    )?;
    let mut listening = 0;
    echo.wait_for_stdout("its two `listening` lines", READY_TIMEOUT, |line| {
        listening += usize::from(line.starts_with("listening"));
        listening == 2
    })?;
    Ok(echo)
}

/// Waits until something in `ns` listens on TCP `port`; fails at once if `server` exits
/// (its output has been echoed with its label).
pub fn wait_listening(ns: &Netns, port: u16, server: &mut Proc) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        server
            .ensure_running()
            .with_context(|| format!("before listening on port {port}"))?;
        let listing = ns
            .exec("ss")
            .args(["-Hltn", &format!("sport = :{port}")])
            .run_captured()
            .context("could not list listening sockets")?;
        if !listing.trim().is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "nothing listens on port {port} in {} after {} s",
                ns.name(),
                READY_TIMEOUT.as_secs()
            );
        }
        thread::sleep(POLL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn static_page_has_the_advertised_size() {
        assert_eq!(static_page().len(), PAGE_BYTES);
    }
}
