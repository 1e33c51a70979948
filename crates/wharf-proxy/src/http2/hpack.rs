//! HPACK (RFC 7541) for Wharf's HTTP/2 server: a decoder for request header
//! blocks, with the dynamic table and Huffman strings, and an encoder for
//! responses that uses the static table and literals only.
//!
//! The encoder never adds to the client's dynamic table (HAProxy encodes the
//! same way): a response costs a few more bytes on the wire, and the server
//! keeps no encoder table per connection.

use std::collections::VecDeque;
use std::sync::OnceLock;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::HeaderMap;

use super::huffman_table::CODES;

/// The dynamic table size a decoder starts with and may be raised to
/// (SETTINGS_HEADER_TABLE_SIZE, which Wharf leaves at its default).
pub(crate) const TABLE_SIZE: usize = 4096;

/// A pseudo-header field of a request (RFC 9113 §8.3.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Pseudo {
    Method,
    Scheme,
    Authority,
    Path,
    /// RFC 8441's `:protocol`, which Wharf does not enable.
    Protocol,
    /// A response's; in a request it is malformed.
    Status,
}

impl Pseudo {
    fn name_len(self) -> usize {
        match self {
            Pseudo::Method | Pseudo::Scheme => 7,
            Pseudo::Path => 5,
            Pseudo::Protocol => 9,
            Pseudo::Authority => 10,
            Pseudo::Status => 7,
        }
    }

    fn of(name: &[u8]) -> Option<Pseudo> {
        Some(match name {
            b":method" => Pseudo::Method,
            b":scheme" => Pseudo::Scheme,
            b":authority" => Pseudo::Authority,
            b":path" => Pseudo::Path,
            b":protocol" => Pseudo::Protocol,
            b":status" => Pseudo::Status,
            _ => return None,
        })
    }
}

/// A decoded field.
#[derive(Clone, Debug)]
pub(crate) enum Field {
    Pseudo(Pseudo, Bytes),
    Header(HeaderName, HeaderValue),
    /// A field HTTP/2 forbids (an upper-case or invalid name, an unknown
    /// pseudo-header, a value with CR, LF, NUL or another control
    /// character: RFC 9113 §8.2.1): its request is malformed. Kept with its
    /// name's and value's lengths, since the client's encoder counts it in
    /// the table.
    Bad {
        name: usize,
        value: usize,
    },
}

impl Field {
    /// RFC 7541 §4.1: name, value and 32.
    pub(crate) fn size(&self) -> usize {
        match self {
            Field::Pseudo(p, v) => p.name_len() + v.len() + 32,
            Field::Header(n, v) => n.as_str().len() + v.len() + 32,
            Field::Bad { name, value } => name + value + 32,
        }
    }

    fn new(name: &[u8], value: Bytes) -> Field {
        let bad = Field::Bad {
            name: name.len(),
            value: value.len(),
        };
        if !value_ok(&value) {
            return bad;
        }
        if name.first() == Some(&b':') {
            return match Pseudo::of(name) {
                Some(p) => Field::Pseudo(p, value),
                None => bad,
            };
        }
        if name.iter().any(u8::is_ascii_uppercase) {
            return bad;
        }
        match (
            HeaderName::from_bytes(name),
            HeaderValue::from_maybe_shared(value),
        ) {
            (Ok(n), Ok(v)) => Field::Header(n, v),
            _ => bad,
        }
    }

    /// The same name with another value (a literal with an indexed name).
    fn with_value(&self, value: Bytes) -> Field {
        let name = match self {
            Field::Pseudo(p, _) => p.name_len(),
            Field::Header(n, _) => n.as_str().len(),
            Field::Bad { name, .. } => *name,
        };
        let bad = Field::Bad {
            name,
            value: value.len(),
        };
        if !value_ok(&value) {
            return bad;
        }
        match self {
            Field::Pseudo(p, _) => Field::Pseudo(*p, value),
            Field::Header(n, _) => match HeaderValue::from_maybe_shared(value) {
                Ok(v) => Field::Header(n.clone(), v),
                Err(_) => bad,
            },
            Field::Bad { .. } => bad,
        }
    }
}

/// RFC 9113 §8.2.1: no NUL, CR or LF. Whitespace at either end, which the
/// RFC also forbids, is let through as hyper's server (the h2 crate) did:
/// HTTP/1.1 backends strip it.
fn value_ok(v: &[u8]) -> bool {
    !v.iter().any(|&b| matches!(b, 0 | b'\r' | b'\n'))
}

