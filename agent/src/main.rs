//! `safebox-agent`: see the library documentation.

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    safebox_agent::main_with_args(&args)
}
