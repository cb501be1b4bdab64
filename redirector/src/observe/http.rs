//! The `--metrics ADDR` endpoint: a minimal HTTP/1.1 server on the loader's runtime.
//!
//! One request per connection (`Connection: close`), connections served one at a time:
//! a scrape is a few hundred microseconds of map reads, and a client that stalls is cut
//! off after [`REQUEST_TIMEOUT`]. Only `GET /metrics` (and `HEAD`) is served.

use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use super::prometheus;

/// Longest request head accepted.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its request and read the response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What to answer to a request head (everything up to the blank line).
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (`head_only` for `HEAD`).
    Metrics {
        /// Send headers only.
        head_only: bool,
    },
    /// Any other path: 404.
    NotFound,
    /// Another method on `/metrics`: 405.
    MethodNotAllowed,
    /// Not an HTTP/1.x request line: 400.
    BadRequest,
}

/// Routes a request head.
pub fn route(head: &[u8]) -> Route {
    let Ok(head) = std::str::from_utf8(head) else {
        return Route::BadRequest;
    };
    let line = head.lines().next().unwrap_or_default();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") {
        return Route::BadRequest;
    }
    let path = target.split('?').next().unwrap_or_default();
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics { head_only: false },
        ("HEAD", "/metrics") => Route::Metrics { head_only: true },
        (_, "/metrics") => Route::MethodNotAllowed,
        _ => Route::NotFound,
    }
}

/// A complete response with `Content-Length` and `Connection: close`.
pub fn response(status: &str, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        out.push_str("Allow: GET, HEAD\r\n");
    }
    out.push_str("\r\n");
    if !head_only {
        out.push_str(body);
    }
    out.into_bytes()
}

/// The response to `head`; `render` produces the metrics body (or an error text).
pub fn respond(head: &[u8], render: impl FnOnce() -> Result<String, String>) -> Vec<u8> {
    const TEXT: &str = "text/plain; charset=utf-8";
    match route(head) {
        Route::Metrics { head_only } => match render() {
            Ok(body) => response("200 OK", prometheus::CONTENT_TYPE, &body, head_only),
            Err(e) => response("500 Internal Server Error", TEXT, &format!("{e}\n"), false),
        },
        Route::NotFound => response("404 Not Found", TEXT, "not found; try /metrics\n", false),
        Route::MethodNotAllowed => response("405 Method Not Allowed", TEXT, "use GET\n", false),
        Route::BadRequest => response("400 Bad Request", TEXT, "bad request\n", false),
    }
}

/// Index just past the blank line that ends a request head, if it is complete.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
        .or_else(|| buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2))
}

/// Serves `/metrics` with the body `render` produces at each scrape (the loader's maps
/// and/or the sniffing proxy's counters); runs until the future is dropped.
pub async fn serve(listener: TcpListener, render: impl Fn() -> Result<String, String>) {
    loop {
        let (mut stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                log::warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let exchange = async {
            let mut buf = Vec::with_capacity(1024);
            let mut chunk = [0u8; 1024];
            let end = loop {
                if let Some(end) = head_end(&buf) {
                    break end;
                }
                if buf.len() > MAX_REQUEST {
                    break buf.len();
                }
                let n = stream.read(&mut chunk).await?;
                if n == 0 {
                    break buf.len();
                }
                buf.extend_from_slice(&chunk[..n]);
            };
            let reply = respond(&buf[..end], &render);
            stream.write_all(&reply).await?;
            stream.shutdown().await
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::debug!("metrics: {peer}: {e}"),
            Err(_) => log::debug!("metrics: {peer}: timed out"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(bytes: Vec<u8>) -> String {
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn routes_by_method_and_path() {
        let r = |s: &str| route(s.as_bytes());
        assert_eq!(
            r("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            r("GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            r("HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(r("GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(r("GET /metricsx HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(r("POST /metrics HTTP/1.1\r\n\r\n"), Route::MethodNotAllowed);
        assert_eq!(r("GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(r("GET /metrics SPDY/3\r\n\r\n"), Route::BadRequest);
        assert_eq!(r(""), Route::BadRequest);
        assert_eq!(route(&[0xff, 0xfe]), Route::BadRequest);
    }

    #[test]
    fn responses_have_length_and_close() {
        let ok = text(respond(b"GET /metrics HTTP/1.1\r\n\r\n", || {
            Ok("a 1\n".into())
        }));
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains("Content-Length: 4\r\n"), "{ok}");
        assert!(ok.contains("Connection: close\r\n"), "{ok}");
        assert!(ok.contains(prometheus::CONTENT_TYPE), "{ok}");
        assert!(ok.ends_with("\r\n\r\na 1\n"), "{ok}");

        let head = text(respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", || {
            Ok("a 1\n".into())
        }));
        assert!(head.contains("Content-Length: 4\r\n") && head.ends_with("\r\n\r\n"));

        let nf = text(respond(b"GET /x HTTP/1.1\r\n\r\n", || unreachable!()));
        assert!(nf.starts_with("HTTP/1.1 404 Not Found\r\n"), "{nf}");
        let na = text(respond(b"PUT /metrics HTTP/1.1\r\n\r\n", || unreachable!()));
        assert!(na.starts_with("HTTP/1.1 405") && na.contains("Allow: GET, HEAD"));
        let err = text(respond(b"GET /metrics HTTP/1.1\r\n\r\n", || {
            Err("boom".into())
        }));
        assert!(
            err.starts_with("HTTP/1.1 500") && err.ends_with("boom\n"),
            "{err}"
        );
    }

    #[test]
    fn head_end_accepts_crlf_and_lf() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
