//! The real DNS backend: hickory-resolver configured from /etc/resolv.conf, driven by a
//! current-thread tokio runtime that is only built when a lookup is needed (a relay or IP
//! literal costs no runtime at all).

use std::future::Future;
use std::net::IpAddr;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::ResolveHosts;
use hickory_resolver::net::{DnsError as HDnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{Name, RData, RecordType};

use super::dns::{DnsError, Qtype, Resolve};

/// The resolver could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ResolverInitError {
    /// The tokio runtime could not be built (epoll/eventfd failure): temp_oserr.
    #[error("cannot build the DNS runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// /etc/resolv.conf is missing or unusable: temp_dns (an admin fixes it, nothing is lost).
    #[error("cannot read the resolver configuration: {0}")]
    Config(#[source] NetError),
}

/// hickory-resolver plus the runtime it runs on.
pub struct Hickory {
    rt: tokio::runtime::Runtime,
    resolver: TokioResolver,
}

impl Hickory {
    /// Reads /etc/resolv.conf. The hosts file is not consulted and no search list is applied
    /// (names are made fully qualified), like stock's res_query.
    pub fn new() -> Result<Self, ResolverInitError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()
            .map_err(ResolverInitError::Runtime)?;
        let resolver = {
            // the connection provider captures the runtime handle
            let _guard = rt.enter();
            let mut b = TokioResolver::builder_tokio().map_err(ResolverInitError::Config)?;
            let o = b.options_mut();
            o.use_hosts_file = ResolveHosts::Never;
            // one process, a handful of queries: a big cache is wasted memory
            o.cache_size = 32;
            b.build().map_err(ResolverInitError::Config)?
        };
        Ok(Hickory { rt, resolver })
    }

    /// Runs a lookup future to completion.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    async fn query(&self, name: &[u8], t: RecordType) -> Result<Vec<RData>, DnsError> {
        let name = to_name(name).ok_or(DnsError::Hard)?;
        match self.resolver.lookup(name, t).await {
            Ok(l) => Ok(l
                .answers()
                .iter()
                .filter(|r| r.record_type() == t)
                .map(|r| r.data.clone())
                .collect()),
            Err(e) => Err(classify(&e)),
        }
    }
}

/// Raw bytes to a fully qualified name (no IDNA; one trailing dot allowed). A name that cannot
/// be encoded (empty label, label > 63 bytes) can never resolve: `None` → hard.
fn to_name(host: &[u8]) -> Option<Name> {
    let h = host.strip_suffix(b".").unwrap_or(host);
    if h.is_empty() {
        return None;
    }
    let mut n = Name::from_labels(h.split(|&c| c == b'.')).ok()?;
    n.set_fqdn(true);
    Some(n)
}

/// The exchange name as bytes without the trailing dot (root → empty).
fn name_bytes(n: &Name) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, label) in n.iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        out.extend_from_slice(label);
    }
    out
}

/// stock: NXDOMAIN and "no data" are hard; everything else (SERVFAIL, timeout, network errors,
/// malformed answers, REFUSED) is soft. Deviation: glibc reports REFUSED/FORMERR/NOTIMP as
/// NO_RECOVERY (hard); we keep them soft so a misbehaving resolver defers instead of bouncing.
fn classify(e: &NetError) -> DnsError {
    match e {
        NetError::Dns(HDnsError::NoRecordsFound(nr))
            if matches!(
                nr.response_code,
                ResponseCode::NXDomain | ResponseCode::NoError
            ) =>
        {
            DnsError::Hard
        }
        _ => DnsError::Soft,
    }
}

impl Resolve for Hickory {
    async fn mx(&self, name: &[u8]) -> Result<Vec<(u16, Vec<u8>)>, DnsError> {
        Ok(self
            .query(name, RecordType::MX)
            .await?
            .into_iter()
            .filter_map(|d| match d {
                RData::MX(mx) => Some((mx.preference, name_bytes(&mx.exchange))),
                _ => None,
            })
            .collect())
    }

    async fn addrs(&self, name: &[u8], t: Qtype) -> Result<Vec<IpAddr>, DnsError> {
        let rt = match t {
            Qtype::A => RecordType::A,
            Qtype::Aaaa => RecordType::AAAA,
        };
        Ok(self
            .query(name, rt)
            .await?
            .into_iter()
            .filter_map(|d| match d {
                RData::A(a) => Some(IpAddr::V4(a.0)),
                RData::AAAA(a) => Some(IpAddr::V6(a.0)),
                _ => None,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(
            to_name(b"Example.COM.").map(|n| n.to_ascii()),
            Some("Example.COM.".into())
        );
        assert!(to_name(b"").is_none());
        assert!(to_name(b".").is_none());
        assert!(to_name(b"a..b").is_none());
        assert!(to_name(&[b'a'; 64]).is_none());
        let n = to_name(b"mx1.example.test").unwrap();
        assert_eq!(name_bytes(&n), b"mx1.example.test");
        assert_eq!(name_bytes(&Name::root()), b"");
    }

    #[test]
    fn classification() {
        use hickory_resolver::net::NoRecords;
        use hickory_resolver::proto::op::Query;
        let q = Query::query(Name::root(), RecordType::A);
        let nr = |c| NetError::Dns(HDnsError::NoRecordsFound(NoRecords::new(q.clone(), c)));
        assert_eq!(classify(&nr(ResponseCode::NXDomain)), DnsError::Hard);
        assert_eq!(classify(&nr(ResponseCode::NoError)), DnsError::Hard);
        assert_eq!(classify(&nr(ResponseCode::ServFail)), DnsError::Soft);
        assert_eq!(
            classify(&NetError::Dns(HDnsError::ResponseCode(
                ResponseCode::ServFail
            ))),
            DnsError::Soft
        );
        assert_eq!(classify(&NetError::Timeout), DnsError::Soft);
    }
}
