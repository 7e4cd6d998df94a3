//! The shared store in S3 (`store { s3 { ... } }`) against the real Terraform and the AWS SDK
//! talking to moto's S3 through the recording, fault-injecting proxy.
//!
//! What moto (5.2) enforces, and so what these tests show on its answers: `If-None-Match: *`
//! and `If-Match` on `PutObject` (412 `PreconditionFailed`), `If-Match` on `DeleteObject`,
//! versioning with delete markers, and that a version locked in COMPLIANCE mode cannot be
//! deleted. What it does not: the check and the write of a conditional `PutObject` are not one
//! atomic step under concurrent requests (S3's are), and it does not apply the default
//! retention to a listing. Those are asserted on the requests the proxy recorded instead: every
//! audit entry was created with `If-None-Match: *` and a SHA-256 checksum.
//!
//! Each test starts its own moto and proxy on loopback ports; credentials are fixed test values
//! and `AWS_EC2_METADATA_DISABLED=true`, so nothing looks beyond loopback.

use std::fs;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use safebox_acceptance_tests::aws::{request, test_credentials, Fault, Moto, Proxy, Recorded};
use safebox_acceptance_tests::governed::{keys_dir, planned_change, policy, rule};
use safebox_acceptance_tests::{assert_refused, built_binary, mentions, resource_values, text, Workspace};
use serde_json::Value;

const EVIDENCE: &str = "safebox-evidence";
const PREFIX: &str = "team/";
const REGION: &str = "us-east-1";
const APPLY: &[&str] = &["apply", "-auto-approve", "-input=false", "-no-color"];

/// moto with buckets, behind the proxy.
struct Emulator {
    moto: Moto,
    proxy: Proxy,
}

/// How a bucket keeps its objects.
enum Lock {
    /// Versioned, no Object Lock.
    None,
    /// Object Lock with this default retention (mode, days).
    Default(&'static str, u32),
}

impl Emulator {
    /// moto with the evidence bucket (versioned, Object Lock, COMPLIANCE for 2555 days) and a
    /// plain bucket for Terraform's remote state.
    fn start() -> Self {
        test_credentials();
        let moto = Moto::start();
        let proxy = Proxy::start(&moto.endpoint);
        let emulator = Self { moto, proxy };
        emulator.bucket(EVIDENCE, &Lock::Default("COMPLIANCE", 2555));
        emulator.bucket("tfstate", &Lock::None);
        emulator
    }

