//! JSON-RPC 2.0 messages as the router sees them: a zero-copy [`Envelope`] holding only what routing
//! needs (method, raw id, `params.sessionId`, whether a result or error is present) and the message
//! kind; batch detection and splitting; the proxy's own error replies; and the few rewrites the
//! router makes (replacing the top-level `id`, setting a field of `params`). Everything else in a
//! body is validated but skipped, and the rewrites keep all other values byte-identical.

use std::borrow::Cow;
use std::fmt;

use bytes::Bytes;
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INTERNAL_ERROR: i64 = -32603;
/// sessiongate: the server holding the session is unavailable.
pub const SERVER_UNAVAILABLE: i64 = -32001;
/// sessiongate: the caller's identity is missing or unknown (the CLI uses it for a wrong token).
pub const AUTHENTICATION_FAILED: i64 = -32002;
/// sessiongate: the caller may not do this (another user's session, a denied method).
pub const FORBIDDEN: i64 = -32003;
/// sessiongate: the session is busy with another turn and its queue is full.
pub const SESSION_BUSY: i64 = -32004;
/// sessiongate: the caller's rate limit is reached.
pub const RATE_LIMITED: i64 = -32005;
/// sessiongate: every node that could take a new session holds its maximum of live sessions.
pub const FLEET_FULL: i64 = -32006;
/// sessiongate: a node accepted a request and did not answer within `request_timeout`.
pub const UPSTREAM_TIMEOUT: i64 = -32007;

#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("message is not valid UTF-8: {0}")]
    Utf8(#[from] std::str::Utf8Error),
    #[error("invalid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("params is not a JSON object")]
    ParamsNotObject,
}

impl ParseError {
    /// The JSON-RPC error code to answer with: -32700 for bytes that are not JSON, -32600 for JSON
    /// of the wrong shape.
    pub fn code(&self) -> i64 {
        match self {
            Self::Json(e) if e.classify() == serde_json::error::Category::Data => INVALID_REQUEST,
            Self::ParamsNotObject => INVALID_REQUEST,
            Self::Utf8(_) | Self::Json(_) => PARSE_ERROR,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MessageKind {
    /// `method` and `id`.
    Request,
    /// `method`, no `id`.
    Notification,
    /// `id` and exactly one of `result` / `error`, no `method`.
    Response,
    /// Valid JSON, but not a JSON-RPC message (not an object, bad `method` or `id` type, …).
    #[default]
    Invalid,
}

/// The routing view of one message, borrowing from the body. Strings are `Cow::Borrowed` unless
/// they contain escapes. `id` is kept raw (`1`, `"a"`, `null`) so it can be echoed unchanged.
#[derive(Debug, Clone, Default)]
pub struct Envelope<'a> {
    pub kind: MessageKind,
    pub method: Option<Cow<'a, str>>,
    pub id: Option<&'a RawValue>,
    pub session_id: Option<Cow<'a, str>>,
    pub has_result: bool,
    pub has_error: bool,
}

/// Parses the routing view of a single (non-batch) message. Invalid JSON is an error; valid JSON
/// that is not a message (including a batch array) is `MessageKind::Invalid`.
pub fn parse_envelope(body: &[u8]) -> Result<Envelope<'_>, ParseError> {
    let text = std::str::from_utf8(body)?;
    let mut env = if first_byte(body) == Some(b'{') {
        match serde_json::from_str::<Envelope<'_>>(text) {
            Ok(env) => env,
            // Valid JSON the quick pass refused: a number past f64's range where a string or an
            // object is looked for (`"params": 1E999`). Read again through raw values, which
            // evaluate no number (found by the `envelope` fuzz target).
            Err(e)
                if e.classify() == serde_json::error::Category::Syntax
                    && serde_json::from_str::<IgnoredAny>(text).is_ok() =>
            {
                let mut de = serde_json::Deserializer::from_str(text);
                let env = EnvelopeSeed { raw_first: true }.deserialize(&mut de)?;
                de.end()?;
                env
            }
            Err(e) => return Err(e.into()),
        }
    } else {
        serde_json::from_str::<IgnoredAny>(text)?;
        Envelope::default()
    };
    env.kind = env.classify();
    Ok(env)
}

