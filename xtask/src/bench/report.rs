//! bench/RESULTS.md: the report of a run, one function per section, and the hand-written
//! parts of the previous file (interpretation, soak) carried over.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use super::http::Format;
use super::stats::{bytes, max, median, num, pct, ratio, Table};
use super::{cardinality, ebpf, placement, sys, BenchArgs, Config, Results, SamplingRow, Scenario, FLOOR_OPEN};

const INTERPRETATION_BEGIN: &str = "<!-- interpretation: kept across runs; edit by hand -->";
const INTERPRETATION_END: &str = "<!-- end of interpretation -->";
const INTERPRETATION_PLACEHOLDER: &str = "@@INTERPRETATION@@";

/// The hand-written interpretation of an earlier results file, markers included.
fn interpretation(old: &str) -> Option<String> {
    let a = old.find(INTERPRETATION_BEGIN)?;
    let b = old[a..].find(INTERPRETATION_END)? + a + INTERPRETATION_END.len();
    Some(old[a..b].to_string())
}

/// The "## Soak" section of an earlier results file (written by `cargo xtask soak`), to its end.
fn soak_section(old: &str) -> Option<&str> {
    let at = old.find("\n## Soak")? + 1;
    Some(&old[at..])
}

/// The rendered `report` with the hand-written parts of the earlier results file `old` put in:
/// its interpretation (or an empty frame for one) and its "## Soak" section.
pub(super) fn carry_over(report: &str, old: &str) -> String {
    let frame = format!("{INTERPRETATION_BEGIN}\n(not written yet)\n{INTERPRETATION_END}");
    let mut text = report.replace(INTERPRETATION_PLACEHOLDER, interpretation(old).as_deref().unwrap_or(&frame));
    // `cargo xtask soak` owns the "## Soak" section: carry it over.
    if let Some(soak) = soak_section(old) {
        text = format!("{}\n\n{soak}", text.trim_end());
    }
    text
}

/// Median over rounds of attached/detached − 1 (perf's wall time): each round's two runs are
/// back to back, so the machine's load drifts less within a pair than across the run.
fn paired_slowdown(e: &ebpf::EbpfResult) -> f64 {
    paired(e, |r| r.wall_us)
}

fn paired(e: &ebpf::EbpfResult, f: impl Fn(&ebpf::PipeRun) -> f64) -> f64 {
    paired_runs(&e.attached, &e.detached, f)
}

fn paired_runs(attached: &[ebpf::PipeRun], detached: &[ebpf::PipeRun], f: impl Fn(&ebpf::PipeRun) -> f64) -> f64 {
    median(&attached.iter().zip(detached).map(|(a, d)| f(a) / f(d) - 1.0).collect::<Vec<_>>())
}

fn goal(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "**missed**",
        None => "not measured",
    }
}

impl SamplingRow {
    fn us_per_sample(&self) -> f64 {
        median(&self.cpu_windows) / self.samples_per_s * 1e6
    }
}

/// The sampling row of process `who` at N=`n`.
fn sampling_row<'a>(res: &'a Results, n: usize, who: &str) -> Option<&'a SamplingRow> {
    res.sampling.iter().find(|r| r.n == n && r.who == who)
}

/// The agent's median CPU at N=`n` over that of the floor `floor`.
fn cpu_vs_floor(res: &Results, n: usize, floor: &str) -> Option<f64> {
    match (sampling_row(res, n, "apptheus"), sampling_row(res, n, floor)) {
        (Some(a), Some(f)) => Some(median(&a.cpu_windows) / median(&f.cpu_windows)),
        _ => None,
    }
}

/// The largest N of the sampling scenario.
fn largest_n(cfg: &Config) -> usize {
    cfg.sampling_ns.iter().copied().max().unwrap_or(0)
}

/// Placement connect → ack p99 over the unpolled bursts, in ms.
fn unpolled_ack_p99(res: &Results) -> Option<f64> {
    res.placement.as_ref().map(|p| pct(&p.placed.iter().filter(|x| !x.polled).map(|x| x.connect_to_ack_ns as f64 / 1e6).collect::<Vec<_>>(), 99.0))
}

/// The whole report, section by section, with a placeholder where [`carry_over`] puts the interpretation.
#[allow(clippy::too_many_arguments)]
pub(super) fn render(
    cfg: &Config,
    args: &BenchArgs,
    scen: &BTreeSet<Scenario>,
    res: &Results,
    m: &sys::Machine,
    command: &str,
    load_before: &str,
    load_after: &str,
    took: Duration,
) -> String {
    let mut o = String::new();
    write_header(&mut o, args, m, command, load_before, load_after, took);
    write_goals_issue6(&mut o, cfg, res);
    write_goals_issue14(&mut o, cfg, res);
    write_goals_issue20(&mut o, res);
    write_sampling(&mut o, cfg, scen, res);
    write_scrape(&mut o, cfg, scen, res);
    write_placement(&mut o, res);
    write_ebpf(&mut o, cfg, res);
    write_cardinality(&mut o, res);
    write_closing(&mut o, res);
    o
}

