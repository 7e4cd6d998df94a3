//! The agent binary on the software NSM: its documents verify under the simulated root, carry
//! the PCRs of the EIF it was started with, the caller's nonce and its per-boot key.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use safebox::agent_api::AgentClient;
use safebox::attest::simulated::SimulatedNitro;
use safebox::attest::verify::{verify, Policy};
use safebox::image::build::{BuildOptions, ImageBuild};
use safebox::image::spec::{ImageFormat, ImageSpec, InputRef, LayerSpec};
use safebox::image::Variant;
use sha2::{Digest, Sha256};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn eif(dir: &Path) -> (std::path::PathBuf, ImageBuild) {
    std::fs::write(dir.join("kernel"), b"kernel bytes").unwrap();
    std::fs::write(dir.join("app"), b"app bytes").unwrap();
    let input = |name: &str| InputRef {
        source: name.into(),
        sha256: hex::encode(Sha256::digest(std::fs::read(dir.join(name)).unwrap())),
    };
    let spec = ImageSpec {
        name: "agent-test".into(),
        source_date_epoch: 0,
        kernel: input("kernel"),
        cmdline: String::new(),
        layers: vec![LayerSpec {
            name: "app".into(),
            input: input("app"),
            destination: Some("/app".into()),
        }],
        dev_access: None,
        format: ImageFormat::Eif,
        boot_stub: None,
    };
    let build = ImageBuild::load_or_build(
        &spec,
        &BuildOptions {
            base_dir: dir,
            cache_dir: &dir.join("cache"),
            progress: None,
        },
    )
    .unwrap();
    let path = dir.join("prod.eif");
    build
        .write_eif(Variant::Prod, &mut std::fs::File::create(&path).unwrap())
        .unwrap();
    (path, build)
}

