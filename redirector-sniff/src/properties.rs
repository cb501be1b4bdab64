//! Property tests of the two detectors: many generated inputs (mutated real requests and
//! ClientHellos, structured random heads, raw noise), each checked for invariants that
//! must hold for any input.
//!
//! Deterministic: a fixed-seed xorshift generator and a fixed number of cases, so a failure
//! reproduces with the same `cargo test`, and the run takes well under a second in release.
//! The coverage-guided counterpart, with the same invariants, is the cargo-fuzz project in
//! redirector-sniff/fuzz (run for a bounded time by `cargo xtask test`).
//!
//! Invariants, for every input and every prefix of it:
//! - no panic;
//! - once a prefix gets a final answer (anything but `NeedMore`), every longer prefix,
//!   the whole input included, gets the same answer: reading more never changes a verdict;
//! - `NeedMore` only below the size limit, `TooLarge` only at or past it (or, for HTTP,
//!   with more than [`MAX_HEADERS`] header lines).

use crate::detect::{detect, DetectConfig, Detection, MAX_HEADERS, MAX_METHOD_LEN};
use crate::sni::{detect_sni, test_support::client_hello_split, SniDetection};

/// Generated inputs per property.
const CASES: usize = 4_000;

/// xorshift64*: small, fast, deterministic; plenty for generating test inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-enough in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<'a, T: ?Sized>(&mut self, items: &[&'a T]) -> &'a T {
        items[self.below(items.len())]
    }

    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
}

const METHODS: &[&str] = &["GET", "POST", "HEAD", "OPTIONS", "PRI", "get", "G", ""];
const PATHS: &[&str] = &["/", "/ws", "/ws/chat", "/api/x?y=1", "*", "", "/a b"];
const VERSIONS: &[&str] = &[
    "HTTP/1.1", "HTTP/1.0", "HTTP/2.0", "HTTP/1.", "http/1.1", "",
];
const NAMES: &[&str] = &[
    "Host",
    "Upgrade",
    "upgrade",
    "Connection",
    "CONNECTION",
    "Sec-WebSocket-Key",
    "X-Fill",
    "Bad Name",
    "",
];
const VALUES: &[&str] = &[
    "websocket",
    "WebSocket/13",
    "h2c, websocket",
    "Upgrade",
    "keep-alive, upgrade",
    "\tupgrade ",
    "example.com",
    "dGhlIHNhbXBsZSBub25jZQ==",
    "",
];
const EOLS: &[&str] = &["\r\n", "\n", "\r"];

/// A request head assembled from plausible and broken pieces.
fn structured_head(rng: &mut Rng) -> Vec<u8> {
    let mut out = String::new();
    for _ in 0..rng.below(2) {
        out.push_str(rng.pick(EOLS));
    }
    out.push_str(rng.pick(METHODS));
    out.push(' ');
    out.push_str(rng.pick(PATHS));
    out.push(' ');
    out.push_str(rng.pick(VERSIONS));
    let eol = rng.pick(EOLS);
    out.push_str(eol);
    let headers = if rng.chance(20) {
        MAX_HEADERS + rng.below(4)
    } else {
        rng.below(8)
    };
    for _ in 0..headers {
        out.push_str(rng.pick(NAMES));
        out.push(':');
        out.push_str(rng.pick(VALUES));
        out.push_str(if rng.chance(10) { rng.pick(EOLS) } else { eol });
    }
    if rng.below(4) != 0 {
        out.push_str(eol);
    }
    let mut bytes = out.into_bytes();
    if rng.chance(4) {
        // Whatever follows the head: a body, a pipelined request, a WebSocket frame.
        let tail = random_bytes(rng, 16);
        bytes.extend_from_slice(&tail);
    }
    bytes
}

fn random_bytes(rng: &mut Rng, max_len: usize) -> Vec<u8> {
    (0..rng.below(max_len + 1))
        .map(|_| rng.next() as u8)
        .collect()
}

/// Flips, inserts, deletes or duplicates a few bytes of `input`.
fn mutate(rng: &mut Rng, mut input: Vec<u8>) -> Vec<u8> {
    for _ in 0..=rng.below(4) {
        let at = rng.below(input.len() + 1);
        match rng.below(5) {
            0 if at < input.len() => input[at] ^= 1 << rng.below(8),
            1 => input.insert(at, rng.next() as u8),
            2 if at < input.len() => {
                input.remove(at);
            }
            3 => {
                let copy = input[at..].iter().take(8).copied().collect::<Vec<_>>();
                input.splice(at..at, copy);
            }
            _ => input.truncate(at),
        }
    }
    input
}

const WS_REQUEST: &[u8] = b"GET /ws/chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";
const HTTP_REQUEST: &[u8] = b"GET /index.html HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n";

