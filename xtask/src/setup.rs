//! `cargo xtask setup`: install or verify, idempotently, everything the build and the demo
//! need; each step says what it checked, and a failure says which step and how to fix it.

use std::fs;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context as _, Result};
use nix::unistd::geteuid;

use testkit::cmd::{heading, Cmd};

/// Debian packages the build, the demo or the tests cannot do without.
const REQUIRED_PACKAGES: &[&str] = &[
    "iproute2",   // ip, ss: namespaces, veth, sockets
    "ethtool",    // checksum offload off on the veths
    "openssl",    // test certificates
    "procps",     // kill, ps, sysctl
    "curl",       // plain HTTP probes
    "util-linux", // nsenter, mount, setpriv
    "systemd",    // systemd-analyze security rates dist/redirector.service
    "gcc",        // linker for rustc, C shim of llvm-sys (bpf-linker)
    "libc6-dev",  // crt objects and libc for linking
    "python3",    // http.server: the plain HTTP backend of the sniff tests
    "nginx",      // reads the PROXY header in the sniff tests (run by the test, never a service)
    // The benchmark (`cargo xtask bench`, whose smoke run is part of `cargo xtask test`):
    "libnginx-mod-stream", // nginx's TCP passthrough of 443
    "haproxy",             // the proxy configurations (run by the bench, never a service)
    "wrk",                 // HTTP keep-alive and connection-rate loads
    "iperf3",              // bulk throughput
    "iptables",            // iptables REDIRECT (iptables-legacy)
    "nftables",            // nftables redirect
    // The OCI image and the Kubernetes manifests (`cargo xtask image`, tests/tests/kubernetes.rs):
    "podman",       // podman build / image mount (never a registry pull)
    "buildah",      // podman's image builder
    "python3-venv", // the venv of kubernetes-validate
    // The Debian package (`cargo xtask deb`, tests/tests/package.rs):
    "dpkg-dev", // dpkg-deb, dpkg-architecture
    "lintian",  // checks the .deb (no error allowed)
    "man-db",   // man: renders the generated pages in the package test
    // The shipped unit's sandbox (tests/tests/unit_sandbox.rs): unit-sandbox links libseccomp.
    "libseccomp-dev",
];
/// Packages that help with debugging but may be missing from the archive.
const OPTIONAL_PACKAGES: &[&str] = &["bpftool"];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// The nightly's LLVM major version that bpf-linker is built against (`--features llvm-22`).
const NIGHTLY_LLVM_MAJOR: u32 = 22;
/// LLVM prefix for building bpf-linker, under $HOME: it stays, since bpf-linker's RUNPATH
/// points into it.
const LLVM_PREFIX_UNDER_HOME: &str = ".local/share/redirector/bpf-llvm";
const BPFFS_MOUNT_POINT: &str = "/sys/fs/bpf";
/// The venv of the manifests' validator, under $HOME (persistent, like the LLVM prefix).
const VENV_UNDER_HOME: &str = ".local/share/redirector/venv";
/// kubernetes-validate validates the manifests offline against the schemas it bundles.
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

pub fn run() -> Result<()> {
    heading("setup");
    check_root();
    step(
        "debian packages",
        "as root: apt-get update && apt-get install -y <the missing packages>",
        ensure_packages,
    )?;
    step(
        "nightly rust-src",
        "rustup component add rust-src --toolchain nightly (needs the nightly toolchain)",
        ensure_rust_src,
    )?;
    step(
        "bpf-linker",
        "LLVM_PREFIX=<prefix above> cargo install bpf-linker --version 0.13.0 \
         --no-default-features --features llvm-22 --force",
        ensure_bpf_linker,
    )?;
    step(
        "cargo-fuzz",
        "cargo install cargo-fuzz --locked",
        ensure_cargo_fuzz,
    )?;
    step(
        "kubernetes-validate",
        "python3 -m venv ~/.local/share/redirector/venv && \
         ~/.local/share/redirector/venv/bin/pip install kubernetes-validate==1.37.0",
        ensure_kubernetes_validate,
    )?;
    step(
        "bpffs",
        "as root: mount -t bpf bpf /sys/fs/bpf",
        ensure_bpffs,
    )?;
    Ok(())
}

/// Runs one step: prints `ok <name>: <detail>`, or names the step and its fix in the error.
fn step(name: &str, fix: &str, check: impl FnOnce() -> Result<String>) -> Result<()> {
    match check() {
        Ok(detail) => {
            println!("  ok  {name}: {detail}");
            Ok(())
        }
        Err(err) => Err(err.context(format!("setup step `{name}` failed; to fix: {fix}"))),
    }
}

fn is_root() -> bool {
    geteuid().is_root()
}

