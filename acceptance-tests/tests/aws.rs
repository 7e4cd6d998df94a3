//! The aws backend against the real Terraform and the AWS SDK talking to moto, through a
//! recording and fault-injecting proxy (moto accepts and drops fields it does not model, so
//! the requests themselves are what these tests check).
//!
//! Each test starts its own moto and proxy on loopback ports. Credentials are fixed test
//! values and `AWS_EC2_METADATA_DISABLED=true`, so the SDK never looks beyond loopback.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::rc::Rc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use safebox::agent_api::{BootConfig, FW_CFG_ATTESTATION, FW_CFG_CONFIG};
use safebox::attest::simulated::SimulatedNitro;
use safebox::box_key::BoxKey;
use safebox::image::build::{BuildOptions, ImageBuild};
use safebox::image::spec::{DevAccessSpec, ImageFormat, ImageSpec, InputRef, LayerSpec};
use safebox::image::Variant;
use safebox_acceptance_tests::aws::{test_credentials as aws_environment, Fault, Moto, Proxy, Recorded};
use safebox_acceptance_tests::kms_policy::{check_sealed_key_policy, SealedKeyExpectation};
use safebox_acceptance_tests::{
    assert_refused, built_binary, inputs, resource_values, run, text, Action, Check, Step, Workspace,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

const EXAMPLE: &str = "../examples/resources/safebox_enclave";
const INPUTS: [&str; 5] = [
    "inputs/bzImage",
    "inputs/init.tar",
    "inputs/app.bin",
    "inputs/sshd",
    "keys/operator.pub",
];
const ADMIN: &str = "arn:aws:iam::123456789012:role/KeyAdmin";

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(EXAMPLE)
}

fn input_files() -> Vec<(String, Vec<u8>)> {
    INPUTS
        .iter()
        .map(|name| {
            (
                (*name).to_owned(),
                fs::read(example_dir().join(name)).expect("example input"),
            )
        })
        .collect()
}

/// The example's `safebox_image` block.
fn image_hcl() -> String {
    let main = fs::read_to_string(example_dir().join("main.tf")).expect("example");
    let start = main.find("resource \"safebox_image\"").expect("image resource");
    let end = main.find("resource \"safebox_enclave\"").expect("enclave resource");
    main[start..end].to_owned()
}

