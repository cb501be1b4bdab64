//! `cargo xtask deb`: build, then the Debian package `redirector_<version>_<arch>.deb` with
//! `dpkg-deb` from a tree assembled under target/deb/, checked with lintian (an error
//! fails the step):
//!
//! ```text
//! usr/bin/redirector                                   the loader, stripped
//! lib/systemd/system/redirector.service                dist/redirector.service, /usr/bin path
//! etc/redirector/redirector.toml                       dist/redirector.toml (a conffile)
//! usr/share/man/man1/redirector{,-COMMAND}.1.gz        `redirector generate --man`
//! usr/share/bash-completion/completions/redirector     `redirector generate --completions`
//! usr/share/zsh/vendor-completions/_redirector
//! usr/share/fish/vendor_completions.d/redirector.fish
//! usr/share/redirector/grafana/redirector.json         dist/grafana/redirector.json
//! usr/share/doc/redirector/{copyright,changelog.gz}
//! usr/share/doc/redirector/examples/socket-steering.conf  dist/socket-steering.conf
//! DEBIAN/{control,conffiles,md5sums,postinst,prerm,postrm}  scripts from dist/debian/
//! ```

use std::fs;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context as _, Result};

use testkit::cmd::{heading, Cmd};

use crate::build::{self, workspace_root, Profile};
use crate::cli::DebArgs;
use crate::image::binary_version;

/// Where the binary is installed; the unit's `ExecStart=` is rewritten to it.
const BINARY: &str = "usr/bin/redirector";
/// The path of the binary in dist/redirector.service (a manual install).
const DIST_BINARY: &str = "/usr/local/bin/redirector";
/// The unit's directory on Debian 12.
const UNIT_DIR: &str = "lib/systemd/system";
/// The one conffile.
const CONFFILE: &str = "etc/redirector/redirector.toml";
const MAINTAINER: &str = "redirector maintainers <redirector@example.org>";

/// `cargo xtask deb`: setup, build, [`build_deb`], lintian.
pub fn run(args: &DebArgs) -> Result<()> {
    let binaries = build::run(Profile::Release)?;
    let version = match &args.version {
        Some(version) => version.clone(),
        None => binary_version(&binaries.redirector)?,
    };
    let out = match &args.out {
        // The tools run in directories of their own: an absolute path.
        Some(out) => std::path::absolute(out)?,
        None => workspace_root().join("target").join("deb"),
    };
    let deb = build_deb(&binaries.redirector, &version, &out)?;
    lintian(&deb)?;
    println!("  built {}", deb.display());
    Ok(())
}

/// The packages the tests install: the binary's version (checked with lintian) and the
/// same build as a higher version (`VERSION+next`), which the upgrade test installs over it.
pub fn test_packages(binary: &Path) -> Result<(PathBuf, PathBuf)> {
    let version = binary_version(binary)?;
    let out = workspace_root().join("target").join("deb");
    let first = build_deb(binary, &version, &out)?;
    lintian(&first)?;
    let next = build_deb(binary, &format!("{version}+next"), &out.join("next"))?;
    Ok((first, next))
}

/// Assembles the tree of the package around `binary` (as `version`) and builds the .deb
/// in `out`; returns its path.
pub fn build_deb(binary: &Path, version: &str, out: &Path) -> Result<PathBuf> {
    heading(format_args!("deb {version}"));
    let arch = Cmd::new("dpkg")
        .arg("--print-architecture")
        .run_captured()?
        .trim()
        .to_owned();
    let name = format!("redirector_{version}_{arch}");
    let tree = out.join(&name);
    if tree.exists() {
        fs::remove_dir_all(&tree).with_context(|| format!("removing {}", tree.display()))?;
    }
    let dist = workspace_root().join("dist");
    let put = |path: &str, mode: u32, content: &[u8]| write_file(&tree.join(path), mode, content);

    install_binary(binary, &tree.join(BINARY))?;
    let unit = fs::read_to_string(dist.join("redirector.service"))?;
    put(
        &format!("{UNIT_DIR}/redirector.service"),
        0o644,
        packaged_unit(&unit)?.as_bytes(),
    )?;
    put(CONFFILE, 0o644, &fs::read(dist.join("redirector.toml"))?)?;
    generate_docs(&tree.join(BINARY), &tree)?;
    let dashboard = dist.join("grafana").join("redirector.json");
    if dashboard.exists() {
        put(
            "usr/share/redirector/grafana/redirector.json",
            0o644,
            &fs::read(dashboard)?,
        )?;
    }
    let doc = "usr/share/doc/redirector";
    put(
        &format!("{doc}/copyright"),
        0o644,
        &fs::read(dist.join("debian").join("copyright"))?,
    )?;
    put(
        &format!("{doc}/changelog.gz"),
        0o644,
        &gzip(changelog(version).as_bytes())?,
    )?;
    put(
        &format!("{doc}/examples/socket-steering.conf"),
        0o644,
        &fs::read(dist.join("socket-steering.conf"))?,
    )?;
    for script in ["postinst", "prerm", "postrm"] {
        put(
            &format!("DEBIAN/{script}"),
            0o755,
            &fs::read(dist.join("debian").join(script))?,
        )?;
    }
    put(
        "DEBIAN/conffiles",
        0o644,
        format!("/{CONFFILE}\n").as_bytes(),
    )?;
    put("DEBIAN/md5sums", 0o644, md5sums(&tree)?.as_bytes())?;
    let control = control(version, &arch, installed_kib(&tree)?, &depends(&tree)?);
    put("DEBIAN/control", 0o644, control.as_bytes())?;
    let deb = out.join(format!("{name}.deb"));
    Cmd::new("dpkg-deb")
        .args(["--root-owner-group", "-Zxz", "--build"])
        .arg(&tree)
        .arg(&deb)
        .run()
        .context("dpkg-deb --build failed")?;
    Ok(deb)
}

