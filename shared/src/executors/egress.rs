//! Where the `http` executor may send a task's request. A task's author picks the URL and reads
//! the response as the task's result, so an unchecked URL would let a tenant read the Lambda
//! Runtime API, the instance metadata service or anything else inside the network.
//!
//! The check sits where the address is decided: a DNS resolver that drops forbidden addresses
//! (so a name that resolves differently the second time, DNS rebinding, is checked on the
//! addresses actually connected to), plus a check of IP-literal URLs, which reqwest connects to
//! without resolving. Redirects are not followed (see `Http::new`).

use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// The environment variable holding the allowlist (template parameter `HttpExecutorAllowedHosts`).
pub const ALLOWED_HOSTS_VAR: &str = "HTTP_EXECUTOR_ALLOWED_HOSTS";

/// A refused destination. Permanent: the same URL is refused on every attempt.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{host} is {ip}, {class}: the http executor does not send requests there; to allow it, \
     name the host or a CIDR that contains the address in the template parameter \
     HttpExecutorAllowedHosts ({ALLOWED_HOSTS_VAR})"
)]
pub struct Refusal {
    pub host: String,
    pub ip: IpAddr,
    pub class: String,
}

/// The Lambda Runtime API is refused even when its address range is allowed: it serves this
/// very function's invocations.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} is the Lambda Runtime API (AWS_LAMBDA_RUNTIME_API): the http executor never sends requests there")]
pub struct RuntimeApiRefusal(pub String);

/// The address class that makes `ip` forbidden by default, if any.
pub fn forbidden_class(ip: IpAddr) -> Option<String> {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4).map(str::to_owned),
        IpAddr::V6(v6) => {
            // ::ffff:a.b.c.d reaches a.b.c.d.
            if let Some(v4) = v6.to_ipv4_mapped() {
                return forbidden_v4(v4)
                    .map(|class| format!("the IPv4-mapped IPv6 form of {class}"));
            }
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("a loopback address".to_owned())
            } else if v6.is_unspecified() {
                Some("the unspecified address".to_owned())
            } else if first & 0xffc0 == 0xfe80 {
                Some("a link-local address".to_owned())
            } else if first & 0xfe00 == 0xfc00 || first & 0xffc0 == 0xfec0 {
                // Unique local (fc00::/7, which holds the EC2 metadata address fd00:ec2::254)
                // and the deprecated site-local fec0::/10.
                Some("a private address".to_owned())
            } else if v6.is_multicast() {
                Some("a multicast address".to_owned())
            } else {
                None
            }
        }
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_link_local() {
        Some("a link-local address (169.254.0.0/16, where the instance metadata services are)")
    } else if ip.is_private() {
        Some("a private address")
    } else if a == 100 && (64..128).contains(&b) {
        Some("a carrier-grade NAT address (100.64.0.0/10)")
    } else if a == 0 {
        Some("the unspecified network (0.0.0.0/8)")
    } else if ip.is_broadcast() {
        Some("the broadcast address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if a >= 240 {
        Some("a reserved address (240.0.0.0/4)")
    } else {
        None
    }
}

/// An address range of the allowlist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Cidr {
    network: IpAddr,
    prefix: u8,
}

impl Cidr {
    fn parse(raw: &str) -> Result<Self, String> {
        let (addr, prefix) = match raw.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (raw, None),
        };
        let network: IpAddr = addr
            .parse()
            .map_err(|_| format!("'{raw}' is not an IP address or CIDR"))?;
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("'{raw}': the prefix length must be 0 to {max}"))?,
        };
        Ok(Self { network, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let (net, ip, bits) = match (self.network, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (u32::from(n) as u128, u32::from(i) as u128, 32),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), 128),
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix);
        shift >= bits || (net >> shift) == (ip >> shift)
    }
}