/// [`image_hcl`] with `arguments` (HCL lines) added to the image's block.
fn image_hcl_with(arguments: &str) -> String {
    const HEAD: &str = "resource \"safebox_image\" \"app\" {";
    image_hcl().replacen(HEAD, &format!("{HEAD}\n  {arguments}"), 1)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The same image as [`image_hcl`], built here, so a local agent can serve its production EIF.
fn build_image(dir: &Path) -> ImageBuild {
    let hcl = image_hcl();
    let name = hcl
        .split("name")
        .nth(1)
        .and_then(|rest| rest.split('"').nth(1))
        .expect("image name")
        .to_owned();
    let epoch: i64 = hcl
        .split("source_date_epoch")
        .nth(1)
        .and_then(|rest| rest.trim_start_matches([' ', '=']).split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let cmdline = hcl
        .split("cmdline")
        .nth(1)
        .and_then(|rest| rest.split('"').nth(1))
        .unwrap_or_default()
        .to_owned();
    let input = |name: &str| InputRef {
        source: example_dir().join(name).display().to_string(),
        sha256: sha256_hex(&fs::read(example_dir().join(name)).expect("input")),
    };
    let spec = ImageSpec {
        format: safebox::image::spec::ImageFormat::Eif,
        boot_stub: None,
        name,
        source_date_epoch: epoch,
        kernel: input("inputs/bzImage"),
        cmdline,
        layers: vec![
            LayerSpec {
                name: "init".into(),
                input: input("inputs/init.tar"),
                destination: None,
            },
            LayerSpec {
                name: "app".into(),
                input: input("inputs/app.bin"),
                destination: Some("/app/app.bin".into()),
            },
        ],
        dev_access: Some(DevAccessSpec {
            ssh_authorized_keys: vec![fs::read_to_string(example_dir().join("keys/operator.pub"))
                .expect("key")
                .trim()
                .to_owned()],
            sshd: input("inputs/sshd"),
        }),
    };
    ImageBuild::load_or_build(
        &spec,
        &BuildOptions {
            base_dir: Path::new("/"),
            cache_dir: &dir.join("cache"),
            progress: None,
        },
    )
    .expect("build the example image")
}

/// What the test agents report as their module id (an EC2 NitroTPM's form).
const MODULE_ID: &str = "i-0123456789abcdef0-tpm0123456789abcdef";

/// A box agent on loopback serving NitroTPM documents of given PCRs, signed by a leaf of a
/// software root: what the agent of an instance booted from a `"uki"` AMI serves, its TPM and
/// boot configuration stood in for by folders (`--boot-config fw-cfg --tpm-pcrs`); killed on
/// drop.
struct Agent {
    child: Child,
    endpoint: String,
    root_pem: String,
    nsm: PathBuf,
    _dir: tempfile::TempDir,
}

impl Agent {
    /// An agent attesting to `pcrs` (index to hex; the PCRs not given are zero) under a root of
    /// its own.
    fn start(pcrs: &BTreeMap<u32, String>) -> Self {
        Self::serve(pcrs, None)
    }

    /// An agent attesting to `pcrs` under the same root as `other`, so one provider block
    /// trusts both.
    fn start_beside(other: &Agent, pcrs: &BTreeMap<u32, String>) -> Self {
        Self::serve(pcrs, Some(&other.nsm))
    }

    fn serve(pcrs: &BTreeMap<u32, String>, nsm: Option<&Path>) -> Self {
        let dir = tempfile::tempdir().expect("agent dir");
        let nsm = nsm.map_or_else(|| dir.path().join("nsm"), Path::to_path_buf);
        let nitro = SimulatedNitro::open_or_create(&nsm).expect("software root");
        let root = nitro.trust_root().expect("root");
        let encoded = base64::engine::general_purpose::STANDARD.encode(root.der());
        let lines: Vec<&str> = encoded
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        let root_pem = format!(
            "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
            lines.join("\n")
        );
        let now_ms = u64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis(),
        )
        .unwrap();
        let leaf = nitro.issue_box_leaf(MODULE_ID, now_ms).expect("signing leaf");
        let fw_cfg = dir.path().join("fw_cfg");
        let config = BootConfig {
            box_key: BoxKey::generate().public_hex(),
            listen: Some("127.0.0.1:0".into()),
            module_id: Some(MODULE_ID.into()),
        };
        for (name, body) in [(FW_CFG_CONFIG, config.to_json()), (FW_CFG_ATTESTATION, leaf.to_pem())] {
            fs::create_dir_all(fw_cfg.join(name)).expect("fw_cfg item");
            fs::write(fw_cfg.join(name).join("raw"), body).expect("fw_cfg item");
        }
        let tpm = dir.path().join("pcr-sha384");
        fs::create_dir(&tpm).expect("PCR folder");
        for i in 0..24 {
            let value = pcrs.get(&i).cloned().unwrap_or_else(|| "00".repeat(48));
            fs::write(tpm.join(i.to_string()), format!("{value}\n")).expect("PCR file");
        }
        let endpoint_file = dir.path().join("endpoint");
        let child = Command::new(built_binary("terraform-provider-safebox"))
            .arg("agent")
            .args(["--nsm", "tpm", "--boot-config", "fw-cfg", "--fw-cfg-dir"])
            .arg(&fw_cfg)
            .arg("--tpm-pcrs")
            .arg(&tpm)
            .arg("--endpoint-file")
            .arg(&endpoint_file)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the agent");
        let started = Instant::now();
        let endpoint = loop {
            if let Ok(text) = fs::read_to_string(&endpoint_file) {
                break text.trim().to_owned();
            }
            assert!(started.elapsed() < Duration::from_secs(20), "the agent did not start");
            std::thread::sleep(Duration::from_millis(20));
        };
        Self {
            child,
            endpoint,
            root_pem,
            nsm,
            _dir: dir,
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `CreateTags` that tagged each of the two AMIs when it was registered, with the
/// variant it names.
fn tagged_amis(requests: &[Recorded]) -> Vec<(&Recorded, String)> {
    let tagged: Vec<(&Recorded, String)> = requests
        .iter()
        .filter(|r| {
            r.operation == "CreateTags"
                && r.succeeded()
                && r.form_value("ResourceId.1").is_some_and(|id| id.starts_with("ami-"))
        })
        .filter_map(|r| Some((r, form_tag(r, "safebox:variant")?)))
        .collect();
    assert_eq!(tagged.len(), 2, "each AMI is tagged once, with its variant");
    tagged
}

/// The root snapshots of the two AMIs `requests` registered, each registered to boot with
/// UEFI, NitroTPM (TPM 2.0), IMDSv2 only and ENA on x86-64.
fn registered_roots(requests: &[Recorded]) -> Vec<String> {
    let registered: Vec<&Recorded> = requests
        .iter()
        .filter(|r| r.operation == "RegisterImage" && r.succeeded())
        .collect();
    assert_eq!(registered.len(), 2, "one AMI per variant");
    registered
        .into_iter()
        .map(|r| {
            for (field, value) in [
                ("BootMode", "uefi"),
                ("TpmSupport", "v2.0"),
                ("ImdsSupport", "v2.0"),
                ("EnaSupport", "true"),
                ("Architecture", "x86_64"),
            ] {
                assert_eq!(r.form_value(field).as_deref(), Some(value), "RegisterImage {field}");
            }
            r.form_value("BlockDeviceMapping.1.Ebs.SnapshotId")
                .expect("RegisterImage names the root snapshot")
        })
        .collect()
}

/// What the aws backend sent for a `"uki"` image: each snapshot's blocks are exactly one
/// variant's bootable disk as this test builds it (every non-zero 512 KiB block, nothing
/// else); each AMI boots its variant's snapshot with UEFI, NitroTPM and IMDSv2 only, and is
/// tagged with that variant's NitroTPM PCR4, PCR7 and PCR12 and no EIF PCR.
fn uploaded_the_bootable_disks(image: &UkiImage, requests: &[Recorded]) {
    const BLOCK: usize = 512 * 1024;
    let mut uploaded: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
    for put in requests
        .iter()
        .filter(|r| r.operation == "PutSnapshotBlock" && r.succeeded())
    {
        let parts: Vec<&str> = put.path.split('/').collect();
        let index = parts[4].split('?').next().unwrap().parse().unwrap();
        uploaded
            .entry(parts[2].to_owned())
            .or_default()
            .insert(index, sha256_hex(&put.body));
    }
    let mut snapshot_of = BTreeMap::new();
    for variant in [Variant::Dev, Variant::Prod] {
        let scratch = tempfile::NamedTempFile::new().unwrap();
        image
            .build
            .write_disk(variant, &mut scratch.reopen().unwrap())
            .expect("write the disk");
        let disk = fs::read(scratch.path()).unwrap();
        let blocks: BTreeMap<u64, String> = disk
            .chunks(BLOCK)
            .enumerate()
            .filter(|(_, block)| block.iter().any(|&b| b != 0))
            .map(|(i, block)| {
                let mut padded = block.to_vec();
                padded.resize(BLOCK, 0);
                (i as u64, sha256_hex(&padded))
            })
            .collect();
        let snapshot = uploaded
            .iter()
            .find(|(_, sent)| **sent == blocks)
            .map(|(id, _)| id.clone())
            .unwrap_or_else(|| panic!("no snapshot holds exactly the {variant} disk's blocks"));
        snapshot_of.insert(variant.as_str(), snapshot);
    }
    for root in registered_roots(requests) {
        assert!(
            snapshot_of.values().any(|s| *s == root),
            "the AMI boots {root}, no disk of the image"
        );
    }
    for (r, variant) in tagged_amis(requests) {
        let m = image
            .build
            .measurements(if variant == "prod" { Variant::Prod } else { Variant::Dev });
        for (key, value) in [
            ("safebox:pcr4", &m.pcr4),
            ("safebox:pcr7", &m.pcr7),
            ("safebox:pcr12", &m.pcr12),
        ] {
            assert_eq!(form_tag(r, key).as_deref(), value.as_deref(), "{variant} {key}");
        }
        assert_eq!(form_tag(r, "safebox:pcr0"), None, "a UKI's AMI has no EIF PCR");
        assert_eq!(
            form_tag(r, "safebox:snapshot").as_deref(),
            snapshot_of.get(variant.as_str()).map(String::as_str),
            "the {variant} AMI names its own disk's snapshot"
        );
    }
}

/// The `"uki"` image `safebox_image.app`, from the UKI test inputs (`scripts/uki-inputs`, read
/// where they are) and the example's SSH layer, and the same image built here, for the PCRs its
/// boxes attest to.
struct UkiImage {
    hcl: String,
    build: ImageBuild,
    _scratch: tempfile::TempDir,
}

impl UkiImage {
    /// The image; `None` when the inputs are missing (skipped, or a failure under `CI=true`).
    fn load() -> Option<Self> {
        let dir = inputs::uki_inputs();
        if inputs::pinned(&dir).is_empty() {
            inputs::missing(&format!(
                "the UKI inputs are missing in {}: run scripts/uki-inputs",
                dir.display()
            ));
            return None;
        }
        let pin = |path: PathBuf| InputRef {
            sha256: sha256_hex(&fs::read(&path).expect("input")),
            source: path.display().to_string(),
        };
        let operator = fs::read_to_string(example_dir().join("keys/operator.pub"))
            .expect("key")
            .trim()
            .to_owned();
        let spec = ImageSpec {
            format: ImageFormat::Uki,
            boot_stub: Some(pin(dir.join("linuxx64.efi.stub"))),
            name: "data-box".into(),
            source_date_epoch: 1_700_000_000,
            kernel: pin(dir.join("vmlinuz")),
            cmdline: "console=ttyS0".into(),
            layers: vec![LayerSpec {
                name: "init".into(),
                input: pin(dir.join("init.tar")),
                destination: None,
            }],
            dev_access: Some(DevAccessSpec {
                ssh_authorized_keys: vec![operator.clone()],
                sshd: pin(example_dir().join("inputs/sshd")),
            }),
        };
        let block = |name: &str, input: &InputRef| {
            format!(
                "  {name} {{\n    source = \"{}\"\n    sha256 = \"{}\"\n  }}\n",
                input.source, input.sha256
            )
        };
        let hcl = format!(
            "resource \"safebox_image\" \"app\" {{\n  name              = \"data-box\"\n  format            = \"uki\"\n  source_date_epoch = 1700000000\n  cmdline           = \"console=ttyS0\"\n{}{}  layer {{\n    name   = \"init\"\n    source = \"{}\"\n    sha256 = \"{}\"\n  }}\n  dev_access {{\n    ssh_authorized_keys = [\"{operator}\"]\n  {}  }}\n}}\n",
            block("boot_stub", spec.boot_stub.as_ref().unwrap()),
            block("kernel", &spec.kernel),
            spec.layers[0].input.source,
            spec.layers[0].input.sha256,
            block("sshd", &spec.dev_access.as_ref().unwrap().sshd).replace('\n', "\n  "),
        );
        let scratch = tempfile::tempdir().unwrap();
        let build = ImageBuild::load_or_build(
            &spec,
            &BuildOptions {
                base_dir: Path::new("/"),
                cache_dir: &scratch.path().join("cache"),
                progress: None,
            },
        )
        .expect("build the UKI image");
        Some(Self {
            hcl,
            build,
            _scratch: scratch,
        })
    }

    /// [`Self::hcl`] with `arguments` (HCL lines) added to the image's block.
    fn hcl_with(&self, arguments: &str) -> String {
        const HEAD: &str = "resource \"safebox_image\" \"app\" {";
        self.hcl.replacen(HEAD, &format!("{HEAD}\n  {arguments}"), 1)
    }

    /// The NitroTPM PCRs a box of `variant` attests to.
    fn pcrs(&self, variant: Variant) -> BTreeMap<u32, String> {
        let m = self.build.measurements(variant);
        [(4, &m.pcr4), (7, &m.pcr7), (12, &m.pcr12)]
            .into_iter()
            .map(|(i, v)| (i, v.clone().expect("a UKI's NitroTPM PCR")))
            .collect()
    }
}

fn provider_block(proxy: &Proxy, agent: Option<&Agent>) -> String {
    let mut block = format!(
        "  backend = \"aws\"\n  region  = \"us-east-1\"\n  endpoints {{\n    ec2 = \"{0}\"\n    ebs = \"{0}\"\n    kms = \"{0}\"\n  }}\n",
        proxy.endpoint
    );
    if let Some(agent) = agent {
        block.push_str(&format!(
            "  attestation {{\n    trust_root_pem = <<-EOT\n{}    EOT\n  }}\n",
            agent.root_pem
        ));
    }
    block
}

fn sealed_key_hcl() -> String {
    format!(
        "resource \"safebox_sealed_key\" \"data\" {{\n  name               = \"customer-data\"\n  image_id           = safebox_image.app.id\n  administrator_arns = [\"{ADMIN}\"]\n}}\n"
    )
}

/// A box of the image's production variant, on the default instance type, attested by `agent`.
fn enclave_hcl(agent: &Agent) -> String {
    format!(
        "resource \"safebox_enclave\" \"box\" {{\n  image_id             = safebox_image.app.id\n  attestation_endpoint = \"{}\"\n}}\n",
        agent.endpoint
    )
}

/// A box of the image's development variant (which has SSH) on another NitroTPM instance type,
/// attested by `agent`.
fn dev_enclave_hcl(agent: &Agent) -> String {
    enclave_hcl(agent).replacen("\"box\"", "\"dev_box\"", 1).replacen(
        "{\n",
        "{\n  variant              = \"dev\"\n  instance_type        = \"c6i.large\"\n",
        1,
    )
}

/// A check that remembers the document it is given (a state, say), for checks after `run`.
fn remember(into: &Rc<RefCell<Option<Value>>>) -> Check {
    let into = Rc::clone(into);
    Box::new(move |doc| {
        *into.borrow_mut() = Some(doc.clone());
        Ok(())
    })
}

/// The tags of `r`'s EC2 form encoding whose fields start with `prefix` (`Tag.` in
/// CreateTags and DeleteTags, `TagSpecification.N.Tag.` in RunInstances): key to value, ""
/// for a key sent without one.
fn form_tags(r: &Recorded, prefix: &str) -> BTreeMap<String, String> {
    r.form()
        .into_iter()
        .filter_map(|(field, key)| {
            let index = field.strip_prefix(prefix)?.strip_suffix(".Key")?;
            index.bytes().all(|b| b.is_ascii_digit()).then(|| {
                let value = r.form_value(&format!("{prefix}{index}.Value")).unwrap_or_default();
                (key, value)
            })
        })
        .collect()
}

/// The value of tag `key` in a recorded EC2 query request (`*.Key` = key, `*.Value`), in
/// whichever tag list it is.
fn form_tag(r: &Recorded, key: &str) -> Option<String> {
    let index = r
        .form()
        .into_iter()
        .find(|(k, v)| k.ends_with(".Key") && v == key)
        .map(|(k, _)| k.trim_end_matches(".Key").to_owned())?;
    r.form_value(&format!("{index}.Value"))
}

/// A fresh workspace holding the example's inputs.
fn workspace_with_inputs() -> Workspace {
    let mut ws = Workspace::new();
    for (path, content) in input_files() {
        ws.write_file(&path, content);
    }
    ws
}

/// `terraform destroy`, which must succeed.
fn destroy(ws: &mut Workspace) {
    let destroyed = ws.terraform(&["destroy", "-auto-approve", "-input=false", "-no-color"]);
    assert!(destroyed.status.success(), "destroy failed:\n{}", text(&destroyed));
}

/// A check that attribute `pointer` of `address` satisfies `predicate`.
fn value_is(
    address: &'static str,
    pointer: &'static str,
    what: &'static str,
    predicate: impl Fn(&Value) -> bool + 'static,
) -> Check {
    Box::new(move |doc| {
        let actual = resource_values(doc, address)
            .and_then(|v| v.pointer(pointer))
            .ok_or_else(|| format!("{address}{pointer} is not set"))?;
        if predicate(actual) {
            Ok(())
        } else {
            Err(format!("{address}{pointer} = {actual} is not {what}"))
        }
    })
}

fn b64_sha256(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Sha256::digest(bytes))
}

/// Every block upload carried the SHA-256 of its body; every `CompleteSnapshot` carried the
/// count and the LINEAR aggregate of its snapshot's blocks. Returns the aggregates (hex).
fn check_snapshot_uploads(requests: &[Recorded]) -> Vec<String> {
    let mut blocks: BTreeMap<String, BTreeMap<u64, Vec<u8>>> = BTreeMap::new();
    for put in requests
        .iter()
        .filter(|r| r.operation == "PutSnapshotBlock" && (200..300).contains(&r.status))
    {
        let checksum = put
            .header("x-amz-checksum")
            .expect("PutSnapshotBlock without x-amz-Checksum");
        assert_eq!(
            checksum,
            b64_sha256(&put.body),
            "a block's checksum is not its body's SHA-256"
        );
        assert_eq!(put.header("x-amz-checksum-algorithm"), Some("SHA256"));
        assert_eq!(put.body.len(), 512 * 1024, "blocks are 512 KiB");
        assert!(put.body.iter().any(|b| *b != 0), "an all-zero block was uploaded");
        let parts: Vec<&str> = put.path.split('/').collect();
        let (snapshot, index) = (
            parts[2].to_owned(),
            parts[4].split('?').next().unwrap().parse().unwrap(),
        );
        let digest = base64::engine::general_purpose::STANDARD.decode(checksum).unwrap();
        blocks.entry(snapshot).or_default().insert(index, digest);
    }
    let completes: Vec<&Recorded> = requests
        .iter()
        .filter(|r| r.operation == "CompleteSnapshot" && r.status < 300)
        .collect();
    assert!(!completes.is_empty(), "no CompleteSnapshot was sent");
    completes
        .iter()
        .map(|complete| {
            let snapshot = complete.path.rsplit('/').next().unwrap().split('?').next().unwrap();
            let digests = blocks.get(snapshot).unwrap_or_else(|| {
                let seen: Vec<String> = requests
                    .iter()
                    .filter(|r| r.service == "ebs")
                    .map(|r| format!("{} {} {} {}", r.method, r.path, r.operation, r.status))
                    .take(8)
                    .collect();
                panic!("no blocks of the completed snapshot {snapshot}; EBS requests: {seen:#?}")
            });
            let mut linear = Sha256::new();
            for digest in digests.values() {
                linear.update(digest);
            }
            let linear = linear.finalize();
            assert_eq!(
                complete.header("x-amz-checksum"),
                Some(base64::engine::general_purpose::STANDARD.encode(linear).as_str())
            );
            assert_eq!(complete.header("x-amz-checksum-aggregation-method"), Some("LINEAR"));
            assert_eq!(complete.header("x-amz-checksum-algorithm"), Some("SHA256"));
            assert_eq!(
                complete.header("x-amz-changedblockscount"),
                Some(digests.len().to_string().as_str())
            );
            hex::encode(linear)
        })
        .collect()
}

fn form<'a>(requests: &'a [Recorded], operation: &str) -> &'a Recorded {
    requests
        .iter()
        .find(|r| r.operation == operation && (200..300).contains(&r.status))
        .unwrap_or_else(|| panic!("no successful {operation} was sent"))
}

/// Calls moto directly (not through the proxy): an EC2 query action, or a KMS JSON action.
fn moto_call(moto: &Moto, service: &str, body: &str) -> String {
    moto_call_in(&moto.endpoint, "us-east-1", service, body)
}

/// [`moto_call`] at moto's `endpoint`, in `region`.
fn moto_call_in(endpoint: &str, region: &str, service: &str, body: &str) -> String {
    let auth = format!(
        "AWS4-HMAC-SHA256 Credential=testing/20260101/{region}/{service}/aws4_request, SignedHeaders=host, Signature=00"
    );
    let (content_type, target) = if service == "kms" {
        let action = body.split('|').next().unwrap();
        ("application/x-amz-json-1.1", Some(format!("TrentService.{action}")))
    } else {
        ("application/x-www-form-urlencoded", None)
    };
    let payload = if service == "kms" {
        body.split('|').nth(1).unwrap_or("{}")
    } else {
        body
    };
    let mut headers = vec![("authorization", auth.as_str()), ("content-type", content_type)];
    if let Some(target) = &target {
        headers.push(("x-amz-target", target.as_str()));
    }
    let response = safebox_acceptance_tests::aws::request("POST", &format!("{endpoint}/"), &headers, payload)
        .expect("moto answers");
    let answer = String::from_utf8_lossy(&response.body).into_owned();
    // Checks that find "nothing left" in an error answer would pass whatever is left: every
    // call must be answered by its own response.
    let answered = if service == "kms" {
        // Operations with no output (PutKeyPolicy) answer `null` or nothing.
        (200..300).contains(&response.status) && (answer.is_empty() || serde_json::from_str::<Value>(&answer).is_ok())
    } else {
        let action = body
            .split('&')
            .find_map(|p| p.strip_prefix("Action="))
            .unwrap_or_default();
        (200..300).contains(&response.status) && answer.contains(&format!("<{action}Response"))
    };
    assert!(
        answered,
        "moto refused {service} {body} in {region} ({}): {answer}",
        response.status
    );
    answer
}

/// The values of every `<tag>` element in an EC2 XML answer.
fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split(&close).next().map(str::to_owned))
        .collect()
}

