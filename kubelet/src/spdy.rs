//! SPDY/3.1 framing, as far as `kubectl port-forward` needs it.
//!
//! Since Kubernetes 1.31 kubectl tunnels a SPDY/3.1 session inside a WebSocket
//! (subprotocol `SPDY/3.1+portforward.k8s.io`): the WebSocket's binary messages
//! carry the session's bytes, split anywhere. Each forwarded connection opens
//! two streams (`streamType: error` and `streamType: data`, sharing a
//! `requestID`); the server answers each SYN_STREAM with a SYN_REPLY and sends
//! the pod's bytes as DATA frames.
//!
//! Header blocks are zlib-compressed with one compression context per direction
//! for the whole session and SPDY's preset dictionary, so every header block
//! must go through the same [`Decoder`] in order. There is no crate for SPDY:
//! the protocol was retired in favour of HTTP/2 everywhere except here.

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};

/// Errors of a SPDY session: the peer broke the protocol.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A frame or header block that does not parse.
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
    /// zlib failed on a header block.
    #[error("SPDY header compression: {0}")]
    Compression(String),
}

const VERSION: u16 = 3;
const TYPE_SYN_STREAM: u16 = 1;
const TYPE_SYN_REPLY: u16 = 2;
const TYPE_RST_STREAM: u16 = 3;
const TYPE_PING: u16 = 6;
const TYPE_GOAWAY: u16 = 7;
const TYPE_HEADERS: u16 = 8;
/// FLAG_FIN: the sender's last frame on the stream.
const FLAG_FIN: u8 = 0x01;
/// A frame header is 8 bytes; the length field has 24 bits.
const HEADER_LEN: usize = 8;
/// The largest frame payload SPDY can express.
pub const MAX_PAYLOAD: usize = (1 << 24) - 1;
/// Header blocks of kubectl's streams are a few dozen bytes; this bounds what a
/// hostile peer can make us inflate.
const MAX_HEADER_BLOCK: usize = 256 * 1024;

/// RST_STREAM status: the stream was refused or cancelled.
pub const RST_CANCEL: u32 = 5;

/// One SPDY frame. Frames this side never acts on (SETTINGS, WINDOW_UPDATE,
/// CREDENTIAL) are [`Frame::Ignored`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// The peer opens a stream.
    SynStream {
        /// Odd for streams the client opens.
        stream_id: u32,
        /// Whether the peer sends nothing more on it.
        fin: bool,
        /// Lower-cased names with their values.
        headers: Vec<(String, String)>,
    },
    /// The answer to a SYN_STREAM.
    SynReply {
        /// The stream answered.
        stream_id: u32,
        /// Whether the sender is done with the stream.
        fin: bool,
        /// Headers of the reply.
        headers: Vec<(String, String)>,
    },
    /// More headers for an open stream.
    Headers {
        /// The stream.
        stream_id: u32,
        /// The headers.
        headers: Vec<(String, String)>,
    },
    /// Abnormal end of a stream.
    RstStream {
        /// The stream.
        stream_id: u32,
        /// Why (SPDY status code).
        status: u32,
    },
    /// Bytes of a stream.
    Data {
        /// The stream.
        stream_id: u32,
        /// Whether this is the sender's last frame on the stream.
        fin: bool,
        /// The payload.
        data: Vec<u8>,
    },
    /// Liveness check; the receiver echoes the peer's pings.
    Ping {
        /// Odd from clients, even from servers.
        id: u32,
    },
    /// The sender ends the session.
    GoAway {
        /// The last stream the sender handled.
        last_good_stream_id: u32,
    },
    /// A control frame of another type, skipped.
    Ignored {
        /// Its SPDY type.
        kind: u16,
    },
}

