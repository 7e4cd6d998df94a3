//! `safebox approve`, `safebox approvals status` and `safebox audit verify`: the auditor's side
//! of governed changes.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};
use safebox::govern::approval::{
    approval_message, approve, evaluate, read_approvals_dir, signature_valid, signed_approval, Approval,
};
use safebox::govern::audit;
use safebox::govern::policy::Policy;
use safebox::govern::Action;
use safebox::store::{FolderStore, Store, StoreAddress};

/// `safebox approve`: sign an approval of one governed change.
#[derive(Debug, Args)]
pub struct ApproveCommand {
    /// The signer's private key (PEM: PKCS#8, or SEC1 EC). Ed25519, ECDSA P-256 or P-384.
    #[arg(long, required_unless_present = "kms_key_id", conflicts_with = "kms_key_id")]
    key: Option<PathBuf>,
    /// Sign with this AWS KMS key instead (id, ARN or alias; ECC_NIST_P256 or ECC_NIST_P384,
    /// SIGN_VERIFY). Credentials come from the standard AWS chain.
    #[arg(long)]
    kms_key_id: Option<String>,
    /// The region of the KMS key and of the store's bucket (default: AWS_REGION, then
    /// AWS_DEFAULT_REGION).
    #[arg(long)]
    region: Option<String>,
    /// A KMS endpoint override (a VPC endpoint, an emulator).
    #[arg(long, requires = "kms_key_id")]
    kms_endpoint: Option<String>,
    /// The signer's id in the policy.
    #[arg(long)]
    signer: String,
    /// The governed action (image.publish, image.share, enclave.deploy, link.create,
    /// policy.update, key.bind).
    #[arg(long)]
    action: String,
    /// The change digest from the plan (`change_digest`), sha256:HEX.
    #[arg(long)]
    digest: String,
    /// Write the approval here (for approvals_dir) instead of standard output.
    #[arg(long, conflicts_with = "to")]
    out: Option<PathBuf>,
    /// Put the approval in the store the provider reads it from: `s3://BUCKET/PREFIX` (the
    /// provider's `store { s3 { ... } }`), or a `state_dir` folder; it goes to
    /// `approvals/<digest>/<signer>.json` there.
    #[arg(long)]
    to: Option<String>,
    #[command(flatten)]
    s3: S3Args,
}

/// How to reach a store in S3 (credentials come from the standard AWS chain).
#[derive(Debug, Args)]
pub struct S3Args {
    /// An S3 endpoint override (a VPC endpoint, an emulator); default: AWS_ENDPOINT_URL_S3,
    /// then AWS_ENDPOINT_URL. Requests to it use path-style addressing.
    #[arg(long)]
    s3_endpoint: Option<String>,
}

/// The region from `--region`, else the environment.
fn region_of(given: Option<&String>) -> Option<String> {
    given
        .cloned()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .filter(|r| !r.trim().is_empty())
}

/// A runtime for one command's calls to AWS.
fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
}

/// The store at `address` (`s3://BUCKET/PREFIX` or a folder), as `--<flag>` gave it.
fn open_store(
    flag: &str,
    address: &str,
    region: Option<&String>,
    s3: &S3Args,
    runtime: &tokio::runtime::Runtime,
) -> Result<Box<dyn Store>, String> {
    match address.parse::<StoreAddress>().map_err(|e| format!("{flag}: {e}"))? {
        StoreAddress::Folder(path) => FolderStore::open(&path)
            .map(|store| Box::new(store) as Box<dyn Store>)
            .map_err(|e| format!("{flag} {address}: {e}")),
        StoreAddress::Bucket(location) => {
            let region = region_of(region).ok_or(format!(
                "{flag} {address} needs the bucket's region: give --region or set AWS_REGION"
            ))?;
            let settings = safebox_aws::store::S3Settings {
                location,
                region,
                endpoint: s3.s3_endpoint.clone().or_else(safebox_aws::store::endpoint_from_env),
            };
            Ok(Box::new(runtime.block_on(safebox_aws::store::s3_store(&settings))))
        }
    }
}