/// Our AMIs in moto (those carrying `safebox:record`).
fn images_of(moto: &Moto) -> Vec<String> {
    xml_values(&images_in(&moto.endpoint, "us-east-1"), "imageId")
}

/// `DescribeImages` of our AMIs in `region`, as XML.
fn images_in(endpoint: &str, region: &str) -> String {
    moto_call_in(
        endpoint,
        region,
        "ec2",
        "Action=DescribeImages&Version=2016-11-15&Owner.1=self&Filter.1.Name=tag-key&Filter.1.Value.1=safebox%3Arecord",
    )
}

/// Our snapshots in moto (those carrying `safebox:kind`).
fn snapshots_of(moto: &Moto) -> Vec<String> {
    snapshots_in(&moto.endpoint, "us-east-1")
}

/// Our snapshots in moto's `region`.
fn snapshots_in(endpoint: &str, region: &str) -> Vec<String> {
    let xml = moto_call_in(
        endpoint,
        region,
        "ec2",
        "Action=DescribeSnapshots&Version=2016-11-15&Owner.1=self&Filter.1.Name=tag-key&Filter.1.Value.1=safebox%3Akind",
    );
    xml_values(&xml, "snapshotId")
}

/// No AMI and no snapshot of ours is left in moto.
fn assert_moto_is_clean_of_images(moto: &Moto) {
    let images = images_of(moto);
    assert!(images.is_empty(), "AMIs remain: {images:?}");
    let snapshots = snapshots_of(moto);
    assert!(snapshots.is_empty(), "snapshots remain: {snapshots:?}");
}

/// Nothing of ours is left in moto: no AMI, no snapshot, no live instance, no usable key.
fn assert_moto_is_clean(moto: &Moto) {
    assert_moto_is_clean_of_images(moto);
    let instances = moto_call(
        moto,
        "ec2",
        "Action=DescribeInstances&Version=2016-11-15&Filter.1.Name=tag-key&Filter.1.Value.1=safebox%3Arecord&Filter.2.Name=instance-state-name&Filter.2.Value.1=pending&Filter.2.Value.2=running",
    );
    assert!(
        xml_values(&instances, "instanceId").is_empty(),
        "instances still run: {instances}"
    );
    let keys: Value = serde_json::from_str(&moto_call(moto, "kms", "ListKeys|{}")).expect("ListKeys");
    for key in keys["Keys"].as_array().expect("ListKeys answers a list of Keys") {
        let id = key["KeyId"].as_str().unwrap();
        let described: Value =
            serde_json::from_str(&moto_call(moto, "kms", &format!("DescribeKey|{{\"KeyId\":\"{id}\"}}"))).unwrap();
        let state = described["KeyMetadata"]["KeyState"].as_str().unwrap_or_default();
        assert_eq!(state, "PendingDeletion", "key {id} is still usable");
    }
}

#[test]
fn eif_images_and_sealed_keys_publish_and_leave_nothing_and_their_boxes_are_refused_at_plan() {
    aws_environment();
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint);
    let scratch = tempfile::tempdir().unwrap();
    let build = build_image(scratch.path());
    let prod = build.measurements(Variant::Prod).clone();
    let agent = Agent::start(&BTreeMap::new());
    let provider = provider_block(&proxy, Some(&agent));
    let shared = |accounts: &str| image_hcl_with(&format!("launch_permission_account_ids = [{accounts}]"));
    run(vec![
        Step {
            files: input_files(),
            provider: provider.clone(),
            config: format!("{}\n{}", shared("\"111122223333\""), sealed_key_hcl()),
            plan: vec![
                ("safebox_image.app", Action::Create),
                ("safebox_sealed_key.data", Action::Create),
            ],
            checks: vec![
                value_is("safebox_image.app", "/prod_ami_id", "an AMI id", |v| {
                    v.as_str().is_some_and(|s| s.starts_with("ami-"))
                }),
                value_is("safebox_image.app", "/dev_ami_id", "an AMI id", |v| {
                    v.as_str().is_some_and(|s| s.starts_with("ami-"))
                }),
                value_is("safebox_image.app", "/snapshot_linear_sha256", "64 hex digits", |v| {
                    v.as_str()
                        .is_some_and(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
                }),
                value_is("safebox_image.app", "/prod_artifact", "null on aws", Value::is_null),
                value_is("safebox_sealed_key.data", "/key_arn", "a KMS key ARN", |v| {
                    v.as_str().is_some_and(|s| s.starts_with("arn:aws:kms:us-east-1:"))
                }),
                value_is("safebox_sealed_key.data", "/status", "sealed", |v| v == "sealed"),
            ],
            import: Some("safebox_image.app"),
            ..Step::default()
        },
        // The key policy is known at plan once the image exists; a box of an "eif" image is
        // refused there, naming the fix, instead of launched to never answer.
        Step {
            provider: provider.clone(),
            config: format!(
                "{}\n{}\n{}",
                shared("\"111122223333\""),
                sealed_key_hcl(),
                enclave_hcl(&agent)
            ),
            expect_error: vec![
                "The aws backend cannot boot a box of an \"eif\" image",
                "format = \"uki\"",
                "image_id",
            ],
            ..Step::default()
        },
        Step {
            provider: provider.clone(),
            config: format!("{}\n{}", shared("\"111122223333\""), sealed_key_hcl()),
            plan_checks: vec![value_is(
                "safebox_sealed_key.data",
                "/policy",
                "the key policy, known at plan",
                {
                    let pcr0 = prod.pcr0.clone().unwrap_or_default();
                    move |v| v.as_str().is_some_and(|p| p.contains(&pcr0))
                },
            )],
            checks: vec![value_is("safebox_sealed_key.data", "/bind_pcrs", "[0]", |v| {
                *v == serde_json::json!([0])
            })],
            import: Some("safebox_sealed_key.data"),
            ..Step::default()
        },
        Step {
            provider: provider.clone(),
            config: format!("{}\n{}", shared("\"444455556666\""), sealed_key_hcl()),
            plan: vec![("safebox_image.app", Action::Update)],
            ..Step::default()
        },
    ]);
    let requests = proxy.requests();

    // Images: two snapshots with checked blocks and aggregates; two UEFI/TPM/IMDSv2/ENA AMIs.
    let aggregates = check_snapshot_uploads(&requests);
    assert_eq!(aggregates.len(), 2, "one snapshot per variant");
    for start in requests
        .iter()
        .filter(|r| r.operation == "StartSnapshot" && r.succeeded())
    {
        let body = start.json().expect("StartSnapshot JSON");
        assert_eq!(body["VolumeSize"], 1, "the payload disk of a small image fits 1 GiB");
        assert_eq!(body["Timeout"], 60);
        assert!(
            body["ClientToken"].as_str().is_some_and(|t| t.starts_with("img-")),
            "{body}"
        );
        let tags = body["Tags"].as_array().expect("tags");
        assert!(tags
            .iter()
            .any(|t| t["Key"] == "safebox:payload" && t["Value"].as_str().is_some_and(|v| v.len() == 64)));
    }
    let tag = form_tag;
    for (r, variant) in tagged_amis(&requests) {
        let m = if variant == "prod" {
            &prod
        } else {
            build.measurements(Variant::Dev)
        };
        // The EIF's metadata names the inputs as written in HCL, so its digest is Terraform's
        // own; the PCRs do not cover it and must equal this test's build.
        assert!(tag(r, "safebox:image-sha256").is_some_and(|d| d.len() == 64));
        assert_eq!(tag(r, "safebox:pcr0").as_deref(), m.pcr0.as_deref());
        // The manifest names input paths as written in HCL, so it is compared with what the
        // snapshots were tagged with, not with this test's own build.
        let manifest = tag(r, "safebox:manifest-sha256").expect("manifest tag");
        assert!(
            requests
                .iter()
                .filter(|q| q.operation == "StartSnapshot")
                .any(|q| q.json().is_some_and(|b| b["Tags"].as_array().is_some_and(|t| t
                    .iter()
                    .any(|t| t["Key"] == "safebox:manifest-sha256" && t["Value"] == manifest.as_str())))),
            "the AMI's manifest is not its snapshot's"
        );
        assert!(tag(r, "safebox:snapshot").is_some_and(|s| s.starts_with("snap-")));
    }
    for root in registered_roots(&requests) {
        assert!(root.starts_with("snap-"), "{root}");
    }

    // Launch permissions: granted to the first auditor account, then moved to the second.
    let shares: Vec<&Recorded> = requests
        .iter()
        .filter(|r| r.operation == "ModifyImageAttribute" && r.succeeded())
        .collect();
    assert_eq!(shares.len(), 4, "two AMIs shared, then re-shared");
    for r in &shares[..2] {
        assert_eq!(
            r.form_value("LaunchPermission.Add.1.UserId").as_deref(),
            Some("111122223333")
        );
    }
    for r in &shares[2..] {
        assert_eq!(
            r.form_value("LaunchPermission.Add.1.UserId").as_deref(),
            Some("444455556666")
        );
        assert_eq!(
            r.form_value("LaunchPermission.Remove.1.UserId").as_deref(),
            Some("111122223333")
        );
    }

    assert!(
        !requests.iter().any(|r| r.operation == "RunInstances"),
        "no instance is launched from an \"eif\" image"
    );

    // The sealed key: the policy actually sent binds the image's measurement and gives
    // nobody a way around it (evaluated statement by statement and request by request).
    let pcr0 = prod.pcr0.clone().unwrap_or_default();
    let policy = sent_key_policy(
        &requests,
        [
            ("kms:RecipientAttestation:ImageSha384", pcr0.as_str()),
            ("kms:RecipientAttestation:PCR0", pcr0.as_str()),
        ],
    );
    assert!(!policy.contains("NitroTPM"), "{policy}");
    // Destroy: AMIs deregistered, snapshots deleted, key scheduled.
    assert_sent(&requests, &["DeregisterImage", "DeleteSnapshot", "ScheduleKeyDeletion"]);
    assert_moto_is_clean(&moto);
    drop(agent);
}

