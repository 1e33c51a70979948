//! One resolution of one name with hickory: A then AAAA, each asked as an absolute name, with no
//! search list, hosts file, system configuration or cache between two resolutions, so that the
//! refresh schedule of `watcher` is the only thing that decides when DNS is asked.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::time::Instant;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
    ServerOrderingStrategy,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError as ProtoDnsError, NetError};
use hickory_resolver::proto::op::{ResponseCode, DEFAULT_MAX_PAYLOAD_LEN};
use hickory_resolver::proto::rr::{Name, RData, RecordType};
use hickory_resolver::TokioResolver;

use crate::{DnsError, DnsSettings};

/// What a configured name turns into.
pub(crate) enum Target {
    /// A DNS name to watch, made absolute.
    Name(Name),
    /// An IP literal: its own answer, never queried.
    Literal(IpAddr),
    /// Not a valid DNS name: reported, never queried.
    Invalid(String),
}

pub(crate) fn parse_name(name: &str) -> Target {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Target::Literal(ip);
    }
    if name.is_empty() || name == "." {
        return Target::Invalid("empty DNS name".to_owned());
    }
    // Not `from_utf8`: Docker service names contain `_`, which IDNA processing rejects.
    match Name::from_ascii(name) {
        Ok(mut parsed) => {
            // "No ndots games": the name is what the operator wrote, never a search-list suffix.
            parsed.set_fqdn(true);
            Target::Name(parsed)
        }
        Err(error) => Target::Invalid(format!("invalid DNS name {name:?}: {error}")),
    }
}

/// The result of one resolution (both record types).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// At least one address; sorted, deduplicated. `ttl` is the smallest TTL in the answers.
    Addrs { addrs: Vec<IpAddr>, ttl: Duration },
    /// The server answered: NXDOMAIN, or the name has no A/AAAA record. `ttl` is the negative
    /// TTL from the SOA when the server sent one.
    Empty {
        error: String,
        ttl: Option<Duration>,
    },
    /// No answer: timeout, SERVFAIL, REFUSED, connection refused, malformed answer...
    Failed { error: String },
}

/// One record type's result.
enum Single {
    Addrs(Vec<IpAddr>, Duration),
    Empty(String, Option<Duration>),
    Failed(String),
}

pub(crate) struct Lookups {
    resolver: TokioResolver,
    nameservers: u32,
    max_datagrams: u32,
}

/// hickory's UDP client retransmits an unanswered query every `max(333 ms, 1.2 * srtt)`, at most
/// three sends per server (`hickory_proto::op::DEFAULT_RETRY_FLOOR` and the `max_retries` of
/// `UdpClientStream`, neither configurable through the resolver). The budget reserves these
/// retransmissions up front and refunds what was not sent.
const UDP_RETRANSMIT_INTERVAL: Duration = Duration::from_millis(333);
const UDP_SENDS_PER_SERVER: u32 = 3;

impl Lookups {
    pub(crate) fn new(settings: &DnsSettings) -> Result<Self, DnsError> {
        let servers = settings
            .nameservers
            .iter()
            .map(|addr| name_server(*addr))
            .collect();
        // No domain, no search list: names are absolute.
        let config = ResolverConfig::from_parts(None, Vec::new(), servers);
        let mut builder =
            TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
        *builder.options_mut() = options(settings);
        let resolver = builder
            .build()
            .map_err(|error| DnsError::Resolver(error.to_string()))?;
        let nameservers = u32::try_from(settings.nameservers.len()).unwrap_or(u32::MAX);
        Ok(Self {
            resolver,
            nameservers,
            max_datagrams: datagrams(nameservers, settings.timeout),
        })
    }

    /// The most DNS messages one [`lookup`](Self::lookup) can send: what the budget reserves.
    pub(crate) fn max_datagrams(&self) -> u32 {
        self.max_datagrams
    }