/// A header block HPACK cannot decode: a connection error
/// (COMPRESSION_ERROR, RFC 9113 §4.3).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum HpackError {
    #[error("header block cut short")]
    Truncated,
    #[error("integer too large")]
    Overflow,
    #[error("index {0} not in the tables")]
    Index(usize),
    #[error("invalid Huffman string")]
    Huffman,
    #[error("dynamic table size update not at the start of a block, or above the limit")]
    SizeUpdate,
}

/// The static table (RFC 7541, Appendix A), 1-based.
const STATIC: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

/// The static table as decoded fields, made once per process.
fn static_fields() -> &'static [Field] {
    static FIELDS: OnceLock<Vec<Field>> = OnceLock::new();
    FIELDS.get_or_init(|| {
        STATIC
            .iter()
            .map(|(n, v)| Field::new(n.as_bytes(), Bytes::from_static(v.as_bytes())))
            .collect()
    })
}

/// A connection's request decoder: the dynamic table the client's encoder
/// fills.
#[derive(Default)]
pub(crate) struct Decoder {
    /// Newest first.
    table: VecDeque<Field>,
    /// The entries' sizes, summed.
    size: usize,
    /// The size the client's last update set (at most [`TABLE_SIZE`]).
    max: Option<usize>,
}

/// What [`Decoder::decode`] found about the block as a whole.
pub(crate) struct Decoded {
    /// The header list size (RFC 9113 §6.5.2: each field's name, value and 32).
    pub(crate) list_size: usize,
}

impl Decoder {
    fn max(&self) -> usize {
        self.max.unwrap_or(TABLE_SIZE)
    }

    /// The entries' sizes, summed.
    pub(crate) fn table_size(&self) -> usize {
        self.size
    }

    /// Decodes one complete header block into `out`. The fields are all
    /// decoded even when the list is large, so the table stays in step with
    /// the client's encoder, but once the list passes `limit` bytes no more
    /// are kept (the caller refuses it; a block of one-byte references to a
    /// large entry would otherwise grow without bound).
    pub(crate) fn decode(
        &mut self,
        block: &[u8],
        out: &mut Vec<Field>,
        limit: usize,
    ) -> Result<Decoded, HpackError> {
        let mut pos = 0;
        let mut list_size = 0;
        let mut fields_seen = false;
        while pos < block.len() {
            let b = block[pos];
            let f = if b & 0x80 != 0 {
                // Indexed field (§6.1).
                let i = int(block, &mut pos, 7)?;
                self.get(i)?.clone()
            } else if b & 0x40 != 0 {
                // Literal with incremental indexing (§6.2.1).
                let f = self.literal(block, &mut pos, 6)?;
                self.insert(f.clone());
                f
            } else if b & 0x20 != 0 {
                // Dynamic table size update (§6.3): only before the first field.
                if fields_seen {
                    return Err(HpackError::SizeUpdate);
                }
                let size = int(block, &mut pos, 5)?;
                if size > TABLE_SIZE {
                    return Err(HpackError::SizeUpdate);
                }
                self.max = Some(size);
                self.evict(0);
                continue;
            } else {
                // Literal without indexing (§6.2.2) or never indexed (§6.2.3).
                self.literal(block, &mut pos, 4)?
            };
            list_size += f.size();
            if list_size <= limit {
                out.push(f);
            }
            fields_seen = true;
        }
        Ok(Decoded { list_size })
    }

    fn get(&self, i: usize) -> Result<&Field, HpackError> {
        let fields = static_fields();
        match i {
            0 => Err(HpackError::Index(0)),
            i if i <= fields.len() => Ok(&fields[i - 1]),
            i => self
                .table
                .get(i - fields.len() - 1)
                .ok_or(HpackError::Index(i)),
        }
    }

    fn literal(&self, block: &[u8], pos: &mut usize, prefix: u8) -> Result<Field, HpackError> {
        let i = int(block, pos, prefix)?;
        if i == 0 {
            let name = string(block, pos)?;
            let value = string(block, pos)?;
            Ok(Field::new(&name, value))
        } else {
            let named = self.get(i)?;
            let value = string(block, pos)?;
            Ok(named.with_value(value))
        }
    }