/// Title and the table of the run: date, commit, machine, load, command, duration, agent.
fn write_header(o: &mut String, args: &BenchArgs, m: &sys::Machine, command: &str, load_before: &str, load_after: &str, took: Duration) {
    let _ = writeln!(o, "# Benchmarks{}\n", if args.quick { " (--quick: harness check, not results)" } else { "" });
    let _ = writeln!(o, "Written by `cargo xtask bench` (xtask/src/bench/); rerun it after any change to a hot path.\n");
    let _ = writeln!(o, "| | |\n|---|---|");
    let _ = writeln!(o, "| date | {} |", m.date);
    let _ = writeln!(o, "| commit | {} |", m.commit);
    let _ = writeln!(o, "| machine | {} cores ({}), {:.0} GiB, kernel {}, hybrid cgroups (v1 controllers + unified) |", m.cores, m.cpu_model, m.mem_gib, m.kernel);
    let _ = writeln!(o, "| load average (1/5/15 min) | {load_before} before, {load_after} after |");
    let _ = writeln!(o, "| command | `{command}` |");
    let _ = writeln!(o, "| duration | {:.0} s |", took.as_secs_f64());
    let _ = writeln!(o, "| agent | release build, `--monitor.interval=0.5s --log.level=warn`, relative `--cgroup.parent` |\n");
}

/// "## Goals (issue 6)": each goal's target, the figure measured and whether it is met.
fn write_goals_issue6(o: &mut String, cfg: &Config, res: &Results) {
    let largest = largest_n(cfg);
    let scrape_largest = cfg.scrape_ns.iter().copied().max().unwrap_or(0);
    let us_large = sampling_row(res, largest, "apptheus").map(|r| r.us_per_sample());
    let floor_ratio = cpu_vs_floor(res, largest, "floor");
    let rss = res.rss.iter().filter(|(w, _)| w.starts_with("N=")).map(|(_, s)| s.rss_kib).max();
    let p50 = |target: &str, n: usize| res.scrape.iter().find(|r| r.target == target && r.n == n && r.format == Format::Text).map(|r| pct(&r.ms, 50.0));
    let scrape_ratio = match (p50("apptheus", scrape_largest), p50("pushgateway", scrape_largest)) {
        (Some(a), Some(p)) => Some(a / p),
        _ => None,
    };
    let place = res.placement.as_ref();
    let ack_p99 = unpolled_ack_p99(res);
    let vis_p99 = place.map(|p| pct(&p.placed.iter().filter_map(|x| x.ack_to_visible_ns).map(|v| v as f64 / 1e6).collect::<Vec<_>>(), 99.0));
    let eb = res.ebpf.as_ref().filter(|e| e.unavailable.is_none());
    let switch_ns = eb.and_then(|e| e.programs.iter().find(|(k, _)| k.contains("switch")).map(|(_, v)| median(&v.1)));
    let slowdown = eb.map(paired_slowdown);

    let _ = writeln!(o, "## Goals (issue 6)\n");
    let mut g = Table::new(&["goal", "target", "measured", "status"]);
    let lg = format!("N={largest}");
    g.row(vec![format!("sampling CPU per container-sample, {lg}"), "≤ 50 µs".into(), us_large.map(|v| format!("{} µs", num(v))).unwrap_or("–".into()), goal(us_large.map(|v| v <= 50.0)).into()]);
    g.row(vec![format!("sampling CPU vs the floor, {lg}"), "≤ 2×".into(), floor_ratio.map(|v| format!("{v:.2}×")).unwrap_or("–".into()), goal(floor_ratio.map(|v| v <= 2.0)).into()]);
    g.row(vec![format!("agent RSS, N={}", cfg.rss_n), "≤ 15 MiB".into(), rss.map(|k| bytes(k as f64 * 1024.0)).unwrap_or("–".into()), goal(rss.map(|k| k as f64 <= 15.0 * 1024.0)).into()]);
    g.row(vec![format!("scrape p50 (text) vs Pushgateway, N={scrape_largest}"), "≤ 1/3 (0.33×)".into(), scrape_ratio.map(|v| format!("{v:.2}×")).unwrap_or("–".into()), goal(scrape_ratio.map(|v| v <= 1.0 / 3.0)).into()]);
    let floors = place.filter(|p| !p.floor_ms.is_empty()).map(|p| format!(" (kernel floor of a burst: {} ms; {} ms in cgroup2 alone)", num(median(&p.floor_ms)), num(median(&p.floor_unified_ms))));
    g.row(vec![
        format!("placement connect → ack p99, bursts of {}", cfg.burst),
        "≤ 10 ms".into(),
        ack_p99.map(|v| format!("{} ms{}", num(v), floors.unwrap_or_default())).unwrap_or("–".into()),
        goal(ack_p99.map(|v| v <= 10.0)).into(),
    ]);
    g.row(vec!["first series after the ack, p99".into(), "≤ 500 ms (one interval)".into(), vis_p99.map(|v| format!("{} ms", num(v))).unwrap_or("–".into()), goal(vis_p99.filter(|v| v.is_finite()).map(|v| v <= 500.0)).into()]);
    g.row(vec!["eBPF sched_switch cost".into(), "≤ 150 ns/event".into(), switch_ns.map(|v| format!("{} ns", num(v))).unwrap_or("–".into()), goal(switch_ns.map(|v| v <= 150.0)).into()]);
    g.row(vec!["`perf bench sched pipe` slowdown, attached vs detached".into(), "≤ 5 %".into(), slowdown.map(|v| format!("{:+.1} %", v * 100.0)).unwrap_or("–".into()), goal(slowdown.map(|v| v <= 0.05)).into()]);
    o.push_str(&g.markdown());
    o.push('\n');
}