    /// Asks one record type.
    pub(crate) async fn lookup(&self, name: &Name, record_type: RecordType) -> SingleResult {
        // Belt and braces with `cache_size = 0`: the answer must come from the server.
        self.resolver.clear_lookup_cache(name.clone(), record_type);
        let started = Instant::now();
        let result = self.resolver.lookup(name.clone(), record_type).await;
        // Sends that the elapsed time allows: one per server tried plus a retransmission per
        // interval, plus the TCP retry of a truncated answer.
        let mut sent = datagrams(self.nameservers, started.elapsed());
        let single = match result {
            Ok(lookup) => {
                let truncated_over_udp = lookup.message().to_vec().map_or(true, |bytes| {
                    bytes.len() > usize::from(DEFAULT_MAX_PAYLOAD_LEN)
                });
                if !truncated_over_udp {
                    sent = sent.saturating_sub(1);
                }
                let mut addrs = Vec::new();
                let mut ttl = u32::MAX;
                for record in lookup.answers() {
                    // CNAMEs count for the TTL too: the chain is only as fresh as its weakest link.
                    ttl = ttl.min(record.ttl);
                    match &record.data {
                        RData::A(a) => addrs.push(IpAddr::V4(a.0)),
                        RData::AAAA(aaaa) => addrs.push(IpAddr::V6(aaaa.0)),
                        _ => {}
                    }
                }
                if addrs.is_empty() {
                    Single::Empty(format!("no {record_type} record"), None)
                } else {
                    Single::Addrs(addrs, Duration::from_secs(u64::from(ttl)))
                }
            }
            Err(NetError::Dns(ProtoDnsError::NoRecordsFound(no_records))) => {
                sent = sent.saturating_sub(1);
                let error = if no_records.response_code == ResponseCode::NXDomain {
                    "no such name (NXDOMAIN)".to_owned()
                } else {
                    format!("no {record_type} record")
                };
                let ttl = no_records
                    .negative_ttl
                    .map(|ttl| Duration::from_secs(u64::from(ttl)));
                Single::Empty(error, ttl)
            }
            Err(error) => Single::Failed(format!("{record_type} query failed: {error}")),
        };
        SingleResult {
            single,
            sent: sent.clamp(1, self.max_datagrams),
        }
    }
}

/// The most messages one query (one record type) can send with these settings.
pub(crate) fn max_messages(settings: &DnsSettings) -> u32 {
    let nameservers = u32::try_from(settings.nameservers.len()).unwrap_or(u32::MAX);
    datagrams(nameservers, settings.timeout)
}

/// Upper bound of the messages sent to `nameservers` servers during `elapsed`: each server
/// tried gets one send, plus one retransmission per interval (at most three sends per server),
/// plus one TCP query after a truncated answer.
fn datagrams(nameservers: u32, elapsed: Duration) -> u32 {
    let retransmissions = u32::try_from(elapsed.as_millis() / UDP_RETRANSMIT_INTERVAL.as_millis())
        .unwrap_or(u32::MAX);
    let udp = nameservers
        .saturating_add(retransmissions)
        .min(UDP_SENDS_PER_SERVER.saturating_mul(nameservers));
    udp.saturating_add(1)
}

/// Opaque result of [`Lookups::lookup`], combined by [`combine`].
pub(crate) struct SingleResult {
    single: Single,
    /// Upper estimate of the messages this lookup sent, for the budget's refund.
    pub(crate) sent: u32,
}

impl SingleResult {
    pub(crate) fn failed(&self) -> bool {
        matches!(self.single, Single::Failed(..))
    }
}

/// Combines the A and AAAA results: any failure fails the whole resolution (the last good
/// answer is then held rather than replaced by half of it); otherwise the union of addresses,
/// or `Empty` if both are empty.
pub(crate) fn combine(results: Vec<SingleResult>) -> Outcome {
    let mut addrs = Vec::new();
    let mut min_ttl: Option<Duration> = None;
    let mut empty: Option<(String, Option<Duration>)> = None;
    for SingleResult { single, .. } in results {
        match single {
            Single::Failed(error) => return Outcome::Failed { error },
            Single::Addrs(found, ttl) => {
                addrs.extend(found);
                min_ttl = Some(min_ttl.map_or(ttl, |m| m.min(ttl)));
            }
            Single::Empty(error, ttl) => {
                // NXDOMAIN says more than "no AAAA record"; keep it for the report.
                let keep_new = match &empty {
                    None => true,
                    Some((previous, _)) => !previous.contains("NXDOMAIN"),
                };
                if keep_new {
                    empty = Some((error, ttl));
                }
            }
        }
    }
    if addrs.is_empty() {
        let (error, ttl) = empty.unwrap_or_else(|| ("no address".to_owned(), None));
        return Outcome::Empty { error, ttl };
    }
    addrs.sort_unstable();
    addrs.dedup();
    Outcome::Addrs {
        addrs,
        ttl: min_ttl.unwrap_or(Duration::ZERO),
    }
}

fn name_server(addr: SocketAddr) -> NameServerConfig {
    let connection = |mut config: ConnectionConfig| {
        config.port = addr.port();
        config
    };
    // UDP first; the pool switches to the TCP connection when an answer comes back truncated.
    NameServerConfig::new(
        addr.ip(),
        true,
        vec![
            connection(ConnectionConfig::udp()),
            connection(ConnectionConfig::tcp()),
        ],
    )
}

