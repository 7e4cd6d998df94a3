//! NitroTPM attestation documents on EC2: the TPM2 AWS vendor command, spoken with plain
//! writes and reads on the TPM character device (`/dev/tpmrm0`, or `/dev/tpm0`).
//!
//! # Protocol
//!
//! EC2's NitroTPM serves the Nitro Secure Module's `Attestation` request through one vendor
//! command, `TPM2_VENDOR_AWS_NSM_REQUEST` (command code `0x20000001`), whose only operand is an
//! NV index used as a message buffer: the caller writes the NSM request there, issues the
//! command, and reads the NSM response back from the same index. This follows what AWS's own
//! client, `nitro-tpm-attest` in aws/NitroTPM-Tools, does (read for the facts; none of its code
//! is used here). Step by step, every structure from TPM 2.0 Library Part 2 and every command
//! from Part 3 (revision 1.59):
//!
//! 1. `TPM2_CreatePrimary` in the endorsement hierarchy with the TCG EK Credential Profile's
//!    default RSA 2048 template (profile 2.5, B.3.3 "Template L-1"): the key that salts the
//!    authorisation session. Its public modulus comes back in `outPublic.unique`.
//! 2. `TPM2_GetCapability(TPM_CAP_HANDLES, 0x01000000)` to find a free NV index, and
//!    `TPM2_GetCapability(TPM_CAP_TPM_PROPERTIES, TPM_PT_NV_BUFFER_MAX)` for the largest
//!    NV_Write/NV_Read chunk.
//! 3. `TPM2_NV_DefineSpace` (owner hierarchy, empty owner authorisation) of an ordinary index
//!    of 8192 bytes (the document is about 5 KiB, each optional field at most 1 KiB), name
//!    algorithm SHA-512, `TPMA_NV_AUTHREAD | TPMA_NV_AUTHWRITE`, with a random 64-byte
//!    authValue whose last byte is not zero (Part 1 §17.6.3: the TPM drops trailing zeros of
//!    an authValue, which an HMAC computed over all 64 bytes would not).
//! 4. `TPM2_NV_Write` of the NSM request, in chunks: the CBOR encoding of
//!    `{"Attestation": {"user_data": bstr/null, "nonce": bstr/null, "public_key": bstr/null}}`
//!    (the NSM API's request, as on `/dev/nsm`).
//! 5. `TPM2_NV_ReadPublic` for the index's Name (`nameAlg || H(TPMS_NV_PUBLIC)`, now with
//!    `TPMA_NV_WRITTEN`).
//! 6. `TPM2_StartAuthSession`: an HMAC session (`TPM_SE_HMAC`), unbound, no parameter
//!    encryption (`TPM_ALG_NULL`), session hash SHA-512, a 64-byte `nonceCaller`, salted with
//!    the EK: a 32-byte salt encrypted with RSA-OAEP (SHA-256, the EK's name algorithm, MGF1
//!    SHA-256, label `"SECRET\0"`; Part 1 §B.10.2). The session key is
//!    `KDFa(SHA-512, salt, "ATH", nonceTPM, nonceCaller, 512)` (Part 1 §11.4.10.2, §19.6.11).
//! 7. The vendor command: `TPM_ST_SESSIONS`, handles `(nvIndex, nvIndex)` (authHandle and the
//!    index), no parameters, one authorisation: the session with `continueSession`, a fresh
//!    64-byte `nonceCaller` and `HMAC-SHA-512(sessionKey || authValue, cpHash || nonceCaller
//!    || nonceTPM || sessionAttributes)` where `cpHash = SHA-512(commandCode || Name(nv) ||
//!    Name(nv))` (Part 1 §18.7, §19.6.5).
//! 8. `TPM2_NV_Read` of the whole index, in chunks: the NSM response,
//!    `{"Attestation": {"document": bstr}}` or `{"Error": text}`, followed by unused bytes.
//! 9. Clean-up, on every path: `TPM2_FlushContext` of the session and of the EK,
//!    `TPM2_NV_UndefineSpace` of the index (an index left behind would hold NV memory until
//!    someone removes it).
//!
//! Password sessions (`TPM_RS_PW`) authorise steps 1, 3, 4, 8 and 9. AWS's client wraps steps
//! 3, 4 and 8 in a salted session with parameter encryption, which hides the index's authValue
//! and the buffer's contents on the way to the TPM; none of them is secret here (the request is
//! what the response document will show, and the authValue guards a buffer that lives for one
//! request), so this client does not.
//!
//! # What is exercised where
//!
//! NitroTPM exists only on EC2, so the vendor command itself cannot be run here: this module's
//! unit tests check the byte layout of every command against the structures above, and the
//! agent's `nitrotpm_swtpm` test runs steps 1 to 6, 8 and 9 against `swtpm` (a TPM 2.0
//! simulator), authorising an NV read with the very salted-session HMAC the vendor command
//! uses, so the TPM itself checks the salt, the session key, the cpHash and the HMAC; the
//! vendor command then meets `TPM_RC_COMMAND_CODE` there. On a real instance, the kernel's
//! resource manager (`/dev/tpmrm0`) passes a vendor command only if the TPM lists it among its
//! commands; where it does not, `--tpm-device /dev/tpm0` talks to the TPM directly (then no
//! other TPM user may run at the same time).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha512};

/// The AWS vendor command that carries an NSM request (NitroTPM).
pub const TPM2_VENDOR_AWS_NSM_REQUEST: u32 = 0x2000_0001;
/// The message buffer's size: an attestation document is about 5 KiB, and its three optional
/// fields are at most 1 KiB each.
pub const MESSAGE_BUFFER_SIZE: u16 = 8192;