/// A program's median ns/event, the empty program's (the statistics' own cost) subtracted.
fn program_ns(programs: &ebpf::ProgramRuns, e: &ebpf::EbpfResult, part: &str) -> Option<f64> {
    let (_, (_, ns, _)) = programs.iter().find(|(k, _)| k.contains(part))?;
    (!ns.is_empty()).then(|| median(ns) - median(&e.empty_ns))
}

fn paired_monitored(e: &ebpf::EbpfResult) -> f64 {
    paired_runs(&e.attached_monitored, &e.detached_monitored, |r| r.wall_us)
}

/// "## Goals (issue 20 ...)": what the monitored jobs pay, beside what host tasks pay, in one run.
fn write_goals_issue20(o: &mut String, res: &Results) {
    let _ = writeln!(o, "## Goals (issue 20: eBPF cost of the monitored tasks)\n");
    let eb = res.ebpf.as_ref().filter(|e| e.unavailable.is_none() && !e.empty_ns.is_empty());
    let mut g = Table::new(&["goal", "target", "host tasks", "monitored tasks", "status (monitored)"]);
    let ns = |v: Option<f64>| v.map(|v| format!("{} ns", num(v))).unwrap_or("–".into());
    let empty = eb.map(|e| format!(" (statistics' own cost, an empty program: {} ns, subtracted)", num(median(&e.empty_ns)))).unwrap_or_default();
    let host_switch = eb.and_then(|e| program_ns(&e.programs, e, "switch"));
    let mon_switch = eb.and_then(|e| program_ns(&e.programs_monitored, e, "switch"));
    g.row(vec![format!("sched_switch ns/event{empty}"), "≤ 150 ns".into(), ns(host_switch), ns(mon_switch), goal(mon_switch.map(|v| v <= 150.0)).into()]);
    for part in ["fork", "exec", "exit"] {
        let host = eb.and_then(|e| program_ns(&e.spawn_programs, e, part));
        let mon = eb.and_then(|e| program_ns(&e.spawn_programs_monitored, e, part));
        g.row(vec![format!("sched_process_{part} ns/event (statistics' cost subtracted)"), "≤ 300 ns".into(), ns(host), ns(mon), goal(mon.map(|v| v <= 300.0)).into()]);
    }
    let host_slow = eb.map(paired_slowdown);
    let mon_slow = eb.map(paired_monitored);
    let pct = |v: Option<f64>| v.map(|v| format!("{:+.1} %", v * 100.0)).unwrap_or("–".into());
    g.row(vec!["`perf bench sched pipe` slowdown, attached vs detached (median of the per-round ratios)".into(), "≤ 5 %".into(), pct(host_slow), pct(mon_slow), goal(mon_slow.map(|v| v <= 0.05)).into()]);
    let floor = |a: &[ebpf::PipeRun], d: &[ebpf::PipeRun]| (!a.is_empty()).then(|| paired_runs(a, d, |r| r.wall_us));
    let host_floor = eb.and_then(|e| floor(&e.empty_attached, &e.detached));
    let mon_floor = eb.and_then(|e| floor(&e.empty_attached_monitored, &e.detached_monitored));
    g.row(vec!["the same slowdown with only an empty program on `sched_switch` (the hook's own cost, no agent program)".into(), "–".into(), pct(host_floor), pct(mon_floor), "–".into()]);
    o.push_str(&g.markdown());
    let _ = writeln!(o, "\nsched_switch from the pipe benchmark; fork, exec and exit from a spawn storm (a shell starting `/bin/true` {} times, on the host or through `apptheus exec`), once per attached round. Section 4 has every program's figures.\n", ebpf::SPAWNS);
}

