//! Protocol detection: is the start of a connection a WebSocket upgrade, plain HTTP, or
//! something else? One pure function over the bytes received so far.
//!
//! The caller reads, calls [`detect`] on everything received, and reads again while it
//! answers [`Detection::NeedMore`]. The answer depends only on the first request head, so
//! pipelined requests and WebSocket frames sent right after the handshake are left for the
//! backend.

/// Most headers accepted in one request head; more is treated as [`Detection::TooLarge`].
pub const MAX_HEADERS: usize = 128;

/// Longest request method accepted (`OPTIONS` and WebDAV's `PROPPATCH` are far shorter);
/// a longer first word means the peer does not speak HTTP.
pub const MAX_METHOD_LEN: usize = 24;

/// Default limit of a request head, in bytes.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;

/// What [`detect`] decides from the start of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detection {
    /// The request head is not complete yet and nothing rules HTTP out: read more.
    NeedMore,
    /// An HTTP/1.1 `GET` asking to upgrade to WebSocket (on an accepted path).
    WebSocket,
    /// A complete HTTP/1.x request head that is not a WebSocket upgrade.
    Http,
    /// Not HTTP/1.x (e.g. TLS, HTTP/2 prior knowledge, binary data, malformed head).
    NotHttp,
    /// The head does not fit in the configured limit.
    TooLarge,
}

/// What [`detect`] accepts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectConfig {
    /// Path prefixes on which upgrades count as WebSocket; empty means every path.
    pub ws_paths: Vec<String>,
    /// Largest request head, in bytes, including the blank line that ends it.
    pub max_header_bytes: usize,
}

impl Default for DetectConfig {
    fn default() -> Self {
        DetectConfig {
            ws_paths: Vec::new(),
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
        }
    }
}

/// Classifies `buf`, the bytes received so far at the start of a connection.
pub fn detect(buf: &[u8], cfg: &DetectConfig) -> Detection {
    // Bytes past the limit are never looked at, so the verdict cannot depend on how much
    // more than the limit one read happened to bring (e.g. `TooLarge` for one read size,
    // `NotHttp` for a larger one).
    let buf = &buf[..buf.len().min(cfg.max_header_bytes)];
    if method_rules_out_http(buf) {
        return Detection::NotHttp;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(buf) {
        Ok(httparse::Status::Partial) if buf.len() >= cfg.max_header_bytes => Detection::TooLarge,
        Ok(httparse::Status::Partial) => Detection::NeedMore,
        Ok(httparse::Status::Complete(head_len)) if head_len > cfg.max_header_bytes => {
            Detection::TooLarge
        }
        Ok(httparse::Status::Complete(_)) => classify(&request, cfg),
        Err(httparse::Error::TooManyHeaders) => Detection::TooLarge,
        Err(_) => Detection::NotHttp,
    }
}

/// Decides between WebSocket and plain HTTP for a complete request head.
fn classify(request: &httparse::Request<'_, '_>, cfg: &DetectConfig) -> Detection {
    let is_upgrade = request.method == Some("GET")
        && request.version == Some(1)
        && any_header_has_token(request.headers, "upgrade", is_websocket_protocol)
        && any_header_has_token(request.headers, "connection", |token| {
            token.eq_ignore_ascii_case(b"upgrade")
        });
    let path_ok = cfg.ws_paths.is_empty()
        || request.path.map(origin_path).is_some_and(|path| {
            cfg.ws_paths
                .iter()
                .any(|prefix| path.starts_with(prefix.as_str()))
        });
    if is_upgrade && path_ok {
        Detection::WebSocket
    } else {
        Detection::Http
    }
}

/// The path of a request target: the target itself in origin form (`/ws/chat`), the part
/// from the first `/` after the authority in absolute form (`http://host/ws/chat` →
/// `/ws/chat`, `http://host` → `/`), as HAProxy's `path` does. A server must accept
/// absolute form (RFC 9112 §3.2.2), so `--ws-path` must match its path, not its scheme.
fn origin_path(target: &str) -> &str {
    let Some((scheme, rest)) = target.split_once("://") else {
        return target;
    };
    // RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ).
    let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !is_scheme {
        return target;
    }
    match rest.find(['/', '?']) {
        Some(i) if rest.as_bytes()[i] == b'/' => &rest[i..],
        _ => "/",
    }
}

/// `websocket`, optionally with a version (`protocol-name/protocol-version`, RFC 9110 §7.8).
fn is_websocket_protocol(token: &[u8]) -> bool {
    let name = token.split(|&b| b == b'/').next().unwrap_or_default();
    name.eq_ignore_ascii_case(b"websocket")
}

/// Whether any header called `name` (any case, possibly repeated) holds a comma-separated
/// token for which `matches` is true. Tokens are trimmed of spaces and tabs.
fn any_header_has_token(
    headers: &[httparse::Header<'_>],
    name: &str,
    matches: impl Fn(&[u8]) -> bool,
) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case(name))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|token| matches(token.trim_ascii()))
}

