//! roboconf-agent: a Roboconf-style agent whose instance tree, lifecycle
//! states and instruction queue survive restarts, crashes and upgrades.
mod activation;
mod agent;
mod build_info;
mod cli;
mod config;
mod control;
mod daemon;
mod exit;
mod log;
mod migrate;
mod model;
mod recipe;
mod schema;
mod spawn;
mod state;

use clap::Parser;

fn main() {
    let code = match cli::Cli::parse().execute() {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("roboconf-agent: error: {e:#}");
            e.downcast_ref::<exit::Exit>().map_or(1, |x| x.code)
        }
    };
    std::process::exit(code);
}
