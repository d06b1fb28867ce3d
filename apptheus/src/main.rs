use std::process::ExitCode;

use clap::Parser;

use apptheus::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) if !err.use_stderr() => {
            // --help and --version
            let _ = err.print();
            return ExitCode::SUCCESS;
        }
        Err(err) => {
            // One line naming the problem (clap's usage hint follows on further lines).
            let text = err.to_string();
            eprintln!("apptheus: {}", text.lines().next().unwrap_or("bad command line").trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::Exec(args)) => apptheus::exec::run(args),
        None => run_agent(cli.agent),
    }
}

fn run_agent(args: apptheus::cli::AgentArgs) -> ExitCode {
    apptheus::support::heap::limit_arenas();
    apptheus::support::logging::init(args.log_level, args.log_format);
    let _faults = apptheus::support::faults::setup();
    let workers = std::thread::available_parallelism().map(|n| n.get().min(4)).unwrap_or(2);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        // Placement and cgroup removal run on blocking threads; a burst of launchers must not
        // leave hundreds of idle threads (and their stacks) behind.
        .max_blocking_threads(8)
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .enable_all()
        .build() {
        Ok(rt) => rt,
        Err(err) => {
            eprintln!("apptheus: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(apptheus::daemon::run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("apptheus: {err:#}");
            ExitCode::FAILURE
        }
    }
}
