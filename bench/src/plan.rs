//! What a benchmark run measures: the configurations, the loads, how long and how often, and
//! the interleaved order of the runs.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// How thorough a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// 5 repetitions of 10 s per load, 1 M tracked flows in the kernel cost run (about an
    /// hour and a half).
    Full,
    /// 3 repetitions of 2 s per load, without the TC pass-through baseline, generic XDP and
    /// the wss load (about 20 minutes, half of it idle-capacity and conn-cpu).
    Quick,
    /// 1 repetition of 1 s per load: proves the harness works (about 2 minutes, run in CI).
    Smoke,
}

impl Mode {
    /// The configurations measured when `--config` does not say.
    pub fn default_configs(self) -> Vec<Config> {
        let skipped: &[Config] = match self {
            Self::Quick => &[Config::PassTc, Config::RedirectorXdpGeneric],
            Self::Full | Self::Smoke => &[],
        };
        Config::ALL
            .into_iter()
            .filter(|c| !skipped.contains(c))
            .collect()
    }

    /// The loads run when `--load` does not say.
    pub fn default_loads(self) -> Vec<Load> {
        let skipped: &[Load] = match self {
            Self::Quick => &[Load::WssMessages],
            Self::Full | Self::Smoke => &[],
        };
        Load::ALL
            .into_iter()
            .filter(|l| !skipped.contains(l))
            .collect()
    }

    /// Its name: the `mode` of the result files, and their default file name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Full => "full",
            Self::Quick => "quick",
            Self::Smoke => "smoke",
        }
    }
}

/// Sizes of one run, fixed by the mode.
#[derive(Debug, Clone, Serialize)]
pub struct Params {
    /// The mode these sizes are for.
    pub mode: Mode,
    /// How often each configuration runs each load.
    pub repetitions: u32,
    /// How long each run of a load lasts (in the result files: `load_seconds`, in seconds).
    #[serde(rename = "load_seconds")]
    #[serde(serialize_with = "as_secs")]
    pub load_time: Duration,
    /// Open connections of the keep-alive HTTP and WebSocket message loads.
    pub connections: u32,
    /// Open connections of the connection-rate loads (each does one exchange, then closes).
    pub churn_connections: u32,
    /// Bytes of each WebSocket message.
    pub message_bytes: u32,
    /// idle-capacity: connections asked for (fewer are measured when the open-file limit
    /// does not allow them; see [`crate::idle::IdleSize`]).
    pub idle_connections: u32,
    /// idle-capacity: new connections per second while they open.
    pub idle_connect_rate: u32,
    /// idle-capacity: time between two messages of one held connection.
    #[serde(serialize_with = "as_secs")]
    pub idle_interval: Duration,
    /// idle-capacity: how long the connections are held once all are open.
    #[serde(serialize_with = "as_secs")]
    pub idle_hold: Duration,
    /// idle-capacity: wait after the last close before the proxy's memory is read again.
    #[serde(serialize_with = "as_secs")]
    pub idle_settle: Duration,
    /// conn-cpu: WebSocket connections opened per second (well below saturation).
    pub conn_cpu_rate: u32,
    /// conn-cpu: how long connections are opened at that rate.
    #[serde(serialize_with = "as_secs")]
    pub conn_cpu_time: Duration,
}

fn as_secs<S: serde::Serializer>(time: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(time.as_secs_f64())
}

impl Params {
    /// The sizes of `mode`: repetitions and load time from it, the rest the same for all.
    pub fn for_mode(mode: Mode) -> Self {
        let (repetitions, seconds) = match mode {
            Mode::Full => (5, 10),
            Mode::Quick => (3, 2),
            Mode::Smoke => (1, 1),
        };
        // idle-capacity's connections, interval, hold and settle, and conn-cpu's time; the
        // times in milliseconds (the smoke run keeps them short: it checks the harness).
        let idle_and_conn_cpu = match mode {
            Mode::Full => (50_000, 7_000, 20_000, 10_000, 10_000),
            Mode::Quick => (10_000, 7_000, 8_000, 10_000, 4_000),
            Mode::Smoke => (300, 500, 1_500, 500, 500),
        };
        let (idle_connections, idle_interval, idle_hold, idle_settle, conn_cpu_time) =
            idle_and_conn_cpu;
        Self {
            mode,
            repetitions,
            load_time: Duration::from_secs(seconds),
            connections: 32,
            churn_connections: 16,
            message_bytes: 128,
            idle_connections,
            idle_connect_rate: 1_000,
            idle_interval: Duration::from_millis(idle_interval),
            idle_hold: Duration::from_millis(idle_hold),
            idle_settle: Duration::from_millis(idle_settle),
            conn_cpu_rate: 1_000,
            conn_cpu_time: Duration::from_millis(conn_cpu_time),
        }
    }
}

