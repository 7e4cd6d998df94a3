//! What a user asks to build: an image specification, checked as a whole before anything is
//! read, every problem reported at its field.

use crate::field::FieldPath;

/// A hash-pinned input file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InputRef {
    /// Path, absolute or relative to the build's base folder.
    pub source: String,
    /// Expected SHA-256, 64 hex digits.
    pub sha256: String,
}

/// One `layer`: a tar archive unpacked into the layer, or a single file placed at
/// `destination`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSpec {
    /// Unique name.
    pub name: String,
    /// The input.
    pub input: InputRef,
    /// Where a single file goes (absolute path in the image); `None` for a tar archive.
    pub destination: Option<String>,
}

/// `dev_access`: what the development image adds so people can log in to inspect it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevAccessSpec {
    /// OpenSSH public keys allowed to log in.
    pub ssh_authorized_keys: Vec<String>,
    /// The sshd binary.
    pub sshd: InputRef,
}

/// What kind of image to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ImageFormat {
    /// A Nitro Enclave Image File, measured by PCR0..2 (the default).
    #[default]
    Eif,
    /// A Unified Kernel Image on a bootable GPT disk, measured by NitroTPM PCR4, PCR7, PCR12.
    Uki,
}

impl ImageFormat {
    /// `eif` or `uki`, as configuration says it.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Eif => "eif",
            Self::Uki => "uki",
        }
    }

    /// The format called `name`, if any.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "eif" => Some(Self::Eif),
            "uki" => Some(Self::Uki),
            _ => None,
        }
    }
}

/// An image specification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpec {
    /// The image's name.
    pub name: String,
    /// The time every timestamp in the image is clamped to (seconds since 1970).
    pub source_date_epoch: i64,
    /// The kernel.
    pub kernel: InputRef,
    /// The kernel command line.
    pub cmdline: String,
    /// The layers, in order; the first is the boot ramdisk (measured by PCR1).
    pub layers: Vec<LayerSpec>,
    /// SSH access, in the development image only.
    pub dev_access: Option<DevAccessSpec>,
    /// The image format.
    pub format: ImageFormat,
    /// The EFI stub a UKI is assembled from (systemd's `linuxx64.efi.stub`): required for
    /// [`ImageFormat::Uki`], refused for [`ImageFormat::Eif`].
    pub boot_stub: Option<InputRef>,
}

/// A problem with an image specification or its inputs, and where it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SpecError {
    /// Where.
    pub field: FieldPath,
    /// What is wrong and how to fix it.
    pub message: String,
}

impl SpecError {
    pub(crate) fn new(field: FieldPath, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// Key types sshd accepts in `authorized_keys`.
const SSH_KEY_TYPES: &[&str] = &[
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
];

/// Whether `text` is 64 hex digits.
#[must_use]
pub fn is_sha256_hex(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Why a layer's `destination` is not a plain absolute file path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DestinationError {
    /// A relative path.
    #[error("{0:?} is not absolute; write the full path inside the image, e.g. \"/app/server\"")]
    Relative(String),
    /// A folder.
    #[error("{0:?} names a folder; give the full path of the file, e.g. \"/app/server\"")]
    Folder(String),
    /// A path climbing out with `..`.
    #[error("{0:?} contains \"..\"; give a plain path inside the image")]
    Parent(String),
    /// The newc end-of-archive marker's name.
    #[error("{0:?} is the newc end-of-archive marker's name, which would end the layer early; choose another path")]
    Trailer(String),
}

/// Normalises an absolute destination (`/app/bin`) to an archive path (`app/bin`).
///
/// # Errors
/// [`DestinationError`]: why the destination is not a plain absolute file path.
pub fn archive_path_of_destination(destination: &str) -> Result<String, DestinationError> {
    let Some(rest) = destination.strip_prefix('/') else {
        return Err(DestinationError::Relative(destination.to_owned()));
    };
    if rest.is_empty() || rest.ends_with('/') {
        return Err(DestinationError::Folder(destination.to_owned()));
    }
    let mut parts = Vec::new();
    for part in rest.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(DestinationError::Parent(destination.to_owned())),
            p => parts.push(p),
        }
    }
    let path = parts.join("/");
    if path == super::cpio::TRAILER {
        return Err(DestinationError::Trailer(destination.to_owned()));
    }
    Ok(path)
}

impl ImageSpec {
    /// Every hash-pinned input, with its field.
    #[must_use]
    pub fn inputs(&self) -> Vec<(FieldPath, &InputRef)> {
        let mut inputs = vec![(FieldPath::attr("kernel"), &self.kernel)];
        if let Some(stub) = &self.boot_stub {
            inputs.push((FieldPath::attr("boot_stub"), stub));
        }
        for (index, layer) in self.layers.iter().enumerate() {
            inputs.push((FieldPath::attr("layer").index(index), &layer.input));
        }
        if let Some(dev) = &self.dev_access {
            inputs.push((FieldPath::attr("dev_access").name("sshd"), &dev.sshd));
        }
        inputs
    }