/// The preset dictionary of SPDY/3 header compression (draft-mbelshe-httpbis-spdy-00,
/// section 2.6.10.1): the names and values a header block usually holds.
const DICTIONARY: &[u8] = b"\x00\x00\x00\x07options\x00\x00\x00\x04head\x00\x00\x00\x04post\
\x00\x00\x00\x03put\x00\x00\x00\x06delete\x00\x00\x00\x05trace\x00\x00\x00\x06accept\
\x00\x00\x00\x0eaccept-charset\x00\x00\x00\x0faccept-encoding\x00\x00\x00\x0faccept-language\
\x00\x00\x00\x0daccept-ranges\x00\x00\x00\x03age\x00\x00\x00\x05allow\x00\x00\x00\x0dauthorization\
\x00\x00\x00\x0dcache-control\x00\x00\x00\x0aconnection\x00\x00\x00\x0ccontent-base\
\x00\x00\x00\x10content-encoding\x00\x00\x00\x10content-language\x00\x00\x00\x0econtent-length\
\x00\x00\x00\x10content-location\x00\x00\x00\x0bcontent-md5\x00\x00\x00\x0dcontent-range\
\x00\x00\x00\x0ccontent-type\x00\x00\x00\x04date\x00\x00\x00\x04etag\x00\x00\x00\x06expect\
\x00\x00\x00\x07expires\x00\x00\x00\x04from\x00\x00\x00\x04host\x00\x00\x00\x08if-match\
\x00\x00\x00\x11if-modified-since\x00\x00\x00\x0dif-none-match\x00\x00\x00\x08if-range\
\x00\x00\x00\x13if-unmodified-since\x00\x00\x00\x0dlast-modified\x00\x00\x00\x08location\
\x00\x00\x00\x0cmax-forwards\x00\x00\x00\x06pragma\x00\x00\x00\x12proxy-authenticate\
\x00\x00\x00\x13proxy-authorization\x00\x00\x00\x05range\x00\x00\x00\x07referer\
\x00\x00\x00\x0bretry-after\x00\x00\x00\x06server\x00\x00\x00\x02te\x00\x00\x00\x07trailer\
\x00\x00\x00\x11transfer-encoding\x00\x00\x00\x07upgrade\x00\x00\x00\x0auser-agent\
\x00\x00\x00\x04vary\x00\x00\x00\x03via\x00\x00\x00\x07warning\x00\x00\x00\x10www-authenticate\
\x00\x00\x00\x06method\x00\x00\x00\x03get\x00\x00\x00\x06status\x00\x00\x00\x06200 OK\
\x00\x00\x00\x07version\x00\x00\x00\x08HTTP/1.1\x00\x00\x00\x03url\x00\x00\x00\x06public\
\x00\x00\x00\x0aset-cookie\x00\x00\x00\x0akeep-alive\x00\x00\x00\x06origin\
100101201202205206300302303304305306307402405406407408409410411412413414415416417502504505\
203 Non-Authoritative Information204 No Content301 Moved Permanently400 Bad Request401 Unauthorized\
403 Forbidden404 Not Found500 Internal Server Error501 Not Implemented503 Service Unavailable\
Jan Feb Mar Apr May Jun Jul Aug Sept Oct Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMT\
chunked,text/html,image/png,image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,\
text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8charset=iso-8859-1,utf-,*,enq=0.";

/// Reads frames out of the session's byte stream, however it was split.
pub struct Decoder {
    buf: Vec<u8>,
    inflate: Decompress,
}

impl Default for Decoder {
    fn default() -> Self {
        Self {
            buf: Vec::new(),
            inflate: Decompress::new(true),
        }
    }
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("buffered", &self.buf.len())
            .finish_non_exhaustive()
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

fn need(payload: &[u8], n: usize, what: &str) -> Result<(), Error> {
    if payload.len() < n {
        return Err(Error::Protocol(format!(
            "{what} frame of {} bytes, at least {n} expected",
            payload.len()
        )));
    }
    Ok(())
}

impl Decoder {
    /// Appends bytes received from the peer.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole frame, or `None` until more bytes arrive.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, Error> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let flags = self.buf[4];
        let len = usize::from(self.buf[5]) << 16
            | usize::from(self.buf[6]) << 8
            | usize::from(self.buf[7]);
        if self.buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let frame: Vec<u8> = self.buf.drain(..HEADER_LEN + len).collect();
        let (head, payload) = frame.split_at(HEADER_LEN);
        let fin = flags & FLAG_FIN != 0;
        if head[0] & 0x80 == 0 {
            return Ok(Some(Frame::Data {
                stream_id: be32(head) & 0x7fff_ffff,
                fin,
                data: payload.to_vec(),
            }));
        }
        let version = u16::from_be_bytes([head[0], head[1]]) & 0x7fff;
        if version != VERSION {
            return Err(Error::Protocol(format!(
                "unsupported SPDY version {version}"
            )));
        }
        let kind = u16::from_be_bytes([head[2], head[3]]);
        let frame = match kind {
            TYPE_SYN_STREAM => {
                // stream id, associated stream id, priority and slot, then headers.
                need(payload, 10, "SYN_STREAM")?;
                Frame::SynStream {
                    stream_id: be32(payload) & 0x7fff_ffff,
                    fin,
                    headers: self.header_block(&payload[10..])?,
                }
            }
            TYPE_SYN_REPLY => {
                need(payload, 4, "SYN_REPLY")?;
                Frame::SynReply {
                    stream_id: be32(payload) & 0x7fff_ffff,
                    fin,
                    headers: self.header_block(&payload[4..])?,
                }
            }
            TYPE_HEADERS => {
                need(payload, 4, "HEADERS")?;
                Frame::Headers {
                    stream_id: be32(payload) & 0x7fff_ffff,
                    headers: self.header_block(&payload[4..])?,
                }
            }
            TYPE_RST_STREAM => {
                need(payload, 8, "RST_STREAM")?;
                Frame::RstStream {
                    stream_id: be32(payload) & 0x7fff_ffff,
                    status: be32(&payload[4..]),
                }
            }
            TYPE_PING => {
                need(payload, 4, "PING")?;
                Frame::Ping { id: be32(payload) }
            }
            TYPE_GOAWAY => {
                need(payload, 4, "GOAWAY")?;
                Frame::GoAway {
                    last_good_stream_id: be32(payload) & 0x7fff_ffff,
                }
            }
            kind => Frame::Ignored { kind },
        };
        Ok(Some(frame))
    }