/// What the http executor may reach beyond public addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EgressPolicy {
    /// Host names (lower case, no trailing dot) allowed whatever they resolve to.
    hosts: Vec<String>,
    ranges: Vec<Cidr>,
    /// The Lambda Runtime API's address and port (`AWS_LAMBDA_RUNTIME_API`).
    runtime_api: Option<(IpAddr, u16)>,
}

impl EgressPolicy {
    /// Parses the allowlist: comma-separated host names, IP addresses and CIDRs.
    pub fn parse(allowed: &str) -> Result<Self, String> {
        let mut policy = Self::default();
        for entry in allowed.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry.contains('/') || entry.parse::<IpAddr>().is_ok() {
                policy.ranges.push(Cidr::parse(entry)?);
            } else if entry
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            {
                policy
                    .hosts
                    .push(entry.trim_end_matches('.').to_ascii_lowercase());
            } else {
                return Err(format!("'{entry}' is not a host name, IP address or CIDR"));
            }
        }
        Ok(policy)
    }

    /// The policy a deployment configured. An allowlist that does not parse opens nothing (it is
    /// logged as an error): failing closed keeps every internal address refused.
    pub fn from_config(config: &crate::config::Config) -> Self {
        let policy = Self::parse(&config.http_allowed_hosts).unwrap_or_else(|problem| {
            tracing::error!(%problem, "{ALLOWED_HOSTS_VAR} does not parse: the http executor allows no internal address");
            Self::default()
        });
        policy.with_runtime_api(config.runtime_api.as_deref())
    }

    /// Also refuses the Runtime API at `address` (`host:port`, as `AWS_LAMBDA_RUNTIME_API`).
    pub fn with_runtime_api(mut self, address: Option<&str>) -> Self {
        self.runtime_api = address
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .map(|a| (a.ip(), a.port()));
        self
    }

    /// Whether a request for `host` may go to `ip`.
    pub fn admit(&self, host: &str, ip: IpAddr) -> Result<(), Refusal> {
        let Some(class) = forbidden_class(ip) else {
            return Ok(());
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        // An IPv4-mapped address is allowed by the range of the IPv4 address it reaches.
        let plain = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        if self.hosts.contains(&host) || self.ranges.iter().any(|r| r.contains(plain)) {
            return Ok(());
        }
        Err(Refusal { host, ip, class })
    }

    /// The Runtime API's port, when known.
    pub fn runtime_api_port(&self) -> Option<u16> {
        self.runtime_api.map(|(_, port)| port)
    }

    /// Whether `ip:port` is the Runtime API.
    pub fn is_runtime_api(&self, ip: IpAddr, port: u16) -> bool {
        let plain = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        self.runtime_api == Some((plain, port))
    }
}

/// A host name that did not resolve (the DNS stage of a request), with the resolver's reason.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct NameNotResolved {
    pub host: String,
    pub reason: String,
}

/// The system's resolver (getaddrinfo, off the async threads).
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

/// Resolves through `inner` and keeps only the addresses the policy admits; fails with the
/// first [`Refusal`] when none is left. reqwest connects only to what this returns.
pub struct GuardedResolver {
    pub inner: Arc<dyn Resolve>,
    pub policy: Arc<EgressPolicy>,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let (inner, policy) = (self.inner.clone(), self.policy.clone());
        Box::pin(async move {
            let mut refused = None;
            let resolved = inner.resolve(name).await.map_err(|e| {
                Box::new(NameNotResolved {
                    host: host.clone(),
                    reason: e.to_string(),
                }) as Box<dyn std::error::Error + Send + Sync>
            })?;
            let kept: Vec<SocketAddr> = resolved
                .filter(|addr| match policy.admit(&host, addr.ip()) {
                    Ok(()) => true,
                    Err(refusal) => {
                        refused.get_or_insert(refusal);
                        false
                    }
                })
                .collect();
            if kept.is_empty() {
                return Err(match refused {
                    Some(refusal) => Box::new(refusal) as Box<dyn std::error::Error + Send + Sync>,
                    None => Box::new(NameNotResolved {
                        host,
                        reason: "no address".into(),
                    }),
                });
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}