/// True once the first word is clearly not an HTTP method: too long without a space.
///
/// httparse already rejects non-token bytes at once; this catches long runs of token
/// characters (e.g. base64 or text protocols) that would otherwise wait for the size limit.
fn method_rules_out_http(buf: &[u8]) -> bool {
    // httparse skips empty lines before the request line; so do we.
    let start = buf
        .iter()
        .position(|&b| b != b'\r' && b != b'\n')
        .unwrap_or(buf.len());
    let rest = &buf[start..];
    let method_len = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
    method_len > MAX_METHOD_LEN
}

#[cfg(test)]
mod tests {
    use super::*;

    const WS: &[u8] = b"GET /ws/chat HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
Sec-WebSocket-Version: 13\r\n\r\n";

    /// Feeds every proper prefix of `request` (expecting `NeedMore`), then the whole of it
    /// (expecting `full`).
    fn check_prefixes(request: &[u8], cfg: &DetectConfig, full: Detection) {
        for len in 0..request.len() {
            assert_eq!(
                detect(&request[..len], cfg),
                Detection::NeedMore,
                "prefix of {len} bytes: {:?}",
                String::from_utf8_lossy(&request[..len])
            );
        }
        assert_eq!(detect(request, cfg), full, "complete request");
    }

    fn ws_paths(paths: &[&str]) -> DetectConfig {
        DetectConfig {
            ws_paths: paths.iter().map(|p| p.to_string()).collect(),
            ..DetectConfig::default()
        }
    }

    #[test]
    fn websocket_upgrade_every_prefix() {
        check_prefixes(WS, &DetectConfig::default(), Detection::WebSocket);
    }

    #[test]
    fn mixed_case_headers_and_values() {
        let req = b"GET / HTTP/1.1\r\nhOsT: a\r\nuPgRaDe: WebSocket\r\nCONNECTION: UPGRADE\r\n\r\n";
        check_prefixes(req, &DetectConfig::default(), Detection::WebSocket);
    }

    #[test]
    fn connection_with_several_tokens() {
        let req = b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, Upgrade\r\nUpgrade: websocket\r\n\r\n";
        check_prefixes(req, &DetectConfig::default(), Detection::WebSocket);
    }

    #[test]
    fn tabs_and_extra_spaces_around_tokens() {
        let req = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade:\t websocket \t\r\n\
Connection:   keep-alive ,\tupgrade  \r\n\r\n";
        check_prefixes(req, &DetectConfig::default(), Detection::WebSocket);
    }

    #[test]
    fn duplicate_headers_and_upgrade_lists() {
        let req = b"GET / HTTP/1.1\r\nConnection: keep-alive\r\nUpgrade: h2c\r\n\
Connection: Upgrade\r\nUpgrade: foo/2, WebSocket/13\r\n\r\n";
        check_prefixes(req, &DetectConfig::default(), Detection::WebSocket);
    }

