//! `safebox plan-report PLAN.json`: what an auditor reads before signing off a plan, from
//! `terraform show -json plan.out` output.
//!
//! The report says which plan it is of (the SHA-256 of the saved plan file, or of the JSON
//! only), then every image with its inputs (kernel, layers, SSH keys of the development image)
//! and digests, every box and the PCRs it must attest to, every link, every policy and the
//! before → after of each policy update, every governed change with its action, governing
//! policy, change digest and approval status, the audit log head recorded in state, and the
//! warnings that matter.
//!
//! Nothing is guessed: a value the plan does not know is "(known after apply)", and an
//! approval status is "not known until apply" unless `--approvals DIR` counts the approvals
//! collected so far against the governing policy's document found in the plan (approvals may
//! still arrive between `terraform plan -out` and the apply of that saved plan, which is why
//! the plan itself never carries a status).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use clap::{Args, ValueEnum};
use safebox::canonical::sha256_tagged;
use safebox::govern::approval::{evaluate, parse_approvals, read_approvals_dir, Approval};
use safebox::govern::policy::Policy;
use safebox::govern::Action;
use serde_json::Value;
use sha2::Digest as _;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Markdown.
    Markdown,
    /// A self-contained HTML page (no scripts, no external resources).
    Html,
}

/// `safebox plan-report`.
#[derive(Debug, Args)]
pub struct PlanReportCommand {
    /// The plan as JSON (`terraform show -json plan.out > plan.json`).
    plan: PathBuf,
    /// Markdown (default) or a self-contained HTML page.
    #[arg(long, value_enum, default_value = "markdown")]
    format: Format,
    /// Write the report here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The saved plan itself (the binary file of `terraform plan -out=plan.out`): the report
    /// prints its SHA-256, so a sign-off names the exact plan `terraform apply plan.out` applies.
    #[arg(long, value_name = "PLAN.out")]
    plan_file: Option<PathBuf>,
    /// A folder of approval files (`safebox approve --out DIR/…`): count them offline against
    /// the governing policy's document when the plan holds it, and say who counted and who is
    /// missing. Without it, approval status is "not known until apply".
    #[arg(long, value_name = "DIR")]
    approvals: Option<PathBuf>,
}

/// How soon an expiring policy is worth a warning.
const EXPIRY_WARNING_DAYS: i64 = 30;
/// Hex digits of a signer key's SPKI SHA-256 shown: 64 bits tell keys apart at a glance; the
/// full key is in the policy document.
const KEY_FINGERPRINT_HEX: usize = 16;
/// What every value the plan does not know reads as.
const KNOWN_AFTER_APPLY: &str = "(known after apply)";
/// What every approval status the plan cannot settle reads as.
const NOT_KNOWN_UNTIL_APPLY: &str = "not known until apply";
/// Where the local backend keeps its state (and `audit.log`) when `state_dir` is not set.
const DEFAULT_STATE_DIR: &str = ".safebox";
/// The resource types whose changes governance covers.
const GOVERNED_TYPES: &[&str] = &[
    "safebox_image",
    "safebox_enclave",
    "safebox_attested_link",
    "safebox_sealed_key",
    "safebox_policy",
];

// ---------------------------------------------------------------------------------------------
// The report, before rendering

/// A piece of running text.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Span {
    /// Plain text.
    Text(String),
    /// An identifier, digest or command: shown as code.
    Code(String),
    /// Emphasis.
    Strong(String),
}

/// One line of running text (a warning, a fact).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Line(Vec<Span>);

impl Line {
    fn text(mut self, s: impl Into<String>) -> Self {
        self.0.push(Span::Text(s.into()));
        self
    }
    fn code(mut self, s: impl Into<String>) -> Self {
        self.0.push(Span::Code(s.into()));
        self
    }
    fn strong(mut self, s: impl Into<String>) -> Self {
        self.0.push(Span::Strong(s.into()));
        self
    }
}

/// A part of a section.
enum Block {
    /// A paragraph.
    Paragraph(Line),
    /// A command line to copy.
    Command(String),
    /// A table: column names, rows of cells (a cell may hold several lines).
    Table {
        columns: Vec<&'static str>,
        rows: Vec<Vec<String>>,
    },
}

/// A titled section.
struct Section {
    heading: &'static str,
    blocks: Vec<Block>,
}

impl Section {
    /// A section holding one table, or a sentence saying it is empty.
    fn table(heading: &'static str, empty: &str, columns: Vec<&'static str>, rows: Vec<Vec<String>>) -> Self {
        let block = if rows.is_empty() {
            Block::Paragraph(Line::default().text(empty))
        } else {
            Block::Table { columns, rows }
        };
        Self {
            heading,
            blocks: vec![block],
        }
    }
}

/// The report, before rendering.
struct Report {
    title: String,
    summary: String,
    warnings: Vec<Line>,
    sections: Vec<Section>,
}

// ---------------------------------------------------------------------------------------------
// Reading planned values

fn text(value: &Value) -> String {
    match value {
        Value::Null => "—".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Whether the value at `pointer` (or anything containing it) is unknown in the plan.
fn unknown(change: &Value, pointer: &str) -> bool {
    let unknowns = &change["after_unknown"];
    if unknowns == &Value::Bool(true) {
        return true;
    }
    let mut prefix = String::new();
    for step in pointer.split('/').skip(1) {
        prefix.push('/');
        prefix.push_str(step);
        if unknowns.pointer(&prefix) == Some(&Value::Bool(true)) {
            return true;
        }
    }
    false
}

/// A planned attribute: its value after the change, or "(known after apply)".
fn after(change: &Value, pointer: &str) -> String {
    if unknown(change, pointer) {
        return KNOWN_AFTER_APPLY.to_owned();
    }
    change.pointer(&format!("/after{pointer}")).map_or("—".to_owned(), text)
}

/// A planned string attribute when the plan knows it.
fn after_str<'a>(change: &'a Value, pointer: &str) -> Option<&'a str> {
    if unknown(change, pointer) {
        return None;
    }
    change.pointer(&format!("/after{pointer}")).and_then(Value::as_str)
}

/// A string attribute as it was before the change.
fn before_str<'a>(change: &'a Value, pointer: &str) -> Option<&'a str> {
    change.pointer(&format!("/before{pointer}")).and_then(Value::as_str)
}

fn actions(change: &Value) -> Vec<&str> {
    change["actions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect()
}

fn action_of(change: &Value) -> String {
    match actions(change).as_slice() {
        ["create"] => "create".into(),
        ["update"] => "update in place".into(),
        ["delete", "create"] | ["create", "delete"] => "replace".into(),
        ["delete"] => "destroy".into(),
        ["no-op"] => "no change".into(),
        ["read"] => "read".into(),
        other => other.join("+"),
    }
}

fn creates(change: &Value) -> bool {
    actions(change).contains(&"create")
}

fn pcrs_text(change: &Value, pointer: &str) -> String {
    if unknown(change, pointer) {
        return KNOWN_AFTER_APPLY.into();
    }
    match change.pointer(&format!("/after{pointer}")) {
        Some(Value::Object(map)) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by_key(|(k, _)| k.parse::<u32>().unwrap_or(u32::MAX));
            entries
                .iter()
                .map(|(k, v)| format!("PCR{k} {}", text(v)))
                .collect::<Vec<_>>()
                .join("; ")
        }
        Some(other) => text(other),
        None => "—".into(),
    }
}

/// Who else may launch an image's AMIs and where they are copied (aws), as planned.
fn distribution(change: &Value) -> String {
    let mut parts = Vec::new();
    for (label, pointer) in [
        ("launchable by accounts", "/launch_permission_account_ids"),
        ("copied to", "/copy_to_regions"),
    ] {
        if unknown(change, pointer) {
            parts.push(format!("{label} {KNOWN_AFTER_APPLY}"));
            continue;
        }
        let items: Vec<String> = change
            .pointer(&format!("/after{pointer}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        if !items.is_empty() {
            parts.push(format!("{label} {}", items.join(", ")));
        }
    }
    if parts.is_empty() {
        "—".to_owned()
    } else {
        parts.join("; ")
    }
}

/// "changed", "unchanged" or "new" for a value across the change.
fn change_of(change: &Value, pointer: &str) -> &'static str {
    let before = change.pointer(&format!("/before{pointer}"));
    if matches!(before, None | Some(Value::Null)) {
        return "new";
    }
    if unknown(change, pointer) {
        return "changed";
    }
    if change.pointer(&format!("/after{pointer}")) == before {
        "unchanged"
    } else {
        "changed"
    }
}

fn provider_config(plan: &Value) -> Option<&Value> {
    plan.pointer("/configuration/provider_config")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .find(|(name, _)| name.as_str() == "safebox" || name.starts_with("safebox."))
        .map(|(_, config)| config)
}

fn provider_allows_simulation(plan: &Value) -> bool {
    let configs = plan
        .pointer("/configuration/provider_config")
        .and_then(Value::as_object);
    configs.into_iter().flatten().any(|(name, config)| {
        name.starts_with("safebox")
            // A single nested block shows as an object; older Terraform wrote a list.
            && [
                "/expressions/attestation/allow_simulated/constant_value",
                "/expressions/attestation/0/allow_simulated/constant_value",
            ]
            .iter()
            .any(|p| config.pointer(p).is_some_and(|v| v == &Value::Bool(true)))
    })
}

// ---------------------------------------------------------------------------------------------
// Image inputs

/// One SSH authorized key, as an auditor compares it with the operator's key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SshKey {
    options: String,
    key_type: String,
    comment: String,
    /// OpenSSH's `SHA256:` fingerprint (`ssh-keygen -lf`), or why there is none.
    fingerprint: String,
}

