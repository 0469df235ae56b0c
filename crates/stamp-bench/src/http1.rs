//! A minimal HTTP/1.1 client over any byte stream (plain TCP for cfssl, rustls for stamp's
//! service): keep-alive, one request at a time, so that the client's own cost stays small next to
//! the server's.

use std::io::{BufRead, BufReader, Read, Write};

use anyhow::{bail, Context};

/// One keep-alive connection.
pub struct Conn<S: Read + Write> {
    stream: BufReader<S>,
}

impl<S: Read + Write> Conn<S> {
    /// Wraps an open stream.
    pub fn new(stream: S) -> Self {
        Conn {
            stream: BufReader::with_capacity(16 * 1024, stream),
        }
    }

    /// Sends one request (complete bytes, headers and body) and reads the response: (status,
    /// body, the server keeps the connection).
    pub fn send(&mut self, request: &[u8]) -> anyhow::Result<(u16, Vec<u8>, bool)> {
        let w = self.stream.get_mut();
        w.write_all(request)?;
        w.flush()?;
        let mut line = String::new();
        self.stream.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {line:?}"))?;
        let (mut len, mut chunked, mut keep) = (None, false, true);
        loop {
            line.clear();
            if self.stream.read_line(&mut line)? == 0 {
                bail!("connection closed in the headers");
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
                match k.as_str() {
                    "content-length" => len = v.parse::<usize>().ok(),
                    "transfer-encoding" => chunked = v.eq_ignore_ascii_case("chunked"),
                    "connection" => keep = !v.eq_ignore_ascii_case("close"),
                    _ => {}
                }
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                line.clear();
                self.stream.read_line(&mut line)?;
                let n = usize::from_str_radix(line.trim().split(';').next().unwrap_or("0"), 16)?;
                if n == 0 {
                    line.clear();
                    self.stream.read_line(&mut line)?;
                    break;
                }
                let start = body.len();
                body.resize(start + n, 0);
                self.stream.read_exact(&mut body[start..])?;
                line.clear();
                self.stream.read_line(&mut line)?;
            }
        } else if let Some(n) = len {
            body.resize(n, 0);
            self.stream.read_exact(&mut body)?;
        } else {
            self.stream.read_to_end(&mut body)?;
            keep = false;
        }
        Ok((status, body, keep))
    }
}

/// `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