const TPM_ST_NO_SESSIONS: u16 = 0x8001;
const TPM_ST_SESSIONS: u16 = 0x8002;
const TPM_CC_NV_UNDEFINE_SPACE: u32 = 0x0000_0122;
const TPM_CC_NV_DEFINE_SPACE: u32 = 0x0000_012A;
const TPM_CC_CREATE_PRIMARY: u32 = 0x0000_0131;
const TPM_CC_NV_WRITE: u32 = 0x0000_0137;
const TPM_CC_NV_READ: u32 = 0x0000_014E;
const TPM_CC_FLUSH_CONTEXT: u32 = 0x0000_0165;
const TPM_CC_NV_READ_PUBLIC: u32 = 0x0000_0169;
const TPM_CC_START_AUTH_SESSION: u32 = 0x0000_0176;
const TPM_CC_GET_CAPABILITY: u32 = 0x0000_017A;
const TPM_RH_OWNER: u32 = 0x4000_0001;
const TPM_RH_NULL: u32 = 0x4000_0007;
const TPM_RS_PW: u32 = 0x4000_0009;
const TPM_RH_ENDORSEMENT: u32 = 0x4000_000B;
const TPM_ALG_RSA: u16 = 0x0001;
const TPM_ALG_AES: u16 = 0x0006;
const TPM_ALG_SHA256: u16 = 0x000B;
const TPM_ALG_SHA512: u16 = 0x000D;
const TPM_ALG_NULL: u16 = 0x0010;
const TPM_ALG_CFB: u16 = 0x0043;
const TPM_SE_HMAC: u8 = 0x00;
const TPM_CAP_HANDLES: u32 = 0x0000_0001;
const TPM_CAP_TPM_PROPERTIES: u32 = 0x0000_0006;
/// `TPM_PT_FIXED + 44`.
const TPM_PT_NV_BUFFER_MAX: u32 = 0x0000_012C;
const NV_INDEX_FIRST: u32 = 0x0100_0000;
const NV_INDEX_LAST: u32 = 0x01FF_FFFF;
/// `TPMA_SESSION.continueSession`.
const CONTINUE_SESSION: u8 = 0x01;
/// `TPMA_NV_AUTHWRITE` (bit 2) and `TPMA_NV_AUTHREAD` (bit 18); an ordinary index (`TPM_NT` 0).
const NV_ATTRIBUTES: u32 = (1 << 2) | (1 << 18);
/// Template L-1: fixedTPM, fixedParent, sensitiveDataOrigin, adminWithPolicy, restricted,
/// decrypt (TPMA_OBJECT bits 1, 4, 5, 7, 16, 17).
const EK_ATTRIBUTES: u32 = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 7) | (1 << 16) | (1 << 17);
/// Template L-1's authPolicy: `PolicySecret(TPM_RH_ENDORSEMENT)` under SHA-256 (TCG EK
/// Credential Profile B.3.2, policy A).
const EK_POLICY_A_SHA256: [u8; 32] = [
    0x83, 0x71, 0x97, 0x67, 0x44, 0x84, 0xb3, 0xf8, 0x1a, 0x90, 0xcc, 0x8d, 0x46, 0xa5, 0xd7, 0x24, 0xfd, 0x52, 0xd7,
    0x6e, 0x06, 0x52, 0x0b, 0x64, 0xf2, 0xa1, 0xda, 0x1b, 0x33, 0x14, 0x69, 0xaa,
];
/// Used when the TPM does not report `TPM_PT_NV_BUFFER_MAX` (every TPM 2.0 takes this much).
const FALLBACK_NV_CHUNK: u16 = 512;
/// A TPM response is at most this large (`TPM_PT_MAX_RESPONSE_SIZE` is 4096 on PC TPMs).
const MAX_RESPONSE: usize = 8192;
/// `TPM_RC_COMMAND_CODE`: the TPM does not implement the command.
const TPM_RC_COMMAND_CODE: u32 = 0x143;
/// `TPM_RC_YIELDED`, `TPM_RC_TESTING`, `TPM_RC_NV_RATE`, `TPM_RC_RETRY`: send the command again.
const RETRIED: [u32; 4] = [0x908, 0x90A, 0x920, 0x922];
/// How often a command is sent again (with a growing pause, about 4 s in all).
const MAX_RETRIES: u64 = 25;

/// Why the NitroTPM gave no document.
#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// The device could not be opened, written or read.
    #[error("{device}: {action}: {source}{hint}")]
    Io {
        /// The TPM device.
        device: String,
        /// What was being done.
        action: &'static str,
        /// The OS error.
        source: std::io::Error,
        /// What to try.
        hint: &'static str,
    },
    /// The TPM answered a command with an error code.
    #[error("the TPM refused {command}: response code {code:#x}{hint}")]
    Refused {
        /// The command.
        command: &'static str,
        /// `TPM_RC`.
        code: u32,
        /// What it means here.
        hint: &'static str,
    },
    /// The TPM's answer does not have the layout of its command's response.
    #[error("the TPM's answer to {command} is malformed: {what}")]
    Malformed {
        /// The command.
        command: &'static str,
        /// What is wrong.
        what: String,
    },
    /// A local cryptographic step failed.
    #[error("{0}")]
    Crypto(String),
    /// The NitroTPM ran the NSM request and refused it.
    #[error("the NitroTPM's NSM answered {0}")]
    Nsm(String),
}

/// A TPM reached through a stream of command and response bytes: the character device, or
/// (in tests) a simulator's socket.
pub struct Tpm<T> {
    io: T,
    name: String,
}

impl Tpm<std::fs::File> {
    /// Opens the TPM device at `path`.
    ///
    /// # Errors
    /// [`TpmError::Io`] naming the device.
    pub fn open(path: &Path) -> Result<Self, TpmError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|source| TpmError::Io {
                device: path.display().to_string(),
                action: "opening",
                source,
                hint: "; on EC2 the instance type must support NitroTPM and the AMI be registered with TpmSupport v2.0",
            })?;
        Ok(Self::new(file, path.display().to_string()))
    }
}

impl<T: Read + Write> Tpm<T> {
    /// A TPM on an open stream, `name` for messages.
    pub fn new(io: T, name: String) -> Self {
        Self { io, name }
    }

    /// Sends one command and returns the whole response.
    fn transact(&mut self, command: &[u8]) -> Result<Vec<u8>, TpmError> {
        let io = |action, source: std::io::Error, hint| TpmError::Io {
            device: self.name.clone(),
            action,
            source,
            hint,
        };
        self.io.write_all(command).map_err(|e| {
            let hint = if e.raw_os_error() == Some(22) {
                "; the kernel's resource manager passes only commands the TPM lists: try --tpm-device /dev/tpm0"
            } else {
                ""
            };
            io("writing a command", e, hint)
        })?;
        // A character device answers in one read; a socket may take several. The header's
        // size field says when the response is complete.
        let mut response = Vec::new();
        let mut buffer = vec![0u8; MAX_RESPONSE];
        loop {
            let n = self.io.read(&mut buffer).map_err(|e| io("reading a response", e, ""))?;
            if n == 0 {
                return Err(io("reading a response", std::io::ErrorKind::UnexpectedEof.into(), ""));
            }
            response.extend_from_slice(&buffer[..n]);
            if response.len() >= 10 {
                let size = u32::from_be_bytes([response[2], response[3], response[4], response[5]]) as usize;
                if !(10..=MAX_RESPONSE).contains(&size) {
                    return Err(TpmError::Malformed {
                        command: "a command",
                        what: format!("the response claims {size} bytes"),
                    });
                }
                if response.len() >= size {
                    response.truncate(size);
                    return Ok(response);
                }
            }
        }
    }

