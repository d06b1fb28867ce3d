//! The daemon: start-up checks, wiring of socket, placement, sampler, scrape and HTTP server,
//! and shutdown. Each part gets the narrow handle it needs, built here.

pub mod service_manager;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use prometheus::IntCounter;
use tokio_util::sync::CancellationToken;

use crate::cgroup::{self, Layout};
use crate::cli::{split_trust_paths, AgentArgs};
use crate::ebpf::{Counting, Ebpf, EbpfOptions};
use crate::http::WebOptions;
use crate::launcher::limits::{Admission, Caps};
use crate::launcher::trust::TrustedSet;
use crate::launcher::{Connections, Gate, Socket};
use crate::placement::cgroup_labels::CgroupLabels;
use crate::placement::{recovery, Placer};
use crate::sampler::{self, SamplerQueue};
use crate::scrape::exposition::{Disabled, Exposition, Group};
use crate::scrape::telemetry::Telemetry;
use crate::scrape::Scrape;
use crate::store::persistence::StoreFile;
use crate::store::Store;
use crate::support::duration::format_duration;

/// Run until SIGINT or SIGTERM. Every start-up error is returned before anything is created
/// (or after removing what was), so a failed start leaves nothing behind.
pub async fn run(args: AgentArgs) -> Result<()> {
    check_privileges()?;
    let fds = raise_fd_limit();
    // Keep cgroup files open for sampling with what is left after a reserve for HTTP, eBPF and
    // the rest; each container takes what it needs for itself from the same budget.
    cgroup::set_open_file_budget(fds.saturating_sub(FD_RESERVE));
    let trusted = TrustedSet::new(split_trust_paths(&args.trust_path))?;
    let cgroup_labels = CgroupLabels::new(&args.metrics_cgroup_labels)?;
    let layout = Arc::new(Layout::detect(&args.cgroup_parent)?);
    // Refused here, before anything is bound, when another user could swap names in its directory.
    let persistence_file = match args.persistence_file.as_str() {
        "" => None,
        path => Some(Arc::new(StoreFile::open(Path::new(path))?)),
    };
    let web = crate::http::bind(&web_options(&args)).await?;
    let socket = Socket::bind(&args.socket_path)?;
    cgroup::prepare_parent(&layout).context("preparing --cgroup.parent")?;
    if trusted.is_empty() {
        tracing::warn!("--trust.path is empty: every launcher will be refused");
    }

    let store = Arc::new(Store::with_retained_max(args.limits_retained_containers));
    if let Some(file) = &persistence_file {
        for record in file.load_or_set_aside() {
            store.restore(record);
        }
    }
    // Containers an earlier agent left running are monitored again; the rest of the loaded
    // records ended while nobody watched, and are kept for the retention.
    let recovered = recovery::scan(&layout, &store);
    let adopted: Vec<String> = recovered.adopted.iter().map(|a| a.id.clone()).collect();
    store.end_all_except(&adopted, SystemTime::now());
    let trimmed = store.trim_retained().len();
    // Running containers count against the caps, even beyond them: they were placed already.
    let admission = Arc::new(Admission::new(Caps {
        per_user: args.limits_containers_per_user,
        total: args.limits_containers,
        root_per_user: args.limits_root_per_user,
    }));
    for a in &recovered.adopted {
        admission.adopt(a.uid, &a.id);
    }

    let mut ebpf = Ebpf::load(&EbpfOptions { disable: args.ebpf_disable, max_containers: args.ebpf_max_containers });
    if let Some(unified) = layout.unified() {
        ebpf.attach_network_programs_to(&unified.parent_dir);
    }
    crate::support::heap::release_free_memory(); // the kernel's BTF was parsed to load the programs
    let disabled = Disabled::new(&args.metrics_disable);
    let telemetry = Telemetry::new().context("registering metrics")?;
    telemetry.containers.set(store.live_count() as i64);
    telemetry.retained_dropped.inc_by(trimmed as u64);
    telemetry.set_container_caps(args.limits_containers, args.limits_containers_per_user);
    telemetry.set_ebpf_status(ebpf.up(), &ebpf.programs(), args.ebpf_max_containers);
    let ebpf_up = ebpf.up();
    let ebpf = Arc::new(Counting::new(ebpf, telemetry.ebpf_containers.clone(), telemetry.ebpf_watch_errors.clone()));
    warn_if_caps_exceed_descriptors(args.limits_containers, 1 + ebpf.lock().descriptors_per_container(), fds);
    let scrape = Arc::new(Scrape {
        registry: telemetry.registry.clone(),
        exposition: Exposition::without(store.clone(), args.metrics_legacy, &disabled),
    });
    let shutdown = CancellationToken::new();
    let collectors = cgroup::collectors_for(&layout, &sources_needed(&disabled, args.metrics_legacy));
    // Every source's error counter is exported from the start at 0, as the connection results
    // are: a series that first appears at 1 is no increase to rate()/increase(), so alerts on
    // sample errors would miss the first ones (monitoring/rules/alerts.yml).
    for collector in &collectors {
        telemetry.sample_errors.with_label_values(&[collector.name()]);
    }
    let (sampler_queue, commands) = SamplerQueue::new();
    let setup = sampler::Setup {
        collectors,
        store: store.clone(),
        ebpf: ebpf.clone(),
        interval: args.monitor_interval,
        retention: args.metrics_retention,
        metrics: sampler::Metrics {
            duration: telemetry.sample_duration.clone(),
            errors: telemetry.sample_errors.clone(),
            containers: telemetry.containers.clone(),
            retained_dropped: telemetry.retained_dropped.clone(),
        },
        on_end: {
            let admission = admission.clone();
            Box::new(move |id| admission.release(id))
        },
        shutdown: shutdown.clone(),
    };
    let sampler = match sampler::start(setup, commands, tokio::runtime::Handle::current()) {
        Ok(sampler) => sampler,
        Err(err) => {
            // Nothing was placed yet; adopted containers stay for the next start.
            remove_parents(&layout);
            return Err(err);
        }
    };
    for recovery::Adopted { id, cg, .. } in recovered.adopted {
        let ebpf_id = cg.unified_dir().and_then(|dir| ebpf.watch(&id, dir));
        sampler_queue.watch(id, cg, ebpf_id);
    }
    tokio::spawn(sampler::expire_ended(store.clone(), args.metrics_retention, shutdown.clone()));
    let writer = persistence_file.clone().map(|file| {
        tokio::spawn(write_periodically(store.clone(), telemetry.persistence_errors.clone(), file, args.persistence_interval, shutdown.clone()))
    });
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        cgroups = ?layout.mode,
        parent = %layout.primary().parent_dir.display(),
        socket = %args.socket_path.display(),
        web = %args.web_listen_address,
        interval = %format_duration(args.monitor_interval),
        ebpf = ebpf_up,
        trusted = ?trusted.paths(),
        placement = ?args.placement,
        "apptheus started"
    );

    let http = tokio::spawn(crate::http::serve(web, scrape, shutdown.clone()));
    let gate = Arc::new(Gate {
        trusted,
        admission,
        placer: Arc::new(Placer {
            layout: layout.clone(),
            mode: args.placement,
            store: store.clone(),
            env_labels: crate::placement::environ::wanted_vars(&args.metrics_env_labels),
            cgroup_labels,
            ebpf,
            containers: telemetry.containers.clone(),
        }),
        sampler: sampler_queue.clone(),
        connections: Connections::new(telemetry.connections.clone()),
        shutdown: shutdown.clone(),
    });
    let accept = tokio::spawn(async move {
        socket.serve(gate).await;
        socket // dropped after the loop ends: removes the socket file
    });

    service_manager::ready(&format!("{} containers adopted; serving", adopted.len()));
    if let Some(period) = service_manager::watchdog_period() {
        let watched = sampler_queue.clone();
        tokio::spawn(service_manager::feed_watchdog(period, shutdown.clone(), move || {
            let sampler = watched.clone();
            async move { sampler.answers().await }
        }));
    }

    wait_for_signal().await?;
    service_manager::stopping();
    tracing::info!("shutting down: no new launchers; running containers keep running");
    shutdown.cancel();
    sampler_queue.stop();
    if let Ok(socket) = accept.await {
        drop(socket);
    }
    let _ = http.await;
    // The store's last samples are final once the sampling thread is out.
    let _ = tokio::task::spawn_blocking(move || sampler.join()).await;
    if let Some(writer) = writer {
        let _ = writer.await;
    }
    if let Some(file) = &persistence_file {
        write_store(&store, &telemetry.persistence_errors, file).await;
    }
    remove_parents(&layout);
    Ok(())
}