    /// Inflates one header block (continuing the session's zlib stream) and
    /// parses its name/value pairs.
    fn header_block(&mut self, compressed: &[u8]) -> Result<Vec<(String, String)>, Error> {
        let mut out: Vec<u8> = Vec::with_capacity(compressed.len() * 4 + 64);
        let mut input = compressed;
        loop {
            if out.len() == out.capacity() {
                if out.len() >= MAX_HEADER_BLOCK {
                    return Err(Error::Protocol("header block too large".into()));
                }
                out.reserve(out.len().max(256));
            }
            let before = self.inflate.total_in();
            let result = self
                .inflate
                .decompress_vec(input, &mut out, FlushDecompress::Sync);
            let consumed = usize::try_from(self.inflate.total_in() - before)
                .map_err(|e| Error::Compression(e.to_string()))?;
            input = &input[consumed..];
            match result {
                Ok(Status::StreamEnd) => break,
                Ok(_) if input.is_empty() && out.len() < out.capacity() => break,
                Ok(_) => {}
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate
                        .set_dictionary(DICTIONARY)
                        .map_err(|e| Error::Compression(e.to_string()))?;
                }
                Err(e) => return Err(Error::Compression(e.to_string())),
            }
        }
        parse_headers(&out)
    }
}

fn parse_headers(block: &[u8]) -> Result<Vec<(String, String)>, Error> {
    let mut rest = block;
    let mut take = |n: usize| -> Result<&[u8], Error> {
        if rest.len() < n {
            return Err(Error::Protocol("truncated header block".into()));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let count = be32(take(4)?);
    let mut headers = Vec::new();
    for _ in 0..count {
        let n = be32(take(4)?) as usize;
        let name = String::from_utf8_lossy(take(n)?).to_lowercase();
        let n = be32(take(4)?) as usize;
        let value = String::from_utf8_lossy(take(n)?).into_owned();
        headers.push((name, value));
    }
    Ok(headers)
}

/// Writes frames for the peer. Header blocks share one zlib context, so frames
/// with headers must be encoded in the order they are sent.
pub struct Encoder {
    deflate: Compress,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder").finish_non_exhaustive()
    }
}

impl Encoder {
    /// A fresh compression context for one session.
    pub fn new() -> Result<Self, Error> {
        let mut deflate = Compress::new(Compression::default(), true);
        deflate
            .set_dictionary(DICTIONARY)
            .map_err(|e| Error::Compression(e.to_string()))?;
        Ok(Self { deflate })
    }

    /// A SYN_REPLY for `stream_id`.
    pub fn syn_reply(
        &mut self,
        stream_id: u32,
        headers: &[(&str, &str)],
    ) -> Result<Vec<u8>, Error> {
        let block = self.header_block(headers)?;
        let mut payload = stream_id.to_be_bytes().to_vec();
        payload.extend_from_slice(&block);
        Ok(control(TYPE_SYN_REPLY, 0, &payload))
    }

    /// A SYN_STREAM (what a client sends; the tests speak as kubectl).
    pub fn syn_stream(
        &mut self,
        stream_id: u32,
        headers: &[(&str, &str)],
    ) -> Result<Vec<u8>, Error> {
        let block = self.header_block(headers)?;
        let mut payload = stream_id.to_be_bytes().to_vec();
        payload.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        payload.extend_from_slice(&block);
        Ok(control(TYPE_SYN_STREAM, 0, &payload))
    }

    fn header_block(&mut self, headers: &[(&str, &str)]) -> Result<Vec<u8>, Error> {
        let mut plain = Vec::new();
        let count = u32::try_from(headers.len()).map_err(|e| Error::Protocol(e.to_string()))?;
        plain.extend_from_slice(&count.to_be_bytes());
        for (name, value) in headers {
            for s in [name.to_lowercase().as_str(), value] {
                let n = u32::try_from(s.len()).map_err(|e| Error::Protocol(e.to_string()))?;
                plain.extend_from_slice(&n.to_be_bytes());
                plain.extend_from_slice(s.as_bytes());
            }
        }
        let mut out = Vec::with_capacity(plain.len() + 64);
        let mut input = plain.as_slice();
        loop {
            let before = self.deflate.total_in();
            self.deflate
                .compress_vec(input, &mut out, FlushCompress::Sync)
                .map_err(|e| Error::Compression(e.to_string()))?;
            let consumed = usize::try_from(self.deflate.total_in() - before)
                .map_err(|e| Error::Compression(e.to_string()))?;
            input = &input[consumed..];
            // A sync flush is complete once the output was not filled up.
            if input.is_empty() && out.len() < out.capacity() {
                return Ok(out);
            }
            out.reserve(out.capacity().max(64));
        }
    }
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER_LEN + payload.len());
    f.extend_from_slice(&(0x8000 | VERSION).to_be_bytes());
    f.extend_from_slice(&kind.to_be_bytes());
    f.push(flags);
    f.extend_from_slice(&len24(payload.len()));
    f.extend_from_slice(payload);
    f
}