/// One way of getting client traffic for ports 80/443 to the servers on 8080/8443.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Config {
    /// Clients connect to 8080/8443 themselves: the ceiling.
    Direct,
    /// Direct, with empty programs at native XDP ingress and TC egress: what any XDP
    /// program costs on this interface (on a veth: its XDP mode), apart from redirector's.
    PassXdp,
    /// Direct, with empty programs at TC ingress and egress.
    PassTc,
    /// `iptables -t nat ... -j REDIRECT` (the xtables path, iptables-legacy).
    Iptables,
    /// An nftables `redirect to :8080` rule.
    Nftables,
    /// HAProxy in tcp mode.
    HaproxyTcp,
    /// HAProxy in http mode, routing `Upgrade: websocket` like the PaaS seed setups.
    HaproxyHttp,
    /// nginx `proxy_pass` with the Upgrade/Connection headers (stream passthrough for 443).
    Nginx,
    /// redirector, native XDP on the server's veth.
    RedirectorXdp,
    /// redirector, generic (skb) XDP.
    RedirectorXdpGeneric,
    /// redirector, TC ingress.
    RedirectorTc,
    /// redirector, socket steering (`--mode socket`): no packet rewritten, no flow state.
    RedirectorSocket,
    /// redirector's user-space sniffing proxy.
    RedirectorSniff,
}

impl Config {
    /// Every configuration, in the order runs apply them and reports list them.
    pub const ALL: [Self; 13] = [
        Self::Direct,
        Self::PassXdp,
        Self::PassTc,
        Self::Iptables,
        Self::Nftables,
        Self::HaproxyTcp,
        Self::HaproxyHttp,
        Self::Nginx,
        Self::RedirectorXdp,
        Self::RedirectorXdpGeneric,
        Self::RedirectorTc,
        Self::RedirectorSocket,
        Self::RedirectorSniff,
    ];

    /// Its id in `--config` and the result files (kebab-case, e.g. `redirector-xdp`).
    pub fn id(self) -> &'static str {
        match self {
            Self::Direct => "direct",
            Self::PassXdp => "pass-xdp",
            Self::PassTc => "pass-tc",
            Self::Iptables => "iptables",
            Self::Nftables => "nftables",
            Self::HaproxyTcp => "haproxy-tcp",
            Self::HaproxyHttp => "haproxy-http",
            Self::Nginx => "nginx",
            Self::RedirectorXdp => "redirector-xdp",
            Self::RedirectorXdpGeneric => "redirector-xdp-generic",
            Self::RedirectorTc => "redirector-tc",
            Self::RedirectorSocket => "redirector-socket",
            Self::RedirectorSniff => "redirector-sniff",
        }
    }

    /// The configuration whose [`id`](Self::id) is `id`, if any.
    pub fn from_id(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|config| config.id() == id)
    }

    /// The ports clients connect to: the servers' own, or the redirected ones.
    pub fn client_ports(self) -> Ports {
        match self {
            Self::Direct | Self::PassXdp | Self::PassTc => Ports {
                plain: 8080,
                tls: 8443,
            },
            _ => Ports {
                plain: 80,
                tls: 443,
            },
        }
    }

    /// Whether this configuration can carry `load` at all: HTTP-aware proxies cannot relay
    /// iperf3's own protocol.
    pub fn carries(self, load: Load) -> bool {
        let http_only = matches!(
            self,
            Self::HaproxyHttp | Self::Nginx | Self::RedirectorSniff
        );
        !(http_only && load == Load::Bulk)
    }

    /// Whether `load` is run under this configuration: what it can carry, and idle-capacity
    /// only where it measures something — the user-space proxies, direct and redirector-tc
    /// as references for the kernel's share.
    pub fn runs(self, load: Load) -> bool {
        let idle_reference = matches!(
            self,
            Self::Direct
                | Self::HaproxyTcp
                | Self::HaproxyHttp
                | Self::Nginx
                | Self::RedirectorTc
                | Self::RedirectorSocket
                | Self::RedirectorSniff
        );
        self.carries(load) && (load != Load::IdleCapacity || idle_reference)
    }

    /// Whether it relays in a user-space process of its own (whose memory idle-capacity
    /// reads).
    pub fn is_user_space_proxy(self) -> bool {
        matches!(
            self,
            Self::HaproxyTcp | Self::HaproxyHttp | Self::Nginx | Self::RedirectorSniff
        )
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// Ports the load generator targets.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// The port of plain HTTP, ws:// and iperf3 (80 or 8080).
    pub plain: u16,
    /// The port of wss:// (443 or 8443).
    pub tls: u16,
}