#[test]
fn serves_verifiable_documents_for_the_eif_it_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (eif, build) = eif(dir.path());
    let endpoint_file = dir.path().join("endpoint");
    let nsm_dir = dir.path().join("nsm");
    let _agent = Running(
        Command::new(env!("CARGO_BIN_EXE_safebox-agent"))
            .args(["--listen", "127.0.0.1:0", "--endpoint-file"])
            .arg(&endpoint_file)
            .arg("--eif")
            .arg(&eif)
            .arg("--nsm-dir")
            .arg(&nsm_dir)
            .args(["--module-id", "i-test-enc01"])
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    let endpoint = loop {
        if let Ok(endpoint) = std::fs::read_to_string(&endpoint_file) {
            break endpoint;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the agent did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    let client = AgentClient::new(&endpoint, Duration::from_secs(5)).unwrap();
    client.health().unwrap();
    let nonce = [0x42u8; 32];
    let document = client.attestation(&nonce, None, Some(b"hello")).unwrap();

    let root = SimulatedNitro::open_or_create(&nsm_dir).unwrap().trust_root().unwrap();
    let m = build.measurements(Variant::Prod);
    let expected: BTreeMap<u32, Vec<u8>> = [(0, &m.pcr0), (1, &m.pcr1), (2, &m.pcr2)]
        .into_iter()
        .map(|(i, v)| (i, hex::decode(v.as_deref().unwrap()).unwrap()))
        .collect();
    let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap();
    let policy = Policy {
        root: &root,
        at_ms: now,
        expected_pcrs: expected,
        nonce: Some(nonce.to_vec()),
        max_age_ms: Some(60_000),
        allow_debug: false,
        kind: None,
    };
    let verified = verify(&document, &policy, None).unwrap();
    assert_eq!(verified.document.module_id, "i-test-enc01");
    assert_eq!(verified.document.user_data.as_deref(), Some(&b"hello"[..]));
    let key = verified.document.public_key.expect("the per-boot key is bound");
    assert_eq!((key.len(), key[0]), (97, 0x04), "an uncompressed P-384 point");
    // The same boot key in every document; a caller cannot have another key bound.
    let again = verify(&client.attestation(&nonce, None, None).unwrap(), &policy, None).unwrap();
    assert_eq!(again.document.public_key.as_deref(), Some(key.as_slice()));
    let refused = client.attestation(&nonce, Some(&[7; 10]), None).unwrap_err();
    assert!(
        refused.to_string().contains("400") && refused.to_string().contains("user_data"),
        "{refused}"
    );
    let same = verify(&client.attestation(&nonce, Some(&key), None).unwrap(), &policy, None).unwrap();
    assert_eq!(same.document.public_key.as_deref(), Some(key.as_slice()));

    let err = client.request("GET", "/attestation?nonce=zz", None).unwrap_err();
    assert!(
        err.to_string().contains("400") && err.to_string().contains("nonce is not hex"),
        "{err}"
    );
}

#[test]
fn serves_nitrotpm_documents_of_the_tpm_pcrs_with_the_leaf_from_fw_cfg() {
    use safebox::agent_api::{BootConfig, FW_CFG_ATTESTATION, FW_CFG_CONFIG};
    use safebox::attest::document::DocumentKind;

    let dir = tempfile::tempdir().unwrap();
    // What QEMU's firmware configuration and the kernel's TPM folder would show the guest.
    let nitro = SimulatedNitro::open_or_create(&dir.path().join("nsm")).unwrap();
    let issued = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap();
    let leaf = nitro.issue_box_leaf("local-t-tpm", issued).unwrap();
    let fw_cfg = dir.path().join("fw_cfg");
    let box_key = safebox::box_key::BoxKey::generate();
    for (name, body) in [
        (
            FW_CFG_CONFIG,
            BootConfig {
                box_key: box_key.public_hex(),
                listen: Some("127.0.0.1:0".into()),
                module_id: Some("local-t-tpm".into()),
            }
            .to_json(),
        ),
        (FW_CFG_ATTESTATION, leaf.to_pem()),
    ] {
        std::fs::create_dir_all(fw_cfg.join(name)).unwrap();
        std::fs::write(fw_cfg.join(name).join("raw"), body).unwrap();
    }
    let pcrs_dir = dir.path().join("pcr-sha384");
    std::fs::create_dir(&pcrs_dir).unwrap();
    for i in 0..24u8 {
        std::fs::write(
            pcrs_dir.join(i.to_string()),
            format!("{}\n", hex::encode_upper([i; 48])),
        )
        .unwrap();
    }
    let endpoint_file = dir.path().join("endpoint");
    let _agent = Running(
        Command::new(env!("CARGO_BIN_EXE_safebox-agent"))
            .args(["--nsm", "tpm", "--boot-config", "fw-cfg", "--fw-cfg-dir"])
            .arg(&fw_cfg)
            .arg("--tpm-pcrs")
            .arg(&pcrs_dir)
            .arg("--endpoint-file")
            .arg(&endpoint_file)
            .spawn()
            .unwrap(),
    );
    let started = Instant::now();
    let endpoint = loop {
        if let Ok(endpoint) = std::fs::read_to_string(&endpoint_file) {
            break endpoint;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "the agent did not start");
        std::thread::sleep(Duration::from_millis(20));
    };
    let client = AgentClient::new(&endpoint, Duration::from_secs(5)).unwrap();
    let nonce = [0x24u8; 32];
    let document = client.attestation(&nonce, None, None).unwrap();
    let now = u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap();
    let policy = Policy {
        root: &nitro.trust_root().unwrap(),
        at_ms: now,
        expected_pcrs: BTreeMap::from([(4, vec![4; 48]), (7, vec![7; 48]), (12, vec![12; 48])]),
        nonce: Some(nonce.to_vec()),
        max_age_ms: Some(60_000),
        allow_debug: false,
        kind: Some(DocumentKind::NitroTpm),
    };
    let verified = verify(&document, &policy, None).unwrap();
    assert_eq!(verified.document.module_id, "local-t-tpm");
    assert_eq!(verified.document.pcrs.len(), 24);
    // The PCRs are read at each request: an extended PCR shows in the next document.
    std::fs::write(pcrs_dir.join("12"), hex::encode([0xee; 48])).unwrap();
    let err = verify(&client.attestation(&nonce, None, None).unwrap(), &policy, None).unwrap_err();
    assert!(err.to_string().starts_with("PCR12 is eeee"), "{err}");
    // The box key came from the boot configuration.
    let agent_key = hex::encode(verified.document.public_key.unwrap());
    assert_eq!(
        client.clone().signed(box_key, &agent_key).link_status("x").unwrap(),
        None
    );
}

#[test]
fn a_booted_box_takes_its_settings_from_one_named_source() {
    let parse = |args: &[&str]| safebox_agent::parse_args(&args.iter().map(|a| (*a).to_owned()).collect::<Vec<_>>());
    assert!(parse(&["--nsm", "tpm", "--boot-config", "fw-cfg"]).is_ok());
    assert!(parse(&["--nsm", "tpm", "--boot-config", "ec2", "--imds", "127.0.0.1:9"]).is_ok());
    for (args, complaint) in [
        (&["--nsm", "tpm"][..], "needs --boot-config"),
        (&["--nsm", "tpm", "--boot-config", "dhcp"], "is not fw-cfg"),
        (
            &["--nsm", "tpm", "--boot-config", "ec2", "--box-key", "00"],
            "remove --box-key",
        ),
        (
            &["--nsm", "tpm", "--boot-config", "fw-cfg", "--imds", "1.2.3.4:80"],
            "does not read --imds",
        ),
        (&["--nsm", "nitro"], "the only mode is tpm"),
        (
            &["--nsm-device", "/dev/nsm", "--boot-config", "ec2"],
            "belong to --nsm tpm",
        ),
    ] {
        let err = parse(args).unwrap_err();
        assert!(err.contains(complaint), "{args:?}: {err}");
    }
}