/// Whether the body is a batch: its first non-whitespace byte is `[`.
pub fn is_batch(body: &[u8]) -> bool {
    first_byte(body) == Some(b'[')
}

/// Splits a batch into its raw elements (an empty batch gives an empty list, which JSON-RPC answers
/// with one `INVALID_REQUEST` error).
pub fn split_batch(body: &[u8]) -> Result<Vec<&RawValue>, ParseError> {
    Ok(serde_json::from_str(std::str::from_utf8(body)?)?)
}

/// `{"jsonrpc":"2.0","id":<id or null>,"error":{"code":…,"message":…,"data":…}}`, `data` omitted when
/// `None`; the id is copied byte for byte.
pub fn error_response(
    id: Option<&RawValue>,
    code: i64,
    message: &str,
    data: Option<&Value>,
) -> Bytes {
    #[derive(Serialize)]
    struct Reply<'a> {
        jsonrpc: &'static str,
        id: Option<&'a RawValue>,
        error: ErrorObject<'a>,
    }
    #[derive(Serialize)]
    struct ErrorObject<'a> {
        code: i64,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        data: Option<&'a Value>,
    }
    let reply = Reply {
        jsonrpc: "2.0",
        id,
        error: ErrorObject {
            code,
            message,
            data,
        },
    };
    match serde_json::to_vec(&reply) {
        Ok(v) => Bytes::from(v),
        // Unreachable: every part above serializes infallibly.
        Err(_) => Bytes::from_static(
            br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"internal error"}}"#,
        ),
    }
}

/// The body with its top-level `id` replaced (or added) by `new_id` (a `RawValue`, number or string).
pub fn with_id<T: Serialize + ?Sized>(body: &[u8], new_id: &T) -> Result<Bytes, ParseError> {
    with_member(body, "id", &serde_json::value::to_raw_value(new_id)?)
}

/// The body with `params[name] = value`, creating `params` if it is absent or null. Fails with
/// `ParamsNotObject` if `params` is an array or scalar.
pub fn with_param(body: &[u8], name: &str, value: Value) -> Result<Bytes, ParseError> {
    let mut entries = object_entries(std::str::from_utf8(body)?)?;
    let params_raw = entries
        .iter()
        .rev()
        .find(|(k, _)| k == "params")
        .map(|(_, v)| *v);
    let mut params = match params_raw {
        Some(raw) if raw.get() != "null" => {
            if first_byte(raw.get().as_bytes()) != Some(b'{') {
                return Err(ParseError::ParamsNotObject);
            }
            object_entries(raw.get())?
        }
        _ => Vec::new(),
    };
    let value = serde_json::value::to_raw_value(&value)?;
    set_entry(&mut params, name, &value);
    let params = serde_json::value::to_raw_value(&Entries(params))?;
    set_entry(&mut entries, "params", &params);
    Ok(Bytes::from(serde_json::to_vec(&Entries(entries))?))
}

/// The body without `params[name]` (unchanged if it has none).
pub fn without_param(body: &[u8], name: &str) -> Result<Bytes, ParseError> {
    let entries = object_entries(std::str::from_utf8(body)?)?;
    let params = entries
        .iter()
        .rev()
        .find(|(k, _)| k == "params")
        .map(|(_, v)| *v);
    let Some(params) = params.filter(|p| first_byte(p.get().as_bytes()) == Some(b'{')) else {
        return Ok(Bytes::copy_from_slice(body));
    };
    let mut members = object_entries(params.get())?;
    members.retain(|(k, _)| k != name);
    with_member(
        body,
        "params",
        &serde_json::value::to_raw_value(&Entries(members))?,
    )
}

/// The body with its whole `params` replaced by `params`; every other member kept byte for byte.
pub fn with_param_value(body: &[u8], params: Value) -> Result<Bytes, ParseError> {
    with_member(body, "params", &serde_json::value::to_raw_value(&params)?)
}