    /// Sends `command` and checks its response header; returns the whole response. The
    /// warnings that ask the caller to send the command again (Part 2 §6.6.3: `TPM_RC_RETRY`,
    /// `TPM_RC_YIELDED`, `TPM_RC_TESTING`, `TPM_RC_NV_RATE`) are retried, as the TCG software
    /// stack does.
    fn call(&mut self, name: &'static str, command: &Command) -> Result<Vec<u8>, TpmError> {
        let bytes = command.bytes();
        let mut attempt = 0u64;
        let (response, code) = loop {
            let response = self.transact(&bytes)?;
            let code = u32::from_be_bytes([response[6], response[7], response[8], response[9]]);
            if RETRIED.contains(&code) && attempt < MAX_RETRIES {
                attempt += 1;
                std::thread::sleep(std::time::Duration::from_millis(10 * attempt));
                continue;
            }
            break (response, code);
        };
        if code != 0 {
            let hint = match (code, command.code) {
                (TPM_RC_COMMAND_CODE, TPM2_VENDOR_AWS_NSM_REQUEST) => {
                    " (TPM_RC_COMMAND_CODE): this TPM has no AWS NSM vendor command, so it is not EC2's NitroTPM; run the box on an instance type with NitroTPM"
                }
                (TPM_RC_COMMAND_CODE, _) => " (TPM_RC_COMMAND_CODE): the TPM does not implement it",
                _ => "",
            };
            return Err(TpmError::Refused {
                command: name,
                code,
                hint,
            });
        }
        Ok(response)
    }
}

/// A command being marshalled (Part 1 §18: tag, size, code, handles, authorisations,
/// parameters, all big-endian).
#[derive(Debug, Clone)]
pub(crate) struct Command {
    code: u32,
    handles: Vec<u8>,
    auth: Option<Vec<u8>>,
    parameters: Vec<u8>,
}

impl Command {
    pub(crate) fn new(code: u32) -> Self {
        Self {
            code,
            handles: Vec::new(),
            auth: None,
            parameters: Vec::new(),
        }
    }

    fn handle(mut self, handle: u32) -> Self {
        self.handles.extend_from_slice(&handle.to_be_bytes());
        self
    }

    /// One authorisation (a session's `TPMS_AUTH_COMMAND`).
    fn authorised(mut self, auth: Vec<u8>) -> Self {
        self.auth = Some(auth);
        self
    }

    fn u8(mut self, v: u8) -> Self {
        self.parameters.push(v);
        self
    }

    fn u16(mut self, v: u16) -> Self {
        self.parameters.extend_from_slice(&v.to_be_bytes());
        self
    }

    fn u32(mut self, v: u32) -> Self {
        self.parameters.extend_from_slice(&v.to_be_bytes());
        self
    }

    /// A `TPM2B`: u16 size, then the bytes.
    fn sized(mut self, bytes: &[u8]) -> Self {
        self.parameters.extend_from_slice(&sized(bytes));
        self
    }

    pub(crate) fn bytes(&self) -> Vec<u8> {
        let tag = if self.auth.is_some() {
            TPM_ST_SESSIONS
        } else {
            TPM_ST_NO_SESSIONS
        };
        let mut out = Vec::with_capacity(32 + self.parameters.len());
        out.extend_from_slice(&tag.to_be_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.code.to_be_bytes());
        out.extend_from_slice(&self.handles);
        if let Some(auth) = &self.auth {
            out.extend_from_slice(&u32::try_from(auth.len()).unwrap_or(u32::MAX).to_be_bytes());
            out.extend_from_slice(auth);
        }
        out.extend_from_slice(&self.parameters);
        let size = u32::try_from(out.len()).unwrap_or(u32::MAX);
        out[2..6].copy_from_slice(&size.to_be_bytes());
        out
    }
}

/// `N` bytes from the operating system's generator.
fn random<const N: usize>() -> [u8; N] {
    let mut out = [0u8; N];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut out);
    out
}

fn sized(bytes: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(bytes.len() + 2);
    out.extend_from_slice(&u16::try_from(bytes.len()).unwrap_or(u16::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
    out
}

/// Reads a response (Part 1 §18.8): after the 10-byte header, the handles, then (with
/// sessions) `parameterSize` and the parameters.
struct Reader<'a> {
    command: &'static str,
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    fn after_header(command: &'static str, response: &'a [u8]) -> Self {
        Self {
            command,
            data: response.get(10..).unwrap_or_default(),
        }
    }

    fn malformed(&self, what: &str) -> TpmError {
        TpmError::Malformed {
            command: self.command,
            what: what.to_owned(),
        }
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], TpmError> {
        if self.data.len() < n {
            return Err(self.malformed(&format!("it ends before {what}")));
        }
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        Ok(head)
    }

    fn u8(&mut self, what: &str) -> Result<u8, TpmError> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, TpmError> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &str) -> Result<u32, TpmError> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn sized(&mut self, what: &str) -> Result<&'a [u8], TpmError> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }
}

/// A password authorisation (`TPM_RS_PW`, Part 1 §19.8.4): empty nonce, no attributes, the
/// authValue in the clear.
fn password(auth_value: &[u8]) -> Vec<u8> {
    let mut out = TPM_RS_PW.to_be_bytes().to_vec();
    out.extend_from_slice(&sized(&[]));
    out.push(0);
    out.extend_from_slice(&sized(auth_value));
    out
}