/// Not fatal: when everything is installed, a non-root user can still build.
fn check_root() {
    if is_root() {
        println!("  ok  root");
    } else {
        println!(
            "  WARNING: not root (euid {}): installing packages, mounting bpffs, attaching \
             eBPF programs, the demo and the kernel tests need root; run as root (sudo -E)",
            geteuid()
        );
    }
}

fn ensure_packages() -> Result<String> {
    let wanted: Vec<&str> = REQUIRED_PACKAGES
        .iter()
        .chain(OPTIONAL_PACKAGES)
        .copied()
        .collect();
    let missing = missing_packages(&wanted)?;
    if missing.is_empty() {
        return Ok(wanted.join(" "));
    }
    ensure!(
        is_root(),
        "missing packages {} and installing them needs root",
        missing.join(" ")
    );
    println!("  installing missing packages: {}", missing.join(" "));
    apt_get(&["update"])?;
    let mut to_install = Vec::new();
    for package in missing {
        if REQUIRED_PACKAGES.contains(&package) || apt_has_candidate(package)? {
            to_install.push(package);
        } else {
            println!("  skip {package}: optional, and apt has no candidate for it");
        }
    }
    if !to_install.is_empty() {
        let mut install = vec!["install", "-y", "--no-install-recommends"];
        install.extend(&to_install);
        apt_get(&install)?;
    }
    let still_missing = missing_packages(REQUIRED_PACKAGES)?;
    ensure!(
        still_missing.is_empty(),
        "still missing after apt-get install: {}",
        still_missing.join(" ")
    );
    Ok(format!("installed {}", to_install.join(" ")))
}

/// The packages of `wanted` that dpkg does not report as installed (one dpkg-query call).
fn missing_packages<'a>(wanted: &[&'a str]) -> Result<Vec<&'a str>> {
    // Exits 1 when a name is unknown to dpkg; the known ones are still listed on stdout.
    let output = Cmd::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(wanted)
        .output()?;
    let listing = String::from_utf8_lossy(&output.stdout);
    Ok(wanted
        .iter()
        .copied()
        .filter(|package| !dpkg_reports_installed(&listing, package))
        .collect())
}

/// Whether `dpkg-query -W -f='${Package} ${Status}\n'` output has `package` fully installed.
fn dpkg_reports_installed(listing: &str, package: &str) -> bool {
    listing.lines().any(|line| {
        line.split_once(' ')
            .is_some_and(|(name, status)| name == package && status == "install ok installed")
    })
}

fn apt_get(args: &[&str]) -> Result<()> {
    Cmd::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .run()?;
    Ok(())
}

/// Whether apt could install `package` (`apt-cache policy` shows a candidate version).
fn apt_has_candidate(package: &str) -> Result<bool> {
    let policy = Cmd::new("apt-cache")
        .args(["policy", package])
        .run_captured()?;
    Ok(policy.lines().any(|line| {
        line.trim()
            .strip_prefix("Candidate:")
            .is_some_and(|candidate| candidate.trim() != "(none)")
    }))
}

fn ensure_rust_src() -> Result<String> {
    let installed = Cmd::new("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .run_captured()?;
    if installed.lines().any(|line| line.trim() == "rust-src") {
        return Ok("present".to_owned());
    }
    Cmd::new("rustup")
        .args(["component", "add", "rust-src", "--toolchain", "nightly"])
        .run()?;
    Ok("installed".to_owned())
}

fn ensure_bpf_linker() -> Result<String> {
    let prefix = llvm_prefix()?;
    let llvm = link_nightly_llvm(&prefix)?;
    match bpf_linker_version() {
        Ok(version) if version == BPF_LINKER_VERSION => {
            return Ok(format!("{version}, LLVM prefix {}", prefix.display()));
        }
        Ok(version) => println!("  bpf-linker {version} found, {BPF_LINKER_VERSION} needed"),
        Err(err) => println!("  bpf-linker does not run ({err:#})"),
    }
    println!(
        "  building bpf-linker {BPF_LINKER_VERSION} against {} (about a minute)",
        llvm.display()
    );
    Cmd::cargo()
        .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
        .args(["--no-default-features", "--features"])
        .arg(format!("llvm-{NIGHTLY_LLVM_MAJOR}"))
        .arg("--force")
        .env("LLVM_PREFIX", &prefix)
        .run()?;
    let version = bpf_linker_version()
        .context("bpf-linker was installed but does not run (is ~/.cargo/bin on PATH?)")?;
    ensure!(
        version == BPF_LINKER_VERSION,
        "`bpf-linker --version` reports {version} after installing {BPF_LINKER_VERSION}: \
         another bpf-linker comes first on PATH"
    );
    Ok(format!(
        "{version} (built now), LLVM prefix {}",
        prefix.display()
    ))
}

fn llvm_prefix() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(Path::new(&home).join(LLVM_PREFIX_UNDER_HOME))
}