/// "## Goals (issue 14 ...)": the default placement nests launchers that run in a job, and costs
/// no more than twice the kernel's own work for it; keeping files open keeps sampling at the
/// pread floor.
fn write_goals_issue14(o: &mut String, cfg: &Config, res: &Results) {
    let largest = largest_n(cfg);
    let lg = format!("N={largest}");
    let place = res.placement.as_ref();
    let ack_p99 = unpolled_ack_p99(res);
    let pread_ratio = cpu_vs_floor(res, largest, FLOOR_OPEN);
    let place_ratio = place.filter(|p| !p.floor_ms.is_empty()).and_then(|p| ack_p99.map(|a| a / median(&p.floor_ms)));
    let _ = writeln!(o, "## Goals (issue 14: default placement, launchers in a job cgroup)\n");
    let mut g = Table::new(&["goal", "target", "measured", "status"]);
    g.row(vec![
        format!("placement connect → ack p99 vs the kernel floor of a burst (nested mkdirs and moves), bursts of {}", cfg.burst),
        "≤ 2×".into(),
        match (ack_p99, place.filter(|p| !p.floor_ms.is_empty())) {
            (Some(a), Some(p)) => format!("{:.2}× ({} ms against {} ms)", a / median(&p.floor_ms), num(a), num(median(&p.floor_ms))),
            _ => "–".into(),
        },
        goal(place_ratio.map(|v| v <= 2.0)).into(),
    ]);
    g.row(vec![
        format!("sampling CPU vs the pread floor, {lg}"),
        "≤ 1.2×".into(),
        pread_ratio.map(|v| format!("{v:.2}×")).unwrap_or("–".into()),
        goal(pread_ratio.map(|v| v <= 1.2)).into(),
    ]);
    o.push_str(&g.markdown());
    o.push('\n');
}

/// "## 1. Sampling cost": method, the agent/floor table, then the details below it.
fn write_sampling(o: &mut String, cfg: &Config, scen: &BTreeSet<Scenario>, res: &Results) {
    let _ = writeln!(o, "## 1. Sampling cost\n");
    if scen.contains(&Scenario::Sampling) {
        let _ = writeln!(
            o,
            "N containers = `apptheus exec -- sleep 3600`, interval 0.5 s. CPU = utime+stime from /proc/<pid>/stat over {} s of steady state, in {} s windows; the figure is the median window (in brackets: the mean over the whole time). µs/sample = CPU ÷ samples actually taken (the agent's `apptheus_sample_duration_seconds_count`; the floor's own count). The floor reads the same {} files of the same N cgroups with open/read/close once per interval, while the agent is paused (SIGSTOP), so the two never compete for the cores; the ratio is against it. The second floor keeps every descriptor open and re-reads with one pread per file: it shows what the kernel's path lookup and open/close cost. RSS, threads and fds at the end of the window.\n",
            cfg.steady.as_secs(),
            cfg.window.as_secs(),
            sys::SAMPLED_FILES.len()
        );
        write_sampling_table(o, res);
        write_floor_per_file(o, res);
        write_agent_memory(o, cfg, res);
        if let Some((n, p)) = &res.profile {
            let _ = writeln!(o, "\nWhere the agent's CPU goes at N={n} (`perf record -F 999 -p <agent>` for {} s after the measurement; self time):\n\n```\n{p}\n```", cfg.profile.map(|d| d.as_secs()).unwrap_or(0));
        }
        if let Some(e) = &res.sampling_error {
            let _ = writeln!(o, "\n**Not completed:** {e}");
        }
    } else {
        let _ = writeln!(o, "Not run (`--scenarios`).");
    }
    o.push('\n');
}

/// Sampling: CPU, µs per container-sample, RSS, threads, fds per N and process, agent vs floor.
fn write_sampling_table(o: &mut String, res: &Results) {
    let mut t = Table::new(&["N", "process", "CPU s/s: median window (whole-run mean)", "% of a core", "µs CPU / container-sample", "RSS", "threads", "fds", "agent / floor CPU", "notes"]);
    for r in &res.sampling {
        let med = median(&r.cpu_windows);
        let vs = if r.who == "apptheus" { sampling_row(res, r.n, "floor").map(|f| ratio(med, median(&f.cpu_windows))).unwrap_or("–".into()) } else { String::new() };
        t.row(vec![
            r.n.to_string(),
            r.who.to_string(),
            format!("{} ({})", num(med), num(r.cpu_mean)),
            format!("{:.1} %", med * 100.0),
            num(r.us_per_sample()),
            bytes(r.snap.rss_kib as f64 * 1024.0),
            r.snap.threads.to_string(),
            r.snap.fds.to_string(),
            vs,
            r.note.clone(),
        ]);
    }
    o.push_str(&t.markdown());
}

