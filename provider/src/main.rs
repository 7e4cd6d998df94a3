//! The provider binary: checks that Terraform launched it, then serves until told to stop.

use std::process::ExitCode;

use safebox_provider::plugin::{self, handshake};
use safebox_provider::provider::SafeboxProvider;

fn main() -> ExitCode {
    // The local backend runs each box's agent as this binary in agent mode.
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("agent") {
        return safebox_agent::main_with_args(&args[2..]);
    }
    let env = match handshake::read_env(|name| std::env::var(name).ok()) {
        Ok(env) => env,
        Err(e) => {
            eprintln!("terraform-provider-safebox: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("terraform-provider-safebox: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let provider = SafeboxProvider::default();
    let closer = provider.closer();
    let served = runtime.block_on(plugin::serve(env, provider));
    runtime.block_on(closer.close());
    match served {
        Ok(()) => {
            // Leave background work (the accept loop, idle streams) behind at once.
            runtime.shutdown_background();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("terraform-provider-safebox: {e}");
            ExitCode::FAILURE
        }
    }
}
