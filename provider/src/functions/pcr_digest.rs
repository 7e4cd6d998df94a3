//! `provider::safebox::pcr_digest(measurement)`: the value a PCR holds after one measurement.

use crate::framework::function::{Function, FunctionError, Parameter};
use crate::framework::types::Type;
use crate::framework::value::Value;

/// The function.
pub struct PcrDigest;

impl Function for PcrDigest {
    fn name(&self) -> &'static str {
        "pcr_digest"
    }

    fn summary(&self) -> &'static str {
        "The PCR value after extending a zero PCR with one SHA-384 measurement"
    }

    fn description(&self) -> &'static str {
        "Nitro PCRs start as 48 zero bytes and are extended once: `SHA-384(zeros || measurement)`, where the measurement is the SHA-384 of the measured bytes. Give the measurement as 96 hex digits; the result is the PCR, 96 hex digits."
    }

    fn parameters(&self) -> Vec<Parameter> {
        vec![Parameter {
            name: "measurement",
            ty: Type::String,
            description: "SHA-384 of the measured bytes, 96 hex digits.",
        }]
    }

    fn return_type(&self) -> Type {
        Type::String
    }

    fn call(&self, arguments: &[Value]) -> Result<Value, FunctionError> {
        let text = arguments.first().and_then(Value::as_str).unwrap_or_default();
        let measurement: [u8; 48] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| {
                FunctionError::argument(
                    0,
                    format!("measurement {text:?} is not a SHA-384 digest (96 hex digits)"),
                )
            })?;
        Ok(Value::string(hex::encode(safebox::image::eif::pcr(&measurement))))
    }
}
