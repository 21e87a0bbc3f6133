//! Host names of registries, resolved without glibc's NSS.
//!
//! `cartinject` is linked fully static: against musl, or against glibc where Rust's musl
//! target is missing (`.ci/build-static-cartinject`). A static glibc's `getaddrinfo` needs, at
//! run time, NSS modules from the very glibc version it was linked with ("Using
//! 'getaddrinfo' in statically linked applications requires at runtime the shared libraries
//! from the glibc version used for linking", ld's warning): on a host whose `nsswitch.conf`
//! names `mdns4_minimal`, `resolve` or `myhostname`, it loads a second, different libc into
//! the process. So registry names are resolved here, in Rust, the same whichever libc is
//! linked, with hickory-resolver: `/etc/hosts` first, then the name servers of `/etc/resolv.conf`
//! (A and AAAA, for happy eyeballs). Without a usable `resolv.conf`, only `/etc/hosts`
//! answers: nothing is ever sent to a public resolver the host did not configure (reqwest's
//! own hickory integration falls back to Google's, which is why it is not used).
//!
//! IP literals (`127.0.0.1`, `[::1]`) never reach a resolver: hyper connects to them as
//! they are. Name service switches beyond files and DNS (LDAP, mDNS) are not consulted.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{LookupIpStrategy, ResolverConfig};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use reqwest::dns::{Addrs, Name, Resolve, Resolving};

/// A [`Resolve`] for reqwest: `/etc/hosts`, then `/etc/resolv.conf`'s name servers.
///
/// The hickory resolver is made on first use, inside reqwest's runtime (it spawns its
/// connections there), and goes away with the client.
#[derive(Debug, Default, Clone)]
pub struct HostsAndDns {
    state: Arc<OnceLock<Result<TokioResolver, String>>>,
}

impl HostsAndDns {
    /// A resolver that reads the system's files on first use.
    pub fn new() -> HostsAndDns {
        HostsAndDns::default()
    }
}

fn new_resolver() -> Result<TokioResolver, String> {
    let mut builder = TokioResolver::builder_tokio().unwrap_or_else(|_| {
        // No (usable) /etc/resolv.conf: /etc/hosts alone.
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, Vec::new(), Vec::new()),
            TokioRuntimeProvider::default(),
        )
    });
    builder.options_mut().ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    builder.build().map_err(|e| e.to_string())
}

impl Resolve for HostsAndDns {
    fn resolve(&self, name: Name) -> Resolving {
        let state = self.state.clone();
        Box::pin(async move {
            let resolver = state
                .get_or_init(new_resolver)
                .as_ref()
                .map_err(|e| format!("cannot set up name resolution: {e}"))?;
            let lookup = resolver.lookup_ip(name.as_str()).await?;
            let addrs: Vec<SocketAddr> = lookup.iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            let addrs: Addrs = Box::new(addrs.into_iter());
            Ok(addrs)
        })
    }
}