    fn insert(&mut self, f: Field) {
        let size = f.size();
        if size > self.max() {
            // §4.4: an entry larger than the table empties it.
            self.table.clear();
            self.size = 0;
            return;
        }
        self.evict(size);
        self.size += size;
        self.table.push_front(f);
    }

    /// Evicts until `room` more fits.
    fn evict(&mut self, room: usize) {
        let max = self.max();
        while self.size + room > max {
            match self.table.pop_back() {
                Some(f) => self.size -= f.size(),
                None => break,
            }
        }
    }
}

/// An HPACK integer with an N-bit prefix (RFC 7541 §5.1), at most 2^28.
fn int(block: &[u8], pos: &mut usize, prefix: u8) -> Result<usize, HpackError> {
    let mask = (1u8 << prefix) - 1;
    let first = block.get(*pos).ok_or(HpackError::Truncated)? & mask;
    *pos += 1;
    if first < mask {
        return Ok(usize::from(first));
    }
    let mut value = usize::from(mask);
    let mut shift = 0;
    loop {
        let b = *block.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        value += usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(value);
        }
        shift += 7;
        if shift > 21 {
            return Err(HpackError::Overflow);
        }
    }
}

/// A string literal (RFC 7541 §5.2), Huffman-decoded when flagged.
fn string(block: &[u8], pos: &mut usize) -> Result<Bytes, HpackError> {
    let huffman = block.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = int(block, pos, 7)?;
    let end = pos.checked_add(len).ok_or(HpackError::Truncated)?;
    let raw = block.get(*pos..end).ok_or(HpackError::Truncated)?;
    *pos = end;
    if huffman {
        let mut out = Vec::with_capacity(len + len / 2);
        huffman_decode(raw, &mut out)?;
        Ok(Bytes::from(out))
    } else {
        Ok(Bytes::copy_from_slice(raw))
    }
}

/// The Huffman code is canonical: the codes of one length are consecutive,
/// in symbol order. Per length: the first code, how many, and where its
/// symbols start in `syms`.
struct Canon {
    first: [u32; 31],
    count: [u32; 31],
    start: [u16; 31],
    syms: [u16; 257],
}

const EOS: (u32, u8) = (0x3fff_ffff, 30);

const fn code_of(sym: usize) -> (u32, u8) {
    if sym == 256 {
        EOS
    } else {
        CODES[sym]
    }
}

const fn canon() -> Canon {
    let mut c = Canon {
        first: [0; 31],
        count: [0; 31],
        start: [0; 31],
        syms: [0; 257],
    };
    let mut next = 0usize;
    let mut len = 5;
    while len <= 30 {
        c.start[len] = next as u16;
        let mut sym = 0;
        while sym <= 256 {
            let (code, bits) = code_of(sym);
            if bits as usize == len {
                if c.count[len] == 0 {
                    c.first[len] = code;
                }
                c.count[len] += 1;
                c.syms[next] = sym as u16;
                next += 1;
            }
            sym += 1;
        }
        len += 1;
    }
    c
}

static CANON: Canon = canon();

/// Decodes a Huffman string (RFC 7541 §5.2): padding must be fewer than
/// eight bits, all ones, and EOS may not appear.
pub(crate) fn huffman_decode(input: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let mut code: u32 = 0;
    let mut len = 0usize;
    for &byte in input {
        for shift in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> shift) & 1);
            len += 1;
            if len >= 5 {
                let off = code.wrapping_sub(CANON.first[len]);
                if off < CANON.count[len] {
                    let sym = CANON.syms[CANON.start[len] as usize + off as usize];
                    if sym == 256 {
                        return Err(HpackError::Huffman);
                    }
                    out.push(sym as u8);
                    code = 0;
                    len = 0;
                } else if len == 30 {
                    return Err(HpackError::Huffman);
                }
            }
        }
    }
    if len >= 8 || code != (1 << len) - 1 {
        return Err(HpackError::Huffman);
    }
    Ok(())
}

/// Encodes a Huffman string (for tests: the encoder sends plain literals).
#[cfg(test)]
pub(crate) fn huffman_encode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u64, 0u32);
    for &b in input {
        let (code, n) = CODES[usize::from(b)];
        acc = (acc << n) | u64::from(code);
        bits += u32::from(n);
        while bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    if bits > 0 {
        out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
    }
    out
}