/// Which servers listen on 8080/8443 in the server namespace while a group of loads runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// nginx with a static page on 8080.
    Http,
    /// ws-echo, ws on 8080 and wss on 8443.
    WebSocket,
    /// iperf3 on 8080.
    Bulk,
}

impl Phase {
    /// Every phase, in the order a run goes through them.
    pub const ALL: [Self; 3] = [Self::Http, Self::WebSocket, Self::Bulk];

    /// The loads that run against this phase's servers, in run order.
    pub fn loads(self) -> &'static [Load] {
        match self {
            Self::Http => &[Load::HttpKeepAlive, Load::HttpConnRate],
            Self::WebSocket => &[
                Load::WsMessages,
                Load::WssMessages,
                Load::WsConnRate,
                Load::ConnCpu,
                Load::IdleCapacity,
            ],
            Self::Bulk => &[Load::Bulk],
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Http => "http (nginx static page on 8080)",
            Self::WebSocket => "websocket (ws-echo on 8080, TLS on 8443)",
            Self::Bulk => "bulk (iperf3 on 8080)",
        })
    }
}

/// One kind of traffic, with the figure it is judged by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Load {
    /// wrk, keep-alive GETs: requests/s and latency percentiles.
    HttpKeepAlive,
    /// wrk with `Connection: close`: one request per connection, i.e. connections/s.
    HttpConnRate,
    /// wsload ping-pong over ws://: messages/s and echo latency.
    WsMessages,
    /// wsload ping-pong over wss:// (443 → 8443).
    WssMessages,
    /// wsload churn: handshake, one echo, close, again: WebSocket connections/s.
    WsConnRate,
    /// iperf3, one TCP stream: bits/s.
    Bulk,
    /// wsload --idle: many open WebSocket connections with a trickle of messages; the
    /// memory each costs the proxy and the kernel.
    IdleCapacity,
    /// wsload churn at a fixed rate below saturation: machine-wide CPU time per connection.
    ConnCpu,
}

impl Load {
    /// Every load, in the order runs and reports take them.
    pub const ALL: [Self; 8] = [
        Self::HttpKeepAlive,
        Self::HttpConnRate,
        Self::WsMessages,
        Self::WssMessages,
        Self::WsConnRate,
        Self::Bulk,
        Self::IdleCapacity,
        Self::ConnCpu,
    ];