/// The EK template L-1 as a `TPMT_PUBLIC` (Part 2 §12.2.4).
pub(crate) fn ek_template() -> Vec<u8> {
    let mut out = Vec::with_capacity(300);
    out.extend_from_slice(&TPM_ALG_RSA.to_be_bytes());
    out.extend_from_slice(&TPM_ALG_SHA256.to_be_bytes());
    out.extend_from_slice(&EK_ATTRIBUTES.to_be_bytes());
    out.extend_from_slice(&sized(&EK_POLICY_A_SHA256));
    // TPMS_RSA_PARMS: symmetric AES-128-CFB, scheme NULL, 2048 bits, default exponent.
    out.extend_from_slice(&TPM_ALG_AES.to_be_bytes());
    out.extend_from_slice(&128u16.to_be_bytes());
    out.extend_from_slice(&TPM_ALG_CFB.to_be_bytes());
    out.extend_from_slice(&TPM_ALG_NULL.to_be_bytes());
    out.extend_from_slice(&2048u16.to_be_bytes());
    out.extend_from_slice(&0u32.to_be_bytes());
    // unique: 256 zero bytes, as the template says.
    out.extend_from_slice(&sized(&[0; 256]));
    out
}

/// The salt key: the EK's handle and public key.
pub struct SaltKey {
    handle: u32,
    modulus: Vec<u8>,
    exponent: u32,
}

/// Creates the EK (template L-1) in the endorsement hierarchy.
fn create_ek<T: Read + Write>(tpm: &mut Tpm<T>) -> Result<SaltKey, TpmError> {
    const NAME: &str = "TPM2_CreatePrimary";
    let command = Command::new(TPM_CC_CREATE_PRIMARY)
        .handle(TPM_RH_ENDORSEMENT)
        .authorised(password(&[]))
        // inSensitive: a TPMS_SENSITIVE_CREATE of an empty userAuth and empty data.
        .sized(&[0, 0, 0, 0])
        .sized(&ek_template())
        // outsideInfo, and an empty creationPCR selection.
        .sized(&[])
        .u32(0);
    let response = tpm.call(NAME, &command)?;
    let mut r = Reader::after_header(NAME, &response);
    let handle = r.u32("objectHandle")?;
    let _parameter_size = r.u32("parameterSize")?;
    let public = r.sized("outPublic")?;
    let key = parse_rsa_public(public).map_err(|what| TpmError::Malformed {
        command: NAME,
        what: format!("outPublic: {what}"),
    });
    match key {
        Ok((modulus, exponent)) => Ok(SaltKey {
            handle,
            modulus,
            exponent,
        }),
        Err(e) => {
            let _ = flush(tpm, handle);
            Err(e)
        }
    }
}

/// The modulus and exponent of an RSA `TPMT_PUBLIC`.
pub(crate) fn parse_rsa_public(public: &[u8]) -> Result<(Vec<u8>, u32), String> {
    let mut r = Reader {
        command: "",
        data: public,
    };
    let e = |e: TpmError| match e {
        TpmError::Malformed { what, .. } => what,
        other => other.to_string(),
    };
    if r.u16("type").map_err(e)? != TPM_ALG_RSA {
        return Err("the key is not RSA".into());
    }
    let _name_alg = r.u16("nameAlg").map_err(e)?;
    let _attributes = r.u32("objectAttributes").map_err(e)?;
    let _policy = r.sized("authPolicy").map_err(e)?;
    if r.u16("symmetric").map_err(e)? != TPM_ALG_NULL {
        let _bits = r.u16("symmetric keyBits").map_err(e)?;
        let _mode = r.u16("symmetric mode").map_err(e)?;
    }
    if r.u16("scheme").map_err(e)? != TPM_ALG_NULL {
        let _hash = r.u16("scheme hash").map_err(e)?;
    }
    let bits = r.u16("keyBits").map_err(e)?;
    let exponent = match r.u32("exponent").map_err(e)? {
        0 => 65_537,
        other => other,
    };
    let modulus = r.sized("unique").map_err(e)?.to_vec();
    if modulus.len() * 8 != usize::from(bits) {
        return Err(format!("the modulus is {} bytes for a {bits}-bit key", modulus.len()));
    }
    Ok((modulus, exponent))
}

fn flush<T: Read + Write>(tpm: &mut Tpm<T>, handle: u32) -> Result<(), TpmError> {
    tpm.call("TPM2_FlushContext", &Command::new(TPM_CC_FLUSH_CONTEXT).u32(handle))
        .map(|_| ())
}

/// `TPM2_GetCapability` of up to `count` items from `property`: whether more follow, and the
/// raw capability data.
fn capability<T: Read + Write>(
    tpm: &mut Tpm<T>,
    capability: u32,
    property: u32,
    count: u32,
) -> Result<(bool, Vec<u8>), TpmError> {
    const NAME: &str = "TPM2_GetCapability";
    let response = tpm.call(
        NAME,
        &Command::new(TPM_CC_GET_CAPABILITY)
            .u32(capability)
            .u32(property)
            .u32(count),
    )?;
    let mut r = Reader::after_header(NAME, &response);
    let more = r.u8("moreData")? != 0;
    if r.u32("capability")? != capability {
        return Err(r.malformed("it answers another capability"));
    }
    Ok((more, r.data.to_vec()))
}

/// The largest NV_Write / NV_Read chunk.
fn nv_chunk<T: Read + Write>(tpm: &mut Tpm<T>) -> Result<u16, TpmError> {
    let (_, data) = capability(tpm, TPM_CAP_TPM_PROPERTIES, TPM_PT_NV_BUFFER_MAX, 1)?;
    let mut r = Reader {
        command: "TPM2_GetCapability",
        data: &data,
    };
    if r.u32("count")? == 0 || r.u32("property")? != TPM_PT_NV_BUFFER_MAX {
        return Ok(FALLBACK_NV_CHUNK);
    }
    let value = r.u32("value")?;
    Ok(u16::try_from(value).unwrap_or(u16::MAX).max(64))
}

/// The first NV index not in use.
fn free_nv_index<T: Read + Write>(tpm: &mut Tpm<T>) -> Result<u32, TpmError> {
    let mut used = Vec::new();
    let mut from = NV_INDEX_FIRST;
    loop {
        let (more, data) = capability(tpm, TPM_CAP_HANDLES, from, 254)?;
        let mut r = Reader {
            command: "TPM2_GetCapability",
            data: &data,
        };
        let count = r.u32("count")?;
        for _ in 0..count {
            used.push(r.u32("handle")?);
        }
        match used.last() {
            Some(last) if more && *last < NV_INDEX_LAST => from = last + 1,
            _ => break,
        }
    }
    (NV_INDEX_FIRST..=NV_INDEX_LAST)
        .find(|h| !used.contains(h))
        .ok_or_else(|| TpmError::Malformed {
            command: "TPM2_GetCapability",
            what: "every NV index is in use".into(),
        })
}

