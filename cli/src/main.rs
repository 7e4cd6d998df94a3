//! `safebox`: the auditor's command line. Each subcommand lives in its own module.

mod approve;
mod attestation;
mod image;
mod plan_report;
mod policy;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Safebox: check what a Safebox deployment runs, offline.
#[derive(Debug, Parser)]
#[command(name = "safebox", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sign an approval of a governed change (its change_digest from the plan).
    Approve(approve::ApproveCommand),
    /// Approvals collected for a change: what is present and what is missing.
    #[command(subcommand)]
    Approvals(approve::ApprovalsCommand),
    /// The audit log of enforced changes.
    #[command(subcommand)]
    Audit(approve::AuditCommand),
    /// Attestation documents: verify offline.
    #[command(subcommand)]
    Attestation(attestation::AttestationCommand),
    /// Images: rebuild from a manifest; inspect EIFs, UKIs and their disks, and check a seal proof.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Summarise a plan (`terraform show -json plan.out`) for auditors: the saved plan's SHA-256,
    /// images and their inputs, PCRs, boxes, links, policies and their updates, governed changes
    /// with their approvals, the audit log head, and warnings.
    PlanReport(plan_report::PlanReportCommand),
    /// Governance policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

fn main() -> ExitCode {
    // Like any Unix filter: output piped into `head` that stops reading ends the process
    // quietly instead of making println! panic on a broken pipe.
    // SAFETY: resetting a signal's disposition to the default before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Approve(command) => command.run(),
        Command::Approvals(command) => command.run(),
        Command::Audit(command) => command.run(),
        Command::Attestation(command) => command.run(),
        Command::Image(command) => command.run(),
        Command::PlanReport(command) => command.run(),
        Command::Policy(command) => command.run(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("safebox: {message}");
            ExitCode::FAILURE
        }
    }
}