    /// Its id in `--load` and the result files (kebab-case, e.g. `ws-messages`).
    pub fn id(self) -> &'static str {
        match self {
            Self::HttpKeepAlive => "http-keepalive",
            Self::HttpConnRate => "http-conn-rate",
            Self::WsMessages => "ws-messages",
            Self::WssMessages => "wss-messages",
            Self::WsConnRate => "ws-conn-rate",
            Self::Bulk => "bulk",
            Self::IdleCapacity => "idle-capacity",
            Self::ConnCpu => "conn-cpu",
        }
    }

    /// The load whose [`id`](Self::id) is `id`, if any.
    pub fn from_id(id: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|load| load.id() == id)
    }

    /// The unit of the load's main figure (higher is better for the throughput loads).
    pub fn unit(self) -> &'static str {
        match self {
            Self::HttpKeepAlive => "requests/s",
            Self::HttpConnRate | Self::WsConnRate => "connections/s",
            Self::WsMessages | Self::WssMessages => "messages/s",
            Self::Bulk => "Gbit/s",
            Self::IdleCapacity => "connections held",
            Self::ConnCpu => "CPU µs/connection",
        }
    }

    /// Whether it measures a cost per connection (memory, CPU time) rather than
    /// throughput: reported in tables and a chart of their own, not as ratios of throughput.
    pub fn is_cost(self) -> bool {
        matches!(self, Self::IdleCapacity | Self::ConnCpu)
    }

    /// Whether the load reports latency percentiles.
    pub fn has_latency(self) -> bool {
        matches!(
            self,
            Self::HttpKeepAlive | Self::WsMessages | Self::WssMessages
        )
    }
}

impl fmt::Display for Load {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// One application of a configuration, during which each of `loads` runs once.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The phase it belongs to (which servers are listening).
    pub phase: Phase,
    /// Which repetition it is, counted from 1.
    pub repetition: u32,
    /// The configuration applied.
    pub config: Config,
    /// The phase's loads that were selected and that `config` can carry, in run order.
    pub loads: Vec<Load>,
}

/// The runs in order: phase by phase (each phase needs its own servers); within a phase,
/// repetition by repetition, every configuration once (A B C … A B C …), so slow drifts of
/// the machine hit every configuration alike.
pub fn schedule(params: &Params, configs: &[Config], loads: &[Load]) -> Vec<Slot> {
    let mut slots = Vec::new();
    for phase in Phase::ALL {
        for repetition in 1..=params.repetitions {
            for &config in configs {
                let wanted: Vec<Load> = phase
                    .loads()
                    .iter()
                    .copied()
                    .filter(|load| loads.contains(load) && config.runs(*load))
                    .collect();
                if !wanted.is_empty() {
                    slots.push(Slot {
                        phase,
                        repetition,
                        config,
                        loads: wanted,
                    });
                }
            }
        }
    }
    slots
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_interleaves_configurations_within_each_repetition() {
        let params = Params::for_mode(Mode::Quick);
        let configs = [Config::Direct, Config::Nginx, Config::RedirectorXdp];
        let slots = schedule(&params, &configs, &Load::ALL);
        let http: Vec<(u32, Config)> = slots
            .iter()
            .filter(|slot| slot.phase == Phase::Http)
            .map(|slot| (slot.repetition, slot.config))
            .collect();
        assert_eq!(http.len(), 9);
        assert_eq!(
            &http[..4],
            &[
                (1, Config::Direct),
                (1, Config::Nginx),
                (1, Config::RedirectorXdp),
                (2, Config::Direct)
            ]
        );
        // nginx relays HTTP only: no bulk slot for it.
        assert!(!slots
            .iter()
            .any(|slot| slot.phase == Phase::Bulk && slot.config == Config::Nginx));
        assert_eq!(
            slots
                .iter()
                .filter(|slot| slot.phase == Phase::Bulk)
                .count(),
            6
        );
        // idle-capacity: nginx (a proxy) and direct (the reference), not redirector-xdp.
        let idle: Vec<Config> = slots
            .iter()
            .filter(|slot| slot.loads.contains(&Load::IdleCapacity) && slot.repetition == 1)
            .map(|slot| slot.config)
            .collect();
        assert_eq!(idle, [Config::Direct, Config::Nginx]);
        assert!(slots.iter().any(
            |slot| slot.config == Config::RedirectorXdp && slot.loads.contains(&Load::ConnCpu)
        ));
    }

    #[test]
    fn ids_round_trip() {
        for config in Config::ALL {
            assert_eq!(Config::from_id(config.id()), Some(config));
        }
        for load in Load::ALL {
            assert_eq!(Load::from_id(load.id()), Some(load));
        }
    }
}
