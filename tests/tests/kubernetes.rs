//! The Kubernetes deployment of deploy/kubernetes/: the manifests validate offline against
//! the schemas of a current Kubernetes release (kubernetes-validate, strict); the
//! ConfigMap holds a config `run` accepts; and the image's binary, run the way the
//! DaemonSet's pod runs it, redirects real traffic, and a restart (SIGTERM, a new pod)
//! adopts the flows: idle WebSocket sessions opened before keep echoing. The Job of
//! detach-job.yaml then removes everything.
//!
//! `podman run` cannot start containers here (no CAP_SYS_RESOURCE for its rlimits), so the
//! pod is assembled the way a runtime does, from what the manifest says (parsed here, so
//! the test follows it): the image (`podman image mount`) as the lower layer of an
//! overlay with a tmpfs upper, the volumes bound in (hostPath: /sys/fs/bpf and
//! /run/redirector of the host; for the node's cgroup v2 root, a cgroup the test creates,
//! so the local-client programs never attach to this machine's root; the ConfigMap's
//! files), a fresh /proc and a read-only
//! sysfs, the root remounted read-only (`readOnlyRootFilesystem`), then `capsh` chroots
//! and keeps exactly the container's `capabilities.add` in the bounding set (uid 0, so
//! those are its effective set), none inheritable or ambient, `no_new_privs`
//! (`allowPrivilegeEscalation: false`), and execs the image's entrypoint with the
//! container's args and env. All in a private mount namespace (gone with the process)
//! entered with `nsenter --net=` into the test's server namespace (`hostNetwork`).

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use redirector::config::RunSettings;
use redirector_tests::{bins, fixtures::*};
use serde_json::Value;
use testkit::{
    cgroup::Cgroup,
    cmd::must,
    netns::{Netns, Topology},
    process::Proc,
};

/// The Kubernetes release whose schemas the manifests are validated against (the newest
/// that the pinned kubernetes-validate bundles).
const KUBERNETES_VERSION: &str = "1.37.0";

/// Idle sessions held across the pod's restart.
const SESSIONS: usize = 6;

/// Sets up the pod's root and mounts in a private mount namespace, then chroots with
/// the container's capabilities and execs its command. Arguments: image root, pod root
/// (an empty directory), the capabilities to drop from the bounding set, the bind mounts
/// (`HOST:CONTAINER:ro|rw`, comma-separated), then the entrypoint and its arguments.
const POD_SH: &str = r#"
set -eu
image=$1 root=$2 drop=$3 binds=$4
shift 4
mount -t tmpfs -o mode=0755 pod-layer "$root"
mkdir "$root/upper" "$root/work" "$root/rootfs"
r=$root/rootfs
mount -t overlay overlay -o "lowerdir=$image,upperdir=$root/upper,workdir=$root/work" "$r"
mkdir -p "$r/proc" "$r/sys" "$r/dev"
mount -t proc proc "$r/proc"
mount -t sysfs -o ro sysfs "$r/sys"
mount -t tmpfs -o mode=0755 dev "$r/dev"
touch "$r/dev/null"
mount --bind /dev/null "$r/dev/null"
old_ifs=$IFS
IFS=,
for bind in $binds; do
    IFS=$old_ifs
    host=${bind%%:*} rest=${bind#*:}
    target=${rest%%:*} mode=${rest#*:}
    mkdir -p "$r$target"
    mount --bind "$host" "$r$target"
    if [ "$mode" = ro ]; then mount -o remount,bind,ro "$r$target"; fi
done
IFS=$old_ifs
mount -o remount,bind,ro "$r"
# capsh runs SHELL with the arguments after `--` (argv[0] being SHELL itself).
entrypoint=$1
shift
exec capsh --chroot="$r" --drop="$drop" --inh= --noamb --no-new-privs --shell="$entrypoint" -- "$@"
"#;

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes")
}

/// Every manifest of deploy/kubernetes/, sorted.
fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(manifests_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "{files:?}");
    files
}

