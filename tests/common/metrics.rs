//! Prometheus metrics of a live mount or daemon (`--metrics-addr`),
//! scraped over HTTP with curl.

use std::collections::HashMap;
use std::process::Command;

use super::succeeded;

/// A free TCP port on localhost (bound, read, released).
pub fn free_addr() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = listener.local_addr().expect("local address").port();
    format!("127.0.0.1:{port}")
}

/// `curl http://addr/metrics`, as sample line key ("name{labels}") to value.
pub fn scrape(addr: &str) -> HashMap<String, f64> {
    let url = format!("http://{addr}/metrics");
    let out = Command::new("curl")
        .args(["-sSf", "--max-time", "10", &url])
        .output()
        .expect("run curl");
    let text = succeeded(&out, format_args!("curl {url}"));
    assert!(text.ends_with("# EOF"), "not OpenMetrics text:\n{text}");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .map(|(key, value)| (key.to_string(), value.parse().expect("a sample value")))
        .collect()
}

/// The sample `key` ("name" or "name{labels}"); panics when it is not exposed.
pub fn value(samples: &HashMap<String, f64>, key: &str) -> f64 {
    *samples
        .get(key)
        .unwrap_or_else(|| panic!("{key} not exposed; got {:?}", samples.keys()))
}
