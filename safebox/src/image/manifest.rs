//! The build manifest: canonical JSON of every input (with its SHA-256), the layer order,
//! kernel, command line, `source_date_epoch` and `dev_access`, followed by the outputs the
//! build produced. Anyone with the manifest and the inputs can rebuild both images and compare.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::spec::{DevAccessSpec, ImageFormat, ImageSpec, InputRef, LayerSpec};
use crate::canonical::to_canonical_json;

/// The `schema` of manifests this version writes and reads.
pub const MANIFEST_SCHEMA: &str = "safebox-image-manifest/v1";

/// An image's measurements, lower-case hex: the SHA-256 of the image file and the PCRs its
/// format is attested by. An EIF has `pcr0..2` and none of the others; a UKI the reverse.
/// Absent values are left out of the JSON, so an EIF's measurements read as they always did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Measurements {
    /// SHA-256 of the whole image file: the EIF, or the UKI (`\EFI\BOOT\BOOTX64.EFI`).
    pub image_sha256: String,
    /// EIF PCR0: kernel, cmdline and every ramdisk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr0: Option<String>,
    /// EIF PCR1: kernel, cmdline and the first ramdisk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr1: Option<String>,
    /// EIF PCR2: the ramdisks after the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr2: Option<String>,
    /// UKI NitroTPM PCR4 (SHA-384): boot manager code, the UKI and its kernel
    /// ([`super::nitrotpm`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr4: Option<String>,
    /// UKI NitroTPM PCR7 (SHA-384): Secure Boot policy, off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr7: Option<String>,
    /// UKI NitroTPM PCR12 (SHA-384): kernel parameters passed to the stub, none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr12: Option<String>,
    /// UKI: SHA-256 of the raw bootable disk. Never in the manifest or the seal proof: the
    /// disk holds both, so its digest cannot be inside them; it follows from them and the UKI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_sha256: Option<String>,
}

impl Measurements {
    /// These measurements as the manifest and seal proof record them (without `disk_sha256`).
    #[must_use]
    pub fn recorded(&self) -> Self {
        Self {
            disk_sha256: None,
            ..self.clone()
        }
    }
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
    let mut inputs = json!({
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
    });
    // An EIF manifest names no format, as before formats existed, so its digests stay put.
    if spec.format == ImageFormat::Uki {
        inputs["format"] = json!(spec.format.as_str());
        inputs["boot_stub"] = spec.boot_stub.as_ref().map_or(Value::Null, input_json);
    }
    inputs
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

/// Why text is not a build manifest this version reads.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON.
    #[error("the manifest is not JSON: {0}")]
    NotJson(serde_json::Error),
    /// Another schema.
    #[error("the manifest's schema is {0}, not {MANIFEST_SCHEMA:?}")]
    Schema(Value),
    /// A field is missing or of another type.
    #[error("the manifest has no {0}")]
    Missing(String),
    /// A field holds what no manifest holds.
    #[error("the manifest's {0}")]
    Malformed(String),
}

/// Reads a manifest back into the specification it describes and the outputs it records
/// (`None` for a manifest of inputs only, such as one written by hand before a first build).
///
/// # Errors
/// [`ManifestError`] naming the field that is missing or malformed.
pub fn parse_manifest(text: &str) -> Result<(ImageSpec, Option<Outputs>), ManifestError> {
    let doc: Value = serde_json::from_str(text).map_err(ManifestError::NotJson)?;
    if doc["schema"] != MANIFEST_SCHEMA {
        return Err(ManifestError::Schema(doc["schema"].clone()));
    }
    let missing = |what: &str| ManifestError::Missing(what.to_owned());
    let text_at = |v: &Value, field: &str| -> Result<String, ManifestError> {
        v[field]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| missing(&format!("string {field:?}")))
    };
    let input_at = |v: &Value| -> Result<InputRef, ManifestError> {
        Ok(InputRef {
            source: text_at(v, "source")?,
            sha256: text_at(v, "sha256")?,
        })
    };
    let layers = doc["layers"]
        .as_array()
        .ok_or_else(|| missing("\"layers\" list"))?
        .iter()
        .map(|l| {
            Ok(LayerSpec {
                name: text_at(l, "name")?,
                input: input_at(l)?,
                destination: l["destination"].as_str().map(str::to_owned),
            })
        })
        .collect::<Result<Vec<_>, ManifestError>>()?;
    let dev_access = match &doc["dev_access"] {
        Value::Null => None,
        d => Some(DevAccessSpec {
            ssh_authorized_keys: d["ssh_authorized_keys"]
                .as_array()
                .ok_or_else(|| missing("dev_access.ssh_authorized_keys list"))?
                .iter()
                .map(|k| {
                    k.as_str().map(str::to_owned).ok_or_else(|| {
                        ManifestError::Malformed(
                            "dev_access.ssh_authorized_keys holds a value that is not a string".into(),
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
            sshd: input_at(&d["sshd"])?,
        }),
    };
    let format = match &doc["format"] {
        Value::Null => ImageFormat::Eif,
        Value::String(name) => ImageFormat::parse(name)
            .ok_or_else(|| ManifestError::Malformed(format!("format {name:?} is neither \"eif\" nor \"uki\"")))?,
        other => return Err(ManifestError::Malformed(format!("format {other} is not a string"))),
    };
    let boot_stub = match &doc["boot_stub"] {
        Value::Null => None,
        stub => Some(input_at(stub)?),
    };
    let spec = ImageSpec {
        format,
        boot_stub,
        name: text_at(&doc, "name")?,
        source_date_epoch: doc["source_date_epoch"]
            .as_i64()
            .ok_or_else(|| missing("source_date_epoch"))?,
        kernel: input_at(&doc["kernel"])?,
        cmdline: text_at(&doc, "cmdline")?,
        layers,
        dev_access,
    };
    let outputs = serde_json::from_value(doc["outputs"].clone())
        .map_err(|e| ManifestError::Malformed(format!("outputs are malformed: {e}")))?;
    Ok((spec, outputs))
}
