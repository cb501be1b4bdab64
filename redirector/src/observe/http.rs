//! The `--metrics ADDR` endpoint: hyper's HTTP/1.1 server on the loader's runtime.
//!
//! Each connection is a task of its own (keep-alive, many at once, up to
//! [`Limits::max_connections`]): a client that stalls delays no scrape. A request head must
//! arrive complete within [`Limits::header_timeout`] of the connection opening or of the
//! previous response (hyper's header-read timer, which also bounds how long a keep-alive
//! connection may sit idle); a connection on which no byte moves for
//! [`Limits::idle_timeout`] while a read or write waits (a client that stops reading its
//! response) is closed. Heads over [`Limits::max_header_bytes`] get 431.
//!
//! Three paths exist (404 elsewhere), for `GET` and `HEAD` (405 otherwise): `/metrics`;
//! `/healthz`, 200 whenever the server answers (the process is alive: Kubernetes'
//! liveness probe); `/readyz`, 200 when the series can be read, 503 with the reason
//! otherwise (the readiness probe: the loader serves only once its programs are attached,
//! and the series are read from its maps at each request).

use std::{convert::Infallible, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    header::{self, HeaderValue},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::Semaphore, task::JoinSet};
use tokio_io_timeout::TimeoutStream;

use super::exposition::Format;

/// The series of one scrape (or why they could not be read: answered with 500).
pub trait Scrape: Fn() -> Result<Registry, String> + Send + Sync + 'static {}
impl<F: Fn() -> Result<Registry, String> + Send + Sync + 'static> Scrape for F {}

/// The server's limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Time to send a complete request head, from the connection's start or the end of
    /// the previous response (so also the keep-alive idle limit).
    pub header_timeout: Duration,
    /// Time a pending read or write may wait without a byte moving.
    pub idle_timeout: Duration,
    /// Longest request head (request line and headers); longer gets 431.
    pub max_header_bytes: usize,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(10),
            max_header_bytes: 8 * 1024,
            max_connections: 512,
        }
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `GET` or `HEAD /metrics`.
    Metrics,
    /// `GET` or `HEAD /healthz`: alive.
    Healthz,
    /// `GET` or `HEAD /readyz`: serving.
    Readyz,
    /// Any other path: 404.
    NotFound,
    /// Another method on a path that exists: 405.
    MethodNotAllowed,
}

/// Routes a request by method and path (the query is ignored).
pub fn route(method: &Method, path: &str) -> Route {
    let found = match path {
        "/metrics" => Route::Metrics,
        "/healthz" => Route::Healthz,
        "/readyz" => Route::Readyz,
        _ => return Route::NotFound,
    };
    match *method {
        Method::GET | Method::HEAD => found,
        _ => Route::MethodNotAllowed,
    }
}

/// A plain-text response.
fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_owned())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The response to `request`; `scrape` is called only for `/metrics`.
pub fn respond<B>(request: &Request<B>, scrape: &impl Scrape) -> Response<Full<Bytes>> {
    match route(request.method(), request.uri().path()) {
        Route::NotFound => text(
            StatusCode::NOT_FOUND,
            "not found; try /metrics, /healthz or /readyz\n",
        ),
        Route::Healthz => text(StatusCode::OK, "ok\n"),
        Route::Readyz => match scrape() {
            Ok(_) => text(StatusCode::OK, "ready\n"),
            Err(e) => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("not ready: {e}\n"),
            ),
        },
        Route::MethodNotAllowed => {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        }
        Route::Metrics => {
            let accept = request
                .headers()
                .get(header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let format = Format::negotiate(accept);
            let body = scrape().and_then(|registry| {
                format
                    .encode(&registry)
                    .map_err(|_| "encoding the metrics failed".to_owned())
            });
            match body {
                Ok(body) => {
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    let headers = response.headers_mut();
                    headers.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(format.content_type()),
                    );
                    headers.insert(header::VARY, HeaderValue::from_static("Accept"));
                    response
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, &format!("{e}\n")),
            }
        }
    }
}

