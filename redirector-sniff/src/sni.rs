//! TLS detection: the server name (SNI) of a ClientHello, read without decrypting anything.
//!
//! Like [`crate::detect`], one pure function over the bytes received so far. The
//! ClientHello may span several TLS records (large key shares do); their fragments are
//! joined before parsing. Layouts are from RFC 8446 §5.1 (records), §4.1.2 (ClientHello)
//! and RFC 6066 §3 (server_name).

use crate::option_value::InvalidValue;

/// TLS record content type of handshake messages.
const CONTENT_HANDSHAKE: u8 = 22;
/// Handshake message type of a ClientHello.
const HANDSHAKE_CLIENT_HELLO: u8 = 1;
/// Extension type of server_name.
const EXTENSION_SERVER_NAME: u16 = 0;
/// server_name entry type of a DNS host name.
const NAME_TYPE_HOST_NAME: u8 = 0;
/// Record header: type, version (2), length (2).
const RECORD_HEADER_LEN: usize = 5;
/// Largest record payload a sender may use (2^14 plus the allowed expansion).
const MAX_RECORD_LEN: usize = (1 << 14) + 2048;

/// What [`detect_sni`] decides from the start of a connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SniDetection {
    /// The ClientHello is not complete yet: read more.
    NeedMore,
    /// A ClientHello naming this server (lower-cased).
    ServerName(String),
    /// A complete ClientHello without a host name (e.g. a client connecting by IP).
    NoServerName,
    /// Not a TLS ClientHello, or a malformed one.
    NotTls,
    /// The ClientHello does not fit in `max_bytes`.
    TooLarge,
}

/// Classifies `buf`, the bytes received so far, reading at most `max_bytes` of it.
pub fn detect_sni(buf: &[u8], max_bytes: usize) -> SniDetection {
    // Bytes past the limit are never looked at, so the verdict cannot depend on how much
    // more than the limit one read happened to bring.
    let buf = &buf[..buf.len().min(max_bytes)];
    match client_hello(buf) {
        Reassembly::NeedMore if buf.len() >= max_bytes => SniDetection::TooLarge,
        Reassembly::NeedMore => SniDetection::NeedMore,
        Reassembly::Invalid => SniDetection::NotTls,
        Reassembly::Complete { used, .. } if used > max_bytes => SniDetection::TooLarge,
        Reassembly::Complete { body, .. } => match server_name(&body) {
            Ok(Some(name)) => SniDetection::ServerName(name),
            Ok(None) => SniDetection::NoServerName,
            Err(Malformed) => SniDetection::NotTls,
        },
    }
}

/// Progress joining the ClientHello out of its records.
enum Reassembly {
    NeedMore,
    Invalid,
    /// The ClientHello body (after its 4-byte header), and how many bytes of `buf` held it.
    Complete {
        body: Vec<u8>,
        used: usize,
    },
}

/// Joins handshake record fragments until the first handshake message, a ClientHello,
/// is complete.
fn client_hello(buf: &[u8]) -> Reassembly {
    let mut message = Vec::new();
    let mut pos = 0;
    loop {
        // Check each header byte as soon as it arrives, so non-TLS is refused early.
        let header = &buf[pos..buf.len().min(pos + RECORD_HEADER_LEN)];
        if header.first().is_some_and(|&t| t != CONTENT_HANDSHAKE)
            || header.get(1).is_some_and(|&major| major != 3)
        {
            return Reassembly::Invalid;
        }
        if header.len() < RECORD_HEADER_LEN {
            return Reassembly::NeedMore;
        }
        let record_len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if record_len == 0 || record_len > MAX_RECORD_LEN {
            return Reassembly::Invalid;
        }
        let start = pos + RECORD_HEADER_LEN;
        let end = start + record_len;
        let available = &buf[start..buf.len().min(end)];
        // The first fragment byte must say ClientHello.
        if message.is_empty()
            && available
                .first()
                .is_some_and(|&t| t != HANDSHAKE_CLIENT_HELLO)
        {
            return Reassembly::Invalid;
        }
        message.extend_from_slice(available);
        if message.len() >= 4 {
            let body_len = usize::from(message[1]) << 16
                | usize::from(message[2]) << 8
                | usize::from(message[3]);
            if message.len() >= 4 + body_len {
                let used = start + available.len() - (message.len() - 4 - body_len);
                message.truncate(4 + body_len);
                message.drain(..4);
                return Reassembly::Complete {
                    body: message,
                    used,
                };
            }
        }
        if buf.len() < end {
            return Reassembly::NeedMore;
        }
        pos = end;
    }
}

/// A ClientHello that does not parse.
#[derive(Debug)]
struct Malformed;