/// The message buffer: an NV index this client defined.
#[derive(Clone, Copy)]
struct MessageBuffer {
    index: u32,
    auth: [u8; 64],
    size: u16,
    chunk: u16,
}

impl MessageBuffer {
    /// `TPMS_NV_PUBLIC` of the index as defined.
    fn public(&self) -> Vec<u8> {
        let mut out = self.index.to_be_bytes().to_vec();
        out.extend_from_slice(&TPM_ALG_SHA512.to_be_bytes());
        out.extend_from_slice(&NV_ATTRIBUTES.to_be_bytes());
        out.extend_from_slice(&sized(&[]));
        out.extend_from_slice(&self.size.to_be_bytes());
        out
    }

    fn define<T: Read + Write>(tpm: &mut Tpm<T>, size: u16) -> Result<Self, TpmError> {
        let chunk = nv_chunk(tpm)?;
        let index = free_nv_index(tpm)?;
        let mut auth: [u8; 64] = random();
        // Part 1 §17.6.3: trailing zeros of an authValue are dropped by the TPM.
        if auth[63] == 0 {
            auth[63] = 1;
        }
        let buffer = Self {
            index,
            auth,
            size,
            chunk,
        };
        let command = Command::new(TPM_CC_NV_DEFINE_SPACE)
            .handle(TPM_RH_OWNER)
            .authorised(password(&[]))
            .sized(&buffer.auth)
            .sized(&buffer.public());
        tpm.call("TPM2_NV_DefineSpace", &command)?;
        Ok(buffer)
    }

    fn write<T: Read + Write>(&self, tpm: &mut Tpm<T>, data: &[u8]) -> Result<(), TpmError> {
        if data.len() > usize::from(self.size) {
            return Err(TpmError::Crypto(format!(
                "the NSM request is {} bytes, over the {}-byte message buffer",
                data.len(),
                self.size
            )));
        }
        for (n, chunk) in data.chunks(usize::from(self.chunk)).enumerate() {
            let offset = u16::try_from(n * usize::from(self.chunk)).unwrap_or(u16::MAX);
            let command = Command::new(TPM_CC_NV_WRITE)
                .handle(self.index)
                .handle(self.index)
                .authorised(password(&self.auth))
                .sized(chunk)
                .u16(offset);
            tpm.call("TPM2_NV_Write", &command)?;
        }
        Ok(())
    }

    /// The index's Name, as the TPM computes it.
    fn name<T: Read + Write>(&self, tpm: &mut Tpm<T>) -> Result<Vec<u8>, TpmError> {
        const NAME: &str = "TPM2_NV_ReadPublic";
        let response = tpm.call(NAME, &Command::new(TPM_CC_NV_READ_PUBLIC).handle(self.index))?;
        let mut r = Reader::after_header(NAME, &response);
        let _public = r.sized("nvPublic")?;
        Ok(r.sized("nvName")?.to_vec())
    }

    /// Reads the whole index, each chunk authorised by `auth(command)`.
    fn read_with<T: Read + Write>(
        &self,
        tpm: &mut Tpm<T>,
        mut auth: impl FnMut(&Command) -> Vec<u8>,
    ) -> Result<Vec<u8>, TpmError> {
        const NAME: &str = "TPM2_NV_Read";
        let mut out = Vec::with_capacity(usize::from(self.size));
        while out.len() < usize::from(self.size) {
            let offset = u16::try_from(out.len()).unwrap_or(u16::MAX);
            let want = self.chunk.min(self.size - offset);
            let unauthorised = Command::new(TPM_CC_NV_READ)
                .handle(self.index)
                .handle(self.index)
                .u16(want)
                .u16(offset);
            let command = unauthorised.clone().authorised(auth(&unauthorised));
            let response = tpm.call(NAME, &command)?;
            let mut r = Reader::after_header(NAME, &response);
            let _parameter_size = r.u32("parameterSize")?;
            let data = r.sized("data")?;
            if data.is_empty() {
                return Err(r.malformed("it returned no data"));
            }
            out.extend_from_slice(data);
        }
        Ok(out)
    }

    fn undefine<T: Read + Write>(&self, tpm: &mut Tpm<T>) -> Result<(), TpmError> {
        let command = Command::new(TPM_CC_NV_UNDEFINE_SPACE)
            .handle(TPM_RH_OWNER)
            .handle(self.index)
            .authorised(password(&[]));
        tpm.call("TPM2_NV_UndefineSpace", &command).map(|_| ())
    }
}

/// `KDFa` with HMAC-SHA-512 (Part 1 §11.4.10.2): `K(i) = HMAC(key, [i]32 || label || 0x00 ||
/// contextU || contextV || [bits]32)`, concatenated and cut to `bits`.
pub(crate) fn kdfa_sha512(key: &[u8], label: &str, context_u: &[u8], context_v: &[u8], bits: u32) -> Vec<u8> {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA512, key);
    let bytes = (bits as usize).div_ceil(8);
    let mut out = Vec::with_capacity(bytes + 64);
    let mut counter = 1u32;
    while out.len() < bytes {
        let mut ctx = ring::hmac::Context::with_key(&key);
        ctx.update(&counter.to_be_bytes());
        ctx.update(label.as_bytes());
        ctx.update(&[0]);
        ctx.update(context_u);
        ctx.update(context_v);
        ctx.update(&bits.to_be_bytes());
        out.extend_from_slice(ctx.sign().as_ref());
        counter += 1;
    }
    out.truncate(bytes);
    out
}

/// `cpHash` (Part 1 §18.7): `SHA-512(commandCode || Name(handle 1) || ... || parameters)`.
pub(crate) fn cp_hash(code: u32, names: &[&[u8]], parameters: &[u8]) -> [u8; 64] {
    let mut h = Sha512::new();
    h.update(code.to_be_bytes());
    for name in names {
        h.update(name);
    }
    h.update(parameters);
    h.finalize().into()
}

