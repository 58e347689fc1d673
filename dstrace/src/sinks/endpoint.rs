//! The metrics endpoint of `dstrace daemon`: HTTP/1.1 (hyper), `GET /metrics`.
//!
//! It runs as root on every host, so it gives a client nothing it did not ask for
//! and cannot be held by one:
//!
//! * it listens on 127.0.0.1 unless told otherwise (`listen`);
//! * it serves `GET` of `/metrics` and `/` only: another method gets 405 (with
//!   `Allow: GET`), another path 404; request bodies are never read;
//! * a request head larger than 8 KiB gets 431 (hyper's read buffer is the
//!   bound);
//! * at most `max-connections` connections are served at once; one more is
//!   answered 503 and closed at once, so a pile of clients is refused, not
//!   queued;
//! * a client must send its request head within `request-timeout` (a slowloris
//!   is cut off), and a connection lasts at most ten times that, idle or not.
//!
//! A scrape asks the daemon's loop for the text through a channel ([`Scrape`]):
//! the loop owns the tracer and renders the metrics between two of its events, so
//! nothing of the tracer is shared between tasks.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming,
    header::{HeaderValue, ALLOW, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot, Semaphore},
};

/// The largest request head read (request line and headers); hyper's smallest
/// read buffer.
pub const MAX_HEAD_BYTES: usize = 8192;

/// The content type of the exposition format.
const METRICS_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A scrape waiting for its text.
pub type Scrape = oneshot::Sender<String>;

/// How many clients, and for how long.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections served at once.
    pub max_connections: u32,
    /// Time to send a request head; a connection lasts at most ten times this.
    pub request_timeout: Duration,
}

/// Listens on `addr`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("cannot listen on {addr} (another daemon running? change `listen` or --listen)")
    })
}

/// Serves connections until the task is dropped; each scrape is sent to `scrapes`.
pub async fn serve(listener: TcpListener, limits: Limits, scrapes: mpsc::Sender<Scrape>) {
    let permits = Arc::new(Semaphore::new(limits.max_connections as usize));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                // Out of file descriptors, most likely: wait, and try again.
                eprintln!("dstrace: warning: metrics endpoint: cannot accept a connection: {err}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        match permits.clone().try_acquire_owned() {
            Ok(permit) => {
                let scrapes = scrapes.clone();
                tokio::spawn(async move {
                    connection(stream, limits, scrapes).await;
                    drop(permit);
                });
            }
            Err(_) => {
                tokio::spawn(refuse(stream));
            }
        }
    }
}

/// Answers 503 to a connection over the limit, without parsing it: the answer,
/// then what the client sent is read and dropped (at most a request head's worth,
/// for at most a second) so that closing does not reset the connection before the
/// client has read the answer.
async fn refuse(mut stream: TcpStream) {
    let answer = b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(answer).await?;
        stream.shutdown().await?;
        let mut sink = vec![0u8; MAX_HEAD_BYTES];
        while stream.read(&mut sink).await? > 0 {}
        std::io::Result::Ok(())
    })
    .await;
}

/// Serves one connection, for a bounded time.
async fn connection(stream: TcpStream, limits: Limits, scrapes: mpsc::Sender<Scrape>) {
    let service = service_fn(move |request| answer(request, scrapes.clone()));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let served = builder.serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(limits.request_timeout * 10, served).await;
}

/// The answer to one request.
async fn answer(
    request: Request<Incoming>,
    scrapes: mpsc::Sender<Scrape>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = request.uri().path();
    if path != "/metrics" && path != "/" {
        return Ok(plain(StatusCode::NOT_FOUND, "not found: the metrics are at /metrics\n"));
    }
    if request.method() != Method::GET {
        let mut response = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET"));
        return Ok(response);
    }
    if path == "/" {
        return Ok(plain(StatusCode::OK, "dstrace daemon: Prometheus metrics at /metrics\n"));
    }
    let (send, receive) = oneshot::channel();
    let text = match scrapes.send(send).await {
        Ok(()) => receive.await.ok(),
        Err(_) => None,
    };
    let Some(text) = text else {
        return Ok(plain(StatusCode::SERVICE_UNAVAILABLE, "dstrace is stopping\n"));
    };
    let mut response = Response::new(Full::new(Bytes::from(text)));
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(METRICS_TYPE));
    Ok(response)
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from_static(text.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}