/// The key policy `CreateKey` sent, once it is checked to hold the sealed key's contract with
/// the attestation `conditions` (condition key to hex, compared in lower case), statement by
/// statement and request by request.
fn sent_key_policy<const N: usize>(requests: &[Recorded], conditions: [(&str, &str); N]) -> String {
    let create_key = form(requests, "CreateKey").json().expect("CreateKey JSON");
    assert_eq!(create_key["BypassPolicyLockoutSafetyCheck"], Value::Bool(true));
    let policy = create_key["Policy"]
        .as_str()
        .expect("CreateKey carries a policy")
        .to_owned();
    let expectation = SealedKeyExpectation {
        recipients: vec!["arn:aws:iam::123456789012:root".to_owned()],
        administrators: vec![ADMIN.to_owned()],
        attestation: conditions
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value.to_ascii_lowercase()))
            .collect(),
    };
    if let Err(problems) = check_sealed_key_policy(&policy, &expectation) {
        panic!(
            "the sealed key's policy breaks its contract:\n{}\n{policy}",
            problems.join("\n")
        );
    }
    policy
}

/// Every one of `operations` was sent and succeeded (what destroy must do).
fn assert_sent(requests: &[Recorded], operations: &[&str]) {
    for operation in operations {
        assert!(
            requests.iter().any(|r| r.operation == *operation && r.succeeded()),
            "destroy sent no {operation}"
        );
    }
}

/// The user data of a recorded `RunInstances`: the box's boot configuration.
fn user_data(run: &Recorded) -> BootConfig {
    let encoded = run.form_value("UserData").expect("RunInstances carries user data");
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .expect("user data is base64");
    BootConfig::parse(&bytes, "the user data").expect("user data is a boot configuration")
}

#[test]
fn uki_boxes_boot_their_amis_with_nitrotpm_and_sealed_keys_bind_pcr4_and_pcr12() {
    aws_environment();
    let Some(image) = UkiImage::load() else { return };
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint);
    let prod = image.pcrs(Variant::Prod);
    let agent = Agent::start(&prod);
    let dev_agent = Agent::start_beside(&agent, &image.pcrs(Variant::Dev));
    let provider = provider_block(&proxy, Some(&agent));
    // The prod box carries the user's tags (and their Name over ours) from RunInstances on.
    let tagged_box = enclave_hcl(&agent).replacen("{\n", "{\n  tags = { team = \"risk\", Name = \"risk-box\" }\n", 1);
    let boxes = format!("{tagged_box}\n{}", dev_enclave_hcl(&dev_agent));
    let config = format!("{}\n{}\n{boxes}", image.hcl, sealed_key_hcl());
    let launched = Rc::new(RefCell::new(None));
    let attested_pcr = |address: &'static str, pcr: &'static str, value: &str| {
        let value = value.to_owned();
        value_is(address, pcr, "the image's NitroTPM PCR", move |v| v == value.as_str())
    };
    run(vec![
        Step {
            provider: provider.clone(),
            config: image.hcl.clone(),
            plan: vec![("safebox_image.app", Action::Create)],
            ..Step::default()
        },
        // PCR0 of a NitroTPM measures firmware, not the image: refused, naming the fix.
        Step {
            provider: provider.clone(),
            config: format!(
                "{}\n{}",
                image.hcl,
                sealed_key_hcl().replacen("{\n", "{\n  bind_pcrs          = [0]\n", 1)
            ),
            expect_error: vec![
                "PCRs of the other kind of box",
                "bind_pcrs has 0",
                "Bind those (default [4, 12])",
            ],
            ..Step::default()
        },
        Step {
            provider: provider.clone(),
            config: config.clone(),
            plan: vec![
                ("safebox_sealed_key.data", Action::Create),
                ("safebox_enclave.box", Action::Create),
                ("safebox_enclave.dev_box", Action::Create),
            ],
            plan_checks: vec![
                value_is("safebox_sealed_key.data", "/bind_pcrs", "[4, 12]", |v| {
                    *v == serde_json::json!([4, 12])
                }),
                value_is(
                    "safebox_enclave.box",
                    "/expected_pcrs",
                    "the image's PCR4, PCR7, PCR12",
                    {
                        let expected: serde_json::Map<String, Value> = prod
                            .iter()
                            .map(|(i, v)| (i.to_string(), Value::String(v.clone())))
                            .collect();
                        move |v| *v == Value::Object(expected.clone())
                    },
                ),
                value_is(
                    "safebox_enclave.box",
                    "/ssh_endpoint",
                    "null (a prod box)",
                    Value::is_null,
                ),
            ],
            checks: vec![
                value_is("safebox_enclave.box", "/instance_id", "an instance id", |v| {
                    v.as_str().is_some_and(|s| s.starts_with("i-"))
                }),
                attested_pcr("safebox_enclave.box", "/attestation/pcrs/4", &prod[&4]),
                attested_pcr("safebox_enclave.box", "/attestation/pcrs/12", &prod[&12]),
                attested_pcr(
                    "safebox_enclave.dev_box",
                    "/attestation/pcrs/4",
                    &image.pcrs(Variant::Dev)[&4],
                ),
                value_is("safebox_enclave.box", "/attestation/module_id", "the NitroTPM's", |v| {
                    v == MODULE_ID
                }),
                value_is("safebox_enclave.box", "/ssh_endpoint", "null", Value::is_null),
                value_is(
                    "safebox_enclave.dev_box",
                    "/ssh_endpoint",
                    "the private IP, port 22",
                    |v| {
                        v.as_str()
                            .and_then(|e| e.strip_suffix(":22"))
                            .is_some_and(|ip| ip.parse::<std::net::Ipv4Addr>().is_ok())
                    },
                ),
                launched_from(&moto.endpoint, "us-east-1", "safebox_enclave.box", "/prod_ami_id"),
                launched_from(&moto.endpoint, "us-east-1", "safebox_enclave.dev_box", "/dev_ami_id"),
                remember(&launched),
            ],
            import: Some("safebox_enclave.box"),
            ..Step::default()
        },
        // A change of tags keeps the box: its instance and volumes are tagged in place.
        Step {
            provider: provider.clone(),
            config: config.replace("team = \"risk\"", "team = \"platform\""),
            plan: vec![("safebox_enclave.box", Action::Update)],
            ..Step::default()
        },
    ]);
    let requests = proxy.requests();
    uploaded_the_bootable_disks(&image, &requests);
    let instance = resource_values(
        launched.borrow().as_ref().expect("the boxes' step ran"),
        "safebox_enclave.box",
    )
    .expect("box in state")["instance_id"]
        .as_str()
        .expect("an instance id")
        .to_owned();
    let retagged = requests
        .iter()
        .find(|r| r.operation == "CreateTags" && r.form_value("Tag.1.Value").as_deref() == Some("platform"))
        .expect("a CreateTags of the box's new tags");
    let resources: Vec<String> = retagged
        .form()
        .into_iter()
        .filter(|(k, _)| k.starts_with("ResourceId."))
        .map(|(_, v)| v)
        .collect();
    assert_eq!(resources.first(), Some(&instance), "the instance first: {resources:?}");
    assert!(
        resources[1..].iter().all(|r| r.starts_with("vol-")),
        "then its volumes: {resources:?}"
    );
    assert_eq!(retagged.form_value("Tag.1.Key").as_deref(), Some("team"));

    // The boxes: no enclave, a NitroTPM instance type, the box key as user data, IMDSv2 only,
    // an idempotency token, our tags, and each from exactly its variant's AMI.
    let launched = launched.take().expect("the boxes' step ran");
    let runs: Vec<&Recorded> = requests
        .iter()
        .filter(|r| r.operation == "RunInstances" && r.succeeded())
        .collect();
    assert_eq!(runs.len(), 2, "one RunInstances per box");
    for (address, variant, instance_type) in [
        ("safebox_enclave.box", "prod", "m6i.large"),
        ("safebox_enclave.dev_box", "dev", "c6i.large"),
    ] {
        let record = resource_values(&launched, address).expect("box in state")["id"]
            .as_str()
            .expect("box id")
            .to_owned();
        let run = runs
            .iter()
            .find(|r| form_tag(r, "safebox:record").as_deref() == Some(record.as_str()))
            .unwrap_or_else(|| panic!("no RunInstances is tagged with {address}'s record {record}"));
        let ami = resource_values(&launched, "safebox_image.app").expect("image")[format!("{variant}_ami_id")]
            .as_str()
            .expect("AMI id")
            .to_owned();
        assert_eq!(run.form_value("ImageId"), Some(ami), "{address} runs its variant's AMI");
        let specifications: BTreeMap<String, BTreeMap<String, String>> = run
            .form()
            .into_iter()
            .filter_map(|(k, resource)| {
                let index = k.strip_suffix(".ResourceType")?;
                let mut tags = form_tags(run, &format!("{index}.Tag."));
                tags.retain(|key, _| !key.starts_with("safebox:"));
                Some((resource, tags))
            })
            .collect();
        let user = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let expected = if variant == "prod" {
            BTreeMap::from([
                ("instance".to_owned(), user(&[("team", "risk"), ("Name", "risk-box")])),
                ("volume".to_owned(), user(&[("team", "risk"), ("Name", "risk-box")])),
            ])
        } else {
            BTreeMap::from([("instance".to_owned(), user(&[("Name", &format!("safebox-{record}"))]))])
        };
        assert_eq!(
            specifications, expected,
            "{address}: the tags RunInstances creates it with"
        );
        assert_eq!(
            run.form_value("InstanceType").as_deref(),
            Some(instance_type),
            "{address}"
        );
        let enclave_options: Vec<(String, String)> = run
            .form()
            .into_iter()
            .filter(|(k, _)| k.starts_with("EnclaveOptions"))
            .collect();
        assert!(
            enclave_options.is_empty(),
            "{address} asks for an enclave: {enclave_options:?}"
        );
        assert_eq!(
            run.form_value("MetadataOptions.HttpTokens").as_deref(),
            Some("required")
        );
        assert_eq!(
            run.form_value("MetadataOptions.HttpPutResponseHopLimit").as_deref(),
            Some("1")
        );
        assert!(run.form_value("ClientToken").is_some_and(|t| t.starts_with("safebox-")));
        let config = user_data(run);
        assert!(
            config.box_key.len() == 64 && config.box_key.bytes().all(|b| b.is_ascii_hexdigit()),
            "{config:?}"
        );
        assert_eq!(
            (config.listen, config.module_id),
            (None, None),
            "only the box key is passed"
        );
        assert_eq!(form_tag(run, "safebox:ssh").is_some(), variant == "dev", "{address}");
    }

    // The sealed key binds the UKI's NitroTPM PCR4 and PCR12, in lower-case hex, and nothing
    // of an enclave; the policy sent holds its contract request by request.
    let policy = sent_key_policy(
        &requests,
        [
            ("kms:RecipientAttestation:NitroTPMPCR4", prod[&4].as_str()),
            ("kms:RecipientAttestation:NitroTPMPCR12", prod[&12].as_str()),
        ],
    );
    assert!(!policy.contains("ImageSha384"), "{policy}");
    assert_sent(
        &requests,
        &["TerminateInstances", "DeregisterImage", "ScheduleKeyDeletion"],
    );
    assert_moto_is_clean(&moto);
    drop(dev_agent);
    drop(agent);
}

