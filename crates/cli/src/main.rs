//! The `inferlb` binary: command-line parsing and wiring, nothing else.

#![forbid(unsafe_code)]

mod autoscale;
mod check;
mod demo;
mod fake_replica;
mod plot;
mod replicas;
mod serve;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// A load balancer for ML inference endpoints.
#[derive(Debug, Parser)]
#[command(name = "inferlb", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the proxy.
    Serve(serve::ServeArgs),
    /// Check a config file: every problem at once, each with its field;
    /// exits non-zero when there is one (nginx -t).
    Check(check::CheckArgs),
    /// Start two model pools of fake replicas and the proxy in front of
    /// them, for a first look with curl or the openai SDK.
    Demo(demo::DemoArgs),
    /// Run one simulated model server (OpenAI API, vLLM metrics).
    FakeReplica(fake_replica::FakeReplicaArgs),
    /// List, add, drain, remove and reweight replicas through the admin API.
    Replicas(replicas::ReplicasArgs),
    /// Make SageMaker autoscaling (Application Auto Scaling) match a file.
    Autoscale(autoscale::AutoscaleArgs),
}

fn main() -> std::process::ExitCode {
    quiet_on_closed_pipe();
    match run() {
        Ok(code) => code,
        Err(e) => {
            // `{:#}` prints the whole context chain on one line, without the
            // backtrace an operator has no use for.
            #[allow(clippy::print_stderr)]
            {
                eprintln!("error: {e:#}");
            }
            std::process::ExitCode::FAILURE
        }
    }
}

/// Output piped into a reader that stops early (`inferlb autoscale simulate
/// ... | head`) ends the command quietly, as `cat` does: Rust ignores
/// SIGPIPE, so `println!` panics on the closed pipe; that one panic is
/// turned into a silent exit, every other keeps its report.
fn quiet_on_closed_pipe() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        report(info);
    }));
}

fn run() -> Result<std::process::ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // The AWS SDK's credential chain warns per provider it tried
                // (with debug dumps); the call's own error says it in a line.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,aws_config=error")),
        )
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve::run(args).map(|()| std::process::ExitCode::SUCCESS),
        Command::Check(args) => check::run(args),
        Command::Demo(args) => demo::run(args).map(|()| std::process::ExitCode::SUCCESS),
        Command::FakeReplica(args) => {
            fake_replica::run(args).map(|()| std::process::ExitCode::SUCCESS)
        }
        Command::Replicas(args) => replicas::run(args).map(|()| std::process::ExitCode::SUCCESS),
        Command::Autoscale(args) => autoscale::run(args),
    }
}
