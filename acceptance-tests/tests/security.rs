//! Every trust claim, attacked the way issue 11's review attacked it, through the real
//! Terraform and the real agents: anyone who can reach a box's port, another user on the
//! machine, an operator who can write to the `state_dir`. Each attack is refused and says why;
//! the honest path still works.

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use safebox::agent_api::AgentClient;
use safebox::box_key::BoxKey;
use safebox_acceptance_tests::governed::{
    approve, audit_verify, image, planned_change, policy, rule, workspace, PROVIDER,
};
use safebox_acceptance_tests::{assert_refused, mentions, resource_values, text, Workspace};
use serde_json::Value;

const APPLY: &[&str] = &["apply", "-auto-approve", "-input=false", "-no-color"];
const DESTROY: &[&str] = &["destroy", "-auto-approve", "-input=false", "-no-color"];

/// Two boxes of the example image and a link between them.
fn linked_boxes() -> String {
    format!(
        "{}resource \"safebox_enclave\" \"a\" {{\n  image_id = safebox_image.app.id\n}}\nresource \"safebox_enclave\" \"b\" {{\n  image_id  = safebox_image.app.id\n  cpu_count = 1\n}}\nresource \"safebox_attested_link\" \"ab\" {{\n  a_enclave_id = safebox_enclave.a.id\n  b_enclave_id = safebox_enclave.b.id\n}}\n",
        image("data-box", "")
    )
}

/// One raw HTTP/1.1 request to `endpoint` (`http://HOST:PORT`): (status, body).
fn raw(endpoint: &str, method: &str, path: &str, headers: &[(&str, String)], body: &[u8]) -> (u16, String) {
    let host = endpoint.trim_start_matches("http://");
    let mut stream = TcpStream::connect(host).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body).unwrap();
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).unwrap();
    let answer = String::from_utf8_lossy(&bytes).into_owned();
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn value<'a>(state: &'a Value, address: &str) -> &'a Value {
    resource_values(state, address).unwrap_or_else(|| panic!("{address} in state"))
}

/// The box key the provider keeps for `box_id` (the test reads it as an operator could).
fn box_key(ws: &Workspace, box_id: &str) -> BoxKey {
    let hex = fs::read_to_string(ws.state_dir().join("box-keys").join(format!("{box_id}.key"))).unwrap();
    BoxKey::from_hex(hex.trim()).unwrap()
}

fn now_ms() -> u64 {
    u64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis(),
    )
    .unwrap()
}

