//! Upload benchmark: a 1 GiB image on its payload disk, uploaded as an EBS snapshot to moto
//! through the recording proxy, against `openssl dgst -sha256` of the same disk in the same run.
//!
//! Prints MB/s for both, their ratio, and where the upload's time went: CPU of this process
//! (the provider's uploader: reading, hashing, signing, HTTP), of the proxy and of moto, as
//! shares of the upload's wall time. Run it with `scripts/bench-upload`.
//!
//! `safebox-upload-bench [SIZE_MIB]` (default 1024).

use std::fs::{self, File};
use std::io::{self, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use safebox::image::disk::{write_payload_disk, PayloadFile};
use safebox_acceptance_tests::aws::Moto;
use safebox_aws::upload::{upload_snapshot, SnapshotRequest};
use safebox_aws::{Clients, Endpoints};

/// Deterministic incompressible bytes (xorshift), `len` of them.
struct Noise {
    state: u64,
    left: u64,
}

impl Read for Noise {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = usize::try_from(self.left).unwrap_or(usize::MAX).min(buf.len());
        for chunk in buf[..n].chunks_mut(8) {
            self.state ^= self.state << 13;
            self.state ^= self.state >> 7;
            self.state ^= self.state << 17;
            chunk.copy_from_slice(&self.state.to_le_bytes()[..chunk.len()]);
        }
        self.left -= n as u64;
        Ok(n)
    }
}

/// User + system CPU seconds of process `pid` (and its reaped children) from /proc.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    // After the command: state is field 3, utime 14, stime 15 (1-based over the whole line).
    let ticks: f64 = [11, 12]
        .iter()
        .filter_map(|i| fields.get(*i)?.parse::<f64>().ok())
        .sum();
    ticks / 100.0
}

fn start_proxy(upstream: &str) -> (Child, String) {
    let exe = std::env::current_exe().expect("current exe");
    let proxy = exe.with_file_name("safebox-aws-proxy");
    let mut child = Command::new(&proxy)
        .args(["--listen", "127.0.0.1:0", "--upstream", upstream])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", proxy.display()));
    let mut line = Vec::new();
    let mut byte = [0u8; 1];
    let stdout = child.stdout.as_mut().expect("proxy stdout");
    while stdout.read(&mut byte).unwrap_or(0) == 1 && byte[0] != b'\n' {
        line.push(byte[0]);
    }
    let line = String::from_utf8_lossy(&line).into_owned();
    let endpoint = line
        .strip_prefix("LISTENING ")
        .unwrap_or_else(|| panic!("proxy said {line:?}"))
        .to_owned();
    (child, endpoint)
}

fn openssl_seconds(path: &Path) -> f64 {
    let started = Instant::now();
    let out = Command::new("openssl")
        .args(["dgst", "-sha256"])
        .arg(path)
        .output()
        .expect("openssl");
    assert!(out.status.success(), "openssl dgst failed");
    started.elapsed().as_secs_f64()
}

fn main() {
    let mib: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1024);
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    let dir = tempfile::tempdir().expect("scratch");
    let disk_path = dir.path().join("payload.img");
    let mut disk_file = File::create(&disk_path).expect("disk");
    let len = mib << 20;
    let mut noise = Noise {
        state: 0x9e37_79b9_7f4a_7c15,
        left: len,
    };
    let manifest = br#"{"name":"bench"}"#;
    let mut files = [
        PayloadFile {
            name: "prod.eif",
            len,
            reader: &mut noise,
        },
        PayloadFile {
            name: "manifest.json",
            len: manifest.len() as u64,
            reader: &mut &manifest[..],
        },
    ];
    let disk = write_payload_disk(&mut disk_file, &[7; 32], "SAFEBOX", &mut files).expect("payload disk");
    drop(disk_file);
    let data: u64 = disk.data_extents.iter().map(|r| r.end - r.start).sum();
    println!(
        "payload disk: {} MiB image on a {} GiB disk, {} MiB in data blocks",
        mib,
        disk.size >> 30,
        data >> 20
    );

    // The baseline: the bytes the upload sends (the disk's data blocks), through openssl, with
    // the page cache warm for both.
    let sent_path = dir.path().join("data-blocks.bin");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut source = File::open(&disk_path).expect("disk");
        let mut sent = io::BufWriter::new(File::create(&sent_path).expect("data blocks"));
        for extent in &disk.data_extents {
            source.seek(SeekFrom::Start(extent.start)).expect("seek");
            io::copy(&mut (&mut source).take(extent.end - extent.start), &mut sent).expect("copy");
        }
        sent.flush().expect("flush");
    }
    let _ = openssl_seconds(&sent_path);
    let openssl = openssl_seconds(&sent_path);

    let moto = Moto::start();
    let moto_pid = moto.pid();
    let (mut proxy, endpoint) = start_proxy(&moto.endpoint);
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let clients = runtime.block_on(Clients::new(
        "us-east-1",
        &Endpoints {
            ec2: Some(endpoint.clone()),
            ebs: Some(endpoint.clone()),
            kms: None,
        },
    ));
    let (moto_before, proxy_before, self_before) = (
        cpu_seconds(moto_pid),
        cpu_seconds(proxy.id()),
        cpu_seconds(std::process::id()),
    );
    let started = Instant::now();
    let uploaded = runtime
        .block_on(upload_snapshot(
            &clients.ebs,
            &clients.ec2,
            &disk_path,
            &disk,
            &SnapshotRequest {
                description: "safebox upload benchmark",
                tags: &[("safebox:kind".to_owned(), "bench".to_owned())],
                client_token: "safebox-upload-bench",
            },
        ))
        .expect("upload");
    let wall = started.elapsed().as_secs_f64();
    let moto_cpu = cpu_seconds(moto_pid) - moto_before;
    let proxy_cpu = cpu_seconds(proxy.id()) - proxy_before;
    let self_cpu = cpu_seconds(std::process::id()) - self_before;
    let _ = proxy.kill();
    let _ = proxy.wait();
    std::thread::sleep(Duration::from_millis(10));

    let mb = data as f64 / 1e6;
    println!(
        "upload:  {} blocks, {:.1} MB in {:.2} s = {:.1} MB/s (LINEAR {})",
        uploaded.blocks,
        mb,
        wall,
        mb / wall,
        uploaded.linear_sha256
    );
    println!(
        "openssl dgst -sha256 of the same {:.1} MB: {:.2} s = {:.1} MB/s",
        mb,
        openssl,
        mb / openssl
    );
    println!("ratio (upload time / openssl time): {:.2}", wall / openssl);
    println!(
        "CPU as a share of upload wall time: provider {:.0}% ({:.2} s), proxy {:.0}% ({:.2} s), moto {:.0}% ({:.2} s)",
        100.0 * self_cpu / wall,
        self_cpu,
        100.0 * proxy_cpu / wall,
        proxy_cpu,
        100.0 * moto_cpu / wall,
        moto_cpu
    );
}
