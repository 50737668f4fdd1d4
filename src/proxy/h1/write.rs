//! Serializing HTTP/1.1 heads onto the wire: the request the upstream gets (after
//! [`crate::proxy::http::Conn::rewrite`]), the upstream's response as the client gets it (its
//! fields passed through as they came, less the hop-by-hop ones), and the proxy's own answers.

use http::header::HeaderMap;
use http::request::Parts;
use http::StatusCode;

use super::parse::{list, Framing, ResponseHead};

/// Append the request head for the upstream: request line, fields, and the framing of a chunked
/// body (a length stays among the fields).
pub fn request_head(out: &mut Vec<u8>, req: &Parts, framing: Framing) {
    out.extend_from_slice(req.method.as_str().as_bytes());
    out.push(b' ');
    let target = req.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    fields(out, &req.headers);
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

fn fields(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
}

/// How the client gets a response's body and connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ToClient {
    /// The body is passed on chunked, as the upstream sent it.
    pub chunked: bool,
    /// The connection closes after this response.
    pub close: bool,
    /// An HTTP/1.0 client kept alive: it must be told so.
    pub keep_alive_10: bool,
    /// A protocol switch (101): `Connection` and `Upgrade` are passed on.
    pub upgrade: bool,
}

/// Fields that belong to one connection (RFC 9110 §7.6.1), never passed on.
const HOP_BY_HOP: [&[u8]; 6] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"transfer-encoding",
    b"upgrade",
];

/// Append the client's response head from the upstream's (`raw`: the bytes `head` was parsed
/// from).
pub fn response_head(out: &mut Vec<u8>, raw: &[u8], head: &ResponseHead, to: ToClient) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(head.status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(&raw[head.reason.clone()]);
    out.extend_from_slice(b"\r\n");
    // Options of `Connection` naming other fields make those hop-by-hop too.
    let named: Vec<&[u8]> = match head.connection_names_fields && !to.upgrade {
        true => head
            .fields
            .iter()
            .filter(|(n, _)| raw[n.clone()].eq_ignore_ascii_case(b"connection"))
            .flat_map(|(_, v)| list(&raw[v.clone()]))
            .collect(),
        false => Vec::new(),
    };
    for (name, value) in &head.fields {
        let name = &raw[name.clone()];
        let hop = HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
            && !(to.upgrade
                && (name.eq_ignore_ascii_case(b"connection")
                    || name.eq_ignore_ascii_case(b"upgrade")));
        if hop || named.iter().any(|n| name.eq_ignore_ascii_case(n)) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(&raw[value.clone()]);
        out.extend_from_slice(b"\r\n");
    }
    if to.chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if to.close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if to.keep_alive_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Append one of the proxy's own answers, whole: `body` is sent unless `head_only` (a `HEAD`).
pub fn local_response(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    body: &[u8],
    to: ToClient,
    head_only: bool,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    fields(out, headers);
    out.extend_from_slice(b"content-length: ");
    out.extend_from_slice(body.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    if to.close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if to.keep_alive_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::h1::parse::{self, Parsed};

    fn relayed(raw: &str, to: ToClient) -> String {
        let Ok(Parsed::Complete(head, _)) = parse::response(raw.as_bytes(), false) else {
            panic!("{raw}")
        };
        let mut out = Vec::new();
        response_head(&mut out, raw.as_bytes(), &head, to);
        String::from_utf8(out).unwrap()
    }

    const PLAIN: ToClient = ToClient {
        chunked: false,
        close: false,
        keep_alive_10: false,
        upgrade: false,
    };

    #[test]
    fn hop_by_hop_fields_and_those_connection_names_are_not_passed_on() {
        let raw = "HTTP/1.1 200 OK\r\nConnection: keep-alive, X-Private\r\nX-Private: 1\r\n\
                   Keep-Alive: timeout=5\r\nContent-Length: 2\r\nX-End: kept\r\n\r\n";
        assert_eq!(
            relayed(raw, PLAIN),
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-End: kept\r\n\r\n"
        );
    }

    #[test]
    fn chunked_and_close_are_said_once_by_the_proxy() {
        let raw = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
        let to = ToClient {
            chunked: true,
            close: true,
            ..PLAIN
        };
        assert_eq!(
            relayed(raw, to),
            "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
    }

    #[test]
    fn a_protocol_switch_keeps_connection_and_upgrade() {
        let raw =
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n";
        let to = ToClient {
            upgrade: true,
            ..PLAIN
        };
        assert_eq!(
            relayed(raw, to),
            "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
        );
    }
}
