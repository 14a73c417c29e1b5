//! Request checks every metadata surface applies before touching the cache: SSRF and
//! DNS-rebinding defences. Each surface renders the verdict in its own cloud's error shape.

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
            Refusal::Proxied => "requests with X-Forwarded-For or Forwarded are refused",
            Refusal::ForeignHost => {
                "the Host header must name a loopback address or a metadata host"
            }
        }
    }
}

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

pub fn check(req: &Parts) -> Result<(), Refusal> {
    let h = &req.headers;
    if h.contains_key("x-forwarded-for") || h.contains_key(http::header::FORWARDED) {
        return Err(Refusal::Proxied);
    }
    let host = h
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri.host());
    match host {
        None => Ok(()), // HTTP/1.0 without Host: nothing to rebind.
        Some(host) if host_allowed(host) => Ok(()),
        Some(_) => Err(Refusal::ForeignHost),
    }
}

fn host_allowed(host: &str) -> bool {
    let name = strip_port(host);
    if let Ok(ip) = name.parse::<std::net::IpAddr>() {
        return ip.is_loopback() || METADATA_HOSTS.contains(&name);
    }
    METADATA_HOSTS.iter().any(|m| m.eq_ignore_ascii_case(name))
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(headers: &[(&str, &str)]) -> Parts {
        let mut b = http::Request::builder().uri("/x");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
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
    fn proxied() {
        assert_eq!(
            check(&parts(&[
                ("host", "127.0.0.1"),
                ("x-forwarded-for", "1.2.3.4")
            ])),
            Err(Refusal::Proxied)
        );
        assert_eq!(
            check(&parts(&[("forwarded", "for=1.2.3.4")])),
            Err(Refusal::Proxied)
        );
    }
}