#[test]
fn throttling_and_server_errors_are_retried_until_apply_converges() {
    aws_environment();
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint);
    proxy.inject("StartSnapshot", 2, Fault::Throttle);
    proxy.inject("PutSnapshotBlock", 3, Fault::ServerError);
    proxy.inject("CompleteSnapshot", 1, Fault::Throttle);
    proxy.inject("RegisterImage", 2, Fault::Throttle);
    proxy.inject("CreateTags", 1, Fault::ServerError);
    proxy.inject("CreateKey", 2, Fault::Throttle);
    run(vec![Step {
        files: input_files(),
        provider: provider_block(&proxy, None),
        config: format!("{}\n{}", image_hcl(), sealed_key_hcl()),
        plan: vec![
            ("safebox_image.app", Action::Create),
            ("safebox_sealed_key.data", Action::Create),
        ],
        ..Step::default()
    }]);
    let requests = proxy.requests();
    for operation in [
        "StartSnapshot",
        "PutSnapshotBlock",
        "CompleteSnapshot",
        "RegisterImage",
        "CreateTags",
        "CreateKey",
    ] {
        assert!(
            requests.iter().any(|r| r.operation == operation && r.injected),
            "no fault was injected into {operation}"
        );
        assert!(
            requests
                .iter()
                .any(|r| r.operation == operation && !r.injected && (200..300).contains(&r.status)),
            "{operation} never succeeded after its faults"
        );
    }
    // Retries never duplicated anything: one snapshot and one AMI per variant.
    assert_eq!(check_snapshot_uploads(&requests).len(), 2);
    assert_eq!(
        requests
            .iter()
            .filter(|r| r.operation == "RegisterImage" && (200..300).contains(&r.status))
            .count(),
        2
    );
    assert_moto_is_clean(&moto);
}

/// Kills `child` and everything in its process group (Terraform and the provider it runs).
fn kill_group(child: &mut Child) {
    let group = i32::try_from(child.id()).expect("pid fits in i32");
    assert!(group > 1, "refusing to signal process group {group}");
    // SAFETY: signals the process group `child` leads (it was spawned with process_group(0)).
    unsafe { libc::kill(-group, libc::SIGKILL) };
    let _ = child.wait();
}

#[test]
fn an_apply_killed_mid_upload_is_finished_by_the_next_without_duplicates_or_orphans() {
    aws_environment();
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint);
    let mut ws = workspace_with_inputs();
    ws.write_config(&provider_block(&proxy, None), &image_hcl());
    ws.terraform_ok(&["init", "-input=false", "-no-color"]);
    proxy.delay("PutSnapshotBlock", Duration::from_millis(400));
    let mut apply = ws.command(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    std::os::unix::process::CommandExt::process_group(&mut apply, 0);
    let mut child = apply
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("terraform apply");
    let started = Instant::now();
    while proxy.arrivals("PutSnapshotBlock") < 3 {
        assert!(started.elapsed() < Duration::from_secs(120), "the upload never started");
        assert!(child.try_wait().unwrap().is_none(), "apply ended before the upload");
        std::thread::sleep(Duration::from_millis(50));
    }
    kill_group(&mut child);
    proxy.delay("PutSnapshotBlock", Duration::ZERO);
    let interrupted = proxy.requests();
    assert!(
        !interrupted.iter().any(|r| r.operation == "RegisterImage"),
        "the kill came too late to interrupt the upload"
    );
    let out = ws.terraform(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    assert!(out.status.success(), "the second apply failed:\n{}", text(&out));
    // The interrupted snapshot was found by its tags and deleted; exactly one snapshot and one
    // AMI per variant exist.
    let requests = proxy.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.operation == "DeleteSnapshot" && (200..300).contains(&r.status)),
        "the interrupted snapshot was not cleaned up"
    );
    let state = ws.state();
    let image = resource_values(&state, "safebox_image.app").expect("image in state");
    let amis = images_of(&moto);
    assert_eq!(amis.len(), 2, "AMIs in moto: {amis:?}");
    for ami in [&image["dev_ami_id"], &image["prod_ami_id"]] {
        assert!(amis.contains(&ami.as_str().unwrap().to_owned()), "{ami} not in moto");
    }
    ws.plan_is_empty().unwrap();
    destroy(&mut ws);
    assert_moto_is_clean(&moto);
}

/// A KMS signing key created in moto directly (as the auditor's own account would): its id.
fn kms_signing_key(moto: &Moto, spec: &str) -> String {
    let created: Value = serde_json::from_str(&moto_call(
        moto,
        "kms",
        &format!("CreateKey|{{\"KeySpec\":\"{spec}\",\"KeyUsage\":\"SIGN_VERIFY\",\"Description\":\"auditor\"}}"),
    ))
    .expect("CreateKey");
    created["KeyMetadata"]["KeyId"].as_str().expect("key id").to_owned()
}

