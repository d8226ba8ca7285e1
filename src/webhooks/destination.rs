//! Where usage-gate's webhooks may go. An admin key must not be a way to make usage-gate POST
//! inside the network it runs in (Postgres on loopback, the cloud metadata address, private
//! ranges), so by default only public addresses are allowed; operators open the subnets their
//! internal receivers live in with `outbound_webhooks.allowed_subnets`.
//!
//! The rule is applied to the address actually connected to: delivery resolves names through
//! [`Guard`] (reqwest connects only to what a resolver returns, so an answer that changes
//! between a check and the connection cannot get around it) and judges an IP literal itself.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;

/// Why an address is refused: the rule's name is part of the API (422 and attempt errors).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Loopback,
    LinkLocal,
    Unspecified,
    Multicast,
    Broadcast,
    Private,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Loopback => "loopback",
            Rule::LinkLocal => "link_local",
            Rule::Unspecified => "unspecified",
            Rule::Multicast => "multicast",
            Rule::Broadcast => "broadcast",
            Rule::Private => "private",
        }
    }
}

/// The rule an address falls under, if any. An IPv6 address that carries an IPv4 address
/// (see [`embedded_v4`]) is judged as that IPv4 address, which is where it leads on networks
/// that route it.
pub fn rule(ip: IpAddr) -> Option<Rule> {
    match ip {
        IpAddr::V4(v4) => rule_v4(v4),
        IpAddr::V6(v6) => match embedded_v4(v6) {
            Some(v4) => rule_v4(v4),
            None => rule_v6(v6),
        },
    }
}

/// The IPv4 address an IPv6 address carries: IPv4-mapped (`::ffff:a.b.c.d`), IPv4-compatible
/// (`::a.b.c.d`, deprecated but still routed by some stacks), NAT64's well-known prefix
/// (`64:ff9b::/96`, RFC 6052), 6to4 (`2002::/16`, RFC 3056: bits 16 to 47) and Teredo
/// (`2001::/32`, RFC 4380: the client's address, inverted, in the last 32 bits). std's
/// `Ipv6Addr` names only the first two, and takes `::1` for an IPv4 address; ipnet none.
pub fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let low = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => Some(low(hi, lo)),
        // `::` and `::1` are IPv6's own unspecified and loopback addresses.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => None,
        [0, 0, 0, 0, 0, 0, hi, lo] => Some(low(hi, lo)),
        [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => Some(low(hi, lo)),
        [0x2002, hi, lo, ..] => Some(low(hi, lo)),
        [0x2001, 0, .., hi, lo] => Some(low(!hi, !lo)),
        _ => None,
    }
}

fn rule_v4(ip: Ipv4Addr) -> Option<Rule> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some(Rule::Loopback)
    } else if ip.is_link_local() {
        // 169.254.0.0/16: the cloud metadata address (169.254.169.254) among them.
        Some(Rule::LinkLocal)
    } else if ip.is_unspecified() || a == 0 {
        Some(Rule::Unspecified)
    } else if ip.is_multicast() {
        Some(Rule::Multicast)
    } else if ip.is_broadcast() {
        Some(Rule::Broadcast)
    } else if ip.is_private() || (a == 100 && (64..128).contains(&b)) {
        // RFC 1918, and the carrier-grade NAT range (RFC 6598) some clouds use inside.
        Some(Rule::Private)
    } else {
        None
    }
}

fn rule_v6(ip: Ipv6Addr) -> Option<Rule> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some(Rule::Loopback)
    } else if ip.is_unspecified() {
        Some(Rule::Unspecified)
    } else if ip.is_multicast() {
        Some(Rule::Multicast)
    } else if first & 0xffc0 == 0xfe80 {
        Some(Rule::LinkLocal)
    } else if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfec0 {
        // Unique local (fc00::/7) and the old site-local (fec0::/10).
        Some(Rule::Private)
    } else {
        None
    }
}

/// An address refused, and by which rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub ip: IpAddr,
    pub rule: Rule,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} is a {} address, refused unless outbound_webhooks.allowed_subnets opens it",
            self.ip,
            self.rule.as_str().replace('_', "-")
        )
    }
}

impl std::error::Error for Refused {}

