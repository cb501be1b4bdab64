//! `flows_evicted` is derived, not counted: BPF never sees an LRU eviction, so `stats`
//! computes it as every entry created minus every entry removed by a counted path minus
//! what is tracked now. That is only right if no other removal path exists; this guard
//! holds that proof for the kernel side by listing every place it removes a flow entry and
//! what counts it. A new removal fails it until it is counted and listed here (and in
//! docs/ARCHITECTURE.md, "Evictions").

use std::path::Path;

/// Every line of the eBPF sources that removes a flow entry, or calls the one function
/// that does, with what counts the removal.
const REMOVALS: &[(&str, &str, &str)] = &[
    // The one removal function: the other lines call it.
    (
        "flow.rs",
        "Table::HalfOpen => HALF_OPEN.remove(key).is_ok(),",
        "its callers",
    ),
    (
        "flow.rs",
        "let removed = ESTABLISHED.remove(key).is_ok();",
        "its callers",
    ),
    // A promotion moves the entry (inserted into ESTABLISHED first): no entry is lost.
    (
        "flow.rs",
        "let _ = HALF_OPEN.remove(key);",
        "nothing: a move",
    ),
    // A SYN replacing a closing flow whose connection is gone.
    ("flow.rs", "if remove(key, table) {", "flow_replaced"),
    // The reaper's removal program: the loader adds what it removed to flow_reaped.
    (
        "flow.rs",
        "remove(&entry.key, table)",
        "flow_reaped (user space)",
    ),
    // A heal withdrawn at the server's first packet.
    (
        "heal.rs",
        "if flow::remove(key, table) {",
        "flow_heal_withdrawn",
    ),
];

#[test]
fn every_kernel_removal_of_a_flow_entry_is_a_counted_path() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../redirector-ebpf/src");
    let mut found = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        let file = path.file_name().unwrap().to_string_lossy().into_owned();
        for line in std::fs::read_to_string(&path).unwrap().lines() {
            let code = line.trim();
            if code.starts_with("//") || code.starts_with("pub(crate) fn remove(") {
                continue;
            }
            let calls = [".remove(", "::remove(", " remove("];
            if calls.iter().any(|c| code.contains(c)) || code.starts_with("remove(") {
                found.push((file.clone(), code.to_string()));
            }
        }
    }
    found.sort();
    let mut want: Vec<(String, String)> = REMOVALS
        .iter()
        .map(|(file, code, _)| (file.to_string(), code.to_string()))
        .collect();
    want.sort();
    assert_eq!(
        found, want,
        "a flow entry removal was added or changed in redirector-ebpf: count it, list it \
         here, and say so in docs/ARCHITECTURE.md (Evictions)"
    );
}
