//! Drift guard: every long flag of `redirector run` has its key in the config file, the
//! key is read (a file setting only it differs from an empty file), and
//! dist/redirector.toml documents it. A new flag without a row here fails the test.

use std::path::Path;

use redirector::config::RunSettings;

/// Each flag of `run` (without `--`), its TOML key (`table.key` for a table), and a valid
/// TOML value for it. To add a flag: add its row, its key in config.rs, and its commented
/// line in dist/redirector.toml.
const FLAG_KEYS: &[(&str, &str, &str)] = &[
    ("iface", "ifaces", r#"["eth0"]"#),
    ("redirect", "redirects", r#"["81:8081"]"#),
    ("disable", "disabled", "[443]"),
    ("mode", "mode", r#""tc""#),
    ("allow", "allow", r#"["10.0.0.0/8"]"#),
    ("conntrack-size", "conntrack_size", "1024"),
    ("mark", "mark", r#""0x42/0xff""#),
    ("metrics", "metrics", r#""127.0.0.1:9464""#),
    ("timeout-established", "timeouts.established", "3600"),
    ("timeout-closing", "timeouts.closing", "5"),
    ("timeout-fin-wait", "timeouts.fin_wait", "30"),
    ("timeout-handshake", "timeouts.handshake", "20"),
    ("local-cgroup", "local_cgroup", r#""/sys/fs/cgroup/web""#),
    ("no-local", "local", "false"),
    ("persist", "persist", "true"),
    ("sniff-listen", "sniff.listen", r#""0.0.0.0:80""#),
    ("sniff-websocket", "sniff.websocket", r#""127.0.0.1:8080""#),
    ("sniff-http", "sniff.http", r#""127.0.0.1:8000""#),
    ("sniff-user", "sniff.user", r#""nobody""#),
    ("sniff-group", "sniff.group", r#""nogroup""#),
    ("sniff-ws-path", "sniff.ws_path", r#"["/ws/"]"#),
    ("sniff-max-conns", "sniff.max_conns", "100"),
    ("sniff-max-conns-per-ip", "sniff.max_conns_per_ip", "10"),
    ("sniff-header-timeout", "sniff.header_timeout", "3"),
    ("sniff-idle-timeout", "sniff.idle_timeout", "0"),
    ("sniff-connect-timeout", "sniff.connect_timeout", "2"),
    ("sniff-max-header-bytes", "sniff.max_header_bytes", "4096"),
    ("sniff-not-http", "sniff.not_http", r#""http""#),
    ("sniff-tls-listen", "sniff.tls_listen", r#""0.0.0.0:443""#),
    (
        "sniff-tls-websocket",
        "sniff.tls_websocket",
        r#""127.0.0.1:8443""#,
    ),
    ("sniff-tls-http", "sniff.tls_http", r#""127.0.0.1:9443""#),
    ("sniff-ws-sni", "sniff.ws_sni", r#"["ws.example.com"]"#),
    ("sniff-proxy-protocol", "sniff.proxy_protocol", r#""v2""#),
    ("sniff-relay", "sniff.relay", r#""copy""#),
];

/// Flags that are not settings.
const NOT_SETTINGS: &[&str] = &["config", "help"];

/// A TOML document setting only `key` to `value`.
fn toml_setting(key: &str, value: &str) -> String {
    match key.split_once('.') {
        Some((table, leaf)) => format!("[{table}]\n{leaf} = {value}\n"),
        None => format!("{key} = {value}\n"),
    }
}

fn run_flags() -> Vec<String> {
    let command = crate::cli::command();
    let run = command.find_subcommand("run").expect("run");
    run.get_arguments()
        .filter_map(|arg| arg.get_long().map(str::to_owned))
        .filter(|long| !NOT_SETTINGS.contains(&long.as_str()))
        .collect()
}

#[test]
fn every_run_flag_has_a_config_key() {
    let flags = run_flags();
    assert!(flags.len() >= FLAG_KEYS.len(), "{flags:?}");
    let missing: Vec<&String> = flags
        .iter()
        .filter(|f| !FLAG_KEYS.iter().any(|(flag, _, _)| flag == f))
        .collect();
    assert!(
        missing.is_empty(),
        "flags of `redirector run` without a config key (add a row to FLAG_KEYS, the key \
         to config.rs and dist/redirector.toml): {missing:?}"
    );
    for (flag, _, _) in FLAG_KEYS {
        assert!(flags.iter().any(|f| f == flag), "no flag --{flag} any more");
    }
}

#[test]
fn every_config_key_is_read() {
    let empty = RunSettings::default();
    for (flag, key, value) in FLAG_KEYS {
        let text = toml_setting(key, value);
        let settings = RunSettings::parse(&text, Path::new("guard.toml"))
            .unwrap_or_else(|e| panic!("--{flag}: `{key}` is not a config key: {e:?}"));
        assert_ne!(
            settings, empty,
            "--{flag}: `{key}` = {value} changed nothing"
        );
    }
}

#[test]
fn the_shipped_config_documents_every_key() {
    let shipped = include_str!("../../../../dist/redirector.toml");
    for (flag, key, _) in FLAG_KEYS {
        let (table, leaf) = match key.split_once('.') {
            Some((table, leaf)) => (Some(table), leaf),
            None => (None, *key),
        };
        if let Some(table) = table {
            assert!(
                shipped.contains(&format!("[{table}]")),
                "dist/redirector.toml has no [{table}]"
            );
        }
        let documented = shipped.lines().any(|line| {
            let line = line.trim_start_matches(['#', ' ']);
            line.starts_with(&format!("{leaf} ="))
        });
        assert!(
            documented,
            "dist/redirector.toml does not show `{key}` (--{flag})"
        );
        assert!(
            shipped.contains(&format!("--{flag}")),
            "dist/redirector.toml does not name --{flag} next to `{key}`"
        );
    }
}
