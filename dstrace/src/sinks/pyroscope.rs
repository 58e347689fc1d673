//! Pushing profiles of blocked time to a Pyroscope server (`pyroscope-url`).
//!
//! Every `pyroscope-interval`, `dstrace daemon` sends what was blocked in that
//! interval as a pprof profile ([`crate::sinks::report::profile`], the one `dstrace
//! report --format pprof` writes) to Pyroscope's ingest API: `POST
//! /ingest?name=dstrace.blocked{host=HOST}&from=S&until=S&format=pprof` with the
//! gzip-compressed profile as the body. Plain HTTP (no TLS): on another host, put
//! a proxy on loopback in front of it.

use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context as _, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    header::{CONTENT_TYPE, HOST},
    Request,
};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::sinks::recording::unix_ns;

/// How long one push may take.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Where profiles go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `host:port`.
    pub authority: String,
    /// The ingest path, with the application name and host label.
    pub path: String,
}

impl Target {
    /// The target of an `http://HOST[:PORT][/PREFIX]` URL, for this host.
    pub fn parse(url: &str, host: &str) -> Result<Target> {
        let Some(rest) = url.strip_prefix("http://") else {
            bail!(
                "pyroscope-url {url:?}: give an http://HOST:PORT URL (no TLS: use a local proxy for https)"
            );
        };
        let (authority, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() || authority.contains('@') {
            bail!("pyroscope-url {url:?}: give an http://HOST:PORT URL");
        }
        let authority = if authority.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_ok()) {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        let prefix = prefix.trim_end_matches('/');
        let prefix = if prefix.is_empty() { String::new() } else { format!("/{prefix}") };
        let name = format!("dstrace.blocked{{host={host}}}");
        Ok(Target { authority, path: format!("{prefix}/ingest?name={}", percent_encode(&name)) })
    }

    /// Pushes a gzip-compressed pprof profile covering `from` to `until`.
    pub async fn push(&self, profile: Vec<u8>, from: SystemTime, until: SystemTime) -> Result<()> {
        tokio::time::timeout(PUSH_TIMEOUT, self.send(profile, from, until))
            .await
            .map_err(|_| anyhow!("no answer from {} within {PUSH_TIMEOUT:?}", self.authority))?
    }

    async fn send(&self, profile: Vec<u8>, from: SystemTime, until: SystemTime) -> Result<()> {
        let stream = TcpStream::connect(&self.authority)
            .await
            .with_context(|| format!("cannot connect to {}", self.authority))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let seconds = |time: SystemTime| unix_ns(time) / 1_000_000_000;
        let uri = format!(
            "{}&from={}&until={}&format=pprof&spyName=dstrace",
            self.path,
            seconds(from),
            seconds(until).max(seconds(from) + 1)
        );
        let request = Request::post(uri)
            .header(HOST, &self.authority)
            .header(CONTENT_TYPE, "application/octet-stream")
            .body(Full::new(Bytes::from(profile)))?;
        let response = sender.send_request(request).await?;
        if !response.status().is_success() {
            bail!("{} answered {}", self.authority, response.status());
        }
        Ok(())
    }
}

/// Percent-encodes all but the unreserved characters of RFC 3986.
fn percent_encode(text: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        let target = Target::parse("http://127.0.0.1:4040", "web-1").unwrap();
        assert_eq!(target.authority, "127.0.0.1:4040");
        assert_eq!(target.path, "/ingest?name=dstrace.blocked%7Bhost%3Dweb-1%7D");
        let target = Target::parse("http://pyro/prefix/", "h").unwrap();
        assert_eq!((target.authority.as_str(), &target.path[..15]), ("pyro:80", "/prefix/ingest?"));
        assert!(Target::parse("https://x", "h").is_err());
        assert!(Target::parse("http://", "h").is_err());
        assert!(Target::parse("http://u:p@x", "h").is_err());
    }
}