/// The body with its top-level member `name` set to `value`; the rest byte for byte.
fn with_member(body: &[u8], name: &str, value: &RawValue) -> Result<Bytes, ParseError> {
    let mut entries = object_entries(std::str::from_utf8(body)?)?;
    set_entry(&mut entries, name, value);
    Ok(Bytes::from(serde_json::to_vec(&Entries(entries))?))
}

fn first_byte(body: &[u8]) -> Option<u8> {
    body.iter().copied().find(|b| !b.is_ascii_whitespace())
}

impl Envelope<'_> {
    fn classify(&self) -> MessageKind {
        // An id is a number, a string or null.
        let id_ok = !self.id.is_some_and(|id| {
            !matches!(
                id.get().as_bytes().first(),
                Some(b'"' | b'-' | b'0'..=b'9' | b'n')
            )
        });
        match (&self.method, self.id) {
            _ if self.kind == MessageKind::Invalid || !id_ok => MessageKind::Invalid,
            (Some(_), Some(_)) => MessageKind::Request,
            (Some(_), None) => MessageKind::Notification,
            (None, Some(_)) if self.has_result != self.has_error => MessageKind::Response,
            (None, _) => MessageKind::Invalid,
        }
    }
}

// One pass over a top-level object: strings borrowed, `id` kept raw, the rest skipped. `kind` is a
// provisional `Request` unless a field has the wrong type; `classify` settles it.
impl<'de> Deserialize<'de> for Envelope<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        EnvelopeSeed { raw_first: false }.deserialize(d)
    }
}

/// Reads an [`Envelope`]; `raw_first`: the picked members through their raw text ([`RawFirst`]).
#[derive(Clone, Copy)]
struct EnvelopeSeed {
    raw_first: bool,
}

impl<'de> DeserializeSeed<'de> for EnvelopeSeed {
    type Value = Envelope<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Envelope<'de>, D::Error> {
        struct V {
            raw_first: bool,
        }
        impl V {
            /// The next member's name: as a string unless `raw_first` (as bytes, see [`Name`]).
            fn name<'de, A: MapAccess<'de>>(
                &self,
                map: &mut A,
            ) -> Result<Option<Cow<'de, [u8]>>, A::Error> {
                if self.raw_first {
                    return Ok(map.next_key::<Name<'de>>()?.map(|name| name.0));
                }
                Ok(map.next_key::<Str<'de>>()?.map(|name| match name.0 {
                    Cow::Borrowed(text) => Cow::Borrowed(text.as_bytes()),
                    Cow::Owned(text) => Cow::Owned(text.into_bytes()),
                }))
            }

            fn pick<'de, A: MapAccess<'de>>(
                &self,
                map: &mut A,
                pick: Pick,
            ) -> Result<Option<Cow<'de, str>>, A::Error> {
                match self.raw_first {
                    true => map.next_value_seed(RawFirst(pick)),
                    false => map.next_value_seed(pick),
                }
            }
        }
        impl<'de> Visitor<'de> for V {
            type Value = Envelope<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON-RPC object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<'de>, A::Error> {
                let mut env = Envelope {
                    kind: MessageKind::Request,
                    ..Envelope::default()
                };
                while let Some(key) = self.name(&mut map)? {
                    match &*key {
                        b"method" => {
                            env.method = self.pick(&mut map, Pick::Str)?;
                            if env.method.is_none() {
                                env.kind = MessageKind::Invalid;
                            }
                        }
                        b"id" => env.id = Some(map.next_value()?),
                        b"params" => env.session_id = self.pick(&mut map, Pick::SessionId)?,
                        b"result" => {
                            env.has_result = map.next_value::<IgnoredAny>().map(|_| true)?
                        }
                        b"error" => env.has_error = map.next_value::<IgnoredAny>().map(|_| true)?,
                        _ => drop(map.next_value::<IgnoredAny>()?),
                    }
                }
                Ok(env)
            }
        }
        d.deserialize_map(V {
            raw_first: self.raw_first,
        })
    }
}

/// A JSON string, borrowed from the input unless it had escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Pick::Str)?
            .map(Str)
            .ok_or_else(|| serde::de::Error::custom("expected a string"))
    }
}

