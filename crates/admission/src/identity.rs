//! Who the client is: the peer address, or the address forwarded by trusted proxies.
//!
//! `X-Forwarded-For` is a comma-separated list of hops, the oldest on the left; each proxy
//! appends the address it received the request from. Anyone can write the left part of
//! that list, so it is read from the right and believed only as far as it was written by
//! proxies we trust:
//!
//! - a peer outside every trusted network is the client, whatever its headers say;
//! - otherwise the right-most hop that is not a trusted proxy is the client;
//! - a malformed hop ends the walk: the client is then the trusted hop that passed the
//!   garbage on (or the peer), never anything to the left of it;
//! - a chain made only of trusted hops names its left-most hop.
//!
//! The walk looks at [`MAX_HOPS`] hops at most and treats a header value longer than
//! [`MAX_HEADER_LEN`] bytes as malformed, so a hostile header costs bounded work.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};

use ipnet::IpNet;

/// The most `X-Forwarded-For` hops looked at, counted from the right. A chain of trusted
/// hops longer than this is cut there, as if the next hop were malformed.
pub const MAX_HOPS: usize = 32;

/// The longest `X-Forwarded-For` header value read, in bytes. A longer value is treated
/// as a malformed hop at its place in the list.
pub const MAX_HEADER_LEN: usize = 8 * 1024;

/// The key a client is counted under (token bucket, stream caps, sockets): its address,
/// or for IPv6 its `/ipv6_prefix` network. One IPv6 host is usually given a whole /64, so
/// keying buckets by full address would hand it 2^64 buckets; keying by prefix gives it
/// one. IPv4 (and IPv4-mapped IPv6) addresses are keys as they are; a prefix above 128
/// counts as 128.
///
/// ```
/// use std::net::IpAddr;
/// use sse_admission::client_key;
///
/// let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
/// let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
/// assert_eq!(client_key(a, 64), client_key(b, 64));
/// assert_ne!(client_key(a, 128), client_key(b, 128));
/// let v4: IpAddr = "203.0.113.7".parse().unwrap();
/// assert_eq!(client_key(v4, 64), v4);
/// ```
pub fn client_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u32::from(ipv6_prefix.min(128));
            let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

/// Whether `peer` is one of the trusted proxies (exempt from per-address socket caps; its
/// `X-Forwarded-For` is believed).
pub fn is_trusted_peer(peer: IpAddr, trusted: &[IpNet]) -> bool {
    is_trusted(peer.to_canonical(), trusted)
}

/// The address a request is admitted (rate-limited, counted) under.
///
/// `peer` is the socket's remote address. `forwarded_for` holds the raw values of every
/// `X-Forwarded-For` header of the request, in order; together they form one list.
/// `trusted` are the networks of proxies whose `X-Forwarded-For` is believed.
///
/// Accepted hop forms, surrounding whitespace ignored: `1.2.3.4`, `::1`, `1.2.3.4:5678`,
/// `[::1]:80` and `[::1]`. An IPv4-mapped IPv6 address (`::ffff:1.2.3.4`), as a hop or as
/// `peer`, is taken as the IPv4 address. Anything else (`unknown`, an empty hop, bytes
/// that are not UTF-8, …) is malformed.
///
/// ```
/// use std::net::IpAddr;
/// use ipnet::IpNet;
/// use sse_admission::client_ip;
///
/// let proxy: IpAddr = "10.0.0.2".parse().unwrap();
/// let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
/// let headers: [&[u8]; 2] = [b"6.6.6.6, 203.0.113.7", b"10.0.0.1"];
///
/// // Behind a trusted proxy, the right-most untrusted hop is the client.
/// assert_eq!(client_ip(proxy, &headers, &trusted), "203.0.113.7".parse::<IpAddr>().unwrap());
/// // An untrusted peer is the client, whatever it claims.
/// let stranger: IpAddr = "198.51.100.1".parse().unwrap();
/// assert_eq!(client_ip(stranger, &headers, &trusted), stranger);
/// ```
pub fn client_ip(peer: IpAddr, forwarded_for: &[&[u8]], trusted: &[IpNet]) -> IpAddr {
    let peer = peer.to_canonical();
    if !is_trusted(peer, trusted) {
        return peer;
    }
    // The last trusted hop seen: the one that handed us the next hop to the left.
    let mut client = peer;
    let mut hops = 0;
    for value in forwarded_for.iter().rev() {
        if value.len() > MAX_HEADER_LEN {
            return client;
        }
        for raw in value.rsplit(|&b| b == b',') {
            if hops == MAX_HOPS {
                return client;
            }
            hops += 1;
            let Some(ip) = parse_hop(raw) else {
                return client;
            };
            if !is_trusted(ip, trusted) {
                return ip;
            }
            client = ip;
        }
    }
    client
}