fn http_input(rng: &mut Rng) -> Vec<u8> {
    match rng.below(4) {
        0 => mutate(rng, WS_REQUEST.to_vec()),
        1 => mutate(rng, HTTP_REQUEST.to_vec()),
        2 => structured_head(rng),
        _ => random_bytes(rng, 64),
    }
}

fn detect_config(rng: &mut Rng) -> DetectConfig {
    DetectConfig {
        ws_paths: match rng.below(3) {
            0 => Vec::new(),
            1 => vec!["/ws".to_string()],
            _ => vec!["/api".to_string(), "/ws/chat".to_string()],
        },
        // The CLI allows 64 and up; small limits make TooLarge reachable often.
        max_header_bytes: 64 + rng.below(200),
    }
}

#[test]
fn detect_verdicts_are_final_and_limits_hold() {
    let mut rng = Rng(0x5eed_0001_d7ec_7001);
    for case in 0..CASES {
        let input = http_input(&mut rng);
        let cfg = detect_config(&mut rng);
        let mut first_final: Option<(usize, Detection)> = None;
        for len in 0..=input.len() {
            let prefix = &input[..len];
            let verdict = detect(prefix, &cfg);
            let context = || {
                format!(
                    "case {case}, limit {}, prefix of {len}: {:?}",
                    cfg.max_header_bytes,
                    String::from_utf8_lossy(prefix)
                )
            };
            match verdict {
                Detection::NeedMore => {
                    assert!(
                        len < cfg.max_header_bytes,
                        "NeedMore at the limit: {}",
                        context()
                    );
                }
                Detection::TooLarge => {
                    let lines = prefix.iter().filter(|&&b| b == b'\n').count();
                    assert!(
                        len >= cfg.max_header_bytes || lines > MAX_HEADERS,
                        "TooLarge below the limit: {}",
                        context()
                    );
                }
                _ => {}
            }
            match first_final {
                Some((at, earlier)) => assert_eq!(
                    verdict,
                    earlier,
                    "verdict changed after {at} bytes: {}",
                    context()
                ),
                None if verdict != Detection::NeedMore => first_final = Some((len, verdict)),
                None => {}
            }
        }
    }
}

#[test]
fn detect_refuses_long_first_words_within_the_method_limit() {
    // Noise made of token characters only: must not wait for the size limit.
    let mut rng = Rng(0x5eed_0002_d7ec_7002);
    for _ in 0..CASES / 4 {
        let word: Vec<u8> = (0..=MAX_METHOD_LEN + rng.below(64))
            .map(|_| b'A' + rng.below(26) as u8)
            .collect();
        let cfg = DetectConfig::default();
        assert_eq!(detect(&word, &cfg), Detection::NotHttp, "{word:?}");
    }
}

fn tls_input(rng: &mut Rng) -> Vec<u8> {
    let names: &[&str] = &["ws.example.com", "WWW.Example.COM", "a", "x y", "é.example"];
    let sni = (!rng.chance(4)).then(|| rng.pick(names));
    let hello = client_hello_split(sni, rng.below(48), 1 + rng.below(200));
    match rng.below(4) {
        0 => hello,
        1 | 2 => mutate(rng, hello),
        _ => {
            let mut noise = vec![22, 3];
            noise.extend(random_bytes(rng, 80));
            noise
        }
    }
}

#[test]
fn sni_verdicts_are_final_and_limits_hold() {
    let mut rng = Rng(0x5eed_0003_d7ec_7003);
    for case in 0..CASES {
        let input = tls_input(&mut rng);
        let max_bytes = 32 + rng.below(300);
        let mut first_final: Option<(usize, SniDetection)> = None;
        for len in 0..=input.len() {
            let verdict = detect_sni(&input[..len], max_bytes);
            let context = || format!("case {case}, limit {max_bytes}, prefix of {len}");
            match &verdict {
                SniDetection::NeedMore => {
                    assert!(len < max_bytes, "NeedMore at the limit: {}", context());
                }
                SniDetection::TooLarge => {
                    assert!(len >= max_bytes, "TooLarge below the limit: {}", context());
                }
                SniDetection::ServerName(name) => {
                    assert!(
                        !name.is_empty() && !name.bytes().any(|b| b.is_ascii_uppercase()),
                        "server name not lower-cased: {name:?}, {}",
                        context()
                    );
                }
                _ => {}
            }
            match &first_final {
                Some((at, earlier)) => assert_eq!(
                    &verdict,
                    earlier,
                    "verdict changed after {at} bytes: {}",
                    context()
                ),
                None if verdict != SniDetection::NeedMore => first_final = Some((len, verdict)),
                None => {}
            }
        }
    }
}
