//! Command line of `cargo xtask`: clap derives only; the doc comments are the `--help` text.

use clap::{Args, Parser, Subcommand};

use crate::build::Profile;

/// Developer tasks for redirector: set up the toolchain, build, run the demo, run the tests.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Install or verify everything the build and the demo need.
    ///
    /// Idempotent and fast when everything is present. Checks, in order: root, the Debian
    /// packages (apt-get), rust-src for the nightly toolchain, bpf-linker 0.13.0 built
    /// against the nightly's own LLVM, and the bpffs mount at /sys/fs/bpf.
    ///
    /// Example: cargo xtask setup
    Setup,
    /// Run setup, then build `redirector`, `ws-echo` and `ws-client`.
    ///
    /// Example: cargo xtask build
    Build(BuildArgs),
    /// Run build, then show the redirector at work between two network namespaces.
    ///
    /// Creates namespaces rdr-demo-cli and rdr-demo-srv joined by veth rdrd-c/rdrd-s,
    /// runs ws-echo on 8080/8443 and the redirector on rdrd-s in the server namespace,
    /// and sends WebSocket echoes to ports 80 and 443 over IPv4 and IPv6 from the client
    /// namespace. Everything is torn down at the end, also on error or Ctrl-C.
    ///
    /// Example: cargo xtask demo --hold
    Demo(DemoArgs),
    /// Run build, then build the OCI image of the loader with podman (never pulls).
    ///
    /// `FROM scratch` with only the binary, the shared libraries `ldd` lists and a minimal
    /// /etc (passwd, group, nsswitch.conf) naming `nobody`; tagged
    /// localhost/redirector:VERSION and :latest. Prints the image's size. For the
    /// Kubernetes DaemonSet in deploy/kubernetes/.
    ///
    /// Example: cargo xtask image
    Image,
    /// Run build, then the Debian package redirector_VERSION_ARCH.deb (dpkg-deb), checked
    /// with lintian.
    ///
    /// The binary, the systemd unit (enabled on installation, restarted on upgrade,
    /// stopped on removal), /etc/redirector/redirector.toml as a conffile, the man pages
    /// and bash/zsh/fish completions generated from the command line, and the Grafana
    /// dashboard. Written to target/deb/ unless --out is given.
    ///
    /// Example: cargo xtask deb
    Deb(DebArgs),
    /// Run setup, lint (rustfmt, clippy), build, then the whole test suite.
    ///
    /// Arguments after `--` go to `cargo test`.
    ///
    /// Example: cargo xtask test -- redirect_ipv6 -- --nocapture
    Test(TestArgs),
    /// Run build, then benchmark redirector against direct, iptables, nftables, HAProxy and
    /// nginx with wrk, iperf3 and wsload between two network namespaces.
    ///
    /// Creates namespaces rdr-bench-cli and rdr-bench-srv (veth rdrb-c/rdrb-s), measures the
    /// kernel-side cost with BPF_PROG_TEST_RUN, then runs every load against every
    /// configuration, interleaved, and writes bench/results/NAME.{json,md,svg}. Exits non-zero
    /// if a run failed or any TCP checksum error was seen.
    ///
    /// Example: cargo xtask bench --quick
    Bench(redirector_bench::BenchArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Build the debug profile (target/debug) instead of release.
    #[arg(long)]
    pub debug: bool,
}

impl BuildArgs {
    pub fn profile(&self) -> Profile {
        if self.debug {
            Profile::Debug
        } else {
            Profile::Release
        }
    }
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// After the echoes, keep everything up for trying it by hand until Ctrl-C.
    #[arg(long)]
    pub hold: bool,
}

#[derive(Debug, Args)]
pub struct DebArgs {
    /// Package version [default: the binary's, from `redirector --version`].
    #[arg(long)]
    pub version: Option<String>,
    /// Directory of the .deb (and its tree) [default: target/deb].
    #[arg(long, value_name = "DIR")]
    pub out: Option<std::path::PathBuf>,
}

#[derive(Debug, Args)]
pub struct TestArgs {
    /// Extra arguments for `cargo test` (a test name filter, `-- --nocapture`, ...).
    #[arg(last = true)]
    pub cargo_test_args: Vec<String>,
}