/// The keys of an `authorized_keys` text (one key a line; blank and `#` lines skipped).
/// Options before the key type (`from="…"`, `command="…"`) are kept: they limit the key.
fn ssh_keys(authorized: &str) -> Vec<SshKey> {
    authorized
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|line| {
            let tokens: Vec<&str> = line.split_whitespace().collect();
            let at = tokens
                .iter()
                .position(|t| t.starts_with("ssh-") || t.starts_with("ecdsa-") || t.starts_with("sk-"));
            let Some(at) = at else {
                return SshKey {
                    options: String::new(),
                    key_type: "?".into(),
                    comment: String::new(),
                    fingerprint: "not an SSH public key line".into(),
                };
            };
            let fingerprint = tokens
                .get(at + 1)
                .and_then(|blob| base64::engine::general_purpose::STANDARD.decode(blob).ok())
                .map_or_else(
                    || "the key is not base64".to_owned(),
                    |blob| {
                        format!(
                            "SHA256:{}",
                            base64::engine::general_purpose::STANDARD_NO_PAD.encode(sha2::Sha256::digest(blob))
                        )
                    },
                );
            SshKey {
                options: tokens[..at].join(" "),
                key_type: tokens[at].to_owned(),
                comment: tokens.get(at + 2..).map(|c| c.join(" ")).unwrap_or_default(),
                fingerprint,
            }
        })
        .collect()
}

/// The inputs table's rows for one image: kernel, command line, layers in order, the SSH
/// daemon of the development image, and the manifest that records them.
fn input_rows(address: &str, change: &Value) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    let mut input = |what: String, pointer: &str, placed: String| {
        rows.push(vec![
            address.to_owned(),
            what,
            after(change, &format!("{pointer}/source")),
            after(change, &format!("{pointer}/sha256")),
            placed,
            change_of(change, pointer).to_owned(),
        ]);
    };
    input("kernel".into(), "/kernel", "—".into());
    if change.pointer("/after/boot_stub").is_some_and(|v| !v.is_null()) {
        input("boot stub".into(), "/boot_stub", "—".into());
    }
    if unknown(change, "/layer") {
        input("layers".into(), "/layer", "—".into());
    }
    let layers = change
        .pointer("/after/layer")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    for index in 0..layers {
        let pointer = format!("/layer/{index}");
        let destination = match after(change, &format!("{pointer}/destination")) {
            d if d == "—" => "unpacked at /".to_owned(),
            d => d,
        };
        input(
            format!("layer {}: {}", index + 1, after(change, &format!("{pointer}/name"))),
            &pointer,
            destination,
        );
    }
    if change.pointer("/after/dev_access").is_some_and(|v| !v.is_null()) {
        input(
            "sshd (development image only)".into(),
            "/dev_access/sshd",
            "development image".into(),
        );
    }
    rows.push(vec![
        address.to_owned(),
        "kernel command line".into(),
        after(change, "/cmdline"),
        "—".into(),
        "—".into(),
        change_of(change, "/cmdline").to_owned(),
    ]);
    rows.push(vec![
        address.to_owned(),
        "manifest (records all of the above)".into(),
        "—".into(),
        after(change, "/manifest_sha256"),
        "—".into(),
        change_of(change, "/manifest_sha256").to_owned(),
    ]);
    rows
}

/// The SSH keys table's rows for one image's development access.
fn ssh_key_rows(address: &str, change: &Value) -> Vec<Vec<String>> {
    let pointer = "/dev_access/ssh_authorized_keys";
    if unknown(change, pointer) {
        return vec![vec![
            address.to_owned(),
            KNOWN_AFTER_APPLY.into(),
            String::new(),
            String::new(),
            String::new(),
        ]];
    }
    let Some(keys) = change.pointer(&format!("/after{pointer}")).and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut rows = Vec::new();
    for (index, entry) in keys.iter().enumerate() {
        if unknown(change, &format!("{pointer}/{index}")) {
            rows.push(vec![
                address.to_owned(),
                KNOWN_AFTER_APPLY.into(),
                String::new(),
                String::new(),
                String::new(),
            ]);
            continue;
        }
        for key in ssh_keys(entry.as_str().unwrap_or_default()) {
            rows.push(vec![
                address.to_owned(),
                key.key_type,
                key.comment,
                key.fingerprint,
                if key.options.is_empty() {
                    "—".into()
                } else {
                    key.options
                },
            ]);
        }
    }
    rows
}

// ---------------------------------------------------------------------------------------------
// Policies and their updates

/// `ALGORITHM key HEX…`: a signer key as an auditor can recompute it, the first hex digits of
/// the SHA-256 of its DER SubjectPublicKeyInfo.
fn key_fingerprint(key: &Value) -> String {
    let algorithm = key["algorithm"].as_str().unwrap_or("?");
    let fingerprint = key["spki"]
        .as_str()
        .and_then(|spki| base64::engine::general_purpose::STANDARD.decode(spki).ok())
        .map_or_else(
            || "(unreadable key)".to_owned(),
            |der| hex::encode(sha2::Sha256::digest(der))[..KEY_FINGERPRINT_HEX].to_owned(),
        );
    match key["kms_key_id"].as_str() {
        Some(kms) => format!("{algorithm} key {fingerprint} (KMS {kms})"),
        None => format!("{algorithm} key {fingerprint}"),
    }
}

fn signer_text(signer: &Value) -> String {
    format!("role {}, {}", text(&signer["role"]), key_fingerprint(&signer["key"]))
}

fn rule_text(rule: &Value) -> String {
    let roles: Vec<String> = rule["roles"].as_array().into_iter().flatten().map(text).collect();
    format!("{} of role {}", text(&rule["threshold"]), roles.join(" or "))
}

/// One difference between two versions of a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PolicyDifference {
    /// What changed: `signer auditor-c added`, `rule image.publish changed`, `expires_at`…
    item: String,
    before: String,
    after: String,
}

impl PolicyDifference {
    fn new(item: impl Into<String>, before: impl Into<String>, after: impl Into<String>) -> Self {
        Self {
            item: item.into(),
            before: before.into(),
            after: after.into(),
        }
    }
}

/// The entries of a document's `key` array, by their `id_field`.
fn by_field<'a>(document: &'a Value, key: &str, id_field: &str) -> BTreeMap<String, &'a Value> {
    document[key]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| (text(&entry[id_field]), entry))
        .collect()
}

/// What changes from policy document `before` to `after` (both as `document` shows them):
/// the name, the version, signers added, removed or changed (role, key), rules added,
/// removed or changed (threshold, roles) and the expiry. Signers are matched by id and rules
/// by action, as the documents order them.
fn policy_differences(before: &Value, after: &Value) -> Vec<PolicyDifference> {
    let mut differences = Vec::new();
    if before["name"] != after["name"] {
        differences.push(PolicyDifference::new(
            "name",
            text(&before["name"]),
            text(&after["name"]),
        ));
    }
    if before["version"] != after["version"] {
        differences.push(PolicyDifference::new(
            "version",
            text(&before["version"]),
            text(&after["version"]),
        ));
    }
    let old = by_field(before, "signers", "id");
    let new = by_field(after, "signers", "id");
    for id in old.keys().chain(new.keys()).collect::<BTreeSet<_>>() {
        match (old.get(id), new.get(id)) {
            (Some(o), None) => {
                differences.push(PolicyDifference::new(
                    format!("signer {id} removed"),
                    signer_text(o),
                    "—",
                ));
            }
            (None, Some(n)) => {
                differences.push(PolicyDifference::new(format!("signer {id} added"), "—", signer_text(n)));
            }
            (Some(o), Some(n)) if o != n => {
                differences.push(PolicyDifference::new(
                    format!("signer {id} changed"),
                    signer_text(o),
                    signer_text(n),
                ));
            }
            _ => {}
        }
    }
    let old = by_field(before, "rules", "action");
    let new = by_field(after, "rules", "action");
    for action in old.keys().chain(new.keys()).collect::<BTreeSet<_>>() {
        match (old.get(action), new.get(action)) {
            (Some(o), None) => {
                differences.push(PolicyDifference::new(
                    format!("rule {action} removed"),
                    rule_text(o),
                    "—",
                ));
            }
            (None, Some(n)) => {
                differences.push(PolicyDifference::new(format!("rule {action} added"), "—", rule_text(n)));
            }
            (Some(o), Some(n)) if o != n => {
                differences.push(PolicyDifference::new(
                    format!("rule {action} changed"),
                    rule_text(o),
                    rule_text(n),
                ));
            }
            _ => {}
        }
    }
    if before["expires_at"] != after["expires_at"] {
        let expiry = |v: &Value| v.as_str().unwrap_or("never").to_owned();
        differences.push(PolicyDifference::new(
            "expires_at",
            expiry(&before["expires_at"]),
            expiry(&after["expires_at"]),
        ));
    }
    differences
}

/// A `safebox_policy` of the plan, as governed changes refer to it by id.
struct PlannedPolicy {
    address: String,
    name: String,
    version: String,
    digest: String,
    /// The document in force now (prior state), when the policy exists.
    document: Option<String>,
    /// Whether this plan changes or deletes it.
    changing: bool,
}

impl PlannedPolicy {
    fn label(&self, id: &str) -> String {
        format!(
            "{} ({}, {id}, version {}, {})",
            self.name, self.address, self.version, self.digest
        )
    }
}

/// The plan's policies by id (known ids only: a policy created by this plan has none yet).
fn planned_policies(changes: &[&Value]) -> BTreeMap<String, PlannedPolicy> {
    let mut policies = BTreeMap::new();
    for resource in changes.iter().filter(|r| r["type"] == "safebox_policy") {
        let change = &resource["change"];
        let Some(id) = before_str(change, "/id").or_else(|| after_str(change, "/id")) else {
            continue;
        };
        let from = if change["before"].is_null() {
            "/after"
        } else {
            "/before"
        };
        let field = |name: &str| change.pointer(&format!("{from}/{name}")).map_or("—".into(), text);
        policies.insert(
            id.to_owned(),
            PlannedPolicy {
                address: text(&resource["address"]),
                name: field("name"),
                version: field("version"),
                digest: field("digest"),
                document: before_str(change, "/document").map(str::to_owned),
                changing: !matches!(actions(change).as_slice(), ["no-op"] | ["read"]),
            },
        );
    }
    policies
}

// ---------------------------------------------------------------------------------------------
// Governed changes

/// A policy that governs a change: how the report names it, and its document when approvals
/// can be counted against it offline (else why not).
struct Governor {
    label: String,
    document: Result<String, String>,
    /// Whether its rule must be met only if it has one (a new version, a policy moved to).
    only_if_ruled: bool,
}

/// The change digest of a governed change, as far as the plan shows it.
enum PlannedDigest {
    Known(String),
    Unknown,
    /// A policy's deletion: Terraform plans no values for a deleted resource, so the digest
    /// is only in `terraform plan`'s warning.
    InPlanOutput,
}