/// Whether `ip` (canonical) lies in a trusted network. An IPv4 address also matches
/// networks written in IPv4-mapped IPv6 form (`::ffff:10.0.0.0/104`).
fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let mapped = match ip {
        IpAddr::V4(v4) => Some(IpAddr::V6(v4.to_ipv6_mapped())),
        IpAddr::V6(_) => None,
    };
    trusted
        .iter()
        .any(|net| net.contains(&ip) || mapped.is_some_and(|m| net.contains(&m)))
}

/// One hop of the list, or `None` when it is malformed.
fn parse_hop(raw: &[u8]) -> Option<IpAddr> {
    let text = std::str::from_utf8(raw.trim_ascii()).ok()?;
    let ip = if let Ok(ip) = text.parse::<IpAddr>() {
        ip
    } else if let Ok(sock) = text.parse::<SocketAddr>() {
        sock.ip()
    } else {
        let inner = text.strip_prefix('[')?.strip_suffix(']')?;
        IpAddr::V6(inner.parse::<Ipv6Addr>().ok()?)
    };
    Some(ip.to_canonical())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ipv6_clients_are_keyed_by_prefix() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client_key(ip("2001:db8::1"), 0), ip("::"));
        assert_eq!(
            client_key(ip("2001:db8:aa:bb:cc::1"), 48),
            ip("2001:db8:aa::")
        );
        assert_eq!(
            client_key(ip("2001:db8:aa:bb:cc::1"), 64),
            ip("2001:db8:aa:bb::")
        );
        assert_eq!(client_key(ip("2001:db8::1"), 200), ip("2001:db8::1"));
        // IPv4, mapped or not, is its own key.
        assert_eq!(client_key(ip("::ffff:192.0.2.1"), 64), ip("192.0.2.1"));
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    fn trusted() -> Vec<IpNet> {
        nets(&["10.0.0.0/8", "fd00::/8"])
    }

    const PROXY: &str = "10.0.0.1";

    fn via_proxy(headers: &[&str]) -> IpAddr {
        let raw: Vec<&[u8]> = headers.iter().map(|h| h.as_bytes()).collect();
        client_ip(ip(PROXY), &raw, &trusted())
    }

    #[test]
    fn no_headers_is_the_peer() {
        assert_eq!(via_proxy(&[]), ip(PROXY));
        assert_eq!(client_ip(ip("1.2.3.4"), &[], &trusted()), ip("1.2.3.4"));
    }

    #[test]
    fn untrusted_peer_ignores_headers() {
        let raw: [&[u8]; 1] = [b"5.6.7.8"];
        assert_eq!(client_ip(ip("1.2.3.4"), &raw, &trusted()), ip("1.2.3.4"));
        assert_eq!(client_ip(ip(PROXY), &raw, &[]), ip(PROXY));
    }

    #[test]
    fn right_most_untrusted_hop_is_the_client() {
        assert_eq!(via_proxy(&["1.1.1.1, 2.2.2.2"]), ip("2.2.2.2"));
        assert_eq!(via_proxy(&["1.1.1.1, 2.2.2.2, 10.9.9.9"]), ip("2.2.2.2"));
        assert_eq!(via_proxy(&["2001:db8::1, fd00::7"]), ip("2001:db8::1"));
    }

    #[test]
    fn several_headers_form_one_list() {
        assert_eq!(via_proxy(&["1.1.1.1", "2.2.2.2, 10.0.0.5"]), ip("2.2.2.2"));
        assert_eq!(
            via_proxy(&["1.1.1.1", "10.0.0.5", "10.0.0.6"]),
            ip("1.1.1.1")
        );
    }

    #[test]
    fn all_trusted_names_the_left_most_hop() {
        assert_eq!(
            via_proxy(&["10.1.1.1, 10.2.2.2", "10.3.3.3"]),
            ip("10.1.1.1")
        );
    }

    #[test]
    fn hop_forms() {
        assert_eq!(via_proxy(&[" \t1.2.3.4 "]), ip("1.2.3.4"));
        assert_eq!(via_proxy(&["1.2.3.4:5678"]), ip("1.2.3.4"));
        assert_eq!(via_proxy(&["::1"]), ip("::1"));
        assert_eq!(via_proxy(&["[2001:db8::2]:80"]), ip("2001:db8::2"));
        assert_eq!(via_proxy(&["[2001:db8::3]"]), ip("2001:db8::3"));
        assert_eq!(via_proxy(&["::ffff:1.2.3.4"]), ip("1.2.3.4"));
        assert_eq!(via_proxy(&["[::ffff:1.2.3.4]:9"]), ip("1.2.3.4"));
    }

    #[test]
    fn mapped_hops_and_peers_are_ipv4() {
        // A mapped trusted hop is skipped like its IPv4 form.
        assert_eq!(via_proxy(&["1.1.1.1, ::ffff:10.0.0.9"]), ip("1.1.1.1"));
        // A mapped peer is normalised, and trusted by its IPv4 network.
        let raw: [&[u8]; 1] = [b"1.1.1.1"];
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.1"), &raw, &trusted()),
            ip("1.1.1.1")
        );
        assert_eq!(
            client_ip(ip("::ffff:8.8.8.8"), &raw, &trusted()),
            ip("8.8.8.8")
        );
        // Trusted networks written in mapped form still match IPv4 addresses.
        let mapped = nets(&["::ffff:10.0.0.0/104"]);
        assert_eq!(client_ip(ip(PROXY), &raw, &mapped), ip("1.1.1.1"));
    }

    #[test]
    fn malformed_hop_stops_at_the_last_trusted_hop() {
        for bad in [
            "unknown",
            "",
            " ",
            "1.2.3",
            "1.2.3.4:99999",
            "[1.2.3.4]",
            "fe80::1%eth0",
            "_hidden",
        ] {
            let list = format!("9.9.9.9, {bad}, 10.0.0.7");
            assert_eq!(via_proxy(&[&list]), ip("10.0.0.7"), "{bad:?}");
            assert_eq!(via_proxy(&[bad]), ip(PROXY), "{bad:?}");
        }
        assert_eq!(via_proxy(&["1.1.1.1,"]), ip(PROXY));
        assert_eq!(via_proxy(&["9.9.9.9", "", "10.0.0.7"]), ip("10.0.0.7"));
        let raw: [&[u8]; 1] = [b"9.9.9.9, \xff\xfe, 10.0.0.7"];
        assert_eq!(client_ip(ip(PROXY), &raw, &trusted()), ip("10.0.0.7"));
    }

    #[test]
    fn oversized_header_is_malformed() {
        let long = format!("{}9.9.9.9", " ".repeat(MAX_HEADER_LEN));
        assert_eq!(via_proxy(&[&long, "10.0.0.7"]), ip("10.0.0.7"));
        let fits = format!("{}9.9.9.9", " ".repeat(MAX_HEADER_LEN - 7));
        assert_eq!(fits.len(), MAX_HEADER_LEN);
        assert_eq!(via_proxy(&[&fits, "10.0.0.7"]), ip("9.9.9.9"));
    }

    #[test]
    fn walk_is_capped_at_max_hops() {
        let hops: Vec<String> = (1..=MAX_HOPS).map(|i| format!("10.0.0.{i}")).collect();
        let list = format!("9.9.9.9, {}", hops.join(", "));
        // 9.9.9.9 is hop MAX_HOPS + 1 from the right: never looked at.
        assert_eq!(via_proxy(&[&list]), ip("10.0.0.1"));
        let list = format!("9.9.9.9, {}", hops[1..].join(", "));
        assert_eq!(via_proxy(&[&list]), ip("9.9.9.9"));
    }

    fn any_ip() -> impl Strategy<Value = IpAddr> {
        prop_oneof![
            any::<[u8; 4]>().prop_map(IpAddr::from),
            any::<[u8; 16]>().prop_map(IpAddr::from),
        ]
    }

    fn any_net() -> impl Strategy<Value = IpNet> {
        (any_ip(), any::<u8>()).prop_map(|(ip, len)| {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            IpNet::new(ip, len % (max + 1)).unwrap()
        })
    }

    /// A hop that is mostly IP-ish, sometimes garbage.
    fn any_hop_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            any_ip().prop_map(|ip| ip.to_string().into_bytes()),
            (any_ip(), any::<u16>())
                .prop_map(|(ip, port)| SocketAddr::new(ip, port).to_string().into_bytes()),
            proptest::collection::vec(any::<u8>(), 0..24),
            "[ ,:\\[\\]0-9a-f.]{0,40}".prop_map(String::into_bytes),
        ]
    }

    fn any_header() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            proptest::collection::vec(any_hop_bytes(), 0..6).prop_map(|hops| hops.join(&b","[..])),
        ]
    }

    /// Renders one IP in any of the accepted hop forms.
    fn render(ip: IpAddr, form: u8, port: u16) -> String {
        let shown = match (ip, form % 2) {
            (IpAddr::V4(v4), 1) => IpAddr::V6(v4.to_ipv6_mapped()),
            _ => ip,
        };
        match (shown, form % 3) {
            (_, 0) => shown.to_string(),
            (IpAddr::V6(v6), 1) => format!("[{v6}]"),
            _ => format!("  {}\t", SocketAddr::new(shown, port)),
        }
    }

    proptest! {
        #[test]
        fn never_panics_and_names_a_seen_address(
            peer in any_ip(),
            headers in proptest::collection::vec(any_header(), 0..5),
            trusted in proptest::collection::vec(any_net(), 0..4),
            trust_peer in any::<bool>(),
        ) {
            let mut trusted = trusted;
            if trust_peer {
                trusted.push(IpNet::from(peer));
            }
            let raw: Vec<&[u8]> = headers.iter().map(Vec::as_slice).collect();
            let got = client_ip(peer, &raw, &trusted);
            let seen = got == peer.to_canonical()
                || headers
                    .iter()
                    .flat_map(|h| h.split(|&b| b == b','))
                    .any(|hop| parse_hop(hop) == Some(got));
            prop_assert!(seen, "{got} neither the peer nor a hop");
        }

        #[test]
        fn untrusted_peer_is_always_the_client(
            peer in any_ip(),
            headers in proptest::collection::vec(any_header(), 0..5),
        ) {
            let trusted = trusted();
            prop_assume!(!is_trusted(peer.to_canonical(), &trusted));
            let raw: Vec<&[u8]> = headers.iter().map(Vec::as_slice).collect();
            prop_assert_eq!(client_ip(peer, &raw, &trusted), peer.to_canonical());
        }

        #[test]
        fn trusted_peer_names_the_right_most_untrusted_hop(
            hops in proptest::collection::vec(
                (
                    prop_oneof![
                        any_ip(),
                        any::<[u8; 3]>().prop_map(|[a, b, c]| IpAddr::from([10, a, b, c])),
                        any::<[u8; 15]>().prop_map(|rest| {
                            let mut o = [0xfd; 16];
                            o[1..].copy_from_slice(&rest);
                            IpAddr::from(o)
                        }),
                    ],
                    any::<u8>(),
                    any::<u16>(),
                ),
                1..=MAX_HOPS,
            ),
            cuts in proptest::collection::vec(any::<bool>(), MAX_HOPS),
        ) {
            let trusted = trusted();
            // Spread the hops over several headers at random cut points.
            let mut headers: Vec<String> = vec![String::new()];
            for (i, (ip, form, port)) in hops.iter().enumerate() {
                let last = headers.last_mut().unwrap();
                if !last.is_empty() {
                    last.push(',');
                }
                last.push_str(&render(*ip, *form, *port));
                if cuts[i] && i + 1 < hops.len() {
                    headers.push(String::new());
                }
            }
            let raw: Vec<&[u8]> = headers.iter().map(String::as_bytes).collect();
            let canonical: Vec<IpAddr> = hops.iter().map(|(ip, _, _)| ip.to_canonical()).collect();
            let expected = canonical
                .iter()
                .rev()
                .find(|ip| !is_trusted(**ip, &trusted))
                .unwrap_or(&canonical[0]);
            prop_assert_eq!(client_ip(ip(PROXY), &raw, &trusted), *expected);
        }
    }
}
