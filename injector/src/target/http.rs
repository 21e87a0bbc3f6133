//! Just enough HTTP/1.1 over a Unix socket to ask a container runtime's API a question.
//!
//! One `GET` per connection with `Connection: close`; the body is read to its
//! `Content-Length`, through `Transfer-Encoding: chunked`, or to the end of the stream. No
//! HTTP crate: cartinject must stay a small static binary, and this is all it needs.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// An HTTP response: status code and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// The status code.
    pub status: u16,
    /// The decoded body.
    pub body: Vec<u8>,
}

/// Connection and protocol failures.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The socket could not be reached (daemon down).
    #[error("cannot connect to {socket}: {source}")]
    Connect {
        /// The socket path.
        socket: String,
        /// Why.
        source: io::Error,
    },
    /// Reading or writing failed mid-way.
    #[error("talking to {socket}: {source}")]
    Io {
        /// The socket path.
        socket: String,
        /// Why.
        source: io::Error,
    },
    /// The answer was not HTTP as we know it.
    #[error("malformed HTTP response from {socket}: {what}")]
    Malformed {
        /// The socket path.
        socket: String,
        /// What was wrong.
        what: &'static str,
    },
}

/// `GET path` on the HTTP server listening on Unix socket `socket`.
pub fn get(socket: &Path, path: &str, timeout: Duration) -> Result<Response, HttpError> {
    let name = socket.display().to_string();
    let io_err = |source| HttpError::Io {
        socket: name.clone(),
        source,
    };
    let mut stream = UnixStream::connect(socket).map_err(|source| HttpError::Connect {
        socket: name.clone(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUser-Agent: cartinject\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).map_err(io_err)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(io_err)?;
    parse_response(&raw).map_err(|what| HttpError::Malformed { socket: name, what })
}

/// Parses a complete HTTP/1.x response.
pub fn parse_response(raw: &[u8]) -> Result<Response, &'static str> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("no end of headers")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "headers are not text")?;
    let body = &raw[end + 4..];
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or("no status line")?;
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or("bad status line")?;
    let mut chunked = false;
    let mut length = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("transfer-encoding") && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        } else if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| "bad content-length")?);
        }
    }
    let body = if chunked {
        dechunk(body)?
    } else if let Some(length) = length {
        body.get(..length)
            .ok_or("body shorter than content-length")?
            .to_vec()
    } else {
        body.to_vec()
    };
    Ok(Response { status, body })
}

fn dechunk(mut data: &[u8]) -> Result<Vec<u8>, &'static str> {
    let mut out = Vec::new();
    loop {
        let line_end = data
            .windows(2)
            .position(|w| w == b"\r\n")
            .ok_or("chunk size line")?;
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(|_| "chunk size")?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| "chunk size")?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        out.extend_from_slice(data.get(..size).ok_or("chunk shorter than its size")?);
        data = data.get(size + 2..).ok_or("chunk not terminated")?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_length_and_chunked_bodies() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello world")
            .expect("parses");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
        let r = parse_response(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5;x=y\r\npedia\r\n0\r\n\r\n",
        )
        .expect("parses");
        assert_eq!((r.status, r.body.as_slice()), (404, &b"Wikipedia"[..]));
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nshort").is_err());
    }
}
