//! The everyday workflow of a platform team and its auditors (issue 12), walked through the
//! real Terraform: saved plans that auditors sign before they are applied, policy renames,
//! one `state_dir` however it is written, damaged records found before anything is
//! destroyed, bad values refused at plan, destroys that need no approval, and the warnings an
//! operator needs.

use std::fs;
use std::process::Command;

use safebox_acceptance_tests::governed::{
    approve, image, openssl_approve, planned_change, policy, rule, workspace, PROVIDER,
};
use safebox_acceptance_tests::{assert_refused, built_binary, mentions, processes, resource_values, text, Workspace};
use serde_json::Value;

const APPLY: &[&str] = &["apply", "-auto-approve", "-input=false", "-no-color"];
const DESTROY: &[&str] = &["destroy", "-auto-approve", "-input=false", "-no-color"];
const APPLY_SAVED: &[&str] = &["apply", "-input=false", "-no-color", "p.tfplan"];

fn value<'a>(state: &'a Value, address: &str) -> &'a Value {
    resource_values(state, address).unwrap_or_else(|| panic!("{address} in state"))
}

#[test]
fn auditors_sign_a_saved_plan_and_that_plan_applies() {
    let mut ws = workspace();
    let rules = format!(
        "{}{}",
        rule("image.publish", 2, r#"["auditor"]"#),
        rule("policy.update", 2, r#"["auditor"]"#)
    );
    ws.write_config(PROVIDER, &policy(&rules, ""));
    ws.terraform_ok(APPLY);

    // An image publish: planned with no approval, signed afterwards, the saved plan applies.
    let governed = image("data-box", "policy_id         = safebox_policy.gov.id");
    ws.write_config(PROVIDER, &format!("{}{governed}", policy(&rules, "")));
    let (digest, status, _) = planned_change(&mut ws, "safebox_image.app");
    assert!(status.starts_with("0 of 2 for image.publish"), "{status}");
    approve(&ws, "auditor-a", "image.publish", &digest, "a.json");
    openssl_approve(&ws, "auditor-b", "image.publish", &digest, "b.json");
    let applied = ws.terraform(APPLY_SAVED);
    assert!(applied.status.success(), "{}", text(&applied));
    let image_state = value(&ws.state(), "safebox_image.app").clone();
    assert_eq!(image_state["change_digest"], digest.as_str());
    assert_eq!(
        image_state["approval_status"],
        "2 of 2 for image.publish; approved by auditor-a, auditor-b"
    );
    ws.plan_is_empty().unwrap();

    // A policy update one approval short: the saved plan is refused, naming who is missing.
    let more = format!("{rules}{}", rule("link.create", 1, r#"["security"]"#));
    ws.write_config(PROVIDER, &format!("{}{governed}", policy(&more, "")));
    let (digest, _, _) = planned_change(&mut ws, "safebox_policy.gov");
    approve(&ws, "auditor-a", "policy.update", &digest, "update-a.json");
    let refused = ws.terraform(APPLY_SAVED);
    assert_refused(
        &refused,
        &[
            "policy.update is not approved",
            &digest,
            "Signed by: auditor-a",
            "auditor-b",
        ],
    );
    // The missing signer signs; the same change has the same digest and applies.
    approve(&ws, "auditor-b", "policy.update", &digest, "update-b.json");
    let (again, status, _) = planned_change(&mut ws, "safebox_policy.gov");
    assert_eq!(again, digest, "nothing was consumed by the refused apply");
    assert!(status.contains("2 of 2 for policy.update"), "{status}");
    ws.terraform_ok(APPLY_SAVED);
    assert_eq!(value(&ws.state(), "safebox_policy.gov")["version"], 2);
    ws.plan_is_empty().unwrap();
}

#[test]
fn renaming_a_policy_is_one_change_with_one_digest_and_its_dependents_stay() {
    let mut ws = workspace();
    let rules = format!(
        "{}{}",
        rule("image.publish", 1, r#"["auditor"]"#),
        rule("policy.update", 1, r#"["auditor"]"#)
    );
    ws.write_config(PROVIDER, &policy(&rules, ""));
    ws.terraform_ok(APPLY);
    let governed = image("data-box", "policy_id         = safebox_policy.gov.id");
    ws.write_config(PROVIDER, &format!("{}{governed}", policy(&rules, "")));
    let (digest, _, _) = planned_change(&mut ws, "safebox_image.app");
    approve(&ws, "auditor-a", "image.publish", &digest, "publish.json");
    ws.terraform_ok(APPLY_SAVED);
    let before = ws.state();
    let id = value(&before, "safebox_policy.gov")["id"].clone();

    let renamed = policy(&rules, "").replace("name = \"customer-data\"", "name = \"customer-data-2027\"");
    ws.write_config(PROVIDER, &format!("{renamed}{governed}"));
    let (digest, status, output) = planned_change(&mut ws, "safebox_policy.gov");
    assert!(
        mentions(&output, "safebox_policy.gov will be updated in-place"),
        "{output}"
    );
    assert!(
        !mentions(&output, "safebox_image.app will be"),
        "the image does not change:\n{output}"
    );
    // The policy in force and the renamed one must both agree, on one digest.
    assert!(
        status.contains("policy customer-data (in force): 0 of 1 for policy.update")
            && status.contains("policy customer-data-2027 (new): 0 of 1 for policy.update"),
        "{status}"
    );
    approve(&ws, "auditor-a", "policy.update", &digest, "rename.json");
    ws.terraform_ok(APPLY_SAVED);
    let after = ws.state();
    let policy = value(&after, "safebox_policy.gov");
    assert_eq!(policy["id"], id);
    assert_eq!(policy["version"], 2);
    assert_eq!(policy["name"], "customer-data-2027");
    assert_eq!(value(&after, "safebox_image.app")["policy_id"], id);
    ws.plan_is_empty().unwrap();
}

/// The pid of box `box_id`'s agent, from the local backend's box folder.
fn box_pid(ws: &Workspace, box_id: &str) -> u32 {
    let record: Value =
        serde_json::from_slice(&fs::read(ws.state_dir().join("boxes").join(box_id).join("box.json")).unwrap()).unwrap();
    u32::try_from(record["pid"].as_u64().unwrap()).unwrap()
}

/// A configuration whose provider block names the state_dir as `state_dir`.
fn with_state_dir(ws: &mut Workspace, state_dir: &str, body: &str) {
    let main = format!(
        "terraform {{\n  required_providers {{\n    safebox = {{ source = \"safebots/safebox\" }}\n  }}\n}}\nprovider \"safebox\" {{\n  state_dir = {state_dir:?}\n  attestation {{\n    allow_simulated = true\n  }}\n}}\n{body}"
    );
    ws.write_file("main.tf", main);
}

#[test]
fn one_state_dir_however_it_is_written_and_nothing_is_left_running() {
    let mut ws = workspace();
    let body = format!(
        "{}resource \"safebox_enclave\" \"box\" {{\n  image_id = safebox_image.app.id\n}}\n",
        image("data-box", "")
    );
    with_state_dir(&mut ws, "safebox-state", &body);
    ws.terraform_ok(APPLY);
    let box_id = value(&ws.state(), "safebox_enclave.box")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let pid = box_pid(&ws, &box_id);
    assert!(processes::alive(pid));
    let absolute = ws.state_dir().display().to_string();
    for written in ["./safebox-state", "safebox-state/../safebox-state", absolute.as_str()] {
        with_state_dir(&mut ws, written, &body);
        ws.plan_is_empty()
            .unwrap_or_else(|e| panic!("state_dir = {written:?} is the same state: {e}"));
    }
    assert!(processes::alive(pid), "the box kept running");

    // Another working directory, naming the same folder by its absolute path, imports both and
    // has nothing to change.
    let image_id = value(&ws.state(), "safebox_image.app")["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut other = workspace();
    with_state_dir(&mut other, &absolute, &body);
    other.terraform_ok(&["import", "-input=false", "-no-color", "safebox_image.app", &image_id]);
    other.terraform_ok(&["import", "-input=false", "-no-color", "safebox_enclave.box", &box_id]);
    other
        .plan_is_empty()
        .unwrap_or_else(|e| panic!("imported from another working directory: {e}"));

    ws.terraform_ok(DESTROY);
    assert!(!processes::alive(pid), "destroy stopped the box's agent ({pid})");
    assert!(processes::mentioning(ws.path()).is_empty());
}

#[test]
fn a_damaged_record_fails_the_plan_before_anything_is_destroyed() {
    let mut ws = workspace();
    let body = format!(
        "{}resource \"safebox_enclave\" \"a\" {{\n  image_id = safebox_image.app.id\n}}\nresource \"safebox_enclave\" \"b\" {{\n  image_id  = safebox_image.app.id\n  cpu_count = 1\n}}\n",
        image("data-box", "")
    );
    ws.write_config(PROVIDER, &body);
    ws.terraform_ok(APPLY);
    let state = ws.state();
    let (image_id, a, b) = (
        value(&state, "safebox_image.app")["id"].as_str().unwrap().to_owned(),
        value(&state, "safebox_enclave.a").clone(),
        value(&state, "safebox_enclave.b").clone(),
    );
    let a_id = a["id"].as_str().unwrap();
    let a_pid = box_pid(&ws, a_id);
    let edit = |path: &std::path::Path, edit: &dyn Fn(&mut Value)| {
        let original = fs::read(path).unwrap();
        let mut record: Value = serde_json::from_slice(&original).unwrap();
        edit(&mut record);
        fs::write(path, record.to_string()).unwrap();
        original
    };

    // The image's record says another PCR0: the plan fails at the image, naming the
    // attribute; no box is replaced and box a's agent still runs.
    let image_record = ws.state_dir().join("images").join(format!("{image_id}.json"));
    let original = edit(&image_record, &|r| {
        r["prod_measurements"]["pcr0"] = Value::String("ab".repeat(48))
    });
    let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert_refused(&out, &["Record and state disagree", "prod_measurements"]);
    assert!(processes::alive(a_pid));
    fs::write(&image_record, original).unwrap();
    ws.plan_is_empty().unwrap();

    // Box a's record leads to box b's agent: refused the same way.
    let a_record = ws.state_dir().join("enclaves").join(format!("{a_id}.json"));
    let original = edit(&a_record, &|r| r["endpoint"] = b["endpoint"].clone());
    let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert_refused(&out, &["Record and state disagree", "endpoint"]);
    // And when state says so too, the agent there is not box a's: same PCRs, another key.
    let tfstate = ws.path().join("terraform.tfstate");
    let saved_state = fs::read_to_string(&tfstate).unwrap();
    fs::write(
        &tfstate,
        saved_state.replace(a["endpoint"].as_str().unwrap(), b["endpoint"].as_str().unwrap()),
    )
    .unwrap();
    let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert!(
        mentions(
            &text(&out),
            "not this box's agent (it attests with another per-boot key)"
        ),
        "{}",
        text(&out)
    );
    fs::write(&tfstate, saved_state).unwrap();
    fs::write(&a_record, original).unwrap();
    ws.plan_is_empty().unwrap();
    ws.terraform_ok(DESTROY);
}

#[test]
fn bad_values_are_refused_at_plan_before_anything_is_built() {
    let mut ws = workspace();
    let img = image("data-box", "");
    for (extra, needles) in [
        ("cpu_count = -2", vec!["cpu_count", "is -2", "from 1 to 128"]),
        ("cpu_count = 0", vec!["cpu_count", "is 0"]),
        ("memory_mib = -5", vec!["memory_mib", "is -5", "from 64"]),
    ] {
        ws.write_config(
            PROVIDER,
            &format!(
                "{img}resource \"safebox_enclave\" \"box\" {{\n  image_id = safebox_image.app.id\n  {extra}\n}}\n"
            ),
        );
        let out = ws.terraform(&["validate", "-no-color"]);
        assert_refused(&out, &needles);
        assert_eq!(
            text(&out).matches("Error:").count(),
            1,
            "one mistake, one error:\n{}",
            text(&out)
        );
    }
    // A fraction where a whole number belongs is the user's mistake, said at its attribute
    // (never "Provider bug"), once.
    let fraction = img.replacen("source_date_epoch = 1700000000", "source_date_epoch = 1.5", 1);
    assert_ne!(fraction, img, "the image sets source_date_epoch");
    ws.write_config(PROVIDER, &fraction);
    let out = ws.terraform(&["validate", "-no-color"]);
    assert_refused(&out, &["source_date_epoch", "must be a whole number"]);
    assert!(!text(&out).contains("Provider bug"), "{}", text(&out));
    assert_eq!(text(&out).matches("Error:").count(), 1, "{}", text(&out));

    // A malformed digest is one error, not one per check that sees it.
    ws.write_config(PROVIDER, &img.replacen("sha256 = \"cce87d", "sha256 = \"zzz87d", 1));
    let out = ws.terraform(&["validate", "-no-color"]);
    assert_refused(&out, &["kernel.sha256"]);
    assert_eq!(text(&out).matches("Error:").count(), 1, "{}", text(&out));

    // A link from a box to itself, with the id known: refused at plan, before any image is
    // built or box booted.
    ws.write_config(
        PROVIDER,
        &format!("{img}resource \"safebox_attested_link\" \"self\" {{\n  a_enclave_id = \"box-0000000000000001\"\n  b_enclave_id = \"box-0000000000000001\"\n}}\n"),
    );
    let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert_refused(&out, &["A link needs two boxes"]);
    assert!(!ws.path().join(".tmp").join("safebox-0").exists(), "nothing was built");

    // Expected PCRs that contradict the (existing) image: refused at plan, naming the key.
    ws.write_config(PROVIDER, &img);
    ws.terraform_ok(APPLY);
    let wrong = format!("expected_pcrs = {{ \"1\" = \"{}\" }}", "ab".repeat(48));
    ws.write_config(
        PROVIDER,
        &format!("{img}resource \"safebox_enclave\" \"box\" {{\n  image_id = safebox_image.app.id\n  {wrong}\n}}\n"),
    );
    let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert_refused(&out, &["Expected PCR differs from the image", "expected_pcrs[\"1\"]"]);
    ws.write_config(PROVIDER, &img);
    ws.terraform_ok(DESTROY);
}

#[test]
fn destroying_what_was_never_created_needs_no_approval() {
    let mut ws = workspace();
    // No rule for image.publish: planning the image fails closed...
    let rules = rule("link.create", 1, r#"["auditor"]"#);
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
    let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert_refused(&out, &["No rule for this change", "has no rule for image.publish"]);
    // ...and so it does while the change is not known yet (an input's digest comes from a
    // resource created in the same run): the policy could never approve it, whatever it is.
    let kernel = "\"cce87d150de6df842bccbd469d3465da6a9549b0e373ef58ef5a835b6cdbca29\"";
    let later = format!("terraform_data.pin.id == \"\" ? \"\" : {kernel}");
    let img = image("data-box", "policy_id         = safebox_policy.gov.id").replacen(kernel, &later, 1);
    assert!(img.contains(&later), "the kernel's digest is made unknown at plan");
    ws.write_config(
        PROVIDER,
        &format!("{}resource \"terraform_data\" \"pin\" {{}}\n{img}", policy(&rules, "")),
    );
    let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert_refused(&out, &["No rule for this change", "has no rule for image.publish"]);
    assert_eq!(
        text(&out).matches("Error:").count(),
        1,
        "one error, not two: {}",
        text(&out)
    );
    ws.write_config(PROVIDER, &policy(&rules, ""));
    // ...but destroying the policy, with the image never created, is not blocked by it.
    let out = ws.terraform(DESTROY);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        mentions(&text(&out), "Destroy complete! Resources: 1 destroyed."),
        "{}",
        text(&out)
    );
}

#[test]
fn the_warnings_an_operator_needs() {
    let mut ws = workspace();
    // approvals_dir elsewhere: the hint names it. And a folder that does not exist is said.
    let provider = PROVIDER.replace("approvals_dir = \"approvals\"", "approvals_dir = \"signed\"");
    let rules = rule("image.publish", 1, r#"["auditor"]"#);
    ws.write_config(&provider, &policy(&rules, "expires_at = \"2020-01-01T00:00:00Z\""));
    let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert!(
        mentions(&text(&out), "Policy already expired") && mentions(&text(&out), "2020-01-01T00:00:00Z"),
        "{}",
        text(&out)
    );
    ws.write_config(&provider, &policy(&rules, ""));
    ws.terraform_ok(APPLY);
    let governed = image("data-box", "policy_id         = safebox_policy.gov.id");
    ws.write_config(&provider, &format!("{}{governed}", policy(&rules, "")));
    let (digest, _, output) = planned_change(&mut ws, "safebox_image.app");
    assert!(
        mentions(&output, "approvals_dir does not exist") && mentions(&output, "signed"),
        "{output}"
    );
    assert!(mentions(&output, "--out signed/auditor-a.json"), "{output}");
    // No approvals_dir at all: the hint says where approvals can go.
    ws.write_config(
        PROVIDER.lines().skip(1).collect::<Vec<_>>().join("\n").as_str(),
        &format!("{}{governed}", policy(&rules, "")),
    );
    let (_, _, output) = planned_change(&mut ws, "safebox_image.app");
    assert!(mentions(&output, "set approvals_dir"), "{output}");

    // On the local backend, the aws-only attributes are null in the plan, not unknown.
    let plan: Value = serde_json::from_str(&ws.terraform_ok(&["show", "-json", "p.tfplan"])).unwrap();
    let change = plan["resource_changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["address"] == "safebox_image.app")
        .unwrap();
    for aws_only in ["dev_ami_id", "prod_ami_id", "snapshot_linear_sha256", "regional_amis"] {
        assert!(change["change"]["after"][aws_only].is_null(), "{aws_only}");
        assert!(
            change["change"]["after_unknown"][aws_only].is_null(),
            "{aws_only} is not 'known after apply'"
        );
    }
    fs::create_dir_all(ws.path().join("signed")).unwrap();
    ws.write_config(&provider, &format!("{}{governed}", policy(&rules, "")));
    let (digest2, _, _) = planned_change(&mut ws, "safebox_image.app");
    assert_eq!(digest, digest2);
    approve(&ws, "auditor-a", "image.publish", &digest, "a.json");
    fs::rename(ws.path().join("approvals/a.json"), ws.path().join("signed/a.json")).unwrap();
    ws.terraform_ok(APPLY_SAVED);

    // A dev box is warned about; an input file that changed after apply is too.
    ws.write_file("inputs/app.bin", b"changed after apply");
    let dev = "resource \"safebox_enclave\" \"dev\" {\n  image_id = safebox_image.app.id\n  variant  = \"dev\"\n}\n";
    ws.write_config(&provider, &format!("{}{governed}{dev}", policy(&rules, "")));
    let out = ws.terraform(&["plan", "-input=false", "-no-color"]);
    let output = text(&out);
    assert!(
        mentions(&output, "A development box") && mentions(&output, "has SSH"),
        "{output}"
    );
    assert!(
        mentions(&output, "Input changed: layer[1]") && mentions(&output, "inputs/app.bin now has SHA-256"),
        "{output}"
    );
    ws.write_config(&provider, &policy(&rules, ""));
    ws.terraform_ok(DESTROY);
}

#[test]
fn the_cli_behaves_in_a_pipe_and_knows_its_version() {
    // Output into a pipe closed early (`| head`) ends quietly, never with a panic.
    let mut child = Command::new(built_binary("safebox"))
        .arg("--help")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("panicked"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let version = Command::new(built_binary("safebox")).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("safebox {}", env!("CARGO_PKG_VERSION"))
    );
    let readme = fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let changelog = &readme[readme.find("## Changelog").unwrap()..];
    assert!(
        changelog
            .lines()
            .nth(2)
            .unwrap_or_default()
            .starts_with(&format!("- {} ", env!("CARGO_PKG_VERSION"))),
        "the changelog starts with this version"
    );
}

#[test]
fn a_replaced_box_is_stopped_and_a_destroy_under_an_expired_policy_is_logged() {
    let deploy = rule("enclave.deploy", 1, r#"["auditor"]"#);
    let governed_box = |extra: &str| {
        format!(
            "{}resource \"safebox_enclave\" \"box\" {{\n  image_id  = safebox_image.app.id\n  policy_id = safebox_policy.gov.id\n  {extra}\n}}\n",
            image("data-box", "")
        )
    };
    let mut ws = workspace();
    let config = |expires: &str, extra: &str| {
        format!(
            "{}{}",
            policy(&deploy, &format!("expires_at = \"{expires}\"")),
            governed_box(extra)
        )
    };
    // The policy and the image first: a box's deployment digest is known once its image is.
    ws.write_config(
        PROVIDER,
        &format!(
            "{}{}",
            policy(&deploy, "expires_at = \"2099-01-01T00:00:00Z\""),
            image("data-box", "")
        ),
    );
    ws.terraform_ok(APPLY);
    // Deploys the box with `extra` lines, approved by `signer`: its id and its agent's pid.
    let deploy = |ws: &mut Workspace, extra: &str, signer: &str| {
        ws.write_config(PROVIDER, &config("2099-01-01T00:00:00Z", extra));
        let (digest, _, _) = planned_change(ws, "safebox_enclave.box");
        approve(ws, signer, "enclave.deploy", &digest, &format!("{signer}.json"));
        ws.terraform_ok(APPLY_SAVED);
        let id = value(&ws.state(), "safebox_enclave.box")["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let pid = box_pid(ws, &id);
        (id, pid)
    };
    let (first, first_pid) = deploy(&mut ws, "", "auditor-a");
    assert!(processes::alive(first_pid));

    // A change that replaces the box (another deployment, approved): the old agent is stopped.
    let (second, second_pid) = deploy(&mut ws, "cpu_count = 1", "auditor-b");
    assert_ne!(first, second, "the box was replaced");
    assert!(
        !processes::alive(first_pid),
        "the replaced box's agent ({first_pid}) still runs"
    );
    assert!(processes::alive(second_pid));

    // The policy expires (an ungoverned update: it has no policy.update rule); destroying the
    // box it governs is not blocked by that, stops it, and is logged under that policy.
    ws.write_config(PROVIDER, &config("2020-01-01T00:00:00Z", "cpu_count = 1"));
    ws.terraform_ok(APPLY);
    let destroyed = ws.terraform(DESTROY);
    assert!(destroyed.status.success(), "{}", text(&destroyed));
    assert!(
        !mentions(&text(&destroyed), "Destroy not logged"),
        "{}",
        text(&destroyed)
    );
    assert!(
        !processes::alive(second_pid),
        "destroy stopped the box's agent ({second_pid})"
    );
    assert!(processes::mentioning(ws.path()).is_empty());
    let log = fs::read_to_string(ws.state_dir().join("audit.log")).unwrap();
    let entries: Vec<Value> = log.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // Both boxes' ends: the replaced one, then the destroyed one.
    let deleted: Vec<(&str, &str)> = entries
        .iter()
        .filter(|e| e["action"] == "resource.delete")
        .map(|e| (e["resource_type"].as_str().unwrap(), e["resource_id"].as_str().unwrap()))
        .collect();
    assert_eq!(
        deleted,
        [
            ("safebox_enclave", first.as_str()),
            ("safebox_enclave", second.as_str())
        ],
        "{log}"
    );
    let verified = safebox_acceptance_tests::governed::audit_verify(&ws, &[]);
    assert!(verified.status.success(), "{}", text(&verified));
}
