//! HTTP upstreams that issue their own session ids, like MCP Streamable HTTP servers, and the
//! proxy config that learns them: for the learned-affinity tests.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use http::{Method, Request, StatusCode};

use super::client::{empty, Client, Reply};
use super::upstream::{self, Mock};
use super::upstreams_yaml;

pub const HEADER: &str = "mcp-session-id";

/// An upstream that issues session ids: a request without one (an `initialize`) gets a new id
/// in `Mcp-Session-Id` (and a `SESSIONID` cookie); a request with one it issued is answered
/// (GET as an event stream), DELETE ends the session; an id it did not issue gets 404.
pub async fn issuing(name: &'static str) -> Mock {
    let sessions: Arc<Mutex<HashSet<String>>> = Arc::default();
    let next = Arc::new(Mutex::new(0u32));
    upstream::serve_fn(move |req: Request<hyper::body::Incoming>| {
        let (sessions, next) = (sessions.clone(), next.clone());
        async move {
            let id = req
                .headers()
                .get(HEADER)
                .map(|v| v.to_str().unwrap().to_owned());
            let Some(id) = id else {
                let mut n = next.lock().unwrap();
                *n += 1;
                let id = format!("{name}-s{n}");
                sessions.lock().unwrap().insert(id.clone());
                let mut resp = upstream::named(name, "initialized");
                resp.headers_mut().insert(HEADER, id.parse().unwrap());
                let cookie = format!("SESSIONID={id}; Path=/; HttpOnly");
                resp.headers_mut()
                    .insert("set-cookie", cookie.parse().unwrap());
                return resp;
            };
            let known = sessions.lock().unwrap().contains(&id);
            let mut resp = match (known, req.method().clone()) {
                (false, _) => {
                    let mut resp = upstream::named(name, "unknown session");
                    *resp.status_mut() = StatusCode::NOT_FOUND;
                    resp
                }
                (true, Method::DELETE) => {
                    sessions.lock().unwrap().remove(&id);
                    upstream::named(name, "deleted")
                }
                (true, Method::GET) => {
                    let mut resp = upstream::named(name, format!("data: {id}\n\n"));
                    resp.headers_mut()
                        .insert("content-type", "text/event-stream".parse().unwrap());
                    resp
                }
                (true, _) => upstream::named(name, "ok"),
            };
            // Like the MCP SDK: every answer names the session.
            if known {
                resp.headers_mut().insert(HEADER, id.parse().unwrap());
            }
            resp
        }
    })
    .await
}

pub struct Issuers {
    pub mocks: HashMap<String, Mock>,
    pub members: Vec<(String, std::net::SocketAddr)>,
}

pub async fn issuers(names: &[&'static str]) -> Issuers {
    let mut mocks = HashMap::new();
    let mut members = Vec::new();
    for name in names {
        let mock = issuing(name).await;
        members.push((name.to_string(), mock.addr));
        mocks.insert(name.to_string(), mock);
    }
    Issuers { mocks, members }
}

/// Listener `mcp` keyed on `Mcp-Session-Id` (then the `SESSIONID` cookie), learning both.
pub fn config(members: &[(String, std::net::SocketAddr)], pool_extra: &str) -> String {
    format!(
        "admin:
  listen: 127.0.0.1:0
listeners:
  - name: mcp
    listen: 127.0.0.1:0
    protocol: http
    pool: mcp
    key:
      - header: Mcp-Session-Id
      - cookie: SESSIONID
    learn:
      - response_header: Mcp-Session-Id
      - set_cookie: SESSIONID
pools:
  mcp:
{pool_extra}    upstreams:
{}",
        upstreams_yaml(members)
    )
}

pub async fn send(client: &mut Client, method: Method, session: Option<&str>) -> Reply {
    let mut req = client.request(method, "/mcp");
    if let Some(id) = session {
        req = req.header(HEADER, id);
    }
    let resp = client.send(req.body(empty()).unwrap()).await.expect("send");
    Reply::read(resp).await.expect("read")
}

/// Initialize a session: `(id, issuer)`.
pub async fn initialize(client: &mut Client) -> (String, String) {
    let reply = send(client, Method::POST, None).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let id = reply.headers[HEADER].to_str().unwrap().to_owned();
    (id, reply.upstream().to_owned())
}
