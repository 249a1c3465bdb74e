//! The `/metrics` endpoint of `serve` and `mount` (`--metrics-addr`).

/// `--metrics-addr`: HOST:PORT, as a TCP listener takes it (`0.0.0.0:9464`,
/// `localhost:9464`, `[::1]:9464`; port 0 picks a free one).
pub fn parse_metrics_addr(s: &str) -> Result<String, String> {
    match s.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => Ok(s.to_string()),
        _ => Err(format!("{s:?} is not HOST:PORT, like 127.0.0.1:9464")),
    }
}

/// Serves the `exposed` families at `http://ADDR/metrics` when asked to;
/// the endpoint lives as long as the returned server.
pub async fn start_metrics(
    addr: Option<&str>,
    exposed: dfcache_metrics::Exposed,
    refresh: Vec<dfcache_metrics::Refresh>,
) -> anyhow::Result<Option<dfcache_metrics::MetricsServer>> {
    let Some(addr) = addr else {
        return Ok(None);
    };
    let registry = dfcache_metrics::registry(exposed);
    Ok(Some(
        dfcache_metrics::serve_metrics(addr, registry, refresh).await?,
    ))
}

/// Reads the daemon's memory budget (size, held, waiting) before a scrape.
pub fn daemon_memory_refresh(budget: &dfcache_budget::MemoryBudget) -> dfcache_metrics::Refresh {
    let budget = budget.clone();
    std::sync::Arc::new(move || {
        dfcache_metrics::daemon().memory_state(budget.capacity(), budget.held(), budget.waiting());
    })
}

/// Reads the mount's import budget (size, held, waiting) before a scrape.
pub fn import_memory_refresh(budget: &dfcache_budget::MemoryBudget) -> dfcache_metrics::Refresh {
    let budget = budget.clone();
    std::sync::Arc::new(move || {
        dfcache_metrics::mount().import_memory_state(
            budget.capacity(),
            budget.held(),
            budget.waiting(),
        );
    })
}

/// Reads the store's task count, bytes and free space before a scrape.
pub fn store_refresh(store: &dfcache_daemon::store::Store) -> dfcache_metrics::Refresh {
    let store = store.clone();
    std::sync::Arc::new(move || {
        let (tasks, bytes, free) = store.usage();
        dfcache_metrics::daemon().store_state(tasks, bytes, free);
    })
}