/// Writes an HPACK integer with an N-bit prefix; `flags` fills the bits
/// above the prefix.
pub(crate) fn put_int(out: &mut Vec<u8>, flags: u8, prefix: u8, value: usize) {
    let mask = (1usize << prefix) - 1;
    if value < mask {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | mask as u8);
    let mut rest = value - mask;
    while rest >= 0x80 {
        out.push((rest as u8 & 0x7f) | 0x80);
        rest >>= 7;
    }
    out.push(rest as u8);
}

/// A plain string literal (no Huffman).
fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    put_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// The static table's index of a response field name, when it has one: a
/// `match`, which compiles to a dispatch on the length, where a walk over
/// the table compared each field with up to 47 names.
fn name_index(name: &str) -> Option<usize> {
    Some(match name {
        "accept-charset" => 15,
        "accept-encoding" => 16,
        "accept-language" => 17,
        "accept-ranges" => 18,
        "accept" => 19,
        "access-control-allow-origin" => 20,
        "age" => 21,
        "allow" => 22,
        "authorization" => 23,
        "cache-control" => 24,
        "content-disposition" => 25,
        "content-encoding" => 26,
        "content-language" => 27,
        "content-length" => 28,
        "content-location" => 29,
        "content-range" => 30,
        "content-type" => 31,
        "cookie" => 32,
        "date" => 33,
        "etag" => 34,
        "expect" => 35,
        "expires" => 36,
        "from" => 37,
        "host" => 38,
        "if-match" => 39,
        "if-modified-since" => 40,
        "if-none-match" => 41,
        "if-range" => 42,
        "if-unmodified-since" => 43,
        "last-modified" => 44,
        "link" => 45,
        "location" => 46,
        "max-forwards" => 47,
        "proxy-authenticate" => 48,
        "proxy-authorization" => 49,
        "range" => 50,
        "referer" => 51,
        "refresh" => 52,
        "retry-after" => 53,
        "server" => 54,
        "set-cookie" => 55,
        "strict-transport-security" => 56,
        "transfer-encoding" => 57,
        "user-agent" => 58,
        "vary" => 59,
        "via" => 60,
        "www-authenticate" => 61,
        _ => return None,
    })
}

/// Fields a response over HTTP/2 does not carry: the connection-specific
/// ones, and `te`, which only a request may (RFC 9113 §8.2.2). A backend's
/// HTTP/1.1 response may have them; hyper's HTTP/2 server drops them too.
fn not_in_response(name: &HeaderName) -> bool {
    connection_specific(name) || name == http::header::TE
}