fn check_digest(digest: &str) -> Result<(), String> {
    let ok = digest
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "--digest {digest:?} is not a change digest; copy change_digest from the plan (sha256: and 64 hex digits)"
        ))
    }
}

impl ApproveCommand {
    pub fn run(self) -> Result<(), String> {
        let action: Action = self.action.parse().map_err(|e| format!("--action: {e}"))?;
        check_digest(&self.digest)?;
        let approval = match (&self.key, &self.kms_key_id) {
            (Some(key), _) => {
                let pem = std::fs::read_to_string(key).map_err(|e| format!("reading {}: {e}", key.display()))?;
                approve(&pem, &self.signer, action, &self.digest).map_err(|e| format!("{}: {e}", key.display()))?
            }
            (None, Some(key_id)) => self.approve_with_kms(key_id, action)?,
            (None, None) => return Err("give --key PEM or --kms-key-id KEY".into()),
        };
        if let Some(to) = &self.to {
            let runtime = runtime()?;
            let store = open_store("--to", to, self.region.as_ref(), &self.s3, &runtime)?;
            let key = runtime
                .block_on(store.put_approval(&approval))
                .map_err(|e| format!("--to {to}: {e}"))?;
            eprintln!(
                "safebox: approval of {} by {} stored at {}/{key}",
                self.digest,
                self.signer,
                store.location().trim_end_matches('/')
            );
            return Ok(());
        }
        let text = serde_json::to_string_pretty(&approval).map_err(|e| e.to_string())?;
        match self.out {
            Some(path) => {
                std::fs::write(&path, format!("{text}\n")).map_err(|e| format!("writing {}: {e}", path.display()))
            }
            None => {
                println!("{text}");
                Ok(())
            }
        }
    }
}

impl ApproveCommand {
    /// Signs through KMS, then checks the signature against the key's public half before
    /// writing anything.
    fn approve_with_kms(&self, key_id: &str, action: Action) -> Result<Approval, String> {
        let region =
            region_of(self.region.as_ref()).ok_or("--kms-key-id needs a region: give --region or set AWS_REGION")?;
        let message = approval_message(action, &self.digest);
        let runtime = runtime()?;
        let (signature, public) = runtime
            .block_on(async {
                let endpoints = safebox_aws::Endpoints {
                    kms: self.kms_endpoint.clone(),
                    ..safebox_aws::Endpoints::default()
                };
                let kms = safebox_aws::Clients::new(&region, &endpoints).await.kms;
                safebox_aws::keys::sign(&kms, key_id, message.as_bytes()).await
            })
            .map_err(|e| format!("--kms-key-id {key_id}: {e}"))?;
        if !signature_valid(&public, message.as_bytes(), &signature) {
            return Err(format!(
                "--kms-key-id {key_id}: KMS returned a signature that does not verify with the key's public half; nothing was written"
            ));
        }
        Ok(signed_approval(&self.signer, action, &self.digest, &signature))
    }
}

/// `safebox approvals`: what has been collected for a change.
#[derive(Debug, Subcommand)]
pub enum ApprovalsCommand {
    /// Print which signers have approved a change and which are still missing; exit 0 when
    /// the policy's threshold is met, 1 when not.
    Status {
        /// The policy document (the safebox_policy's `document`).
        #[arg(long)]
        policy: PathBuf,
        /// The governed action.
        #[arg(long)]
        action: String,
        /// The change digest, sha256:HEX.
        #[arg(long)]
        digest: String,
        /// The folder of approval files.
        #[arg(long)]
        dir: PathBuf,
    },
}

fn read_policy(path: &Path) -> Result<Policy, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    Policy::from_document(&text).map_err(|e| format!("{}: {e}", path.display()))
}

