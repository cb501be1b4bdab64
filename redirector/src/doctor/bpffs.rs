//! Check 6, `bpffs`: `--persist` pins links and maps on the bpffs at /sys/fs/bpf, which
//! must be the host's (it must outlive the loader): without one, `run --persist` refuses
//! to start. Without `--persist`, `run` mounts its own when none is there.

use std::path::Path;

use super::{Check, Status};
use crate::instance::paths;

const NAME: &str = "bpffs";

/// One finding: is /sys/fs/bpf a bpffs (`statfs` magic `BPF_FS_MAGIC`), and does it matter.
pub fn check(persist: bool) -> Check {
    let mounted = paths::is_bpffs(Path::new(paths::BPFFS));
    let bpffs = paths::BPFFS;
    match (persist, mounted) {
        (true, false) => Check::new(
            NAME,
            Status::Fail,
            format!(
                "--persist needs a bpffs at {bpffs}, but none is mounted in this mount \
                 namespace (`ip netns exec` mounts a fresh /sys)"
            ),
        )
        .with_fix(format!(
            "mount -t bpf bpf {bpffs} on the host, and in a network namespace use `nsenter \
             --net=/run/netns/NS redirector …`, which keeps the host's mounts"
        )),
        (true, true) => Check::new(
            NAME,
            Status::Ok,
            format!("bpffs mounted at {bpffs}: --persist can pin there"),
        ),
        (false, true) => Check::new(NAME, Status::Ok, format!("bpffs mounted at {bpffs}")),
        (false, false) => Check::new(
            NAME,
            Status::Ok,
            format!(
                "no bpffs at {bpffs}: run mounts one of its own (only --persist needs the \
                 host's)"
            ),
        ),
    }
}
