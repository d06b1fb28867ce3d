//! Command line, flag-compatible with the Go Apptheus (`--socket.path`, `--trust.path`,
//! `--monitor.interval`, `--web.*`), plus this agent's own flags.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};

use crate::placement::Placement;
use crate::scrape::exposition::Group;
use crate::sampler::MIN_INTERVAL;
use crate::support::duration::{format_duration, parse_duration};
pub use crate::support::logging::{LogFormat, LogLevel};

pub const DEFAULT_SOCKET: &str = "/run/apptheus/gateway.sock";

#[derive(Debug, Parser)]
#[command(
    name = "apptheus",
    version,
    about = "Per-container Prometheus metrics for Apptainer and any program a trusted launcher starts",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub agent: AgentArgs,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run CMD as a monitored container: connect to the agent, wait for its ack, run CMD, exit with its status.
    Exec(ExecArgs),
}

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Unix socket trusted launchers connect to (created with mode 0777; trust comes from --trust.path).
    #[arg(long = "socket.path", value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket_path: PathBuf,

    /// Trusted launcher executables, absolute paths separated by ';'. Empty: trust nobody.
    #[arg(long = "trust.path", value_name = "PATHS", default_value = "")]
    pub trust_path: String,

    /// Interval at which each container's cgroup is sampled (at least 100ms).
    #[arg(long = "monitor.interval", alias = "monitor.inverval", value_name = "DURATION",
          default_value = "0.5s", value_parser = parse_interval)]
    pub monitor_interval: Duration,

    /// Address to serve metrics on (`:9091` = every interface).
    #[arg(long = "web.listen-address", value_name = "ADDRESS", default_value = ":9091")]
    pub web_listen_address: String,

    /// Path under which metrics are served.
    #[arg(long = "web.telemetry-path", value_name = "PATH", default_value = "/metrics",
          value_parser = parse_url_path)]
    pub web_telemetry_path: String,

    /// Parent of the container cgroups: absolute = from each hierarchy's root (Apptheus layout),
    /// relative = below the agent's own cgroup (systemd Delegate=yes layout).
    #[arg(long = "cgroup.parent", value_name = "PATH", default_value = "/metric_gateway",
          value_parser = parse_cgroup_parent)]
    pub cgroup_parent: String,

    /// Where a container's cgroup goes: `auto` moves it to --cgroup.parent only when that drops
    /// nothing the caller is under (limits, device and socket rules, a scheduler's or systemd's
    /// tracking) and nests it in the caller's own cgroup otherwise; `nest` always nests; `move`
    /// always moves (the Go Apptheus layout) and logs what each move drops.
    #[arg(long = "placement", value_enum, value_name = "MODE", default_value_t = Placement::Auto)]
    pub placement: Placement,

    /// Web configuration (TLS, basic auth, headers) in the Prometheus exporter-toolkit format.
    #[arg(long = "web.config.file", value_name = "FILE", default_value = "")]
    pub web_config_file: String,

    /// URL under which the agent is reached from outside (for links; its path is the default route prefix).
    #[arg(long = "web.external-url", value_name = "URL", default_value = "")]
    pub web_external_url: String,

    /// Prefix for the internal routes of web endpoints. Defaults to the path of --web.external-url.
    #[arg(long = "web.route-prefix", value_name = "PATH", default_value = "")]
    pub web_route_prefix: String,

    // (web.* flags for request limits go here)
    /// Most scrapes of the metrics path served at once; more get 503 at once. 0 = no limit.
    #[arg(long = "web.max-requests", value_name = "N", default_value_t = 40)]
    pub web_max_requests: usize,

    /// Time allowed to receive a request's headers (and TLS handshake) and to answer it (503
    /// after it); idle keep-alive connections are closed after it too.
    #[arg(long = "web.request-timeout", value_name = "DURATION", default_value = "30s",
          value_parser = parse_positive_duration)]
    pub web_request_timeout: Duration,

    /// Most HTTP connections open at once; further ones wait in the listen backlog.
    #[arg(long = "web.max-connections", value_name = "N", default_value_t = 512,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub web_max_connections: u32,

    /// How long a finished container's final sample stays exported. 0s: drop it at once (Go Apptheus behaviour).
    #[arg(long = "metrics.retention", value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub metrics_retention: Duration,

    /// Containers one user may run at once; a launch beyond it is refused. 0 = no limit. Root's
    /// launches (uid 0) obey it only with --limits.root-per-user.
    #[arg(long = "limits.containers-per-user", value_name = "N", default_value_t = 512)]
    pub limits_containers_per_user: usize,

    /// Containers all users together may run at once; a launch beyond it is refused. 0 = no limit.
    #[arg(long = "limits.containers", value_name = "N", default_value_t = 4096)]
    pub limits_containers: usize,

    /// Hold root's launches (uid 0) to --limits.containers-per-user too.
    #[arg(long = "limits.root-per-user")]
    pub limits_root_per_user: bool,

    /// Ended containers kept for --metrics.retention at most; beyond it the oldest are dropped
    /// first (counted in apptheus_retained_containers_dropped_total). 0 = no limit.
    #[arg(long = "limits.retained-containers", value_name = "N", default_value_t = 1024)]
    pub limits_retained_containers: usize,

    /// Launcher environment variables to add as labels (comma-separated, e.g. SLURM_JOB_ID,SLURM_JOB_USER).
    #[arg(long = "metrics.env-labels", value_name = "VARS", default_value = "", value_delimiter = ',')]
    pub metrics_env_labels: Vec<String>,

    /// Labels from the launcher's cgroup path, taken before placement: a regex with one named
    /// group per label, e.g. `/pbs\.slice/(?P<pbs_job_id>[0-9]+)\.scope`. Repeatable. Slurm's
    /// job and step (slurm_job_id, slurm_step_id) are built in. Unlike --metrics.env-labels a
    /// user cannot forge them, so on the same label name the cgroup wins.
    #[arg(long = "metrics.cgroup-labels", value_name = "REGEX")]
    pub metrics_cgroup_labels: Vec<String>,

    /// File to persist the metric store to. Empty: memory only.
    #[arg(long = "persistence.file", value_name = "FILE", default_value = "")]
    pub persistence_file: String,

    /// Interval at which the persistence file is written.
    #[arg(long = "persistence.interval", value_name = "DURATION", default_value = "5m", value_parser = parse_positive_duration)]
    pub persistence_interval: Duration,

    /// Also export the Go Apptheus series (cpu_usage_per, memory_usage, ...) for old dashboards.
    #[arg(long = "metrics.legacy", value_name = "BOOL", default_value_t = true, action = ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true")]
    pub metrics_legacy: bool,

    /// Metric groups not to export, comma-separated: cpu, memory, io, pressure, processes,
    /// network, sched, legacy (README, "Choosing what to export"). The cgroup files only a
    /// disabled group needs are not read.
    #[arg(long = "metrics.disable", value_name = "GROUPS", value_delimiter = ',', value_parser = Group::parse)]
    pub metrics_disable: Vec<Group>,

    /// Do not load the eBPF programs (cgroup metrics only).
    #[arg(long = "ebpf.disable")]
    pub ebpf_disable: bool,

    /// Containers the eBPF maps hold at most; containers beyond it get cgroup metrics only
    /// (counted in apptheus_ebpf_watch_errors_total). Kernel memory: ~0.3 KiB per CPU each.
    #[arg(long = "ebpf.max-containers", value_name = "N", default_value_t = apptheus_common::MAX_CGROUPS,
          value_parser = clap::value_parser!(u32).range(1..=1_048_576))]
    pub ebpf_max_containers: u32,

    /// Only log messages with the given severity or above.
    #[arg(long = "log.level", value_enum, default_value_t = LogLevel::Info)]
    pub log_level: LogLevel,

    /// Output format of log messages.
    #[arg(long = "log.format", value_enum, default_value_t = LogFormat::Logfmt)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Args)]