/// One governed change of the plan.
struct GovernedChange {
    address: String,
    terraform_action: String,
    action: Action,
    digest: PlannedDigest,
    governors: Vec<Governor>,
    /// Whether the plan cannot tell if a policy governs it at all.
    maybe: bool,
    /// Approvals given inline in the resource's `approvals` attribute.
    inline: Vec<Approval>,
}

/// The governing policy `id`, as the plan shows it.
fn governor_by_id(policies: &BTreeMap<String, PlannedPolicy>, id: &str, only_if_ruled: bool) -> Governor {
    match policies.get(id) {
        Some(policy) => Governor {
            label: policy.label(id),
            document: match (&policy.document, policy.changing) {
                (_, true) => Err(format!(
                    "its policy {} changes in this same plan, and apply counts approvals against the version in force then",
                    policy.address
                )),
                (Some(document), false) => Ok(document.clone()),
                (None, false) => Err(format!("the document of {} is not in this plan", policy.address)),
            },
            only_if_ruled,
        },
        None => Governor {
            label: format!("{id} (not in this plan)"),
            document: Err(format!("policy {id} is not in this plan, so its document is not at hand")),
            only_if_ruled,
        },
    }
}

/// The module path of a resource change's `module_address` (`module.a["x"].module.b` ->
/// `["a", "b"]`), to find its configuration.
fn module_path(module_address: &str) -> Vec<String> {
    let mut path = Vec::new();
    let mut rest = module_address;
    while let Some(after_prefix) = rest.strip_prefix("module.") {
        let end = after_prefix.find(['.', '[']).unwrap_or(after_prefix.len());
        path.push(after_prefix[..end].to_owned());
        rest = &after_prefix[end..];
        if rest.starts_with('[') {
            // Skip the instance key, which may be a quoted string holding dots or brackets.
            let mut quoted = false;
            let mut escaped = false;
            let mut close = rest.len();
            for (i, c) in rest.char_indices() {
                match c {
                    _ if escaped => escaped = false,
                    '\\' if quoted => escaped = true,
                    '"' => quoted = !quoted,
                    ']' if !quoted => {
                        close = i + 1;
                        break;
                    }
                    _ => {}
                }
            }
            rest = &rest[close..];
        }
        rest = rest.strip_prefix('.').unwrap_or(rest);
    }
    path
}

/// How deep `policy_id` is followed through what a resource uses (link -> box -> image).
const MAX_INHERITANCE_DEPTH: usize = 4;

/// The resource changes that a resource's configured attribute `attribute` refers to (in the
/// same module), or `None` when the configuration has no expression for it.
fn config_references<'a>(
    plan: &Value,
    resource: &Value,
    attribute: &str,
    changes: &[&'a Value],
) -> Option<Vec<&'a Value>> {
    let module_address = resource["module_address"].as_str().unwrap_or_default();
    let mut module = plan.pointer("/configuration/root_module")?;
    for name in module_path(module_address) {
        module = module.pointer(&format!("/module_calls/{name}/module"))?;
    }
    let config = module["resources"]
        .as_array()?
        .iter()
        .find(|r| r["mode"] == "managed" && r["type"] == resource["type"] && r["name"] == resource["name"])?;
    let references = config.pointer(&format!("/expressions/{attribute}"))?;
    let prefix = if module_address.is_empty() {
        String::new()
    } else {
        format!("{module_address}.")
    };
    let mut found: Vec<&Value> = Vec::new();
    for reference in references["references"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
    {
        // `safebox_image.app.id` and `safebox_image.app` are both listed; a reference whose
        // instance key is not constant (`each.key`) matches every instance.
        let address = format!("{prefix}{reference}");
        for change in changes {
            let candidate = change["address"].as_str().unwrap_or_default();
            let matches = candidate == address
                || candidate
                    .strip_prefix(address.as_str())
                    .is_some_and(|rest| rest.starts_with('['));
            if matches && !found.iter().any(|f| f["address"] == change["address"]) {
                found.push(change);
            }
        }
    }
    Some(found)
}

/// The policy governing a resource whose `policy_id` the plan may not know yet.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Inherited {
    /// Nothing governs it.
    Ungoverned,
    /// The policy with this id.
    Id(String),
    /// The `safebox_policy` at this address, created by this plan (no id yet).
    Created(String),
    /// The plan does not tell.
    Unknown,
}

/// The policy of several things a resource uses: ungoverned if none is governed, the one
/// policy if they agree, unknown otherwise.
fn combine(items: Vec<Inherited>) -> Inherited {
    if items.is_empty() {
        return Inherited::Unknown;
    }
    let mut governed: BTreeSet<Inherited> = items.into_iter().filter(|i| *i != Inherited::Ungoverned).collect();
    match governed.len() {
        0 => Inherited::Ungoverned,
        1 => governed.pop_first().unwrap_or(Inherited::Unknown),
        _ => Inherited::Unknown,
    }
}

/// The policy that governs `resource`: its planned `policy_id` when known; else the policy its
/// configuration names (created by this plan); else, as the provider inherits it, the policy
/// of the image a box or key uses, or of the boxes a link joins.
fn resource_policy(plan: &Value, resource: &Value, changes: &[&Value], depth: usize) -> Inherited {
    let change = &resource["change"];
    if !unknown(change, "/policy_id") {
        return after_str(change, "/policy_id").map_or(Inherited::Ungoverned, |id| Inherited::Id(id.to_owned()));
    }
    if depth > MAX_INHERITANCE_DEPTH {
        return Inherited::Unknown;
    }
    let uses: &[&str] = match resource["type"].as_str().unwrap_or_default() {
        "safebox_enclave" | "safebox_sealed_key" => &["image_id"],
        "safebox_attested_link" => &["a_enclave_id", "b_enclave_id"],
        _ => &[],
    };
    let mut items = Vec::new();
    for attribute in uses {
        match config_references(plan, resource, attribute, changes) {
            Some(targets) if !targets.is_empty() => {
                items.extend(targets.iter().map(|t| resource_policy(plan, t, changes, depth + 1)));
            }
            _ => items.push(Inherited::Unknown),
        }
    }
    let inherited = combine(items);
    // A policy_id set in configuration may only name the policy of what the resource uses;
    // when that is ungoverned, or the expression leads to no policy in the plan (a variable,
    // a local), the configured one is all there is.
    match config_references(plan, resource, "policy_id", changes) {
        None => inherited,
        Some(named) => match named.iter().find(|r| r["type"] == "safebox_policy") {
            Some(policy) => Inherited::Created(text(&policy["address"])),
            None if inherited == Inherited::Ungoverned => Inherited::Unknown,
            None => inherited,
        },
    }
}

/// The governed action of a change to a resource of type `kind`.
fn governed_action(kind: &str, change: &Value) -> Option<Action> {
    Some(match kind {
        "safebox_image" => {
            // In place, an image is only shared or copied (image.share), or moved to another
            // policy (image.publish under the current one).
            let moved = unknown(change, "/policy_id")
                || change.pointer("/before/policy_id") != change.pointer("/after/policy_id");
            if creates(change) || moved {
                Action::ImagePublish
            } else {
                Action::ImageShare
            }
        }
        "safebox_enclave" => Action::EnclaveDeploy,
        "safebox_attested_link" => Action::LinkCreate,
        // Only binding a key to the development image is governed.
        "safebox_sealed_key" if after_str(change, "/variant").is_some_and(|v| v != "dev") => return None,
        "safebox_sealed_key" => Action::KeyBind,
        "safebox_policy" => Action::PolicyUpdate,
        _ => return None,
    })
}

/// Whether a policy document has a rule for `action`.
fn has_rule(document: &str, action: Action) -> bool {
    serde_json::from_str::<Value>(document).is_ok_and(|d| {
        d["rules"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["action"] == action.as_str())
    })
}

/// The governed change a resource change makes, if any. A change is governed in this plan when
/// the provider planned its approval status unknown (it will be counted at apply) or planned
/// a new change digest; a governed policy's deletion is recognised from its document.
fn governed_change(
    plan: &Value,
    resource: &Value,
    changes: &[&Value],
    policies: &BTreeMap<String, PlannedPolicy>,
) -> Option<GovernedChange> {
    let kind = resource["type"].as_str()?;
    if !GOVERNED_TYPES.contains(&kind) {
        return None;
    }
    let change = &resource["change"];
    let address = text(&resource["address"]);
    let terraform_action = action_of(change);
    if actions(change).as_slice() == ["delete"] {
        let document = before_str(change, "/document").filter(|d| has_rule(d, Action::PolicyUpdate))?;
        let id = before_str(change, "/id").unwrap_or_default();
        return Some(GovernedChange {
            address,
            terraform_action,
            action: Action::PolicyUpdate,
            digest: PlannedDigest::InPlanOutput,
            governors: vec![Governor {
                label: policies.get(id).map_or_else(|| id.to_owned(), |p| p.label(id)),
                document: Ok(document.to_owned()),
                only_if_ruled: false,
            }],
            maybe: false,
            inline: Vec::new(),
        });
    }
    if matches!(actions(change).as_slice(), ["no-op"] | ["read"]) {
        return None;
    }
    let digest = if unknown(change, "/change_digest") {
        PlannedDigest::Unknown
    } else {
        PlannedDigest::Known(after_str(change, "/change_digest")?.to_owned())
    };
    let new_digest = match &digest {
        PlannedDigest::Known(d) => before_str(change, "/change_digest") != Some(d.as_str()),
        _ => true,
    };
    if !unknown(change, "/approval_status") && !new_digest {
        return None;
    }
    let action = governed_action(kind, change)?;
    let mut maybe = false;
    let governors = if kind == "safebox_policy" {
        let mut governors = Vec::new();
        if let Some(document) = before_str(change, "/document") {
            governors.push(Governor {
                label: format!(
                    "{} ({address}, version {} in force, {})",
                    before_str(change, "/name").unwrap_or("?"),
                    text(&change["before"]["version"]),
                    before_str(change, "/digest").unwrap_or("?")
                ),
                document: Ok(document.to_owned()),
                only_if_ruled: false,
            });
        }
        governors.push(Governor {
            label: format!(
                "{} (the new version {}, {})",
                after(change, "/name"),
                after(change, "/version"),
                after(change, "/digest")
            ),
            document: after_str(change, "/document")
                .map(str::to_owned)
                .ok_or_else(|| "the new version of the policy is known only after apply".to_owned()),
            only_if_ruled: true,
        });
        governors
    } else {
        let before_id = before_str(change, "/policy_id").filter(|_| !creates(change));
        let after_id = after_str(change, "/policy_id");
        let mut governors = Vec::new();
        // An update is governed by the policy in force (the prior one), and by the one it moves
        // to when that one has a rule for the action.
        if let Some(id) = before_id {
            governors.push(governor_by_id(policies, id, false));
        }
        match after_id {
            Some(id) if Some(id) != before_id => governors.push(governor_by_id(policies, id, before_id.is_some())),
            Some(_) => {}
            None if unknown(change, "/policy_id") => {
                let only_if_ruled = before_id.is_some();
                let pending = |label: String| Governor {
                    label,
                    document: Err("its governing policy is known only after apply".into()),
                    only_if_ruled,
                };
                match resource_policy(plan, resource, changes, 0) {
                    Inherited::Ungoverned if governors.is_empty() => return None,
                    Inherited::Ungoverned => {}
                    Inherited::Id(id) => governors.push(governor_by_id(policies, &id, only_if_ruled)),
                    Inherited::Created(address) => governors.push(pending(format!(
                        "{address}, created in this plan (its id is {KNOWN_AFTER_APPLY})"
                    ))),
                    Inherited::Unknown => {
                        maybe = governors.is_empty();
                        governors.push(pending(KNOWN_AFTER_APPLY.to_owned()));
                    }
                }
            }
            None => {}
        }
        governors
    };
    let inline = change
        .pointer("/after/approvals")
        .filter(|v| v.is_array())
        .and_then(|v| parse_approvals(&v.to_string()).ok())
        .unwrap_or_default();
    Some(GovernedChange {
        address,
        terraform_action,
        action,
        digest,
        governors,
        maybe,
        inline,
    })
}

