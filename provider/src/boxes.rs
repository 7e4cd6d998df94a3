//! Boxes as the provider knows them: what their records say, fresh attestation of their
//! agents, and clients that sign management requests with each box's key.

use std::collections::BTreeMap;
use std::time::Duration;

use safebox::agent_api::AgentClient;
use safebox::attest::document::DocumentKind;
use safebox::attest::verify::{verify, Policy};
use safebox::cloud::RecordKind;

use crate::clock::{now_ms, rfc3339_ms};
use crate::config::attestation_root;
use crate::framework::diag::Diagnostics;
use crate::framework::model::{StringMap, Tf};
use crate::framework::path::AttributePath;
use crate::record;
use crate::resource::Ctx;

/// How long one request to an agent may take.
const AGENT_TIMEOUT: Duration = Duration::from_secs(60);

crate::model! {
    /// A verified attestation document, as a `safebox_enclave` records it.
    pub struct AttestationModel {
        /// SHA-256 of the document.
        document_sha256: Tf<String>,
        /// The enclave's module id.
        module_id: Tf<String>,
        /// Its PCRs, by index.
        pcrs: StringMap,
        /// Its per-boot public key (hex).
        public_key: Tf<String>,
        /// When it was verified.
        verified_at: Tf<String>,
        /// Whether a simulated root signed it.
        simulated: Tf<bool>,
    }
}

/// A box, as its record describes it.
#[derive(Debug, Clone)]
pub struct BoxFacts {
    /// The box's id.
    pub id: String,
    /// Where its agent answers.
    pub endpoint: String,
    /// The per-boot public key its documents bind (hex).
    pub public_key: String,
    /// The kind of document it presents.
    pub kind: DocumentKind,
    /// The PCRs it attested to at deployment that its image decides ([`DocumentKind::image_pcrs`]
    /// of the kind it presents).
    pub attested: BTreeMap<u32, String>,
    /// The policy governing it, if any.
    pub policy_id: Option<String>,
}

/// The box `id`, which a resource references through `attribute`; reports a missing one there.
pub async fn facts(ctx: &Ctx, id: &str, attribute: &str, diags: &mut Diagnostics) -> Option<BoxFacts> {
    let raw = match record::raw(ctx, RecordKind::Enclave, id).await {
        Ok(Some(raw)) => raw,
        Ok(None) => {
            diags.error_at(
                AttributePath::attr_root(attribute),
                "No such safebox_enclave",
                format!("There is no safebox_enclave with id {id:?} in this backend. Reference one of this configuration (safebox_enclave.NAME.id)."),
            );
            return None;
        }
        Err(e) => {
            diags.error_at(
                AttributePath::attr_root(attribute),
                "Unreadable safebox_enclave",
                format!("{e}."),
            );
            return None;
        }
    };
    let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
    let pcrs = |v: &serde_json::Value| -> BTreeMap<u32, String> {
        v.as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_ascii_lowercase())))
            .collect()
    };
    let kind = kind_of(
        ctx,
        raw["image_id"].as_str(),
        raw["variant"].as_str(),
        &pcrs(&raw["expected_pcrs"]),
    )
    .await;
    Some(BoxFacts {
        id: id.to_owned(),
        endpoint: text(&raw["endpoint"]),
        public_key: text(&raw["attestation"]["public_key"]),
        kind,
        attested: image_pcrs(&pcrs(&raw["attestation"]["pcrs"]), kind),
        policy_id: raw["policy_id"].as_str().map(str::to_owned),
    })
}

/// The kind of document a box presents: its image's (`image_id`, `variant`) while the image
/// exists; else the kind whose image PCRs its `expected` PCRs name (plan refuses a mix); else
/// an enclave's.
pub async fn kind_of(
    ctx: &Ctx,
    image_id: Option<&str>,
    variant: Option<&str>,
    expected: &BTreeMap<u32, String>,
) -> DocumentKind {
    let mut quiet = Diagnostics::default();
    let image = match (image_id, variant) {
        (Some(image_id), Some(variant)) => crate::images::facts(ctx, image_id, variant, "image_id", &mut quiet).await,
        _ => None,
    };
    image.map_or_else(
        || {
            expected
                .keys()
                .find_map(|i| DocumentKind::measuring(*i))
                .unwrap_or_default()
        },
        |image| image.document_kind(),
    )
}