fn len24(n: usize) -> [u8; 3] {
    debug_assert!(n <= MAX_PAYLOAD);
    [(n >> 16) as u8, (n >> 8) as u8, n as u8]
}

/// A DATA frame; callers keep `data` within [`MAX_PAYLOAD`].
pub fn data(stream_id: u32, fin: bool, data: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(HEADER_LEN + data.len());
    f.extend_from_slice(&(stream_id & 0x7fff_ffff).to_be_bytes());
    f.push(if fin { FLAG_FIN } else { 0 });
    f.extend_from_slice(&len24(data.len()));
    f.extend_from_slice(data);
    f
}

/// A PING frame (the echo of the peer's).
pub fn ping(id: u32) -> Vec<u8> {
    control(TYPE_PING, 0, &id.to_be_bytes())
}

/// A RST_STREAM frame.
pub fn rst_stream(stream_id: u32, status: u32) -> Vec<u8> {
    let mut payload = stream_id.to_be_bytes().to_vec();
    payload.extend_from_slice(&status.to_be_bytes());
    control(TYPE_RST_STREAM, 0, &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn frames_survive_any_split_and_share_one_compression_context() {
        let mut enc = Encoder::new().unwrap();
        let first = [("streamType", "error"), ("port", "80"), ("requestID", "0")];
        let second = [("streamType", "data"), ("port", "80"), ("requestID", "0")];
        let mut wire = enc.syn_stream(1, &first).unwrap();
        wire.extend(enc.syn_stream(3, &second).unwrap());
        wire.extend(data(3, false, b"GET / HTTP/1.0\r\n\r\n"));
        wire.extend(ping(1));
        wire.extend(data(1, true, b""));
        wire.extend(rst_stream(3, RST_CANCEL));
        let expected = vec![
            Frame::SynStream {
                stream_id: 1,
                fin: false,
                headers: headers(&[("streamtype", "error"), ("port", "80"), ("requestid", "0")]),
            },
            Frame::SynStream {
                stream_id: 3,
                fin: false,
                headers: headers(&[("streamtype", "data"), ("port", "80"), ("requestid", "0")]),
            },
            Frame::Data {
                stream_id: 3,
                fin: false,
                data: b"GET / HTTP/1.0\r\n\r\n".to_vec(),
            },
            Frame::Ping { id: 1 },
            Frame::Data {
                stream_id: 1,
                fin: true,
                data: vec![],
            },
            Frame::RstStream {
                stream_id: 3,
                status: RST_CANCEL,
            },
        ];
        for chunk in [1, 3, 7, 64, wire.len()] {
            let mut dec = Decoder::default();
            let mut got = Vec::new();
            for piece in wire.chunks(chunk) {
                dec.push(piece);
                while let Some(f) = dec.next_frame().unwrap() {
                    got.push(f);
                }
            }
            assert_eq!(got, expected, "split into pieces of {chunk}");
        }
    }

    #[test]
    fn replies_decode_with_the_preset_dictionary() {
        let mut enc = Encoder::new().unwrap();
        let wire = enc.syn_reply(5, &[("content-type", "text/plain")]).unwrap();
        let mut dec = Decoder::default();
        dec.push(&wire);
        assert_eq!(
            dec.next_frame().unwrap(),
            Some(Frame::SynReply {
                stream_id: 5,
                fin: false,
                headers: headers(&[("content-type", "text/plain")]),
            })
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let mut dec = Decoder::default();
        // A SYN_STREAM whose header block is not zlib.
        dec.push(&control(
            TYPE_SYN_STREAM,
            0,
            &[0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 2, 3],
        ));
        assert!(dec.next_frame().is_err());
        let mut dec = Decoder::default();
        dec.push(&control(TYPE_PING, 0, &[1]));
        assert!(dec.next_frame().is_err());
        let mut dec = Decoder::default();
        dec.push(&[0x80, 2, 0, 1, 0, 0, 0, 0]);
        assert!(dec.next_frame().is_err());
    }
}