/// The approvals collected in `--approvals DIR`.
struct Collected {
    dir: PathBuf,
    approvals: Vec<Approval>,
}

/// How a governed change's approvals stand, as far as can be known before apply.
struct Standing {
    /// The status cell.
    status: String,
    /// Whether approvals were counted and fall short (or cannot be given at all).
    short: bool,
}

fn not_known(reason: &str) -> Standing {
    Standing {
        status: format!("{NOT_KNOWN_UNTIL_APPLY}: {reason}"),
        short: false,
    }
}

/// Counts the approvals of `change` offline when `collected` is given and the plan holds
/// everything needed; otherwise says why the status is not known until apply.
fn standing(change: &GovernedChange, collected: Option<&Collected>) -> Standing {
    let digest = match &change.digest {
        PlannedDigest::Known(digest) => digest,
        PlannedDigest::Unknown => {
            return not_known(
                "the change digest depends on values known only after apply, so nothing in this plan can be signed yet",
            );
        }
        PlannedDigest::InPlanOutput => {
            return not_known("Terraform plans no values for a deletion, so its change digest is only in the output of terraform plan (warning \"Deleting a governed policy\")");
        }
    };
    let Some(collected) = collected else {
        return not_known(
            "approvals may still arrive between plan and apply; pass --approvals DIR to count those collected so far",
        );
    };
    let mut approvals = collected.approvals.clone();
    approvals.extend(change.inline.iter().cloned());
    let mut parts = Vec::new();
    let mut short = false;
    for governor in &change.governors {
        let document = match &governor.document {
            Ok(document) => document,
            Err(reason) => return not_known(reason),
        };
        let policy = match Policy::from_document(document) {
            Ok(policy) => policy,
            Err(e) => return not_known(&format!("the policy document in the plan cannot be read ({e})")),
        };
        if governor.only_if_ruled && policy.rule(change.action).is_none() {
            continue;
        }
        match evaluate(&policy, change.action, digest, &approvals) {
            Ok(status) => {
                short |= !status.satisfied();
                let prefix = if change.governors.len() > 1 {
                    format!("policy {} version {}: ", policy.name(), policy.version())
                } else {
                    String::new()
                };
                parts.push(format!("{prefix}{}", status.summary_with_counted()));
            }
            Err(e) => {
                return Standing {
                    status: format!("refused at apply: {e}"),
                    short: true,
                };
            }
        }
    }
    if parts.is_empty() {
        return not_known("no governing policy's document is in this plan");
    }
    Standing {
        status: format!(
            "{} (counted offline from {}; apply counts again, and refuses an approval already used)",
            parts.join("; "),
            collected.dir.display()
        ),
        short,
    }
}

// ---------------------------------------------------------------------------------------------
// The audit log head

/// The highest audit log head recorded in the prior state, with the resource recording it;
/// conflicting heads (one sequence, two hashes) are reported as warnings.
fn audit_heads(plan: &Value, warnings: &mut Vec<Line>) -> Option<(String, String)> {
    fn walk<'a>(module: &'a Value, out: &mut Vec<(&'a str, &'a str)>) {
        for resource in module["resources"].as_array().into_iter().flatten() {
            if let (Some(address), Some(head)) = (
                resource["address"].as_str(),
                resource.pointer("/values/audit_head").and_then(Value::as_str),
            ) {
                out.push((address, head));
            }
        }
        for child in module["child_modules"].as_array().into_iter().flatten() {
            walk(child, out);
        }
    }
    let mut heads = Vec::new();
    walk(
        plan.pointer("/prior_state/values/root_module").unwrap_or(&Value::Null),
        &mut heads,
    );
    let mut by_sequence: BTreeMap<u64, BTreeMap<&str, Vec<&str>>> = BTreeMap::new();
    for (address, head) in heads {
        match head.parse::<safebox::govern::audit::AuditHead>() {
            Ok(parsed) => by_sequence
                .entry(parsed.sequence)
                .or_default()
                .entry(head)
                .or_default()
                .push(address),
            Err(e) => warnings.push(
                Line::default()
                    .code(address)
                    .text(format!(" records a damaged audit_head in state: {e}")),
            ),
        }
    }
    for (sequence, hashes) in &by_sequence {
        if hashes.len() > 1 {
            let mut line = Line::default().text(format!(
                "Resources record different hashes for audit log entry {sequence}: "
            ));
            for (i, (head, addresses)) in hashes.iter().enumerate() {
                if i > 0 {
                    line = line.text("; ");
                }
                line = line.code(*head).text(format!(" ({})", addresses.join(", ")));
            }
            warnings.push(
                line.text(". One log cannot hold both: it was rewritten, or these states come from different logs."),
            );
        }
    }
    let (_, hashes) = by_sequence.pop_last()?;
    let (head, addresses) = hashes.into_iter().next()?;
    Some((head.to_owned(), addresses.join(", ")))
}

