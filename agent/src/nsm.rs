//! Where attestation documents come from: the Nitro Secure Module device inside a real
//! enclave, the local backend's software NSM for a box started from an EIF, or, in a box
//! booted from a disk, its TPM: EC2's NitroTPM (the vendor command, [`crate::nitrotpm`]), or
//! under QEMU the software TPM's PCRs as the kernel reads them, signed with the box's
//! simulated leaf.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use safebox::attest::document::DocumentKind;
use safebox::attest::simulated::{AttestationRequest, SimulatedLeaf, SimulatedNitro};
use safebox::image::eif::Eif;

/// Where the kernel shows the TPM's SHA-384 PCR bank (Linux 5.12 and later), one file per
/// PCR holding its value in hex.
pub const SYSFS_PCRS: &str = "/sys/class/tpm/tpm0/pcr-sha384";
/// The PCRs of a TPM 2.0 for PC clients (TCG PC Client Platform TPM Profile): 0 to 23.
const TPM_PCR_COUNT: u32 = 24;

/// Why a document could not be produced.
#[derive(Debug, thiserror::Error)]
pub enum NsmError {
    /// The NSM refused or failed.
    #[error("the NSM could not attest: {0}")]
    Failed(String),
}

/// A source of attestation documents.
pub enum Nsm {
    /// The software NSM, with the PCRs of the EIF this box booted.
    Simulated {
        /// The simulated hierarchy.
        nitro: Box<SimulatedNitro>,
        /// PCRs 0 to 15 as the hypervisor would measure them.
        pcrs: BTreeMap<u32, Vec<u8>>,
        /// This box's module id.
        module_id: String,
    },
    /// The NSM device of a real enclave.
    Device(PathBuf),
    /// A box booted under QEMU: the PCRs the firmware measured into the (software) TPM, read
    /// from the kernel on every request, in a NitroTPM document signed with the box's leaf of
    /// the local simulated root.
    TpmSimulated {
        /// The box's signing leaf.
        leaf: Box<SimulatedLeaf>,
        /// The kernel's PCR folder ([`SYSFS_PCRS`]).
        pcrs_dir: PathBuf,
        /// This box's module id.
        module_id: String,
    },
    /// A box on EC2: documents from the NitroTPM through the TPM device.
    NitroTpm(PathBuf),
}

/// Reads PCR0 to PCR23 from the kernel's folder of one bank (`pcrs_dir/N`, hex).
///
/// # Errors
/// A message naming the file that is missing or not a SHA-384 value.
pub fn read_tpm_pcrs(pcrs_dir: &Path) -> Result<BTreeMap<u32, Vec<u8>>, String> {
    let mut pcrs = BTreeMap::new();
    for index in 0..TPM_PCR_COUNT {
        let path = pcrs_dir.join(index.to_string());
        let text = std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "reading {}: {e}; the box needs a TPM 2.0 with a SHA-384 PCR bank and Linux 5.12 or later",
                path.display()
            )
        })?;
        let value = hex::decode(text.trim())
            .ok()
            .filter(|v| v.len() == 48)
            .ok_or_else(|| format!("{} does not hold a SHA-384 value (96 hex digits)", path.display()))?;
        pcrs.insert(index, value);
    }
    Ok(pcrs)
}

impl Nsm {
    /// The software NSM for a box booted from `eif`, with its hierarchy in `dir`.
    ///
    /// # Errors
    /// A message when the EIF or the hierarchy cannot be read.
    pub fn simulated(eif: &Path, dir: &Path, module_id: String) -> Result<Self, String> {
        let file = std::fs::File::open(eif).map_err(|e| format!("opening {}: {e}", eif.display()))?;
        let image = Eif::parse(file).map_err(|e| format!("{}: {e}", eif.display()))?;
        let mut pcrs: BTreeMap<u32, Vec<u8>> = (0..16).map(|i| (i, vec![0u8; 48])).collect();
        for (index, value) in [(0, &image.pcrs.pcr0), (1, &image.pcrs.pcr1), (2, &image.pcrs.pcr2)] {
            pcrs.insert(index, hex::decode(value).map_err(|e| e.to_string())?);
        }
        let nitro = SimulatedNitro::open_or_create(dir).map_err(|e| e.to_string())?;
        Ok(Self::Simulated {
            nitro: Box::new(nitro),
            pcrs,
            module_id,
        })
    }

    /// A document binding `nonce`, `public_key` and `user_data`.
    ///
    /// # Errors
    /// [`NsmError`] when the NSM fails.
    pub fn attest(
        &self,
        nonce: Option<Vec<u8>>,
        public_key: Option<Vec<u8>>,
        user_data: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, NsmError> {
        match self {
            Self::Simulated { nitro, pcrs, module_id } => {
                let now_ms =
                    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
                let request = AttestationRequest {
                    kind: safebox::attest::document::DocumentKind::Enclave,
                    module_id: module_id.clone(),
                    pcrs: pcrs.clone(),
                    public_key,
                    user_data,
                    nonce,
                };
                nitro
                    .attest(&request, now_ms)
                    .map_err(|e| NsmError::Failed(e.to_string()))
            }
            Self::Device(path) => device::attest(path, nonce, public_key, user_data),
            Self::TpmSimulated {
                leaf,
                pcrs_dir,
                module_id,
            } => {
                let now_ms =
                    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
                let request = AttestationRequest {
                    kind: DocumentKind::NitroTpm,
                    module_id: module_id.clone(),
                    pcrs: read_tpm_pcrs(pcrs_dir).map_err(NsmError::Failed)?,
                    public_key,
                    user_data,
                    nonce,
                };
                leaf.attest(&request, now_ms)
                    .map_err(|e| NsmError::Failed(e.to_string()))
            }
            Self::NitroTpm(device) => crate::nitrotpm::attestation_document(device, nonce, public_key, user_data)
                .map_err(|e| NsmError::Failed(e.to_string())),
        }
    }
}

/// The NSM API's `Attestation` request and response, in CBOR: the same on `/dev/nsm` and
/// inside NitroTPM's message buffer. The request is `{"Attestation": {"user_data": ...,
/// "nonce": ..., "public_key": ...}}` (each a byte string or null) and the answer
/// `{"Attestation": {"document": bstr}}` or `{"Error": text}`.
pub(crate) mod nsm_api {
    use ciborium::value::Value;

