//! The PROXY protocol, versions 1 (text) and 2 (binary), as HAProxy specifies it
//! (haproxy.org/download/2.8/doc/proxy-protocol.txt), read from trusted peers only
//! so a client cannot claim another address.
//!
//! The header is optional even from a trusted peer (as Traefik's `trustedIPs`
//! behaves): bytes that are not a PROXY header are handed on untouched to HTTP.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

const V1_PREFIX: &[u8] = b"PROXY ";
const V1_MAX: usize = 107;
const V2_SIG: &[u8; 12] = b"\r\n\r\n\0\r\nQUIT\n";
/// Far above any real header (addresses plus a few TLVs); bounds memory per peer.
const V2_MAX: usize = 16 + 2048;

#[derive(Debug, thiserror::Error)]
pub enum PpError {
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
    #[error("connection closed before the PROXY header ended")]
    Eof,
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The outcome of reading the start of a connection.
#[derive(Debug)]
pub struct Header {
    /// The client address the header names; `None` for `LOCAL`/`UNKNOWN` and for
    /// connections that sent no header.
    pub source: Option<SocketAddr>,
    /// Bytes read past the header (the start of the HTTP request).
    pub rest: BytesMut,
}

/// Reads a PROXY header if the connection starts with one.
pub async fn read_header<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Header, PpError> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        let n = stream.read_buf(&mut buf).await?;
        let eof = n == 0;
        match classify(&buf) {
            Kind::NotProxy => {
                return Ok(Header {
                    source: None,
                    rest: buf,
                })
            }
            Kind::V1 => {
                let window = &buf[..buf.len().min(V1_MAX)];
                if let Some(end) = window.windows(2).position(|w| w == b"\r\n") {
                    let line = buf.split_to(end + 2);
                    return Ok(Header {
                        source: parse_v1(&line[..end])?,
                        rest: buf,
                    });
                }
                if buf.len() >= V1_MAX {
                    return Err(PpError::Malformed("v1 header longer than 107 bytes"));
                }
            }
            Kind::V2 if buf.len() >= 16 => {
                let total = 16 + usize::from(u16::from_be_bytes([buf[14], buf[15]]));
                if total > V2_MAX {
                    return Err(PpError::Malformed("v2 header too long"));
                }
                if buf.len() >= total {
                    let head = buf.split_to(total);
                    return Ok(Header {
                        source: parse_v2(&head)?,
                        rest: buf,
                    });
                }
            }
            Kind::V2 | Kind::Undecided => {}
        }
        if eof {
            return Err(PpError::Eof);
        }
    }
}

enum Kind {
    Undecided,
    NotProxy,
    V1,
    V2,
}

fn classify(buf: &[u8]) -> Kind {
    let n = buf.len();
    let v1 = V1_PREFIX[..n.min(V1_PREFIX.len())] == buf[..n.min(V1_PREFIX.len())];
    let v2 = V2_SIG[..n.min(12)] == buf[..n.min(12)];
    match (v1, v2) {
        (true, _) if n >= V1_PREFIX.len() => Kind::V1,
        (_, true) if n >= 12 => Kind::V2,
        (false, false) => Kind::NotProxy,
        _ => Kind::Undecided,
    }
}

fn parse_v1(line: &[u8]) -> Result<Option<SocketAddr>, PpError> {
    let line = std::str::from_utf8(line).map_err(|_| PpError::Malformed("v1 not ASCII"))?;
    let mut parts = line.split(' ');
    let _proxy = parts.next();
    match parts.next() {
        Some("UNKNOWN") => Ok(None),
        Some(proto @ ("TCP4" | "TCP6")) => {
            let src: IpAddr = parts
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or(PpError::Malformed("v1 source address"))?;
            let _dst: IpAddr = parts
                .next()
                .and_then(|s| s.parse().ok())
                .ok_or(PpError::Malformed("v1 destination address"))?;
            let sport = port(parts.next()).ok_or(PpError::Malformed("v1 source port"))?;
            let _dport = port(parts.next()).ok_or(PpError::Malformed("v1 destination port"))?;
            if parts.next().is_some() || (proto == "TCP4") != src.is_ipv4() {
                return Err(PpError::Malformed("v1 protocol and address disagree"));
            }
            Ok(Some(SocketAddr::new(src, sport)))
        }
        _ => Err(PpError::Malformed("v1 protocol")),
    }
}

