//! `redirector sniff`: bind, announce, serve (and `--metrics`) until a signal, report the
//! counters (the library side is the `redirector-sniff` crate).

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use prometheus_client::registry::Registry;
use redirector::{
    config::sniff::SniffSettings,
    observe::http as metrics_http,
    privdrop::{self, Dropped, Identity},
};
use redirector_sniff::{
    metrics as sniff_metrics,
    server::{ListenerKind, SniffServer},
};
use tokio::signal::unix::{signal, SignalKind};

use super::SniffOptions;

/// Runs the sniffing proxy in the foreground: binds, drops privileges, then serves.
pub fn sniff(args: SniffArgs) -> anyhow::Result<()> {
    let settings = SniffSettings {
        listen: Some(args.listen),
        websocket: Some(args.websocket),
        http: Some(args.http),
        ..args.options.settings()
    };
    settings.validate("")?;
    // Refused before anything is bound: a user or group that does not exist.
    let identity = Identity::resolve(settings.user(), settings.group.as_deref())?;
    let config = settings
        .config()
        .context("the proxy's addresses are required")?;
    // Bound (and the open-file limit raised) while still privileged, on one thread.
    let listeners = SniffServer::bind_std(&config)?;
    let metrics = match args.metrics {
        Some(addr) => Some(
            redirector_sniff::listen::bind(addr)
                .with_context(|| format!("listening on --metrics {addr}"))?,
        ),
        None => None,
    };
    let dropped = privdrop::drop_privileges(&identity).context("dropping privileges")?;
    match dropped {
        Dropped::ToUser => log::info!(
            "running as user {} (uid {}, gid {}), no capabilities, no_new_privs",
            identity.user,
            identity.uid,
            identity.gid
        ),
        Dropped::CapabilitiesOnly => {
            log::info!("not started as root: user unchanged; no capabilities, no_new_privs")
        }
    }
    // The runtime's threads start only now, with the dropped credentials.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let counters = runtime.block_on(async {
        let mut sigint = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
        let mut sigterm = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
        let server = SniffServer::from_std(config, listeners)?;
        let addrs = server.local_addrs().context("reading the bound address")?;
        let max_conns = server.max_conns();
        let counters = server.counters();
        let metrics = match metrics {
            Some(listener) => Some(
                listener
                    .set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpListener::from_std(listener))
                    .context("serving --metrics")?,
            ),
            None => None,
        };
        let metrics_note = match &metrics {
            Some(listener) => format!(" metrics http://{}/metrics", listener.local_addr()?),
            None => String::new(),
        };
        log::info!(
            "websocket upgrades -> {}, other http -> {}",
            args.websocket,
            args.http
        );
        println!(
            "redirector sniff ready: listening on {}{metrics_note}",
            listening(&addrs)
        );
        println!("{}", limits_line(max_conns));
        let scrapes = {
            let counters = Arc::clone(&counters);
            async move {
                match metrics {
                    Some(listener) => {
                        metrics_http::serve(listener, move || {
                            let mut registry = Registry::default();
                            sniff_metrics::register(
                                &mut registry,
                                Arc::clone(&counters),
                                max_conns as u64,
                            );
                            Ok(registry)
                        })
                        .await
                    }
                    None => std::future::pending().await,
                }
            }
        };
        server
            .serve(async {
                tokio::select! {
                    _ = sigint.recv() => {}
                    _ = sigterm.recv() => {}
                    () = scrapes => {}
                }
            })
            .await;
        anyhow::Ok(counters)
    })?;
    // Connections still open are closed with the runtime.
    runtime.shutdown_timeout(Duration::from_millis(100));
    println!("redirector sniff stopped");
    print!("{counters}");
    Ok(())
}

/// The line printed after the ready line (by `sniff` and `run --sniff-listen`): the limit
/// in use, whether given or derived from the open-file limit. Stable for scripts.
pub fn limits_line(max_conns: usize) -> String {
    format!("redirector sniff limits: max-conns {max_conns}")
}

/// The bound addresses as the ready line shows them: `ADDR, ADDR (tls)`.
pub fn listening(addrs: &[(SocketAddr, ListenerKind)]) -> String {
    let listening: Vec<String> = addrs
        .iter()
        .map(|(addr, kind)| match kind {
            ListenerKind::Http => addr.to_string(),
            ListenerKind::Tls => format!("{addr} (tls)"),
        })
        .collect();
    listening.join(", ")
}

/// Arguments of `redirector sniff`.
#[derive(Debug, clap::Args)]
pub struct SniffArgs {
    /// Accept clients on ADDR:PORT, e.g. 0.0.0.0:80 or [::]:80.
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: SocketAddr,

    /// Backend of WebSocket upgrades.
    #[arg(long, value_name = "ADDR:PORT")]
    pub websocket: SocketAddr,

    /// Backend of every other HTTP request.
    #[arg(long, value_name = "ADDR:PORT")]
    pub http: SocketAddr,

    /// Serve the proxy's counters in Prometheus text at http://ADDR/metrics (off by
    /// default). Port 0 picks a free port; the ready line shows the address in use.
    ///
    /// Example: --metrics 127.0.0.1:9465
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,

    #[command(flatten)]
    pub options: SniffOptions,
}