    /// Checks everything that can be checked without reading inputs.
    ///
    /// # Errors
    /// Every problem found, each at its field.
    pub fn check(&self) -> Result<(), Vec<SpecError>> {
        let mut errors = Vec::new();
        if self.name.trim().is_empty() {
            errors.push(SpecError::new(FieldPath::attr("name"), "the image name is empty"));
        }
        if !(0..=i64::from(u32::MAX)).contains(&self.source_date_epoch) {
            errors.push(SpecError::new(
                FieldPath::attr("source_date_epoch"),
                format!(
                    "{} is outside 0..={} (cpio stores 32-bit times)",
                    self.source_date_epoch,
                    u32::MAX
                ),
            ));
        }
        if self.cmdline.contains('\0') {
            errors.push(SpecError::new(
                FieldPath::attr("cmdline"),
                "the command line contains a NUL byte",
            ));
        }
        check_input(&self.kernel, &FieldPath::attr("kernel"), &mut errors);
        match (self.format, &self.boot_stub) {
            (ImageFormat::Uki, Some(stub)) => check_input(stub, &FieldPath::attr("boot_stub"), &mut errors),
            (ImageFormat::Uki, None) => errors.push(SpecError::new(
                FieldPath::attr("boot_stub"),
                "format \"uki\" needs a boot_stub block { source, sha256 }: an EFI stub such as systemd's linuxx64.efi.stub (Debian package systemd-boot-efi)",
            )),
            (ImageFormat::Eif, Some(_)) => errors.push(SpecError::new(
                FieldPath::attr("boot_stub"),
                "boot_stub is only used by format \"uki\"; remove the block or set format = \"uki\"",
            )),
            (ImageFormat::Eif, None) => {}
        }
        if self.layers.is_empty() {
            errors.push(SpecError::new(
                FieldPath::attr("layer"),
                "an image needs at least one layer block: the first layer is the boot ramdisk",
            ));
        }
        let mut names: Vec<&str> = Vec::new();
        let mut destinations: Vec<(String, usize)> = Vec::new();
        for (index, layer) in self.layers.iter().enumerate() {
            let at = FieldPath::attr("layer").index(index);
            if layer.name.trim().is_empty() {
                errors.push(SpecError::new(at.clone().name("name"), "the layer name is empty"));
            } else if let Some(first) = names.iter().position(|n| *n == layer.name) {
                errors.push(SpecError::new(
                    at.clone().name("name"),
                    format!(
                        "layer name {:?} is already used by layer[{first}]; layer names must be unique",
                        layer.name
                    ),
                ));
            }
            names.push(&layer.name);
            check_input(&layer.input, &at, &mut errors);
            if let Some(destination) = &layer.destination {
                match archive_path_of_destination(destination) {
                    Ok(path) => {
                        if let Some((_, first)) = destinations.iter().find(|(p, _)| *p == path) {
                            errors.push(SpecError::new(
                                at.clone().name("destination"),
                                format!("{destination:?} is already the destination of layer[{first}]; two layers cannot place the same file"),
                            ));
                        }
                        destinations.push((path, index));
                    }
                    Err(message) => errors.push(SpecError::new(at.clone().name("destination"), message.to_string())),
                }
            }
        }
        if let Some(dev) = &self.dev_access {
            let at = FieldPath::attr("dev_access");
            check_input(&dev.sshd, &at.clone().name("sshd"), &mut errors);
            if dev.ssh_authorized_keys.is_empty() {
                errors.push(SpecError::new(
                    at.clone().name("ssh_authorized_keys"),
                    "list at least one OpenSSH public key, or remove the dev_access block",
                ));
            }
            for (index, key) in dev.ssh_authorized_keys.iter().enumerate() {
                let key = key.trim();
                let kind = key.split_whitespace().next().unwrap_or_default();
                let has_body = key.split_whitespace().nth(1).is_some();
                if key.contains('\n') || !SSH_KEY_TYPES.contains(&kind) || !has_body {
                    errors.push(SpecError::new(
                        at.clone().name("ssh_authorized_keys").index(index),
                        "is not one OpenSSH public key line (e.g. \"ssh-ed25519 AAAA... user@host\"); give the contents of a .pub file",
                    ));
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }
}

fn check_input(input: &InputRef, at: &FieldPath, errors: &mut Vec<SpecError>) {
    if input.source.trim().is_empty() {
        errors.push(SpecError::new(at.clone().name("source"), "the source path is empty"));
    }
    if !is_sha256_hex(&input.sha256) {
        errors.push(SpecError::new(
            at.clone().name("sha256"),
            format!(
                "{:?} is not a SHA-256 digest: give 64 hex digits, e.g. the output of `sha256sum FILE`",
                input.sha256
            ),
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pinned_input_is_listed_with_its_field_boot_stub_included() {
        let pin = |source: &str| InputRef {
            source: source.to_owned(),
            sha256: "0".repeat(64),
        };
        let spec = ImageSpec {
            name: "app".into(),
            source_date_epoch: 0,
            kernel: pin("vmlinuz"),
            cmdline: String::new(),
            layers: vec![LayerSpec {
                name: "init".into(),
                input: pin("init.tar"),
                destination: None,
            }],
            dev_access: Some(DevAccessSpec {
                ssh_authorized_keys: Vec::new(),
                sshd: pin("sshd"),
            }),
            format: ImageFormat::Uki,
            boot_stub: Some(pin("linuxx64.efi.stub")),
        };
        let listed: Vec<(String, &str)> = spec
            .inputs()
            .into_iter()
            .map(|(field, input)| (field.to_string(), input.source.as_str()))
            .collect();
        assert_eq!(
            listed,
            [
                ("kernel".to_owned(), "vmlinuz"),
                ("boot_stub".to_owned(), "linuxx64.efi.stub"),
                ("layer[0]".to_owned(), "init.tar"),
                ("dev_access.sshd".to_owned(), "sshd"),
            ]
        );
    }

    #[test]
    fn destinations_are_plain_absolute_file_paths() {
        assert_eq!(archive_path_of_destination("/app/./server").unwrap(), "app/server");
        for (bad, needle) in [
            ("app/server", "not absolute"),
            ("/app/", "names a folder"),
            ("/", "names a folder"),
            ("/app/../etc/passwd", "\"..\""),
            ("/TRAILER!!!", "end-of-archive"),
        ] {
            let err = archive_path_of_destination(bad).unwrap_err().to_string();
            assert!(err.contains(needle), "{bad}: {err}");
        }
    }
}