/// Fields HTTP/2 forbids (RFC 9113 §8.2.2).
pub(crate) fn connection_specific(name: &HeaderName) -> bool {
    use http::header::{CONNECTION, TRANSFER_ENCODING, UPGRADE};
    name == CONNECTION
        || name == TRANSFER_ENCODING
        || name == UPGRADE
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

/// Encodes a response head: `:status`, then each field as a literal
/// without indexing (an indexed name where the static table has it), then
/// what hyper's HTTP/2 server adds when missing: `date`, and the
/// `content-length` of a body whose length is known (`length`).
pub(crate) fn encode_response(
    status: u16,
    headers: &HeaderMap,
    length: Option<u64>,
    out: &mut Vec<u8>,
) {
    let indexed = match status {
        200 => Some(8),
        204 => Some(9),
        206 => Some(10),
        304 => Some(11),
        400 => Some(12),
        404 => Some(13),
        500 => Some(14),
        _ => None,
    };
    match indexed {
        Some(i) => out.push(0x80 | i),
        None => {
            put_int(out, 0, 4, 8);
            let mut digits = itoa::Buffer::new();
            put_str(out, digits.format(status).as_bytes());
        }
    }
    encode_fields(headers, out);
    if status < 200 {
        return;
    }
    if !headers.contains_key(http::header::DATE) {
        put_int(out, 0, 4, 33);
        put_str(out, &crate::h1::wire::date_now());
    }
    if let Some(n) = length.filter(|_| !headers.contains_key(http::header::CONTENT_LENGTH)) {
        put_int(out, 0, 4, 28);
        put_str(out, itoa::Buffer::new().format(n).as_bytes());
    }
}

/// Encodes fields without pseudo-headers (a response's rest, or trailers).
pub(crate) fn encode_fields(headers: &HeaderMap, out: &mut Vec<u8>) {
    let mut last: Option<(&HeaderName, Option<usize>)> = None;
    for (name, value) in headers {
        if not_in_response(name) {
            continue;
        }
        // Fields of one name come one after the other: look its index up once.
        let index = match last {
            Some((n, i)) if n == name => i,
            _ => name_index(name.as_str()),
        };
        last = Some((name, index));
        match index {
            Some(i) => put_int(out, 0, 4, i),
            None => {
                out.push(0);
                put_str(out, name.as_str().as_bytes());
            }
        }
        put_str(out, value.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn names(fields: &[Field]) -> Vec<(String, String)> {
        fields
            .iter()
            .map(|f| match f {
                Field::Pseudo(p, v) => (
                    format!("{p:?}").to_lowercase(),
                    String::from_utf8(v.to_vec()).unwrap(),
                ),
                Field::Header(n, v) => (n.to_string(), v.to_str().unwrap().to_string()),
                Field::Bad { .. } => ("bad".into(), String::new()),
            })
            .collect()
    }

    /// RFC 7541 C.3 and C.4: three requests on one connection, without and
    /// with Huffman coding; the table holds what the RFC says after each.
    #[test]
    fn decodes_the_rfc_request_examples_in_sequence() {
        for blocks in [
            [
                "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
                "8286 84be 5808 6e6f 2d63 6163 6865",
                "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
            ],
            [
                "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
                "8286 84be 5886 a8eb 1064 9cbf",
                "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
            ],
        ] {
            let mut d = Decoder::default();
            let mut out = Vec::new();
            d.decode(&hex(blocks[0]), &mut out, usize::MAX).unwrap();
            assert_eq!(
                names(&out),
                [
                    ("method", "GET"),
                    ("scheme", "http"),
                    ("path", "/"),
                    ("authority", "www.example.com")
                ]
                .map(|(a, b)| (a.to_string(), b.to_string()))
            );
            assert_eq!(d.size, 57);
            out.clear();
            d.decode(&hex(blocks[1]), &mut out, usize::MAX).unwrap();
            assert_eq!(names(&out)[4], ("cache-control".into(), "no-cache".into()));
            assert_eq!(d.size, 110);
            out.clear();
            let got = d.decode(&hex(blocks[2]), &mut out, usize::MAX).unwrap();
            assert_eq!(names(&out)[1], ("scheme".into(), "https".into()));
            assert_eq!(names(&out)[2], ("path".into(), "/index.html".into()));
            assert_eq!(names(&out)[4], ("custom-key".into(), "custom-value".into()));
            assert_eq!(d.size, 164);
            assert_eq!(d.table.len(), 3);
            assert_eq!(got.list_size, out.iter().map(Field::size).sum::<usize>());
        }
    }

    #[test]
    fn a_small_table_evicts_the_oldest_entries() {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        // Size update to 60, then two literals of 42 bytes each.
        let mut block = vec![0x3f, 60 - 31];
        for v in ["a", "b"] {
            block.push(0x40);
            put_str(&mut block, b"x-aaaa");
            put_str(&mut block, v.as_bytes());
        }
        d.decode(&block, &mut out, usize::MAX).unwrap();
        assert_eq!(d.table.len(), 1);
        assert_eq!(d.size, 39);
        // Index 62 is the newest ("b").
        out.clear();
        d.decode(&[0x80 | 62], &mut out, usize::MAX).unwrap();
        assert_eq!(names(&out), [("x-aaaa".into(), "b".into())]);
        assert_eq!(
            d.decode(&[0x80 | 63], &mut out, usize::MAX).err(),
            Some(HpackError::Index(63))
        );
    }

    #[test]
    fn refuses_what_rfc_7541_calls_decoding_errors() {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        // A size update after a field; one above the limit; index 0; an
        // integer past 2^28; a string running past the block.
        for block in [
            vec![0x82, 0x20],
            vec![0x3f, 0xe2, 0x1f],
            vec![0x80],
            vec![0xff, 0xff, 0xff, 0xff, 0xff, 0x7f],
            vec![0x00, 0x05, b'a'],
        ] {
            assert!(d.decode(&block, &mut out, usize::MAX).is_err(), "{block:?}");
        }
        // Huffman: EOS in the string; padding of eight bits; padding not all ones.
        let eos = [0xff, 0xff, 0xff, 0xfc];
        assert!(huffman_decode(&eos, &mut Vec::new()).is_err());
        let mut long_pad = huffman_encode(b"a");
        long_pad.push(0xff);
        assert!(huffman_decode(&long_pad, &mut Vec::new()).is_err());
        // "0" is 00000: padded with 0s instead of 1s.
        assert!(huffman_decode(&[0x00], &mut Vec::new()).is_err());
    }

    #[test]
    fn past_the_limit_fields_are_counted_and_tabled_but_not_kept() {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        let mut block = vec![0x40];
        put_str(&mut block, b"x-big");
        put_str(&mut block, &[b'v'; 1000]);
        // The same entry referenced 100 times: 103,700 bytes of list.
        block.extend(std::iter::repeat_n(0x80 | 62, 100));
        let got = d.decode(&block, &mut out, 4096).unwrap();
        assert_eq!(got.list_size, 101 * 1037);
        assert_eq!(out.len(), 3, "only what fits the limit is kept");
        assert_eq!(d.table.len(), 1);
    }

    #[test]
    fn name_index_agrees_with_the_static_table() {
        for (i, (n, _)) in STATIC.iter().enumerate().skip(14) {
            let first = STATIC.iter().position(|(m, _)| m == n).unwrap() + 1;
            assert_eq!(name_index(n), Some(first), "{n} at {}", i + 1);
        }
        assert_eq!(name_index("x-custom"), None);
        assert_eq!(name_index(":status"), None);
    }

    #[test]
    fn huffman_round_trips_every_octet() {
        let all: Vec<u8> = (0..=255).collect();
        let mut out = Vec::new();
        huffman_decode(&huffman_encode(&all), &mut out).unwrap();
        assert_eq!(out, all);
        out.clear();
        huffman_decode(&huffman_encode(b"www.example.com"), &mut out).unwrap();
        assert_eq!(out, b"www.example.com");
        assert_eq!(
            huffman_encode(b"www.example.com"),
            hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff")
        );
    }

    #[test]
    fn forbidden_fields_decode_as_bad_and_still_enter_the_table() {
        let mut d = Decoder::default();
        let mut out = Vec::new();
        let mut block = Vec::new();
        for (n, v) in [
            ("X-Upper", "v"),
            (":unknown", "v"),
            ("x-nul", "a\0b"),
            ("x-cr", "a\rb"),
            ("x-ok", " v "),
        ] {
            block.push(0x40);
            put_str(&mut block, n.as_bytes());
            put_str(&mut block, v.as_bytes());
        }
        d.decode(&block, &mut out, usize::MAX).unwrap();
        let got = names(&out);
        assert_eq!(got.iter().filter(|(n, _)| n == "bad").count(), 4);
        assert_eq!(got[4], ("x-ok".into(), " v ".into()));
        assert_eq!(d.table.len(), 5);
        // The bad entry's name with a good value is still bad.
        out.clear();
        let mut again = Vec::new();
        put_int(&mut again, 0, 4, 62 + 4);
        put_str(&mut again, b"fine");
        d.decode(&again, &mut out, usize::MAX).unwrap();
        assert!(matches!(out[0], Field::Bad { .. }));
    }

    #[test]
    fn encoded_responses_decode_to_the_same_fields() {
        let mut h = HeaderMap::new();
        h.insert("content-type", HeaderValue::from_static("text/plain"));
        h.append("set-cookie", HeaderValue::from_static("a=1"));
        h.append("set-cookie", HeaderValue::from_static("b=2"));
        h.insert("x-custom", HeaderValue::from_static("yes"));
        h.insert("connection", HeaderValue::from_static("close"));
        for status in [200, 404, 502, 101] {
            let mut out = Vec::new();
            encode_response(status, &h, None, &mut out);
            let mut fields = Vec::new();
            Decoder::default()
                .decode(&out, &mut fields, usize::MAX)
                .unwrap();
            let got = names(&fields);
            assert_eq!(got[0], ("status".into(), status.to_string()));
            // `date` after the fields of a final response only.
            let fields = if status >= 200 {
                assert_eq!(got.last().unwrap().0, "date");
                &got[1..got.len() - 1]
            } else {
                &got[1..]
            };
            assert_eq!(
                fields,
                [
                    ("content-type", "text/plain"),
                    ("set-cookie", "a=1"),
                    ("set-cookie", "b=2"),
                    ("x-custom", "yes")
                ]
                .map(|(a, b)| (a.to_string(), b.to_string()))
            );
        }
        let mut out = Vec::new();
        put_int(&mut out, 0, 5, 1337);
        assert_eq!(out, [31, 154, 10], "RFC 7541 C.1.2");
    }
}