pub struct ExecArgs {
    /// Socket of the agent.
    #[arg(long = "socket.path", value_name = "PATH", default_value = DEFAULT_SOCKET)]
    pub socket_path: PathBuf,

    /// How long to wait for the agent's answer.
    #[arg(long = "timeout", value_name = "DURATION", default_value = "10s", value_parser = parse_positive_duration)]
    pub timeout: Duration,

    /// The command to run and its arguments (after `--`).
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "CMD")]
    pub command: Vec<OsString>,
}

/// `--monitor.interval`: no shorter than [`MIN_INTERVAL`].
fn parse_interval(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d < MIN_INTERVAL {
        return Err(format!("{text:?} is below the floor of {}", format_duration(MIN_INTERVAL)));
    }
    Ok(d)
}

fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d.is_zero() {
        return Err(format!("duration {text:?} must be greater than zero"));
    }
    Ok(d)
}

fn parse_url_path(text: &str) -> Result<String, String> {
    if !text.starts_with('/') {
        return Err(format!("{text:?} must start with '/'"));
    }
    Ok(text.to_string())
}

/// Reject parents that would escape the hierarchy or name nothing.
fn parse_cgroup_parent(text: &str) -> Result<String, String> {
    let trimmed = text.trim_end_matches('/');
    if trimmed.is_empty() || trimmed == "." {
        return Err("cgroup parent must name a directory below the root".into());
    }
    if trimmed.split('/').any(|part| part == ".." || part == ".") {
        return Err(format!("cgroup parent {text:?} must not contain '.' or '..'"));
    }
    Ok(trimmed.to_string())
}