    use super::NsmError;

    pub(crate) fn request(nonce: Option<Vec<u8>>, public_key: Option<Vec<u8>>, user_data: Option<Vec<u8>>) -> Vec<u8> {
        let field = |v: Option<Vec<u8>>| v.map_or(Value::Null, Value::Bytes);
        let request = Value::Map(vec![(
            Value::Text("Attestation".into()),
            Value::Map(vec![
                (Value::Text("user_data".into()), field(user_data)),
                (Value::Text("nonce".into()), field(nonce)),
                (Value::Text("public_key".into()), field(public_key)),
            ]),
        )]);
        let mut out = Vec::new();
        let _ = ciborium::ser::into_writer(&request, &mut out);
        out
    }

    /// The document in a response; bytes after the first CBOR value are ignored (NitroTPM's
    /// buffer is larger than its answer).
    pub(crate) fn document(response: &[u8]) -> Result<Vec<u8>, NsmError> {
        let value: Value =
            ciborium::de::from_reader(response).map_err(|e| NsmError::Failed(format!("unreadable response ({e})")))?;
        let Value::Map(entries) = value else {
            return Err(NsmError::Failed("the response is not a map".into()));
        };
        for (key, value) in entries {
            match (key, value) {
                (Value::Text(k), Value::Map(inner)) if k == "Attestation" => {
                    for (k, v) in inner {
                        if let (Value::Text(k), Value::Bytes(document)) = (k, v) {
                            if k == "document" {
                                return Ok(document);
                            }
                        }
                    }
                }
                (Value::Text(k), error) if k == "Error" => return Err(NsmError::Failed(format!("{error:?}"))),
                _ => {}
            }
        }
        Err(NsmError::Failed("the response holds no document".into()))
    }
}

/// The `/dev/nsm` driver protocol of AWS Nitro Enclaves: one ioctl carrying a CBOR request
/// and a response buffer (`struct nsm_message { struct iovec request; struct iovec response; }`,
/// request code `_IOWR(0x0A, 0, struct nsm_message)`), the request and answer of
/// [`nsm_api`].
mod device {
    use std::path::Path;

    use super::nsm_api::{document, request};
    use super::NsmError;

    /// The driver's largest response.
    const MAX_RESPONSE: usize = 0x3000;

    pub(super) fn attest(
        path: &Path,
        nonce: Option<Vec<u8>>,
        public_key: Option<Vec<u8>>,
        user_data: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, NsmError> {
        let request = request(nonce, public_key, user_data);
        let mut response = vec![0u8; MAX_RESPONSE];
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| NsmError::Failed(format!("opening {}: {e}", path.display())))?;
        let length = ioctl::exchange(&file, &request, &mut response)
            .map_err(|e| NsmError::Failed(format!("{}: {e}", path.display())))?;
        document(&response[..length.min(MAX_RESPONSE)])
    }

    mod ioctl {
        use std::fs::File;

        use rustix::ioctl::{ioctl, opcode, Opcode, Updater};

        #[repr(C)]
        struct IoVec {
            base: *mut u8,
            len: usize,
        }

        #[repr(C)]
        pub(super) struct NsmMessage {
            request: IoVec,
            response: IoVec,
        }

        const NSM_REQUEST: Opcode = opcode::read_write::<NsmMessage>(0x0A, 0);

        /// Sends `request` and fills `response`; returns the response length.
        pub(super) fn exchange(file: &File, request: &[u8], response: &mut [u8]) -> std::io::Result<usize> {
            let mut message = NsmMessage {
                request: IoVec {
                    base: request.as_ptr().cast_mut(),
                    len: request.len(),
                },
                response: IoVec {
                    base: response.as_mut_ptr(),
                    len: response.len(),
                },
            };
            // SAFETY: both buffers outlive the call; the driver reads `request.len` bytes from
            // the first and writes at most `response.len` bytes into the second, then updates
            // `response.len` to the length it wrote.
            unsafe { ioctl(file, Updater::<NSM_REQUEST, NsmMessage>::new(&mut message)) }?;
            Ok(message.response.len)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use ciborium::value::Value;

        #[test]
        fn request_and_response_follow_the_nsm_api() {
            let bytes = request(Some(vec![1, 2]), None, None);
            let value: Value = ciborium::de::from_reader(bytes.as_slice()).unwrap();
            let Value::Map(outer) = value else { panic!() };
            assert_eq!(outer[0].0, Value::Text("Attestation".into()));
            let answer = Value::Map(vec![(
                Value::Text("Attestation".into()),
                Value::Map(vec![(Value::Text("document".into()), Value::Bytes(vec![9, 9]))]),
            )]);
            let mut encoded = Vec::new();
            ciborium::ser::into_writer(&answer, &mut encoded).unwrap();
            assert_eq!(document(&encoded).unwrap(), vec![9, 9]);
            let error = Value::Map(vec![(
                Value::Text("Error".into()),
                Value::Text("InvalidArgument".into()),
            )]);
            let mut encoded = Vec::new();
            ciborium::ser::into_writer(&error, &mut encoded).unwrap();
            assert!(document(&encoded).unwrap_err().to_string().contains("InvalidArgument"));
        }
    }
}