/// Sampling: the floors' wall µs per file read, per sampled file.
fn write_floor_per_file(o: &mut String, res: &Results) {
    let floors: Vec<&SamplingRow> = res.sampling.iter().filter(|r| r.who != "apptheus" && !r.per_file_us.is_empty()).collect();
    if !floors.is_empty() {
        let _ = writeln!(o, "\nWhere the floor's time goes: wall µs per file read (open+read+close, or one pread with the descriptor kept open); this is the kernel's cost of producing the file, nearly all system time:\n");
        let mut head = vec!["file".to_string()];
        head.extend(floors.iter().map(|f| format!("µs at N={}{}", f.n, if f.who == FLOOR_OPEN { ", pread" } else { ", open/read/close" })));
        let mut t = Table { head, rows: Vec::new() };
        for (i, (h, f)) in sys::SAMPLED_FILES.iter().enumerate() {
            let mut row = vec![format!("{h}/{f}")];
            row.extend(floors.iter().map(|r| num(r.per_file_us[i])));
            t.row(row);
        }
        let mut total = vec![format!("all {} (one container-sample)", sys::SAMPLED_FILES.len())];
        total.extend(floors.iter().map(|r| num(r.per_file_us.iter().sum())));
        t.row(total);
        o.push_str(&t.markdown());
    }
}

/// Sampling: the agent's memory, threads and fds at each moment measured.
fn write_agent_memory(o: &mut String, cfg: &Config, res: &Results) {
    if !res.rss.is_empty() {
        let _ = writeln!(o, "\nAgent memory (the goal is judged on the larger of the two N={} rows):\n", cfg.rss_n);
        let mut t = Table::new(&["when", "RSS", "peak RSS (VmHWM)", "threads", "fds"]);
        for (when, s) in &res.rss {
            t.row(vec![when.clone(), bytes(s.rss_kib as f64 * 1024.0), bytes(s.hwm_kib as f64 * 1024.0), s.threads.to_string(), s.fds.to_string()]);
        }
        o.push_str(&t.markdown());
    }
}

/// "## 2. Scrape cost": method and the agent/Pushgateway table per N and format.
fn write_scrape(o: &mut String, cfg: &Config, scen: &BTreeSet<Scenario>, res: &Results) {
    let _ = writeln!(o, "## 2. Scrape cost\n");
    if scen.contains(&Scenario::Scrape) {
        let _ = writeln!(
            o,
            "{} sequential scrapes of `/metrics` per format on one keep-alive connection per target, the agent's and the Pushgateway's interleaved (alternating which goes first); latency = request written → last body byte read. The Pushgateway ({}) runs on loopback and holds the agent's own exposition pushed as one group per container (`PUT /metrics/job/<container>`{}), plus one group for the agent's `apptheus_*` series; it adds `push_time_seconds`/`push_failure_time_seconds` per group and its own `go_*`/`process_*`, the agent's `push_time_seconds` and `process_*` are not pushed (the Pushgateway reserves or describes them itself). Bytes = body on the wire (compressed for gzip; decompressed size in brackets).\n",
            cfg.scrapes,
            if res.pushgateway_version.is_empty() { "not available".to_string() } else { res.pushgateway_version.clone() },
            res.groups.iter().map(|(n, g)| format!("; {g} groups at N={n}")).collect::<String>()
        );
        write_scrape_table(o, res);
        if let Some(e) = &res.scrape_error {
            let _ = writeln!(o, "\n**Not completed:** {e}");
        }
    } else {
        let _ = writeln!(o, "Not run (`--scenarios`).");
    }
    o.push('\n');
}

/// Scrape: latency and size per N, target and format, the agent against the Pushgateway.
fn write_scrape_table(o: &mut String, res: &Results) {
    let mut t = Table::new(&["N", "target", "format", "answered with", "series", "p50 ms", "p99 ms", "bytes", "p50 apptheus / pushgateway"]);
    for r in &res.scrape {
        let vs = if r.target == "apptheus" {
            res.scrape
                .iter()
                .find(|p| p.target == "pushgateway" && p.n == r.n && p.format == r.format)
                .map(|p| ratio(pct(&r.ms, 50.0), pct(&p.ms, 50.0)))
                .unwrap_or("–".into())
        } else {
            String::new()
        };
        let b = median(&r.body);
        t.row(vec![
            r.n.to_string(),
            r.target.to_string(),
            r.format.name().to_string(),
            format!("{}{}", r.answered, if r.honoured { "" } else { " (**not what was asked**)" }),
            r.series.to_string(),
            num(pct(&r.ms, 50.0)),
            num(pct(&r.ms, 99.0)),
            if r.format == Format::Gzip { format!("{} ({})", bytes(b), bytes(r.decoded)) } else { bytes(b) },
            vs,
        ]);
    }
    o.push_str(&t.markdown());
}

/// "## 3. Placement latency": method and latencies, the kernel floor, the agent's CPU.
fn write_placement(o: &mut String, res: &Results) {
    let _ = writeln!(o, "## 3. Placement latency\n");
    if let Some(p) = &res.placement {
        write_placement_latency(o, p);
        if !p.floor_ms.is_empty() {
            write_placement_floor(o, p);
        }
        write_placement_cpu(o, p);
    } else if let Some(e) = &res.placement_error {
        let _ = writeln!(o, "**Not completed:** {e}");
    } else {
        let _ = writeln!(o, "Not run (`--scenarios`).");
    }
    o.push('\n');
}