#[test]
fn anyone_on_a_boxes_port_may_attest_it_but_not_use_or_manage_its_links() {
    let mut ws = workspace();
    ws.write_config(PROVIDER, &linked_boxes());
    ws.terraform_ok(APPLY);
    let state = ws.state();
    let (a, link) = (
        value(&state, "safebox_enclave.a"),
        value(&state, "safebox_attested_link.ab"),
    );
    let endpoint = a["endpoint"].as_str().unwrap().to_owned();
    let box_id = a["id"].as_str().unwrap().to_owned();
    let agent_key = a["attestation"]["public_key"].as_str().unwrap().to_owned();
    let id = link["id"].as_str().unwrap().to_owned();
    let binding = link["binding_sha256"].as_str().unwrap().to_owned();
    let workload = AgentClient::workload(
        ws.state_dir().join("boxes").join(&box_id).join("workload.sock"),
        Duration::from_secs(10),
    );

    // Attestation is for anyone.
    let (status, _) = raw(
        &endpoint,
        "GET",
        &format!("/attestation?nonce={}", "00".repeat(32)),
        &[],
        b"",
    );
    assert_eq!(status, 200);

    // The link key is not on the network at all.
    for op in ["seal", "open"] {
        let (status, _) = raw(&endpoint, "POST", &format!("/links/{id}/{op}"), &[], b"hello");
        assert_eq!(status, 404, "{op} must not be served on the network listener");
    }

    // Management without the box's key: refused, whatever it asks. Re-keying the link to
    // other expectations, dropping it, and using the agent to probe a port all fail.
    let probe = TcpListener::bind("127.0.0.1:0").unwrap();
    probe.set_nonblocking(true).unwrap();
    let probed = format!("http://{}", probe.local_addr().unwrap());
    let rekey =
        serde_json::json!({"peer_endpoint": probed, "expected_pcrs": {"0": "00".repeat(48)}, "max_age_ms": 600000});
    for (method, path, body) in [
        ("GET", format!("/links/{id}"), Vec::new()),
        ("DELETE", format!("/links/{id}"), Vec::new()),
        ("POST", format!("/links/{id}/peer"), rekey.to_string().into_bytes()),
        ("POST", "/links/probe/peer".to_owned(), rekey.to_string().into_bytes()),
        (
            "POST",
            format!("/links/{id}/establish"),
            b"{\"side\":\"a\",\"a_document_sha256\":\"\",\"b_document_sha256\":\"\"}".to_vec(),
        ),
    ] {
        let (status, answer) = raw(&endpoint, method, &path, &[], &body);
        assert_eq!(status, 401, "{method} {path}: {answer}");
        assert!(
            answer.contains("not signed with the box's key"),
            "{method} {path}: {answer}"
        );
        // Signed with some other key: still refused.
        let forged = BoxKey::generate().authorize(&agent_key, method, &path, &body, now_ms());
        let (status, answer) = raw(&endpoint, method, &path, &[("Authorization", forged)], &body);
        assert_eq!(status, 401, "{method} {path}: {answer}");
        assert!(answer.contains("does not verify"), "{answer}");
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        probe.accept().is_err(),
        "the agent was made to connect to a probed port"
    );
    // The link is untouched.
    assert_eq!(workload.link_status(&id).unwrap().unwrap().binding_sha256, binding);

    // Even the operator, who holds the box key, cannot re-key an established link: an id is
    // established once; other expectations are a new link.
    let key = box_key(&ws, &box_id);
    let body = rekey.to_string().into_bytes();
    let path = format!("/links/{id}/peer");
    let signed = key.authorize(&agent_key, "POST", &path, &body, now_ms());
    let (status, answer) = raw(&endpoint, "POST", &path, &[("Authorization", signed)], &body);
    assert_eq!(status, 409, "{answer}");
    assert!(answer.contains("established already"), "{answer}");

    // A signed request is good once: replayed verbatim, it is refused.
    let path = format!("/links/{id}");
    let signed = key.authorize(&agent_key, "GET", &path, b"", now_ms());
    let (status, _) = raw(&endpoint, "GET", &path, &[("Authorization", signed.clone())], b"");
    assert_eq!(status, 200);
    let (status, answer) = raw(&endpoint, "GET", &path, &[("Authorization", signed)], b"");
    assert_eq!(status, 401, "{answer}");
    assert!(answer.contains("used before"), "{answer}");

    // What lets one manage a box or use its links is this user's alone.
    let mode = |path: &Path| fs::metadata(path).unwrap().mode() & 0o777;
    assert_eq!(mode(&ws.state_dir().join("boxes").join(&box_id)), 0o700);
    assert_eq!(
        mode(&ws.state_dir().join("boxes").join(&box_id).join("workload.sock")),
        0o600
    );
    assert_eq!(mode(&ws.state_dir().join("box-keys")), 0o700);
    assert_eq!(
        mode(&ws.state_dir().join("box-keys").join(format!("{box_id}.key"))),
        0o600
    );
    // And the key is nowhere in Terraform's state.
    let tfstate = fs::read_to_string(ws.path().join("terraform.tfstate")).unwrap();
    assert!(
        !tfstate.contains(&fs::read_to_string(ws.state_dir().join("box-keys").join(format!("{box_id}.key"))).unwrap())
    );

    ws.terraform_ok(DESTROY);
    assert!(ws.state_dir_leftovers().is_empty(), "{:?}", ws.state_dir_leftovers());
}

/// The build cache folder of this user in the workspace's temporary folder.
fn cache_root(ws: &Workspace) -> std::path::PathBuf {
    let uid = fs::metadata("/proc/self").unwrap().uid();
    ws.path().join(".tmp").join(format!("safebox-{uid}"))
}

fn running_as_root() -> bool {
    let root = fs::metadata("/proc/self").unwrap().uid() == 0;
    assert!(
        root || std::env::var("CI").as_deref() != Ok("true"),
        "this test plays another local user with chown and needs root, as CI has"
    );
    if !root {
        eprintln!("skipping: playing another local user needs root (CI runs as root)");
    }
    root
}

