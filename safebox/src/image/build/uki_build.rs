//! The builder's UKI path: both variants' Unified Kernel Images, their NitroTPM PCRs and
//! their bootable disks, all from the inputs.
//!
//! Pass one (shared with EIF builds) checks every input and writes the stub, the kernel and the
//! normalised layers into the build folder, summing each for the PE `CheckSum`. The UKIs are
//! then fully laid out ([`crate::image::uki`]) without reading anything. Pass two streams each
//! variant's UKI once, on its own thread, into a SHA-256 (`image_sha256`) and the Authenticode
//! SHA-384 that PCR4 extends. The seal proof and manifest follow from those. Pass three streams
//! each variant's disk (the UKI again, the manifest, the seal proof) into a SHA-256
//! (`disk_sha256`) without writing it: the disk holds the manifest, so its digest can only be
//! known after the manifest is.
//!
//! The `.osrel` section (identical in both variants):
//!
//! ```text
//! ID=safebox
//! NAME="Safebox"
//! PRETTY_NAME="Safebox image <name>"
//! IMAGE_VERSION=<SHA-256 of the inputs without dev_access>
//! ```
//!
//! with `"`, `\`, `$` and `` ` `` in the name escaped by a backslash (os-release(5) quoting).
//!
//! Each disk's seed ([`crate::image::disk`]) is SHA-256(`"safebox-esp-disk"` || 0 || the UKI's
//! SHA-256 hex || 0 || the manifest's SHA-256 hex), so the disk is a function of its content.

use std::fs::{self, File};
use std::io::{self, BufReader, Read, Write};
use std::path::Path;

use openssl::sha::Sha256;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::{
    finish_record, manifest, BuildError, BuildOptions, BuildRecord, Builder, ImageBuild, Measurements, Part,
    RemovedLayer, CHUNK,
};
use crate::field::FieldPath;
use crate::image::disk::{self, EspFile, PayloadDisk};
use crate::image::nitrotpm::NitroTpmPcrs;
use crate::image::pe::{self, AuthenticodeStream};
use crate::image::spec::{ImageFormat, ImageSpec};
use crate::image::uki::{BootStub, UkiLayout};
use crate::image::Variant;

/// Where the UKI sits on the disk.
pub const UKI_PATH: &str = "EFI/BOOT/BOOTX64.EFI";
/// The manifest's file name on the disk.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The seal proof's file name on the disk.
pub const SEAL_PROOF_FILE: &str = "seal-proof.json";
/// The ESP's volume label.
const LABEL: &str = "SAFEBOX";
const STUB_FILE: &str = "stub.efi";

/// Whether the UKI streamed onto a disk is hashed again.
#[derive(Clone, Copy, PartialEq, Eq)]
enum UkiCheck {
    /// Its SHA-256 must equal the planned `image_sha256`: what is written is what was planned.
    AgainstPlan,
    /// The build measured these very files a moment ago (a disk digest during the build, which
    /// publishing checks again, UKI and disk).
    Measured,
}

/// What only a UKI build records.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct UkiRecord {
    stub: Part,
    osrel: String,
    dev_disk_size: u64,
    prod_disk_size: u64,
}

fn os_release(spec: &ImageSpec) -> String {
    let mut name = String::new();
    for c in spec.name.chars() {
        if matches!(c, '"' | '\\' | '$' | '`') {
            name.push('\\');
        }
        name.push(c);
    }
    format!(
        "ID=safebox\nNAME=\"Safebox\"\nPRETTY_NAME=\"Safebox image {name}\"\nIMAGE_VERSION={}\n",
        manifest::prod_inputs_digest(spec)
    )
}

fn cache(work: &Path) -> impl Fn(io::Error) -> BuildError + '_ {
    move |source| BuildError::Cache {
        path: work.to_path_buf(),
        source,
    }
}

/// The initrd parts of `variant`: the layers, then the SSH layer for the development image.
fn initrd(record: &BuildRecord, variant: Variant) -> Vec<&Part> {
    let mut parts: Vec<&Part> = record.layers.iter().collect();
    if variant == Variant::Dev {
        parts.extend(&record.ssh);
    }
    parts
}

