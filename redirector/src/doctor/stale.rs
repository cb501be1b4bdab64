//! Check 9, `stale`: pinned state of network namespaces that no longer exist
//! ([`crate::instance::stale`]) — maps and severed links that hold kernel memory and that
//! a later namespace with the same inode must not meet.

use super::{Check, Status};
use crate::instance::stale;

const NAME: &str = "stale";

/// One finding: the stale pin directories, or that there are none.
pub fn check() -> Check {
    match stale::find() {
        Ok(found) if found.is_empty() => Check::new(
            NAME,
            Status::Ok,
            "no pinned state of a network namespace that is gone",
        ),
        Ok(found) => {
            let list: Vec<String> = found
                .iter()
                .map(|s| format!("{} ({})", s.dir.display(), s.why))
                .collect();
            Check::new(
                NAME,
                Status::Warn,
                format!(
                    "pinned state of {} network namespace instance(s) that no longer exist: {}",
                    found.len(),
                    list.join("; ")
                ),
            )
            .with_fix("redirector detach --stale (live instances are left alone)")
        }
        Err(e) => Check::new(NAME, Status::Skip, format!("listing the pins: {e}")),
    }
}
