//! Request checks the router applies to every credential surface before the surface sees the
//! request: SSRF and DNS-rebinding defences. Each surface renders the verdict in its own
//! cloud's error shape ([`crate::surface::Surface::refuse`]).

use http::HeaderName;
use http::request::Parts;

/// Why a request was refused before routing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `X-Forwarded-For` or `Forwarded`: the request came through a proxy, so possibly from an
    /// SSRF victim. Real metadata services refuse these.
    Proxied,
    /// The `Host` is not a loopback or metadata name: a DNS-rebinding page in a browser.
    ForeignHost,
}

impl Refusal {
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Proxied => {
                "requests that came through a proxy (X-Forwarded-For, Forwarded, Via, X-Real-IP, X-Forwarded-Host) are refused"
            }
            Refusal::ForeignHost => {
                "the Host header must name a loopback address or a metadata host"
            }
        }
    }
}

/// Headers a proxy adds. No SDK sends any of them to a metadata service; their presence means
/// the request was relayed, possibly by an application tricked into fetching a URL (SSRF).
/// `HeaderName` constants: a lookup by `&str` parses the name on every request.
const PROXY_HEADERS: [HeaderName; 5] = [
    HeaderName::from_static("x-forwarded-for"),
    HeaderName::from_static("forwarded"),
    HeaderName::from_static("via"),
    HeaderName::from_static("x-real-ip"),
    HeaderName::from_static("x-forwarded-host"),
];

/// Host names SDKs legitimately use to reach a metadata surface.
const METADATA_HOSTS: &[&str] = &[
    "localhost",
    "metadata.google.internal",
    "metadata",
    "169.254.169.254",
    "169.254.170.2",
    "169.254.170.23",
    "fd00:ec2::254",
    "fd00:ec2::23",
];

/// Refuses proxied requests and requests naming a host that is not ours.
///
/// Every name the request carries must be acceptable: the `Host` header (several, or one that
/// is not text, are refused: parsers disagree on which one counts) and the authority of an
/// absolute-form request target (`GET http://host/path`), which HTTP/1.1 says wins over `Host`.
pub fn check(req: &Parts) -> Result<(), Refusal> {
    let h = &req.headers;
    // One pass over the request's few headers, comparing names: five map lookups hashed each
    // name (0.75k instructions per request, callgrind).
    if h.keys().any(|k| PROXY_HEADERS.contains(k)) {
        return Err(Refusal::Proxied);
    }
    let mut hosts = h.get_all(http::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(Refusal::ForeignHost),
        (Some(value), None) if plain_loopback(value.as_bytes()) => {}
        (Some(value), None) => match value.to_str() {
            Ok(host) if host_allowed(host) => {}
            _ => return Err(Refusal::ForeignHost),
        },
        // HTTP/1.0 without Host: nothing a browser sends, nothing to rebind.
        (None, _) => {}
    }
    match req.uri.authority() {
        Some(authority) if !host_allowed(authority.as_str()) => Err(Refusal::ForeignHost),
        _ => Ok(()),
    }
}

/// `127.0.0.1` or `127.0.0.1:port`, what SDKs send to the loopback listener, decided on the
/// bytes: [`host_allowed`]'s text checks were ~0.35k instructions of every request (callgrind).
fn plain_loopback(host: &[u8]) -> bool {
    match host.strip_prefix(b"127.0.0.1") {
        Some([]) => true,
        Some([b':', port @ ..]) => {
            !port.is_empty() && port.len() <= 5 && port.iter().all(u8::is_ascii_digit)
        }
        _ => false,
    }
}

fn host_allowed(host: &str) -> bool {
    let Some(name) = strip_port(host.trim()) else {
        return false;
    };
    // What SDKs send to the loopback listener, decided without parsing an address.
    if name == "127.0.0.1" {
        return true;
    }
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return ip.is_loopback() || METADATA_HOSTS.contains(&name);
    }
    METADATA_HOSTS.iter().any(|m| m.eq_ignore_ascii_case(name))
}

