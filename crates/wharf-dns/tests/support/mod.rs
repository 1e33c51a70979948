//! A small authoritative DNS server for the tests: real DNS messages (hickory-proto's codec)
//! over UDP and TCP on 127.0.0.1, records the test changes at run time, the TC bit when an
//! answer exceeds 512 bytes (no EDNS) or the advertised EDNS size, and a log of every query.

// Test support: a panic is the failure report here.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::proto::op::{Edns, Message, OpCode};
use hickory_resolver::proto::rr::rdata::{A, AAAA};
use hickory_resolver::proto::rr::{RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// How the server answers for one name.
#[derive(Debug, Clone)]
pub enum Zone {
    Addrs {
        v4: Vec<Ipv4Addr>,
        v6: Vec<Ipv6Addr>,
        ttl: u32,
    },
    NxDomain,
    ServFail,
    /// Receives and logs the query, never answers (a timeout at the client).
    Silent,
}

impl Zone {
    pub fn v4(addrs: &[[u8; 4]], ttl: u32) -> Self {
        Zone::Addrs {
            v4: addrs.iter().map(|a| Ipv4Addr::from(*a)).collect(),
            v6: Vec::new(),
            ttl,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

#[derive(Debug, Clone)]
pub struct Logged {
    pub at: Instant,
    /// Lower case, without the trailing dot.
    pub name: String,
    pub record_type: RecordType,
    pub transport: Transport,
}

#[derive(Default)]
struct State {
    zones: HashMap<String, Zone>,
    log: Vec<Logged>,
}

pub struct TestDns {
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for TestDns {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

impl TestDns {
    /// Binds UDP and TCP on the same free port of 127.0.0.1.
    pub async fn start() -> Self {
        let (udp, tcp) = bind_pair().await;
        let addr = udp.local_addr().expect("udp local addr");
        let state = Arc::new(Mutex::new(State::default()));
        let tasks = vec![
            tokio::spawn(serve_udp(udp, state.clone())),
            tokio::spawn(serve_tcp(tcp, state.clone())),
        ];
        Self { addr, state, tasks }
    }

    pub fn set(&self, name: &str, zone: Zone) {
        self.state
            .lock()
            .unwrap()
            .zones
            .insert(name.to_ascii_lowercase(), zone);
    }

    pub fn log(&self) -> Vec<Logged> {
        self.state.lock().unwrap().log.clone()
    }

    /// Queries received for `name` (any type, any transport).
    pub fn count(&self, name: &str) -> usize {
        self.log().iter().filter(|q| q.name == name).count()
    }

    /// Queries received in `[from, to)`.
    pub fn count_between(&self, from: Instant, to: Instant) -> usize {
        self.log()
            .iter()
            .filter(|q| q.at >= from && q.at < to)
            .count()
    }

    /// Stops answering and closes both sockets: clients get "connection refused".
    pub async fn shutdown(&mut self) {
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}

async fn bind_pair() -> (UdpSocket, TcpListener) {
    for _ in 0..20 {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let addr = udp.local_addr().expect("udp local addr");
        if let Ok(tcp) = TcpListener::bind(addr).await {
            return (udp, tcp);
        }
    }
    panic!("no port free for both UDP and TCP on 127.0.0.1");
}

async fn serve_udp(socket: UdpSocket, state: Arc<Mutex<State>>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        if let Some(reply) = answer(&buf[..len], Transport::Udp, &state) {
            let _ = socket.send_to(&reply, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, state: Arc<Mutex<State>>) {
    // Dropped (aborting every connection) when this task is aborted.
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((stream, _)) = accepted {
                    connections.spawn(serve_connection(stream, state.clone()));
                }
            }
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn serve_connection(mut stream: TcpStream, state: Arc<Mutex<State>>) {
    loop {
        let Ok(len) = stream.read_u16().await else {
            return;
        };
        let mut request = vec![0u8; usize::from(len)];
        if stream.read_exact(&mut request).await.is_err() {
            return;
        }
        if let Some(reply) = answer(&request, Transport::Tcp, &state) {
            let Ok(reply_len) = u16::try_from(reply.len()) else {
                return;
            };
            if stream.write_u16(reply_len).await.is_err() || stream.write_all(&reply).await.is_err()
            {
                return;
            }
        }
    }
}

fn answer(request: &[u8], transport: Transport, state: &Mutex<State>) -> Option<Vec<u8>> {
    let request = Message::from_vec(request).ok()?;
    let query = request.queries.first()?.clone();
    let name = query.name().to_ascii().to_ascii_lowercase();
    let name = name.trim_end_matches('.').to_owned();
    let zone = {
        let mut state = state.lock().unwrap();
        state.log.push(Logged {
            at: Instant::now(),
            name: name.clone(),
            record_type: query.query_type(),
            transport,
        });
        state.zones.get(&name).cloned().unwrap_or(Zone::NxDomain)
    };

    let mut response = Message::response(request.id, OpCode::Query);
    response.metadata.recursion_desired = request.recursion_desired;
    response.metadata.recursion_available = true;
    response.metadata.authoritative = true;
    response.add_query(query.clone());
    let limit = match &request.edns {
        Some(edns) => {
            let mut reply_edns = Edns::new();
            reply_edns.set_max_payload(1232);
            response.set_edns(reply_edns);
            usize::from(edns.max_payload().max(512))
        }
        None => 512,
    };
    match zone {
        Zone::Silent => return None,
        Zone::NxDomain => {
            response.metadata.response_code = hickory_resolver::proto::op::ResponseCode::NXDomain;
        }
        Zone::ServFail => {
            response.metadata.response_code = hickory_resolver::proto::op::ResponseCode::ServFail;
        }
        Zone::Addrs { v4, v6, ttl } => {
            let owner = query.name().clone();
            let rdata: Vec<RData> = match query.query_type() {
                RecordType::A => v4.iter().map(|ip| RData::A(A(*ip))).collect(),
                RecordType::AAAA => v6.iter().map(|ip| RData::AAAA(AAAA(*ip))).collect(),
                _ => Vec::new(),
            };
            for data in rdata {
                response.add_answer(Record::from_rdata(owner.clone(), ttl, data));
            }
        }
    }
    let bytes = response.to_vec().ok()?;
    if transport == Transport::Udp && bytes.len() > limit {
        // RFC 1035 4.2.1 / RFC 6891 7: what does not fit is cut and TC set; the client
        // retries over TCP.
        response.answers.clear();
        response.metadata.truncation = true;
        return response.to_vec().ok();
    }
    Some(bytes)
}

/// Polls `check` every 10 ms until it returns `Some`, or panics after `timeout` with `what`.
pub async fn wait_for<T>(timeout: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