/// The host name of a ClientHello body, `None` without a server_name extension.
fn server_name(body: &[u8]) -> Result<Option<String>, Malformed> {
    let mut r = Reader(body);
    r.take(2)?; // legacy_version
    r.take(32)?; // random
    let session_id_len = r.u8()?;
    r.take(session_id_len.into())?;
    let suites_len = r.u16()?;
    r.take(suites_len.into())?;
    let compression_len = r.u8()?;
    r.take(compression_len.into())?;
    if r.0.is_empty() {
        return Ok(None); // No extensions at all (old clients).
    }
    let extensions_len = r.u16()?;
    let mut extensions = Reader(r.take(extensions_len.into())?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let len = extensions.u16()?;
        let data = extensions.take(len.into())?;
        if kind == EXTENSION_SERVER_NAME {
            return host_name(data).map(Some);
        }
    }
    Ok(None)
}

/// The host_name entry of a server_name extension, lower-cased.
fn host_name(data: &[u8]) -> Result<String, Malformed> {
    let mut r = Reader(data);
    let list_len = r.u16()?;
    let mut list = Reader(r.take(list_len.into())?);
    while !list.0.is_empty() {
        let name_type = list.u8()?;
        let len = list.u16()?;
        let name = list.take(len.into())?;
        if name_type == NAME_TYPE_HOST_NAME {
            let name = std::str::from_utf8(name).map_err(|_| Malformed)?;
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(Malformed);
            }
            return Ok(name.to_ascii_lowercase());
        }
    }
    Err(Malformed)
}

/// A cursor over bytes whose reads fail (rather than panic) past the end.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if self.0.len() < n {
            return Err(Malformed);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self) -> Result<u8, Malformed> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Malformed> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
}

/// A `--ws-sni` pattern: an exact host name, or `*.DOMAIN` for any name under DOMAIN.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SniPattern(String);

impl std::str::FromStr for SniPattern {
    type Err = InvalidValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let name = s.strip_prefix("*.").unwrap_or(s);
        let valid = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
            && !name.starts_with('.')
            && !name.ends_with('.');
        if valid {
            Ok(SniPattern(s.to_ascii_lowercase()))
        } else {
            Err(InvalidValue {
                option: "ws-sni",
                value: s.to_string(),
                expected: "a host name such as ws.example.com or *.example.com".to_string(),
            })
        }
    }
}

impl SniPattern {
    /// Whether `name` (lower-case) matches: equal, or for `*.DOMAIN` a name ending in
    /// `.DOMAIN` (any number of labels in front).
    pub fn matches(&self, name: &str) -> bool {
        match self.0.strip_prefix("*.") {
            Some(domain) => name
                .strip_suffix(domain)
                .is_some_and(|front| front.len() > 1 && front.ends_with('.')),
            None => self.0 == name,
        }
    }
}

/// ClientHello builders shared by this module's tests and the property tests.
#[cfg(test)]
pub(crate) mod test_support {
    use super::*;

    /// A ClientHello record (TLS 1.2 shape, as TLS 1.3 clients send it) with `sni` if
    /// given and `padding` bytes of an unknown extension before it.
    pub(crate) fn client_hello_record(sni: Option<&str>, padding: usize) -> Vec<u8> {
        let mut extensions = Vec::new();
        // An unrelated extension first (supported_groups-like), so SNI is not first.
        extensions.extend_from_slice(&0x000au16.to_be_bytes());
        extensions.extend_from_slice(&(padding as u16).to_be_bytes());
        extensions.extend(std::iter::repeat_n(0x17, padding));
        if let Some(name) = sni {
            let name = name.as_bytes();
            let entry_len = 1 + 2 + name.len();
            extensions.extend_from_slice(&EXTENSION_SERVER_NAME.to_be_bytes());
            extensions.extend_from_slice(&((2 + entry_len) as u16).to_be_bytes());
            extensions.extend_from_slice(&(entry_len as u16).to_be_bytes());
            extensions.push(NAME_TYPE_HOST_NAME);
            extensions.extend_from_slice(&(name.len() as u16).to_be_bytes());
            extensions.extend_from_slice(name);
        }
        let mut body = vec![3, 3]; // legacy_version TLS 1.2
        body.extend_from_slice(&[0x42; 32]); // random
        body.push(32); // session id
        body.extend_from_slice(&[0x99; 32]);
        body.extend_from_slice(&4u16.to_be_bytes()); // two cipher suites
        body.extend_from_slice(&[0x13, 0x01, 0x13, 0x02]);
        body.extend_from_slice(&[1, 0]); // compression: null
        body.extend_from_slice(&(extensions.len() as u16).to_be_bytes());
        body.extend_from_slice(&extensions);
        let mut handshake = vec![HANDSHAKE_CLIENT_HELLO];
        handshake.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        handshake.extend_from_slice(&body);
        records(&handshake, usize::MAX)
    }

    /// The same ClientHello with its handshake split into records of at most `fragment`
    /// bytes.
    pub(crate) fn client_hello_split(
        sni: Option<&str>,
        padding: usize,
        fragment: usize,
    ) -> Vec<u8> {
        records(
            &client_hello_record(sni, padding)[RECORD_HEADER_LEN..],
            fragment,
        )
    }