/// The `--trust.path` list: `;`-separated, blanks ignored.
pub fn split_trust_paths(flag: &str) -> Vec<PathBuf> {
    flag.split(';').map(str::trim).filter(|p| !p.is_empty()).map(PathBuf::from).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("apptheus").chain(args.iter().copied()))
    }

    /// The agent finds the command of an `apptheus exec` on its command line (the `image`
    /// label) knowing which flags take a value: the list there must be this parser's.
    #[test]
    fn the_image_label_knows_every_exec_flag_that_takes_a_value() {
        use clap::CommandFactory;
        let cli = Cli::command();
        let exec = cli.find_subcommand("exec").expect("exec subcommand");
        let mut taking: Vec<String> = exec
            .get_arguments()
            .filter(|a| a.get_long().is_some() && a.get_action().takes_values())
            .map(|a| format!("--{}", a.get_long().unwrap_or_default()))
            .collect();
        taking.sort();
        let mut known: Vec<String> = crate::placement::image::EXEC_VALUE_FLAGS.iter().map(|s| s.to_string()).collect();
        known.sort();
        assert_eq!(taking, known);
        // And the agent's reading of a command line agrees with clap's.
        for args in [&["exec", "--timeout", "3s", "--", "sleep", "1"][..], &["exec", "--socket.path=/s", "env", "-i"]] {
            let Some(Command::Exec(parsed)) = parse(args).unwrap().command else { panic!("{args:?}") };
            let bytes: Vec<&[u8]> = args[1..].iter().map(|a| a.as_bytes()).collect();
            let found = crate::placement::image::command_in_exec_args(&bytes).map(|c| c.to_vec());
            assert_eq!(found.as_deref(), parsed.command.first().map(|c| c.as_encoded_bytes()), "{args:?}");
        }
    }

    #[test]
    fn defaults_match_the_go_original() {
        let cli = parse(&[]).unwrap();
        let a = cli.agent;
        assert_eq!(a.socket_path, PathBuf::from("/run/apptheus/gateway.sock"));
        assert_eq!(a.trust_path, "");
        assert_eq!(a.monitor_interval, Duration::from_millis(500));
        assert_eq!(a.web_listen_address, ":9091");
        assert_eq!(a.web_telemetry_path, "/metrics");
        assert_eq!(a.cgroup_parent, "/metric_gateway");
        assert_eq!(a.placement, Placement::Auto);
        assert!(a.metrics_legacy);
        assert!(cli.command.is_none());
    }

    #[test]
    fn container_caps_have_defaults_and_zero_lifts_them() {
        // README, "Limits": why these values.
        let a = parse(&[]).unwrap().agent;
        assert_eq!((a.limits_containers_per_user, a.limits_containers, a.limits_retained_containers), (512, 4096, 1024));
        assert!(!a.limits_root_per_user);
        let a = parse(&["--limits.containers-per-user=0", "--limits.containers=0", "--limits.retained-containers=0", "--limits.root-per-user"])
            .unwrap()
            .agent;
        assert_eq!((a.limits_containers_per_user, a.limits_containers, a.limits_retained_containers), (0, 0, 0));
        assert!(a.limits_root_per_user);
        assert!(parse(&["--limits.containers=-1"]).is_err());
    }

    #[test]
    fn accepts_the_misspelt_interval_flag() {
        let cli = parse(&["--monitor.inverval=200ms"]).unwrap();
        assert_eq!(cli.agent.monitor_interval, Duration::from_millis(200));
    }

    #[test]
    fn the_interval_has_a_floor() {
        for short in ["1ns", "1ms", "99ms", "0.0999s"] {
            let err = parse(&[&format!("--monitor.interval={short}")]).unwrap_err().to_string();
            assert!(err.contains("below the floor of 100ms"), "{short}: {err}");
        }
        assert_eq!(parse(&["--monitor.interval=100ms"]).unwrap().agent.monitor_interval, MIN_INTERVAL);
    }

    #[test]
    fn legacy_can_be_turned_off() {
        assert!(!parse(&["--metrics.legacy=false"]).unwrap().agent.metrics_legacy);
        assert!(parse(&["--metrics.legacy"]).unwrap().agent.metrics_legacy);
    }

    #[test]
    fn bad_values_are_refused() {
        assert!(parse(&["--monitor.interval=5x"]).is_err());
        assert!(parse(&["--monitor.interval=0s"]).is_err());
        assert!(parse(&["--cgroup.parent=../x"]).is_err());
        assert!(parse(&["--cgroup.parent=/"]).is_err());
        assert!(parse(&["--web.telemetry-path=metrics"]).is_err());
        assert!(parse(&["--log.level=loud"]).is_err());
        assert!(parse(&["--placement=elsewhere"]).is_err());
        assert!(parse(&["--metrics.disable=cpu,cpus"]).is_err());
    }

    #[test]
    fn metric_groups_can_be_disabled() {
        assert!(parse(&[]).unwrap().agent.metrics_disable.is_empty());
        let a = parse(&["--metrics.disable=sched,legacy", "--metrics.disable", "pressure"]).unwrap().agent;
        assert_eq!(a.metrics_disable, vec![Group::Sched, Group::Legacy, Group::Pressure]);
    }

    #[test]
    fn exec_takes_the_command_after_dashes() {
        let cli = parse(&["exec", "--socket.path", "/tmp/s", "--", "sleep", "-x", "1"]).unwrap();
        let Some(Command::Exec(e)) = cli.command else { panic!("not exec") };
        assert_eq!(e.socket_path, PathBuf::from("/tmp/s"));
        assert_eq!(e.command, vec!["sleep", "-x", "1"]);
    }

    #[test]
    fn trust_paths_split_on_semicolons() {
        assert_eq!(split_trust_paths(" /a ;;/b/c; "), vec![PathBuf::from("/a"), PathBuf::from("/b/c")]);
        assert!(split_trust_paths("").is_empty());
    }
}