/// `arg` quoted for a POSIX shell when it needs to be.
fn shell_quote(arg: &str) -> String {
    if !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./:=@%+-".contains(&b))
    {
        arg.to_owned()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

/// Where the evidence (records, approvals, the audit log) is, as the provider configuration
/// names it: the store's bucket, or the `state_dir`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum EvidenceStore {
    /// `s3://bucket/prefix`, as the provider's `Store::location` writes it.
    Bucket(String),
    /// The `state_dir` (relative paths are relative to Terraform's working directory).
    Folder(String),
}

impl EvidenceStore {
    /// The store of the plan's `safebox` provider configuration.
    fn of(plan: &Value) -> Self {
        let config = provider_config(plan).and_then(|c| c.get("expressions"));
        // A single nested block shows as an object; older Terraform wrote a list of one.
        let block = |value: Option<&Value>, name: &str| {
            value
                .and_then(|v| v.get(name))
                .map(|b| b.get(0).unwrap_or(b))
                .filter(|b| !b.is_null())
                .cloned()
        };
        let constant = |block: &Value, name: &str| {
            block
                .pointer(&format!("/{name}/constant_value"))
                .and_then(Value::as_str)
                .map(str::to_owned)
        };
        if let Some(s3) = block(block(config, "store").as_ref(), "s3") {
            let bucket = constant(&s3, "bucket");
            let prefix = if s3.get("prefix").is_some() {
                constant(&s3, "prefix")
            } else {
                Some(String::new())
            };
            return Self::Bucket(match (bucket, prefix) {
                (Some(bucket), Some(prefix)) => safebox::store::BucketLocation::new(&bucket, &prefix)
                    .map_or_else(|_| format!("s3://{bucket}/{prefix}"), |l| l.to_string()),
                _ => "s3://BUCKET/PREFIX".to_owned(),
            });
        }
        Self::Folder(match config.and_then(|c| c.get("state_dir")) {
            None => DEFAULT_STATE_DIR.to_owned(),
            Some(expression) => expression["constant_value"]
                .as_str()
                .map_or_else(|| "STATE_DIR".to_owned(), |dir| dir.trim_end_matches('/').to_owned()),
        })
    }

    /// What `safebox audit verify` is given to read the log.
    fn audit_log(&self) -> String {
        match self {
            Self::Bucket(location) => location.clone(),
            Self::Folder(dir) => format!("{dir}/audit.log"),
        }
    }

    /// The sentence that says where the evidence is.
    fn line(&self) -> Line {
        match self {
            Self::Bucket(location) => Line::default()
                .text("Evidence store: ")
                .code(location)
                .text(" (records, approvals and the audit log, one write-once object per entry; give `safebox audit verify` the bucket's `--region`, and `--s3-endpoint` for a VPC endpoint)."),
            Self::Folder(dir) => Line::default()
                .text("Evidence store: the provider's state_dir ")
                .code(dir)
                .text(" on the machine that runs Terraform (records, approvals and audit.log; relative paths are relative to Terraform's working directory)."),
        }
    }
}

fn audit_section(plan: &Value, warnings: &mut Vec<Line>) -> Section {
    let store = EvidenceStore::of(plan);
    let mut blocks = vec![Block::Paragraph(store.line())];
    match audit_heads(plan, warnings) {
        Some((head, addresses)) => {
            blocks.push(Block::Paragraph(
                Line::default()
                    .text("Highest audit log head recorded in the prior state: ")
                    .code(&head)
                    .text(format!(" (by {addresses}, after its last governed change). The log is a hash chain, so holding this head means holding every earlier one. Check it before signing:")),
            ));
            blocks.push(Block::Command(format!(
                "safebox audit verify {} --expect-head {}",
                shell_quote(&store.audit_log()),
                shell_quote(&head)
            )));
        }
        None => blocks.push(Block::Paragraph(Line::default().text(
            "No resource in the prior state records an audit log head: nothing governed has been applied yet.",
        ))),
    }
    Section {
        heading: "Audit log",
        blocks,
    }
}

// ---------------------------------------------------------------------------------------------
// Which plan this is

/// What the report is of: the JSON, and the saved plan when given.
struct Provenance {
    json_path: PathBuf,
    json_sha256: String,
    plan_file: Option<(PathBuf, String)>,
}

fn plan_section(plan: &Value, provenance: &Provenance, warnings: &mut Vec<Line>) -> Section {
    let mut blocks = Vec::new();
    match &provenance.plan_file {
        Some((path, sha256)) => {
            blocks.push(Block::Paragraph(
                Line::default()
                    .text("Saved plan ")
                    .code(path.display().to_string())
                    .text(", SHA-256 ")
                    .code(sha256)
                    .text(": the file that ")
                    .code(format!("terraform apply {}", path.display()))
                    .text(" applies. Sign off against this digest."),
            ));
            blocks.push(Block::Paragraph(
                Line::default()
                    .text("Read from its JSON ")
                    .code(provenance.json_path.display().to_string())
                    .text(", SHA-256 ")
                    .code(&provenance.json_sha256)
                    .text(format!(
                        ". That the JSON is of this saved plan is not checked here: produce it yourself with terraform show -json {} if in doubt.",
                        path.display()
                    )),
            ));
        }
        None => {
            blocks.push(Block::Paragraph(
                Line::default()
                    .strong("This report is of the JSON only")
                    .text(" (")
                    .code(provenance.json_path.display().to_string())
                    .text(", SHA-256 ")
                    .code(&provenance.json_sha256)
                    .text("): no saved plan was given, so nothing ties it to the plan Terraform will apply. Pass --plan-file plan.out to print that file's SHA-256."),
            ));
        }
    }
    let mut facts = Line::default().text(format!("Terraform {}", text(&plan["terraform_version"])));
    if let Some(timestamp) = plan["timestamp"].as_str() {
        facts = facts.text(format!(", planned at {timestamp}"));
    }
    blocks.push(Block::Paragraph(facts.text(".")));
    if plan["errored"] == Value::Bool(true) {
        warnings.push(
            Line::default()
                .text("Terraform reported errors while planning: this plan ")
                .strong("cannot be applied")
                .text("."),
        );
    } else if plan["applyable"] == Value::Bool(false) {
        warnings.push(Line::default().text("Terraform marks this plan as not applyable."));
    }
    Section {
        heading: "Plan",
        blocks,
    }
}

// ---------------------------------------------------------------------------------------------
// Building the report

fn policy_warnings(address: &str, change: &Value, warnings: &mut Vec<Line>) {
    if let Some(expires) = after_str(change, "/expires_at") {
        if let Ok(t) = time::OffsetDateTime::parse(expires, &time::format_description::well_known::Rfc3339) {
            let left = t - time::OffsetDateTime::now_utc();
            if left.is_negative() {
                warnings.push(Line::default().code(address).text(" ").strong("expired").text(format!(
                    " at {expires}: governed changes under it are refused until it is renewed."
                )));
            } else if left.whole_days() < EXPIRY_WARNING_DAYS {
                warnings.push(
                    Line::default()
                        .code(address)
                        .text(format!(" expires at {expires}, in {} days.", left.whole_days())),
                );
            }
        }
    }
    if let (Some(document), Some(digest)) = (after_str(change, "/document"), after_str(change, "/digest")) {
        if sha256_tagged(document.as_bytes()) != digest {
            warnings.push(
                Line::default()
                    .code(address)
                    .text(": its digest ")
                    .code(digest)
                    .text(" is ")
                    .strong("not")
                    .text(" the SHA-256 of its document; do not sign anything under it."),
            );
        }
    }
    if actions(change).as_slice() == ["update"]
        && !unknown(change, "/change_digest")
        && change.pointer("/after/change_digest").is_some_and(Value::is_null)
    {
        warnings.push(
            Line::default()
                .code(address)
                .text(" changes ")
                .strong("without approvals")
                .text(": the policy in force has no policy.update rule."),
        );
    }
}

fn policy_row(address: &str, action: &str, change: &Value) -> Vec<String> {
    let signers: Vec<String> = change
        .pointer("/after/signer")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|s| format!("{} ({})", text(&s["id"]), text(&s["role"])))
        .collect();
    let rules: Vec<String> = change
        .pointer("/after/rule")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|r| {
            format!(
                "{}: {} of {}",
                text(&r["action"]),
                text(&r["threshold"]),
                r["roles"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(text)
                    .collect::<Vec<_>>()
                    .join("/")
            )
        })
        .collect();
    vec![
        address.to_owned(),
        action.to_owned(),
        after(change, "/name"),
        after(change, "/version"),
        after(change, "/digest"),
        signers.join(", "),
        rules.join("; "),
        after_str(change, "/expires_at").unwrap_or("never").to_owned(),
    ]
}

/// The before → after rows of a policy update or deletion.
fn policy_change_rows(address: &str, change: &Value) -> Vec<Vec<String>> {
    let parse = |d: Option<&str>| d.and_then(|d| serde_json::from_str::<Value>(d).ok());
    let Some(before) = parse(before_str(change, "/document")) else {
        return Vec::new();
    };
    let row = |d: PolicyDifference| vec![address.to_owned(), d.item, d.before, d.after];
    let before_digest = before_str(change, "/digest").unwrap_or("—").to_owned();
    if change["after"].is_null() {
        return vec![row(PolicyDifference::new(
            "policy deleted",
            format!("version {}, {before_digest}", text(&before["version"])),
            "—",
        ))];
    }
    if unknown(change, "/document") {
        return vec![row(PolicyDifference::new("document", before_digest, KNOWN_AFTER_APPLY))];
    }
    let Some(after_document) = parse(after_str(change, "/document")) else {
        return Vec::new();
    };
    if after_document == before {
        return Vec::new();
    }
    let mut rows: Vec<Vec<String>> = policy_differences(&before, &after_document)
        .into_iter()
        .map(row)
        .collect();
    rows.push(row(PolicyDifference::new(
        "digest",
        before_digest,
        after(change, "/digest"),
    )));
    rows
}

/// The images table's row: digests and PCRs as planned, and where the image is shared.
fn image_row(address: &str, action: &str, change: &Value) -> Vec<String> {
    vec![
        address.to_owned(),
        action.to_owned(),
        after(change, "/name"),
        after(change, "/manifest_sha256"),
        format!(
            "{} ({})",
            after(change, "/prod_measurements/image_sha256"),
            change_of(change, "/prod_measurements")
        ),
        after(change, "/prod_measurements/pcr0"),
        after(change, "/prod_measurements/pcr1"),
        after(change, "/prod_measurements/pcr2"),
        after(change, "/dev_measurements/pcr0"),
        after(change, "/seal_proof_sha256"),
        distribution(change),
    ]
}

/// The boxes table's row; a development box is flagged in the row and in the warnings.
fn box_row(address: &str, action: &str, change: &Value, warnings: &mut Vec<Line>) -> Vec<String> {
    let variant = after(change, "/variant");
    if variant == "dev" {
        warnings.push(
            Line::default()
                .code(address)
                .text(" boots the ")
                .strong("development")
                .text(" image, which has SSH access: never give it real data."),
        );
    }
    if change.pointer("/after/attestation/simulated") == Some(&Value::Bool(true)) {
        warnings.push(Line::default().code(address).text(" was attested by a simulated root."));
    }
    vec![
        address.to_owned(),
        action.to_owned(),
        after(change, "/image_id"),
        if variant == "dev" {
            "dev (SSH access)".into()
        } else {
            variant
        },
        pcrs_text(change, "/expected_pcrs"),
        after(change, "/status"),
    ]
}

/// The links table's row: both sides and the PCRs each must attest to.
fn link_row(address: &str, action: &str, change: &Value) -> Vec<String> {
    vec![
        address.to_owned(),
        action.to_owned(),
        after(change, "/a_enclave_id"),
        pcrs_text(change, "/a_expected_pcrs"),
        after(change, "/b_enclave_id"),
        pcrs_text(change, "/b_expected_pcrs"),
        after(change, "/binding_sha256"),
    ]
}

/// The attestation a sealed key's policy requires, as KMS will check it: its condition keys
/// without the `kms:RecipientAttestation:` prefix, PCRs in numeric order (`ImageSha384 + PCR0`
/// for an `"eif"` image, `NitroTPMPCR4 + NitroTPMPCR12` for a `"uki"` image), read from the
/// planned policy itself.
fn released_to(change: &Value) -> String {
    let Some(policy) = after_str(change, "/policy") else {
        return after(change, "/policy");
    };
    let Ok(policy) = serde_json::from_str::<Value>(policy) else {
        return "the planned policy is not JSON".to_owned();
    };
    let mut conditions: Vec<&str> = policy["Statement"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["Effect"] == "Allow")
        .filter_map(|s| s["Condition"]["StringEqualsIgnoreCase"].as_object())
        .flat_map(serde_json::Map::keys)
        .map(|key| key.strip_prefix("kms:RecipientAttestation:").unwrap_or(key))
        .collect();
    conditions.sort_by_cached_key(|key| {
        let name = key.trim_end_matches(|c: char| c.is_ascii_digit());
        (name.to_owned(), key[name.len()..].parse::<u32>().unwrap_or(0))
    });
    if conditions.is_empty() {
        "no attestation condition".to_owned()
    } else {
        conditions.join(" + ")
    }
}

