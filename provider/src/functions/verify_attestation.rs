//! `provider::safebox::verify_attestation(document_base64, expected_pcrs)`.
//!
//! Functions must be pure, so this one reads no clock and no configuration: it checks the
//! signature and the chain to the pinned AWS root *at the document's own timestamp*, the PCRs,
//! and debug mode. Freshness and nonces need a time and a secret, so they belong to the
//! `safebox_attestation` data source and to `safebox_enclave`.

use safebox::attest::chain::TrustRoot;
use safebox::attest::document::AttestationDocument;
use safebox::attest::verify::{verify, Policy};

use crate::data_sources::attestation::{decode_base64, document_types, document_values, expected_pcrs};
use crate::framework::function::{Function, FunctionError, Parameter};
use crate::framework::types::Type;
use crate::framework::value::Value;

/// The function.
pub struct VerifyAttestation;

impl Function for VerifyAttestation {
    fn name(&self) -> &'static str {
        "verify_attestation"
    }

    fn summary(&self) -> &'static str {
        "Verify an AWS Nitro attestation document against the pinned AWS root"
    }

    fn description(&self) -> &'static str {
        "Checks the document's ES384 signature, its certificate chain to the pinned AWS Nitro Enclaves root (at the document's own timestamp, so the result never changes), the expected PCRs and debug mode, and returns what it attests: `module_id`, `timestamp`, `pcrs`, `public_key`, `user_data`, `nonce` (hex) and `document_sha256`. Fails, saying why, when the document does not verify."
    }

    fn parameters(&self) -> Vec<Parameter> {
        vec![
            Parameter {
                name: "document_base64",
                ty: Type::String,
                description: "The attestation document, base64.",
            },
            Parameter {
                name: "expected_pcrs",
                ty: Type::map(Type::String),
                description: "PCR index to expected value (hex); `{}` to check none.",
            },
        ]
    }

    fn return_type(&self) -> Type {
        Type::object(document_types())
    }

    fn call(&self, arguments: &[Value]) -> Result<Value, FunctionError> {
        let text = arguments.first().and_then(Value::as_str).unwrap_or_default();
        let document = decode_base64(text).map_err(|e| FunctionError::argument(0, format!("document_base64 {e}")))?;
        let expected = expected_pcrs(arguments.get(1).unwrap_or(&Value::Null))
            .map_err(|e| FunctionError::argument(1, format!("expected_pcrs {e}")))?;
        let parsed = AttestationDocument::parse(&document).map_err(|e| FunctionError::argument(0, e.to_string()))?;
        let root = TrustRoot::aws();
        let policy = Policy {
            root: &root,
            at_ms: parsed.timestamp_ms,
            expected_pcrs: expected,
            nonce: None,
            max_age_ms: None,
            allow_debug: false,
            kind: None,
        };
        let verified = verify(&document, &policy, None).map_err(|e| FunctionError {
            message: e.to_string(),
            argument: None,
        })?;
        Ok(Value::object(document_values(&verified)))
    }
}
