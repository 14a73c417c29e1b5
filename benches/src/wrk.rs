//! wrk (Debian's `wrk` 4.1), the load generator no one here wrote: a Lua script sets the
//! request's method and headers and, when the run is done, prints the figures as one line this
//! module parses (wrk's own text rounds them and has no p99.9).

use crate::targets::WireSpec;

/// The marker of the line the script's `done` prints.
const MARK: &str = "CREDBROKER-WRK";

/// What one wrk run measured (latencies in microseconds, from wrk's histogram).
#[derive(Debug, Clone, PartialEq)]
pub struct WrkStats {
    pub requests: u64,
    pub duration_us: u64,
    pub bytes: u64,
    /// connect + read + write + status (> 399) + timeout errors.
    pub errors: u64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    pub mean_us: f64,
}

/// A Lua string literal.
fn lua_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The script for `spec`: method and headers (wrk derives `Host` and the path from the URL),
/// and a `done` that prints the figures.
pub fn script(spec: &WireSpec) -> String {
    script_with_body(spec, None)
}

/// [`script`], with a request body (`wrk.body`), e.g. an AdmissionReview to POST.
pub fn script_with_body(spec: &WireSpec, body: Option<&str>) -> String {
    let mut s = format!("wrk.method = {}\n", lua_str(&spec.method));
    for (k, v) in &spec.headers {
        if k.eq_ignore_ascii_case("host") {
            continue;
        }
        s.push_str(&format!("wrk.headers[{}] = {}\n", lua_str(k), lua_str(v)));
    }
    if let Some(body) = body {
        s.push_str(&format!("wrk.body = {}\n", lua_str(body)));
    }
    s.push_str(&format!(
        r#"done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("{MARK} %d %d %d %d %d %d %d %d %d %d %d %d %d %.3f\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"#
    ));
    s
}

/// The figures from wrk's output.
pub fn parse(stdout: &str) -> Result<WrkStats, String> {
    let line = stdout
        .lines()
        .find_map(|l| l.trim().strip_prefix(MARK))
        .ok_or_else(|| format!("no {MARK} line in wrk's output:\n{stdout}"))?;
    let f: Vec<f64> = line
        .split_whitespace()
        .map(|x| x.parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("wrk figures {line:?}: {e}"))?;
    if f.len() != 14 {
        return Err(format!("wrk figures {line:?}: expected 14 numbers"));
    }
    Ok(WrkStats {
        requests: f[0] as u64,
        duration_us: f[1] as u64,
        bytes: f[2] as u64,
        errors: (f[3] + f[4] + f[5] + f[6] + f[7]) as u64,
        p50_us: f[8],
        p90_us: f[9],
        p99_us: f[10],
        p999_us: f[11],
        max_us: f[12],
        mean_us: f[13],
    })
}

/// `wrk` arguments for one run: one thread (so it fits the one CPU it is pinned to), the
/// connection count, whole seconds (wrk takes no fractions), latency statistics, the script.
pub fn args(connections: usize, seconds: u64, script_path: &str, url: &str) -> Vec<String> {
    vec![
        "-t1".into(),
        format!("-c{}", connections.max(1)),
        format!("-d{}s", seconds.max(1)),
        "--timeout".into(),
        "5s".into(),
        "--latency".into(),
        "-s".into(),
        script_path.into(),
        url.into(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_and_parse() {
        let spec = WireSpec {
            method: "GET".into(),
            path_and_query: "/v1/credentials".into(),
            headers: vec![
                ("host".into(), "127.0.0.1:1".into()),
                ("authorization".into(), "a\"b\\c".into()),
            ],
        };
        let s = script(&spec);
        assert!(s.starts_with("wrk.method = \"GET\"\n"));
        assert!(s.contains(r#"wrk.headers["authorization"] = "a\"b\\c""#));
        assert!(!s.contains("host"));
        let out = "Running 1s test\n  Latency ...\nCREDBROKER-WRK 1000 1000123 900000 0 0 0 2 1 50 90 99 120 300 55.5\n";
        let w = parse(out).unwrap();
        assert_eq!(w.requests, 1000);
        assert_eq!(w.errors, 3);
        assert_eq!(w.p999_us, 120.0);
        assert_eq!(w.mean_us, 55.5);
        assert!(parse("nothing").is_err());
        assert!(parse("CREDBROKER-WRK 1 2").is_err());
        assert_eq!(args(64, 2, "s.lua", "http://x/")[1], "-c64");
    }
}
