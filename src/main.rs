//! The `handover` binary: parse the command line, set up logging, run, and turn errors
//! into one line on stderr and a non-zero exit code. Nothing else lives here.

use std::io::Write;

use clap::Parser;
use handover::interface::client;
use handover::run;
use handover::settings::cli::{Cli, Command};

fn main() {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::DemoWorker(args) => handover::demo_worker::run(args).map(|()| 0),
        Command::Check(args) => run::check(args),
        Command::Init(args) => handover::interface::init::run(args),
        Command::GenerateDocs { dir } => handover::interface::generate::docs(dir).map(|()| 0),
        Command::Reload(args) => client::reload(args),
        Command::Status(args) => client::status(args),
        Command::Scale(args) => client::scale(args),
        Command::Stop(args) => client::stop(args),
        Command::Metrics(args) => client::metrics(args),
        Command::Pause(args) => client::pause(args),
        Command::Resume(args) => client::resume(args),
        Command::Upgrade(args) => client::upgrade(args),
        Command::UpgradeProbe { speaks } => {
            println!("{}", handover::os::upgrade::probe_answer(*speaks));
            Ok(0)
        }
        Command::UpgradeCheck(args) => run::upgrade_check(args),
        Command::Guard => Ok(handover::os::guard::run()),
        Command::Run(args) => {
            handover::interface::logging::init();
            run::run(args)
        }
        Command::Demo(args) => {
            handover::interface::logging::init();
            run::demo(args)
        }
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            // Not eprintln!: it panics when stderr cannot be written.
            let _ = writeln!(std::io::stderr(), "handover: error: {e:#}");
            std::process::exit(1);
        }
    }
}