/// The web flags as the HTTP module takes them.
fn web_options(args: &AgentArgs) -> WebOptions {
    WebOptions {
        listen_address: args.web_listen_address.clone(),
        config_file: args.web_config_file.clone(),
        external_url: args.web_external_url.clone(),
        route_prefix: args.web_route_prefix.clone(),
        telemetry_path: args.web_telemetry_path.clone(),
        max_requests: args.web_max_requests,
        max_connections: args.web_max_connections,
        request_timeout: args.web_request_timeout,
    }
}

/// The cgroup files worth reading given the exported groups (legacy `blkio_*` needs I/O too).
fn sources_needed(disabled: &Disabled, legacy: bool) -> cgroup::Sources {
    let legacy = legacy && !disabled.has(Group::Legacy);
    cgroup::Sources {
        pressure: !disabled.has(Group::Pressure),
        io: !disabled.has(Group::Io) || legacy,
        cpuset: !disabled.has(Group::Cpu),
    }
}

/// Remove `--cgroup.parent` in every hierarchy if no container is left in it (a live one keeps
/// it: EBUSY).
fn remove_parents(layout: &Layout) {
    for h in &layout.hierarchies {
        let _ = std::fs::remove_dir(&h.parent_dir);
    }
}

/// Write the persistence file every `interval` until shutdown.
async fn write_periodically(store: Arc<Store>, errors: IntCounter, file: Arc<StoreFile>, interval: Duration, shutdown: CancellationToken) {
    let mut ticker = tokio::time::interval(interval);
    ticker.tick().await; // the first tick is immediate; the store was just loaded
    loop {
        tokio::select! {
            _ = ticker.tick() => write_store(&store, &errors, &file).await,
            _ = shutdown.cancelled() => return,
        }
    }
}

