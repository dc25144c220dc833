//! The connection's socket as hyper sees it: it notes when a request head starts, and rewrites
//! hyper's own bare answers into problem+json.

use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::connection::Conn;
use crate::http::error::{ApiError, ProblemKind};

/// A raw HTTP/1.1 problem+json answer that closes its connection.
pub(super) fn problem_response(error: &ApiError, extra: &[(&str, String)]) -> Vec<u8> {
    let status = error.kind.status();
    let body = serde_json::to_vec(&error.problem()).unwrap_or_default();
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/problem+json\r\ncontent-length: {}\r\nconnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    for (name, value) in extra {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    let mut answer = head.into_bytes();
    answer.extend_from_slice(&body);
    answer
}

/// Writes `bytes` to the socket `fd` if its buffer takes them now, else nothing. Used only while
/// hyper, which owns the socket, waits to read and writes nothing.
pub(super) fn send_now(fd: std::os::fd::RawFd, bytes: &[u8]) {
    // SAFETY: `fd` is open (its TcpStream is alive in the caller) and `bytes` is a valid slice;
    // MSG_DONTWAIT never blocks, MSG_NOSIGNAL never raises SIGPIPE.
    unsafe {
        libc::send(
            fd,
            bytes.as_ptr().cast(),
            bytes.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        );
    }
}

/// The connection's socket: notes when a head starts, and rewrites hyper's own bare answers.
pub(super) struct Watched {
    pub(super) stream: TcpStream,
    pub(super) conn: Arc<Conn>,
    /// The problem+json answer replacing one of hyper's, and how much of it is written.
    pub(super) rewritten: Option<(Vec<u8>, usize)>,
}

impl Watched {
    /// Replaces `head` when it is one of hyper's bare answers.
    pub(super) fn check_bare_answer(&mut self, head: &[u8]) {
        if let Some(error) = problem_for_bare_answer(head) {
            tracing::info!(problem = error.kind.slug(), status = error.kind.status().as_u16(), detail = %error.detail,
                "request refused before routing");
            self.rewritten = Some((problem_response(&error, &[]), 0));
        }
    }

    /// Writes what is left of the rewritten answer; Ready once all of it is out.
    pub(super) fn poll_rewritten(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((answer, written)) = &mut self.rewritten else {
            return Poll::Ready(Ok(()));
        };
        while *written < answer.len() {
            match Pin::new(&mut self.stream).poll_write(cx, &answer[*written..]) {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(n)) => *written += n,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// The problem for hyper's bare answer `head` (the bytes it writes for a request it could not
/// parse), or None when `head` is not one.
pub(super) fn problem_for_bare_answer(head: &[u8]) -> Option<ApiError> {
    let rest = head.strip_prefix(b"HTTP/1.1 ")?;
    // The service's own answers always carry a content type; hyper's bare ones never do. (A
    // handler's answer may be written after its body was handed over, with none in flight.)
    let end = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(head.len());
    if head[..end]
        .to_ascii_lowercase()
        .windows(14)
        .any(|w| w == b"\ncontent-type:")
    {
        return None;
    }
    let status = rest.get(..3)?;
    let (kind, detail) = match status {
        b"400" => (
            ProblemKind::MalformedRequest,
            "the request line or a header is not valid HTTP/1.1",
        ),
        b"414" => (
            ProblemKind::UriTooLong,
            "the request's URI is longer than the server reads (65,534 bytes); send large inputs in the body",
        ),
        b"431" => (
            ProblemKind::HeadersTooLarge,
            "the request's headers are too many (over 100) or too large; send large inputs in the body",
        ),
        _ => return None,
    };
    Some(ApiError::new(kind, detail))
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.on_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.rewritten.is_none() && self.conn.in_flight.load(Ordering::Acquire) == 0 {
            self.check_bare_answer(buf);
        }
        if self.rewritten.is_some() {
            // hyper's own bytes are replaced; it closes the connection after them.
            std::task::ready!(self.poll_rewritten(cx))?;
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.rewritten.is_none() && self.conn.in_flight.load(Ordering::Acquire) == 0 {
            // hyper writes a head as one slice; a bare answer has no other.
            if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
                self.check_bare_answer(first);
            }
        }
        if self.rewritten.is_some() {
            std::task::ready!(self.poll_rewritten(cx))?;
            return Poll::Ready(Ok(bufs.iter().map(|b| b.len()).sum()));
        }
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_rewritten(cx))?;
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        std::task::ready!(self.poll_rewritten(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hyper_answers_become_problems() {
        let cases: [(&[u8], u16, &str); 3] = [
            (
                b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n",
                400,
                "malformed-request",
            ),
            (
                b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\n\r\n",
                414,
                "uri-too-long",
            ),
            (
                b"HTTP/1.1 431 Request Header Fields Too Large\r\n\r\n",
                431,
                "headers-too-large",
            ),
        ];
        for (head, status, slug) in cases {
            let error = problem_for_bare_answer(head).expect("a bare answer");
            assert_eq!(error.kind.status().as_u16(), status);
            assert_eq!(error.kind.slug(), slug);
            let answer = String::from_utf8(problem_response(&error, &[])).unwrap();
            let (head, body) = answer.split_once("\r\n\r\n").unwrap();
            assert!(head.starts_with(&format!("HTTP/1.1 {status} ")), "{head}");
            assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
            let body: serde_json::Value = serde_json::from_str(body).unwrap();
            assert_eq!(body["type"], format!("/problems/{slug}"));
        }
        assert!(problem_for_bare_answer(b"HTTP/1.1 200 OK\r\n\r\n").is_none());
        // A handler's own 400, written once its body was handed over, stays as it is.
        let own = b"HTTP/1.1 400 Bad Request\r\ncontent-type: application/problem+json\r\ncontent-length: 2\r\n\r\n{}";
        assert!(problem_for_bare_answer(own).is_none());
        assert!(problem_for_bare_answer(b"{\"HTTP/1.1 400").is_none());
    }
}