fn layout(dir: &Path, record: &BuildRecord, uki: &UkiRecord, variant: Variant) -> io::Result<UkiLayout> {
    let stub = BootStub::parse(fs::read(dir.join(&uki.stub.file))?).map_err(io::Error::other)?;
    let sums: Vec<_> = initrd(record, variant).iter().map(|p| p.sum).collect();
    UkiLayout::new(
        &stub,
        uki.osrel.as_bytes(),
        record.cmdline.as_bytes(),
        record.kernel.sum,
        &sums,
    )
    .map_err(io::Error::other)
}

/// The UKI of `variant` as a reader over the build folder's files.
fn uki_reader<'a>(dir: &'a Path, record: &'a BuildRecord, layout: &'a UkiLayout, variant: Variant) -> impl Read + 'a {
    let mut parts = vec![&record.kernel];
    parts.extend(initrd(record, variant));
    layout.reader(Box::new(move |index| {
        let part = parts
            .get(index)
            .ok_or_else(|| io::Error::other(format!("the UKI layout names part {index}, which the build lacks")))?;
        let file = File::open(dir.join(&part.file))?;
        Ok((
            part.size,
            Box::new(BufReader::with_capacity(CHUNK, file)) as Box<dyn Read>,
        ))
    }))
}

/// SHA-256 and Authenticode SHA-384 of a UKI, in one read.
fn measure(mut uki: impl Read, holes: Vec<std::ops::Range<u64>>) -> io::Result<(String, [u8; 48])> {
    let mut sha256 = Sha256::new();
    let mut authenticode = AuthenticodeStream::new(holes);
    let mut buffer = vec![0u8; CHUNK];
    loop {
        let n = uki.read(&mut buffer)?;
        if n == 0 {
            break;
        }
        sha256.update(&buffer[..n]);
        authenticode.update(&buffer[..n]);
    }
    Ok((hex::encode(sha256.finish()), authenticode.finish()))
}

fn disk_seed(image_sha256: &str, manifest_sha256: &str) -> [u8; 32] {
    sha2::Sha256::new()
        .chain_update(b"safebox-esp-disk\0")
        .chain_update(image_sha256.as_bytes())
        .chain_update(b"\0")
        .chain_update(manifest_sha256.as_bytes())
        .finalize()
        .into()
}

/// The ESP's files for `variant`, the UKI read from `uki`.
fn esp_files<'a>(
    build: &'a ImageBuild,
    uki_len: u64,
    uki: &'a mut dyn Read,
    rest: &'a mut [&'a [u8]; 2],
) -> [EspFile<'a>; 3] {
    let [manifest, proof] = rest;
    [
        EspFile {
            path: UKI_PATH,
            len: uki_len,
            reader: uki,
        },
        EspFile {
            path: MANIFEST_FILE,
            len: build.record.manifest.len() as u64,
            reader: manifest,
        },
        EspFile {
            path: SEAL_PROOF_FILE,
            len: build.record.seal_proof.len() as u64,
            reader: proof,
        },
    ]
}

