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
//! * at most `max-connections` connections are served at once. When all are
//!   taken, a new connection takes the slot of the one that has waited longest
//!   for a request head (a slow client, or an idle keep-alive connection), which
//!   is closed; only when every slot is answering a request is the new one
//!   answered 503 and closed at once, so a pile of clients is refused, not
//!   queued;
//! * a client must send its request head within `request-timeout`, and a
//!   connection lasts at most ten times that, idle or not.
//!
//! Why the slot is taken from the slowest rather than the newcomer refused:
//! timeouts alone do not keep a slowloris out. Clients that send their head a
//! byte at a time and reconnect as soon as they are cut off hold every slot
//! again within microseconds, however short the timeout (8 of them left 0 of 30
//! scrapes through with a 200 ms timeout); a limit per address does not either
//! (8 clients from 8 loopback addresses, or from the scraper's own address, left
//! 0 of 30). A scraper sends its head at once, so it is the newest of the
//! connections waiting for one and the last to be cut off; and the accepting
//! loop lets each connection accepted read its head before it accepts the next,
//! so that a burst of reconnections cannot cut a scraper off before it is read.
//! Eight slow clients, from one address or eight, leave 30 of 30 scrapes through
//! (`tests/tests/hostile_input.rs`); 64 of them from 16 addresses, reconnecting
//! some 5,000 times a second, 27 of 30 (without the yield: 3 of 30).
//!
//! A scrape asks the daemon's loop for the text through a channel ([`Scrape`]):
//! the loop owns the tracer and renders the metrics between two of its events, so
//! nothing of the tracer is shared between tasks.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

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
    sync::{mpsc, oneshot},
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

/// The connections served: each waits for a request head or answers a request.
struct Slots {
    /// `max-connections`.
    max: usize,
    /// The id of the last connection given a slot.
    last: u64,
    open: Vec<Slot>,
}

/// One connection served.
struct Slot {
    id: u64,
    /// Since when it waits for a request head (since it was accepted, or since
    /// its last answer); `None` while it answers a request.
    waiting_since: Option<Instant>,
    /// Dropped to cut the connection off.
    _cut: oneshot::Sender<()>,
}

/// The slots, shared by the accepting loop and the connections' tasks.
type Shared = Arc<Mutex<Slots>>;

impl Slots {
    /// A slot for a new connection, and what says when it is cut off: a free
    /// slot, else the slot of the connection that has waited longest for a
    /// request head (cut off); `None` when every connection is answering.
    fn take(&mut self) -> Option<(u64, oneshot::Receiver<()>)> {
        if self.open.len() >= self.max {
            let slowest = self
                .open
                .iter()
                .enumerate()
                .filter_map(|(index, slot)| slot.waiting_since.map(|since| (since, index)))
                .min()?
                .1;
            self.open.swap_remove(slowest);
        }
        let (cut, cut_off) = oneshot::channel();
        self.last += 1;
        self.open.push(Slot { id: self.last, waiting_since: Some(Instant::now()), _cut: cut });
        Some((self.last, cut_off))
    }

    /// Marks connection `id` as answering a request (`false`) or waiting for the
    /// next head (`true`).
    fn set_waiting(&mut self, id: u64, waiting: bool) {
        if let Some(slot) = self.open.iter_mut().find(|slot| slot.id == id) {
            slot.waiting_since = waiting.then(Instant::now);
        }
    }

    /// Frees the slot of connection `id`, if it still has one.
    fn free(&mut self, id: u64) {
        self.open.retain(|slot| slot.id != id);
    }
}

/// The slots, locked (no lock is held across an await, so a poisoned lock only
/// means a panic elsewhere left the list as it was).
fn lock(slots: &Shared) -> MutexGuard<'_, Slots> {
    slots.lock().unwrap_or_else(PoisonError::into_inner)
}

/// While a request is answered: its connection is not cut off for a newcomer.
struct Answering {
    slots: Shared,
    id: u64,
}

impl Answering {
    fn start(slots: Shared, id: u64) -> Answering {
        lock(&slots).set_waiting(id, false);
        Answering { slots, id }
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        lock(&self.slots).set_waiting(self.id, true);
    }
}

/// Serves connections until the task is dropped; each scrape is sent to `scrapes`.
pub async fn serve(listener: TcpListener, limits: Limits, scrapes: mpsc::Sender<Scrape>) {
    let slots: Shared =
        Arc::new(Mutex::new(Slots { max: limits.max_connections as usize, last: 0, open: Vec::new() }));
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
        let taken = lock(&slots).take();
        match taken {
            Some((id, cut_off)) => {
                let scrapes = scrapes.clone();
                let slots = slots.clone();
                tokio::spawn(async move {
                    connection(stream, limits, scrapes, &slots, id, cut_off).await;
                    lock(&slots).free(id);
                });
            }
            None => {
                tokio::spawn(refuse(stream));
            }
        }
        // Let the connection just accepted read its head before the next one is
        // accepted: a scraper's head is there already, and once it is answering
        // no newcomer takes its slot, however fast slow clients reconnect.
        tokio::task::yield_now().await;
    }
}

/// Answers 503 to a connection when every slot is answering a request, without
/// parsing it: the answer, then what the client sent is read and dropped (at most a request head's worth,
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

/// Serves one connection, for a bounded time, or until its slot is given to a
/// newcomer (`cut_off`).
async fn connection(
    stream: TcpStream,
    limits: Limits,
    scrapes: mpsc::Sender<Scrape>,
    slots: &Shared,
    id: u64,
    cut_off: oneshot::Receiver<()>,
) {
    let service = service_fn(|request| {
        let answering = Answering::start(slots.clone(), id);
        let scrapes = scrapes.clone();
        async move {
            let answer = answer(request, scrapes).await;
            drop(answering);
            answer
        }
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.request_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let served = builder.serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = tokio::time::timeout(limits.request_timeout.saturating_mul(10), served) => {}
        _ = cut_off => {}
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the limit, a newcomer takes the slot of the connection waiting
    /// longest for a head; one answering a request keeps its slot; when all are
    /// answering, the newcomer is refused.
    #[test]
    fn a_newcomer_takes_the_slot_of_the_longest_waiting() {
        let mut slots = Slots { max: 3, last: 0, open: Vec::new() };
        let (first, mut first_cut) = slots.take().unwrap();
        let (second, mut second_cut) = slots.take().unwrap();
        let (third, mut third_cut) = slots.take().unwrap();
        slots.set_waiting(first, false);
        slots.set_waiting(third, true);
        // `first` answers; `second` has waited longer than `third`.
        let (fourth, _fourth_cut) = slots.take().unwrap();
        assert_eq!(
            second_cut.try_recv(),
            Err(oneshot::error::TryRecvError::Closed),
            "the longest waiting is cut off"
        );
        assert_eq!(first_cut.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        assert_eq!(third_cut.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        slots.set_waiting(third, false);
        slots.set_waiting(fourth, false);
        assert!(slots.take().is_none(), "every slot answering: refused");
        slots.free(second);
        assert!(slots.take().is_none(), "freeing a slot already taken frees nothing");
        slots.free(first);
        assert!(slots.take().is_some());
        assert_eq!(slots.open.len(), 3);
    }
}