    /// A signed-looking request to moto's S3 directly (moto routes by the credential scope and
    /// checks no signature).
    fn s3(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> (u16, String) {
        let auth = format!(
            "AWS4-HMAC-SHA256 Credential=testing/20260101/{REGION}/s3/aws4_request, SignedHeaders=host, Signature=00"
        );
        let mut all = vec![("authorization", auth.as_str())];
        all.extend_from_slice(headers);
        let response = request(method, &format!("{}{path}", self.moto.endpoint), &all, body).expect("moto answers");
        (response.status, String::from_utf8_lossy(&response.body).into_owned())
    }

    fn bucket(&self, name: &str, lock: &Lock) {
        let locked = [("x-amz-bucket-object-lock-enabled", "true")];
        let (status, answer) = self.s3(
            "PUT",
            &format!("/{name}"),
            if matches!(lock, Lock::None) { &[] } else { &locked },
            "",
        );
        assert_eq!(status, 200, "CreateBucket {name}: {answer}");
        let (status, answer) = self.s3(
            "PUT",
            &format!("/{name}?versioning"),
            &[],
            "<VersioningConfiguration><Status>Enabled</Status></VersioningConfiguration>",
        );
        assert_eq!(status, 200, "PutBucketVersioning {name}: {answer}");
        if let Lock::Default(mode, days) = lock {
            let (status, answer) = self.s3(
                "PUT",
                &format!("/{name}?object-lock"),
                &[],
                &format!("<ObjectLockConfiguration><ObjectLockEnabled>Enabled</ObjectLockEnabled><Rule><DefaultRetention><Mode>{mode}</Mode><Days>{days}</Days></DefaultRetention></Rule></ObjectLockConfiguration>"),
            );
            assert_eq!(status, 200, "PutObjectLockConfiguration {name}: {answer}");
        }
    }

    /// `s3://bucket/prefix`.
    fn location(&self, bucket: &str) -> String {
        format!("s3://{bucket}/{PREFIX}")
    }

    /// The provider block's `store` (with `lease` lines) in `bucket`.
    fn store_block(&self, bucket: &str, lease: &str) -> String {
        format!(
            "  store {{\n    {lease}\n    s3 {{\n      bucket   = \"{bucket}\"\n      prefix   = \"{PREFIX}\"\n      region   = \"{REGION}\"\n      endpoint = \"{}\"\n    }}\n  }}\n",
            self.proxy.endpoint
        )
    }

    /// A runner: a working directory of its own (no file shared with any other), whose
    /// Terraform state is `state_key` in the `tfstate` bucket when given, else local.
    fn runner(&self, state_key: Option<&str>) -> Runner {
        Runner {
            ws: Workspace::new(),
            backend: state_key.map(|key| {
                format!(
                    "  backend \"s3\" {{\n    bucket                      = \"tfstate\"\n    key                         = \"{key}\"\n    region                      = \"{REGION}\"\n    endpoints                   = {{ s3 = \"{}\" }}\n    use_path_style              = true\n    use_lockfile                = true\n    skip_credentials_validation = true\n    skip_requesting_account_id  = true\n    skip_metadata_api_check     = true\n    skip_region_validation      = true\n  }}\n",
                    self.proxy.endpoint
                )
            }),
        }
    }

    /// `safebox audit verify s3://…` of the store in `bucket`, with `extra` arguments.
    fn audit_verify(&self, bucket: &str, extra: &[&str]) -> Output {
        Command::new(built_binary("safebox"))
            .args([
                "audit",
                "verify",
                &self.location(bucket),
                "--region",
                REGION,
                "--s3-endpoint",
            ])
            .arg(&self.proxy.endpoint)
            .args(extra)
            .output()
            .expect("safebox audit verify")
    }

    /// The requests for the store's objects (not Terraform's state) of `operation`.
    fn store_requests(&self, operation: &str) -> Vec<Recorded> {
        self.proxy
            .requests_for(operation)
            .into_iter()
            .filter(|r| r.path.starts_with(&format!("/{EVIDENCE}")))
            .collect()
    }
}

/// Whether `r` is for the object `key` (or the keys starting with it) under the store's prefix.
fn writes(r: &Recorded, key: &str) -> bool {
    r.decoded_path().starts_with(&format!("/{EVIDENCE}/{PREFIX}{key}"))
}

/// What S3 asks of a `PutObject` into a bucket with a default retention: a checksum.
const CHECKSUM: (&str, &str) = ("x-amz-sdk-checksum-algorithm", "SHA256");

struct Runner {
    ws: Workspace,
    backend: Option<String>,
}

impl Runner {
    /// Writes `main.tf`: the backend if any, the provider block with `provider` lines, `config`.
    fn configure(&self, provider: &str, config: &str) {
        let main = format!(
            "terraform {{\n  required_providers {{\n    safebox = {{ source = \"safebots/safebox\" }}\n  }}\n{}}}\n\nprovider \"safebox\" {{\n  state_dir = {:?}\n{provider}\n}}\n\n{config}\n",
            self.backend.as_deref().unwrap_or_default(),
            self.ws.state_dir().display().to_string()
        );
        fs::write(self.ws.path().join("main.tf"), main).expect("write main.tf");
    }
}

/// A policy named `name` whose update needs one auditor, with `extra_rules`.
fn team_policy(name: &str, extra_rules: &str) -> String {
    policy(
        &format!("{}{extra_rules}", rule("policy.update", 1, r#"["auditor"]"#)),
        "",
    )
    .replace("name = \"customer-data\"", &format!("name = \"{name}\""))
}

/// The head `address` records in a `terraform show -json` state.
fn head_of(state: &Value, address: &str) -> String {
    resource_values(state, address).expect("resource in state")["audit_head"]
        .as_str()
        .expect("audit_head")
        .to_owned()
}

#[test]
fn two_runners_share_records_approvals_and_the_audit_log_through_the_store() {
    let aws = Emulator::start();
    let store = aws.store_block(EVIDENCE, "");
    let mut first = aws.runner(Some("team/terraform.tfstate"));
    let mut second = aws.runner(Some("team/terraform.tfstate"));
    first.configure(&store, &team_policy("payments", ""));
    first.ws.terraform_ok(APPLY);

    // The second runner has none of the first's files: its plan reads the records and the
    // audit log from the store (and the state from the remote backend), and finds no change.
    second.configure(&store, &team_policy("payments", ""));
    second.ws.plan_is_empty().expect("the second runner plans no changes");
    assert!(
        fs::read_dir(second.ws.state_dir()).map_or(true, |d| d.flatten().all(|e| e.file_name() != "audit.log")),
        "nothing of the store is kept in the second runner's state_dir"
    );

    // A governed change, planned by the second runner and approved into the store.
    let changed = team_policy("payments", &rule("image.publish", 1, r#"["auditor"]"#));
    second.configure(&store, &changed);
    let (digest, status, output) = planned_change(&mut second.ws, "safebox_policy.gov");
    assert!(status.contains("0 of 1 for policy.update"), "{status}\n{output}");
    assert!(
        mentions(&output, &format!("--to {}", aws.location(EVIDENCE))),
        "{output}"
    );
    // The plan report tells the auditor where the evidence is.
    let plan = second.ws.terraform_ok(&["show", "-json", "p.tfplan"]);
    fs::write(second.ws.path().join("plan.json"), plan).expect("write plan.json");
    let report = Command::new(built_binary("safebox"))
        .args(["plan-report", "plan.json"])
        .current_dir(second.ws.path())
        .output()
        .expect("safebox plan-report");
    assert!(report.status.success(), "{}", text(&report));
    let report = text(&report);
    assert!(
        report
            .lines()
            .any(|l| l.contains("Evidence store: ") && l.contains(&aws.location(EVIDENCE))),
        "the plan report does not name the store:\n{report}"
    );
    let approved = Command::new(built_binary("safebox"))
        .args(["approve", "--key"])
        .arg(keys_dir().join("auditor-a.key.pem"))
        .args([
            "--signer",
            "auditor-a",
            "--action",
            "policy.update",
            "--digest",
            &digest,
        ])
        .args([
            "--to",
            &aws.location(EVIDENCE),
            "--region",
            REGION,
            "--s3-endpoint",
            &aws.proxy.endpoint,
        ])
        .output()
        .expect("safebox approve");
    assert!(approved.status.success(), "{}", text(&approved));
    let key = format!("approvals/{digest}/auditor-a.json");
    assert!(
        aws.store_requests("PutObject")
            .iter()
            .any(|r| writes(r, &key) && r.succeeded()),
        "the approval was not uploaded to {key}"
    );
    second
        .ws
        .terraform_ok(&["apply", "-input=false", "-no-color", "p.tfplan"]);
    let state = second.ws.state();
    let approved = resource_values(&state, "safebox_policy.gov").unwrap()["approval_status"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        approved.contains("for policy.update; approved by auditor-a"),
        "{approved}"
    );

    // The first runner, given the same configuration, sees the second's change as its own.
    first.configure(&store, &changed);
    first.ws.plan_is_empty().expect("the first runner plans no changes");

    // The record was created once and replaced on its version; every audit entry was created
    // once; the chain verifies from S3 and holds the head in state.
    let records: Vec<Recorded> = aws
        .store_requests("PutObject")
        .into_iter()
        .filter(|r| writes(r, "records/policies/") && r.succeeded())
        .collect();
    assert_eq!(records.len(), 2, "one create and one update of the policy record");
    assert_eq!(records[0].header("if-none-match"), Some("*"));
    assert!(records[1].header("if-match").is_some_and(|etag| !etag.is_empty()));
    let head = head_of(&state, "safebox_policy.gov");
    let verified = aws.audit_verify(EVIDENCE, &["--expect-head", &head]);
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(mentions(&text(&verified), "2 entries verified"), "{}", text(&verified));
}

/// Waits until `what` holds, or panics after `limit` naming `doing`.
fn wait_for(limit: Duration, doing: &str, mut what: impl FnMut() -> bool) {
    let started = Instant::now();
    while !what() {
        assert!(started.elapsed() < limit, "timed out waiting for {doing}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Kills `child` and everything in its process group (Terraform and the provider it runs).
fn kill_group(child: &mut std::process::Child) {
    let group = i32::try_from(child.id()).expect("pid fits in i32");
    assert!(group > 1, "refusing to signal process group {group}");
    // SAFETY: signals the process group `child` leads (it was spawned with process_group(0)).
    unsafe { libc::kill(-group, libc::SIGKILL) };
    let _ = child.wait();
}

/// `terraform apply` in `runner`, in the background, in a process group of its own.
fn spawn_apply(runner: &mut Runner) -> std::process::Child {
    runner.ws.terraform_ok(&["init", "-input=false", "-no-color"]);
    let mut apply = runner.ws.command(APPLY);
    std::os::unix::process::CommandExt::process_group(&mut apply, 0);
    apply
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("terraform apply")
}

#[test]
fn two_applies_started_together_one_proceeds_the_other_names_the_holder_and_the_chain_stays_whole() {
    let aws = Emulator::start();
    let store = aws.store_block(EVIDENCE, "lease_wait = \"1s\"");
    let mut first = aws.runner(None);
    let mut second = aws.runner(None);
    first.configure(&store, &team_policy("payments", ""));
    second.configure(&store, &team_policy("lending", ""));
    // Every write takes a while, so the first apply holds the lease for seconds.
    aws.proxy.delay("PutObject", Duration::from_millis(2500));
    let holder = spawn_apply(&mut first);
    let holder_pid = holder.id();
    second.ws.terraform_ok(&["init", "-input=false", "-no-color"]);
    wait_for(Duration::from_secs(60), "the first apply to take the lease", || {
        aws.store_requests("PutObject")
            .iter()
            .any(|r| writes(r, "lease.json") && r.succeeded())
    });
    let refused = second.ws.terraform(APPLY);
    let held = holder.wait_with_output().expect("the first apply");
    assert!(
        held.status.success(),
        "the lease holder's apply failed:\n{}",
        text(&held)
    );
    assert_refused(
        &refused,
        &[
            "Another run holds the store",
            &format!("held by terraform (pid {holder_pid})"),
            "store.lease_wait",
        ],
    );
    aws.proxy.delay("PutObject", Duration::ZERO);

    // Once the first is done, the second goes through.
    second.ws.terraform_ok(APPLY);
    let verified = aws.audit_verify(EVIDENCE, &[]);
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(mentions(&text(&verified), "2 entries verified"), "{}", text(&verified));
    let entries: Vec<Recorded> = aws
        .store_requests("PutObject")
        .into_iter()
        .filter(|r| writes(r, "audit/"))
        .collect();
    assert_eq!(entries.len(), 2, "one write per entry, no retry, no duplicate");
    for entry in &entries {
        assert_eq!(entry.header("if-none-match"), Some("*"), "{}", entry.path);
    }
}

#[test]
fn an_apply_killed_mid_write_is_finished_by_the_next_once_its_lease_expires() {
    let aws = Emulator::start();
    let store = aws.store_block(EVIDENCE, "lease_duration = \"3s\"");
    let mut runner = aws.runner(None);
    runner.configure(&store, &team_policy("payments", ""));
    aws.proxy.delay("PutObject", Duration::from_millis(2000));
    let mut apply = spawn_apply(&mut runner);
    // The lease is written, and the next write (the audit entry) is in flight: kill then.
    wait_for(Duration::from_secs(60), "a write after the lease", || {
        aws.store_requests("PutObject")
            .iter()
            .any(|r| writes(r, "lease.json") && r.succeeded())
            && aws.proxy.arrivals("PutObject") >= 2
    });
    kill_group(&mut apply);
    aws.proxy.delay("PutObject", Duration::ZERO);
    let out = runner.ws.terraform(APPLY);
    assert!(out.status.success(), "the next apply failed:\n{}", text(&out));

    // The killed run's lease (as last renewed) expired before the next run took it over, and
    // the takeover replaced it on its version (If-Match), never deleting it.
    let leases: Vec<(Recorded, Value)> = aws
        .store_requests("PutObject")
        .into_iter()
        .filter(|r| writes(r, "lease.json") && r.succeeded())
        .map(|r| {
            let body = r.json().expect("a lease body");
            (r, body)
        })
        .collect();
    let time = |body: &Value, field: &str| {
        time::OffsetDateTime::parse(
            body[field].as_str().expect("a time"),
            &time::format_description::well_known::Rfc3339,
        )
        .expect("an RFC 3339 time")
    };
    let killed = leases[0].1["run"].clone();
    let expired = leases
        .iter()
        .filter(|(_, body)| body["run"] == killed)
        .map(|(_, body)| time(body, "expires_at"))
        .max()
        .expect("the killed run's lease");
    let (takeover, body) = leases
        .iter()
        .find(|(_, body)| body["run"] != killed)
        .expect("the next run took the lease");
    assert!(takeover.header("if-match").is_some(), "{:?}", takeover.headers);
    assert!(
        time(body, "acquired_at") >= expired,
        "taken over at {} before the lease expired at {expired}",
        body["acquired_at"]
    );
    runner.ws.plan_is_empty().unwrap();
    let verified = aws.audit_verify(EVIDENCE, &[]);
    assert!(verified.status.success(), "{}", text(&verified));
}

#[test]
fn a_bucket_that_is_not_write_once_is_refused_at_plan_naming_the_setting() {
    let aws = Emulator::start();
    aws.bucket("plain-bucket", &Lock::None);
    aws.bucket("governance-bucket", &Lock::Default("GOVERNANCE", 3000));
    aws.bucket("short-bucket", &Lock::Default("COMPLIANCE", 30));
    let mut runner = aws.runner(None);
    for (bucket, says) in [
        ("plain-bucket", "Object Lock is not enabled (ObjectLockEnabled)"),
        ("governance-bucket", "is GOVERNANCE for 3000 days, not COMPLIANCE"),
        (
            "short-bucket",
            "is COMPLIANCE for 30 days, not COMPLIANCE for at least 2555 days",
        ),
    ] {
        runner.configure(&aws.store_block(bucket, ""), &team_policy("payments", ""));
        let out = runner.ws.terraform(&["plan", "-input=false", "-no-color"]);
        assert_refused(
            &out,
            &[
                "The store's bucket is not write-once",
                says,
                &format!("aws s3api put-object-lock-configuration --bucket {bucket}"),
            ],
        );
    }
    // A shorter retention is enough when the configuration asks for no more.
    runner.configure(
        &format!("{}  audit_retention_days = 30\n", aws.store_block("short-bucket", "")),
        &team_policy("payments", ""),
    );
    let out = runner.ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert!(out.status.success(), "{}", text(&out));

    // On the evidence bucket: moto says its default retention is COMPLIANCE, every audit entry
    // was created with If-None-Match: * and a checksum, and moto refuses to create one again
    // or to delete a locked version.
    runner.configure(&aws.store_block(EVIDENCE, ""), &team_policy("payments", ""));
    runner.ws.terraform_ok(APPLY);
    let (_, lock) = aws.s3("GET", &format!("/{EVIDENCE}?object-lock"), &[], "");
    assert!(
        lock.contains("<Mode>COMPLIANCE</Mode>") && lock.contains("<Days>2555</Days>"),
        "{lock}"
    );
    let entries: Vec<Recorded> = aws
        .store_requests("PutObject")
        .into_iter()
        .filter(|r| writes(r, "audit/"))
        .collect();
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0].header("if-none-match"), Some("*"));
    assert!(
        entries[0].header("x-amz-checksum-sha256").is_some(),
        "{:?}",
        entries[0].headers
    );
    let key = format!("/{EVIDENCE}/{PREFIX}audit/00000000000000000001.json");
    let (status, answer) = aws.s3("PUT", &key, &[("if-none-match", "*"), CHECKSUM], "{}");
    assert_eq!(status, 412, "moto takes a second entry 1: {answer}");
    let (_, versions) = aws.s3("GET", &format!("/{EVIDENCE}?versions&prefix={PREFIX}audit/"), &[], "");
    let version = versions
        .split("<VersionId>")
        .nth(1)
        .and_then(|v| v.split('<').next())
        .expect("a version id");
    let (status, answer) = aws.s3("DELETE", &format!("{key}?versionId={version}"), &[], "");
    assert_eq!(status, 403, "moto deleted a locked version: {answer}");
}

#[test]
fn a_rewritten_or_removed_audit_entry_is_named_by_audit_verify_and_refused_by_plan() {
    let aws = Emulator::start();
    let mut runner = aws.runner(None);
    let store = aws.store_block(EVIDENCE, "");
    runner.configure(&store, &team_policy("payments", ""));
    runner.ws.terraform_ok(APPLY);
    runner.configure(
        &store,
        &format!(
            "{}{}",
            team_policy("payments", ""),
            team_policy("lending", "").replace("\"gov\"", "\"other\"")
        ),
    );
    runner.ws.terraform_ok(APPLY);
    let verified = aws.audit_verify(EVIDENCE, &[]);
    assert!(verified.status.success(), "{}", text(&verified));

    // Someone with write access writes entry 2 again (a new version: Object Lock keeps the
    // old one, and the listing shows both).
    let (status, answer) = aws.s3(
        "GET",
        &format!("/{EVIDENCE}/{PREFIX}audit/00000000000000000002.json"),
        &[],
        "",
    );
    assert_eq!(status, 200, "{answer}");
    let key = format!("/{EVIDENCE}/{PREFIX}audit/00000000000000000002.json");
    let (status, answer) = aws.s3("PUT", &key, &[CHECKSUM], &answer.replace("lending", "lendinG"));
    assert_eq!(status, 200, "{answer}");
    let out = aws.audit_verify(EVIDENCE, &[]);
    assert_refused(&out, &["entry 2 (audit/00000000000000000002.json) has 2 versions"]);
    let out = runner.ws.terraform(&["plan", "-input=false", "-no-color"]);
    assert_refused(&out, &["entry 2 (audit/00000000000000000002.json) has 2 versions"]);

    // ...and removes entry 1 (a delete marker).
    let (status, answer) = aws.s3(
        "DELETE",
        &format!("/{EVIDENCE}/{PREFIX}audit/00000000000000000001.json"),
        &[],
        "",
    );
    assert_eq!(status, 204, "{answer}");
    let out = aws.audit_verify(EVIDENCE, &[]);
    assert_refused(
        &out,
        &["entry 1 (audit/00000000000000000001.json) has 2 versions (one of them a delete marker)"],
    );
}

#[test]
fn throttling_and_server_errors_from_s3_are_retried_and_nothing_is_lost() {
    let aws = Emulator::start();
    let mut runner = aws.runner(None);
    runner.configure(&aws.store_block(EVIDENCE, ""), &team_policy("payments", ""));
    runner.ws.terraform_ok(&["init", "-input=false", "-no-color"]);
    for (operation, fault) in [
        ("GetBucketVersioning", Fault::ServerError),
        ("GetObjectLockConfiguration", Fault::Throttle),
        ("PutObject", Fault::Throttle),
        ("PutObject", Fault::ServerError),
        ("GetObject", Fault::ServerError),
        ("ListObjectVersions", Fault::Throttle),
    ] {
        aws.proxy.inject(operation, 1, fault);
    }
    runner.ws.terraform_ok(APPLY);
    for operation in [
        "GetBucketVersioning",
        "GetObjectLockConfiguration",
        "PutObject",
        "GetObject",
        "ListObjectVersions",
    ] {
        // The request that met the fault is sent again, and moto answers it (a missing
        // object's 404 is an answer too: the lease and records are read before they exist).
        let requests = aws.store_requests(operation);
        let faulted = requests
            .iter()
            .find(|r| r.injected)
            .unwrap_or_else(|| panic!("no fault was injected into {operation}"));
        assert!(
            requests.iter().any(|r| r.seq > faulted.seq
                && r.method == faulted.method
                && r.path == faulted.path
                && !r.injected
                && (200..500).contains(&r.status)),
            "{operation} {} was not sent again after its fault",
            faulted.path
        );
    }
    runner.ws.plan_is_empty().unwrap();
    let state = runner.ws.state();
    let verified = aws.audit_verify(EVIDENCE, &["--expect-head", &head_of(&state, "safebox_policy.gov")]);
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(mentions(&text(&verified), "1 entries verified"), "{}", text(&verified));
}
