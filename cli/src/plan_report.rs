//! `safebox plan-report PLAN.json`: what an auditor reads before signing off a plan, from
//! `terraform show -json` output: every image with its digests and PCRs (and whether they
//! change), every box and the PCRs it must attest to, every link, every policy, every
//! governed change with its digest and approval status, and the warnings that matter.

use std::fmt::Write as _;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use serde_json::Value;
use sha2::Digest as _;

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Markdown.
    Markdown,
    /// A self-contained HTML page.
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
}

/// How soon an expiring policy is worth a warning.
const EXPIRY_WARNING_DAYS: i64 = 30;

/// One table: a heading, column names, rows.
struct Table {
    heading: &'static str,
    empty: &'static str,
    columns: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

/// The report, before rendering.
struct Report {
    title: String,
    summary: Vec<String>,
    warnings: Vec<String>,
    tables: Vec<Table>,
}

fn text(value: &Value) -> String {
    match value {
        Value::Null => "—".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// A planned attribute: its value after the change, or "(known after apply)".
fn after(change: &Value, pointer: &str) -> String {
    if change
        .pointer(&format!("/after_unknown{pointer}"))
        .is_some_and(|v| v == &Value::Bool(true))
    {
        return "(known after apply)".to_owned();
    }
    change.pointer(&format!("/after{pointer}")).map_or("—".to_owned(), text)
}

fn action_of(change: &Value) -> String {
    let actions: Vec<&str> = change["actions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    match actions.as_slice() {
        ["create"] => "create".into(),
        ["update"] => "update in place".into(),
        ["delete", "create"] | ["create", "delete"] => "replace".into(),
        ["delete"] => "destroy".into(),
        ["no-op"] => "no change".into(),
        ["read"] => "read".into(),
        other => other.join("+"),
    }
}

fn pcrs_text(change: &Value, pointer: &str) -> String {
    if change
        .pointer(&format!("/after_unknown{pointer}"))
        .is_some_and(|v| v == &Value::Bool(true))
    {
        return "(known after apply)".into();
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
    let list = |pointer: &str| {
        let items: Vec<String> = change
            .pointer(&format!("/after{pointer}"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .map(text)
            .collect();
        items.join(", ")
    };
    let mut parts = Vec::new();
    for (label, pointer) in [
        ("launchable by accounts", "/launch_permission_account_ids"),
        ("copied to", "/copy_to_regions"),
    ] {
        let items = list(pointer);
        if !items.is_empty() {
            parts.push(format!("{label} {items}"));
        }
    }
    if parts.is_empty() {
        "—".to_owned()
    } else {
        parts.join("; ")
    }
}

/// "changed", "unchanged" or "new" for a measurement across the change.
fn measurement_change(change: &Value, pointer: &str) -> &'static str {
    let before = change.pointer(&format!("/before{pointer}"));
    let after_value = change.pointer(&format!("/after{pointer}"));
    match (before, after_value) {
        (None | Some(Value::Null), _) => "new",
        (Some(b), Some(a)) if a == b => "unchanged",
        _ => "changed",
    }
}

fn provider_allows_simulation(plan: &Value) -> bool {
    let configs = plan
        .pointer("/configuration/provider_config")
        .and_then(Value::as_object);
    configs.into_iter().flatten().any(|(name, config)| {
        name.starts_with("safebox")
            // A single nested block shows as an object; older Terraform wrote a list.
            && ["/expressions/attestation/allow_simulated/constant_value", "/expressions/attestation/0/allow_simulated/constant_value"]
                .iter()
                .any(|p| config.pointer(p).is_some_and(|v| v == &Value::Bool(true)))
    })
}

fn build(plan: &Value) -> Report {
    let changes: Vec<&Value> = plan["resource_changes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["type"].as_str().is_some_and(|t| t.starts_with("safebox_")))
        .collect();
    let mut warnings = Vec::new();
    let mut images = Vec::new();
    let mut boxes = Vec::new();
    let mut links = Vec::new();
    let mut policies = Vec::new();
    let mut keys = Vec::new();
    let mut governed = Vec::new();
    let mut counts: std::collections::BTreeMap<String, usize> = std::collections::BTreeMap::new();
    if provider_allows_simulation(plan) {
        warnings.push("The provider trusts the local backend's **simulated** attestation root (`allow_simulated = true`): box attestations prove nothing about hardware.".into());
    }
    for resource in &changes {
        let address = text(&resource["address"]);
        let change = &resource["change"];
        let action = action_of(change);
        *counts.entry(action.clone()).or_default() += 1;
        match resource["type"].as_str().unwrap_or_default() {
            "safebox_image" => {
                images.push(vec![
                    address.clone(),
                    action.clone(),
                    after(change, "/name"),
                    after(change, "/manifest_sha256"),
                    format!(
                        "{} ({})",
                        after(change, "/prod_measurements/image_sha256"),
                        measurement_change(change, "/prod_measurements")
                    ),
                    after(change, "/prod_measurements/pcr0"),
                    after(change, "/prod_measurements/pcr1"),
                    after(change, "/prod_measurements/pcr2"),
                    after(change, "/dev_measurements/pcr0"),
                    after(change, "/seal_proof_sha256"),
                    distribution(change),
                ]);
            }
            "safebox_enclave" => {
                if after(change, "/variant") == "dev" {
                    warnings.push(format!(
                        "`{address}` boots the **development** image, which has SSH access: never give it real data."
                    ));
                }
                if change.pointer("/after/attestation/simulated") == Some(&Value::Bool(true)) {
                    warnings.push(format!("`{address}` was attested by a simulated root."));
                }
                boxes.push(vec![
                    address.clone(),
                    action.clone(),
                    after(change, "/image_id"),
                    after(change, "/variant"),
                    pcrs_text(change, "/expected_pcrs"),
                    after(change, "/status"),
                ]);
            }
            "safebox_attested_link" => {
                links.push(vec![
                    address.clone(),
                    action.clone(),
                    after(change, "/a_enclave_id"),
                    pcrs_text(change, "/a_expected_pcrs"),
                    after(change, "/b_enclave_id"),
                    pcrs_text(change, "/b_expected_pcrs"),
                    after(change, "/binding_sha256"),
                ]);
            }
            "safebox_policy" => {
                let expires = change
                    .pointer("/after/expires_at")
                    .and_then(Value::as_str)
                    .map(str::to_owned);
                if let Some(expires) = &expires {
                    if let Ok(t) = time::OffsetDateTime::parse(expires, &time::format_description::well_known::Rfc3339)
                    {
                        let left = t - time::OffsetDateTime::now_utc();
                        if left.is_negative() {
                            warnings.push(format!("`{address}` **expired** at {expires}: governed changes under it are refused until it is renewed."));
                        } else if left.whole_days() < EXPIRY_WARNING_DAYS {
                            warnings.push(format!(
                                "`{address}` expires at {expires}, in {} days.",
                                left.whole_days()
                            ));
                        }
                    }
                }
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
                policies.push(vec![
                    address.clone(),
                    action.clone(),
                    after(change, "/name"),
                    after(change, "/version"),
                    after(change, "/digest"),
                    signers.join(", "),
                    rules.join("; "),
                    expires.unwrap_or_else(|| "never".into()),
                ]);
            }
            "safebox_sealed_key" => {
                if after(change, "/variant") == "dev" {
                    warnings.push(format!(
                        "`{address}` releases its key to the **development** image, which has SSH access."
                    ));
                }
                let list = |pointer: &str| {
                    change
                        .pointer(&format!("/after{pointer}"))
                        .and_then(Value::as_array)
                        .map_or_else(
                            || after(change, pointer),
                            |items| items.iter().map(text).collect::<Vec<_>>().join(", "),
                        )
                };
                let policy = match change.pointer("/after/policy").and_then(Value::as_str) {
                    Some(policy) => hex::encode(sha2::Sha256::digest(policy.as_bytes())),
                    None => after(change, "/policy"),
                };
                keys.push(vec![
                    address.clone(),
                    action.clone(),
                    after(change, "/name"),
                    after(change, "/image_id"),
                    after(change, "/variant"),
                    format!("ImageSha384 + PCR {}", list("/bind_pcrs")),
                    list("/administrator_arns"),
                    list("/recipient_arns"),
                    policy,
                ]);
            }
            _ => {}
        }
        let digest = change.pointer("/after/change_digest");
        let unknown_digest = change.pointer("/after_unknown/change_digest") == Some(&Value::Bool(true));
        if digest.is_some_and(|d| !d.is_null()) || unknown_digest {
            let status = after(change, "/approval_status");
            let approved = status.contains("approved by") && !status.contains("missing");
            if !approved && action != "no change" {
                warnings.push(format!("`{address}`: approvals are missing ({status})."));
            }
            governed.push(vec![
                address.clone(),
                action.clone(),
                after(change, "/change_digest"),
                status,
            ]);
        }
    }
    let summary = counts.iter().map(|(action, n)| format!("{n} × {action}")).collect();
    Report {
        title: format!("Safebox plan report (Terraform {})", text(&plan["terraform_version"])),
        summary,
        warnings,
        tables: vec![
            Table {
                heading: "Images",
                empty: "No safebox_image in this plan.",
                columns: vec![
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
                rows: images,
            },
            Table {
                heading: "Boxes",
                empty: "No safebox_enclave in this plan.",
                columns: vec!["resource", "action", "image", "variant", "expected PCRs", "status"],
                rows: boxes,
            },
            Table {
                heading: "Attested links",
                empty: "No safebox_attested_link in this plan.",
                columns: vec![
                    "resource",
                    "action",
                    "side A",
                    "A expected PCRs",
                    "side B",
                    "B expected PCRs",
                    "binding_sha256",
                ],
                rows: links,
            },
            Table {
                heading: "Governance policies",
                empty: "No safebox_policy in this plan.",
                columns: vec![
                    "resource", "action", "name", "version", "digest", "signers", "rules", "expires",
                ],
                rows: policies,
            },
            Table {
                heading: "Sealed keys",
                empty: "No safebox_sealed_key in this plan.",
                columns: vec![
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
                rows: keys,
            },
            Table {
                heading: "Governed changes",
                empty: "No governed change in this plan.",
                columns: vec![
                    "resource",
                    "action",
                    "change_digest (what auditors sign)",
                    "approval status",
                ],
                rows: governed,
            },
        ],
    }
}

fn markdown_cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn markdown(report: &Report) -> String {
    let mut out = format!("# {}\n\n", report.title);
    let _ = writeln!(
        out,
        "Changes to Safebox resources: {}.\n",
        if report.summary.is_empty() {
            "none".into()
        } else {
            report.summary.join(", ")
        }
    );
    out.push_str("## Warnings\n\n");
    if report.warnings.is_empty() {
        out.push_str("None.\n\n");
    }
    for warning in &report.warnings {
        let _ = writeln!(out, "- {warning}");
    }
    if !report.warnings.is_empty() {
        out.push('\n');
    }
    for table in &report.tables {
        let _ = writeln!(out, "## {}\n", table.heading);
        if table.rows.is_empty() {
            let _ = writeln!(out, "{}\n", table.empty);
            continue;
        }
        let _ = writeln!(out, "| {} |", table.columns.join(" | "));
        let _ = writeln!(out, "|{}|", vec![" --- "; table.columns.len()].join("|"));
        for row in &table.rows {
            let cells: Vec<String> = row.iter().map(|c| markdown_cell(c)).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out.push('\n');
    }
    out
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// `**bold**` and `code` spans of the warnings, as HTML.
fn inline(s: &str) -> String {
    let mut out = String::new();
    let escaped = escape(s);
    let mut bold = false;
    let mut code = false;
    let mut chars = escaped.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '*' && chars.peek() == Some(&'*') {
            chars.next();
            out.push_str(if bold { "</strong>" } else { "<strong>" });
            bold = !bold;
        } else if c == '`' {
            out.push_str(if code { "</code>" } else { "<code>" });
            code = !code;
        } else {
            out.push(c);
        }
    }
    out
}

fn html(report: &Report) -> String {
    let mut out = String::from("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    let _ = write!(out, "<title>{}</title>", escape(&report.title));
    out.push_str("<style>body{font-family:system-ui,sans-serif;margin:2rem;color:#222}table{border-collapse:collapse;margin-bottom:1.5rem;font-size:.85rem}th,td{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;vertical-align:top;word-break:break-all}th{background:#f2f2f2}.warn{background:#fff4e5;border-left:4px solid #f0a020;padding:.5rem 1rem}code{background:#f4f4f4}</style></head><body>\n");
    let _ = writeln!(out, "<h1>{}</h1>", escape(&report.title));
    let _ = writeln!(
        out,
        "<p>Changes to Safebox resources: {}.</p>",
        escape(&if report.summary.is_empty() {
            "none".into()
        } else {
            report.summary.join(", ")
        })
    );
    out.push_str("<h2>Warnings</h2>\n");
    if report.warnings.is_empty() {
        out.push_str("<p>None.</p>\n");
    } else {
        out.push_str("<div class=\"warn\"><ul>\n");
        for warning in &report.warnings {
            let _ = writeln!(out, "<li>{}</li>", inline(warning));
        }
        out.push_str("</ul></div>\n");
    }
    for table in &report.tables {
        let _ = writeln!(out, "<h2>{}</h2>", escape(table.heading));
        if table.rows.is_empty() {
            let _ = writeln!(out, "<p>{}</p>", escape(table.empty));
            continue;
        }
        out.push_str("<table><tr>");
        for column in &table.columns {
            let _ = write!(out, "<th>{}</th>", escape(column));
        }
        out.push_str("</tr>\n");
        for row in &table.rows {
            out.push_str("<tr>");
            for cell in row {
                let _ = write!(out, "<td>{}</td>", escape(cell));
            }
            out.push_str("</tr>\n");
        }
        out.push_str("</table>\n");
    }
    out.push_str("</body></html>\n");
    out
}

impl PlanReportCommand {
    pub fn run(self) -> Result<(), String> {
        let text = std::fs::read_to_string(&self.plan).map_err(|e| format!("reading {}: {e}", self.plan.display()))?;
        let plan: Value = serde_json::from_str(&text).map_err(|e| {
            format!(
                "{} is not JSON ({e}); produce it with terraform show -json plan.out",
                self.plan.display()
            )
        })?;
        if plan.get("resource_changes").is_none() && plan.get("planned_values").is_none() {
            return Err(format!("{} is not a Terraform plan in JSON (no resource_changes); produce it with terraform show -json plan.out", self.plan.display()));
        }
        let report = build(&plan);
        let rendered = match self.format {
            Format::Markdown => markdown(&report),
            Format::Html => html(&report),
        };
        match self.out {
            Some(path) => std::fs::write(&path, rendered).map_err(|e| format!("writing {}: {e}", path.display())),
            None => {
                print!("{rendered}");
                Ok(())
            }
        }
    }
}
