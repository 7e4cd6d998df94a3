//! # safebox-aws-proxy
//!
//! The acceptance tests' recording, fault-injecting AWS proxy
//! ([`safebox_acceptance_tests::aws::Proxy`]) as a standalone process, for benchmark scripts
//! and tests that need the proxy in another process.
//!
//! ```text
//! safebox-aws-proxy --upstream http://127.0.0.1:PORT [--listen 127.0.0.1:PORT] [--record FILE]
//!                   [--inject OPERATION:TIMES:FAULT]... [--delay OPERATION:MILLIS]...
//! ```
//!
//! Prints `LISTENING http://127.0.0.1:PORT` as its first line of stdout, then serves until
//! killed. `--record` appends one JSON object per answered request (see
//! [`safebox_acceptance_tests::aws::Recorded::to_json`]), written before the client gets its
//! response. FAULT is `throttle`, `server-error`, `disconnect` or `STATUS/CODE`; OPERATION may
//! be `*` for any.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use safebox_acceptance_tests::aws::{Fault, Proxy};

fn main() {
    if let Err(e) = run() {
        eprintln!("safebox-aws-proxy: {e}");
        std::process::exit(2);
    }
}

fn run() -> Result<(), String> {
    let mut listen = "127.0.0.1:0".to_owned();
    let mut upstream = None;
    let mut record = None;
    let mut injections = Vec::new();
    let mut delays = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = value()?,
            "--upstream" => upstream = Some(value()?),
            "--record" => record = Some(PathBuf::from(value()?)),
            "--inject" => {
                let spec = value()?;
                let mut parts = spec.splitn(3, ':');
                let (Some(operation), Some(times), Some(fault)) = (parts.next(), parts.next(), parts.next()) else {
                    return Err(format!("--inject {spec}: expected OPERATION:TIMES:FAULT"));
                };
                let times = times.parse().map_err(|_| format!("--inject {spec}: bad count"))?;
                injections.push((operation.to_owned(), times, Fault::parse(fault)?));
            }
            "--delay" => {
                let spec = value()?;
                let (operation, millis) = spec
                    .rsplit_once(':')
                    .ok_or_else(|| format!("--delay {spec}: expected OPERATION:MILLIS"))?;
                let millis = millis
                    .parse()
                    .map_err(|_| format!("--delay {spec}: bad milliseconds"))?;
                delays.push((operation.to_owned(), Duration::from_millis(millis)));
            }
            "-h" | "--help" => {
                println!(
                    "usage: safebox-aws-proxy --upstream http://127.0.0.1:PORT [--listen 127.0.0.1:PORT] [--record FILE] [--inject OPERATION:TIMES:FAULT]... [--delay OPERATION:MILLIS]..."
                );
                return Ok(());
            }
            _ => return Err(format!("unknown argument {flag:?} (try --help)")),
        }
    }
    let upstream = upstream.ok_or("--upstream is required")?;
    let listen = listen.parse().map_err(|e| format!("--listen {listen}: {e}"))?;
    let proxy = Proxy::start_on(listen, &upstream, record.as_deref()).map_err(|e| e.to_string())?;
    for (operation, times, fault) in injections {
        proxy.inject(&operation, times, fault);
    }
    for (operation, delay) in delays {
        proxy.delay(&operation, delay);
    }
    let mut stdout = std::io::stdout();
    writeln!(stdout, "LISTENING {}", proxy.endpoint)
        .and_then(|()| stdout.flush())
        .map_err(|e| e.to_string())?;
    loop {
        std::thread::park();
    }
}
