//! What a process holds, read from `/proc/PID/status`: the proxy tests check that the
//! process parsing client bytes runs as an unprivileged user with no capabilities.

/// Fields of `/proc/PID/status` that say what a process may do.
#[derive(Debug)]
pub struct Privileges {
    /// Real, effective, saved and filesystem uid.
    pub uids: Vec<u32>,
    /// Real, effective, saved and filesystem gid.
    pub gids: Vec<u32>,
    /// `CapInh`, `CapPrm`, `CapEff`, `CapBnd`, `CapAmb`, as their hex text.
    pub caps: Vec<(String, String)>,
    /// `NoNewPrivs`.
    pub no_new_privs: bool,
}

/// Reads the privileges of process `pid`.
pub fn of(pid: u32) -> Privileges {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|err| panic!("reading /proc/{pid}/status: {err}"));
    let field = |name: &str| -> &str {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
            .trim()
    };
    let ids = |name: &str| -> Vec<u32> {
        field(name)
            .split_whitespace()
            .map(|id| id.parse().unwrap())
            .collect()
    };
    Privileges {
        uids: ids("Uid"),
        gids: ids("Gid"),
        caps: ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"]
            .iter()
            .map(|name| (name.to_string(), field(name).to_string()))
            .collect(),
        no_new_privs: field("NoNewPrivs") == "1",
    }
}

/// Panics unless process `pid` (and each of its threads) runs with non-zero uids and gids,
/// every capability set empty and `no_new_privs` set.
pub fn assert_unprivileged(pid: u32) {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|err| panic!("listing threads of {pid}: {err}"));
    let mut seen = 0;
    for task in tasks {
        let tid: u32 = task.unwrap().file_name().to_str().unwrap().parse().unwrap();
        let held = of(tid);
        assert!(held.uids.iter().all(|&id| id != 0), "{pid}/{tid}: {held:?}");
        assert!(held.gids.iter().all(|&id| id != 0), "{pid}/{tid}: {held:?}");
        for (name, value) in &held.caps {
            assert_eq!(value, "0000000000000000", "{name} of {pid}/{tid}: {held:?}");
        }
        assert!(held.no_new_privs, "{pid}/{tid}: {held:?}");
        seen += 1;
    }
    assert!(seen > 0, "no threads listed for {pid}");
}

/// The processes whose parent is `pid` (from `/proc/*/stat`).
pub fn children_of(pid: u32) -> Vec<u32> {
    let mut children = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue; // exited meanwhile
        };
        // `pid (comm) state ppid …`: comm may hold spaces, so split after its last ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if ppid == Some(pid) {
            children.push(child);
        }
    }
    children
}
