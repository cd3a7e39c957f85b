//! gRPC-Web carries its trailers inside the body: after the messages, a frame whose flag
//! byte has the high bit set (`0x80`) holds `name:value\r\n` lines, `grpc-status` among
//! them. A layer billing [`Protocol::GrpcWeb`](crate::classify::Protocol::GrpcWeb) inside
//! tonic-web's `GrpcWebLayer` sees only that body, so it reads the status from there.
//!
//! The scanner follows the frame boundaries (flag byte, 4-byte big-endian length) as the
//! bytes pass, so a message's payload can never be taken for a trailer frame. With
//! `application/grpc-web-text` the body is base64, each chunk padded on its own (as
//! tonic-web writes it), so it is decoded four characters at a time.

use base64::Engine as _;
use http::{HeaderMap, HeaderName, HeaderValue};

/// Largest trailer frame read; a larger one is not parsed (and so states no status).
const MAX_TRAILER_FRAME: usize = 16 * 1024;

const TRAILER_FLAG: u8 = 0x80;

/// Finds the trailer frame of a gRPC-Web response body.
#[derive(Debug)]
pub(crate) struct TrailerScanner {
    /// `application/grpc-web-text`: the body is base64.
    text: bool,
    /// Base64 characters not yet making a full group of four.
    group: [u8; 4],
    in_group: usize,
    state: Scan,
    trailers: Option<HeaderMap>,
}

#[derive(Debug)]
enum Scan {
    /// Reading a frame's 5-byte prefix.
    Prefix { buf: [u8; 5], have: usize },
    /// Skipping a message's payload.
    Message { left: u64 },
    /// Reading the trailer frame's payload.
    Trailer { buf: Vec<u8>, left: usize },
    /// Found, or unreadable: nothing more to learn from the body.
    Stopped,
}

impl TrailerScanner {
    /// A scanner for a response of this content type; `None` unless it is gRPC-Web (a
    /// plain gRPC response has real trailers, and any other body is not framed).
    pub(crate) fn for_response(headers: &HeaderMap) -> Option<Self> {
        let content_type = headers.get(http::header::CONTENT_TYPE)?.as_bytes();
        if !content_type.starts_with(b"application/grpc-web") {
            return None;
        }
        let text = content_type.starts_with(b"application/grpc-web-text");
        Some(Self {
            text,
            group: [0; 4],
            in_group: 0,
            state: Scan::Prefix {
                buf: [0; 5],
                have: 0,
            },
            trailers: None,
        })
    }

    /// The trailers, once their frame has passed.
    pub(crate) fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }

    /// Feeds the next bytes of the body.
    pub(crate) fn feed(&mut self, data: &[u8]) {
        if matches!(self.state, Scan::Stopped) {
            return;
        }
        if !self.text {
            return self.scan(data);
        }
        for &c in data {
            if c.is_ascii_whitespace() {
                continue;
            }
            self.group[self.in_group] = c;
            self.in_group += 1;
            if self.in_group == 4 {
                self.in_group = 0;
                let mut bytes = [0u8; 3];
                match base64::engine::general_purpose::STANDARD.decode_slice(self.group, &mut bytes)
                {
                    Ok(n) => self.scan(&bytes[..n]),
                    Err(_) => self.state = Scan::Stopped,
                }
                if matches!(self.state, Scan::Stopped) {
                    return;
                }
            }
        }
    }

    fn scan(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                Scan::Prefix { buf, have } => {
                    let n = (5 - *have).min(data.len());
                    buf[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data = &data[n..];
                    if *have == 5 {
                        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
                        self.state = if buf[0] & TRAILER_FLAG == 0 {
                            Scan::Message { left: len as u64 }
                        } else if len > MAX_TRAILER_FRAME {
                            Scan::Stopped
                        } else {
                            Scan::Trailer {
                                buf: Vec::with_capacity(len),
                                left: len,
                            }
                        };
                        self.end_of_frame();
                    }
                }
                Scan::Message { left } => {
                    let n = (*left).min(data.len() as u64) as usize;
                    *left -= n as u64;
                    data = &data[n..];
                    self.end_of_frame();
                }
                Scan::Trailer { buf, left } => {
                    let n = (*left).min(data.len());
                    buf.extend_from_slice(&data[..n]);
                    *left -= n;
                    data = &data[n..];
                    self.end_of_frame();
                }
                Scan::Stopped => return,
            }
        }
    }

    /// Moves past a frame whose payload is complete (possibly empty).
    fn end_of_frame(&mut self) {
        match &mut self.state {
            Scan::Message { left: 0 } => {
                self.state = Scan::Prefix {
                    buf: [0; 5],
                    have: 0,
                }
            }
            Scan::Trailer { buf, left: 0 } => {
                self.trailers = Some(parse_trailers(buf));
                self.state = Scan::Stopped;
            }
            _ => {}
        }
    }
}