/// Runs lintian on `deb`; any error (`E:`) fails, warnings are shown.
pub fn lintian(deb: &Path) -> Result<()> {
    heading("lintian");
    let out = Cmd::new("lintian")
        .args(["--tag-display-limit", "0", "--fail-on", "error"])
        .arg(deb)
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    print!("{text}");
    ensure!(
        out.status.success() && !text.lines().any(|l| l.starts_with("E: ")),
        "lintian reports errors for {}",
        deb.display()
    );
    Ok(())
}

/// Copies the binary, stripped (debug symbols are not shipped).
fn install_binary(binary: &Path, to: &Path) -> Result<()> {
    write_file(to, 0o755, &fs::read(binary)?)?;
    Cmd::new("strip")
        .args([
            "--strip-unneeded",
            "--remove-section=.comment",
            "--remove-section=.note",
        ])
        .arg(to)
        .run()
        .context("strip failed")?;
    Ok(())
}

/// The man pages (gzipped, as Debian wants them) and completions, from the binary itself.
fn generate_docs(binary: &Path, tree: &Path) -> Result<()> {
    let scratch = sibling(tree, "generated");
    if scratch.exists() {
        fs::remove_dir_all(&scratch)?;
    }
    Cmd::new(binary)
        .arg("generate")
        .arg("--man")
        .arg(scratch.join("man"))
        .arg("--completions")
        .arg(scratch.join("completions"))
        .run()
        .context("redirector generate failed")?;
    let mut pages = 0;
    for entry in fs::read_dir(scratch.join("man"))? {
        let path = entry?.path();
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let to = tree.join(format!("usr/share/man/man1/{name}.gz"));
        write_file(&to, 0o644, &gzip(&fs::read(&path)?)?)?;
        pages += 1;
    }
    ensure!(pages > 1, "redirector generate wrote {pages} man pages");
    let completions = scratch.join("completions");
    for (from, to) in [
        (
            "redirector.bash",
            "usr/share/bash-completion/completions/redirector",
        ),
        (
            "_redirector",
            "usr/share/zsh/vendor-completions/_redirector",
        ),
        (
            "redirector.fish",
            "usr/share/fish/vendor_completions.d/redirector.fish",
        ),
    ] {
        write_file(&tree.join(to), 0o644, &fs::read(completions.join(from))?)?;
    }
    fs::remove_dir_all(&scratch)?;
    Ok(())
}

/// dist/redirector.service as installed by the package: the binary in /usr/bin, and the
/// manual installation steps of its header replaced by a note.
pub fn packaged_unit(dist: &str) -> Result<String> {
    ensure!(
        dist.contains(&format!("ExecStart={DIST_BINARY} ")),
        "dist/redirector.service: no `ExecStart={DIST_BINARY} …` line to rewrite"
    );
    let Some(start) = dist.find("[Unit]") else {
        bail!("dist/redirector.service has no [Unit] section");
    };
    Ok(format!(
        "# systemd unit of the redirector package (from dist/redirector.service).\n\
         # Settings: /etc/redirector/redirector.toml; `systemctl reload redirector` applies them.\n\
         \n{}",
        dist[start..].replace(DIST_BINARY, &format!("/{BINARY}"))
    ))
}

/// DEBIAN/control.
fn control(version: &str, arch: &str, installed_kib: u64, depends: &str) -> String {
    format!(
        "Package: redirector\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: {MAINTAINER}\n\
         Installed-Size: {installed_kib}\n\
         Depends: {depends}\n\
         Section: net\n\
         Priority: optional\n\
         Description: kernel-level (eBPF) port redirector for WebSocket traffic\n \
         redirector rewrites the destination port of new TCP connections in the kernel\n \
         (80 to 8080 and 443 to 8443 by default) with XDP or TC programs, and the\n \
         source port of their replies, so WebSocket servers listen on 8080/8443 while\n \
         clients use 80/443, with no proxy in between.\n \
         .\n \
         The package runs the loader as the systemd unit redirector.service with\n \
         /etc/redirector/redirector.toml; a restart or an upgrade keeps every\n \
         connection. It also ships man pages, bash, zsh and fish completions and a\n \
         Grafana dashboard for its Prometheus metrics.\n"
    )
}