async fn write_store(store: &Store, errors: &IntCounter, file: &Arc<StoreFile>) {
    let records = store.records();
    let path = file.path();
    let target = file.clone();
    let result = tokio::task::spawn_blocking(move || target.save(records)).await;
    match result {
        Ok(Ok(())) => tracing::debug!(path = %path.display(), "persistence file written"),
        Ok(Err(err)) => {
            errors.inc();
            tracing::error!(path = %path.display(), %err, "cannot write the persistence file; serving continues");
        }
        Err(err) => {
            errors.inc();
            tracing::error!(%err, "persistence task failed");
        }
    }
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}

/// Containers hold `per_container` descriptors each for their life (the launcher's connection,
/// eBPF links) out of what the open-file limit `fds` leaves after the reserve: warn at start when
/// `--limits.containers` of them would not fit (README, "Limits").
fn warn_if_caps_exceed_descriptors(total: usize, per_container: usize, fds: usize) {
    let budget = fds.saturating_sub(FD_RESERVE);
    if total == 0 || total.saturating_mul(per_container) > budget {
        let cap = if total == 0 { "no limit".to_string() } else { total.to_string() };
        tracing::warn!(
            limits_containers = %cap,
            descriptors_per_container = per_container,
            open_file_limit = fds,
            fit = budget / per_container.max(1),
            "--limits.containers allows more containers than the open-file limit holds: raise LimitNOFILE or lower the cap"
        );
    }
}

/// Descriptors kept for HTTP, eBPF and the rest; containers and their kept cgroup files share
/// what the open-file limit leaves.
const FD_RESERVE: usize = 4096;

/// Each container holds its launcher's connection open, so allow as many descriptors as the
/// hard limit permits (systemd's default soft limit of 1024 would cap containers near that).
/// Returns the soft limit in force.
fn raise_fd_limit() -> usize {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut limit = getrlimit(Resource::Nofile);
    let before = limit;
    // As root the hard limit may be raised too (to systemd's usual 524288, within fs.nr_open),
    // so that the sampled cgroup files of a thousand containers can stay open.
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|t| t.trim().parse::<u64>().ok());
    let wanted = nr_open.unwrap_or(1 << 20).min(1 << 19);
    if limit.maximum.is_some_and(|m| m < wanted) {
        limit.maximum = Some(wanted);
    }
    if limit.current < limit.maximum {
        limit.current = limit.maximum;
        if setrlimit(Resource::Nofile, limit).is_err() {
            // Without CAP_SYS_RESOURCE only the soft limit can go up, to the hard one.
            limit = before;
            limit.current = limit.maximum;
            if let Err(err) = setrlimit(Resource::Nofile, limit) {
                tracing::warn!(%err, "cannot raise the open-file limit");
                limit = before;
            }
        }
    }
    limit.current.map(|n| n as usize).unwrap_or(1 << 20)
}

/// Root with the capabilities that moving other users' processes between cgroups and reading
/// their /proc entries needs.
fn check_privileges() -> Result<()> {
    let euid = rustix::process::geteuid().as_raw();
    if euid != 0 {
        bail!("apptheus must run as root (effective uid is {euid})");
    }
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .context("no CapEff in /proc/self/status")?;
    const NEEDED: &[(u32, &str)] = &[(1, "CAP_DAC_OVERRIDE"), (19, "CAP_SYS_PTRACE"), (21, "CAP_SYS_ADMIN")];
    let missing: Vec<&str> = NEEDED.iter().filter(|(bit, _)| cap_eff & (1 << bit) == 0).map(|(_, n)| *n).collect();
    if !missing.is_empty() {
        bail!("apptheus is missing capabilities: {}", missing.join(", "));
    }
    Ok(())
}