/// An unbound, salted HMAC session with SHA-512 (step 6).
pub struct SaltedSession {
    handle: u32,
    key: Vec<u8>,
    nonce_tpm: Vec<u8>,
}

impl SaltedSession {
    fn start<T: Read + Write>(tpm: &mut Tpm<T>, salt_key: &SaltKey) -> Result<Self, TpmError> {
        const NAME: &str = "TPM2_StartAuthSession";
        let salt: [u8; 32] = random();
        let encrypted_salt = encrypt_salt(salt_key, &salt)?;
        let nonce_caller: [u8; 64] = random();
        let command = Command::new(TPM_CC_START_AUTH_SESSION)
            .handle(salt_key.handle)
            .handle(TPM_RH_NULL)
            .sized(&nonce_caller)
            .sized(&encrypted_salt)
            .u8(TPM_SE_HMAC)
            .u16(TPM_ALG_NULL)
            .u16(TPM_ALG_SHA512);
        let response = tpm.call(NAME, &command)?;
        let mut r = Reader::after_header(NAME, &response);
        let handle = r.u32("sessionHandle")?;
        let nonce_tpm = r.sized("nonceTPM")?.to_vec();
        let key = kdfa_sha512(&salt, "ATH", &nonce_tpm, &nonce_caller, 512);
        Ok(Self { handle, key, nonce_tpm })
    }

    /// The session's `TPMS_AUTH_COMMAND` for `command`, whose handles have `names` and whose
    /// entity has `auth_value` (Part 1 §19.6.5).
    fn authorise(&self, command: &Command, names: &[&[u8]], auth_value: &[u8]) -> Vec<u8> {
        let nonce_caller: [u8; 64] = random();
        self.authorise_with(command, names, auth_value, &nonce_caller)
    }

    fn authorise_with(&self, command: &Command, names: &[&[u8]], auth_value: &[u8], nonce_caller: &[u8]) -> Vec<u8> {
        let cp = cp_hash(command.code, names, &command.parameters);
        let hmac = command_hmac(
            &self.key,
            auth_value,
            &cp,
            nonce_caller,
            &self.nonce_tpm,
            CONTINUE_SESSION,
        );
        let mut out = self.handle.to_be_bytes().to_vec();
        out.extend_from_slice(&sized(nonce_caller));
        out.push(CONTINUE_SESSION);
        out.extend_from_slice(&sized(&hmac));
        out
    }

    /// Takes the TPM's next nonce from a response's authorisation area.
    fn update(&mut self, command: &'static str, response: &[u8]) -> Result<(), TpmError> {
        let mut r = Reader::after_header(command, response);
        let parameter_size = r.u32("parameterSize")?;
        r.take(parameter_size as usize, "the parameters")?;
        self.nonce_tpm = r.sized("nonceTPM")?.to_vec();
        Ok(())
    }
}

/// `HMAC-SHA-512(sessionKey || authValue, cpHash || nonceNewer || nonceOlder ||
/// sessionAttributes)` (Part 1 §19.6.5; no decrypt or encrypt session nonces).
pub(crate) fn command_hmac(
    session_key: &[u8],
    auth_value: &[u8],
    cp_hash: &[u8],
    nonce_caller: &[u8],
    nonce_tpm: &[u8],
    attributes: u8,
) -> Vec<u8> {
    let mut key = session_key.to_vec();
    key.extend_from_slice(auth_value);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA512, &key);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(cp_hash);
    ctx.update(nonce_caller);
    ctx.update(nonce_tpm);
    ctx.update(&[attributes]);
    ctx.sign().as_ref().to_vec()
}

/// RSA-OAEP of the salt to the EK (Part 1 §B.10.2): SHA-256 (the EK's name algorithm) for
/// the hash and MGF1, label `"SECRET\0"`.
fn encrypt_salt(key: &SaltKey, salt: &[u8]) -> Result<Vec<u8>, TpmError> {
    use openssl::bn::BigNum;
    use openssl::pkey::PKey;
    use openssl::pkey_ctx::PkeyCtx;
    use openssl::rsa::{Padding, Rsa};
    let crypto = |what: &'static str| move |e: openssl::error::ErrorStack| TpmError::Crypto(format!("{what}: {e}"));
    let n = BigNum::from_slice(&key.modulus).map_err(crypto("reading the EK's modulus"))?;
    let e = BigNum::from_u32(key.exponent).map_err(crypto("reading the EK's exponent"))?;
    let rsa = Rsa::from_public_components(n, e).map_err(crypto("loading the EK"))?;
    let pkey = PKey::from_rsa(rsa).map_err(crypto("loading the EK"))?;
    let mut ctx = PkeyCtx::new(&pkey).map_err(crypto("encrypting the salt"))?;
    ctx.encrypt_init().map_err(crypto("encrypting the salt"))?;
    ctx.set_rsa_padding(Padding::PKCS1_OAEP)
        .map_err(crypto("encrypting the salt"))?;
    ctx.set_rsa_oaep_md(openssl::md::Md::sha256())
        .map_err(crypto("encrypting the salt"))?;
    ctx.set_rsa_mgf1_md(openssl::md::Md::sha256())
        .map_err(crypto("encrypting the salt"))?;
    ctx.set_rsa_oaep_label(b"SECRET\0")
        .map_err(crypto("encrypting the salt"))?;
    let mut out = Vec::new();
    ctx.encrypt_to_vec(salt, &mut out)
        .map_err(crypto("encrypting the salt"))?;
    Ok(out)
}

/// The vendor command (step 7) for the message buffer whose Name is `name`.
pub(crate) fn nsm_request_command(session: &SaltedSession, index: u32, name: &[u8], auth_value: &[u8]) -> Command {
    let unauthorised = Command::new(TPM2_VENDOR_AWS_NSM_REQUEST).handle(index).handle(index);
    let auth = session.authorise(&unauthorised, &[name, name], auth_value);
    unauthorised.authorised(auth)
}

/// What one exchange leaves to clean up.
struct Resources {
    ek: Option<u32>,
    session: Option<u32>,
    buffer: Option<MessageBuffer>,
}