pub(super) fn build_into(
    spec: &ImageSpec,
    digest: &str,
    work: &Path,
    options: &BuildOptions<'_>,
) -> Result<BuildRecord, BuildError> {
    let builder = Builder {
        work,
        options,
        pcrs: None,
        read: std::sync::atomic::AtomicU64::new(0),
        epoch: u32::try_from(spec.source_date_epoch).unwrap_or(0),
    };
    let stub_field = FieldPath::attr("boot_stub");
    let Some(stub_input) = &spec.boot_stub else {
        return Err(BuildError::Spec(spec.check().err().unwrap_or_default()));
    };
    let stub = builder.section(STUB_FILE, |out| {
        let (path, mut input) = builder.open(stub_input, &stub_field)?;
        io::copy(&mut input, out).map_err(|source| BuildError::Input {
            field: stub_field.clone().name("source"),
            path: path.clone(),
            source,
        })?;
        Builder::check(stub_input, &stub_field, &path, input)
    })?;
    let stub_path = options.base_dir.join(&stub_input.source);
    let parsed =
        BootStub::parse(fs::read(work.join(STUB_FILE)).map_err(cache(work))?).map_err(|e| BuildError::Unusable {
            field: stub_field.clone().name("source"),
            path: stub_path.clone(),
            message: e.to_string(),
        })?;
    let kernel = builder.kernel(spec)?;
    let kernel_field = FieldPath::attr("kernel").name("source");
    let kernel_authenticode = File::open(work.join(&kernel.file))
        .map_err(pe::PeError::Io)
        .and_then(|mut f| pe::authenticode_sha384(&mut f))
        .map_err(|e| BuildError::Unusable {
            field: kernel_field.clone(),
            path: options.base_dir.join(&spec.kernel.source),
            message: format!(
                "is not an EFI-stub kernel, which a UKI's .linux section must be ({e}); give a kernel built with CONFIG_EFI_STUB, such as Debian's vmlinuz"
            ),
        })?;
    let layers = (0..spec.layers.len())
        .map(|index| builder.layer(spec, index))
        .collect::<Result<Vec<_>, _>>()?;
    let ssh = spec.dev_access.as_ref().map(|dev| builder.ssh(dev)).transpose()?;

    let mut record = BuildRecord {
        inputs_digest: digest.to_owned(),
        manifest: String::new(),
        seal_proof: String::new(),
        dev: Measurements::default(),
        prod: Measurements::default(),
        cmdline: spec.cmdline.clone(),
        metadata: String::new(),
        kernel,
        layers,
        ssh,
        uki: None,
    };
    let mut uki = UkiRecord {
        stub,
        osrel: os_release(spec),
        dev_disk_size: 0,
        prod_disk_size: 0,
    };
    let variants: &[Variant] = if record.ssh.is_some() {
        &[Variant::Dev, Variant::Prod]
    } else {
        &[Variant::Prod]
    };
    let mut layouts = Vec::new();
    for &variant in variants {
        layouts.push(layout(work, &record, &uki, variant).map_err(|e| BuildError::Unusable {
            field: FieldPath::attr("layer"),
            path: work.to_path_buf(),
            message: format!("cannot be assembled into a UKI: {e}; make the layers smaller"),
        })?);
    }

    // Pass two: each variant's UKI on its own thread.
    let measured: Vec<io::Result<(String, [u8; 48])>> = std::thread::scope(|scope| {
        let threads: Vec<_> = variants
            .iter()
            .zip(&layouts)
            .map(|(&variant, layout)| {
                let record = &record;
                scope.spawn(move || measure(uki_reader(work, record, layout, variant), layout.authenticode_holes()))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(io::Error::other("a measuring thread stopped")))
            })
            .collect()
    });
    let mut all = Vec::new();
    for (result, &variant) in measured.into_iter().zip(variants) {
        let (image_sha256, authenticode) = result.map_err(cache(work))?;
        let pcrs = NitroTpmPcrs::predict(authenticode, kernel_authenticode, parsed.version().major);
        all.push((
            variant,
            Measurements {
                image_sha256,
                pcr4: Some(hex::encode(pcrs.pcr4)),
                pcr7: Some(hex::encode(pcrs.pcr7)),
                pcr12: Some(hex::encode(pcrs.pcr12)),
                ..Measurements::default()
            },
        ));
    }
    for (variant, measurements) in &all {
        match variant {
            Variant::Dev => record.dev = measurements.clone(),
            Variant::Prod => record.prod = measurements.clone(),
        }
    }
    if record.ssh.is_none() {
        record.dev = record.prod.clone();
    }
    let removed = match &record.ssh {
        Some(ssh) => {
            let sha256 = File::open(work.join(&ssh.file))
                .and_then(crate::image::sha256_hex)
                .map_err(cache(work))?;
            Some(RemovedLayer {
                name: "ssh".to_owned(),
                section_index: layouts[0].initrd_section_index(),
                size: ssh.size,
                sha256,
            })
        }
        None => None,
    };
    finish_record(spec, &mut record, removed);
    record.uki = Some(uki.clone());

    // Pass three: each variant's disk digest, on its own thread.
    let build = ImageBuild {
        dir: work.to_path_buf(),
        record: record.clone(),
    };
    let disks: Vec<io::Result<(u64, String)>> = std::thread::scope(|scope| {
        let threads: Vec<_> = variants
            .iter()
            .map(|&variant| {
                let build = &build;
                scope.spawn(move || build.disk_digest(variant))
            })
            .collect();
        threads
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err(io::Error::other("a disk thread stopped")))
            })
            .collect()
    });
    for (result, &variant) in disks.into_iter().zip(variants) {
        let (size, sha256) = result.map_err(cache(work))?;
        if variant == Variant::Dev || record.ssh.is_none() {
            record.dev.disk_sha256 = Some(sha256.clone());
            uki.dev_disk_size = size;
        }
        if variant == Variant::Prod {
            record.prod.disk_sha256 = Some(sha256);
            uki.prod_disk_size = size;
        }
    }
    record.uki = Some(uki);
    Ok(record)
}