/// Placement: method, then connect → ack and ack → first series percentiles.
fn write_placement_latency(o: &mut String, p: &placement::PlacementRun) {
    let ack_of = |f: &dyn Fn(&placement::Placed) -> bool| -> Vec<f64> { p.placed.iter().filter(|x| f(x)).map(|x| x.connect_to_ack_ns as f64 / 1e6).collect() };
    let ack_quiet = ack_of(&|x| !x.polled);
    let ack_polled = ack_of(&|x| x.polled);
    let vis: Vec<f64> = p.placed.iter().filter_map(|x| x.ack_to_visible_ns).map(|v| v as f64 / 1e6).collect();
    let vis_lo: Vec<f64> = p.placed.iter().filter_map(|x| x.ack_to_visible_lower_ns).map(|v| v as f64 / 1e6).collect();
    let unseen = p.placed.iter().filter(|x| x.polled && x.ack_to_visible_ns.is_none()).count();
    let _ = writeln!(
        o,
        "{} bursts of {} launchers released together (each is started first, then all are told to connect at once), each started in a Slurm-like job cgroup (`job_<pid>` below the harness's cgroup in every hierarchy), so that the default placement (`auto`) nests its container there; containers are kept, so the agent holds up to {} by the end. A launcher is a copy of the harness binary listed in `--trust.path`: it does what `apptheus exec` does before running its command (connect, read the ack line, hold the connection) and times connect() → ack with CLOCK_MONOTONIC, so no process start-up is in the figure. Odd bursts run alone; during even bursts /metrics is polled back to back to see when each container's first series (`container_cpu_usage_seconds_total`) appears: the end of the first scrape that has it, and its start as a lower bound (negative when the first sample was stored before the launcher read its ack); {} ms median per scrape. The goal is judged on the unpolled bursts. {} of {} launchers refused; {} never visible within 10 s.\n",
        p.bursts,
        p.burst,
        (p.bursts + p.extra_bursts) * p.burst,
        num(median(&p.scrape_ms)),
        p.refused.len(),
        p.bursts * p.burst,
        unseen
    );
    let mut t = Table::new(&["measure", "p50 ms", "p99 ms", "max ms", "count"]);
    let mut row = |name: &str, v: &[f64]| t.row(vec![name.into(), num(pct(v, 50.0)), num(pct(v, 99.0)), num(max(v)), v.len().to_string()]);
    row("connect → ack, unpolled bursts", &ack_quiet);
    row("connect → ack, bursts with /metrics polled", &ack_polled);
    row("ack → first series in /metrics (end of scrape)", &vis);
    row("ack → first series (start of scrape, lower bound)", &vis_lo);
    o.push_str(&t.markdown());
}

/// Placement: the kernel's own cgroup work for a burst, against the agent's slowest ack.
fn write_placement_floor(o: &mut String, p: &placement::PlacementRun) {
    let ack_max_per_burst = p.bursts.div_ceil(2).max(1);
    let _ = writeln!(
        o,
        "\nKernel floor, same run, agent stopped: for {} sleeping processes, `mkdir` of each one's cgroup in the job's cgroup (where the agent nests) and the write of its pid to `cgroup.procs`, back to back in one thread, and nothing else (`placement::kernel_floor`). The kernel serialises these (`cgroup_mutex`, the thread-group rwsem), so no placer acks the last launcher of a burst sooner. Median of {} bursts: **{} ms** in the {} hierarchies the agent uses on this host ({} ms per placement), **{} ms** in the unified hierarchy alone (the work of a pure cgroup v2 host). The agent's slowest ack per unpolled burst is {} ms (median of {ack_max_per_burst}), {} the six-hierarchy floor.\n",
        p.burst,
        p.floor_ms.len(),
        num(median(&p.floor_ms)),
        sys::Hierarchies::detect().map(|h| {
            let mut m: Vec<_> = h.mounts.values().map(|v| v.0.clone()).collect();
            m.sort();
            m.dedup();
            m.len()
        }).unwrap_or(0),
        num(median(&p.floor_ms) / p.burst as f64),
        num(median(&p.floor_unified_ms)),
        num(median(&p.burst_cpu_wall.iter().map(|x| x.1 * 1e3).collect::<Vec<_>>())),
        ratio(median(&p.burst_cpu_wall.iter().map(|x| x.1 * 1e3).collect::<Vec<_>>()), median(&p.floor_ms)),
    );
}