#[test]
fn kms_signers_approve_governed_changes_through_safebox_approve_kms_key_id() {
    aws_environment();
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint);
    let p256 = kms_signing_key(&moto, "ECC_NIST_P256");
    let p384 = kms_signing_key(&moto, "ECC_NIST_P384");
    let mut ws = workspace_with_inputs();
    fs::create_dir_all(ws.path().join("approvals")).unwrap();
    let provider = format!("{}  approvals_dir = \"approvals\"\n", provider_block(&proxy, None));
    let policy = format!(
        "resource \"safebox_policy\" \"gov\" {{\n  name = \"kms-auditors\"\n  signer {{\n    id         = \"auditor-kms-a\"\n    role       = \"auditor\"\n    kms_key_id = \"{p256}\"\n  }}\n  signer {{\n    id         = \"auditor-kms-b\"\n    role       = \"auditor\"\n    kms_key_id = \"{p384}\"\n  }}\n  rule {{\n    action    = \"image.publish\"\n    threshold = 2\n    roles     = [\"auditor\"]\n  }}\n}}\n"
    );
    ws.write_config(&provider, &policy);
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    let asked: std::collections::BTreeSet<String> = proxy
        .requests_for("GetPublicKey")
        .iter()
        .map(|r| r.json().unwrap()["KeyId"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        asked,
        [p256.clone(), p384.clone()].into(),
        "the policy reads each KMS signer's key"
    );

    let governed = image_hcl_with("policy_id = safebox_policy.gov.id");
    ws.write_config(&provider, &format!("{policy}\n{governed}"));
    let out = ws.terraform(&["plan", "-out=p.tfplan", "-input=false", "-no-color"]);
    assert!(out.status.success(), "{}", text(&out));
    let plan: Value = serde_json::from_str(&ws.terraform_ok(&["show", "-json", "p.tfplan"])).unwrap();
    let digest = resource_values(&plan, "safebox_image.app").unwrap()["change_digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let approvals = ws.path().join("approvals");
    let approve = |signer: &str, key: &str, file: &str| {
        Command::new(built_binary("safebox"))
            .args([
                "approve",
                "--kms-key-id",
                key,
                "--region",
                "us-east-1",
                "--kms-endpoint",
            ])
            .arg(&proxy.endpoint)
            .args([
                "--signer",
                signer,
                "--action",
                "image.publish",
                "--digest",
                &digest,
                "--out",
            ])
            .arg(approvals.join(file))
            .output()
            .unwrap()
    };
    let refused = ws.terraform(&["apply", "-input=false", "-no-color", "p.tfplan"]);
    assert_refused(
        &refused,
        &["image.publish is not approved", &digest, "0 of 2 for image.publish"],
    );
    for (signer, key, file) in [("auditor-kms-a", &p256, "a.json"), ("auditor-kms-b", &p384, "b.json")] {
        let out = approve(signer, key, file);
        assert!(
            out.status.success(),
            "safebox approve --kms-key-id failed: {}",
            text(&out)
        );
    }
    let signs = proxy.requests_for("Sign");
    assert_eq!(signs.len(), 2, "one kms:Sign per approval");
    let algorithms: Vec<String> = signs
        .iter()
        .map(|s| s.json().unwrap()["SigningAlgorithm"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(algorithms, ["ECDSA_SHA_256", "ECDSA_SHA_384"]);
    let message = signs[0].json().unwrap()["Message"].as_str().unwrap().to_owned();
    let message = base64::engine::general_purpose::STANDARD.decode(message).unwrap();
    assert_eq!(
        String::from_utf8(message).unwrap(),
        format!("safebox-approval:v1:image.publish:{digest}")
    );
    let out = ws.terraform(&["plan", "-out=p.tfplan", "-input=false", "-no-color"]);
    assert!(out.status.success(), "{}", text(&out));
    ws.terraform_ok(&["apply", "-input=false", "-no-color", "p.tfplan"]);

    // A key that is not an ECDSA signing key is refused with what to use instead.
    let wrong = approve("auditor-kms-a", "alias/nothing-here", "c.json");
    assert_refused(&wrong, &["kms:GetPublicKey failed"]);
    assert!(!ws.path().join("approvals/c.json").exists());

    destroy(&mut ws);
    assert_moto_is_clean_of_images(&moto);
}

#[test]
fn a_box_whose_attestation_fails_is_terminated_and_the_apply_fails_closed() {
    aws_environment();
    let Some(image) = UkiImage::load() else { return };
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint);
    // The box's agent is attested by another root than the one the provider trusts.
    let pcrs = image.pcrs(Variant::Prod);
    let trusted = Agent::start(&pcrs);
    let impostor = Agent::start(&pcrs);
    let mut ws = Workspace::new();
    let provider = provider_block(&proxy, Some(&trusted));
    ws.write_config(&provider, &image.hcl);
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    ws.write_config(&provider, &format!("{}\n{}", image.hcl, enclave_hcl(&impostor)));
    let out = ws.terraform(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    assert_refused(&out, &["Attestation failed", "was stopped"]);
    let requests = proxy.requests();
    let launched = requests
        .iter()
        .filter(|r| r.operation == "RunInstances" && r.succeeded())
        .count();
    assert_eq!(launched, 1);
    assert!(
        requests
            .iter()
            .any(|r| r.operation == "TerminateInstances" && r.succeeded()),
        "the unverified instance was not terminated"
    );
    let state = ws.state();
    assert!(
        resource_values(&state, "safebox_enclave.box").is_none(),
        "the box is in state"
    );
    ws.write_config(&provider, &image.hcl);
    destroy(&mut ws);
    assert_moto_is_clean(&moto);
}

#[test]
fn a_sealed_key_whose_policy_changed_outside_terraform_is_drift_and_is_replaced() {
    aws_environment();
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint);
    let mut ws = workspace_with_inputs();
    let provider = provider_block(&proxy, None);
    ws.write_config(&provider, &format!("{}\n{}", image_hcl(), sealed_key_hcl()));
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    ws.plan_is_empty().unwrap();
    let state = ws.state();
    let key_id = resource_values(&state, "safebox_sealed_key.data").unwrap()["key_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Someone with root access rewrites the policy behind Terraform's back.
    let loosened = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"kms:*","Resource":"*"}]}"#;
    moto_call(
        &moto,
        "kms",
        &format!(
            "PutKeyPolicy|{}",
            serde_json::json!({ "KeyId": key_id, "PolicyName": "default", "Policy": loosened })
        ),
    );
    let out = ws.terraform(&["plan", "-out=p.tfplan", "-input=false", "-no-color"]);
    assert!(out.status.success(), "{}", text(&out));
    let plan: Value = serde_json::from_str(&ws.terraform_ok(&["show", "-json", "p.tfplan"])).unwrap();
    let change = plan["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "safebox_sealed_key.data")
        .expect("the key in the plan");
    assert_eq!(change["change"]["actions"], serde_json::json!(["delete", "create"]));
    assert!(
        change["change"]["before"]["status"]
            .as_str()
            .is_some_and(|s| s.contains("differs from the sealed policy")),
        "{change}"
    );
    // What the auditor reads: the key, what it is released to, and its policy's digest.
    let policy = change["change"]["after"]["policy"]
        .as_str()
        .expect("the policy is known at plan");
    let plan_json = ws.path().join("plan.json");
    fs::write(&plan_json, ws.terraform_ok(&["show", "-json", "p.tfplan"])).unwrap();
    let report = Command::new(built_binary("safebox"))
        .arg("plan-report")
        .arg(&plan_json)
        .output()
        .unwrap();
    let report_text = String::from_utf8_lossy(&report.stdout);
    assert!(report.status.success(), "{}", text(&report));
    assert!(report_text.contains("## Sealed keys"), "{report_text}");
    assert!(report_text.contains(&sha256_hex(policy.as_bytes())), "{report_text}");
    assert!(report_text.contains(ADMIN), "{report_text}");

    ws.terraform_ok(&["apply", "-input=false", "-no-color", "p.tfplan"]);
    ws.plan_is_empty().unwrap();

    // Its timeouts change in place, and nothing else.
    let with_timeouts = sealed_key_hcl().replacen("\n}\n", "\n  timeouts {\n    delete = \"2m\"\n  }\n}\n", 1);
    ws.write_config(&provider, &format!("{}\n{with_timeouts}", image_hcl()));
    ws.terraform_ok(&["plan", "-out=t.tfplan", "-input=false", "-no-color"]);
    let plan: Value = serde_json::from_str(&ws.terraform_ok(&["show", "-json", "t.tfplan"])).unwrap();
    let actions: Vec<&Value> = plan["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["change"]["actions"] != serde_json::json!(["no-op"]))
        .map(|c| &c["change"]["actions"])
        .collect();
    assert_eq!(actions, [&serde_json::json!(["update"])], "{plan}");
    ws.terraform_ok(&["apply", "-input=false", "-no-color", "t.tfplan"]);
    ws.plan_is_empty().unwrap();

    // A key whose creation outlasts timeouts.create (KMS throttles, the SDK backs off): apply
    // stops waiting, says so and how to find a key KMS may still have made, and keeps no state.
    proxy.inject("CreateKey", 3, Fault::Throttle);
    let late = sealed_key_hcl().replacen("\"data\"", "\"late\"", 1).replacen(
        "\n}\n",
        "\n  timeouts {\n    create = \"1ms\"\n  }\n}\n",
        1,
    );
    ws.write_config(&provider, &format!("{}\n{with_timeouts}\n{late}", image_hcl()));
    let out = ws.terraform(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    assert_refused(
        &out,
        &[
            "The sealed key was not created in time",
            "longer than timeouts.create (1ms)",
            "safebox:record",
            "raise timeouts.create",
        ],
    );
    assert!(resource_values(&ws.state(), "safebox_sealed_key.late").is_none());
    ws.write_config(&provider, &format!("{}\n{with_timeouts}", image_hcl()));
    destroy(&mut ws);
    assert_moto_is_clean(&moto);
}

#[test]
fn a_publish_that_fails_says_which_call_and_leaves_no_snapshot_behind() {
    aws_environment();
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint);
    proxy.inject(
        "RegisterImage",
        1,
        Fault::Error {
            status: 400,
            code: "InvalidParameterValue".into(),
            message: "the AMI name is taken".into(),
        },
    );
    let mut ws = workspace_with_inputs();
    ws.write_config(&provider_block(&proxy, None), &image_hcl());
    let out = ws.terraform(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    assert_refused(
        &out,
        &[
            "ec2:RegisterImage failed",
            "InvalidParameterValue",
            "the AMI name is taken",
        ],
    );
    let requests = proxy.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.operation == "DeleteSnapshot" && r.succeeded()),
        "the snapshot made for the failed AMI was kept"
    );
    assert_moto_is_clean(&moto);
    assert!(ws.state_dir_leftovers().is_empty(), "{:?}", ws.state_dir_leftovers());
}

/// The tags of `resource` in `region`.
fn tags_of(endpoint: &str, region: &str, resource: &str) -> BTreeMap<String, String> {
    let xml = moto_call_in(
        endpoint,
        region,
        "ec2",
        &format!("Action=DescribeTags&Version=2016-11-15&Filter.1.Name=resource-id&Filter.1.Value.1={resource}"),
    );
    xml_values(&xml, "key")
        .into_iter()
        .zip(xml_values(&xml, "value"))
        .collect()
}

/// A check that the image's copies in `region`, as the state lists them, are exactly our
/// AMIs in moto there, tagged like the originals and naming them.
fn copies_in(endpoint: &str, region: &'static str) -> Check {
    let endpoint = endpoint.to_owned();
    Box::new(move |doc| {
        let values = resource_values(doc, "safebox_image.app").ok_or("no safebox_image.app")?;
        let copy = &values["regional_amis"][region];
        let found = xml_values(&images_in(&endpoint, region), "imageId");
        for variant in ["dev", "prod"] {
            let ami = copy[format!("{variant}_ami_id")]
                .as_str()
                .ok_or(format!("no {variant} copy in {region}: {copy}"))?;
            let original = values[format!("{variant}_ami_id")].as_str().unwrap_or_default();
            if !found.iter().any(|id| id == ami) {
                return Err(format!("{ami} is not in {region}: {found:?}"));
            }
            let tags = tags_of(&endpoint, region, ami);
            let home_tags = tags_of(&endpoint, "us-east-1", original);
            // The measurements the original carries (PCR0-2 of an "eif" image, PCR4/7/12 of
            // a "uki" one) travel with the copy.
            let pcrs: Vec<&str> = home_tags
                .keys()
                .map(String::as_str)
                .filter(|k| k.starts_with("safebox:pcr"))
                .collect();
            if pcrs.is_empty() {
                return Err(format!("{original} carries no PCR tags: {home_tags:?}"));
            }
            for key in [
                "safebox:record",
                "safebox:variant",
                "safebox:manifest-sha256",
                "safebox:image-sha256",
            ]
            .into_iter()
            .chain(pcrs)
            {
                if !tags.contains_key(key) || tags.get(key) != home_tags.get(key) {
                    return Err(format!(
                        "{ami} in {region} has {key} = {:?}, the original {:?}",
                        tags.get(key),
                        home_tags.get(key)
                    ));
                }
            }
            if tags.get("safebox:variant").map(String::as_str) != Some(variant) {
                return Err(format!("{ami} is not tagged as the {variant} image: {tags:?}"));
            }
            if tags.get("safebox:copied-from").map(String::as_str) != Some(&format!("us-east-1/{original}")) {
                return Err(format!("{ami} does not name its original {original}: {tags:?}"));
            }
            let snapshot = tags.get("safebox:snapshot").ok_or(format!("{ami} names no snapshot"))?;
            if Some(snapshot) == home_tags.get("safebox:snapshot") {
                return Err(format!("{ami} names its original's snapshot, not its own"));
            }
            let snapshot_tags = tags_of(&endpoint, region, snapshot);
            if !snapshot_tags.contains_key("safebox:uploaded") {
                return Err(format!(
                    "the copy's snapshot {snapshot} is not tagged as complete: {snapshot_tags:?}"
                ));
            }
        }
        if found.len() != 2 {
            return Err(format!("{region} holds {} AMIs of ours, not 2", found.len()));
        }
        Ok(())
    })
}

/// A check that the box runs in `region`, from the image's copy there.
fn launched_from_copy(endpoint: &str, region: &'static str) -> Check {
    launched_from(
        endpoint,
        region,
        "safebox_enclave.box",
        &format!("/regional_amis/{region}/prod_ami_id"),
    )
}

/// A check that moto's instance of box `address` in `region` runs the AMI at `pointer` in the
/// image's state (`/prod_ami_id`, `/dev_ami_id`, a copy's).
fn launched_from(endpoint: &str, region: &'static str, address: &'static str, pointer: &str) -> Check {
    let endpoint = endpoint.to_owned();
    let pointer = pointer.to_owned();
    Box::new(move |doc| {
        let ami = resource_values(doc, "safebox_image.app")
            .ok_or("no image")?
            .pointer(&pointer)
            .and_then(Value::as_str)
            .ok_or(format!("no image AMI at {pointer}"))?
            .to_owned();
        let instance = resource_values(doc, address).ok_or(format!("no {address}"))?["instance_id"]
            .as_str()
            .ok_or("no instance id")?
            .to_owned();
        let xml = moto_call_in(
            &endpoint,
            region,
            "ec2",
            &format!("Action=DescribeInstances&Version=2016-11-15&InstanceId.1={instance}"),
        );
        match xml_values(&xml, "imageId").first() {
            Some(image) if *image == ami => Ok(()),
            other => Err(format!(
                "{address} ({instance} in {region}) runs {other:?}, not {ami} ({pointer})"
            )),
        }
    })
}

/// A check that `region` holds no AMI of ours.
fn no_copies_in(endpoint: &str, region: &'static str) -> Check {
    let endpoint = endpoint.to_owned();
    Box::new(move |_| {
        let found = xml_values(&images_in(&endpoint, region), "imageId");
        if found.is_empty() {
            Ok(())
        } else {
            Err(format!("{region} still holds {found:?}"))
        }
    })
}

#[test]
fn images_are_copied_to_other_regions_shared_there_and_deleted_with_them() {
    aws_environment();
    let Some(image) = UkiImage::load() else { return };
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint);
    let agent = Agent::start(&image.pcrs(Variant::Prod));
    let provider = provider_block(&proxy, Some(&agent));
    // A box in the copy's region: a second provider, same records, launching from the copy.
    let west = format!(
        "provider \"safebox\" {{\n  alias     = \"west\"\n  state_dir = \"safebox-state\"\n{}}}\n\n{}",
        provider_block(&proxy, Some(&agent)).replace("us-east-1", "eu-west-2"),
        enclave_hcl(&agent).replacen("{\n", "{\n  provider             = safebox.west\n", 1)
    );
    let copied = |regions: &str| {
        image.hcl_with(&format!(
            "launch_permission_account_ids = [\"111122223333\"]\n  copy_to_regions = [{regions}]"
        ))
    };
    run(vec![
        Step {
            provider: provider.clone(),
            config: copied("\"eu-central-1\""),
            plan: vec![("safebox_image.app", Action::Create)],
            checks: vec![
                copies_in(&moto.endpoint, "eu-central-1"),
                no_copies_in(&moto.endpoint, "eu-west-2"),
            ],
            import: Some("safebox_image.app"),
            ..Step::default()
        },
        // Moving the copy is an in-place update: the new region gets one, the old loses it.
        Step {
            provider: provider.clone(),
            config: format!("{}\n{west}", copied("\"eu-west-2\"")),
            plan: vec![
                ("safebox_image.app", Action::Update),
                ("safebox_enclave.box", Action::Create),
            ],
            checks: vec![
                copies_in(&moto.endpoint, "eu-west-2"),
                no_copies_in(&moto.endpoint, "eu-central-1"),
                launched_from_copy(&moto.endpoint, "eu-west-2"),
            ],
            ..Step::default()
        },
        Step {
            provider: provider.clone(),
            config: format!("{}\n{west}", copied("\"us-east-1\"")),
            expect_error: vec!["copy_to_regions", "the provider's region"],
            ..Step::default()
        },
        Step {
            provider: provider.clone(),
            config: format!("{}\n{west}", copied("\"eu_central\"")),
            expect_error: vec!["copy_to_regions", "AWS region names such as \"eu-central-1\""],
            ..Step::default()
        },
    ]);
    let requests = proxy.requests();
    let homes: Vec<String> = requests
        .iter()
        .filter(|r| r.operation == "RegisterImage" && r.succeeded())
        .map(|r| r.form_value("Name").expect("RegisterImage names the AMI"))
        .collect();
    assert_eq!(homes.len(), 2, "the image was published once: {homes:?}");
    let copies: Vec<&Recorded> = requests
        .iter()
        .filter(|r| r.operation == "CopyImage" && r.succeeded())
        .collect();
    assert_eq!(copies.len(), 4, "two AMIs copied to each of two regions");
    for r in &copies {
        assert_eq!(r.form_value("SourceRegion").as_deref(), Some("us-east-1"));
        assert!(r.form_value("SourceImageId").is_some_and(|id| id.starts_with("ami-")));
        assert!(
            homes.contains(&r.form_value("Name").expect("CopyImage names the copy")),
            "a copy keeps its original's name"
        );
        assert!(r.form_value("ClientToken").is_some_and(|t| t.starts_with("safebox-")));
    }
    let shared = requests
        .iter()
        .filter(|r| r.operation == "ModifyImageAttribute" && r.succeeded())
        .filter(|r| r.form_value("LaunchPermission.Add.1.UserId").as_deref() == Some("111122223333"))
        .count();
    assert_eq!(
        shared, 6,
        "the originals and both regions' copies are shared with the auditor"
    );
    for region in ["us-east-1", "eu-central-1", "eu-west-2"] {
        assert_eq!(
            no_copies_in(&moto.endpoint, region)(&Value::Null),
            Ok(()),
            "after destroy"
        );
    }
    assert_moto_is_clean(&moto);
}

