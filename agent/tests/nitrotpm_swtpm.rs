//! The NitroTPM client against a real TPM 2.0 (swtpm): every step but the AWS vendor command
//! itself, which only EC2's NitroTPM implements. The NV read in the middle is authorised by the
//! salted HMAC session the vendor command uses, so the TPM checks the salt's encryption, the
//! session key, the cpHash and the HMAC; the vendor command then meets TPM_RC_COMMAND_CODE.
//!
//! Needs `swtpm` (scripts/setup installs it). Under `CI=true` a missing swtpm fails the test;
//! elsewhere it is skipped with one line.

use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use safebox_agent::nitrotpm::{defined_nv_indices, exercise_without_nitro, Tpm, TpmError};

struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0.id() as i32) {
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
        }
        let _ = self.0.wait();
    }
}

/// A fresh swtpm serving TPM commands on a Unix socket.
fn swtpm(dir: &std::path::Path) -> Option<(Group, Tpm<UnixStream>)> {
    let server = dir.join("tpm.sock");
    let spawned = Command::new("swtpm")
        .args([
            "socket",
            "--tpm2",
            "--flags",
            "not-need-init,startup-clear",
            "--tpmstate",
        ])
        .arg(format!("dir={}", dir.display()))
        .arg("--server")
        .arg(format!("type=unixio,path={}", server.display()))
        .arg("--ctrl")
        .arg(format!("type=unixio,path={}", dir.join("ctrl.sock").display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn();
    let child = match spawned {
        Ok(child) => Group(child),
        Err(e) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "swtpm cannot run ({e}): run scripts/setup (apt-get install swtpm)"
            );
            println!("skipped: swtpm is not installed (scripts/setup installs it)");
            return None;
        }
    };
    let started = Instant::now();
    loop {
        if let Ok(stream) = UnixStream::connect(&server) {
            stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            return Some((child, Tpm::new(stream, "swtpm".into())));
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "swtpm did not open its socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn every_step_but_the_vendor_command_runs_on_a_real_tpm() {
    let dir = tempfile::tempdir().unwrap();
    let Some((_swtpm, mut tpm)) = swtpm(dir.path()) else {
        return;
    };
    // The NSM request as the agent writes it, with a nonce, a key and user data.
    let request: Vec<u8> = {
        let mut out = Vec::new();
        let value = ciborium::value::Value::Map(vec![(
            ciborium::value::Value::Text("Attestation".into()),
            ciborium::value::Value::Map(vec![
                (
                    ciborium::value::Value::Text("user_data".into()),
                    ciborium::value::Value::Bytes(vec![1; 700]),
                ),
                (
                    ciborium::value::Value::Text("nonce".into()),
                    ciborium::value::Value::Bytes(vec![2; 32]),
                ),
                (
                    ciborium::value::Value::Text("public_key".into()),
                    ciborium::value::Value::Bytes(vec![4; 97]),
                ),
            ]),
        )]);
        ciborium::ser::into_writer(&value, &mut out).unwrap();
        out
    };
    // swtpm's NV indices hold at most 2048 bytes; NitroTPM's take the 8192 the agent asks for.
    let (read, vendor) = exercise_without_nitro(&mut tpm, &request, 2048, false).unwrap();
    assert_eq!(read, request, "the request read back through the salted HMAC session");
    let err = vendor.unwrap_err();
    assert!(
        matches!(err, TpmError::Refused { code: 0x143, .. }),
        "swtpm has no AWS vendor command: {err}"
    );
    assert!(err.to_string().contains("not EC2's NitroTPM"), "{err}");
    assert_eq!(
        defined_nv_indices(&mut tpm).unwrap(),
        Vec::<u32>::new(),
        "the message buffer is gone"
    );

    // The same read with a wrong authValue in the HMAC is refused by the TPM: the check above
    // is the TPM's, not ours.
    let err = exercise_without_nitro(&mut tpm, &request, 2048, true).unwrap_err();
    assert!(
        matches!(
            err,
            TpmError::Refused {
                command: "TPM2_NV_Read",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        defined_nv_indices(&mut tpm).unwrap(),
        Vec::<u32>::new(),
        "cleaned up after a failure too"
    );
}
