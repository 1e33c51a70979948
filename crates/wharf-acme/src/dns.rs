//! DNS-01 through RFC 2136 dynamic UPDATE, signed with TSIG (RFC 8945, hmac-sha256), sent to
//! `[acme.dns] server`.
//!
//! `_acme-challenge.<host>` may be a CNAME into a zone delegated for ACME (a common way to keep
//! the main zone's update key away from the proxy): the CNAME is looked up on the same server and
//! the TXT record is written at its target, in the zone that the server reports for the target
//! (SOA in the authority section).

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use base64::Engine;
use hickory_proto::op::{update_message, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::tsig::TsigAlgorithm;
use hickory_proto::rr::rdata::TXT;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordSet, RecordType, TSigner};
use tokio::net::UdpSocket;
use wharf_config::AcmeDns;

use crate::pem::unix;
use crate::AcmeError;

const TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) struct DnsUpdater {
    server: SocketAddr,
    zone: Name,
    signer: Option<TSigner>,
}

/// A TXT record that was written, to be removed after validation.
pub(crate) struct TxtRecord {
    zone: Name,
    name: Name,
    value: String,
}

fn err(e: impl std::fmt::Display) -> AcmeError {
    AcmeError::Dns(e.to_string())
}

impl DnsUpdater {
    pub(crate) fn new(cfg: &AcmeDns) -> Result<Self, AcmeError> {
        let zone = Name::from_ascii(cfg.zone.trim_end_matches('.'))
            .map_err(|e| AcmeError::Config(format!("acme.dns.zone `{}`: {e}", cfg.zone)))?
            .append_domain(&Name::root())
            .map_err(err)?;
        let signer = match (&cfg.key_name, &cfg.key_secret) {
            (Some(name), Some(secret)) => {
                let key = base64::engine::general_purpose::STANDARD
                    .decode(secret.trim())
                    .map_err(|e| {
                        AcmeError::Config(format!("acme.dns.key_secret is not base64: {e}"))
                    })?;
                let name = Name::from_ascii(name)
                    .map_err(|e| AcmeError::Config(format!("acme.dns.key_name `{name}`: {e}")))?;
                Some(TSigner::new(key, TsigAlgorithm::HmacSha256, name, 300).map_err(err)?)
            }
            (None, None) => None,
            _ => {
                return Err(AcmeError::Config(
                    "acme.dns needs both key_name and key_secret (or neither)".into(),
                ))
            }
        };
        Ok(Self {
            server: cfg.server,
            zone,
            signer,
        })
    }

    async fn exchange(&self, mut msg: Message, sign: bool) -> Result<Message, AcmeError> {
        let mut verifier = None;
        if let Some(signer) = self.signer.as_ref().filter(|_| sign) {
            verifier = msg.finalize(signer, unix(SystemTime::now())).map_err(err)?;
        }
        let id = msg.metadata.id;
        let bytes = msg.to_vec().map_err(err)?;
        let bind: SocketAddr = if self.server.is_ipv4() {
            "0.0.0.0:0".parse().map_err(err)?
        } else {
            "[::]:0".parse().map_err(err)?
        };
        let sock = UdpSocket::bind(bind).await?;
        sock.connect(self.server).await?;
        let mut buf = vec![0u8; 65535];
        for _attempt in 0..3 {
            sock.send(&bytes).await?;
            let deadline = tokio::time::Instant::now() + TIMEOUT;
            loop {
                match tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await {
                    Err(_) => break,
                    Ok(Err(e)) => return Err(err(format!("{}: {e}", self.server))),
                    Ok(Ok(n)) => {
                        let Ok(rsp) = Message::from_vec(&buf[..n]) else {
                            continue;
                        };
                        if rsp.metadata.id != id
                            || rsp.metadata.message_type != MessageType::Response
                        {
                            continue;
                        }
                        // A success must carry the server's TSIG (RFC 8945 §5.3); an error
                        // answer is reported as it is (forging one can only fail the order).
                        if let Some(v) = verifier.as_mut() {
                            if rsp.metadata.response_code == ResponseCode::NoError {
                                v.verify(&buf[..n]).map_err(|e| {
                                    err(format!(
                                        "{}: the answer's TSIG does not verify: {e}",
                                        self.server
                                    ))
                                })?;
                            }
                        }
                        return Ok(rsp);
                    }
                }
            }
        }
        Err(err(format!("{} did not answer", self.server)))
    }