/// Placement: the agent's CPU per placement, its profile, and the first refusals.
fn write_placement_cpu(o: &mut String, p: &placement::PlacementRun) {
    if !p.burst_cpu_wall.is_empty() {
        let cpu: f64 = p.burst_cpu_wall.iter().map(|x| x.0).sum();
        let wall: Vec<f64> = p.burst_cpu_wall.iter().map(|x| x.1 * 1e3).collect();
        let _ = writeln!(
            o,
            "\nUnpolled bursts: agent CPU {} ms per placement (utime+stime from release to the last ack ÷ launchers), release → last ack {} ms median per burst ({} of a core busy on average).",
            num(cpu * 1e3 / (p.burst_cpu_wall.len() * p.burst) as f64),
            num(median(&wall)),
            format!("{:.0} %", cpu / (wall.iter().sum::<f64>() / 1e3) * 100.0)
        );
    }
    if let Some(prof) = &p.profile {
        let _ = writeln!(o, "\nWhere the agent's CPU goes placing an extra first burst, not counted above (`perf record -g -F 999 -p <agent>` from release to the last ack):\n\n```\n{prof}\n```");
    }
    for r in p.refused.iter().take(5) {
        let _ = writeln!(o, "- refused: {r}");
    }
}

/// "## 4. eBPF overhead": per-program cost and the `perf bench sched pipe` slowdown, or why not.
fn write_ebpf(o: &mut String, cfg: &Config, res: &Results) {
    let _ = writeln!(o, "## 4. eBPF overhead\n");
    match (&res.ebpf, &res.ebpf_error) {
        (Some(e), _) if e.unavailable.is_some() => {
            let _ = writeln!(
                o,
                "**Not measurable yet:** {}. The harness has the measurement ready: with the programs up it enables `kernel.bpf_stats_enabled` (restored afterwards), reads run_time_ns/run_cnt of the agent's programs from `bpftool -j prog show` around each attached run, and times `taskset -c 0 perf bench sched pipe -l {}` with the agent running (1 container) with programs attached vs. with `--ebpf.disable`, {} alternating rounds, medians.",
                e.unavailable.as_deref().unwrap_or(""),
                e.loops,
                cfg.ebpf_rounds
            );
        }
        (Some(e), _) => {
            write_ebpf_programs(o, e);
            write_ebpf_pipe(o, "Host tasks (perf bench's tasks in no container):", &e.attached, &e.detached);
            write_ebpf_monitored(o, e);
            write_ebpf_pipe(o, "Monitored tasks (perf bench run by `apptheus exec`, in the agent's container):", &e.attached_monitored, &e.detached_monitored);
        }
        (None, Some(err)) => {
            let _ = writeln!(o, "**Not completed:** {err}");
        }
        (None, None) => {
            let _ = writeln!(o, "Not run (`--scenarios`).");
        }
    }
    o.push('\n');
}

/// eBPF: method, and ns/event and events per run of each of the agent's programs.
fn write_ebpf_programs(o: &mut String, e: &ebpf::EbpfResult) {
    let _ = writeln!(o, "`taskset -c 0 perf bench sched pipe -l {}` (both tasks on one CPU: two context switches per round trip, no cross-CPU wake-up, whose cost in this VM swings with the host's load), {} rounds of one attached (agent with 1 container) and one detached (`--ebpf.disable`) run, in alternating order. Timed runs have `kernel.bpf_stats_enabled=0` (forced, restored afterwards) and start once no other tracing BPF program is loaded on the machine (another agent's programs would slow both sides); a run during which other processes took CPU 0 (perf's wall time > 1.02 × the CPU time of its two tasks) is repeated, up to 5 times. Per-program cost from a second run in each attached round with `kernel.bpf_stats_enabled=1`; those figures include the statistics' own two clock reads per run (an empty program's cost, measured below). In this table perf bench's tasks are in no container: the cost every task on the node pays; the monitored tasks' table follows.\n", e.loops, e.attached.len());
    let mut t = Table::new(&["program", "type", "ns/event (median of runs)", "events per run (median)"]);
    for (name, (kind, ns, cnt)) in &e.programs {
        t.row(vec![name.clone(), kind.clone(), num(median(ns)), format!("{:.0}", median(&cnt.iter().map(|c| *c as f64).collect::<Vec<_>>()))]);
    }
    o.push_str(&t.markdown());
    o.push('\n');
}

/// eBPF: per program, ns/event for host tasks and for monitored tasks, each also less the
/// statistics' own cost (an empty program's ns/event in the same rounds).
fn write_ebpf_monitored(o: &mut String, e: &ebpf::EbpfResult) {
    let empty = median(&e.empty_ns);
    let all = e.empty_ns.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>().join(", ");
    let _ = writeln!(o, "The statistics' own cost: an empty raw tracepoint program (`r0 = 0; exit`) on `sched_switch`, loaded by the harness with the statistics on during a host pipe run, once per round: {} ns/event median ({all}). Each program, for host tasks and for monitored tasks (perf bench run by `apptheus exec`, so both tasks are in the agent's container and take every program's full path), from the statistics runs:\n", num(empty));
    program_table(o, &e.programs, &e.programs_monitored, empty);
    let _ = writeln!(o, "\nA spawn storm (a shell starting `/bin/true` {} times: one fork, exec and exit each), with the statistics on, once per attached round:\n", ebpf::SPAWNS);
    program_table(o, &e.spawn_programs, &e.spawn_programs_monitored, empty);
    o.push('\n');
}

