//! The build manifest: canonical JSON of every input (with its SHA-256), the layer order,
//! kernel, command line, `source_date_epoch` and `dev_access`, followed by the outputs the
//! build produced. Anyone with the manifest and the inputs can rebuild both images and compare.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::spec::{DevAccessSpec, ImageSpec, InputRef, LayerSpec};
use crate::canonical::to_canonical_json;

/// The `schema` of manifests this version writes and reads.
pub const MANIFEST_SCHEMA: &str = "safebox-image-manifest/v1";

/// An image's measurements: SHA-256 of the EIF file and its Nitro PCRs, lower-case hex.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measurements {
    /// SHA-256 of the whole EIF file.
    pub image_sha256: String,
    /// PCR0: kernel, cmdline and every ramdisk.
    pub pcr0: String,
    /// PCR1: kernel, cmdline and the first ramdisk.
    pub pcr1: String,
    /// PCR2: the ramdisks after the first.
    pub pcr2: String,
}

/// What a build produced, as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outputs {
    /// The development image.
    pub dev: Measurements,
    /// The production image.
    pub prod: Measurements,
    /// SHA-256 of the seal proof.
    pub seal_proof_sha256: String,
}

fn input_json(input: &InputRef) -> Value {
    json!({"source": input.source, "sha256": input.sha256.to_ascii_lowercase()})
}

/// The inputs part of the manifest.
#[must_use]
pub fn inputs_json(spec: &ImageSpec) -> Value {
    json!({
        "schema": MANIFEST_SCHEMA,
        "name": spec.name,
        "source_date_epoch": spec.source_date_epoch,
        "kernel": input_json(&spec.kernel),
        "cmdline": spec.cmdline,
        "layers": spec.layers.iter().map(|l| json!({
            "name": l.name,
            "source": l.input.source,
            "sha256": l.input.sha256.to_ascii_lowercase(),
            "destination": l.destination,
        })).collect::<Vec<_>>(),
        "dev_access": spec.dev_access.as_ref().map(|d| json!({
            "ssh_authorized_keys": d.ssh_authorized_keys,
            "sshd": input_json(&d.sshd),
        })),
    })
}

/// SHA-256 (hex) of the canonical inputs: the key builds are cached under.
#[must_use]
pub fn inputs_digest(spec: &ImageSpec) -> String {
    use sha2::{Digest, Sha256};
    let text = to_canonical_json(&inputs_json(spec)).unwrap_or_default();
    hex::encode(Sha256::digest(text.as_bytes()))
}

/// SHA-256 (hex) of the canonical inputs without `dev_access`: what identifies the
/// production image's contents. The EIF metadata carries it, so dev-only inputs never reach
/// the production image's bytes.
#[must_use]
pub fn prod_inputs_digest(spec: &ImageSpec) -> String {
    let mut prod = spec.clone();
    prod.dev_access = None;
    inputs_digest(&prod)
}

/// The full manifest: inputs and outputs, canonical JSON.
#[must_use]
pub fn manifest_document(spec: &ImageSpec, outputs: &Outputs) -> String {
    let mut document = inputs_json(spec);
    document["outputs"] = serde_json::to_value(outputs).unwrap_or(Value::Null);
    to_canonical_json(&document).unwrap_or_default()
}

/// Reads a manifest back into the specification it describes and the outputs it records
/// (`None` for a manifest of inputs only, such as one written by hand before a first build).
///
/// # Errors
/// A sentence naming the field that is missing or malformed.
pub fn parse_manifest(text: &str) -> Result<(ImageSpec, Option<Outputs>), String> {
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("the manifest is not JSON: {e}"))?;
    if doc["schema"] != MANIFEST_SCHEMA {
        return Err(format!(
            "the manifest's schema is {}, not {MANIFEST_SCHEMA:?}",
            doc["schema"]
        ));
    }
    let text_at = |v: &Value, field: &str| -> Result<String, String> {
        v[field]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("the manifest has no string {field:?}"))
    };
    let input_at = |v: &Value| -> Result<InputRef, String> {
        Ok(InputRef {
            source: text_at(v, "source")?,
            sha256: text_at(v, "sha256")?,
        })
    };
    let layers = doc["layers"]
        .as_array()
        .ok_or("the manifest has no \"layers\" list")?
        .iter()
        .map(|l| {
            Ok(LayerSpec {
                name: text_at(l, "name")?,
                input: input_at(l)?,
                destination: l["destination"].as_str().map(str::to_owned),
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    let dev_access = match &doc["dev_access"] {
        Value::Null => None,
        d => Some(DevAccessSpec {
            ssh_authorized_keys: d["ssh_authorized_keys"]
                .as_array()
                .ok_or("dev_access has no ssh_authorized_keys list")?
                .iter()
                .map(|k| {
                    k.as_str()
                        .map(str::to_owned)
                        .ok_or("an ssh_authorized_keys entry is not a string")
                })
                .collect::<Result<_, _>>()?,
            sshd: input_at(&d["sshd"])?,
        }),
    };
    let spec = ImageSpec {
        name: text_at(&doc, "name")?,
        source_date_epoch: doc["source_date_epoch"]
            .as_i64()
            .ok_or("the manifest has no source_date_epoch")?,
        kernel: input_at(&doc["kernel"])?,
        cmdline: text_at(&doc, "cmdline")?,
        layers,
        dev_access,
    };
    let outputs = serde_json::from_value(doc["outputs"].clone())
        .map_err(|e| format!("the manifest's outputs are malformed: {e}"))?;
    Ok((spec, outputs))
}