    #[test]
    fn bare_lf_line_endings() {
        let req = b"GET / HTTP/1.1\nUpgrade: websocket\nConnection: upgrade\n\n";
        check_prefixes(req, &DetectConfig::default(), Detection::WebSocket);
    }

    #[test]
    fn missing_upgrade_header_is_http() {
        let req = b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\n\r\n";
        check_prefixes(req, &DetectConfig::default(), Detection::Http);
    }

    #[test]
    fn missing_connection_upgrade_is_http() {
        let req =
            b"GET /ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: keep-alive\r\n\r\n";
        check_prefixes(req, &DetectConfig::default(), Detection::Http);
    }

    #[test]
    fn other_upgrade_protocol_is_http() {
        let req = b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: h2c\r\nConnection: Upgrade, HTTP2-Settings\r\n\r\n";
        check_prefixes(req, &DetectConfig::default(), Detection::Http);
        // A token that merely contains the word is not the token.
        let req = b"GET / HTTP/1.1\r\nUpgrade: notwebsocket\r\nConnection: upgrades\r\n\r\n";
        check_prefixes(req, &DetectConfig::default(), Detection::Http);
    }

    #[test]
    fn http_1_0_upgrade_is_http() {
        let req = b"GET / HTTP/1.0\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n";
        check_prefixes(req, &DetectConfig::default(), Detection::Http);
    }

    #[test]
    fn post_with_upgrade_is_http() {
        let req = b"POST /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
Content-Length: 5\r\n\r\nhello";
        // The body is not part of the head: the answer comes as soon as the head ends.
        let head_len = req.len() - 5;
        check_prefixes(&req[..head_len], &DetectConfig::default(), Detection::Http);
        assert_eq!(detect(req, &DetectConfig::default()), Detection::Http);
    }

    #[test]
    fn plain_get_is_http() {
        let req = b"GET /index.html HTTP/1.1\r\nHost: a\r\nAccept: */*\r\n\r\n";
        check_prefixes(req, &DetectConfig::default(), Detection::Http);
    }

    #[test]
    fn pipelined_requests_are_decided_by_the_first() {
        let plain = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        let mut both = plain.clone();
        both.extend_from_slice(WS);
        check_prefixes(&plain, &DetectConfig::default(), Detection::Http);
        for len in plain.len()..=both.len() {
            assert_eq!(
                detect(&both[..len], &DetectConfig::default()),
                Detection::Http
            );
        }
        // An upgrade followed at once by a WebSocket frame: the frame is left for the backend.
        let mut ws_and_frame = WS.to_vec();
        ws_and_frame.extend_from_slice(&[0x82, 0x83, 1, 2, 3, 4, 5, 6, 7]);
        assert_eq!(
            detect(&ws_and_frame, &DetectConfig::default()),
            Detection::WebSocket
        );
    }

    #[test]
    fn ws_path_prefixes_restrict_upgrades() {
        check_prefixes(WS, &ws_paths(&["/ws/"]), Detection::WebSocket);
        check_prefixes(WS, &ws_paths(&["/api", "/ws"]), Detection::WebSocket);
        check_prefixes(WS, &ws_paths(&["/api"]), Detection::Http);
        check_prefixes(WS, &ws_paths(&["/ws/chat/room"]), Detection::Http);
    }