/// Per program: host and monitored ns/event, each also less the empty program's.
fn program_table(o: &mut String, host: &ebpf::ProgramRuns, monitored: &ebpf::ProgramRuns, empty: f64) {
    let mut t = Table::new(&["program", "host ns/event", "host, less the empty program", "monitored ns/event", "monitored, less the empty program", "monitored events per run"]);
    let f = |v: Option<f64>| v.map(num).unwrap_or("–".into());
    for (name, (_, ns, _)) in host {
        let mon = monitored.get(name);
        let mon_ns = mon.filter(|m| !m.1.is_empty()).map(|m| median(&m.1));
        let mon_cnt = mon.map(|m| format!("{:.0}", median(&m.2.iter().map(|c| *c as f64).collect::<Vec<_>>()))).unwrap_or("–".into());
        let host = (!ns.is_empty()).then(|| median(ns));
        t.row(vec![name.clone(), f(host), f(host.map(|h| h - empty)), f(mon_ns), f(mon_ns.map(|m| m - empty)), mon_cnt]);
    }
    o.push_str(&t.markdown());
}

/// eBPF: `perf bench sched pipe` attached vs detached, the slowdowns, and how the runs went.
fn write_ebpf_pipe(o: &mut String, title: &str, attached: &[ebpf::PipeRun], detached: &[ebpf::PipeRun]) {
    let _ = writeln!(o, "{title}\n");
    let wall = |v: &[ebpf::PipeRun]| v.iter().map(|r| r.wall_us).collect::<Vec<_>>();
    let cpu = |v: &[ebpf::PipeRun]| v.iter().map(|r| r.cpu_us).collect::<Vec<_>>();
    let all = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(", ");
    let mut t = Table::new(&["sched pipe", "µs/op median (perf, wall)", "CPU µs/op median", "runs", "all runs (wall)"]);
    for (label, runs) in [("attached", attached), ("detached", detached)] {
        t.row(vec![label.into(), num(median(&wall(runs))), num(median(&cpu(runs))), runs.len().to_string(), all(&wall(runs))]);
    }
    let per_round: Vec<String> = attached.iter().zip(detached).map(|(a, d)| format!("{:+.1} %", (a.wall_us / d.wall_us - 1.0) * 100.0)).collect();
    let per_round_cpu: Vec<String> = attached.iter().zip(detached).map(|(a, d)| format!("{:+.1} %", (a.cpu_us / d.cpu_us - 1.0) * 100.0)).collect();
    t.row(vec!["slowdown, ratio of the medians".into(), format!("{:+.1} %", (median(&wall(attached)) / median(&wall(detached)) - 1.0) * 100.0), format!("{:+.1} %", (median(&cpu(attached)) / median(&cpu(detached)) - 1.0) * 100.0), String::new(), String::new()]);
    t.row(vec!["slowdown, median of the per-round ratios (the goal's figure: wall)".into(), format!("{:+.1} %", paired_runs(attached, detached, |r| r.wall_us) * 100.0), format!("{:+.1} %", paired_runs(attached, detached, |r| r.cpu_us) * 100.0), per_round.len().to_string(), per_round.join(", ")]);
    t.row(vec!["per-round ratios of CPU time".into(), String::new(), String::new(), per_round_cpu.len().to_string(), per_round_cpu.join(", ")]);
    o.push_str(&t.markdown());
    let runs: Vec<&ebpf::PipeRun> = attached.iter().chain(detached).collect();
    let repeated = runs.iter().filter(|r| r.tries > 1).count();
    let shared = runs.iter().filter(|r| r.shared).count();
    let waited: f64 = runs.iter().map(|r| r.waited_s).sum();
    let foreign = runs.iter().filter(|r| r.foreign > 0).count();
    let _ = writeln!(o, "\nOf {} timed runs, {repeated} were repeated because other processes shared CPU 0 ({shared} still shared after 5 tries); {waited:.0} s were spent waiting for other tracing BPF programs to be unloaded, and {foreign} ran with such programs loaded.", runs.len());
}

/// "## 5. Series per container and a cluster's cardinality" (tables by `cardinality::render`).
fn write_cardinality(o: &mut String, res: &Results) {
    let _ = writeln!(o, "## 5. Series per container and a cluster's cardinality\n");
    match &res.cardinality {
        Some(Ok(variants)) => cardinality::render(o, variants),
        Some(Err(err)) => {
            let _ = writeln!(o, "**Not completed:** {err}");
        }
        None => {
            let _ = writeln!(o, "Not run (`--scenarios`).");
        }
    }
    o.push('\n');
}

/// Clean-up problems, if any, and "## Interpretation" with the placeholder for the kept text.
fn write_closing(o: &mut String, res: &Results) {
    if !res.cleanup.is_empty() {
        let _ = writeln!(o, "Clean-up problems: {}\n", res.cleanup.join("; "));
    }
    let _ = writeln!(o, "## Interpretation\n\n{INTERPRETATION_PLACEHOLDER}");
}