impl UkiRecord {
    /// The boot stub's file in the build folder.
    pub(super) fn stub(&self) -> &Part {
        &self.stub
    }
}

impl ImageBuild {
    /// The image's format.
    #[must_use]
    pub fn format(&self) -> ImageFormat {
        if self.record.uki.is_some() {
            ImageFormat::Uki
        } else {
            ImageFormat::Eif
        }
    }

    fn uki_layout(&self, variant: Variant) -> io::Result<UkiLayout> {
        let uki = self.record.uki.as_ref().ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "this is an EIF build; it has no UKI or disk",
            )
        })?;
        layout(&self.dir, &self.record, uki, variant)
    }

    /// The size in bytes of the UKI of `variant` (`None` for an EIF build).
    #[must_use]
    pub fn uki_len(&self, variant: Variant) -> Option<u64> {
        self.uki_layout(variant).ok().map(|l| l.len())
    }

    /// Writes the UKI of `variant` (`\EFI\BOOT\BOOTX64.EFI`) to `out` and returns the SHA-256
    /// (hex) of the bytes as written, for comparison with the planned `image_sha256`.
    ///
    /// # Errors
    /// I/O errors; `InvalidInput` for an EIF build.
    pub fn write_uki(&self, variant: Variant, out: &mut dyn Write) -> io::Result<String> {
        let layout = self.uki_layout(variant)?;
        let mut reader = uki_reader(&self.dir, &self.record, &layout, variant);
        let mut sha256 = Sha256::new();
        let mut buffer = vec![0u8; CHUNK];
        loop {
            let n = reader.read(&mut buffer)?;
            if n == 0 {
                break;
            }
            sha256.update(&buffer[..n]);
            out.write_all(&buffer[..n])?;
        }
        out.flush()?;
        Ok(hex::encode(sha256.finish()))
    }

    /// The size in bytes of the bootable disk of `variant` (`None` for an EIF build).
    #[must_use]
    pub fn disk_len(&self, variant: Variant) -> Option<u64> {
        let uki = self.record.uki.as_ref()?;
        Some(match variant {
            Variant::Dev => uki.dev_disk_size,
            Variant::Prod => uki.prod_disk_size,
        })
    }

    /// Runs `emit` over the ESP files of `variant`, with the UKI streamed from the build and,
    /// when `check` asks, its SHA-256 compared with the planned `image_sha256` afterwards.
    fn with_esp_files<T>(
        &self,
        variant: Variant,
        check: UkiCheck,
        emit: impl FnOnce(&mut [EspFile<'_>]) -> Result<T, disk::DiskError>,
    ) -> io::Result<T> {
        struct Hashing<R> {
            inner: R,
            sha256: Option<Sha256>,
        }
        impl<R: Read> Read for Hashing<R> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.inner.read(buf)?;
                if let Some(sha256) = &mut self.sha256 {
                    sha256.update(&buf[..n]);
                }
                Ok(n)
            }
        }
        let layout = self.uki_layout(variant)?;
        let mut uki = Hashing {
            inner: uki_reader(&self.dir, &self.record, &layout, variant),
            sha256: (check == UkiCheck::AgainstPlan).then(Sha256::new),
        };
        let mut rest = [self.record.manifest.as_bytes(), self.record.seal_proof.as_bytes()];
        let result = emit(&mut esp_files(self, layout.len(), &mut uki, &mut rest))?;
        let Some(sha256) = uki.sha256 else {
            return Ok(result);
        };
        let actual = hex::encode(sha256.finish());
        let planned = &self.measurements(variant).image_sha256;
        if &actual != planned {
            return Err(io::Error::other(format!(
                "the {variant} UKI hashes to {actual}, not the planned {planned}: the build folder changed; build again"
            )));
        }
        Ok(result)
    }

    fn seed(&self, variant: Variant) -> [u8; 32] {
        disk_seed(&self.measurements(variant).image_sha256, &self.manifest_sha256())
    }

    /// (size, SHA-256 hex) of the bootable disk of `variant`, computed without writing it.
    fn disk_digest(&self, variant: Variant) -> io::Result<(u64, String)> {
        let seed = self.seed(variant);
        let sha256 = self.with_esp_files(variant, UkiCheck::Measured, |files| {
            disk::esp_disk_sha256(&seed, LABEL, files)
        })?;
        let len = self.uki_layout(variant)?.len();
        let size = disk::esp_disk_size(&[
            (UKI_PATH, len),
            (MANIFEST_FILE, self.record.manifest.len() as u64),
            (SEAL_PROOF_FILE, self.record.seal_proof.len() as u64),
        ])
        .map_err(io::Error::from)?;
        Ok((size, hex::encode(sha256)))
    }

    /// Writes the bootable disk of `variant` (GPT, one EFI System Partition holding
    /// `\EFI\BOOT\BOOTX64.EFI`, `manifest.json`, `seal-proof.json`) into `out`, a fresh, empty
    /// file, leaving zeros as holes. Its SHA-256 is the planned `disk_sha256`; the UKI written
    /// into it is checked against `image_sha256` on the way.
    ///
    /// # Errors
    /// I/O errors; `InvalidInput` for an EIF build or a non-empty `out`.
    pub fn write_disk(&self, variant: Variant, out: &mut File) -> io::Result<PayloadDisk> {
        let seed = self.seed(variant);
        self.with_esp_files(variant, UkiCheck::AgainstPlan, |files| {
            disk::write_esp_disk(out, &seed, LABEL, files)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::fs;

    use sha2::{Digest as _, Sha256};

    use crate::image::build::{BuildOptions, ImageBuild};
    use crate::image::pe::tests::tiny_image;
    use crate::image::spec::{DevAccessSpec, ImageFormat, ImageSpec, InputRef, LayerSpec};
    use crate::image::uki::tests::fake_stub;
    use crate::image::Variant;

    #[test]
    fn a_damaged_uki_entry_is_rebuilt_stub_included() {
        let dir = tempfile::tempdir().unwrap();
        let input = |name: &str, bytes: &[u8]| {
            fs::write(dir.path().join(name), bytes).unwrap();
            InputRef {
                source: name.to_owned(),
                sha256: hex::encode(Sha256::digest(bytes)),
            }
        };
        let spec = ImageSpec {
            name: "cached".into(),
            source_date_epoch: 1_700_000_000,
            kernel: input("vmlinuz", &tiny_image(&[(".text", &[0x90; 1000])], b"", b"")),
            cmdline: "console=ttyS0".into(),
            layers: vec![LayerSpec {
                name: "app".into(),
                input: input("app", b"\x7fELF app"),
                destination: Some("/app".into()),
            }],
            dev_access: Some(DevAccessSpec {
                ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEWT test".into()],
                sshd: input("sshd", b"\x7fELF sshd"),
            }),
            format: ImageFormat::Uki,
            boot_stub: Some(input("stub.efi", &fake_stub())),
        };
        let options = BuildOptions {
            base_dir: dir.path(),
            cache_dir: &dir.path().join("cache"),
            progress: None,
        };
        let first = ImageBuild::load_or_build(&spec, &options).unwrap();
        let uki = |build: &ImageBuild| {
            let mut out = Vec::new();
            build.write_uki(Variant::Dev, &mut out).unwrap();
            out
        };
        let planned = uki(&first);
        let stub = first.dir.join(first.record.uki.as_ref().unwrap().stub().file.as_str());
        let whole = fs::read(&stub).unwrap();
        let mut damaged = whole.clone();
        damaged[whole.len() / 2] ^= 1;
        fs::write(&stub, &damaged).unwrap();
        let again = ImageBuild::load_or_build(&spec, &options).unwrap();
        assert_eq!(fs::read(&stub).unwrap(), whole, "the stub was rebuilt");
        assert_eq!(uki(&again), planned);
    }
}