    /// Wraps `handshake` in records of at most `fragment` bytes each.
    pub(crate) fn records(handshake: &[u8], fragment: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for chunk in handshake.chunks(fragment.min(MAX_RECORD_LEN)) {
            out.extend_from_slice(&[CONTENT_HANDSHAKE, 3, 1]);
            out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::{test_support::*, *};

    fn check_prefixes(hello: &[u8], full: SniDetection) {
        for len in 0..hello.len() {
            assert_eq!(
                detect_sni(&hello[..len], 1 << 16),
                SniDetection::NeedMore,
                "prefix of {len} bytes"
            );
        }
        assert_eq!(detect_sni(hello, 1 << 16), full);
    }

    #[test]
    fn server_name_every_prefix() {
        let hello = client_hello_record(Some("WS.Example.com"), 20);
        check_prefixes(&hello, SniDetection::ServerName("ws.example.com".into()));
    }

    #[test]
    fn no_server_name() {
        check_prefixes(&client_hello_record(None, 20), SniDetection::NoServerName);
    }

    #[test]
    fn client_hello_split_over_records() {
        let one = client_hello_record(Some("a.example.com"), 3000);
        let handshake = &one[RECORD_HEADER_LEN..];
        let split = records(handshake, 700);
        assert!(
            split.len() >= one.len() + 4 * RECORD_HEADER_LEN,
            "at least 5 records"
        );
        check_prefixes(&split, SniDetection::ServerName("a.example.com".into()));
    }

    #[test]
    fn bytes_after_the_hello_do_not_matter() {
        let mut hello = client_hello_record(Some("x.test"), 0);
        hello.extend_from_slice(&[0x14, 3, 3, 0, 1, 1]);
        assert_eq!(
            detect_sni(&hello, 1 << 16),
            SniDetection::ServerName("x.test".into())
        );
    }

    #[test]
    fn http_is_not_tls_at_once() {
        assert_eq!(detect_sni(b"G", 1 << 16), SniDetection::NotTls);
        assert_eq!(
            detect_sni(b"GET / HTTP/1.1\r\n", 1 << 16),
            SniDetection::NotTls
        );
        // A TLS record that is not a handshake, and a handshake that is not a ClientHello.
        assert_eq!(
            detect_sni(&[0x17, 3, 3, 0, 5], 1 << 16),
            SniDetection::NotTls
        );
        assert_eq!(
            detect_sni(&[0x16, 3, 3, 0, 5, 2], 1 << 16),
            SniDetection::NotTls
        );
        assert_eq!(detect_sni(&[0x16, 2], 1 << 16), SniDetection::NotTls);
    }

    #[test]
    fn truncated_hello_body_is_not_tls() {
        // Handshake length says 10 bytes; a ClientHello cannot be that short.
        let mut hello = vec![
            CONTENT_HANDSHAKE,
            3,
            1,
            0,
            14,
            HANDSHAKE_CLIENT_HELLO,
            0,
            0,
            10,
        ];
        hello.extend_from_slice(&[3; 10]);
        assert_eq!(detect_sni(&hello, 1 << 16), SniDetection::NotTls);
    }

    #[test]
    fn oversize_hello_is_too_large() {
        let hello = client_hello_record(Some("big.test"), 5000);
        assert_eq!(detect_sni(&hello[..1000], 1000), SniDetection::TooLarge);
        assert_eq!(detect_sni(&hello, 1000), SniDetection::TooLarge);
        assert_eq!(detect_sni(&hello[..999], 1000), SniDetection::NeedMore);
    }

    #[test]
    fn bytes_past_the_limit_do_not_change_the_verdict() {
        let hello = client_hello_record(Some("big.test"), 500);
        // Re-split into records of 50 bytes: record headers at 0, 55, 110, ...
        let mut split = records(&hello[RECORD_HEADER_LEN..], 50);
        assert_eq!(detect_sni(&split[..100], 100), SniDetection::TooLarge);
        split[110] = 0x17; // application data: not TLS, but past the limit
        assert_eq!(detect_sni(&split, 100), SniDetection::TooLarge);
        assert_eq!(detect_sni(&split, 200), SniDetection::NotTls);
    }

    #[test]
    fn patterns() {
        let exact: SniPattern = "WS.example.com".parse().unwrap();
        assert!(exact.matches("ws.example.com"));
        assert!(!exact.matches("a.ws.example.com"));
        let wild: SniPattern = "*.example.com".parse().unwrap();
        assert!(wild.matches("ws.example.com"));
        assert!(wild.matches("a.b.example.com"));
        assert!(!wild.matches("example.com"));
        assert!(!wild.matches("badexample.com"));
        for bad in ["", "*.", "a b", ".example.com", "*example.com", "ws/x"] {
            assert!(bad.parse::<SniPattern>().is_err(), "{bad}");
        }
    }
}
