//! `redirector run --sniff-listen` with the `--sniff-*` options of `redirector sniff`, in
//! network namespaces: the options take effect, and the proxy's counters reach
//! `redirector stats` and the `--metrics` endpoint while it runs.

use redirector_tests::{
    fixtures::*,
    netns::{must, Topology},
};

/// Runs a Python snippet in the client namespace and returns its stdout (trimmed).
fn client_python(topo: &Topology, script: &str) -> String {
    let out = must(
        topo.client
            .cmd("timeout")
            .args(["30", "python3", "-c", script]),
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Opens a connection to `addr:port` from the client namespace, sends nothing, and prints
/// how many seconds passed until the server closed it (at most 15).
fn seconds_until_closed(topo: &Topology, port: u16) -> f64 {
    let script = format!(
        "import socket,time\n\
         s=socket.create_connection(('{}',{port}),timeout=5)\n\
         s.settimeout(15)\n\
         t=time.time()\n\
         try:\n  s.recv(1)\n\
         except (ConnectionResetError, socket.timeout):\n  pass\n\
         print(time.time()-t)\n",
        topo.server_v4
    );
    client_python(topo, &script).parse().unwrap()
}

/// Value of `sniff counter NAME=` in the loader's final output.
fn sniff_counter(lines: &[String], name: &str) -> u64 {
    lines
        .iter()
        .find_map(|l| l.strip_prefix(&format!("sniff counter {name}=")))
        .unwrap_or_else(|| panic!("no sniff counter {name} in {lines:?}"))
        .parse()
        .unwrap()
}

/// `--sniff-header-timeout 1` under `run`: a silent client is cut after about a second,
/// where `redirector sniff`'s default would wait ten.
#[test]
fn run_applies_non_default_sniff_options() {
    let _serial = serial();
    let topo = Topology::new("runsopt");
    let _echo = start_echo(&topo, &[]);
    let loader = start_loader(
        &topo,
        &[
            "--redirect",
            "443:8443",
            "--sniff-listen",
            "0.0.0.0:80",
            "--sniff-websocket",
            "127.0.0.1:8080",
            "--sniff-http",
            "127.0.0.1:8000",
            "--sniff-header-timeout",
            "1",
            "--sniff-max-header-bytes",
            "512",
        ],
    );
    let waited = seconds_until_closed(&topo, 80);
    assert!((0.8..4.0).contains(&waited), "closed after {waited} s");
    // A head over the 512-byte limit is refused (the default allows 16 KiB): closed, with a
    // reset if its unread rest was still queued.
    let script = format!(
        "import socket\n\
         s=socket.create_connection(('{}',80),timeout=5)\n\
         s.sendall(b'GET / HTTP/1.1\\r\\nX-Pad: ' + b'a'*1000 + b'\\r\\n\\r\\n')\n\
         s.settimeout(5)\n\
         try:\n  print(len(s.recv(100)))\n\
         except ConnectionResetError:\n  print(0)\n",
        topo.server_v4
    );
    assert_eq!(client_python(&topo, &script), "0");
    assert_echo(&topo, &topo.url("ws", false, 80)); // ordinary upgrades still pass
    let lines = stop_loader(loader);
    assert_eq!(sniff_counter(&lines, "header_timeout"), 1, "{lines:?}");
    assert_eq!(sniff_counter(&lines, "too_large"), 1, "{lines:?}");
    assert_eq!(sniff_counter(&lines, "websocket"), 1, "{lines:?}");
}