#[test]
fn a_copy_deregistered_behind_terraforms_back_is_drift_and_destroy_still_finishes() {
    aws_environment();
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint);
    let mut ws = workspace_with_inputs();
    let config = image_hcl_with("copy_to_regions = [\"eu-west-2\"]");
    ws.write_config(&provider_block(&proxy, None), &config);
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    let state = ws.state();
    let copy = resource_values(&state, "safebox_image.app").unwrap()["regional_amis"]["eu-west-2"]["dev_ami_id"]
        .as_str()
        .unwrap()
        .to_owned();
    moto_call_in(
        &moto.endpoint,
        "eu-west-2",
        "ec2",
        &format!("Action=DeregisterImage&Version=2016-11-15&ImageId={copy}"),
    );
    assert_eq!(
        snapshots_in(&moto.endpoint, "eu-west-2").len(),
        2,
        "the copies' snapshots"
    );
    let plan = ws.terraform(&["plan", "-input=false", "-no-color"]);
    let output = text(&plan);
    assert!(plan.status.success(), "{output}");
    assert!(
        output.contains("must be replaced") && output.contains("in eu-west-2: the dev AMI of image"),
        "the missing copy is not drift:\n{output}"
    );
    destroy(&mut ws);
    for region in ["us-east-1", "eu-west-2"] {
        assert_eq!(no_copies_in(&moto.endpoint, region)(&Value::Null), Ok(()));
        // Also the snapshot of the copy deregistered by hand: it is found by its record.
        assert_eq!(
            snapshots_in(&moto.endpoint, region),
            Vec::<String>::new(),
            "in {region}"
        );
    }
    assert_moto_is_clean(&moto);
    assert!(ws.state_dir_leftovers().is_empty(), "{:?}", ws.state_dir_leftovers());
}

#[test]
fn a_copy_that_fails_part_way_records_what_changed_and_the_next_apply_finishes() {
    aws_environment();
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint);
    let mut ws = workspace_with_inputs();
    let copied = |region: &str| image_hcl_with(&format!("copy_to_regions = [\"{region}\"]"));
    ws.write_config(&provider_block(&proxy, None), &copied("eu-central-1"));
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    let published = ws.state();

    // Moving the copy: the old one goes, then the new one is refused.
    proxy.inject(
        "CopyImage",
        1,
        Fault::Error {
            status: 400,
            code: "ResourceLimitExceeded".into(),
            message: "too many concurrent AMI copies".into(),
        },
    );
    ws.write_config(&provider_block(&proxy, None), &copied("ap-south-1"));
    let out = ws.terraform(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    assert_refused(
        &out,
        &[
            "copy_to_regions",
            "ec2:CopyImage failed",
            "too many concurrent AMI copies",
        ],
    );
    assert_eq!(no_copies_in(&moto.endpoint, "eu-central-1")(&Value::Null), Ok(()));
    assert_eq!(no_copies_in(&moto.endpoint, "ap-south-1")(&Value::Null), Ok(()));
    // The state says so: no copies anywhere, the same AMIs at home.
    let state = ws.state();
    let image = resource_values(&state, "safebox_image.app").unwrap();
    assert_eq!(image["copy_to_regions"], serde_json::json!([]), "{image}");
    assert_eq!(image["regional_amis"], serde_json::json!({}), "{image}");
    let before = resource_values(&published, "safebox_image.app").unwrap();
    assert_eq!(image["prod_ami_id"], before["prod_ami_id"]);

    // So the next plan copies in place instead of replacing a "missing" copy, and converges.
    let plan = ws.terraform(&["plan", "-out=p.tfplan", "-input=false", "-no-color"]);
    let output = text(&plan);
    assert!(
        output.contains("updated in-place") && !output.contains("must be replaced"),
        "{output}"
    );
    // The auditor's report says where the AMIs go.
    let plan_json = ws.path().join("plan.json");
    fs::write(&plan_json, ws.terraform_ok(&["show", "-json", "p.tfplan"])).unwrap();
    let report = Command::new(built_binary("safebox"))
        .arg("plan-report")
        .arg(&plan_json)
        .output()
        .unwrap();
    assert!(report.status.success(), "{}", text(&report));
    let report_text = String::from_utf8_lossy(&report.stdout);
    assert!(report_text.contains("copied to ap-south-1"), "{report_text}");
    ws.terraform_ok(&["apply", "-input=false", "-no-color", "p.tfplan"]);
    assert_eq!(copies_in(&moto.endpoint, "ap-south-1")(&ws.state()), Ok(()));
    ws.plan_is_empty().unwrap();
    destroy(&mut ws);
    for region in ["us-east-1", "eu-central-1", "ap-south-1"] {
        assert_eq!(no_copies_in(&moto.endpoint, region)(&Value::Null), Ok(()));
    }
    assert_moto_is_clean(&moto);
}

