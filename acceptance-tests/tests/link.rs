//! `safebox_attested_link` against the real Terraform: both boxes prove themselves to each
//! other, data sealed by one opens only in the other (never with anything in Terraform state
//! or the state_dir), a changed box breaks the link, and destroy drops the keys.

use std::fs;
use std::path::{Path, PathBuf};

use safebox::agent_api::AgentClient;
use safebox::link::opens_with_raw_key;
use safebox_acceptance_tests::{assert_refused, mentions, resource_values, text, Workspace};
use serde_json::Value;

const LINK: &str = "safebox_attested_link.link";

fn inputs() -> Vec<(String, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/pair");
    [
        "inputs/bzImage",
        "inputs/init.tar",
        "inputs/app.bin",
        "inputs/weights.bin",
    ]
    .iter()
    .map(|n| ((*n).to_owned(), fs::read(dir.join(n)).unwrap()))
    .collect()
}

fn sha(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

fn config(files: &[(String, Vec<u8>)], link_extra: &str) -> String {
    let digest = |name: &str| sha(&files.iter().find(|(n, _)| n == name).unwrap().1);
    let image = |name: &str, file: &str| {
        format!(
            r#"
resource "safebox_image" "{name}" {{
  name = "{name}"
  kernel {{
    source = "inputs/bzImage"
    sha256 = "{kernel}"
  }}
  layer {{
    name   = "init"
    source = "inputs/init.tar"
    sha256 = "{init}"
  }}
  layer {{
    name        = "payload"
    source      = "{file}"
    sha256      = "{payload}"
    destination = "/payload"
  }}
}}
resource "safebox_enclave" "{name}" {{
  image_id = safebox_image.{name}.id
}}
"#,
            kernel = digest("inputs/bzImage"),
            init = digest("inputs/init.tar"),
            payload = digest(file),
        )
    };
    format!(
        "{}{}\nresource \"safebox_attested_link\" \"link\" {{\n  a_enclave_id = safebox_enclave.data.id\n  b_enclave_id = safebox_enclave.model.id\n  {link_extra}\n}}\n",
        image("data", "inputs/app.bin"),
        image("model", "inputs/weights.bin")
    )
}

const SIMULATED: &str = "  attestation {\n    allow_simulated = true\n  }";

fn workspace() -> Workspace {
    let mut ws = Workspace::new();
    for (name, content) in inputs() {
        ws.write_file(&name, content);
    }
    ws
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                out.extend(files_under(&path));
            } else {
                out.push(path);
            }
        }
    }
    out
}