#[test]
fn another_local_user_cannot_plant_a_build_and_a_damaged_one_is_rebuilt() {
    if !running_as_root() {
        return;
    }
    let mut ws = workspace();
    let config = image("data-box", "");
    ws.write_config("", &config);
    // Another user made the cache folder first: it is refused, naming the owner and the fix.
    let root = cache_root(&ws);
    fs::create_dir_all(&root).unwrap();
    std::os::unix::fs::chown(&root, Some(65534), Some(65534)).unwrap();
    let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert_refused(
        &out,
        &["build cache cannot be trusted", "other users can write to (owner 65534"],
    );
    // Ours, but open for others to write: refused too.
    std::os::unix::fs::chown(&root, Some(0), Some(0)).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o777)).unwrap();
    let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert_refused(
        &out,
        &[
            "build cache cannot be trusted",
            "other users can write to (owner 0, mode 777",
        ],
    );
    fs::remove_dir_all(&root).unwrap();

    // The honest path: plan, then one byte of a cached layer changes before apply. The plan
    // after it rebuilds instead of failing forever, and what is published is what the plan
    // measured.
    let (_, _, _) = planned_change(&mut ws, "safebox_image.app");
    let plan: Value = serde_json::from_str(&ws.terraform_ok(&["show", "-json", "p.tfplan"])).unwrap();
    let planned = resource_values(&plan, "safebox_image.app").unwrap()["prod_measurements"].clone();
    let entry = fs::read_dir(fs::read_dir(&root).unwrap().next().unwrap().unwrap().path())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .unwrap();
    let layer = fs::read_dir(&entry)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n != "build.json") && fs::metadata(p).unwrap().len() > 0)
        .unwrap();
    let mut bytes = fs::read(&layer).unwrap();
    bytes[0] ^= 0xff;
    fs::write(&layer, bytes).unwrap();
    ws.terraform_ok(&["plan", "-out=p.tfplan", "-input=false", "-no-color"]);
    ws.terraform_ok(&["apply", "-input=false", "-no-color", "p.tfplan"]);
    let state = ws.state();
    let image = value(&state, "safebox_image.app");
    assert_eq!(image["prod_measurements"], planned);
    use sha2::Digest as _;
    let published = fs::read(image["prod_artifact"].as_str().unwrap()).unwrap();
    assert_eq!(
        hex::encode(sha2::Sha256::digest(published)),
        planned["image_sha256"].as_str().unwrap()
    );
    ws.terraform_ok(DESTROY);
}