impl Resources {
    fn release<T: Read + Write>(self, tpm: &mut Tpm<T>) {
        // Best effort, in reverse order of creation: an error here must not hide the one that
        // ended the exchange.
        if let Some(session) = self.session {
            let _ = flush(tpm, session);
        }
        if let Some(buffer) = &self.buffer {
            let _ = buffer.undefine(tpm);
        }
        if let Some(ek) = self.ek {
            let _ = flush(tpm, ek);
        }
    }
}

/// Runs one NSM request through the NitroTPM (steps 1 to 9) and returns the NSM's response
/// bytes (CBOR, followed by the unused rest of the buffer).
///
/// # Errors
/// [`TpmError`] naming the command that failed.
pub fn nsm_request<T: Read + Write>(tpm: &mut Tpm<T>, request: &[u8], buffer_size: u16) -> Result<Vec<u8>, TpmError> {
    exchange(tpm, request, buffer_size, |tpm, buffer, name, session| {
        let command = nsm_request_command(session, buffer.index, name, &buffer.auth);
        tpm.call("TPM2_VENDOR_AWS_NSM_REQUEST", &command)?;
        buffer.read_with(tpm, |_| password(&buffer.auth))
    })
}

/// Steps 1 to 6 of an exchange (the endorsement key, the message buffer holding `request`,
/// its name, the salted session), then `then` with them; whatever happens, everything made in
/// the TPM is released afterwards.
fn exchange<T: Read + Write, R>(
    tpm: &mut Tpm<T>,
    request: &[u8],
    buffer_size: u16,
    then: impl FnOnce(&mut Tpm<T>, &MessageBuffer, &[u8], &mut SaltedSession) -> Result<R, TpmError>,
) -> Result<R, TpmError> {
    let mut held = Resources {
        ek: None,
        session: None,
        buffer: None,
    };
    let result = (|| {
        let ek = create_ek(tpm)?;
        held.ek = Some(ek.handle);
        let buffer = MessageBuffer::define(tpm, buffer_size)?;
        held.buffer = Some(buffer);
        buffer.write(tpm, request)?;
        let name = buffer.name(tpm)?;
        let mut session = SaltedSession::start(tpm, &ek)?;
        held.session = Some(session.handle);
        then(tpm, &buffer, &name, &mut session)
    })();
    held.release(tpm);
    result
}

/// Asks the NitroTPM for an attestation document binding `nonce`, `public_key` and
/// `user_data`.
///
/// # Errors
/// [`TpmError`]: the device, a TPM command, or the NSM refused.
pub fn attestation_document(
    device: &Path,
    nonce: Option<Vec<u8>>,
    public_key: Option<Vec<u8>>,
    user_data: Option<Vec<u8>>,
) -> Result<Vec<u8>, TpmError> {
    // One exchange at a time: two would pick the same free NV index, and /dev/tpm0 takes one
    // opener only.
    static EXCLUSIVE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _turn = EXCLUSIVE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let request = crate::nsm::nsm_api::request(nonce, public_key, user_data);
    let mut tpm = Tpm::open(device)?;
    let response = nsm_request(&mut tpm, &request, MESSAGE_BUFFER_SIZE)?;
    crate::nsm::nsm_api::document(&response).map_err(|e| TpmError::Nsm(e.to_string()))
}

/// The device `--nsm tpm` uses on EC2 unless told otherwise.
#[must_use]
pub fn default_device() -> PathBuf {
    PathBuf::from("/dev/tpmrm0")
}

/// What the swtpm test runs: steps 1 to 6, then an NV read authorised by the salted session
/// (so the TPM checks the session's HMAC), then the vendor command, then clean-up; returns
/// what the session-authorised read saw and the vendor command's outcome.
///
/// # Errors
/// The first failing step before the vendor command.
#[doc(hidden)]
pub fn exercise_without_nitro<T: Read + Write>(
    tpm: &mut Tpm<T>,
    request: &[u8],
    buffer_size: u16,
    wrong_auth_value: bool,
) -> Result<(Vec<u8>, Result<(), TpmError>), TpmError> {
    exchange(tpm, request, buffer_size, |tpm, buffer, name, session| {
        // NV_Read authorised by the salted session: a wrong salt, key, cpHash or HMAC would be
        // TPM_RC_AUTH_FAIL here.
        let mut read = Vec::new();
        while read.len() < request.len() {
            let offset = u16::try_from(read.len()).unwrap_or(u16::MAX);
            let want = buffer
                .chunk
                .min(u16::try_from(request.len()).unwrap_or(u16::MAX) - offset);
            let unauthorised = Command::new(TPM_CC_NV_READ)
                .handle(buffer.index)
                .handle(buffer.index)
                .u16(want)
                .u16(offset);
            let mut auth_value = buffer.auth;
            if wrong_auth_value {
                auth_value[0] ^= 1;
            }
            let auth = session.authorise(&unauthorised, &[name, name], &auth_value);
            let response = tpm.call("TPM2_NV_Read", &unauthorised.authorised(auth))?;
            let mut r = Reader::after_header("TPM2_NV_Read", &response);
            let _size = r.u32("parameterSize")?;
            read.extend_from_slice(r.sized("data")?);
            session.update("TPM2_NV_Read", &response)?;
        }
        let command = nsm_request_command(session, buffer.index, name, &buffer.auth);
        let vendor = tpm.call("TPM2_VENDOR_AWS_NSM_REQUEST", &command).map(|_| ());
        Ok((read, vendor))
    })
}