/// Serves `/metrics` (and `/healthz`, `/readyz`) with the series `scrape` reads at each request (the loader's maps
/// and/or the sniffing proxy's counters), within the default [`Limits`]; runs until the
/// future is dropped, which closes every connection.
pub async fn serve(listener: TcpListener, scrape: impl Scrape) {
    serve_with(listener, scrape, Limits::default()).await
}

/// [`serve`] within `limits`.
pub async fn serve_with(listener: TcpListener, scrape: impl Scrape, limits: Limits) {
    let scrape = Arc::new(scrape);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .max_header_size(limits.max_header_bytes)
        .keep_alive(true);
    // Dropped with this future: aborts the connections still open.
    let mut connections = JoinSet::new();
    loop {
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
            return; // never closed
        };
        let (stream, peer) = match listener.accept().await {
            Ok(conn) => conn,
            Err(e) => {
                // E.g. out of file descriptors: back off instead of spinning.
                log::warn!("metrics: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        let mut stream = TimeoutStream::new(stream);
        stream.set_read_timeout(Some(limits.idle_timeout));
        stream.set_write_timeout(Some(limits.idle_timeout));
        let io = TokioIo::new(Box::pin(stream));
        let scrape = Arc::clone(&scrape);
        let service = service_fn(move |request: Request<hyper::body::Incoming>| {
            let response = respond(&request, &*scrape);
            async move { Ok::<_, Infallible>(response) }
        });
        let connection = http.serve_connection(io, service);
        connections.spawn(async move {
            if let Err(e) = connection.await {
                log::debug!("metrics: {peer}: {e}");
            }
            drop(slot);
        });
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{ErrorKind, Read, Write},
        net::{SocketAddr, TcpStream},
        time::Instant,
    };

    use super::*;

    /// [`serve_with`] on 127.0.0.1 in a runtime of its own (stopped when dropped).
    fn spawn_server(limits: Limits) -> (SocketAddr, tokio::runtime::Runtime) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        runtime.spawn(serve_with(listener, registry, limits));
        (addr, runtime)
    }

    /// Reads `stream` until the server closes it (true) or `limit` passes (false).
    fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            stream.set_read_timeout(Some(left)).unwrap();
            match stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }

    #[test]
    fn a_connection_where_nothing_moves_is_closed_after_the_idle_timeout() {
        let (addr, _runtime) = spawn_server(Limits {
            header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_millis(300),
            ..Limits::default()
        });
        let mut idle = TcpStream::connect(addr).unwrap();
        assert!(closed_within(&mut idle, Duration::from_secs(5)));
    }

    #[test]
    fn a_client_that_stops_reading_is_cut_off() {
        let (addr, _runtime) = spawn_server(Limits {
            header_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_millis(300),
            ..Limits::default()
        });
        let mut greedy = TcpStream::connect(addr).unwrap();
        greedy.set_nonblocking(true).unwrap();
        // Pipelined requests, never reading: the server's writes stall once the socket
        // buffers are full (bounded: stop at the first write that would block).
        let request = b"GET /metrics HTTP/1.1\r\nHost: m\r\n\r\n";
        for _ in 0..1_000_000 {
            match greedy.write(request) {
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("writing: {e}"),
            }
        }
        std::thread::sleep(Duration::from_secs(1));
        greedy.set_nonblocking(false).unwrap();
        assert!(closed_within(&mut greedy, Duration::from_secs(5)));
    }

    #[test]
    fn a_slow_request_head_is_cut_at_the_header_timeout() {
        let (addr, _runtime) = spawn_server(Limits {
            header_timeout: Duration::from_millis(300),
            ..Limits::default()
        });
        let mut slow = TcpStream::connect(addr).unwrap();
        slow.write_all(b"GET /metr").unwrap();
        assert!(closed_within(&mut slow, Duration::from_secs(5)));
    }

    fn request(method: Method, uri: &str, accept: Option<&str>) -> Request<()> {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(accept) = accept {
            builder = builder.header(header::ACCEPT, accept);
        }
        builder.body(()).unwrap()
    }

    fn registry() -> Result<Registry, String> {
        let mut registry = Registry::default();
        let counter: prometheus_client::metrics::counter::Counter = Default::default();
        counter.inc();
        registry.register("demo", "A demo", counter);
        Ok(registry)
    }

    fn content_type(response: &Response<Full<Bytes>>) -> &str {
        response.headers()[header::CONTENT_TYPE].to_str().unwrap()
    }

    #[test]
    fn routes_by_method_and_path() {
        assert_eq!(route(&Method::GET, "/metrics"), Route::Metrics);
        assert_eq!(route(&Method::HEAD, "/metrics"), Route::Metrics);
        assert_eq!(route(&Method::GET, "/"), Route::NotFound);
        assert_eq!(route(&Method::GET, "/metricsx"), Route::NotFound);
        assert_eq!(route(&Method::POST, "/metrics"), Route::MethodNotAllowed);
        assert_eq!(route(&Method::DELETE, "/x"), Route::NotFound);
        assert_eq!(route(&Method::GET, "/healthz"), Route::Healthz);
        assert_eq!(route(&Method::HEAD, "/readyz"), Route::Readyz);
        assert_eq!(route(&Method::POST, "/readyz"), Route::MethodNotAllowed);
        assert_eq!(route(&Method::GET, "/readyz/x"), Route::NotFound);
    }

    #[test]
    fn probes_answer_alive_and_ready() {
        let alive = respond(
            &request(Method::GET, "/healthz", None),
            &|| -> Result<Registry, String> { unreachable!("liveness reads nothing") },
        );
        assert_eq!(alive.status(), StatusCode::OK);
        let ready = respond(&request(Method::GET, "/readyz", None), &registry);
        assert_eq!(ready.status(), StatusCode::OK);
        let not_ready = respond(&request(Method::GET, "/readyz", None), &|| {
            Err("maps gone".to_owned())
        });
        assert_eq!(not_ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    }

    #[test]
    fn probes_are_served_over_http() {
        let (addr, _runtime) = spawn_server(Limits::default());
        for (path, status) in [
            ("/healthz", "HTTP/1.1 200"),
            ("/readyz", "HTTP/1.1 200"),
            ("/nope", "HTTP/1.1 404"),
        ] {
            let mut conn = TcpStream::connect(addr).unwrap();
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            write!(
                conn,
                "GET {path} HTTP/1.1\r\nHost: m\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut response = String::new();
            conn.read_to_string(&mut response).unwrap();
            assert!(response.starts_with(status), "{path}: {response}");
        }
    }

    #[test]
    fn responses_carry_status_and_type() {
        let ok = respond(&request(Method::GET, "/metrics?x=1", None), &registry);
        assert_eq!(ok.status(), StatusCode::OK);
        assert_eq!(
            content_type(&ok),
            "text/plain; version=0.0.4; charset=utf-8"
        );
        let om = respond(
            &request(
                Method::GET,
                "/metrics",
                Some("application/openmetrics-text"),
            ),
            &registry,
        );
        assert_eq!(
            content_type(&om),
            "application/openmetrics-text; version=1.0.0; charset=utf-8"
        );
        let na = respond(
            &request(Method::PUT, "/metrics", None),
            &|| -> Result<Registry, String> { unreachable!() },
        );
        assert_eq!(na.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(na.headers()[header::ALLOW], "GET, HEAD");
        let nf = respond(
            &request(Method::GET, "/", None),
            &|| -> Result<Registry, String> { unreachable!() },
        );
        assert_eq!(nf.status(), StatusCode::NOT_FOUND);
        let err = respond(&request(Method::GET, "/metrics", None), &|| {
            Err("boom".to_owned())
        });
        assert_eq!(err.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