/// The host part of `host[:port]` or `[v6][:port]`; `None` when anything but a port follows
/// (`[::1]evil`, `host:port:port`, userinfo), so such a value is refused, not guessed at.
fn strip_port(host: &str) -> Option<&str> {
    let port_ok = |p: &str| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = host.strip_prefix('[') {
        let (name, after) = rest.split_once(']')?;
        return match after {
            "" => Some(name),
            a => a.strip_prefix(':').filter(|p| port_ok(p)).map(|_| name),
        };
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port_ok(port) && !name.contains(':') => Some(name),
        Some(_) => None,
        None => Some(host),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        crate::testing::parts("GET", "/x", headers)
    }

    #[test]
    fn hosts() {
        for ok in [
            "127.0.0.1:8189",
            "127.0.0.1",
            "localhost:1",
            "[::1]:80",
            "metadata.google.internal",
            "169.254.169.254",
            "127.1.2.3:9",
            "LOCALHOST",
        ] {
            assert_eq!(check(&parts(&[("host", ok)])), Ok(()), "{ok}");
        }
        for bad in [
            "evil.example.com",
            "evil.example.com:8189",
            "10.0.0.1:8189",
            "127.0.0.1.nip.io",
            "[::1]evil.example.com",
            "[::1].evil.example.com:80",
            "[::1]:80:80",
            "127.0.0.1:8189:8189",
            "127.0.0.1:",
            "127.0.0.1:123456",
            "user@127.0.0.1",
            "::1",
            "[::ffff:127.0.0.1]",
            "0.0.0.0",
            "",
        ] {
            assert_eq!(
                check(&parts(&[("host", bad)])),
                Err(Refusal::ForeignHost),
                "{bad}"
            );
        }
        assert_eq!(check(&parts(&[])), Ok(()));
    }

    #[test]
    fn the_loopback_fast_path_never_accepts_what_the_full_check_refuses() {
        for host in [
            "127.0.0.1",
            "127.0.0.1:8189",
            "127.0.0.1:",
            "127.0.0.1:123456",
            "127.0.0.1:80:80",
            "127.0.0.1.nip.io",
            "127.0.0.10",
            "127.0.0.1:8a",
            "127.0.0.1 ",
            " 127.0.0.1",
        ] {
            if plain_loopback(host.as_bytes()) {
                assert!(host_allowed(host), "{host:?}");
            }
        }
        assert!(plain_loopback(b"127.0.0.1:8189") && plain_loopback(b"127.0.0.1"));
        assert!(!plain_loopback(b"127.0.0.1:") && !plain_loopback(b"127.0.0.10"));
    }

    #[test]
    fn every_name_a_request_carries_is_checked() {
        // Two Host headers: whichever a parser picks, refuse.
        assert_eq!(
            check(&parts(&[
                ("host", "127.0.0.1"),
                ("host", "evil.example.com")
            ])),
            Err(Refusal::ForeignHost)
        );
        // A Host that is not text cannot be judged, so it is refused.
        let mut p = parts(&[]);
        p.headers.insert(
            http::header::HOST,
            http::HeaderValue::from_bytes(b"evil\xff.example.com").unwrap(),
        );
        assert_eq!(check(&p), Err(Refusal::ForeignHost));
        // Absolute-form targets: the authority counts as well as the Host header.
        let abs = |uri: &str, host: &str| {
            http::Request::builder()
                .uri(uri)
                .header("host", host)
                .body(())
                .unwrap()
                .into_parts()
                .0
        };
        assert_eq!(
            check(&abs("http://evil.example.com/v1/credentials", "127.0.0.1")),
            Err(Refusal::ForeignHost)
        );
        assert_eq!(
            check(&abs("http://127.0.0.1:8189/v1/credentials", "127.0.0.1")),
            Ok(())
        );
    }

    #[test]
    fn proxied() {
        assert_eq!(
            check(&parts(&[
                ("host", "127.0.0.1"),
                ("x-forwarded-for", "1.2.3.4")
            ])),
            Err(Refusal::Proxied)
        );
        for header in [
            "forwarded",
            "via",
            "x-real-ip",
            "x-forwarded-host",
            "X-Forwarded-For",
        ] {
            assert_eq!(
                check(&parts(&[("host", "127.0.0.1"), (header, "1.2.3.4")])),
                Err(Refusal::Proxied),
                "{header}"
            );
        }
    }
}
