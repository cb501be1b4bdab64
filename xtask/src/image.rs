//! `cargo xtask image`: build, then an OCI image of the loader with podman — `FROM scratch`,
//! holding only what the binary needs: itself, the shared libraries `ldd` lists (with the
//! dynamic loader), and an /etc/passwd, /etc/group and /etc/nsswitch.conf naming `nobody`
//! (the sniffing proxy drops to it). Nothing is pulled from a registry.
//!
//! The build context is assembled under target/image/context; the image is tagged
//! `localhost/redirector:<version>` and `localhost/redirector:latest`.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context as _, Result};

use testkit::cmd::{heading, Cmd};

use crate::build::{self, workspace_root, Profile};

/// Repository of the image (podman's local storage; never pushed).
pub const IMAGE_REPOSITORY: &str = "localhost/redirector";
/// Where the binary lives in the image.
const BINARY_IN_IMAGE: &str = "usr/local/bin/redirector";

/// /etc/passwd of the image: root runs the loader, `nobody` the sniffing proxy.
const PASSWD: &str = "root:x:0:0:root:/:/sbin/nologin\n\
                      nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n";
/// /etc/group of the image (`nogroup` is `nobody`'s primary group, as on Debian).
const GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";
/// Only the files in /etc: glibc's built-in `files` source, no NSS module to load.
const NSSWITCH: &str = "passwd: files\ngroup: files\n";

/// The Containerfile: the context's root filesystem, nothing else.
const CONTAINERFILE: &str = "\
FROM scratch
COPY rootfs/ /
ENTRYPOINT [\"/usr/local/bin/redirector\"]
CMD [\"run\", \"--config\", \"/etc/redirector/redirector.toml\"]
";

/// A built image.
pub struct Image {
    /// `localhost/redirector:<version>`.
    pub name: String,
}

/// `cargo xtask image`: setup, build, then [`build_image`].
pub fn run() -> Result<()> {
    let binaries = build::run(Profile::Release)?;
    build_image(&binaries.redirector)?;
    Ok(())
}

/// Assembles the build context around `binary` and builds the image with podman.
pub fn build_image(binary: &Path) -> Result<Image> {
    heading("image");
    let version = binary_version(binary)?;
    let context = workspace_root()
        .join("target")
        .join("image")
        .join("context");
    assemble_context(binary, &context)?;
    let name = format!("{IMAGE_REPOSITORY}:{version}");
    let latest = format!("{IMAGE_REPOSITORY}:latest");
    let previous = image_id(&name);
    Cmd::new("podman")
        .args(["build", "--pull=never", "--network=none", "--layers=false"])
        .args([
            "--label",
            &format!("org.opencontainers.image.version={version}"),
        ])
        .args(["--label", "org.opencontainers.image.title=redirector"])
        .args(["--tag", &name, "--tag", &latest])
        .arg("--file")
        .arg(context.join("Containerfile"))
        .arg(&context)
        .run()
        .context("podman build failed")?;
    // The image this one replaces lost its tags: remove it, or every build leaves one
    // behind (by its id only; an image still tagged or in use stays).
    if let Some(previous) = previous.filter(|id| Some(id) != image_id(&name).as_ref()) {
        let _ = Cmd::new("podman").args(["rmi", &previous]).run_captured();
    }
    let size = Cmd::new("podman")
        .args(["image", "inspect", "--format", "{{.Size}}", &name])
        .run_captured()?;
    let size: u64 = size
        .trim()
        .parse()
        .with_context(|| format!("podman image inspect printed no size: {size:?}"))?;
    println!(
        "  built image {name} (also {latest}): {size} bytes ({:.1} MiB)",
        size as f64 / (1024.0 * 1024.0)
    );
    Ok(Image { name })
}

/// The id of the image `name`, if there is one.
fn image_id(name: &str) -> Option<String> {
    Cmd::new("podman")
        .args(["image", "inspect", "--format", "{{.Id}}", name])
        .run_captured()
        .ok()
        .map(|id| id.trim().to_owned())
}

/// `0.1.0` from `redirector 0.1.0`.
pub fn binary_version(binary: &Path) -> Result<String> {
    let out = Cmd::new(binary).arg("--version").run_captured()?;
    match out.split_whitespace().collect::<Vec<_>>().as_slice() {
        ["redirector", version] => Ok((*version).to_owned()),
        _ => bail!("unexpected `redirector --version` output: {out:?}"),
    }
}

/// (Re)creates `context`: the Containerfile, and rootfs/ with the binary, its libraries
/// at their own paths, and the files of /etc.
fn assemble_context(binary: &Path, context: &Path) -> Result<()> {
    if context.exists() {
        fs::remove_dir_all(context)
            .with_context(|| format!("could not remove {}", context.display()))?;
    }
    let rootfs = context.join("rootfs");
    copy_file(binary, &rootfs.join(BINARY_IN_IMAGE))?;
    let ldd = Cmd::new("ldd").arg(binary).run_captured()?;
    let libraries = shared_libraries(&ldd);
    ensure!(
        !libraries.is_empty(),
        "ldd lists no library for {}: {ldd}",
        binary.display()
    );
    for library in &libraries {
        // Copied at the path the binary looks for (the loader's is its PT_INTERP),
        // following symlinks.
        let relative = library.strip_prefix("/").unwrap_or(library);
        copy_file(library, &rootfs.join(relative))?;
    }
    for (path, text) in [
        ("etc/passwd", PASSWD),
        ("etc/group", GROUP),
        ("etc/nsswitch.conf", NSSWITCH),
    ] {
        write_file(&rootfs.join(path), text)?;
    }
    write_file(&context.join("Containerfile"), CONTAINERFILE)?;
    println!(
        "  context {}: {} and {}",
        context.display(),
        BINARY_IN_IMAGE,
        libraries
            .iter()
            .map(|l| l.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(())
}

/// The absolute paths in `ldd` output: `libc.so.6 => /lib/…/libc.so.6 (0x…)` and the
/// loader's `/lib64/ld-linux-x86-64.so.2 (0x…)`; the vDSO has no file.
fn shared_libraries(ldd: &str) -> Vec<PathBuf> {
    ldd.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next(),
                None => line.split_whitespace().next(),
            }?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

fn copy_file(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    }
    fs::copy(from, to)
        .with_context(|| format!("could not copy {} to {}", from.display(), to.display()))?;
    Ok(())
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("could not create {}", dir.display()))?;
    }
    fs::write(path, text).with_context(|| format!("could not write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_every_file_and_the_loader() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd5d7f0000)\n\
                   \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f0b1c000000)\n\
                   \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f0b1be00000)\n\
                   \t/lib64/ld-linux-x86-64.so.2 (0x00007f0b1c400000)\n";
        assert_eq!(
            shared_libraries(ldd),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn passwd_and_group_name_nobody() {
        assert!(PASSWD
            .lines()
            .any(|l| l.starts_with("nobody:x:65534:65534:")));
        assert!(GROUP.lines().any(|l| l.starts_with("nogroup:x:65534:")));
    }
}
