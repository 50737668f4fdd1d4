//! A real DNS server in the test process, on UDP 127.0.0.1:0: SRV and A records the test sets
//! and changes while the proxy looks them up, SERVFAIL on demand, and a stop (the socket
//! closes, so lookups fail). Messages are encoded and decoded by hickory-proto; the proxy's
//! resolver (hickory-resolver) talks to it like to any nameserver.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::rdata::{A, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Zone {
    /// name → (target, port); names lowercase and fully qualified.
    srv: HashMap<String, Vec<(String, u16)>>,
    a: HashMap<String, Vec<Ipv4Addr>>,
    servfail: bool,
}

pub struct DnsServer {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicU64>,
    stop: CancellationToken,
}

fn fqdn(name: &str) -> String {
    let name = name.to_ascii_lowercase();
    if name.ends_with('.') {
        name
    } else {
        format!("{name}.")
    }
}

impl DnsServer {
    pub async fn start() -> DnsServer {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind DNS");
        let addr = socket.local_addr().expect("addr");
        let zone = Arc::new(Mutex::new(Zone::default()));
        let queries = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (z, q, s) = (zone.clone(), queries.clone(), stop.clone());
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let (n, peer) = tokio::select! {
                    _ = s.cancelled() => return,
                    r = socket.recv_from(&mut buf) => match r {
                        Ok(r) => r,
                        Err(_) => continue,
                    },
                };
                let Ok(request) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                q.fetch_add(1, Ordering::Relaxed);
                let answer = answer(&z.lock().unwrap(), &request);
                if let Ok(bytes) = answer.to_vec() {
                    let _ = socket.send_to(&bytes, peer).await;
                }
            }
        });
        DnsServer {
            addr,
            zone,
            queries,
            stop,
        }
    }

    /// `ip:port` to put in `resolver:`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Replace the SRV records of `name` (empty: the name answers with no records).
    pub fn set_srv(&self, name: &str, targets: &[(&str, u16)]) {
        let list = targets.iter().map(|(t, p)| (fqdn(t), *p)).collect();
        self.zone.lock().unwrap().srv.insert(fqdn(name), list);
    }

    pub fn set_a(&self, name: &str, ips: &[Ipv4Addr]) {
        self.zone.lock().unwrap().a.insert(fqdn(name), ips.to_vec());
    }

    /// Answer every query with SERVFAIL (`true`) or from the records again (`false`).
    pub fn servfail(&self, on: bool) {
        self.zone.lock().unwrap().servfail = on;
    }

    /// Queries received so far.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Close the socket: later queries go unanswered (the port is closed).
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn answer(zone: &Zone, request: &Message) -> Message {
    let mut response = Message::response(request.metadata.id, request.metadata.op_code);
    response.metadata.message_type = MessageType::Response;
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.metadata.recursion_available = true;
    response.add_queries(request.queries.iter().cloned());
    if zone.servfail {
        response.metadata.response_code = ResponseCode::ServFail;
        return response;
    }
    let Some(query) = request.queries.first() else {
        response.metadata.response_code = ResponseCode::FormErr;
        return response;
    };
    let name = fqdn(&query.name.to_ascii());
    let owner = Name::from_str(&name).expect("name");
    let known = zone.srv.contains_key(&name) || zone.a.contains_key(&name);
    match query.query_type {
        RecordType::SRV => {
            for (target, port) in zone.srv.get(&name).into_iter().flatten() {
                let target = Name::from_str(target).expect("target");
                let srv = SRV::new(0, 1, *port, target);
                response.add_answer(Record::from_rdata(owner.clone(), 1, RData::SRV(srv)));
            }
        }
        RecordType::A => {
            for ip in zone.a.get(&name).into_iter().flatten() {
                response.add_answer(Record::from_rdata(owner.clone(), 1, RData::A(A(*ip))));
            }
        }
        _ => {}
    }
    if !known {
        response.metadata.response_code = ResponseCode::NXDomain;
    }
    response
}