/// The user's tags of `requests` of `operation` (EC2's `Tag.N.Key`/`Tag.N.Value` form, or
/// KMS's `Tags`/`TagKeys` JSON), `safebox:` keys left out; a key without a value maps to "".
fn user_tags_sent(requests: &[Recorded], operation: &str) -> Vec<BTreeMap<String, String>> {
    requests
        .iter()
        .filter(|r| r.operation == operation && r.succeeded())
        .map(|r| {
            let mut tags = BTreeMap::new();
            if let Some(json) = r.json() {
                for tag in json["Tags"].as_array().into_iter().flatten() {
                    let key = tag["TagKey"].as_str().unwrap_or_default().to_owned();
                    tags.insert(key, tag["TagValue"].as_str().unwrap_or_default().to_owned());
                }
                for key in json["TagKeys"].as_array().into_iter().flatten() {
                    tags.insert(key.as_str().unwrap_or_default().to_owned(), String::new());
                }
            } else {
                tags = form_tags(r, "Tag.");
            }
            tags.retain(|k, _| !k.starts_with("safebox:"));
            tags
        })
        .filter(|tags| !tags.is_empty())
        .collect()
}

/// `tags` as terraform-provider-aws users know them: on the AMIs and the KMS key as they are
/// created (CreateKey carries them, so a tag policy that requires them at creation holds), a
/// change of tags made in place (CreateTags/DeleteTags on both AMIs, TagResource/UntagResource
/// on the key) and never by replacing the image or the key, and AWS's or the provider's own
/// keys refused at plan, naming the attribute.
#[test]
fn tags_go_on_at_creation_and_change_in_place() {
    aws_environment();
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint);
    let agent = Agent::start(&BTreeMap::new());
    let provider = provider_block(&proxy, Some(&agent));
    let tagged = |tags: &str| {
        format!(
            "{}\n{}",
            image_hcl_with(&format!("tags = {{ {tags} }}")),
            sealed_key_hcl().replacen("{\n", &format!("{{\n  tags               = {{ {tags} }}\n"), 1)
        )
    };
    let amis = Rc::new(RefCell::new(None));
    run(vec![
        Step {
            files: input_files(),
            provider: provider.clone(),
            config: tagged(r#"team = "risk", "cost-center" = "42""#),
            plan: vec![
                ("safebox_image.app", Action::Create),
                ("safebox_sealed_key.data", Action::Create),
            ],
            checks: vec![remember(&amis)],
            ..Step::default()
        },
        Step {
            provider: provider.clone(),
            config: tagged(r#"team = "platform", owner = "ops""#),
            plan: vec![
                ("safebox_image.app", Action::Update),
                ("safebox_sealed_key.data", Action::Update),
            ],
            checks: vec![value_is("safebox_sealed_key.data", "/tags", "the new tags", |v| {
                *v == serde_json::json!({"team": "platform", "owner": "ops"})
            })],
            ..Step::default()
        },
        Step {
            provider: provider.clone(),
            config: tagged(r#""safebox:record" = "img-forged""#),
            expect_error: vec!["tags", "are reserved", "choose another key"],
            ..Step::default()
        },
    ]);
    let requests = proxy.requests();
    let created = [("team", "risk"), ("cost-center", "42")]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into();
    let changed: BTreeMap<String, String> = [("team", "platform"), ("owner", "ops")]
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .into();
    let removed: BTreeMap<String, String> = [("cost-center".to_owned(), String::new())].into();

    // At creation: each AMI's tags and the key's CreateKey carry the user's.
    let create_tags = user_tags_sent(&requests, "CreateTags");
    assert_eq!(
        create_tags.iter().filter(|t| **t == created).count(),
        2,
        "both AMIs tagged at creation: {create_tags:?}"
    );
    assert_eq!(user_tags_sent(&requests, "CreateKey"), vec![created.clone()]);
    // In place: both AMIs in one CreateTags and one DeleteTags, the key by TagResource and
    // UntagResource; nothing is published or created again.
    let update = requests
        .iter()
        .find(|r| {
            r.operation == "CreateTags"
                && user_tags_sent(std::slice::from_ref(r), "CreateTags") == vec![changed.clone()]
        })
        .expect("a CreateTags of the new tags");
    let image = resource_values(amis.borrow().as_ref().expect("the first step ran"), "safebox_image.app")
        .expect("image in state")
        .clone();
    let mut retagged: Vec<String> = update
        .form()
        .into_iter()
        .filter(|(k, _)| k.starts_with("ResourceId."))
        .map(|(_, v)| v)
        .collect();
    retagged.sort();
    let mut both = vec![
        image["dev_ami_id"].as_str().unwrap().to_owned(),
        image["prod_ami_id"].as_str().unwrap().to_owned(),
    ];
    both.sort();
    assert_eq!(retagged, both, "the new tags go on both AMIs");
    assert_eq!(user_tags_sent(&requests, "DeleteTags"), vec![removed.clone()]);
    assert_eq!(user_tags_sent(&requests, "TagResource"), vec![changed.clone()]);
    assert_eq!(user_tags_sent(&requests, "UntagResource"), vec![removed]);
    for operation in ["RegisterImage", "CreateKey"] {
        assert_eq!(
            requests
                .iter()
                .filter(|r| r.operation == operation && r.succeeded())
                .count(),
            if operation == "CreateKey" { 1 } else { 2 },
            "{operation}: a change of tags replaces nothing"
        );
    }
    drop(agent);
}

#[test]
fn aws_only_features_are_refused_on_the_local_backend_with_the_fix() {
    let shared = image_hcl_with("launch_permission_account_ids = [\"111122223333\"]");
    run(vec![
        Step {
            files: input_files(),
            config: format!("{}\n{}", image_hcl(), sealed_key_hcl()),
            expect_error: vec!["safebox_sealed_key needs the aws backend", "backend = \"aws\""],
            ..Step::default()
        },
        Step {
            config: shared,
            expect_error: vec![
                "launch_permission_account_ids",
                "Launch permissions need the aws backend",
            ],
            ..Step::default()
        },
        Step {
            config: image_hcl_with("launch_permission_account_ids = [\"12345\"]"),
            expect_error: vec!["launch_permission_account_ids", "12-digit AWS account ids"],
            ..Step::default()
        },
        Step {
            config: image_hcl_with("copy_to_regions = [\"eu-central-1\"]"),
            expect_error: vec!["copy_to_regions", "Copies to other regions need the aws backend"],
            ..Step::default()
        },
        Step {
            config: format!("{}\n{}", image_hcl(), sealed_key_hcl().replace(ADMIN, "KeyAdmin")),
            expect_error: vec!["administrator_arns", "arn:aws:iam::123456789012:role/KeyAdmin"],
            ..Step::default()
        },
    ]);
}

#[test]
fn sharing_a_governed_image_or_binding_a_key_to_its_dev_variant_needs_approval() {
    use safebox_acceptance_tests::governed::{approve, planned_change, policy, rule};
    const APPLY: &[&str] = &["apply", "-auto-approve", "-input=false", "-no-color"];
    aws_environment();
    let moto = Moto::start();
    let proxy = Proxy::start(&moto.endpoint);
    let mut ws = workspace_with_inputs();
    fs::create_dir_all(ws.path().join("approvals")).unwrap();
    let provider = format!("{}  approvals_dir = \"approvals\"\n", provider_block(&proxy, None));
    let auditors = r#"["auditor"]"#;
    let gov = policy(
        &format!(
            "{}{}{}",
            rule("image.publish", 1, auditors),
            rule("image.share", 1, auditors),
            rule("key.bind", 1, auditors)
        ),
        "",
    );
    ws.write_config(&provider, &gov);
    ws.terraform_ok(APPLY);
    let governed = "policy_id = safebox_policy.gov.id";
    ws.write_config(&provider, &format!("{gov}{}", image_hcl_with(governed)));
    let (digest, _, _) = planned_change(&mut ws, "safebox_image.app");
    approve(&ws, "auditor-a", "image.publish", &digest, "publish.json");
    ws.terraform_ok(&["apply", "-input=false", "-no-color", "p.tfplan"]);

    // `config` changes `address` by the governed `action`: without its approval apply is
    // refused and no `operation` reaches AWS; approved by `signer`, `operation` is sent `sent`
    // times.
    let governed_change = |ws: &mut Workspace,
                           config: &str,
                           (address, action): (&str, &str),
                           (operation, sent): (&str, usize),
                           signer: &str| {
        proxy.clear();
        ws.write_config(&provider, config);
        let (digest, status, _) = planned_change(ws, address);
        assert!(status.starts_with(&format!("0 of 1 for {action}")), "{status}");
        let out = ws.terraform(APPLY);
        assert_refused(
            &out,
            &[&format!("{action} is not approved"), &digest, "Signed by: nobody"],
        );
        assert!(
            proxy.requests_for(operation).is_empty(),
            "{operation} was sent without approval"
        );
        approve(ws, signer, action, &digest, &format!("{action}.json"));
        ws.terraform_ok(APPLY);
        assert_eq!(proxy.requests_for(operation).len(), sent, "{operation} once approved");
    };
    // Letting another account launch the AMIs (the dev one has SSH) is image.share.
    let shared = image_hcl_with(&format!(
        "{governed}\n  launch_permission_account_ids = [\"210987654321\"]"
    ));
    governed_change(
        &mut ws,
        &format!("{gov}{shared}"),
        ("safebox_image.app", "image.share"),
        ("ModifyImageAttribute", 2),
        "auditor-b",
    );
    // A key released to the dev variant (which has SSH) is key.bind.
    let dev_key = sealed_key_hcl().replacen("\n}\n", "\n  variant            = \"dev\"\n}\n", 1);
    governed_change(
        &mut ws,
        &format!("{gov}{shared}{dev_key}"),
        ("safebox_sealed_key.data", "key.bind"),
        ("CreateKey", 1),
        "auditor-a",
    );
    ws.plan_is_empty().unwrap();
    destroy(&mut ws);
    assert_moto_is_clean(&moto);
}