impl ApprovalsCommand {
    pub fn run(self) -> Result<(), String> {
        let Self::Status {
            policy,
            action,
            digest,
            dir,
        } = self;
        let action: Action = action.parse().map_err(|e| format!("--action: {e}"))?;
        check_digest(&digest)?;
        let policy = read_policy(&policy)?;
        let folder = read_approvals_dir(&dir).map_err(|e| e.to_string())?;
        if !folder.exists {
            return Err(format!(
                "{} does not exist: give the folder the approvals were written to",
                dir.display()
            ));
        }
        for skipped in &folder.skipped {
            eprintln!("safebox: passed over {skipped}");
        }
        let status = evaluate(&policy, action, &digest, &folder.approvals).map_err(|e| e.to_string())?;
        println!(
            "policy:    {} (version {}, {})",
            policy.name(),
            policy.version(),
            policy.digest()
        );
        println!("change:    {action} {digest}");
        println!("threshold: {} of role {}", status.threshold, status.roles.join(" or "));
        println!(
            "approved:  {}",
            if status.counted.is_empty() {
                "(none)".to_owned()
            } else {
                status.counted.join(", ")
            }
        );
        println!(
            "missing:   {}",
            if status.satisfied() {
                "(none)".to_owned()
            } else {
                status.missing.join(", ")
            }
        );
        for reason in &status.rejected {
            println!("rejected:  {reason}");
        }
        if status.satisfied() {
            println!("status:    approved");
            Ok(())
        } else {
            Err(status.summary())
        }
    }
}

/// `safebox audit`: the hash-chained log of enforced changes.
#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the log's hash chain and re-verify every approval against the policy in
    /// force; exit 1 naming the first broken entry, or saying how the log was rolled back.
    Verify {
        /// The audit log: a file (audit.log in the provider's state_dir), or the store in S3
        /// (`s3://BUCKET/PREFIX`, the provider's `store { s3 { ... } }`), whose entries are
        /// then also checked for gaps and for more than one version.
        log: String,
        /// A policy document the log must put in force (and, for a log written before
        /// policy.create entries existed, the policy to trust instead of its first entry's).
        #[arg(long)]
        policy: Option<PathBuf>,
        /// A head recorded earlier (SEQUENCE:sha256:HEX, as `audit_head` in Terraform state
        /// shows it): the log must still hold that entry with that hash.
        #[arg(long)]
        expect_head: Vec<String>,
        /// The bucket's region, for `s3://` (default: AWS_REGION, then AWS_DEFAULT_REGION).
        #[arg(long)]
        region: Option<String>,
        #[command(flatten)]
        s3: S3Args,
    },
}

impl AuditCommand {
    pub fn run(self) -> Result<(), String> {
        let Self::Verify {
            log,
            policy,
            expect_head,
            region,
            s3,
        } = self;
        let text = if log.starts_with("s3://") {
            let runtime = runtime()?;
            let store = open_store("LOG", &log, region.as_ref(), &s3, &runtime)?;
            runtime.block_on(store.read_audit()).map_err(|e| e.to_string())?
        } else {
            std::fs::read_to_string(&log).map_err(|e| format!("reading {log}: {e}"))?
        };
        let trusted = policy.as_deref().map(read_policy).transpose()?;
        let heads = expect_head
            .iter()
            .map(|h| h.parse::<audit::AuditHead>().map_err(|e| format!("--expect-head: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let verified = audit::verify(
            &text,
            &audit::VerifyOptions {
                trusted: trusted.as_ref(),
                expect_head: None,
            },
        )
        .map_err(|e| format!("{log}: {e}"))?;
        for head in &heads {
            verified.holds(head).map_err(|e| format!("{log}: {e}"))?;
        }
        let policies: Vec<String> = verified
            .policies
            .iter()
            .map(|(id, digest)| format!("{id} = {digest}"))
            .collect();
        println!(
            "{}: {} entries verified; policies in force: {}; head {}{}",
            log,
            verified.entries.len(),
            if policies.is_empty() {
                "(none)".to_owned()
            } else {
                policies.join(", ")
            },
            verified
                .head
                .as_ref()
                .map_or_else(|| "(empty log)".to_owned(), ToString::to_string),
            if heads.is_empty() {
                " (pass --expect-head with a head recorded earlier to detect a log cut short or rewritten)"
            } else {
                "; the expected heads are held"
            }
        );
        Ok(())
    }
}