/// The allowed subnets, and the judgement of an address against them.
#[derive(Debug, Clone, Default)]
pub struct Destinations {
    allowed: Arc<[IpNet]>,
}

impl Destinations {
    pub fn new(allowed: Vec<IpNet>) -> Self {
        Self { allowed: allowed.into() }
    }

    /// Ok when the address is public, or in an allowed subnet (either as it is or, for an IPv6
    /// address that carries an IPv4 address, as that address).
    pub fn judge(&self, ip: IpAddr) -> Result<(), Refused> {
        let Some(rule) = rule(ip) else { return Ok(()) };
        let mapped = match ip {
            IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
            IpAddr::V4(_) => None,
        };
        let opened =
            self.allowed.iter().any(|net| net.contains(&ip) || mapped.is_some_and(|v4| net.contains(&v4)));
        if opened { Ok(()) } else { Err(Refused { ip, rule }) }
    }

    /// Resolves `host` (a name or an IP literal, brackets allowed) and keeps the addresses
    /// allowed; the first refusal when none is.
    pub async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Result<Vec<SocketAddr>, Refused>> {
        let addresses = addresses(host, port).await?;
        let mut refused = None;
        let allowed: Vec<SocketAddr> = addresses
            .into_iter()
            .filter(|address| match self.judge(address.ip()) {
                Ok(()) => true,
                Err(e) => {
                    refused.get_or_insert(e);
                    false
                }
            })
            .collect();
        Ok(match (allowed.is_empty(), refused) {
            (true, Some(refused)) => Err(refused),
            _ => Ok(allowed),
        })
    }
}

impl Destinations {
    /// The refusal for an endpoint URL, judged now, as at creation: every address its host
    /// resolves to must be allowed (a name that does not resolve yet is not refused here; its
    /// attempts fail until it does, and each is judged again).
    pub async fn refusal(&self, url: &str) -> Option<Refused> {
        let url = url::Url::parse(url).ok()?;
        let host = url.host_str()?;
        let port = url.port_or_known_default().unwrap_or(443);
        addresses(host, port).await.ok()?.into_iter().find_map(|address| self.judge(address.ip()).err())
    }
}

/// `host` (a name, or an IP literal, brackets allowed) as socket addresses: a literal as it is,
/// a name as the system resolves it.
async fn addresses(host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
    let literal = host.trim_start_matches('[').trim_end_matches(']');
    Ok(match literal.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::net::lookup_host((host, port)).await?.collect(),
    })
}

/// The resolver delivery connects through: names resolve only to allowed addresses.
#[derive(Debug, Clone)]
pub struct Guard(pub Destinations);