/// `name:value\r\n` lines; a line that is not a valid header is skipped.
fn parse_trailers(block: &[u8]) -> HeaderMap {
    let mut trailers = HeaderMap::new();
    for line in block.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(&name.to_ascii_lowercase()),
            HeaderValue::from_bytes(value),
        ) else {
            continue;
        };
        trailers.append(name, value);
    }
    trailers
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::grpc::grpc_status;

    fn frame(flag: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![flag];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn scanner(text: bool) -> TrailerScanner {
        let mut h = HeaderMap::new();
        let ct = if text {
            "application/grpc-web-text+proto"
        } else {
            "application/grpc-web+proto"
        };
        h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
        TrailerScanner::for_response(&h).expect("a gRPC-Web content type")
    }

    fn body() -> Vec<u8> {
        // A message whose payload looks like a trailer frame must be skipped as a message.
        let lure = frame(TRAILER_FLAG, b"grpc-status:13\r\n");
        let mut b = frame(0, &lure);
        b.extend(frame(0, b""));
        b.extend(frame(TRAILER_FLAG, b"grpc-status:0\r\ngrpc-message:\r\n"));
        b
    }

    #[test]
    fn binary_in_any_chunking() {
        let body = body();
        for size in [1, 2, 3, 5, 7, body.len()] {
            let mut s = scanner(false);
            for chunk in body.chunks(size) {
                s.feed(chunk);
            }
            assert_eq!(
                s.trailers().and_then(grpc_status),
                Some(0),
                "chunks of {size}"
            );
        }
    }

    #[test]
    fn text_with_chunks_padded_separately() {
        let body = body();
        let (a, b) = body.split_at(7);
        let e = base64::engine::general_purpose::STANDARD;
        let encoded = format!("{}{}", e.encode(a), e.encode(b));
        for size in [1, 3, 4, 9, encoded.len()] {
            let mut s = scanner(true);
            for chunk in encoded.as_bytes().chunks(size) {
                s.feed(chunk);
            }
            assert_eq!(
                s.trailers().and_then(grpc_status),
                Some(0),
                "chunks of {size}"
            );
        }
    }

    #[test]
    fn only_grpc_web_bodies_are_scanned() {
        for ct in ["application/grpc", "application/octet-stream", "text/plain"] {
            let mut h = HeaderMap::new();
            h.insert(http::header::CONTENT_TYPE, HeaderValue::from_static(ct));
            assert!(TrailerScanner::for_response(&h).is_none(), "{ct}");
        }
        assert!(TrailerScanner::for_response(&HeaderMap::new()).is_none());
    }

    #[test]
    fn no_trailer_frame_states_nothing() {
        let mut s = scanner(false);
        s.feed(&frame(0, b"hello"));
        assert!(s.trailers().is_none());
        let mut s = scanner(true);
        s.feed(b"!!!!");
        assert!(s.trailers().is_none());
    }
}