    #[test]
    fn ws_path_prefixes_match_the_path_of_absolute_form_targets() {
        let absolute = |target: &str| {
            format!("GET {target} HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
        };
        let cfg = ws_paths(&["/ws/"]);
        for (target, want) in [
            ("http://example.com/ws/chat", Detection::WebSocket),
            ("HTTPS://example.com:8443/ws/", Detection::WebSocket),
            ("http://user@example.com/ws/x?y", Detection::WebSocket),
            ("http://example.com/other/ws/", Detection::Http),
            ("http://example.com", Detection::Http),
            ("http://example.com?/ws/", Detection::Http),
            // Not a scheme: an origin-form path that merely contains `://`.
            ("/ws/a://b", Detection::WebSocket),
            ("/x/a://b/ws/", Detection::Http),
        ] {
            check_prefixes(absolute(target).as_bytes(), &cfg, want);
        }
        assert_eq!(origin_path("http://example.com"), "/");
        assert_eq!(origin_path("http://example.com/"), "/");
        assert_eq!(origin_path("/ws/"), "/ws/");
        assert_eq!(origin_path("*"), "*");
    }

    #[test]
    fn binary_garbage_is_not_http_at_once() {
        for garbage in [&[0u8, 1, 2, 3][..], &[0xff, 0xfe], b"\x80GET"] {
            assert_eq!(
                detect(&garbage[..1], &DetectConfig::default()),
                Detection::NotHttp
            );
            assert_eq!(
                detect(garbage, &DetectConfig::default()),
                Detection::NotHttp
            );
        }
    }

    #[test]
    fn long_first_word_is_not_http() {
        let word = [b'A'; MAX_METHOD_LEN + 1];
        assert_eq!(
            detect(&word[..MAX_METHOD_LEN], &DetectConfig::default()),
            Detection::NeedMore
        );
        assert_eq!(detect(&word, &DetectConfig::default()), Detection::NotHttp);
    }

    #[test]
    fn tls_client_hello_is_not_http() {
        // Record header (handshake, TLS 1.0 record version, length), then ClientHello.
        let hello = [
            0x16, 0x03, 0x01, 0x00, 0xc4, 0x01, 0x00, 0x00, 0xc0, 0x03, 0x03,
        ];
        for len in 1..=hello.len() {
            assert_eq!(
                detect(&hello[..len], &DetectConfig::default()),
                Detection::NotHttp
            );
        }
    }

    #[test]
    fn http2_preface_is_not_http() {
        let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
        assert_eq!(
            detect(preface, &DetectConfig::default()),
            Detection::NotHttp
        );
    }

    #[test]
    fn malformed_head_is_not_http() {
        let req = b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n";
        assert_eq!(detect(req, &DetectConfig::default()), Detection::NotHttp);
    }

    #[test]
    fn oversize_head_is_too_large() {
        let cfg = DetectConfig {
            max_header_bytes: 64,
            ..DetectConfig::default()
        };
        let mut req = b"GET / HTTP/1.1\r\nX-Fill: ".to_vec();
        req.extend_from_slice(&[b'x'; 100]);
        for len in 0..cfg.max_header_bytes {
            assert_eq!(detect(&req[..len], &cfg), Detection::NeedMore, "{len}");
        }
        for len in cfg.max_header_bytes..=req.len() {
            assert_eq!(detect(&req[..len], &cfg), Detection::TooLarge, "{len}");
        }
        // Complete but over the limit (e.g. received in one read) is too large as well.
        req.extend_from_slice(b"\r\n\r\n");
        assert_eq!(detect(&req, &cfg), Detection::TooLarge);
    }

    #[test]
    fn bytes_past_the_limit_do_not_change_the_verdict() {
        let cfg = DetectConfig {
            max_header_bytes: 64,
            ..DetectConfig::default()
        };
        // Still a valid partial head at the limit; a space in a header name after it.
        let mut req = b"GET / HTTP/1.1\r\nX-Fill: ".to_vec();
        req.resize(cfg.max_header_bytes, b'x');
        assert_eq!(detect(&req, &cfg), Detection::TooLarge);
        req.extend_from_slice(b"\r\nBad Header: x\r\n\r\n");
        assert_eq!(detect(&req, &cfg), Detection::TooLarge);
    }

    #[test]
    fn too_many_headers_is_too_large() {
        let mut req = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..=MAX_HEADERS {
            req.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        assert_eq!(detect(&req, &DetectConfig::default()), Detection::TooLarge);
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let mut req = b"\r\n\r\n".to_vec();
        req.extend_from_slice(WS);
        check_prefixes(&req, &DetectConfig::default(), Detection::WebSocket);
    }
}