#[test]
fn one_key_cannot_count_as_two_signers_however_it_is_encoded() {
    let mut ws = workspace();
    let keys = safebox_acceptance_tests::governed::keys_dir();
    // auditor-b's P-256 key with its point compressed, as openssl can write it.
    let compressed = std::process::Command::new("openssl")
        .args(["ec", "-pubin", "-in"])
        .arg(keys.join("auditor-b.pub.pem"))
        .args(["-conv_form", "compressed", "-pubout"])
        .output()
        .unwrap();
    assert!(compressed.status.success(), "{}", text(&compressed));
    ws.write_file("keys/b-compressed.pem", &compressed.stdout);
    // auditor-a's Ed25519 key with NULL algorithm parameters.
    let pem = fs::read_to_string(keys.join("auditor-a.pub.pem")).unwrap();
    let der = base64_decode(&pem);
    let mut with_null = vec![0x30, 0x2c, 0x30, 0x07, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x05, 0x00];
    with_null.extend_from_slice(&der[9..]);
    ws.write_file(
        "keys/a-null.pem",
        format!(
            "-----BEGIN PUBLIC KEY-----\n{}\n-----END PUBLIC KEY-----\n",
            base64_encode(&with_null)
        ),
    );
    for (key, reason) in [
        ("keys/b-compressed.pem", "same public key as signer \"auditor-b\""),
        ("keys/a-null.pem", "RFC 8410"),
    ] {
        let config = policy(&rule("image.publish", 2, r#"["auditor"]"#), "")
            .replacen(
                &format!("public_key_pem = file(\"{}/auditor-c.pub.pem\")", keys.display()),
                &format!("public_key_pem = file(\"{key}\")"),
                1,
            )
            .replacen("role           = \"security\"", "role           = \"auditor\"", 1);
        ws.write_config(PROVIDER, &config);
        let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
        assert_refused(&out, &["signer \"auditor-c\" public_key_pem", reason]);
    }
}

fn base64_decode(pem: &str) -> Vec<u8> {
    use base64::Engine as _;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD.decode(body).unwrap()
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

#[test]
fn an_approval_authorises_one_change_of_one_resource_once() {
    let mut ws = workspace();
    let rules = rule("enclave.deploy", 1, r#"["auditor"]"#);
    // Two identical boxes: one approval cannot deploy both.
    let boxes = "resource \"safebox_enclave\" \"box\" {\n  count     = 2\n  image_id  = safebox_image.app.id\n  policy_id = safebox_policy.gov.id\n}\n";
    ws.write_config(PROVIDER, &format!("{}{}", policy(&rules, ""), image("data-box", "")));
    ws.terraform_ok(APPLY);
    ws.write_config(
        PROVIDER,
        &format!("{}{}{boxes}", policy(&rules, ""), image("data-box", "")),
    );
    let (digest, _, _) = planned_change(&mut ws, "safebox_enclave.box[0]");
    let (other, _, _) = planned_change(&mut ws, "safebox_enclave.box[1]");
    assert_eq!(digest, other, "identical boxes planned together share a digest");
    approve(&ws, "auditor-a", "enclave.deploy", &digest, "a.json");
    let out = ws.terraform(&["apply", "-input=false", "-no-color", "p.tfplan"]);
    assert_refused(
        &out,
        &[
            "enclave.deploy was approved for another change",
            &digest,
            "audit log entry",
        ],
    );
    let state = ws.state();
    let deployed: Vec<&Value> = ["safebox_enclave.box[0]", "safebox_enclave.box[1]"]
        .iter()
        .filter_map(|a| resource_values(&state, a))
        .collect();
    assert_eq!(deployed.len(), 1, "exactly one box used the approval");
    // The next plan gives the other box a digest of its own, which the old approval does not
    // cover; signing it deploys the box.
    let pending = if resource_values(&state, "safebox_enclave.box[0]").is_some() {
        "safebox_enclave.box[1]"
    } else {
        "safebox_enclave.box[0]"
    };
    let (next, status, _) = planned_change(&mut ws, pending);
    assert_ne!(next, digest);
    assert!(status.starts_with("0 of 1 for enclave.deploy"), "{status}");
    approve(&ws, "auditor-a", "enclave.deploy", &next, "a2.json");
    ws.terraform_ok(&["apply", "-input=false", "-no-color", "p.tfplan"]);
    ws.plan_is_empty().unwrap();
    let verified = audit_verify(&ws, &[]);
    assert!(verified.status.success(), "{}", text(&verified));
    ws.terraform_ok(DESTROY);
}

#[test]
fn what_uses_a_governed_image_is_governed_by_its_policy() {
    let mut ws = workspace();
    let rules = format!(
        "{}{}",
        rule("image.publish", 1, r#"["auditor"]"#),
        rule("enclave.deploy", 2, r#"["auditor"]"#)
    );
    let governed = image("data-box", "policy_id         = safebox_policy.gov.id");
    ws.write_config(PROVIDER, &policy(&rules, ""));
    ws.terraform_ok(APPLY);
    ws.write_config(PROVIDER, &format!("{}{governed}", policy(&rules, "")));
    let (digest, _, _) = planned_change(&mut ws, "safebox_image.app");
    approve(&ws, "auditor-a", "image.publish", &digest, "publish.json");
    ws.terraform_ok(&["apply", "-input=false", "-no-color", "p.tfplan"]);
    let policy_id = value(&ws.state(), "safebox_policy.gov")["id"]
        .as_str()
        .unwrap()
        .to_owned();

    // A box without policy_id is governed by the image's policy all the same.
    let box_hcl = "resource \"safebox_enclave\" \"box\" {\n  image_id = safebox_image.app.id\n}\n";
    ws.write_config(PROVIDER, &format!("{}{governed}{box_hcl}", policy(&rules, "")));
    let (digest, status, _) = planned_change(&mut ws, "safebox_enclave.box");
    assert!(digest.starts_with("sha256:"), "the box is governed: {digest}");
    assert!(status.starts_with("0 of 2 for enclave.deploy"), "{status}");
    let plan: Value = serde_json::from_str(&ws.terraform_ok(&["show", "-json", "p.tfplan"])).unwrap();
    assert_eq!(
        resource_values(&plan, "safebox_enclave.box").unwrap()["policy_id"],
        policy_id.as_str()
    );
    let out = ws.terraform(&["apply", "-input=false", "-no-color", "p.tfplan"]);
    assert_refused(&out, &["enclave.deploy is not approved", "Signed by: nobody"]);

    // Naming another policy does not escape it.
    let other = policy(&rules, "")
        .replace(
            "resource \"safebox_policy\" \"gov\"",
            "resource \"safebox_policy\" \"other\"",
        )
        .replace("customer-data", "other");
    let escaping = "resource \"safebox_enclave\" \"box\" {\n  image_id  = safebox_image.app.id\n  policy_id = safebox_policy.other.id\n}\n";
    ws.write_config(PROVIDER, &format!("{}{other}{governed}", policy(&rules, "")));
    ws.terraform_ok(APPLY);
    ws.write_config(PROVIDER, &format!("{}{other}{governed}{escaping}", policy(&rules, "")));
    let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert_refused(&out, &["A box takes its image's policy", &policy_id]);
    ws.write_config(PROVIDER, &format!("{}{other}{governed}", policy(&rules, "")));
    ws.terraform_ok(DESTROY);
}

#[test]
fn a_cut_log_or_a_rewritten_policy_record_stops_every_governed_change() {
    let mut ws = workspace();
    let rules = rule("image.publish", 1, r#"["auditor"]"#);
    let with_image = |name: &str| {
        format!(
            "{}{}",
            policy(&rules, ""),
            image(name, "policy_id         = safebox_policy.gov.id")
        )
    };
    ws.write_config(PROVIDER, &policy(&rules, ""));
    ws.terraform_ok(APPLY);
    ws.write_config(PROVIDER, &with_image("data-box"));
    let (digest, _, _) = planned_change(&mut ws, "safebox_image.app");
    approve(&ws, "auditor-a", "image.publish", &digest, "publish.json");
    ws.terraform_ok(&["apply", "-input=false", "-no-color", "p.tfplan"]);
    let state = ws.state();
    let head = value(&state, "safebox_image.app")["audit_head"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(head.starts_with("2:sha256:"), "{head}");
    let log = ws.state_dir().join("audit.log");
    let original = fs::read_to_string(&log).unwrap();

    // Cut to the first entry (and to nothing): each prefix is a valid chain, but not the log
    // the state anchored. Plan and `audit verify --expect-head` both say so.
    for kept in [1, 0] {
        let cut: String = original.lines().take(kept).map(|l| format!("{l}\n")).collect();
        fs::write(&log, &cut).unwrap();
        let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
        // Cut to nothing, the policy's own anchor is gone too, and Terraform stops there.
        let anchor = if kept == 1 { head.as_str() } else { "1:sha256:" };
        assert_refused(&out, &["The audit log was rolled back", anchor]);
        let verified = audit_verify(&ws, &["--expect-head", &head]);
        assert_eq!(verified.status.code(), Some(1), "{}", text(&verified));
        assert!(
            mentions(&text(&verified), "rolled back or rewritten"),
            "{}",
            text(&verified)
        );
    }
    fs::write(&log, &original).unwrap();
    ws.plan_is_empty().unwrap();

    // An operator rewrites the policy record so that an outsider's key replaces auditor-a's.
    let record = fs::read_dir(ws.state_dir().join("policies"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let mut stored: Value = serde_json::from_slice(&fs::read(&record).unwrap()).unwrap();
    let outsider = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519"])
        .output()
        .unwrap();
    let outsider_pub = std::process::Command::new("sh")
        .arg("-c")
        .arg("openssl pkey -pubout")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            child.stdin.take().unwrap().write_all(&outsider.stdout)?;
            child.wait_with_output()
        })
        .unwrap();
    let outsider_spki = base64_encode(&base64_decode(&String::from_utf8_lossy(&outsider_pub.stdout)));
    let document = stored["document"].as_str().unwrap().to_owned();
    let a_spki = base64_encode(&base64_decode(
        &fs::read_to_string(safebox_acceptance_tests::governed::keys_dir().join("auditor-a.pub.pem")).unwrap(),
    ));
    assert!(document.contains(&a_spki));
    let forged = document.replace(&a_spki, &outsider_spki);
    stored["document"] = Value::String(forged.clone());
    fs::write(&record, stored.to_string()).unwrap();

    // Whatever the record says, no governed change relies on it. Refresh finds that the
    // record and Terraform's state disagree...
    ws.write_config(PROVIDER, &with_image("data-box-2"));
    let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert_refused(&out, &["Record and state disagree", "document"]);
    // ...and when the operator rewrites record and state alike (the key everywhere), the
    // audit log still says which policy is in force: plan refuses before anything is built or
    // deployed.
    for file in [record.clone(), ws.path().join("terraform.tfstate")] {
        let text = fs::read_to_string(&file).unwrap();
        assert!(text.contains(&a_spki) || text.contains(&outsider_spki));
        fs::write(&file, text.replace(&a_spki, &outsider_spki)).unwrap();
    }
    let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert_refused(&out, &["does not match the audit log"]);
    let verified = audit_verify(&ws, &["--expect-head", &head]);
    assert!(
        verified.status.success(),
        "the log itself is intact: {}",
        text(&verified)
    );
}

#[test]
fn stray_entries_in_approvals_dir_warn_and_never_block() {
    let mut ws = workspace();
    let rules = rule("image.publish", 1, r#"["auditor"]"#);
    ws.write_config(PROVIDER, &policy(&rules, ""));
    ws.terraform_ok(APPLY);
    ws.write_config(
        PROVIDER,
        &format!(
            "{}{}",
            policy(&rules, ""),
            image("data-box", "policy_id         = safebox_policy.gov.id")
        ),
    );
    let approvals = ws.path().join("approvals");
    // A FIFO nobody writes to (reading it would hang), a folder, a huge file, garbage.
    let status = std::process::Command::new("mkfifo")
        .arg(approvals.join("fifo.json"))
        .status()
        .unwrap();
    assert!(status.success());
    fs::create_dir(approvals.join("folder.json")).unwrap();
    fs::write(approvals.join("huge.json"), vec![b' '; 200 * 1024]).unwrap();
    fs::write(approvals.join("garbage.json"), "{not json").unwrap();
    let (digest, status, output) = planned_change(&mut ws, "safebox_image.app");
    for name in ["fifo.json", "folder.json", "huge.json", "garbage.json"] {
        assert!(mentions(&output, name), "the plan names {name}:\n{output}");
    }
    assert!(
        mentions(&output, "not a regular file") && mentions(&output, "not JSON"),
        "{output}"
    );
    assert!(status.starts_with("0 of 1"), "{status}");
    // A valid approval beside them counts.
    approve(&ws, "auditor-a", "image.publish", &digest, "a.json");
    ws.terraform_ok(&["apply", "-input=false", "-no-color", "p.tfplan"]);
    ws.terraform_ok(DESTROY);
}

#[test]
fn apply_publishes_only_what_the_plan_measured() {
    let mut ws = workspace();
    // Two images, so that the cache holds a consistent build of other inputs.
    let other = image("data-box", "")
        .replace(
            "resource \"safebox_image\" \"app\"",
            "resource \"safebox_image\" \"other\"",
        )
        .replace("\"data-box\"", "\"other-box\"");
    ws.write_config(PROVIDER, &format!("{}{other}", image("data-box", "")));
    let (_, _, _) = planned_change(&mut ws, "safebox_image.app");
    // A forged build under this image's cache key: every file hashes to what its record says,
    // but it is the other image's build. (Only a process of this user can write the cache.)
    let cache = fs::read_dir(cache_root(&ws)).unwrap().next().unwrap().unwrap().path();
    let entries: Vec<_> = fs::read_dir(&cache)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(entries.len(), 2, "both images are cached: {entries:?}");
    let plan: Value = serde_json::from_str(&ws.terraform_ok(&["show", "-json", "p.tfplan"])).unwrap();
    let manifest = resource_values(&plan, "safebox_image.app").unwrap()["manifest_sha256"]
        .as_str()
        .unwrap()
        .to_owned();
    let record = |dir: &Path| -> Value { serde_json::from_slice(&fs::read(dir.join("build.json")).unwrap()).unwrap() };
    let is_app = |dir: &Path| {
        use sha2::Digest as _;
        hex::encode(sha2::Sha256::digest(
            record(dir)["manifest"].as_str().unwrap().as_bytes(),
        )) == manifest
    };
    let (app, other) = if is_app(&entries[0]) {
        (&entries[0], &entries[1])
    } else {
        (&entries[1], &entries[0])
    };
    let app_digest = record(app)["inputs_digest"].clone();
    fs::remove_dir_all(app).unwrap();
    let mut forged = record(other);
    forged["inputs_digest"] = app_digest;
    fs::create_dir(app).unwrap();
    for file in fs::read_dir(other).unwrap().flatten() {
        fs::copy(file.path(), app.join(file.file_name())).unwrap();
    }
    fs::write(app.join("build.json"), forged.to_string()).unwrap();
    // Applying the saved plan, Terraform plans the image once more from the forged build; its
    // digests are not the ones the saved plan showed, and Terraform refuses the apply.
    let out = ws.terraform(APPLY_SAVED_PLAN);
    assert_refused(&out, &["inconsistent final plan", "safebox_image.app", &manifest]);
    assert!(
        !ws.state_dir().join("artifacts").exists()
            || fs::read_dir(ws.state_dir().join("artifacts")).unwrap().count() <= 1
    );
    ws.write_config(PROVIDER, "");
    ws.terraform_ok(DESTROY);
}

const APPLY_SAVED_PLAN: &[&str] = &["apply", "-input=false", "-no-color", "p.tfplan"];

#[test]
fn moving_a_box_to_another_policy_is_governed_by_the_one_it_leaves() {
    let mut ws = workspace();
    let rules = rule("enclave.deploy", 1, r#"["auditor"]"#);
    let second = policy(&rules, "")
        .replace(
            "resource \"safebox_policy\" \"gov\"",
            "resource \"safebox_policy\" \"next\"",
        )
        .replace("customer-data", "next");
    let box_with = |policy_ref: &str, extra: &str| {
        format!("resource \"safebox_enclave\" \"box\" {{\n  image_id  = safebox_image.app.id\n  policy_id = {policy_ref}\n  {extra}\n}}\n")
    };
    let base = format!("{}{second}{}", policy(&rules, ""), image("data-box", ""));
    ws.write_config(PROVIDER, &base);
    ws.terraform_ok(APPLY);
    ws.write_config(PROVIDER, &format!("{base}{}", box_with("safebox_policy.gov.id", "")));
    let (digest, _, _) = planned_change(&mut ws, "safebox_enclave.box");
    approve(&ws, "auditor-a", "enclave.deploy", &digest, "deploy.json");
    ws.terraform_ok(APPLY_SAVED_PLAN);
    let box_id = value(&ws.state(), "safebox_enclave.box")["id"].clone();

    // A timeout changes in place and keeps the box, its expected PCRs defaulted.
    ws.write_config(
        PROVIDER,
        &format!(
            "{base}{}",
            box_with("safebox_policy.gov.id", "timeouts {\n    delete = \"2m\"\n  }")
        ),
    );
    let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert!(
        mentions(&text(&out), "updated in-place") && !mentions(&text(&out), "must be replaced"),
        "{}",
        text(&out)
    );
    ws.terraform_ok(APPLY);
    assert_eq!(value(&ws.state(), "safebox_enclave.box")["id"], box_id);

    // Moving it to the other policy: enclave.deploy under the policy it leaves, and the new
    // one's rule too; refused until approved, then in place.
    ws.write_config(
        PROVIDER,
        &format!(
            "{base}{}",
            box_with("safebox_policy.next.id", "timeouts {\n    delete = \"2m\"\n  }")
        ),
    );
    let (digest, status, output) = planned_change(&mut ws, "safebox_enclave.box");
    assert!(mentions(&output, "updated in-place"), "{output}");
    assert!(
        status.contains("policy customer-data (in force): 0 of 1") && status.contains("policy next (new): 0 of 1"),
        "{status}"
    );
    let out = ws.terraform(APPLY_SAVED_PLAN);
    assert_refused(&out, &["enclave.deploy is not approved", &digest]);
    approve(&ws, "auditor-a", "enclave.deploy", &digest, "move.json");
    ws.terraform_ok(&["plan", "-out=p.tfplan", "-input=false", "-no-color"]);
    ws.terraform_ok(APPLY_SAVED_PLAN);
    let state = ws.state();
    let moved = value(&state, "safebox_enclave.box");
    assert_eq!(moved["id"], box_id, "moved in place");
    assert_eq!(moved["policy_id"], value(&state, "safebox_policy.next")["id"]);
    assert_eq!(moved["change_digest"], digest.as_str());
    ws.plan_is_empty().unwrap();
    ws.terraform_ok(DESTROY);
}