/// The NV indices defined in the TPM (to show that nothing was left behind).
///
/// # Errors
/// When the TPM refuses `TPM2_GetCapability`.
#[doc(hidden)]
pub fn defined_nv_indices<T: Read + Write>(tpm: &mut Tpm<T>) -> Result<Vec<u32>, TpmError> {
    let (_, data) = capability(tpm, TPM_CAP_HANDLES, NV_INDEX_FIRST, 254)?;
    let mut r = Reader {
        command: "TPM2_GetCapability",
        data: &data,
    };
    let count = r.u32("count")?;
    (0..count).map(|_| r.u32("handle")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ek_template_is_template_l1() {
        let t = ek_template();
        assert_eq!(&t[0..2], &[0x00, 0x01], "TPM_ALG_RSA");
        assert_eq!(&t[2..4], &[0x00, 0x0B], "nameAlg SHA-256");
        assert_eq!(&t[4..8], &[0x00, 0x03, 0x00, 0xB2], "TPMA_OBJECT of template L-1");
        assert_eq!(&t[8..10], &[0x00, 0x20]);
        assert_eq!(
            hex::encode(&t[10..42]),
            "837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa"
        );
        // AES (0x0006) 128-bit CFB (0x0043), scheme NULL (0x0010), 2048 bits.
        assert_eq!(
            &t[42..52],
            &[0x00, 0x06, 0x00, 0x80, 0x00, 0x43, 0x00, 0x10, 0x08, 0x00]
        );
        assert_eq!(&t[52..56], &[0, 0, 0, 0], "the default exponent");
        assert_eq!(&t[56..58], &[0x01, 0x00], "256 bytes of unique");
        assert_eq!(t.len(), 58 + 256);
        // What a TPM returns for it parses back (here with a modulus in place of the zeros).
        let mut public = t.clone();
        public[58..].fill(0xab);
        let (modulus, exponent) = parse_rsa_public(&public).unwrap();
        assert_eq!((modulus.len(), exponent), (256, 65_537));
        assert!(parse_rsa_public(&public[..100]).unwrap_err().contains("ends before"));
    }

    #[test]
    fn commands_carry_header_handles_authorisation_and_parameters() {
        let c = Command::new(TPM_CC_NV_READ)
            .handle(0x0100_0000)
            .handle(0x0100_0000)
            .authorised(password(b"pw"))
            .u16(16)
            .u16(0)
            .bytes();
        let expected = [
            "8002",     // TPM_ST_SESSIONS
            "00000025", // 37 bytes
            "0000014e", // TPM_CC_NV_Read
            "01000000", "01000000", // authHandle, nvIndex
            "0000000b", // authorizationSize
            "40000009", "0000", "00", "0002", "7077", // TPM_RS_PW, no nonce, no attributes, "pw"
            "0010", "0000", // size, offset
        ]
        .concat();
        assert_eq!(hex::encode(&c), expected);
        let plain = Command::new(TPM_CC_FLUSH_CONTEXT).u32(0x8000_0000).bytes();
        assert_eq!(hex::encode(plain), "80010000000e0000016580000000");
    }

    #[test]
    fn the_vendor_command_is_two_nv_handles_and_one_hmac_session() {
        let session = SaltedSession {
            handle: 0x0200_0000,
            key: vec![0x11; 64],
            nonce_tpm: vec![0x22; 64],
        };
        let name = [vec![0x00, 0x0D], vec![0x33; 64]].concat();
        let auth_value = [0x44u8; 64];
        let unauthorised = Command::new(TPM2_VENDOR_AWS_NSM_REQUEST)
            .handle(0x0100_0000)
            .handle(0x0100_0000);
        let nonce_caller = [0x55u8; 64];
        let auth = session.authorise_with(&unauthorised, &[&name, &name], &auth_value, &nonce_caller);
        let bytes = unauthorised.authorised(auth).bytes();
        assert_eq!(&bytes[0..2], &[0x80, 0x02]);
        assert_eq!(
            u32::from_be_bytes(bytes[2..6].try_into().unwrap()) as usize,
            bytes.len()
        );
        assert_eq!(&bytes[6..10], &[0x20, 0x00, 0x00, 0x01], "TPM2_VENDOR_AWS_NSM_REQUEST");
        assert_eq!(&bytes[10..18], &[1, 0, 0, 0, 1, 0, 0, 0]);
        // authorizationSize: handle 4 + nonce 2+64 + attributes 1 + hmac 2+64.
        assert_eq!(&bytes[18..22], &137u32.to_be_bytes());
        assert_eq!(&bytes[22..26], &[0x02, 0, 0, 0]);
        assert_eq!(&bytes[26..28], &[0, 64]);
        assert_eq!(&bytes[28..92], &nonce_caller);
        assert_eq!(bytes[92], CONTINUE_SESSION);
        assert_eq!(&bytes[93..95], &[0, 64]);
        assert_eq!(bytes.len(), 95 + 64, "no parameters follow");
        // The HMAC is over cpHash = SHA-512(code || name || name), the nonces and attributes.
        let mut cp = Sha512::new();
        cp.update([0x20, 0, 0, 1]);
        cp.update(&name);
        cp.update(&name);
        let cp: [u8; 64] = cp.finalize().into();
        assert_eq!(cp, cp_hash(TPM2_VENDOR_AWS_NSM_REQUEST, &[&name, &name], &[]));
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA512, &[[0x11; 64], auth_value].concat());
        let message = [&cp[..], &nonce_caller, &[0x22; 64], &[CONTINUE_SESSION]].concat();
        assert_eq!(&bytes[95..], ring::hmac::sign(&key, &message).as_ref());
    }

    #[test]
    fn kdfa_counts_from_one_and_ends_with_the_bit_length() {
        let one = kdfa_sha512(b"salt", "ATH", b"u", b"v", 512);
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA512, b"salt");
        let message = [&1u32.to_be_bytes()[..], b"ATH\0", b"u", b"v", &512u32.to_be_bytes()].concat();
        assert_eq!(one, ring::hmac::sign(&key, &message).as_ref());
        let longer = kdfa_sha512(b"salt", "ATH", b"u", b"v", 1024);
        assert_eq!(longer.len(), 128);
        assert_ne!(&longer[..64], &one[..], "the bit length is part of every block");
    }

    #[test]
    fn error_codes_name_the_command_and_what_to_do() {
        struct Canned(Vec<u8>);
        impl Read for Canned {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = self.0.len().min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0.drain(..n);
                Ok(n)
            }
        }
        impl Write for Canned {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let refusal = [0x80, 0x01, 0, 0, 0, 10, 0, 0, 0x01, 0x43].to_vec();
        let mut tpm = Tpm::new(Canned(refusal.clone()), "test".into());
        let err = tpm
            .call(
                "TPM2_VENDOR_AWS_NSM_REQUEST",
                &Command::new(TPM2_VENDOR_AWS_NSM_REQUEST),
            )
            .unwrap_err();
        assert!(err.to_string().contains("not EC2's NitroTPM"), "{err}");
        // A response split over several reads is put back together; a truncated one fails.
        let mut tpm = Tpm::new(Canned(vec![0x80, 0x01, 0, 0, 0, 12, 0, 0, 0, 0]), "test".into());
        assert!(tpm
            .transact(&[0; 10])
            .unwrap_err()
            .to_string()
            .contains("reading a response"));
    }
}