/// A member name as bytes, escapes processed: a name may hold a lone surrogate (`"\ude30"`),
/// valid JSON that a Rust string cannot hold and that no name the envelope looks for has (found
/// by the `envelope` fuzz target). Only for text already checked to be valid JSON:
/// `deserialize_bytes` lets control characters through, which JSON strings may not hold (also
/// found by the fuzz target).
struct Name<'a>(Cow<'a, [u8]>);

impl<'de> Deserialize<'de> for Name<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Name<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a member name")
            }
            fn visit_borrowed_bytes<E>(self, v: &'de [u8]) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(v)))
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v.to_vec())))
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Borrowed(v.as_bytes())))
            }
            fn visit_str<E>(self, v: &str) -> Result<Name<'de>, E> {
                Ok(Name(Cow::Owned(v.as_bytes().to_vec())))
            }
        }
        d.deserialize_bytes(V)
    }
}

/// Reads any JSON value, keeping one string out of it: the value itself if it is a string (`Str`),
/// or its `sessionId` member if it is an object with a string there (`SessionId`).
#[derive(Clone, Copy)]
enum Pick {
    Str,
    SessionId,
}

impl<'de> DeserializeSeed<'de> for Pick {
    type Value = Option<Cow<'de, str>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Pick {
    type Value = Option<Cow<'de, str>>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(matches!(self, Pick::Str).then_some(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(matches!(self, Pick::Str).then(|| Cow::Owned(v.to_owned())))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(key) = map.next_key::<Str<'de>>()? {
            if matches!(self, Pick::SessionId) && key.0 == "sessionId" {
                found = map.next_value_seed(Pick::Str)?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A [`Pick`] through the value's raw text: the value is taken whole without evaluating it, then
/// read again only if it is a string or an object. Slower (twice over the value), for what
/// `deserialize_any` refuses although it is valid JSON: a number past f64's range.
#[derive(Clone, Copy)]
struct RawFirst(Pick);

impl<'de> DeserializeSeed<'de> for RawFirst {
    type Value = Option<Cow<'de, str>>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        let raw = <&'de RawValue>::deserialize(d)?;
        raw_pick(self.0, raw).map_err(serde::de::Error::custom)
    }
}

fn raw_pick(pick: Pick, raw: &RawValue) -> Result<Option<Cow<'_, str>>, serde_json::Error> {
    let text = raw.get();
    match (pick, first_byte(text.as_bytes())) {
        // A string a Rust string cannot hold (a lone surrogate) names no method or session.
        (Pick::Str, Some(b'"')) => Ok(serde_json::from_str::<Str<'_>>(text).ok().map(|s| s.0)),
        // As `Pick`'s own visitor: the last `sessionId` member counts.
        (Pick::SessionId, Some(b'{')) => match last_member(text, b"sessionId")? {
            Some(value) => raw_pick(Pick::Str, value),
            None => Ok(None),
        },
        _ => Ok(None),
    }
}

/// The raw value of an object's last member called `name`; `object` is valid JSON (see [`Name`]).
fn last_member<'a>(
    object: &'a str,
    name: &[u8],
) -> Result<Option<&'a RawValue>, serde_json::Error> {
    struct V<'n>(&'n [u8]);
    impl<'de> Visitor<'de> for V<'_> {
        type Value = Option<&'de RawValue>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut last = None;
            while let Some(key) = map.next_key::<Name<'de>>()? {
                let value = map.next_value::<&'de RawValue>()?;
                if *key.0 == *self.0 {
                    last = Some(value);
                }
            }
            Ok(last)
        }
    }
    serde_json::Deserializer::from_str(object).deserialize_map(V(name))
}

/// The members of a JSON object in their original order, values raw.
type Members<'a> = Vec<(Cow<'a, str>, &'a RawValue)>;

fn object_entries(text: &str) -> Result<Members<'_>, serde_json::Error> {
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Members<'de>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
            let mut out = Vec::new();
            while let Some((k, v)) = map.next_entry::<Str<'de>, &'de RawValue>()? {
                out.push((k.0, v));
            }
            Ok(out)
        }
    }
    let mut de = serde_json::Deserializer::from_str(text);
    let members = de.deserialize_map(V)?;
    de.end()?;
    Ok(members)
}

