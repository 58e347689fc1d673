//! A minimal HTTP/1.0 client over a loopback socket, for the tests and the bench
//! that talk to `dstrace daemon`'s metrics endpoint and to Prometheus: one
//! request, read to the end, every step under a timeout.

use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

/// An answer.
#[derive(Debug)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The head (status line and headers), as text.
    pub head: String,
    /// The body.
    pub body: String,
}

/// Sends `raw` (a whole request) and reads the answer to the end.
pub fn exchange(addr: SocketAddr, raw: &[u8], timeout: Duration) -> io::Result<Response> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(raw)?;
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes)?;
    parse(&bytes)
}

/// Parses an answer.
pub fn parse(bytes: &[u8]) -> io::Result<Response> {
    let text = String::from_utf8_lossy(bytes);
    let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("not an HTTP answer: {text:?}"));
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head.split_whitespace().nth(1).and_then(|code| code.parse().ok()).ok_or_else(bad)?;
    Ok(Response { status, head: head.to_owned(), body: body.to_owned() })
}

/// `GET path` (HTTP/1.0: the server closes the connection after answering).
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<Response> {
    exchange(addr, format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes(), timeout)
}

/// A loopback port free now (another process may take it before it is used:
/// unlikely enough for tests).
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a loopback port");
    listener.local_addr().expect("local address").port()
}

/// Percent-encodes a query parameter.
pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                (byte as char).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}