fn options(settings: &DnsSettings) -> ResolverOpts {
    let mut opts = ResolverOpts::default();
    opts.ndots = 0;
    opts.timeout = settings.timeout;
    // The watcher retries on its own schedule, under the global budget.
    opts.attempts = 0;
    // One server at a time: no parallel fan-out that multiplies queries.
    opts.num_concurrent_reqs = 1;
    // Fastest server first, by measured round-trip time; a timeout demotes a server. hickory's
    // `timeout` covers all servers of one query together, so with `UserProvidedOrder` a silent
    // first server would use it up on every query and the second would never be asked (see the
    // test `a_silent_first_nameserver_does_not_hide_a_working_second_one`).
    opts.server_ordering_strategy = ServerOrderingStrategy::QueryStatistics;
    // The refresh schedule is ours: a cached answer would hide a changed record.
    opts.cache_size = 0;
    opts.use_hosts_file = ResolveHosts::Never;
    opts.edns0 = true;
    opts.try_tcp_on_error = false;
    opts.preserve_intermediates = true;
    opts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn single(single: Single) -> SingleResult {
        SingleResult { single, sent: 1 }
    }

    #[test]
    fn datagram_bound_follows_hickory_retransmissions() {
        // One server, answered at once: one UDP query (+1 reserved for a TCP retry).
        assert_eq!(datagrams(1, Duration::from_millis(5)), 2);
        // Timed out after 1 s: sends at 0, 333 and 666 ms.
        assert_eq!(datagrams(1, Duration::from_secs(1)), 4);
        // Never more than three UDP sends per server.
        assert_eq!(datagrams(1, Duration::from_secs(30)), 4);
        assert_eq!(datagrams(2, Duration::from_secs(30)), 7);
    }

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    #[test]
    fn names_are_absolute_and_validated() {
        match parse_name("tasks.stack_web") {
            Target::Name(name) => {
                assert!(name.is_fqdn());
                assert_eq!(name.to_ascii(), "tasks.stack_web.");
            }
            _ => panic!("a swarm task name is a valid name"),
        }
        assert!(matches!(parse_name("10.0.0.1"), Target::Literal(ip) if ip == v4(1)));
        assert!(
            matches!(parse_name("::1"), Target::Literal(IpAddr::V6(ip)) if ip == Ipv6Addr::LOCALHOST)
        );
        assert!(matches!(parse_name(""), Target::Invalid(_)));
        assert!(matches!(parse_name("a..b"), Target::Invalid(_)));
        let long_label = format!("{}.example", "a".repeat(64));
        assert!(matches!(parse_name(&long_label), Target::Invalid(_)));
    }

    #[test]
    fn combine_sorts_dedups_and_keeps_min_ttl() {
        let outcome = combine(vec![
            single(Single::Addrs(
                vec![v4(3), v4(1), v4(3)],
                Duration::from_secs(30),
            )),
            single(Single::Addrs(
                vec![IpAddr::V6(Ipv6Addr::LOCALHOST)],
                Duration::from_secs(10),
            )),
        ]);
        assert_eq!(
            outcome,
            Outcome::Addrs {
                addrs: vec![v4(1), v4(3), IpAddr::V6(Ipv6Addr::LOCALHOST)],
                ttl: Duration::from_secs(10)
            }
        );
    }

    #[test]
    fn combine_ipv4_only_name_is_a_success() {
        let outcome = combine(vec![
            single(Single::Addrs(vec![v4(1)], Duration::from_secs(600))),
            single(Single::Empty("no AAAA record".into(), None)),
        ]);
        assert!(matches!(outcome, Outcome::Addrs { .. }));
    }

    #[test]
    fn combine_any_failure_fails() {
        let outcome = combine(vec![
            single(Single::Addrs(vec![v4(1)], Duration::from_secs(600))),
            single(Single::Failed("AAAA query failed: timeout".into())),
        ]);
        assert!(matches!(outcome, Outcome::Failed { .. }));
    }

    #[test]
    fn combine_reports_nxdomain() {
        let outcome = combine(vec![
            single(Single::Empty("no A record".into(), None)),
            single(Single::Empty(
                "no such name (NXDOMAIN)".into(),
                Some(Duration::from_secs(5)),
            )),
        ]);
        assert_eq!(
            outcome,
            Outcome::Empty {
                error: "no such name (NXDOMAIN)".into(),
                ttl: Some(Duration::from_secs(5))
            }
        );
    }
}