/// A v1 port: decimal digits only, no sign (the spec's grammar).
fn port(s: Option<&str>) -> Option<u16> {
    let s = s?;
    if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_v2(head: &[u8]) -> Result<Option<SocketAddr>, PpError> {
    let ver_cmd = head[12];
    if ver_cmd >> 4 != 2 {
        return Err(PpError::Malformed("v2 version"));
    }
    let mut body = &head[16..];
    match ver_cmd & 0x0f {
        0 => return Ok(None), // LOCAL: health check from the balancer itself
        1 => {}
        _ => return Err(PpError::Malformed("v2 command")),
    }
    match head[13] >> 4 {
        1 if body.len() >= 12 => {
            let src = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            body.advance(8);
            Ok(Some(SocketAddr::new(src.into(), body.get_u16())))
        }
        2 if body.len() >= 36 => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&body[..16]);
            body.advance(32);
            Ok(Some(SocketAddr::new(
                Ipv6Addr::from(ip).into(),
                body.get_u16(),
            )))
        }
        0 | 3 => Ok(None), // AF_UNSPEC, AF_UNIX: no IP to report
        1 | 2 => Err(PpError::Malformed("v2 address block too short")),
        _ => Err(PpError::Malformed("v2 address family")),
    }
}

/// A stream with bytes already read from it put back in front.
pub struct Prefixed<S> {
    prefix: BytesMut,
    inner: S,
}

impl<S> Prefixed<S> {
    pub fn new(prefix: BytesMut, inner: S) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<S: crate::h1::Transport> crate::h1::Transport for Prefixed<S> {
    fn poll_peer(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.prefix.is_empty() {
            self.inner.poll_peer(cx)
        } else {
            Poll::Ready(())
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(input: &[u8]) -> Result<Header, PpError> {
        let mut s = input;
        read_header(&mut s).await
    }

    #[tokio::test]
    async fn v1_tcp4_and_tcp6() {
        let h = read(b"PROXY TCP4 192.0.2.1 198.51.100.1 56324 443\r\nGET /")
            .await
            .unwrap();
        assert_eq!(h.source, Some("192.0.2.1:56324".parse().unwrap()));
        assert_eq!(&h.rest[..], b"GET /");
        let h = read(b"PROXY TCP6 2001:db8::1 2001:db8::2 1000 80\r\n")
            .await
            .unwrap();
        assert_eq!(h.source, Some("[2001:db8::1]:1000".parse().unwrap()));
        let h = read(b"PROXY UNKNOWN\r\n").await.unwrap();
        assert_eq!(h.source, None);
    }

    #[tokio::test]
    async fn v2_tcp4_and_local() {
        let mut b = V2_SIG.to_vec();
        b.extend_from_slice(&[
            0x21, 0x11, 0, 12, 203, 0, 113, 9, 10, 0, 0, 1, 0x1f, 0x90, 0, 80,
        ]);
        b.extend_from_slice(b"GET");
        let h = read(&b).await.unwrap();
        assert_eq!(h.source, Some("203.0.113.9:8080".parse().unwrap()));
        assert_eq!(&h.rest[..], b"GET");
        let mut l = V2_SIG.to_vec();
        l.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(read(&l).await.unwrap().source, None);
    }

    #[tokio::test]
    async fn plain_http_passes_through() {
        let h = read(b"GET / HTTP/1.1\r\n").await.unwrap();
        assert_eq!(h.source, None);
        assert_eq!(&h.rest[..], b"GET / HTTP/1.1\r\n");
    }

    #[tokio::test]
    async fn hostile_headers_fail_cleanly() {
        assert!(read(b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 80\r\n")
            .await
            .is_err());
        assert!(read(b"PROXY TCP4 ::1 ::1 1 2\r\n").await.is_err());
        assert!(read(b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 80\r\n")
            .await
            .is_err());
        assert!(read(b"PROXY TCP4 1.2.3.4").await.is_err());
        assert!(read(&[b"PROXY ".as_slice(), &[b'x'; 200]].concat())
            .await
            .is_err());
        let mut b = V2_SIG.to_vec();
        b.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        assert!(read(&b).await.is_err());
        let mut b = V2_SIG.to_vec();
        b.extend_from_slice(&[0x21, 0x11, 0, 2, 1, 2]);
        assert!(read(&b).await.is_err());
    }
}