impl reqwest::dns::Resolve for Guard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let destinations = self.0.clone();
        Box::pin(async move {
            match destinations.resolve(name.as_str(), 0).await? {
                Ok(addresses) => Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs),
                Err(refused) => Err(Box::new(refused) as Box<dyn std::error::Error + Send + Sync>),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn inside_addresses_are_refused_by_their_rule() {
        for (address, expected) in [
            ("127.0.0.1", Some(Rule::Loopback)),
            ("127.255.0.9", Some(Rule::Loopback)),
            ("::1", Some(Rule::Loopback)),
            ("::ffff:127.0.0.1", Some(Rule::Loopback)),
            ("169.254.169.254", Some(Rule::LinkLocal)),
            ("::ffff:169.254.169.254", Some(Rule::LinkLocal)),
            ("fe80::1", Some(Rule::LinkLocal)),
            ("0.0.0.0", Some(Rule::Unspecified)),
            ("0.1.2.3", Some(Rule::Unspecified)),
            ("::", Some(Rule::Unspecified)),
            ("224.0.0.1", Some(Rule::Multicast)),
            ("ff02::1", Some(Rule::Multicast)),
            ("255.255.255.255", Some(Rule::Broadcast)),
            ("10.1.2.3", Some(Rule::Private)),
            ("172.16.0.1", Some(Rule::Private)),
            ("172.31.255.255", Some(Rule::Private)),
            ("192.168.1.1", Some(Rule::Private)),
            ("100.64.0.1", Some(Rule::Private)),
            ("::ffff:10.0.0.1", Some(Rule::Private)),
            ("fd00::1", Some(Rule::Private)),
            ("fc00::1", Some(Rule::Private)),
            ("8.8.8.8", None),
            ("172.32.0.1", None),
            ("100.128.0.1", None),
            ("2606:4700::1111", None),
            ("::ffff:8.8.8.8", None),
            // IPv6 forms that carry an IPv4 address, judged as that address.
            ("::127.0.0.1", Some(Rule::Loopback)),
            ("::a9fe:a9fe", Some(Rule::LinkLocal)),
            ("::10.0.0.1", Some(Rule::Private)),
            ("::8.8.8.8", None),
            ("64:ff9b::a9fe:a9fe", Some(Rule::LinkLocal)),
            ("64:ff9b::127.0.0.1", Some(Rule::Loopback)),
            ("64:ff9b::192.168.0.1", Some(Rule::Private)),
            ("64:ff9b::8.8.8.8", None),
            ("2002:7f00:1::1", Some(Rule::Loopback)),
            ("2002:a9fe:a9fe::", Some(Rule::LinkLocal)),
            ("2002:0a00:0001:1::", Some(Rule::Private)),
            ("2002:808:808::1", None),
            // Teredo: the client 127.0.0.1 is 80ff:fffe inverted; 10.0.0.1, f5ff:fffe.
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", Some(Rule::Loopback)),
            ("2001:0:4136:e378:8000:63bf:f5ff:fffe", Some(Rule::Private)),
            ("2001:0:4136:e378:8000:63bf:f7f7:f7f7", None),
            // Not these prefixes: 2001:db8::/32 is documentation, 2001:4860:: a public network.
            ("2001:4860:4860::8888", None),
        ] {
            assert_eq!(rule(ip(address)), expected, "{address}");
        }
    }

    #[test]
    fn allowed_subnets_open_what_they_contain_and_nothing_else() {
        let destinations =
            Destinations::new(vec!["127.0.0.0/8".parse().unwrap(), "10.2.0.0/16".parse().unwrap()]);
        assert!(destinations.judge(ip("127.0.0.1")).is_ok());
        assert!(destinations.judge(ip("::ffff:127.0.0.1")).is_ok(), "mapped, judged as the IPv4 it carries");
        assert!(destinations.judge(ip("64:ff9b::10.2.0.7")).is_ok(), "NAT64, likewise");
        assert_eq!(destinations.judge(ip("2002:a9fe:a9fe::")).unwrap_err().rule, Rule::LinkLocal);
        assert!(destinations.judge(ip("10.2.9.9")).is_ok());
        assert_eq!(
            destinations.judge(ip("10.3.0.1")),
            Err(Refused { ip: ip("10.3.0.1"), rule: Rule::Private })
        );
        assert_eq!(destinations.judge(ip("::1")).unwrap_err().rule, Rule::Loopback);
        assert!(Destinations::default().judge(ip("8.8.8.8")).is_ok());
        let refused = Destinations::default().judge(ip("169.254.169.254")).unwrap_err();
        assert_eq!(
            refused.to_string(),
            "169.254.169.254 is a link-local address, refused unless outbound_webhooks.allowed_subnets opens it"
        );
    }

    #[tokio::test]
    async fn a_name_resolves_only_to_allowed_addresses() {
        let closed = Destinations::default();
        assert_eq!(closed.resolve("localhost", 80).await.unwrap().unwrap_err().rule, Rule::Loopback);
        assert_eq!(closed.resolve("[::1]", 80).await.unwrap().unwrap_err().rule, Rule::Loopback);
        let open = Destinations::new(vec!["127.0.0.0/8".parse().unwrap()]);
        let addresses = open.resolve("127.0.0.1", 8080).await.unwrap().unwrap();
        assert_eq!(addresses, vec!["127.0.0.1:8080".parse().unwrap()]);

        assert_eq!(closed.refusal("http://localhost:5432/").await.unwrap().rule, Rule::Loopback);
        assert_eq!(
            closed.refusal("http://169.254.169.254/latest/meta-data").await.unwrap().rule,
            Rule::LinkLocal
        );
        assert_eq!(closed.refusal("https://[::ffff:10.0.0.1]/").await.unwrap().rule, Rule::Private);
        assert!(closed.refusal("https://203.0.113.7/hooks").await.is_none());
        assert!(open.refusal("http://127.0.0.1:9/").await.is_none());
    }
}