/// Those of `pcrs` that measure the image of a box presenting documents of `kind`.
#[must_use]
pub fn image_pcrs(pcrs: &BTreeMap<u32, String>, kind: DocumentKind) -> BTreeMap<u32, String> {
    pcrs.iter()
        .filter(|(i, _)| kind.image_pcrs().contains(i))
        .map(|(i, v)| (*i, v.clone()))
        .collect()
}

/// A client for the agent of `facts` that signs with the box's key.
///
/// # Errors
/// A sentence when the box's key is missing or not private, or the endpoint is malformed.
pub fn agent(ctx: &Ctx, facts: &BoxFacts) -> Result<AgentClient, String> {
    let key = ctx
        .configured
        .box_keys
        .load(&facts.id)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("the key of box {} is not in this state_dir, so its agent cannot be managed from here; replace the box (terraform apply -replace=...)", facts.id))?;
    AgentClient::new(&facts.endpoint, AGENT_TIMEOUT)
        .map(|client| client.signed(key, &facts.public_key))
        .map_err(|e| e.to_string())
}

/// A map of PCR index to hex, as an attribute holds it.
#[must_use]
pub fn pcrs_map(pcrs: &BTreeMap<u32, String>) -> StringMap {
    StringMap::of(pcrs.iter().map(|(i, v)| (i.to_string(), v.clone())))
}

/// PCR index to lower-case hex, from an attribute's map (its known entries).
#[must_use]
pub fn pcrs_of(value: &StringMap) -> BTreeMap<u32, String> {
    value
        .known()
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_deref()?.to_ascii_lowercase())))
        .collect()
}

/// Fetches a document for a fresh nonce from the agent at `endpoint` and verifies it as a
/// document of `kind` with the PCRs `expected`; returns the `attestation` value of a
/// `safebox_enclave`.
///
/// # Errors
/// Why the box is not trusted.
pub fn attest(
    ctx: &Ctx,
    endpoint: &str,
    expected: &BTreeMap<u32, String>,
    kind: DocumentKind,
) -> Result<AttestationModel, String> {
    let (root, simulated) = attestation_root(&ctx.configured)?;
    let client = AgentClient::new(endpoint, AGENT_TIMEOUT).map_err(|e| e.to_string())?;
    let nonce: [u8; 32] = rand::random();
    let document = client.attestation(&nonce, None, None).map_err(|e| e.to_string())?;
    let expected_pcrs = expected
        .iter()
        .map(|(i, v)| {
            hex::decode(v)
                .map(|b| (*i, b))
                .map_err(|_| format!("expected PCR{i} is not hex"))
        })
        .collect::<Result<_, _>>()?;
    let at_ms = now_ms();
    let policy = Policy {
        root: &root,
        at_ms,
        expected_pcrs,
        nonce: Some(nonce.to_vec()),
        max_age_ms: Some(u64::try_from(ctx.configured.attestation.max_age.as_millis()).unwrap_or(u64::MAX)),
        allow_debug: false,
        kind: Some(kind),
    };
    let verified = verify(&document, &policy, None).map_err(|e| e.to_string())?;
    let doc = verified.document;
    Ok(AttestationModel {
        document_sha256: Tf::string(verified.document_sha256),
        module_id: Tf::string(doc.module_id),
        pcrs: StringMap::of(doc.pcrs.iter().map(|(i, v)| (i.to_string(), hex::encode(v)))),
        public_key: Tf::string(doc.public_key.as_deref().map(hex::encode).unwrap_or_default()),
        verified_at: Tf::string(rfc3339_ms(at_ms)),
        simulated: Tf::Known(simulated),
    })
}