/// The sealed keys table's row: what the key is released to, and who administers it.
fn key_row(address: &str, action: &str, change: &Value, warnings: &mut Vec<Line>) -> Vec<String> {
    if after(change, "/variant") == "dev" {
        warnings.push(
            Line::default()
                .code(address)
                .text(" releases its key to the ")
                .strong("development")
                .text(" image, which has SSH access."),
        );
    }
    let list = |pointer: &str| {
        if unknown(change, pointer) {
            return KNOWN_AFTER_APPLY.to_owned();
        }
        change
            .pointer(&format!("/after{pointer}"))
            .and_then(Value::as_array)
            .map_or_else(
                || after(change, pointer),
                |items| items.iter().map(text).collect::<Vec<_>>().join(", "),
            )
    };
    let policy = match after_str(change, "/policy") {
        Some(policy) => hex::encode(sha2::Sha256::digest(policy.as_bytes())),
        None => after(change, "/policy"),
    };
    vec![
        address.to_owned(),
        action.to_owned(),
        after(change, "/name"),
        after(change, "/image_id"),
        after(change, "/variant"),
        released_to(change),
        list("/administrator_arns"),
        list("/recipient_arns"),
        policy,
    ]
}

/// The governed changes table's row for `governed_change`, with the warning it deserves.
fn governed_row(
    governed_change: GovernedChange,
    collected: Option<&Collected>,
    warnings: &mut Vec<Line>,
) -> Vec<String> {
    let Standing { status, short } = standing(&governed_change, collected);
    let digest = match &governed_change.digest {
        PlannedDigest::Known(d) => d.clone(),
        PlannedDigest::Unknown => KNOWN_AFTER_APPLY.to_owned(),
        PlannedDigest::InPlanOutput => "in terraform plan's output only".to_owned(),
    };
    let policy_names = governed_change
        .governors
        .iter()
        .map(|g| g.label.clone())
        .collect::<Vec<_>>()
        .join("\n");
    if short {
        warnings.push(Line::default().code(&governed_change.address).text(format!(
            ": approvals are missing for {}; the Governed changes table says who counted and who is missing.",
            governed_change.action
        )));
    } else if governed_change.maybe {
        warnings.push(Line::default().code(&governed_change.address).text(format!(
            ": whether a policy governs it ({}) and its change digest are known only after apply; apply what it depends on first, then plan again to see them.",
            governed_change.action
        )));
    } else if matches!(governed_change.digest, PlannedDigest::Unknown) {
        warnings.push(Line::default().code(&governed_change.address).text(format!(
            ": the change digest of {} is known only after apply, so it cannot be signed from this plan; apply what it depends on first, then plan again to see it.",
            governed_change.action
        )));
    } else if collected.is_none() {
        warnings.push(
            Line::default()
                .code(&governed_change.address)
                .text(format!(
                    ": {} needs approvals; whether they are in place is {NOT_KNOWN_UNTIL_APPLY}, and apply refuses until they are.",
                    governed_change.action
                )),
        );
    }
    vec![
        governed_change.address,
        governed_change.terraform_action,
        if governed_change.maybe {
            format!("{}, if governed", governed_change.action)
        } else {
            governed_change.action.to_string()
        },
        if policy_names.is_empty() {
            "—".into()
        } else {
            policy_names
        },
        digest,
        status,
    ]
}