/// (Re)creates `<prefix>/lib/libLLVM.so` and `<prefix>/lib/<soname>` pointing at the nightly's
/// libLLVM, so that bpf-linker builds against it and finds it at run time (its RUNPATH).
/// Cheap, and repairs the links after a nightly update. Returns the library's path.
fn link_nightly_llvm(prefix: &Path) -> Result<PathBuf> {
    check_nightly_llvm_major()?;
    let sysroot = Cmd::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .run_captured()?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    let library = find_libllvm(&sysroot_lib)?;
    let soname = library
        .file_name()
        .context("libLLVM path without a file name")?
        .to_owned();
    let lib_dir = prefix.join("lib");
    fs::create_dir_all(&lib_dir)
        .with_context(|| format!("could not create {}", lib_dir.display()))?;
    // Links to an older nightly's libLLVM would only confuse a later reader.
    for entry in read_dir_names(&lib_dir)? {
        if entry.starts_with("libLLVM.so.") && *entry != *soname.to_string_lossy() {
            let stale = lib_dir.join(&entry);
            fs::remove_file(&stale)
                .with_context(|| format!("could not remove {}", stale.display()))?;
        }
    }
    for link_name in [Path::new("libLLVM.so"), Path::new(&soname)] {
        replace_symlink(&library, &lib_dir.join(link_name))?;
    }
    Ok(library)
}

/// bpf-linker is built with `--features llvm-22`; a nightly with another LLVM needs a new
/// feature (and maybe a new bpf-linker), not a silent mismatch.
fn check_nightly_llvm_major() -> Result<()> {
    let verbose = Cmd::new("rustc").args(["+nightly", "-vV"]).run_captured()?;
    let major = llvm_major(&verbose).context("`rustc +nightly -vV` shows no LLVM version")?;
    ensure!(
        major == NIGHTLY_LLVM_MAJOR,
        "the nightly toolchain uses LLVM {major}, but xtask builds bpf-linker for LLVM \
         {NIGHTLY_LLVM_MAJOR}: update NIGHTLY_LLVM_MAJOR in xtask/src/setup.rs (bpf-linker \
         0.13 supports LLVM 21-23)"
    );
    Ok(())
}

/// The major version in the `LLVM version: 22.1.2` line of `rustc -vV`.
fn llvm_major(rustc_verbose_version: &str) -> Option<u32> {
    rustc_verbose_version
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))
        .and_then(|version| version.trim().split('.').next())
        .and_then(|major| major.parse().ok())
}

/// The one `libLLVM.so.*` in the nightly's `lib` directory.
fn find_libllvm(sysroot_lib: &Path) -> Result<PathBuf> {
    let mut candidates: Vec<String> = read_dir_names(sysroot_lib)?
        .into_iter()
        .filter(|name| name.starts_with("libLLVM.so."))
        .collect();
    candidates.sort();
    match candidates.as_slice() {
        [only] => Ok(sysroot_lib.join(only)),
        [] => bail!(
            "no libLLVM.so.* in {}: is the nightly toolchain complete? \
             (rustup toolchain install nightly)",
            sysroot_lib.display()
        ),
        several => bail!(
            "several libLLVM.so.* in {}: {}",
            sysroot_lib.display(),
            several.join(" ")
        ),
    }
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>> {
    let entries = fs::read_dir(dir).with_context(|| format!("could not list {}", dir.display()))?;
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("could not list {}", dir.display()))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

/// Points `link` at `target`, atomically (symlink beside it, then rename over it), so that a
/// bpf-linker starting meanwhile never finds the library missing.
fn replace_symlink(target: &Path, link: &Path) -> Result<()> {
    let mut temporary = link.as_os_str().to_owned();
    temporary.push(".xtask-new");
    let temporary = PathBuf::from(temporary);
    let _ = fs::remove_file(&temporary);
    symlink(target, &temporary)
        .with_context(|| format!("could not create symlink {}", temporary.display()))?;
    fs::rename(&temporary, link).with_context(|| format!("could not replace {}", link.display()))
}

/// The version `bpf-linker --version` reports (`bpf-linker 0.13.0` -> `0.13.0`).
fn bpf_linker_version() -> Result<String> {
    let output = Cmd::new("bpf-linker").arg("--version").run_captured()?;
    parse_bpf_linker_version(&output)
        .with_context(|| format!("unexpected `bpf-linker --version` output: {output:?}"))
}

fn parse_bpf_linker_version(output: &str) -> Option<String> {
    let mut words = output.split_whitespace();
    match (words.next(), words.next()) {
        (Some("bpf-linker"), Some(version)) => Some(version.to_owned()),
        _ => None,
    }
}

/// cargo-fuzz runs the fuzz targets of redirector-sniff/fuzz (with the nightly toolchain).
fn ensure_cargo_fuzz() -> Result<String> {
    if let Ok(version) = Cmd::cargo().args(["fuzz", "--version"]).run_captured() {
        return Ok(version.trim().to_owned());
    }
    println!("  installing cargo-fuzz (a few minutes)");
    Cmd::cargo()
        .args(["install", "cargo-fuzz", "--locked"])
        .run()?;
    let version = Cmd::cargo()
        .args(["fuzz", "--version"])
        .run_captured()
        .context("cargo-fuzz was installed but `cargo fuzz --version` fails")?;
    Ok(format!("{} (installed now)", version.trim()))
}

/// The `kubernetes-validate` of the project's venv (see [`ensure_kubernetes_validate`]).
pub fn kubernetes_validate() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(Path::new(&home)
        .join(VENV_UNDER_HOME)
        .join("bin")
        .join("kubernetes-validate"))
}

