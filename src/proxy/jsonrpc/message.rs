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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageKind {
    /// `method` and `id`.
    Request,
    /// `method`, no `id`.
    Notification,
    /// `id` and exactly one of `result` / `error`, no `method`.
    Response,
    /// Valid JSON, but not a JSON-RPC message (not an object, bad `method` or `id` type, …).
    Invalid,
}

/// The routing view of one message, borrowing from the body. Strings are `Cow::Borrowed` unless
/// they contain escapes. `id` is kept raw (`1`, `"a"`, `null`) so it can be echoed unchanged.
#[derive(Debug, Clone)]
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
        serde_json::from_str::<Envelope<'_>>(text)?
    } else {
        serde_json::from_str::<IgnoredAny>(text)?;
        Envelope { kind: MessageKind::Invalid, ..Envelope::empty() }
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
pub fn error_response(id: Option<&RawValue>, code: i64, message: &str, data: Option<&Value>) -> Bytes {
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
    let reply = Reply { jsonrpc: "2.0", id, error: ErrorObject { code, message, data } };
    match serde_json::to_vec(&reply) {
        Ok(v) => Bytes::from(v),
        // Unreachable: every part above serializes infallibly.
        Err(_) => Bytes::from_static(br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"internal error"}}"#),
    }
}

/// The body with its top-level `id` replaced (or added) by `new_id` (a `RawValue`, number or string).
pub fn with_id<T: Serialize + ?Sized>(body: &[u8], new_id: &T) -> Result<Bytes, ParseError> {
    let mut entries = object_entries(std::str::from_utf8(body)?)?;
    let new_id = serde_json::value::to_raw_value(new_id)?;
    set_entry(&mut entries, "id", &new_id);
    Ok(Bytes::from(serde_json::to_vec(&Entries(entries))?))
}

/// The body with `params[name] = value`, creating `params` if it is absent or null. Fails with
/// `ParamsNotObject` if `params` is an array or scalar.
pub fn with_param(body: &[u8], name: &str, value: Value) -> Result<Bytes, ParseError> {
    let mut entries = object_entries(std::str::from_utf8(body)?)?;
    let params_raw = entries.iter().rev().find(|(k, _)| k == "params").map(|(_, v)| *v);
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

fn first_byte(body: &[u8]) -> Option<u8> {
    body.iter().copied().find(|b| !b.is_ascii_whitespace())
}

impl<'a> Envelope<'a> {
    fn empty() -> Self {
        Envelope { kind: MessageKind::Invalid, method: None, id: None, session_id: None, has_result: false, has_error: false }
    }

    fn classify(&self) -> MessageKind {
        let id_ok = self.id.map_or(true, |id| matches!(id.get().as_bytes().first(), Some(b'"' | b'-' | b'0'..=b'9' | b'n')));
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
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Envelope<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON-RPC object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Envelope<'de>, A::Error> {
                let mut env = Envelope { kind: MessageKind::Request, ..Envelope::empty() };
                while let Some(key) = map.next_key::<Str<'de>>()? {
                    match &*key.0 {
                        "method" => {
                            env.method = map.next_value_seed(Pick::Str)?;
                            if env.method.is_none() {
                                env.kind = MessageKind::Invalid;
                            }
                        }
                        "id" => env.id = Some(map.next_value()?),
                        "params" => env.session_id = map.next_value_seed(Pick::SessionId)?,
                        "result" => env.has_result = map.next_value::<IgnoredAny>().is_ok(),
                        "error" => env.has_error = map.next_value::<IgnoredAny>().is_ok(),
                        _ => drop(map.next_value::<IgnoredAny>()?),
                    }
                }
                Ok(env)
            }
        }
        d.deserialize_map(V)
    }
}

/// A JSON string, borrowed from the input unless it had escapes.
struct Str<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Pick::Str)?.map(Str).ok_or_else(|| serde::de::Error::custom("expected a string"))
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
            let mut seen = 0;
            entries.retain(|(k, _)| k != name || (seen += 1, seen == 1).1);
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
#[path = "message_tests.rs"]
mod tests;