/// The YAML documents of `path` as JSON, read by the PyYAML of kubernetes-validate's venv.
fn yaml_documents(path: &Path) -> Vec<Value> {
    let python = bins::kubernetes_validate().with_file_name("python3");
    let out = must(Command::new(python).arg("-c").arg(
        "import json, sys, yaml; json.dump(list(yaml.safe_load_all(open(sys.argv[1]))), sys.stdout)",
    ).arg(path));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The one document of the manifest `name`.
fn manifest(name: &str) -> Value {
    let mut docs = yaml_documents(&manifests_dir().join(name));
    assert_eq!(docs.len(), 1, "{name}");
    docs.remove(0)
}

fn validate(files: &[PathBuf]) -> Output {
    Command::new(bins::kubernetes_validate())
        .args(["--kubernetes-version", KUBERNETES_VERSION, "--strict"])
        .args(files)
        .output()
        .expect("kubernetes-validate (installed by `cargo xtask setup`)")
}

#[test]
fn manifests_validate_offline_in_strict_mode() {
    let files = manifests();
    let out = validate(&files);
    let report =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{report}");
    for file in &files {
        let name = file.file_name().unwrap().to_string_lossy();
        assert!(
            report.contains(&format!("{name} passed")),
            "{name} not validated: {report}"
        );
    }
}

#[test]
fn a_manifest_error_fails_validation() {
    let daemonset = std::fs::read_to_string(manifests_dir().join("daemonset.yaml")).unwrap();
    let dir = TempDir::new("k8s-bad");
    for (tag, bad) in [
        // An unknown field: accepted by a lax check, refused in strict mode.
        (
            "unknown",
            daemonset.replace(
                "hostNetwork: true",
                "hostNetwork: true\n      hostNetwrk: true",
            ),
        ),
        // A wrong type.
        (
            "type",
            daemonset.replace(
                "terminationGracePeriodSeconds: 30",
                "terminationGracePeriodSeconds: thirty",
            ),
        ),
    ] {
        assert_ne!(
            bad, daemonset,
            "{tag}: the manifest changed; update this test"
        );
        let path = dir.0.join(format!("{tag}.yaml"));
        std::fs::write(&path, bad).unwrap();
        let out = validate(&[path]);
        assert!(!out.status.success(), "{tag}: a broken DaemonSet passed");
    }
}

#[test]
fn the_configmap_holds_a_config_run_accepts() {
    let configmap = manifest("configmap.yaml");
    let toml = configmap["data"]["redirector.toml"].as_str().unwrap();
    let settings = RunSettings::parse(toml, Path::new("configmap.yaml")).unwrap();
    assert!(settings.persist(), "a pod restart must adopt the flows");
    assert!(
        settings.ifaces.is_empty(),
        "each node's default-route interface"
    );
    // The DaemonSet reads it where the ConfigMap is mounted.
    let daemonset = manifest("daemonset.yaml");
    let args = container(&daemonset)["args"].to_string();
    assert!(args.contains("/etc/redirector/redirector.toml"), "{args}");
}

/// The pod spec of a DaemonSet or Job.
fn pod_spec(workload: &Value) -> &Value {
    &workload["spec"]["template"]["spec"]
}

/// The pod's one container.
/// The URLs of the container's HTTP probes (readiness, liveness, startup: those it has) on
/// `host`, each port resolved by name through the container's `ports` where it is a name.
fn probe_urls(container: &Value, host: &str) -> Vec<String> {
    ["readinessProbe", "livenessProbe", "startupProbe"]
        .iter()
        .filter_map(|kind| container.get(*kind))
        .map(|probe| {
            let get = &probe["httpGet"];
            let path = get["path"].as_str().expect("an httpGet probe with a path");
            let port = match &get["port"] {
                Value::String(name) => container["ports"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == name.as_str())
                    .unwrap_or_else(|| panic!("no container port named {name}"))["containerPort"]
                    .as_u64()
                    .unwrap(),
                number => number.as_u64().unwrap(),
            };
            format!("http://{host}:{port}{path}")
        })
        .collect()
}

fn container(workload: &Value) -> &Value {
    let containers = pod_spec(workload)["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1);
    &containers[0]
}

/// The capabilities the container keeps: it must drop ALL and add only these.
fn kept_capabilities(container: &Value) -> BTreeSet<String> {
    let security = &container["securityContext"];
    assert_eq!(security["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(security["privileged"], false);
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["runAsUser"], 0);
    security["capabilities"]["add"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| format!("cap_{}", c.as_str().unwrap().to_lowercase()))
        .collect()
}

/// Every capability of this kernel (the test's bounding set: it runs as root), by name.
fn all_capabilities() -> BTreeSet<String> {
    let out = must(Command::new("capsh").arg("--print"));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix("Bounding set ="))
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect()
}

/// The capability names of a `/proc/PID/status` mask.
fn decode_capabilities(hex: &str) -> BTreeSet<String> {
    let out = must(Command::new("capsh").arg(format!("--decode={hex}")));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let names = text.trim().split_once('=').map_or("", |(_, names)| names);
    names
        .split(',')
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The image's root, mounted by podman for the test; unmounted on drop.
struct ImageMount {
    image: String,
    root: PathBuf,
}

impl ImageMount {
    fn new(image: &str) -> Self {
        let out = must(Command::new("podman").args(["image", "mount", image]));
        let root = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        assert!(root.join("usr/local/bin/redirector").is_file(), "{root:?}");
        ImageMount {
            image: image.to_owned(),
            root,
        }
    }
}

impl Drop for ImageMount {
    fn drop(&mut self) {
        let _ = Command::new("podman")
            .args(["image", "unmount", &self.image])
            .output();
    }
}

/// The image's entrypoint (`podman image inspect`).
fn entrypoint(image: &str) -> Vec<String> {
    let out = must(Command::new("podman").args([
        "image",
        "inspect",
        "--format",
        "{{json .Config.Entrypoint}}",
        image,
    ]));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A pod of `workload` (DaemonSet or Job) on the test's server "node", `env` being the
/// values of its downward-API variables.
struct Pod<'a> {
    workload: &'a Value,
    image: &'a ImageMount,
    entrypoint: Vec<String>,
    /// Files of the ConfigMap volumes, written out.
    config: &'a Path,
    /// Stands in for the node's cgroup v2 root (hostPath /sys/fs/cgroup).
    node_cgroup: &'a Path,
    node_ip: &'a str,
}

impl Pod<'_> {
    /// The container's bind mounts, `HOST:CONTAINER:ro|rw` (hostPath and ConfigMap
    /// volumes; the test knows no other kind).
    fn binds(&self) -> String {
        let spec = pod_spec(self.workload);
        let volumes = spec["volumes"].as_array().unwrap();
        let mounts = container(self.workload)["volumeMounts"].as_array().unwrap();
        mounts
            .iter()
            .map(|mount| {
                let name = &mount["name"];
                let volume = volumes.iter().find(|v| &v["name"] == name).unwrap();
                let host = if volume["hostPath"]["path"] == "/sys/fs/cgroup" {
                    self.node_cgroup.display().to_string()
                } else if let Some(path) = volume["hostPath"]["path"].as_str() {
                    if volume["hostPath"]["type"] == "DirectoryOrCreate" {
                        std::fs::create_dir_all(path).unwrap();
                    }
                    path.to_owned()
                } else {
                    assert!(volume["configMap"].is_object(), "unknown volume {volume}");
                    self.config.display().to_string()
                };
                let mode = if mount["readOnly"] == true {
                    "ro"
                } else {
                    "rw"
                };
                format!("{host}:{}:{mode}", mount["mountPath"].as_str().unwrap())
            })
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The container's env, downward-API values from the test's node.
    fn env(&self) -> Vec<(String, String)> {
        let container = container(self.workload);
        container["env"]
            .as_array()
            .map(|env| {
                env.iter()
                    .map(|var| {
                        let name = var["name"].as_str().unwrap().to_owned();
                        let value = match var["value"].as_str() {
                            Some(value) => value.to_owned(),
                            None => {
                                let field = &var["valueFrom"]["fieldRef"]["fieldPath"];
                                assert_eq!(field, "status.hostIP", "{var}");
                                self.node_ip.to_owned()
                            }
                        };
                        (name, value)
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The container's args, with `$(VAR)` expanded from its env as the kubelet does.
    fn args(&self) -> Vec<String> {
        let env = self.env();
        container(self.workload)["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|arg| {
                let mut arg = arg.as_str().unwrap().to_owned();
                for (name, value) in &env {
                    arg = arg.replace(&format!("$({name})"), value);
                }
                arg
            })
            .collect()
    }

    /// The pod's process in `node`'s network namespace (hostNetwork), as described in
    /// the module's documentation; `root` is an empty directory for its root.
    fn command(&self, node: &Netns, root: &Path) -> Command {
        assert_eq!(pod_spec(self.workload)["hostNetwork"], true);
        let kept = kept_capabilities(container(self.workload));
        let drop: Vec<String> = all_capabilities().difference(&kept).cloned().collect();
        let mut cmd = node.nsenter_cmd("unshare");
        cmd.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            POD_SH,
            "sh",
        ])
        .arg(&self.image.root)
        .arg(root)
        .arg(drop.join(","))
        .arg(self.binds())
        .args(&self.entrypoint)
        .args(self.args())
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .envs(self.env());
        cmd
    }
}

/// A client on the node itself (in `cgroup`, the node's stand-in cgroup root, and the
/// node's network namespace) reaches ws-echo through its own port 80: the local-client
/// programs the pod attached redirect it at connect time.
fn assert_local_echo(node: &Netns, cgroup: &Cgroup, url: &str) {
    // nsenter, not `ip netns exec`: that remounts /sys, where the cgroup tree is.
    let out = node
        .nsenter_cmd("sh")
        .arg("-c")
        .arg(r#"echo $$ > "$0" && exec "$@""#)
        .arg(cgroup.path().join("cgroup.procs"))
        .arg(bins::ws_client())
        .args(["--url", url, "--message", "hello node", "--timeout", "30"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("echo: hello node"),
        "{url}: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `/proc/PID/status` lines of the capability sets and no_new_privs.
fn proc_status(pid: u32) -> Vec<(String, String)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .filter(|(k, _)| k.starts_with("Cap") || k == "NoNewPrivs")
        .collect()
}

/// The HTTP status of GET `url` from inside `ns`.
fn http_status(ns: &Netns, url: &str) -> String {
    let out = must(
        ns.cmd("curl")
            .args([
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
            ])
            .arg(url),
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn the_daemonset_pod_redirects_and_a_restarted_pod_adopts_its_flows() {
    let _serial = serial();
    let daemonset = manifest("daemonset.yaml");
    let job = manifest("detach-job.yaml");
    let configmap = manifest("configmap.yaml");
    let image_name = bins::image();
    let image = ImageMount::new(&image_name);
    let entry = entrypoint(&image_name);
    let config = TempDir::new("k8s-config");
    for (file, text) in configmap["data"].as_object().unwrap() {
        std::fs::write(config.0.join(file), text.as_str().unwrap()).unwrap();
    }

    let topo = Topology::new("k8s");
    // The node's default route names the interface (the ConfigMap lists none).
    topo.server
        .ip(&["route", "add", "default", "via", &topo.client_v4])
        .unwrap();
    let _echo = start_echo(&topo, &[]);
    let node_cgroup = Cgroup::new(&format!("redirector-test-k8s-{}", std::process::id()));
    let pod = |workload| Pod {
        workload,
        image: &image,
        entrypoint: entry.clone(),
        config: &config.0,
        node_cgroup: node_cgroup.path(),
        node_ip: &topo.server_v4,
    };
    let _cleanup = DetachOnDrop(&topo.server);

    let root = TempDir::new("k8s-pod");
    let mut first = Proc::spawn(
        "redirector pod",
        pod(&daemonset).command(&topo.server, &root.0),
        false,
    );
    first.wait_line("redirector ready", Duration::from_secs(30));
    let ready = ready_line(&first);
    assert!(ready.contains(topo.server_if), "{ready}");

    // Exactly the manifest's capabilities, nothing inheritable or ambient, no_new_privs.
    let kept = kept_capabilities(container(&daemonset));
    let status = proc_status(first.pid());
    for (set, want) in [
        ("CapEff", kept.clone()),
        ("CapPrm", kept.clone()),
        ("CapBnd", kept.clone()),
        ("CapInh", BTreeSet::new()),
        ("CapAmb", BTreeSet::new()),
    ] {
        let hex = &status.iter().find(|(k, _)| k == set).unwrap().1;
        assert_eq!(decode_capabilities(hex), want, "{set} {hex}");
    }
    assert!(
        status.contains(&("NoNewPrivs".into(), "1".into())),
        "{status:?}"
    );

    // The probes and the scrape, where the kubelet and Prometheus reach them: the paths
    // and ports the manifest names (a named port resolved through the container's ports).
    let annotations = &daemonset["spec"]["template"]["metadata"]["annotations"];
    let port = annotations["prometheus.io/port"].as_str().unwrap();
    let base = format!("http://{}:{port}", topo.server_v4);
    let probes = probe_urls(container(&daemonset), topo.server_v4.as_str());
    assert_eq!(
        probes.len(),
        2,
        "a readiness and a liveness probe: {probes:?}"
    );
    for url in &probes {
        assert_eq!(http_status(&topo.server, url), "200", "{url}");
    }
    let scrape = annotations["prometheus.io/path"].as_str().unwrap();
    assert_eq!(http_status(&topo.server, &format!("{base}{scrape}")), "200");

    let url = topo.url("ws", false, 80);
    assert_echo(&topo, &url);
    assert_local_echo(&topo.server, &node_cgroup, "ws://127.0.0.1:80/");
    let mut sessions: Vec<Proc> = (0..SESSIONS).map(|_| open_session(&topo, &url)).collect();

    // The pod stops (SIGTERM): persist = true leaves the programs attached.
    let first_pid = first.pid();
    first.signal(libc::SIGTERM);
    let (status, lines) = first.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status}: {}", first.stderr_text());
    assert!(
        lines.iter().any(|l| l.contains("programs left attached")),
        "{lines:?}"
    );
    for session in &mut sessions {
        exchange(session, "between pods");
    }

    // The next pod adopts them with every open flow.
    let root = TempDir::new("k8s-pod2");
    let mut second = Proc::spawn(
        "redirector pod (restarted)",
        pod(&daemonset).command(&topo.server, &root.0),
        false,
    );
    second.wait_line("redirector ready", Duration::from_secs(30));
    let ready = ready_line(&second);
    assert!(
        ready.contains(&format!("established flows from pid {first_pid}")),
        "{ready}"
    );
    for session in &mut sessions {
        exchange(session, "after the restart");
    }
    assert_echo(&topo, &url);
    assert_local_echo(&topo.server, &node_cgroup, "ws://[::1]:80/");
    for url in &probes {
        assert_eq!(http_status(&topo.server, url), "200", "{url}");
    }
    second.signal(libc::SIGTERM);
    let (status, _) = second.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "{status}: {}", second.stderr_text());
    for session in sessions {
        close_session(session);
    }

    // Removal: the Job's pod detaches everything.
    let root = TempDir::new("k8s-detach");
    let mut detach = Proc::spawn(
        "redirector detach job",
        pod(&job).command(&topo.server, &root.0),
        false,
    );
    let (status, lines) = detach.wait_exit(Duration::from_secs(20));
    assert!(
        status.success(),
        "{status}: {lines:?} {}",
        detach.stderr_text()
    );
    assert!(
        lines.iter().any(|l| l.starts_with("redirector detached")),
        "{lines:?}"
    );
    assert_no_program_loaded();
    assert_refused(&topo, &url);
}