    async fn query(&self, name: &Name, rtype: RecordType) -> Result<Message, AcmeError> {
        let mut msg = Message::new(fastrand::u16(..), MessageType::Query, OpCode::Query);
        msg.metadata.recursion_desired = false;
        msg.add_query(Query::query(name.clone(), rtype));
        // Queries are not signed: the server answers them for anyone, like any resolver would.
        self.exchange(msg, false).await
    }

    /// Follow CNAMEs of `name` on the server (at most 8 hops).
    async fn resolve_target(&self, name: &Name) -> Result<Name, AcmeError> {
        let mut cur = name.clone();
        for _ in 0..8 {
            let rsp = self.query(&cur, RecordType::CNAME).await?;
            let next = rsp.answers.iter().find_map(|r| match &r.data {
                RData::CNAME(c) if r.name == cur => Some(c.0.clone()),
                _ => None,
            });
            match next {
                Some(n) => cur = n,
                None => return Ok(cur),
            }
        }
        Err(err(format!("CNAME chain from {name} is too long")))
    }

    /// The zone holding `name`: the configured zone when it contains it, otherwise the zone the
    /// server names in its SOA for `name`.
    async fn zone_for(&self, name: &Name) -> Result<Name, AcmeError> {
        if self.zone.zone_of(name) {
            return Ok(self.zone.clone());
        }
        let rsp = self.query(name, RecordType::SOA).await?;
        rsp.answers
            .iter()
            .chain(rsp.authorities.iter())
            .find(|r| r.record_type() == RecordType::SOA && r.name.zone_of(name))
            .map(|r| r.name.clone())
            .ok_or_else(|| err(format!("{} is not authoritative for {name}", self.server)))
    }

    /// Write the DNS-01 TXT record for `host` (wildcards stripped).
    pub(crate) async fn add_txt(&self, host: &str, value: &str) -> Result<TxtRecord, AcmeError> {
        let host = host.trim_start_matches("*.");
        let name = Name::from_ascii(format!("_acme-challenge.{host}."))
            .map_err(|e| err(format!("{host}: {e}")))?;
        let target = self.resolve_target(&name).await?;
        let zone = self.zone_for(&target).await?;
        let rec = TxtRecord {
            zone,
            name: target,
            value: value.to_owned(),
        };
        let msg = update_message::append(rec.rrset(60), rec.zone.clone(), false, false);
        self.send_update(msg).await?;
        Ok(rec)
    }

    pub(crate) async fn remove_txt(&self, rec: &TxtRecord) -> Result<(), AcmeError> {
        let msg = update_message::delete_by_rdata(rec.rrset(0), rec.zone.clone(), false);
        self.send_update(msg).await
    }

    async fn send_update(&self, msg: Message) -> Result<(), AcmeError> {
        let rsp = self.exchange(msg, true).await?;
        match rsp.metadata.response_code {
            ResponseCode::NoError => Ok(()),
            rc => Err(err(format!(
                "{} refused the update: {rc}{}",
                self.server,
                if self.signer.is_none() {
                    " (no TSIG key configured)"
                } else {
                    ""
                }
            ))),
        }
    }
}

impl TxtRecord {
    fn rrset(&self, ttl: u32) -> RecordSet {
        let mut r = Record::from_rdata(
            self.name.clone(),
            ttl,
            RData::TXT(TXT::new(vec![self.value.clone()])),
        );
        r.dns_class = DNSClass::IN;
        RecordSet::from(r)
    }
}