/// Sets `name` in place (first occurrence; later duplicates dropped) or appends it.
fn set_entry<'a>(entries: &mut Members<'a>, name: &str, value: &'a RawValue) {
    match entries.iter().position(|(k, _)| k == name) {
        Some(i) => {
            entries[i].1 = value;
            let mut j = i + 1;
            while j < entries.len() {
                if entries[j].0 == name {
                    entries.remove(j);
                } else {
                    j += 1;
                }
            }
        }
        None => entries.push((Cow::Owned(name.to_owned()), value)),
    }
}

struct Entries<'a>(Members<'a>);

impl Serialize for Entries<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn kind(body: &str) -> MessageKind {
        parse_envelope(body.as_bytes()).unwrap().kind
    }

    fn json(bytes: &[u8]) -> Value {
        serde_json::from_slice(bytes).unwrap()
    }

    /// Valid JSON with a number past f64's range where a string or an object is looked for, or
    /// a lone surrogate: read, never refused as invalid JSON (found by the `envelope` fuzz
    /// target).
    #[test]
    fn valid_json_no_rust_value_holds_is_read_not_refused() {
        let cases = [
            (
                r#"{"jsonrpc":"2.0","id":3,"method":"sessions.open","params":1E999}"#,
                Some("sessions.open"),
                None,
                MessageKind::Request,
            ),
            (
                r#"{"jsonrpc":"2.0","id":3,"method":1E999}"#,
                None,
                None,
                MessageKind::Invalid,
            ),
            (
                r#"{"id":3,"method":"m","params":{"sessionId":1E999}}"#,
                Some("m"),
                None,
                MessageKind::Request,
            ),
            (
                r#"{"id":3,"method":"m","params":{"sessionId":"s","n":-1E999}}"#,
                Some("m"),
                Some("s"),
                MessageKind::Request,
            ),
            (
                r#"{"id":3,"method":"m","params":{"sessionId":"a","sessionId":"b"},"x":1E999}"#,
                Some("m"),
                Some("b"),
                MessageKind::Request,
            ),
            (
                r#"{"method":"m\u0041","params":{"sessionId":"\u0073","sessionId":2E999}}"#,
                Some("mA"),
                None,
                MessageKind::Notification,
            ),
            (
                r#"{"method":"m","params":{"sessionId":"\u0073"},"params":3E999}"#,
                Some("m"),
                None,
                MessageKind::Notification,
            ),
        ];
        for (body, method, session, kind) in cases {
            let env = parse_envelope(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(env.method.as_deref(), method, "{body}");
            assert_eq!(env.session_id.as_deref(), session, "{body}");
            assert_eq!(env.kind, kind, "{body}");
        }
        // Lone surrogates (valid JSON; no Rust string holds them): in a name the message is
        // read, in a method or session id that value names nothing.
        let cases = [
            (
                r#"{"\ude30":1,"id":1,"method":"m","params":{"sessionId":"s"}}"#,
                Some("m"),
                Some("s"),
                MessageKind::Request,
            ),
            (
                r#"{"id":1,"method":"m","params":{"\ud800x":1,"sessionId":"s"}}"#,
                Some("m"),
                Some("s"),
                MessageKind::Request,
            ),
            (
                r#"{"id":1,"method":"\ude30","params":{"sessionId":"s"}}"#,
                None,
                Some("s"),
                MessageKind::Invalid,
            ),
            (
                r#"{"id":1,"method":"m","params":{"sessionId":"\ud800"}}"#,
                Some("m"),
                None,
                MessageKind::Request,
            ),
        ];
        for (body, method, session, kind) in cases {
            let env = parse_envelope(body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"));
            assert_eq!(env.method.as_deref(), method, "{body}");
            assert_eq!(env.session_id.as_deref(), session, "{body}");
            assert_eq!(env.kind, kind, "{body}");
        }
        // Still invalid: a control character in a name, a malformed number.
        assert!(parse_envelope(b"{\"method\":\"m\",\"a\nb\":1}").is_err());
        assert!(parse_envelope(b"{\"method\":\"m\",\"\\ude30\":1,\"a\nb\":1}").is_err());
        assert!(parse_envelope(br#"{"method":"m","params":1E}"#).is_err());
    }

    #[test]
    fn classification() {
        use MessageKind::*;
        assert_eq!(
            kind(r#"{"jsonrpc":"2.0","id":1,"method":"ping","params":{}}"#),
            Request
        );
        assert_eq!(kind(r#"{"method":"ping","id":null}"#), Request);
        assert_eq!(
            kind(r#"{"jsonrpc":"2.0","method":"session.event","params":[1]}"#),
            Notification
        );
        assert_eq!(
            kind(r#"{"jsonrpc":"2.0","id":"a","result":null}"#),
            Response
        );
        assert_eq!(
            kind(r#"{"id":null,"error":{"code":1,"message":"x"}}"#),
            Response
        );
        for invalid in [
            "[]",
            "3",
            r#""str""#,
            "{}",
            r#"{"id":1}"#,
            r#"{"method":5,"id":1}"#,
            r#"{"method":null}"#,
            r#"{"method":"m","id":{}}"#,
            r#"{"method":"m","id":true}"#,
            r#"{"id":1,"result":1,"error":{}}"#,
            r#"{"result":1}"#,
        ] {
            assert_eq!(kind(invalid), Invalid, "{invalid}");
        }
    }

    #[test]
    fn fields_are_borrowed() {
        let body =
            br#" {"method":"session.send","id":7,"params":{"prompt":"hi","sessionId":"s-1"}} "#;
        let env = parse_envelope(body).unwrap();
        assert!(matches!(env.method, Some(Cow::Borrowed("session.send"))));
        assert!(matches!(env.session_id, Some(Cow::Borrowed("s-1"))));
        assert_eq!(env.id.map(RawValue::get), Some("7"));
        assert!(!env.has_result && !env.has_error);
    }

    #[test]
    fn session_id_extraction() {
        let sid = |body: &str| {
            parse_envelope(body.as_bytes())
                .unwrap()
                .session_id
                .map(Cow::into_owned)
        };
        assert_eq!(
            sid(r#"{"method":"m","params":{"sessionId":"abc"}}"#).as_deref(),
            Some("abc")
        );
        assert_eq!(
            sid(r#"{"method":"m","params":{"sessionId":"a\u00e9\"b"}}"#).as_deref(),
            Some("aé\"b")
        );
        assert_eq!(
            sid(r#"{"method":"m","params":{"\u0073essionId":"k"}}"#).as_deref(),
            Some("k")
        );
        assert_eq!(sid(r#"{"method":"m","params":["sessionId","abc"]}"#), None);
        assert_eq!(sid(r#"{"method":"m"}"#), None);
        assert_eq!(sid(r#"{"method":"m","params":null}"#), None);
        assert_eq!(sid(r#"{"method":"m","params":{"sessionId":5}}"#), None);
        assert_eq!(
            sid(r#"{"method":"m","params":{"x":{"sessionId":"nested"}}}"#),
            None
        );
        assert_eq!(sid(r#"{"method":"m","sessionId":"top"}"#), None);
    }

    #[test]
    fn invalid_json_is_parse_error() {
        for bad in [
            &b""[..],
            b"{",
            b"{\"id\":1,}",
            b"{\"a\":1} x",
            b"{\"a\":\"\xff\"}",
            b"nul",
        ] {
            let err = parse_envelope(bad).unwrap_err();
            assert_eq!(err.code(), PARSE_ERROR, "{err}");
        }
        assert!(matches!(
            parse_envelope(b"{\"method\":1"),
            Err(ParseError::Json(_))
        ));
    }

    #[test]
    fn error_response_echoes_id() {
        for id in ["12", "-3.50e2", r#""a\u00e9""#, "null"] {
            let body = format!(r#"{{"method":"m","id":{id}}}"#);
            let env = parse_envelope(body.as_bytes()).unwrap();
            let reply = error_response(env.id, METHOD_NOT_FOUND, "no \"such\" method", None);
            let expected = format!(
                r#"{{"jsonrpc":"2.0","id":{id},"error":{{"code":-32601,"message":"no \"such\" method"}}}}"#
            );
            assert_eq!(std::str::from_utf8(&reply).unwrap(), expected);
        }
        let data = serde_json::json!({"server": "b"});
        let reply = error_response(None, SERVER_UNAVAILABLE, "down", Some(&data));
        let expected = r#"{"jsonrpc":"2.0","id":null,"error":{"code":-32001,"message":"down","data":{"server":"b"}}}"#;
        assert_eq!(&reply[..], expected.as_bytes());
    }

    #[test]
    fn batches() {
        assert!(is_batch(b" \r\n[{}]") && !is_batch(b"{}") && !is_batch(b""));
        let items = split_batch(br#"[{"id":1,"method":"a"}, {"method":"b"} ,3]"#).unwrap();
        let raw: Vec<&str> = items.iter().map(|v| v.get()).collect();
        assert_eq!(raw, [r#"{"id":1,"method":"a"}"#, r#"{"method":"b"}"#, "3"]);
        assert!(split_batch(b"[]").unwrap().is_empty());
        assert_eq!(split_batch(b"{}").unwrap_err().code(), INVALID_REQUEST);
        assert_eq!(split_batch(b"[1,").unwrap_err().code(), PARSE_ERROR);
    }

    #[test]
    fn with_id_preserves_other_fields() {
        let body =
            br#"{"jsonrpc":"2.0","id":"c-1","method":"tool.call","params":{"x":1.50, "y":[ 1 ]}}"#;
        let out = with_id(body, &42u64).unwrap();
        let expected =
            r#"{"jsonrpc":"2.0","id":42,"method":"tool.call","params":{"x":1.50, "y":[ 1 ]}}"#;
        assert_eq!(std::str::from_utf8(&out).unwrap(), expected);
        let original = serde_json::value::to_raw_value("c-1").unwrap();
        assert_eq!(&with_id(&out, &*original).unwrap()[..], &body[..]);
        let added = with_id(br#"{"method":"m","id":1,"id":2}"#, "p").unwrap();
        assert_eq!(&added[..], br#"{"method":"m","id":"p"}"#);
        assert_eq!(
            &with_id(br#"{"method":"m"}"#, &1).unwrap()[..],
            br#"{"method":"m","id":1}"#
        );
        assert!(with_id(b"[1]", &1).is_err() && with_id(b"{} x", &1).is_err());
    }

    #[test]
    fn with_param_inserts_or_replaces() {
        let body = br#"{"id":1,"method":"session.create","params":{"model":"gpt-5","n":1.0}}"#;
        let out = with_param(body, "sessionId", Value::from("s-9")).unwrap();
        let expected = r#"{"id":1,"method":"session.create","params":{"model":"gpt-5","n":1.0,"sessionId":"s-9"}}"#;
        assert_eq!(std::str::from_utf8(&out).unwrap(), expected);
        let replaced = with_param(&out, "sessionId", Value::from("s-10")).unwrap();
        assert_eq!(json(&replaced)["params"]["sessionId"], "s-10");
        let created =
            with_param(br#"{"id":1,"method":"connect"}"#, "token", Value::from("t")).unwrap();
        assert_eq!(
            &created[..],
            br#"{"id":1,"method":"connect","params":{"token":"t"}}"#
        );
        let from_null = with_param(
            br#"{"method":"connect","params":null}"#,
            "token",
            Value::from("t"),
        );
        assert_eq!(
            &from_null.unwrap()[..],
            br#"{"method":"connect","params":{"token":"t"}}"#
        );
        let array = with_param(br#"{"method":"m","params":[1]}"#, "token", Value::Null);
        assert!(matches!(array, Err(ParseError::ParamsNotObject)));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = parse_envelope(&bytes);
            let _ = split_batch(&bytes);
            let _ = with_id(&bytes, &1);
            let _ = with_param(&bytes, "sessionId", Value::Null);
        }

        #[test]
        fn json_like_text_never_panics(text in r#"[\[\]{}":,0-9a-z\\ ]{0,80}"#) {
            if let Ok(env) = parse_envelope(text.as_bytes()) {
                let _ = error_response(env.id, PARSE_ERROR, &text, None);
            }
            let _ = with_param(text.as_bytes(), "sessionId", Value::Null);
        }
    }
}