/// The Depends of the binary's shared libraries (dpkg-shlibdeps), and the helpers the
/// maintainer scripts call.
fn depends(tree: &Path) -> Result<String> {
    // dpkg-shlibdeps wants a source package around it: a minimal debian/control.
    let work = sibling(tree, "shlibdeps");
    write_file(
        &work.join("debian/control"),
        0o644,
        b"Source: redirector\n\nPackage: redirector\nArchitecture: any\n",
    )?;
    let out = Cmd::new("dpkg-shlibdeps")
        .args(["-O", "--warnings=0"])
        .arg(tree.join(BINARY))
        .current_dir(&work)
        .run_captured()
        .context("dpkg-shlibdeps failed")?;
    fs::remove_dir_all(&work)?;
    let shlibs = out
        .lines()
        .find_map(|l| l.strip_prefix("shlibs:Depends="))
        .context("dpkg-shlibdeps printed no shlibs:Depends")?;
    Ok(format!("{shlibs}, init-system-helpers (>= 1.54~)"))
}

/// A native package's changelog (one entry).
fn changelog(version: &str) -> String {
    format!(
        "redirector ({version}) unstable; urgency=medium\n\n  \
         * Built with `cargo xtask deb`.\n\n \
         -- {MAINTAINER}  Thu, 01 Jan 2026 00:00:00 +0000\n"
    )
}

/// DEBIAN/md5sums: every file of the tree but DEBIAN/, relative paths.
fn md5sums(tree: &Path) -> Result<String> {
    let mut files = Vec::new();
    collect_files(tree, tree, &mut files)?;
    files.retain(|f| !f.starts_with("DEBIAN/"));
    files.sort();
    let out = Cmd::new("md5sum")
        .args(&files)
        .current_dir(tree)
        .run_captured()?;
    Ok(out)
}

/// Installed-Size: the tree's files in KiB (rounded up each).
fn installed_kib(tree: &Path) -> Result<u64> {
    let mut files = Vec::new();
    collect_files(tree, tree, &mut files)?;
    let mut kib = 0;
    for file in files.iter().filter(|f| !f.starts_with("DEBIAN/")) {
        kib += fs::metadata(tree.join(file))?.len().div_ceil(1024);
    }
    Ok(kib)
}

fn collect_files(root: &Path, dir: &Path, out: &mut Vec<String>) -> Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_files(root, &path, out)?;
        } else {
            out.push(path.strip_prefix(root)?.to_string_lossy().into_owned());
        }
    }
    Ok(())
}

/// gzip -9n of `data` (no name, no time stamp: reproducible, as lintian wants).
fn gzip(data: &[u8]) -> Result<Vec<u8>> {
    use std::io::Write as _;
    let mut child = std::process::Command::new("gzip")
        .args(["-9n", "-c"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running gzip")?;
    let mut stdin = child.stdin.take().context("gzip stdin")?;
    let input = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&input));
    let out = child.wait_with_output()?;
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("gzip writer panicked"))??;
    ensure!(out.status.success(), "gzip failed");
    Ok(out.stdout)
}

/// A scratch directory next to the package's tree: `<tree>.<what>`.
fn sibling(tree: &Path, what: &str) -> PathBuf {
    let mut name = tree.file_name().unwrap_or_default().to_owned();
    name.push(format!(".{what}"));
    tree.with_file_name(name)
}

/// Writes `content` to `path` with `mode`, creating its directories (0755).
fn write_file(path: &Path, mode: u32, content: &[u8]) -> Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    fs::write(path, content).with_context(|| format!("writing {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_packaged_unit_runs_the_packaged_binary() {
        let dist = include_str!("../../dist/redirector.service");
        let unit = packaged_unit(dist).unwrap();
        assert!(unit.contains(
            "ExecStart=/usr/bin/redirector run --persist --config /etc/redirector/redirector.toml"
        ));
        assert!(!unit.contains("/usr/local/bin"), "{unit}");
        assert!(unit.contains("ExecReload="), "{unit}");
        assert!(packaged_unit("[Unit]\nExecStart=/bin/true\n").is_err());
    }

    #[test]
    fn the_control_file_has_the_fields_dpkg_needs() {
        let control = control("0.1.0", "amd64", 12345, "libc6 (>= 2.34)");
        for field in [
            "Package: redirector\n",
            "Version: 0.1.0\n",
            "Architecture: amd64\n",
            "Installed-Size: 12345\n",
            "Depends: libc6 (>= 2.34)\n",
        ] {
            assert!(control.contains(field), "{field}: {control}");
        }
        assert!(control.ends_with(".\n") || control.ends_with("metrics.\n"));
        assert!(control.lines().all(|l| l.len() <= 80), "{control}");
    }
}