#[test]
fn data_sealed_in_one_box_opens_only_in_the_other() {
    let mut ws = workspace();
    let files = inputs();
    ws.write_config(SIMULATED, &config(&files, ""));
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    ws.plan_is_empty().unwrap();
    let state = ws.state();
    let link = resource_values(&state, LINK).expect("link").clone();
    assert_eq!(link["status"], "established");
    assert_eq!(link["binding_sha256"].as_str().unwrap().len(), 64);
    let endpoint = |name: &str| {
        resource_values(&state, &format!("safebox_enclave.{name}")).unwrap()["endpoint"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let id = link["id"].as_str().unwrap().to_owned();
    let timeout = std::time::Duration::from_secs(10);
    // The workload inside each box reaches the link key through the agent's socket.
    let workload = |name: &str| {
        let box_id = resource_values(&state, &format!("safebox_enclave.{name}")).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        AgentClient::workload(ws.state_dir().join("boxes").join(box_id).join("workload.sock"), timeout)
    };
    let (a, b) = (workload("data"), workload("model"));
    // Through the network, nobody can use the key: the listener has no seal or open.
    for name in ["data", "model"] {
        let network = AgentClient::new(&endpoint(name), timeout).unwrap();
        let err = network.link_seal(&id, b"patient 4711").unwrap_err();
        assert!(
            matches!(err, safebox::agent_api::AgentError::Status { status: 404, .. }),
            "{err}"
        );
    }

    // Both boxes hold the link, with the binding the provider recorded.
    for agent in [&a, &b] {
        assert_eq!(
            agent.link_status(&id).unwrap().unwrap().binding_sha256,
            link["binding_sha256"].as_str().unwrap()
        );
    }
    // A message sealed inside A opens inside B, and the other way round.
    let sealed = a.link_seal(&id, b"patient 4711: diagnosis").unwrap();
    assert!(
        !sealed.windows(9).any(|w| w == b"diagnosis"),
        "what crosses is ciphertext"
    );
    assert_eq!(b.link_open(&id, &sealed).unwrap(), b"patient 4711: diagnosis");
    assert_eq!(
        a.link_open(&id, &b.link_seal(&id, b"model answer").unwrap()).unwrap(),
        b"model answer"
    );
    // Nothing in Terraform's state or the provider's state_dir opens it: no 32-byte window of
    // any of those files is the key.
    let mut places = files_under(&ws.state_dir());
    places.push(ws.path().join("terraform.tfstate"));
    for place in places {
        let bytes = fs::read(&place).unwrap_or_default();
        let decoded = hex_windows(&bytes);
        let candidates = bytes
            .windows(32)
            .chain(decoded.iter().map(Vec::as_slice))
            .collect::<Vec<_>>();
        assert!(
            candidates.iter().all(|key| !opens_with_raw_key(key, &sealed)),
            "{} holds the link key",
            place.display()
        );
    }
    // A changed ciphertext does not open.
    let mut changed = sealed.clone();
    changed[15] ^= 1;
    assert!(b.link_open(&id, &changed).is_err());

    // Destroying the link drops the key in both boxes: neither seals nor opens any more.
    ws.write_config(
        SIMULATED,
        config(&files, "")
            .split("resource \"safebox_attested_link\"")
            .next()
            .unwrap(),
    );
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    for agent in [&a, &b] {
        let err = agent.link_seal(&id, b"after destroy").unwrap_err();
        assert!(
            matches!(err, safebox::agent_api::AgentError::Status { status: 404, .. }),
            "{err}"
        );
        assert!(agent.link_open(&id, &sealed).is_err());
    }

    ws.terraform_ok(&["destroy", "-auto-approve", "-input=false", "-no-color"]);
    assert!(ws.state_dir_leftovers().is_empty(), "{:?}", ws.state_dir_leftovers());
}

/// Every 64-hex-digit run in `bytes`, decoded (keys written as hex).
fn hex_windows(bytes: &[u8]) -> Vec<Vec<u8>> {
    let text = String::from_utf8_lossy(bytes);
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    for start in 0..chars.len().saturating_sub(63) {
        let window: String = chars[start..start + 64].iter().collect();
        if let Ok(decoded) = hex::decode(&window) {
            out.push(decoded);
        }
    }
    out
}

#[test]
fn a_wrong_expected_pcr_fails_closed_naming_the_side_and_the_pcr() {
    let mut ws = workspace();
    let files = inputs();
    let wrong = format!("b_expected_pcrs = {{ \"2\" = \"{}\" }}", "ab".repeat(48));
    ws.write_config(SIMULATED, &config(&files, &wrong));
    let out = ws.terraform(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    assert_refused(&out, &["Mutual attestation failed", "side b", "PCR2"]);
    ws.write_config(
        SIMULATED,
        config(&files, "")
            .split("resource \"safebox_attested_link\"")
            .next()
            .unwrap(),
    );
    ws.terraform_ok(&["destroy", "-auto-approve", "-input=false", "-no-color"]);
}

#[test]
fn a_box_that_stops_breaks_the_link_and_both_are_replaced() {
    let mut ws = workspace();
    let files = inputs();
    ws.write_config(SIMULATED, &config(&files, ""));
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    let state = ws.state();
    let first = resource_values(&state, LINK).unwrap()["id"].clone();
    // Stop the model box behind Terraform's back.
    let model_dir = ws.state_dir().join("boxes");
    let model_id = resource_values(&state, "safebox_enclave.model").unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let record: Value = serde_json::from_slice(&fs::read(model_dir.join(&model_id).join("box.json")).unwrap()).unwrap();
    std::process::Command::new("kill")
        .arg("-9")
        .arg(record["pid"].to_string())
        .status()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));

    let out = ws.terraform(&["plan", "-detailed-exitcode", "-input=false", "-no-color"]);
    let output = text(&out);
    assert_eq!(out.status.code(), Some(2), "{output}");
    assert!(
        mentions(&output, "safebox_attested_link.link must be replaced"),
        "{output}"
    );
    ws.terraform_ok(&["apply", "-auto-approve", "-input=false", "-no-color"]);
    let after = ws.state();
    let link = resource_values(&after, LINK).unwrap();
    assert_ne!(link["id"], first);
    assert_eq!(link["status"], "established");
    ws.plan_is_empty().unwrap();
    ws.terraform_ok(&["destroy", "-auto-approve", "-input=false", "-no-color"]);
}