fn build(plan: &Value, provenance: &Provenance, collected: Option<&Collected>, mut warnings: Vec<Line>) -> Report {
    let changes: Vec<&Value> = plan["resource_changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["type"].as_str().is_some_and(|t| t.starts_with("safebox_")))
        .collect();
    let policies = planned_policies(&changes);
    let mut images = Vec::new();
    let mut inputs = Vec::new();
    let mut ssh = Vec::new();
    let mut boxes = Vec::new();
    let mut links = Vec::new();
    let mut policy_rows = Vec::new();
    let mut policy_changes = Vec::new();
    let mut keys = Vec::new();
    let mut governed = Vec::new();
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let plan_section = plan_section(plan, provenance, &mut warnings);
    if provider_allows_simulation(plan) {
        warnings.push(
            Line::default()
                .text("The provider trusts the local backend's ")
                .strong("simulated")
                .text(" attestation root (allow_simulated = true): box attestations prove nothing about hardware."),
        );
    }
    for resource in &changes {
        let address = text(&resource["address"]);
        let change = &resource["change"];
        let action = action_of(change);
        *counts.entry(action.clone()).or_default() += 1;
        match resource["type"].as_str().unwrap_or_default() {
            "safebox_image" => {
                images.push(image_row(&address, &action, change));
                if !change["after"].is_null() {
                    inputs.extend(input_rows(&address, change));
                    ssh.extend(ssh_key_rows(&address, change));
                }
            }
            "safebox_enclave" => boxes.push(box_row(&address, &action, change, &mut warnings)),
            "safebox_attested_link" => links.push(link_row(&address, &action, change)),
            "safebox_policy" => {
                policy_warnings(&address, change, &mut warnings);
                policy_rows.push(policy_row(&address, &action, change));
                policy_changes.extend(policy_change_rows(&address, change));
            }
            "safebox_sealed_key" => keys.push(key_row(&address, &action, change, &mut warnings)),
            _ => {}
        }
        if let Some(governed_change) = governed_change(plan, resource, &changes, &policies) {
            governed.push(governed_row(governed_change, collected, &mut warnings));
        }
    }
    let summary = if counts.is_empty() {
        "none".to_owned()
    } else {
        counts
            .iter()
            .map(|(action, n)| format!("{n} × {action}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let audit = audit_section(plan, &mut warnings);
    let governed_section = Section::table(
        "Governed changes",
        "No governed change in this plan.",
        vec![
            "resource",
            "change",
            "governed action",
            "governing policy",
            "change_digest (what auditors sign)",
            "approval status",
        ],
        governed,
    );
    Report {
        title: format!("Safebox plan report (Terraform {})", text(&plan["terraform_version"])),
        summary,
        warnings,
        sections: vec![
            plan_section,
            Section::table(
                "Images",
                "No safebox_image in this plan.",
                vec![
                    "resource",
                    "action",
                    "name",
                    "manifest_sha256",
                    "prod image_sha256",
                    "prod PCR0",
                    "prod PCR1",
                    "prod PCR2",
                    "dev PCR0",
                    "seal_proof_sha256",
                    "shared with / copied to",
                ],
                images,
            ),
            Section::table(
                "Image inputs",
                "No image inputs in this plan.",
                vec!["image", "input", "source", "sha256", "placed at", "change"],
                inputs,
            ),
            Section::table(
                "SSH access (development images)",
                "No development image in this plan grants SSH access.",
                vec!["image", "key type", "comment", "fingerprint", "options"],
                ssh,
            ),
            Section::table(
                "Boxes",
                "No safebox_enclave in this plan.",
                vec!["resource", "action", "image", "variant", "expected PCRs", "status"],
                boxes,
            ),
            Section::table(
                "Attested links",
                "No safebox_attested_link in this plan.",
                vec![
                    "resource",
                    "action",
                    "side A",
                    "A expected PCRs",
                    "side B",
                    "B expected PCRs",
                    "binding_sha256",
                ],
                links,
            ),
            Section::table(
                "Governance policies",
                "No safebox_policy in this plan.",
                vec![
                    "resource", "action", "name", "version", "digest", "signers", "rules", "expires",
                ],
                policy_rows,
            ),
            Section::table(
                "Policy changes (before → after)",
                "No policy changes in this plan.",
                vec!["policy", "what", "before", "after"],
                policy_changes,
            ),
            Section::table(
                "Sealed keys",
                "No safebox_sealed_key in this plan.",
                vec![
                    "resource",
                    "action",
                    "name",
                    "image",
                    "variant",
                    "released only to",
                    "administrators (never decrypt)",
                    "recipients",
                    "policy SHA-256",
                ],
                keys,
            ),
            governed_section,
            audit,
        ],
    }
}

// ---------------------------------------------------------------------------------------------
// Rendering

/// Text for Markdown: inert (no HTML passes through) and unable to break a table.
fn markdown_text(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('|', "\\|")
        .replace(['\n', '\r'], " ")
}

/// A Markdown code span that holds `s` literally, whatever backticks it contains.
fn markdown_code(s: &str) -> String {
    let s = s.replace(['\n', '\r'], " ");
    let mut longest = 0;
    let mut run = 0;
    for c in s.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    let fence = "`".repeat(longest + 1);
    let pad = if s.starts_with('`') || s.ends_with('`') {
        " "
    } else {
        ""
    };
    format!("{fence}{pad}{s}{pad}{fence}")
}

fn markdown_line(line: &Line) -> String {
    line.0
        .iter()
        .map(|span| match span {
            Span::Text(s) => markdown_text(s),
            Span::Code(s) => markdown_code(s),
            Span::Strong(s) => format!("**{}**", markdown_text(s)),
        })
        .collect()
}

fn markdown_cell(s: &str) -> String {
    s.split('\n').map(markdown_text).collect::<Vec<_>>().join("<br>")
}

fn markdown(report: &Report) -> String {
    let mut out = format!("# {}\n\n", markdown_text(&report.title));
    let _ = writeln!(
        out,
        "Changes to Safebox resources: {}.\n",
        markdown_text(&report.summary)
    );
    out.push_str("## Warnings\n\n");
    if report.warnings.is_empty() {
        out.push_str("None.\n\n");
    } else {
        for warning in &report.warnings {
            let _ = writeln!(out, "- {}", markdown_line(warning));
        }
        out.push('\n');
    }
    for section in &report.sections {
        let _ = writeln!(out, "## {}\n", markdown_text(section.heading));
        for block in &section.blocks {
            match block {
                Block::Paragraph(line) => {
                    let _ = writeln!(out, "{}\n", markdown_line(line));
                }
                Block::Command(command) => {
                    let fence = if command.contains("```") { "~~~~" } else { "```" };
                    let _ = writeln!(out, "{fence}sh\n{command}\n{fence}\n");
                }
                Block::Table { columns, rows } => {
                    let _ = writeln!(out, "| {} |", columns.join(" | "));
                    let _ = writeln!(out, "|{}|", vec![" --- "; columns.len()].join("|"));
                    for row in rows {
                        let cells: Vec<String> = row.iter().map(|c| markdown_cell(c)).collect();
                        let _ = writeln!(out, "| {} |", cells.join(" | "));
                    }
                    out.push('\n');
                }
            }
        }
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn html_line(line: &Line) -> String {
    line.0
        .iter()
        .map(|span| match span {
            Span::Text(s) => escape(s),
            Span::Code(s) => format!("<code>{}</code>", escape(s)),
            Span::Strong(s) => format!("<strong>{}</strong>", escape(s)),
        })
        .collect()
}

/// The page's only styles; the Content-Security-Policy forbids scripts and every external
/// load, so the page stays inert even if a value were to slip through unescaped.
const HTML_HEAD: &str = "<meta charset=\"utf-8\"><meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\"><style>body{font-family:system-ui,sans-serif;margin:2rem;color:#222}table{border-collapse:collapse;margin-bottom:1.5rem;font-size:.85rem}th,td{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;vertical-align:top;word-break:break-all}th{background:#f2f2f2}.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.5rem 1rem}code,pre{background:#f4f4f4}pre{padding:.5rem;white-space:pre-wrap;word-break:break-all}</style>";

fn html(report: &Report) -> String {
    let mut out = String::from("<!DOCTYPE html>\n<html lang=\"en\"><head>");
    out.push_str(HTML_HEAD);
    let _ = writeln!(out, "<title>{}</title></head><body>", escape(&report.title));
    let _ = writeln!(out, "<h1>{}</h1>", escape(&report.title));
    let _ = writeln!(out, "<p>Changes to Safebox resources: {}.</p>", escape(&report.summary));
    out.push_str("<h2>Warnings</h2>\n");
    if report.warnings.is_empty() {
        out.push_str("<p>None.</p>\n");
    } else {
        out.push_str("<div class=\"warn\"><ul>\n");
        for warning in &report.warnings {
            let _ = writeln!(out, "<li>{}</li>", html_line(warning));
        }
        out.push_str("</ul></div>\n");
    }
    for section in &report.sections {
        let _ = writeln!(out, "<h2>{}</h2>", escape(section.heading));
        for block in &section.blocks {
            match block {
                Block::Paragraph(line) => {
                    let _ = writeln!(out, "<p>{}</p>", html_line(line));
                }
                Block::Command(command) => {
                    let _ = writeln!(out, "<pre><code>{}</code></pre>", escape(command));
                }
                Block::Table { columns, rows } => {
                    out.push_str("<table><tr>");
                    for column in columns {
                        let _ = write!(out, "<th>{}</th>", escape(column));
                    }
                    out.push_str("</tr>\n");
                    for row in rows {
                        out.push_str("<tr>");
                        for cell in row {
                            let _ = write!(out, "<td>{}</td>", escape(cell).replace('\n', "<br>"));
                        }
                        out.push_str("</tr>\n");
                    }
                    out.push_str("</table>\n");
                }
            }
        }
    }
    out.push_str("</body></html>\n");
    out
}

// ---------------------------------------------------------------------------------------------
// The command

/// The SHA-256 (hex) of the saved plan at `path`, checked to be one: Terraform writes saved
/// plans as zip archives holding a `tfplan` entry.
fn plan_file_sha256(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let is_zip = bytes.starts_with(b"PK\x03\x04");
    let has_plan = bytes.windows(b"tfplan".len()).any(|w| w == b"tfplan");
    if !is_zip || !has_plan {
        return Err(format!(
            "{} is not a saved Terraform plan (the binary file of terraform plan -out=FILE); pass that file to --plan-file, and its JSON as the first argument",
            path.display()
        ));
    }
    Ok(hex::encode(sha2::Sha256::digest(&bytes)))
}

impl PlanReportCommand {
    pub fn run(self) -> Result<(), String> {
        let bytes = std::fs::read(&self.plan).map_err(|e| format!("reading {}: {e}", self.plan.display()))?;
        let plan: Value = serde_json::from_slice(&bytes).map_err(|e| {
            format!(
                "{} is not JSON ({e}); produce it with terraform show -json plan.out",
                self.plan.display()
            )
        })?;
        if plan.get("resource_changes").is_none() && plan.get("planned_values").is_none() {
            return Err(format!("{} is not a Terraform plan in JSON (no resource_changes); produce it with terraform show -json plan.out", self.plan.display()));
        }
        let provenance = Provenance {
            json_path: self.plan.clone(),
            json_sha256: hex::encode(sha2::Sha256::digest(&bytes)),
            plan_file: match &self.plan_file {
                Some(path) => Some((path.clone(), plan_file_sha256(path)?)),
                None => None,
            },
        };
        let mut warnings = Vec::new();
        let collected = match &self.approvals {
            Some(dir) => {
                let folder = read_approvals_dir(dir).map_err(|e| e.to_string())?;
                if !folder.exists {
                    return Err(format!(
                        "the approvals folder {} does not exist; pass the folder the approval files were written to",
                        dir.display()
                    ));
                }
                for skipped in &folder.skipped {
                    warnings.push(Line::default().text(format!("Approvals folder: skipped {skipped}.")));
                }
                Some(Collected {
                    dir: dir.clone(),
                    approvals: folder.approvals,
                })
            }
            None => None,
        };
        let report = build(&plan, &provenance, collected.as_ref(), warnings);
        let rendered = match self.format {
            Format::Markdown => markdown(&report),
            Format::Html => html(&report),
        };
        match self.out {
            Some(path) => std::fs::write(&path, rendered).map_err(|e| format!("writing {}: {e}", path.display())),
            None => {
                use std::io::Write as _;
                // A reader that stops early (`| head`) is not an error worth a panic.
                let mut stdout = std::io::stdout().lock();
                match stdout.write_all(rendered.as_bytes()).and_then(|()| stdout.flush()) {
                    Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(format!("writing the report: {e}")),
                    _ => Ok(()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use safebox::govern::policy::{PolicySpec, RuleSpec, SignerSpec};
    use serde_json::json;

    const A_PUB: &str = include_str!("../../acceptance-tests/fixtures/keys/auditor-a.pub.pem");
    const A_KEY: &str = include_str!("../../acceptance-tests/fixtures/keys/auditor-a.key.pem");
    const B_PUB: &str = include_str!("../../acceptance-tests/fixtures/keys/auditor-b.pub.pem");
    /// The fixtures' DER SubjectPublicKeyInfo, base64, as policy documents hold them.
    const A_SPKI: &str = "MCowBQYDK2VwAyEAUuW6yB+Iu67c3MsgfacV25RAgQyMpj0tWVrMz+N8OZE=";
    const C_SPKI: &str = "MHYwEAYHKoZIzj0CAQYFK4EEACIDYgAE79N7SN8e2eC54QFtZZl1ocTrQB5d+10B8tFNqT5RNCPPmz/bRzIjLL3vnq58axcwC+xt3q/FE1AmbtEBKxkZfVAuskVXgSKBZjfePwaRsWLi6bYHjKlBSb6bKRWxKXyG";

    fn signer(id: &str, role: &str, algorithm: &str, spki: &str) -> Value {
        json!({"id": id, "role": role, "key": {"algorithm": algorithm, "spki": spki}})
    }

    fn rule(action: &str, threshold: u32, roles: &[&str]) -> Value {
        json!({"action": action, "threshold": threshold, "roles": roles})
    }

    fn document(version: u64, signers: Vec<Value>, rules: Vec<Value>, expires_at: Value) -> Value {
        json!({"schema": "safebox-policy/v1", "name": "p", "version": version,
               "signers": signers, "rules": rules, "expires_at": expires_at})
    }

    fn items(differences: &[PolicyDifference]) -> Vec<&str> {
        differences.iter().map(|d| d.item.as_str()).collect()
    }

    #[test]
    fn a_sealed_key_shows_the_conditions_its_policy_binds() {
        use safebox::sealed_key::{KeyBinding, SealedKeySpec};
        let spec = |binding| SealedKeySpec {
            binding,
            administrator_arns: vec!["arn:aws:iam::123456789012:role/KeyAdmin".into()],
            recipient_arns: vec!["arn:aws:iam::123456789012:root".into()],
        };
        let change = |policy: String| json!({"after": {"policy": policy}, "after_unknown": {}});
        let uki = spec(KeyBinding::NitroTpm {
            pcrs: [(4, "aa".repeat(48)), (7, "bb".repeat(48)), (12, "00".repeat(48))].into(),
        });
        assert_eq!(
            released_to(&change(uki.policy())),
            "NitroTPMPCR4 + NitroTPMPCR7 + NitroTPMPCR12"
        );
        let eif = spec(KeyBinding::Enclave {
            image_sha384: "cc".repeat(48),
            pcrs: [(0, "cc".repeat(48))].into(),
        });
        assert_eq!(released_to(&change(eif.policy())), "ImageSha384 + PCR0");
        assert_eq!(
            released_to(&json!({"after": {}, "after_unknown": {"policy": true}})),
            KNOWN_AFTER_APPLY
        );
    }

    #[test]
    fn an_added_signer_and_a_changed_threshold_are_both_named() {
        let before = document(
            1,
            vec![signer("auditor-a", "auditor", "ed25519", A_SPKI)],
            vec![rule("image.publish", 1, &["auditor"])],
            Value::Null,
        );
        let after = document(
            2,
            vec![
                signer("auditor-a", "auditor", "ed25519", A_SPKI),
                signer("auditor-c", "security", "ecdsa-p384", C_SPKI),
            ],
            vec![rule("image.publish", 2, &["auditor", "security"])],
            Value::Null,
        );
        let differences = policy_differences(&before, &after);
        assert_eq!(
            differences,
            vec![
                PolicyDifference::new("version", "1", "2"),
                // The fingerprint is `openssl pkey -pubin -outform DER | sha256sum`'s first digits.
                PolicyDifference::new(
                    "signer auditor-c added",
                    "—",
                    "role security, ecdsa-p384 key 8f7a89c35d2c7d05"
                ),
                PolicyDifference::new(
                    "rule image.publish changed",
                    "1 of role auditor",
                    "2 of role auditor or security"
                ),
            ]
        );
    }

    #[test]
    fn removed_signers_changed_keys_and_roles_rules_and_expiry_are_each_a_difference() {
        let before = document(
            3,
            vec![
                signer("auditor-a", "auditor", "ed25519", A_SPKI),
                signer("auditor-b", "auditor", "ed25519", A_SPKI),
                signer("auditor-c", "security", "ecdsa-p384", C_SPKI),
            ],
            vec![
                rule("image.publish", 1, &["auditor"]),
                rule("link.create", 1, &["auditor"]),
            ],
            Value::Null,
        );
        let after = document(
            4,
            vec![
                signer("auditor-a", "security", "ed25519", A_SPKI),
                signer("auditor-c", "security", "ed25519", A_SPKI),
            ],
            vec![
                rule("image.publish", 1, &["auditor"]),
                rule("policy.update", 2, &["security"]),
            ],
            json!("2027-06-30T00:00:00Z"),
        );
        let differences = policy_differences(&before, &after);
        assert_eq!(
            items(&differences),
            [
                "version",
                "signer auditor-a changed",
                "signer auditor-b removed",
                "signer auditor-c changed",
                "rule link.create removed",
                "rule policy.update added",
                "expires_at",
            ]
        );
        let changed_key = &differences[3];
        assert_eq!(changed_key.before, "role security, ecdsa-p384 key 8f7a89c35d2c7d05");
        assert_eq!(changed_key.after, "role security, ed25519 key 14c5b1d29a96dc57");
        assert_eq!(differences[1].before, "role auditor, ed25519 key 14c5b1d29a96dc57");
        assert_eq!(differences[1].after, "role security, ed25519 key 14c5b1d29a96dc57");
        assert_eq!(differences[2].after, "—");
        assert_eq!(differences[5].after, "2 of role security");
        assert_eq!(differences[6].before, "never");
        assert_eq!(differences[6].after, "2027-06-30T00:00:00Z");
    }

    #[test]
    fn a_rename_is_a_difference_and_identical_documents_have_none() {
        let doc = document(
            1,
            vec![signer("auditor-a", "auditor", "ed25519", A_SPKI)],
            vec![rule("image.publish", 1, &["auditor"])],
            Value::Null,
        );
        assert!(policy_differences(&doc, &doc).is_empty());
        let mut renamed = doc.clone();
        renamed["name"] = json!("q");
        renamed["version"] = json!(2);
        assert_eq!(items(&policy_differences(&doc, &renamed)), ["name", "version"]);
    }

    #[test]
    fn a_kms_signer_shows_its_key_id() {
        let key = json!({"algorithm": "ecdsa-p256", "spki": A_SPKI, "kms_key_id": "alias/audit"});
        assert_eq!(
            key_fingerprint(&key),
            "ecdsa-p256 key 14c5b1d29a96dc57 (KMS alias/audit)"
        );
        assert_eq!(
            key_fingerprint(&json!({"algorithm": "ed25519", "spki": "%%"})),
            "ed25519 key (unreadable key)"
        );
    }

    #[test]
    fn ssh_keys_show_type_comment_and_the_openssh_fingerprint() {
        let keys = ssh_keys(
            "# operators\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEWTILoZg+V7aTbtS9X7+NYffIFd2zU/ZtERUzs2tDDe operator@example\n\nfrom=\"10.0.0.1\" ssh-ed25519 AAAA!! two words\n",
        );
        assert_eq!(keys.len(), 2);
        // `ssh-keygen -lf` prints this fingerprint for the example's operator key.
        assert_eq!(
            keys[0].fingerprint,
            "SHA256:cgCUG3h80DACTXOT1UO9Z+t5UoV3oW9mGHLiQQ8SU+s"
        );
        assert_eq!(
            (keys[0].key_type.as_str(), keys[0].comment.as_str()),
            ("ssh-ed25519", "operator@example")
        );
        assert_eq!(keys[1].options, "from=\"10.0.0.1\"");
        assert_eq!(keys[1].comment, "two words");
        assert_eq!(keys[1].fingerprint, "the key is not base64");
    }

    #[test]
    fn module_paths_skip_instance_keys() {
        assert!(module_path("").is_empty());
        assert_eq!(module_path("module.pair"), ["pair"]);
        assert_eq!(module_path("module.a[0].module.b"), ["a", "b"]);
        assert_eq!(module_path("module.a[\"x.]y\"].module.b[\"z\"]"), ["a", "b"]);
    }

    #[test]
    fn inherited_policies_combine_like_the_provider_inherits_them() {
        use Inherited::{Created, Id, Ungoverned, Unknown};
        assert_eq!(combine(vec![Ungoverned, Ungoverned]), Ungoverned);
        assert_eq!(combine(vec![Ungoverned, Id("pol-1".into())]), Id("pol-1".into()));
        assert_eq!(
            combine(vec![Id("pol-1".into()), Id("pol-1".into())]),
            Id("pol-1".into())
        );
        assert_eq!(combine(vec![Id("pol-1".into()), Id("pol-2".into())]), Unknown);
        assert_eq!(
            combine(vec![Created("safebox_policy.gov".into()), Ungoverned]),
            Created("safebox_policy.gov".into())
        );
        assert_eq!(combine(vec![Unknown, Ungoverned]), Unknown);
        assert_eq!(combine(Vec::new()), Unknown);
    }

    #[test]
    fn a_box_of_an_ungoverned_image_created_in_the_same_plan_is_not_a_governed_change() {
        let plan = json!({
            "configuration": {"root_module": {"resources": [
                {"address": "safebox_image.app", "mode": "managed", "type": "safebox_image", "name": "app", "expressions": {}},
                {"address": "safebox_enclave.box", "mode": "managed", "type": "safebox_enclave", "name": "box",
                 "expressions": {"image_id": {"references": ["safebox_image.app.id", "safebox_image.app"]}}},
            ]}},
        });
        let image = |policy_id: Value| {
            json!({"address": "safebox_image.app", "type": "safebox_image", "name": "app",
            "change": {"actions": ["create"], "after": {"policy_id": policy_id}, "after_unknown": {"id": true}}})
        };
        let enclave = json!({"address": "safebox_enclave.box", "type": "safebox_enclave", "name": "box",
            "change": {"actions": ["create"], "before": null, "after": {"variant": "prod"},
                       "after_unknown": {"policy_id": true, "change_digest": true, "approval_status": true}}});
        let ungoverned = image(Value::Null);
        let changes = vec![&ungoverned, &enclave];
        assert_eq!(resource_policy(&plan, &enclave, &changes, 0), Inherited::Ungoverned);
        assert!(governed_change(&plan, &enclave, &changes, &BTreeMap::new()).is_none());

        let governed = image(json!("pol-1"));
        let changes = vec![&governed, &enclave];
        assert_eq!(
            resource_policy(&plan, &enclave, &changes, 0),
            Inherited::Id("pol-1".into())
        );
        let change = governed_change(&plan, &enclave, &changes, &BTreeMap::new()).unwrap();
        assert_eq!(change.action, Action::EnclaveDeploy);
        assert_eq!(change.governors[0].label, "pol-1 (not in this plan)");
    }

    #[test]
    fn markdown_and_html_output_stays_inert() {
        assert_eq!(
            markdown_text("<script>a|b</script>"),
            "&lt;script&gt;a\\|b&lt;/script&gt;"
        );
        assert_eq!(markdown_code("a`b"), "``a`b``");
        assert_eq!(markdown_code("`x"), "`` `x ``");
        assert_eq!(
            escape("<a href='x'>&\"</a>"),
            "&lt;a href=&#39;x&#39;&gt;&amp;&quot;&lt;/a&gt;"
        );
        let line = Line::default().text("<b>").code("<i>").strong("<u>");
        assert_eq!(
            html_line(&line),
            "&lt;b&gt;<code>&lt;i&gt;</code><strong>&lt;u&gt;</strong>"
        );
    }

    fn policy_document() -> String {
        let spec = PolicySpec {
            name: "p".into(),
            signers: vec![
                SignerSpec {
                    id: "auditor-a".into(),
                    role: "auditor".into(),
                    public_key_pem: Some(A_PUB.into()),
                    kms_key_id: None,
                },
                SignerSpec {
                    id: "auditor-b".into(),
                    role: "auditor".into(),
                    public_key_pem: Some(B_PUB.into()),
                    kms_key_id: None,
                },
            ],
            rules: vec![RuleSpec {
                action: "image.publish".into(),
                threshold: 2,
                roles: vec!["auditor".into()],
            }],
            expires_at: None,
        };
        let no_kms = |_: &str| Err("no KMS".to_owned());
        Policy::from_spec(&spec, 1, &no_kms).unwrap().document()
    }

    fn publish(digest: PlannedDigest, document: Result<String, String>) -> GovernedChange {
        GovernedChange {
            address: "safebox_image.app".into(),
            terraform_action: "create".into(),
            action: Action::ImagePublish,
            digest,
            governors: vec![Governor {
                label: "p".into(),
                document,
                only_if_ruled: false,
            }],
            maybe: false,
            inline: Vec::new(),
        }
    }

    #[test]
    fn approvals_are_counted_only_when_asked_and_only_against_a_document_in_the_plan() {
        let digest = format!("sha256:{}", "ab".repeat(32));
        let change = publish(PlannedDigest::Known(digest.clone()), Ok(policy_document()));
        let without = standing(&change, None);
        assert!(
            without
                .status
                .starts_with("not known until apply: approvals may still arrive"),
            "{}",
            without.status
        );

        let signed = safebox::govern::approval::approve(A_KEY, "auditor-a", Action::ImagePublish, &digest).unwrap();
        let collected = Collected {
            dir: PathBuf::from("approvals"),
            approvals: vec![signed.clone()],
        };
        let counted = standing(&change, Some(&collected));
        assert!(counted.short);
        assert!(
            counted
                .status
                .starts_with("1 of 2 for image.publish; counted: auditor-a; missing role auditor: 1 more (auditor-b)"),
            "{}",
            counted.status
        );

        // Another digest's approval does not count; an inline approval does.
        let other = publish(
            PlannedDigest::Known(format!("sha256:{}", "cd".repeat(32))),
            Ok(policy_document()),
        );
        assert!(standing(&other, Some(&collected)).status.starts_with("0 of 2"));
        let mut inline = publish(PlannedDigest::Known(digest.clone()), Ok(policy_document()));
        inline.inline = vec![signed];
        let empty = Collected {
            dir: PathBuf::from("approvals"),
            approvals: Vec::new(),
        };
        assert!(standing(&inline, Some(&empty)).status.starts_with("1 of 2"));

        let elsewhere = publish(
            PlannedDigest::Known(digest),
            Err("policy pol-1 is not in this plan".into()),
        );
        assert_eq!(
            standing(&elsewhere, Some(&collected)).status,
            "not known until apply: policy pol-1 is not in this plan"
        );
        let later = publish(PlannedDigest::Unknown, Ok(policy_document()));
        assert!(standing(&later, Some(&collected))
            .status
            .starts_with("not known until apply: the change digest"));
    }
}
