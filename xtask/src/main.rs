//! Developer tasks: `cargo xtask <task>`. Each task lives in its own module.
use anyhow::Result;
use clap::{Parser, Subcommand};

mod bench;
mod dist;
mod ebpf;
mod fuzz;
mod soak;
mod test;
mod vm;

#[derive(Parser)]
#[command(about = "apptheus developer tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Benchmarks side by side (issue 6): sampling vs a raw floor, scrape vs Pushgateway, placement, eBPF; writes bench/RESULTS.md.
    Bench(bench::BenchArgs),
    /// The .deb, .rpm and tar.gz admins install (target/dist/); `--lint` checks them with lintian and rpmlint.
    Dist(dist::DistArgs),
    /// Install the eBPF toolchain if missing and build the eBPF object.
    BuildEbpf(ebpf::BuildArgs),
    /// Boot a stock Debian kernel with pure cgroup v2 in qemu and run the agent's end-to-end test there.
    VmTest(vm::VmArgs),
    /// Run every test: the README's test command, as CI runs it (as root).
    Test(test::TestArgs),
    /// Run every cargo-fuzz target (fuzz/) for a while each: 60 s, `--seconds N`, `--ci` 10 s.
    Fuzz(fuzz::FuzzArgs),
    /// Many short container lifecycles, then proof that nothing leaked (figures in bench/RESULTS.md).
    Soak(soak::SoakArgs),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Bench(args) => bench::run(args),
        Task::BuildEbpf(args) => ebpf::build(args),
        Task::Dist(args) => dist::run(args),
        Task::VmTest(args) => vm::run(args),
        Task::Test(args) => test::run(args),
        Task::Soak(args) => soak::run(args),
        Task::Fuzz(args) => fuzz::run(args),
    }
}