/// The pinned kubernetes-validate in a venv of its own (Debian's pip refuses to install
/// into the system Python); its schemas are bundled, so validating needs no network.
fn ensure_kubernetes_validate() -> Result<String> {
    let validator = kubernetes_validate()?;
    let installed = |validator: &Path| {
        Cmd::new(validator)
            .arg("--version")
            .run_captured()
            .ok()
            .filter(|out| out.contains(KUBERNETES_VALIDATE_VERSION))
    };
    if let Some(version) = installed(&validator) {
        return Ok(version.trim().to_owned());
    }
    let venv = validator
        .parent()
        .and_then(Path::parent)
        .context("venv path")?;
    if !venv.join("bin").join("pip").is_file() {
        Cmd::new("python3").args(["-m", "venv"]).arg(venv).run()?;
    }
    Cmd::new(venv.join("bin").join("pip"))
        .args(["install", "--quiet"])
        .arg(format!(
            "kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"
        ))
        .run()?;
    let version = installed(&validator).with_context(|| {
        format!(
            "{} was installed but `--version` does not report {KUBERNETES_VALIDATE_VERSION}",
            validator.display()
        )
    })?;
    Ok(format!("{} (installed now)", version.trim()))
}

fn ensure_bpffs() -> Result<String> {
    if bpffs_mounted()? {
        return Ok(format!("mounted at {BPFFS_MOUNT_POINT}"));
    }
    ensure!(
        is_root(),
        "{BPFFS_MOUNT_POINT} is not a bpffs and mounting it needs root"
    );
    Cmd::new("mount")
        .args(["-t", "bpf", "bpf", BPFFS_MOUNT_POINT])
        .run()?;
    ensure!(
        bpffs_mounted()?,
        "mount succeeded but {BPFFS_MOUNT_POINT} is still no bpffs"
    );
    Ok(format!("mounted at {BPFFS_MOUNT_POINT} now"))
}

fn bpffs_mounted() -> Result<bool> {
    let mounts = fs::read_to_string("/proc/mounts").context("could not read /proc/mounts")?;
    Ok(mounts_have_bpffs(&mounts))
}

/// Whether a `/proc/mounts` listing has a bpf filesystem at /sys/fs/bpf.
fn mounts_have_bpffs(mounts: &str) -> bool {
    mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        matches!(fields.as_slice(), [_, mount_point, "bpf", ..] if *mount_point == BPFFS_MOUNT_POINT)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_listing_counts_only_fully_installed_packages() {
        let listing = "curl install ok installed\n\
                       ethtool deinstall ok config-files\n\
                       procps install ok installed\n";
        assert!(dpkg_reports_installed(listing, "curl"));
        assert!(dpkg_reports_installed(listing, "procps"));
        assert!(!dpkg_reports_installed(listing, "ethtool"));
        assert!(!dpkg_reports_installed(listing, "bpftool"));
    }

    #[test]
    fn versions_are_parsed() {
        assert_eq!(
            parse_bpf_linker_version("bpf-linker 0.13.0\n").as_deref(),
            Some("0.13.0")
        );
        assert_eq!(parse_bpf_linker_version("error: oops"), None);
        let rustc = "rustc 1.97.0-nightly\nhost: x86_64-unknown-linux-gnu\nLLVM version: 22.1.2\n";
        assert_eq!(llvm_major(rustc), Some(22));
        assert_eq!(llvm_major("rustc 1.97.0"), None);
    }

    #[test]
    fn bpffs_is_found_only_at_its_mount_point() {
        let without = "sysfs /sys sysfs rw 0 0\nbpf /mnt/bpf bpf rw 0 0\n";
        assert!(!mounts_have_bpffs(without));
        let with = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,relatime 0 0\n";
        assert!(mounts_have_bpffs(with));
    }
}
