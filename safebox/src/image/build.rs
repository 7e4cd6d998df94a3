//! The deterministic builder: inputs in, both EIFs' sections and measurements out.
//!
//! Pass one reads every input exactly once. Each chunk goes to a SHA-256 worker that checks
//! the input against its pinned digest, while the layer it becomes is written to the build
//! folder and fed to two SHA-384 workers (PCR0, and PCR1 then PCR2) and a CRC-32. The
//! production image's PCR states are snapshots taken just before the SSH layer, so the shared
//! prefix is hashed once. Pass two streams both files' bytes once, to two SHA-256 workers, for
//! the image digests. Memory stays bounded by the workers' queues whatever the image size.
//!
//! Builds are cached under `cache_dir/<inputs digest>/`, written to a temporary folder and
//! renamed into place, so an interrupted or failed build leaves nothing behind. The cache is
//! private to this user (mode 0700, checked on every use: another user's folder, one others can
//! write to, or one in a folder others could swap it in, is refused). An entry is used only
//! when its development image, which holds every file of the entry, still hashes to the
//! recorded `image_sha256`; a damaged entry is rebuilt, not trusted and not left to fail every
//! later apply. A build just finished is not read back: each byte was hashed as it was written.
//! What apply publishes is then checked once more against what the plan showed, by the caller.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

use openssl::sha::{Sha256, Sha384};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::cpio::MODE_EXEC;
use super::eif::{self, SectionKind, SectionLayout};
use super::layer::{self, LayerError, LayerTree};
use super::manifest::{self, Measurements, Outputs};
use super::pe::Sum16;
use super::seal::{RemovedLayer, SealProof, SEAL_PROOF_SCHEMA};
use super::spec::{archive_path_of_destination, DevAccessSpec, ImageFormat, ImageSpec, InputRef, SpecError};
use super::Variant;
use crate::field::FieldPath;
use crate::work::Worker;

mod uki_build;

/// Where the builds of the `state_dir` at `state_dir` (its canonical path) are cached between
/// plan and apply.
///
/// Outside the `state_dir`, which holds only what exists: in the system's temporary folder,
/// under a folder of this user's own (`safebox-<uid>/build-<state_dir key>`, both mode 0700 and
/// checked so), one cache per `state_dir` so that workspaces never share a build another may
/// discard. An abandoned plan leaves its build there, not in the `state_dir`.
#[must_use]
pub fn cache_dir(state_dir: &Path) -> PathBuf {
    let key = hex::encode(&sha2::Sha256::digest(state_dir.as_os_str().as_encoded_bytes())[..8]);
    let uid = rustix::process::getuid().as_raw();
    std::env::temp_dir()
        .join(format!("safebox-{uid}"))
        .join(format!("build-{key}"))
}

pub use uki_build::{MANIFEST_FILE, SEAL_PROOF_FILE, UKI_PATH};

/// Read and write granularity: large enough that per-chunk costs vanish, small enough that
/// the workers' queues stay a few MiB.
const CHUNK: usize = 1 << 20;
const RECORD_FILE: &str = "build.json";
const SSHD_CONFIG: &str = "\
# Written by Safebox: key login only, for the development image.
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
PubkeyAuthentication yes
AuthorizedKeysFile /etc/ssh/authorized_keys
HostKey /run/sshd/ssh_host_ed25519_key
";

/// Why a build failed. Each names the field whose input is at fault.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The specification itself is wrong.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    Spec(Vec<SpecError>),
    /// An input could not be read.
    #[error("{field}: cannot read {path}: {source}")]
    Input {
        /// The input's field.
        field: FieldPath,
        /// The resolved path.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// An input's bytes do not match its pinned digest.
    #[error("{field}: {path} has SHA-256 {actual}, but {expected} is pinned; pin the new digest if the change is intended, otherwise restore the file")]
    Mismatch {
        /// The input's field.
        field: FieldPath,
        /// The resolved path.
        path: PathBuf,
        /// The pinned digest.
        expected: String,
        /// What the file hashes to.
        actual: String,
    },
    /// An input could not become a layer.
    #[error("{field}: {path} {source}")]
    Layer {
        /// The layer's field.
        field: FieldPath,
        /// The resolved path.
        path: PathBuf,
        /// Why.
        source: LayerError,
    },
    /// An input is readable but cannot serve its field (a boot stub or kernel that is not the
    /// EFI image a UKI needs, layers too large for one).
    #[error("{field}: {path} {message}")]
    Unusable {
        /// The input's field.
        field: FieldPath,
        /// The resolved path.
        path: PathBuf,
        /// What is wrong and what to give instead.
        message: String,
    },
    /// The kernel file is empty.
    #[error("{field}: the kernel {path} is empty")]
    EmptyKernel {
        /// The kernel's field.
        field: FieldPath,
        /// The resolved path.
        path: PathBuf,
    },
    /// The build cache is not private to this user.
    #[error("the image build cache cannot be trusted: {0}")]
    CacheNotPrivate(crate::private::PrivateError),
    /// The build folder could not be written.
    #[error("writing the build in {path}: {source}")]
    Cache {
        /// The folder.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
}

impl BuildError {
    /// The field at fault, when one is.
    #[must_use]
    pub fn fields(&self) -> Vec<FieldPath> {
        match self {
            Self::Spec(errors) => errors.iter().map(|e| e.field.clone()).collect(),
            Self::Input { field, .. }
            | Self::Mismatch { field, .. }
            | Self::Layer { field, .. }
            | Self::Unusable { field, .. }
            | Self::EmptyKernel { field, .. } => {
                vec![field.clone()]
            }
            Self::Cache { .. } | Self::CacheNotPrivate(_) => Vec::new(),
        }
    }
}

/// Where a build reads its inputs and keeps its results.
pub struct BuildOptions<'a> {
    /// What relative `source` paths are relative to.
    pub base_dir: &'a Path,
    /// Where builds are cached, by inputs digest.
    pub cache_dir: &'a Path,
    /// Called with the number of input bytes read so far.
    pub progress: Option<&'a (dyn Fn(u64) + Sync)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Part {
    file: String,
    size: u64,
    crc: u32,
    /// The PE checksum sum of the bytes (a UKI's `CheckSum` is assembled from its parts').
    #[serde(default)]
    sum: Sum16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct BuildRecord {
    inputs_digest: String,
    manifest: String,
    seal_proof: String,
    dev: Measurements,
    prod: Measurements,
    cmdline: String,
    metadata: String,
    kernel: Part,
    layers: Vec<Part>,
    ssh: Option<Part>,
    /// What only a UKI build has.
    #[serde(default)]
    uki: Option<uki_build::UkiRecord>,
}

/// A finished build: both images' sections on disk, their measurements, the manifest and the
/// seal proof.
#[derive(Debug, Clone)]
pub struct ImageBuild {
    dir: PathBuf,
    record: BuildRecord,
}

/// A section's bytes: in memory or in a file of the build.
enum Source<'a> {
    Bytes(&'a [u8]),
    File(PathBuf),
}

impl ImageBuild {
    /// The cached build for `spec`, or a new one.
    ///
    /// # Errors
    /// A [`BuildError`] naming the input at fault.
    pub fn load_or_build(spec: &ImageSpec, options: &BuildOptions<'_>) -> Result<Self, BuildError> {
        spec.check().map_err(BuildError::Spec)?;
        let digest = manifest::inputs_digest(spec);
        let dir = options.cache_dir.join(&digest);
        let cache = |source| BuildError::Cache {
            path: options.cache_dir.to_path_buf(),
            source,
        };
        // The cache is this user's alone, in a folder nobody else can swap it in, or it is not
        // used.
        crate::private::create_dir(options.cache_dir).map_err(BuildError::CacheNotPrivate)?;
        match Self::load(&dir, &digest) {
            Some(build) => return Ok(build),
            // Damaged or from an older format: rebuilt below.
            None if dir.exists() => fs::remove_dir_all(&dir).map_err(cache)?,
            None => {}
        }
        let work = tempfile::Builder::new()
            .prefix(".build-")
            .tempdir_in(options.cache_dir)
            .map_err(cache)?;
        let record = build_into(spec, &digest, work.path(), options)?;
        let text = serde_json::to_vec(&record).map_err(|e| cache(io::Error::other(e)))?;
        fs::write(work.path().join(RECORD_FILE), text).map_err(cache)?;
        let work = work.keep();
        if fs::rename(&work, &dir).is_ok() {
            // Every file was hashed as it was written: no need to read it back.
            return Ok(Self { dir, record });
        }
        // Another run finished the same build first; its result is identical.
        let _ = fs::remove_dir_all(&work);
        Self::load(&dir, &digest).ok_or_else(|| cache(io::Error::other("the finished build could not be read back")))
    }

    /// The entry in `dir`, if it is whole: its record names `digest`, each of its files still
    /// has the size the record gives, and the development image, which holds every file's
    /// bytes, still hashes to the recorded `image_sha256`.
    fn load(dir: &Path, digest: &str) -> Option<Self> {
        let record: BuildRecord = serde_json::from_slice(&fs::read(dir.join(RECORD_FILE)).ok()?).ok()?;
        let mut parts = std::iter::once(&record.kernel)
            .chain(&record.layers)
            .chain(&record.ssh)
            .chain(record.uki.iter().map(uki_build::UkiRecord::stub));
        let sized = parts.all(|p| fs::metadata(dir.join(&p.file)).is_ok_and(|m| m.is_file() && m.len() == p.size));
        if record.inputs_digest != digest || !sized {
            return None;
        }
        let build = Self {
            dir: dir.to_path_buf(),
            record,
        };
        let image_sha256 = match build.format() {
            ImageFormat::Eif => build.write_eif_hashed(Variant::Dev, &mut io::sink()),
            ImageFormat::Uki => build.write_uki(Variant::Dev, &mut io::sink()),
        };
        image_sha256
            .is_ok_and(|actual| actual == build.record.dev.image_sha256)
            .then_some(build)
    }

    /// Removes the cached build (after its images were published), and the cache folder
    /// with it when no other build is left there.
    pub fn discard(self) {
        let _ = fs::remove_dir_all(&self.dir);
        if let Some(cache) = self.dir.parent() {
            let _ = fs::remove_dir(cache);
        }
    }

    /// The manifest (canonical JSON).
    #[must_use]
    pub fn manifest(&self) -> &str {
        &self.record.manifest
    }

    /// The seal proof (canonical JSON).
    #[must_use]
    pub fn seal_proof(&self) -> &str {
        &self.record.seal_proof
    }

    /// SHA-256 of the manifest, hex.
    #[must_use]
    pub fn manifest_sha256(&self) -> String {
        hex::encode(sha2::Sha256::digest(self.record.manifest.as_bytes()))
    }

    /// SHA-256 of the seal proof, hex.
    #[must_use]
    pub fn seal_proof_sha256(&self) -> String {
        hex::encode(sha2::Sha256::digest(self.record.seal_proof.as_bytes()))
    }

    /// The measurements of `variant`.
    #[must_use]
    pub fn measurements(&self, variant: Variant) -> &Measurements {
        match variant {
            Variant::Dev => &self.record.dev,
            Variant::Prod => &self.record.prod,
        }
    }

    fn sections(&self, variant: Variant) -> Vec<(SectionLayout, Source<'_>)> {
        let r = &self.record;
        let file = |p: &Part, kind| {
            (
                SectionLayout {
                    kind,
                    size: p.size,
                    crc: p.crc,
                },
                Source::File(self.dir.join(&p.file)),
            )
        };
        let mut out = vec![
            file(&r.kernel, SectionKind::Kernel),
            (
                layout_of(SectionKind::Cmdline, r.cmdline.as_bytes()),
                Source::Bytes(r.cmdline.as_bytes()),
            ),
            (
                layout_of(SectionKind::Metadata, r.metadata.as_bytes()),
                Source::Bytes(r.metadata.as_bytes()),
            ),
        ];
        out.extend(r.layers.iter().map(|p| file(p, SectionKind::Ramdisk)));
        if variant == Variant::Dev {
            out.extend(r.ssh.iter().map(|p| file(p, SectionKind::Ramdisk)));
        }
        out
    }

    /// The size in bytes of the EIF of `variant`.
    #[must_use]
    pub fn eif_len(&self, variant: Variant) -> u64 {
        let sections = self.sections(variant);
        let body: u64 = sections
            .iter()
            .map(|(layout, _)| eif::SECTION_HEADER_SIZE as u64 + layout.size)
            .sum();
        eif::HEADER_SIZE as u64 + body
    }

    /// Writes the EIF of `variant` to `out` and returns the SHA-256 (hex) of the bytes as they
    /// were written, so a caller can check them against the planned digest.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_eif_hashed(&self, variant: Variant, out: &mut dyn Write) -> io::Result<String> {
        struct Hashing<'a> {
            inner: &'a mut dyn Write,
            hasher: sha2::Sha256,
        }
        impl Write for Hashing<'_> {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let n = self.inner.write(buf)?;
                self.hasher.update(&buf[..n]);
                Ok(n)
            }

            fn flush(&mut self) -> io::Result<()> {
                self.inner.flush()
            }
        }
        let mut hashing = Hashing {
            inner: out,
            hasher: sha2::Sha256::new(),
        };
        self.write_eif(variant, &mut hashing)?;
        Ok(hex::encode(hashing.hasher.finalize()))
    }

    /// Writes the EIF of `variant` to `out`.
    ///
    /// # Errors
    /// I/O errors.
    pub fn write_eif(&self, variant: Variant, out: &mut dyn Write) -> io::Result<()> {
        let sections = self.sections(variant);
        let layouts: Vec<SectionLayout> = sections.iter().map(|(l, _)| *l).collect();
        out.write_all(&eif::file_header(&layouts)?)?;
        let mut buffer = vec![0u8; CHUNK];
        for (layout, source) in sections {
            out.write_all(&eif::section_header(layout.kind, layout.size))?;
            match source {
                Source::Bytes(bytes) => out.write_all(bytes)?,
                Source::File(path) => {
                    let mut file = File::open(path)?;
                    loop {
                        let n = file.read(&mut buffer)?;
                        if n == 0 {
                            break;
                        }
                        out.write_all(&buffer[..n])?;
                    }
                }
            }
        }
        out.flush()
    }
}

fn layout_of(kind: SectionKind, bytes: &[u8]) -> SectionLayout {
    SectionLayout {
        kind,
        size: bytes.len() as u64,
        crc: crc32fast::hash(bytes),
    }
}

/// Which PCR streams a chunk belongs to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Kernel, cmdline, first ramdisk: PCR0 and PCR1.
    Boot,
    /// Later ramdisks: PCR0 and PCR2.
    App,
}

struct PcrStreams {
    image: Worker<Sha384>,
    split: Worker<(Sha384, Sha384)>,
    phase: std::cell::Cell<Phase>,
}

impl PcrStreams {
    fn new() -> Self {
        Self {
            image: Worker::spawn(Sha384::new()),
            split: Worker::spawn((Sha384::new(), Sha384::new())),
            phase: std::cell::Cell::new(Phase::Boot),
        }
    }

    fn feed(&self, chunk: &Arc<Vec<u8>>) {
        let for_image = Arc::clone(chunk);
        self.image.run(move |h| h.update(&for_image));
        let for_split = Arc::clone(chunk);
        let phase = self.phase.get();
        self.split.run(move |(boot, app)| {
            if phase == Phase::Boot {
                boot.update(&for_split);
            } else {
                app.update(&for_split);
            }
        });
    }

    /// Moves from the first ramdisk to the later ones, finishing PCR1.
    fn end_boot(&self) -> mpsc::Receiver<[u8; 48]> {
        self.phase.set(Phase::App);
        let (tx, rx) = mpsc::channel();
        self.split.run(move |(boot, _)| {
            let _ = tx.send(eif::pcr(&boot.clone().finish()));
        });
        rx
    }

    /// (PCR0, PCR2) states as they are now.
    fn snapshot(&self) -> (Sha384, Sha384) {
        let (tx_image, rx_image) = mpsc::channel();
        self.image.run(move |h| {
            let _ = tx_image.send(h.clone());
        });
        let (tx_app, rx_app) = mpsc::channel();
        self.split.run(move |(_, app)| {
            let _ = tx_app.send(app.clone());
        });
        (
            rx_image.recv().unwrap_or_else(|_| Sha384::new()),
            rx_app.recv().unwrap_or_else(|_| Sha384::new()),
        )
    }
}

/// Writes a section's bytes to a file, feeding the PCR streams (EIF), a CRC and a PE checksum
/// sum on the way.
struct SectionSink<'a> {
    file: BufWriter<File>,
    pcrs: Option<&'a PcrStreams>,
    crc: crc32fast::Hasher,
    sum: Sum16,
}

impl Write for SectionSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file.write_all(buf)?;
        self.crc.update(buf);
        self.sum.update(buf);
        if let Some(pcrs) = self.pcrs {
            pcrs.feed(&Arc::new(buf.to_vec()));
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Reads an input, sending every byte to a SHA-256 worker.
struct CheckedInput<'a> {
    file: File,
    hasher: Worker<Sha256>,
    progress: Option<&'a (dyn Fn(u64) + Sync)>,
    read: &'a std::sync::atomic::AtomicU64,
}

impl Read for CheckedInput<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        if n > 0 {
            let chunk = buf[..n].to_vec();
            self.hasher.run(move |h| h.update(&chunk));
            let total = self.read.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed) + n as u64;
            if let Some(progress) = self.progress {
                progress(total);
            }
        }
        Ok(n)
    }
}

struct Builder<'a> {
    work: &'a Path,
    options: &'a BuildOptions<'a>,
    /// The EIF's PCR streams, fed every section byte; a UKI is measured from its file instead.
    pcrs: Option<&'a PcrStreams>,
    read: std::sync::atomic::AtomicU64,
    epoch: u32,
}

impl Builder<'_> {
    fn cache_error(&self, source: io::Error) -> BuildError {
        BuildError::Cache {
            path: self.work.to_path_buf(),
            source,
        }
    }

    fn open(&self, input: &InputRef, field: &FieldPath) -> Result<(PathBuf, CheckedInput<'_>), BuildError> {
        let path = self.options.base_dir.join(&input.source);
        let file = File::open(&path).map_err(|source| BuildError::Input {
            field: field.clone().name("source"),
            path: path.clone(),
            source,
        })?;
        Ok((
            path,
            CheckedInput {
                file,
                hasher: Worker::spawn(Sha256::new()),
                progress: self.options.progress,
                read: &self.read,
            },
        ))
    }

    /// Drains what the consumer left unread, then compares the digest with the pinned one.
    fn check(input: &InputRef, field: &FieldPath, path: &Path, reader: CheckedInput<'_>) -> Result<(), BuildError> {
        let mut reader = reader;
        io::copy(&mut reader, &mut io::sink()).map_err(|source| BuildError::Input {
            field: field.clone().name("source"),
            path: path.to_path_buf(),
            source,
        })?;
        let actual = hex::encode(reader.hasher.finish().finish());
        if actual.eq_ignore_ascii_case(&input.sha256) {
            Ok(())
        } else {
            Err(BuildError::Mismatch {
                field: field.clone().name("sha256"),
                path: path.to_path_buf(),
                expected: input.sha256.to_ascii_lowercase(),
                actual,
            })
        }
    }

    /// A section file in the build folder, written by `fill`.
    fn section(
        &self,
        name: &str,
        fill: impl FnOnce(&mut dyn Write) -> Result<(), BuildError>,
    ) -> Result<Part, BuildError> {
        let file = File::create(self.work.join(name)).map_err(|e| self.cache_error(e))?;
        let mut sink = SectionSink {
            file: BufWriter::with_capacity(CHUNK, file),
            pcrs: self.pcrs,
            crc: crc32fast::Hasher::new(),
            sum: Sum16::default(),
        };
        {
            let mut buffered = BufWriter::with_capacity(CHUNK, &mut sink);
            fill(&mut buffered)?;
            buffered.flush().map_err(|e| self.cache_error(e))?;
        }
        sink.flush().map_err(|e| self.cache_error(e))?;
        Ok(Part {
            file: name.to_owned(),
            size: sink.sum.len,
            crc: sink.crc.finalize(),
            sum: sink.sum,
        })
    }

    /// The kernel, copied as it is.
    fn kernel(&self, spec: &ImageSpec) -> Result<Part, BuildError> {
        let kernel_field = FieldPath::attr("kernel");
        self.section("kernel", |out| {
            let (path, mut input) = self.open(&spec.kernel, &kernel_field)?;
            let copied = io::copy(&mut BufReader::with_capacity(CHUNK, &mut input), out).map_err(|source| {
                BuildError::Input {
                    field: kernel_field.clone().name("source"),
                    path: path.clone(),
                    source,
                }
            })?;
            Builder::check(&spec.kernel, &kernel_field, &path, input)?;
            if copied == 0 {
                return Err(BuildError::EmptyKernel {
                    field: kernel_field.clone().name("source"),
                    path,
                });
            }
            Ok(())
        })
    }

    /// Layer `index` as a normalised newc archive.
    fn layer(&self, spec: &ImageSpec, index: usize) -> Result<Part, BuildError> {
        let layer = &spec.layers[index];
        let field = FieldPath::attr("layer").index(index);
        self.section(&format!("layer-{index}.cpio"), |out| {
            let (path, input) = self.open(&layer.input, &field)?;
            let layer_error = |source| BuildError::Layer {
                field: field.clone().name("source"),
                path: path.clone(),
                source,
            };
            let mut reader = BufReader::with_capacity(CHUNK, input);
            match &layer.destination {
                Some(destination) => {
                    let archive_path = archive_path_of_destination(destination).unwrap_or_default();
                    let size = reader
                        .get_ref()
                        .file
                        .metadata()
                        .map_err(|e| layer_error(e.into()))?
                        .len();
                    layer::write_files(
                        vec![(archive_path, MODE_EXEC, size, Box::new(&mut reader))],
                        self.epoch,
                        out,
                    )
                    .map_err(layer_error)?;
                }
                None => {
                    let scratch = tempfile::tempfile_in(self.work).map_err(|e| self.cache_error(e))?;
                    let tree = LayerTree::from_tar(&mut reader, scratch, self.epoch).map_err(layer_error)?;
                    tree.write(out).map_err(layer_error)?;
                }
            }
            Builder::check(&layer.input, &field, &path, reader.into_inner())
        })
    }

    /// The development image's SSH layer: sshd, its configuration and the authorized keys.
    fn ssh(&self, dev: &DevAccessSpec) -> Result<Part, BuildError> {
        let field = FieldPath::attr("dev_access").name("sshd");
        self.section("ssh.cpio", |out| {
            let (path, input) = self.open(&dev.sshd, &field)?;
            let size = input.file.metadata().map_err(|source| BuildError::Input {
                field: field.clone().name("source"),
                path: path.clone(),
                source,
            })?;
            let mut reader = BufReader::with_capacity(CHUNK, input);
            let mut keys = dev
                .ssh_authorized_keys
                .iter()
                .map(|k| k.trim())
                .collect::<Vec<_>>()
                .join("\n");
            keys.push('\n');
            let files: Vec<(String, u32, u64, Box<dyn Read + '_>)> = vec![
                ("usr/sbin/sshd".to_owned(), MODE_EXEC, size.len(), Box::new(&mut reader)),
                (
                    "etc/ssh/sshd_config".to_owned(),
                    super::cpio::MODE_FILE,
                    SSHD_CONFIG.len() as u64,
                    Box::new(SSHD_CONFIG.as_bytes()),
                ),
                (
                    "etc/ssh/authorized_keys".to_owned(),
                    super::cpio::MODE_FILE,
                    keys.len() as u64,
                    Box::new(keys.as_bytes()),
                ),
            ];
            layer::write_files(files, self.epoch, out).map_err(|source| BuildError::Layer {
                field: field.clone().name("source"),
                path: path.clone(),
                source,
            })?;
            Builder::check(&dev.sshd, &field, &path, reader.into_inner())
        })
    }
}

fn build_into(
    spec: &ImageSpec,
    digest: &str,
    work: &Path,
    options: &BuildOptions<'_>,
) -> Result<BuildRecord, BuildError> {
    if spec.format == ImageFormat::Uki {
        return uki_build::build_into(spec, digest, work, options);
    }
    let pcrs = PcrStreams::new();
    let builder = Builder {
        work,
        options,
        pcrs: Some(&pcrs),
        read: std::sync::atomic::AtomicU64::new(0),
        epoch: u32::try_from(spec.source_date_epoch).unwrap_or(0),
    };

    // Kernel, then cmdline: measured by PCR0 and PCR1.
    let kernel = builder.kernel(spec)?;
    pcrs.feed(&Arc::new(spec.cmdline.as_bytes().to_vec()));

    // Base layers: the first is the boot ramdisk (PCR1), the rest PCR2; all PCR0.
    let mut layers = Vec::with_capacity(spec.layers.len());
    let mut pcr1 = None;
    for index in 0..spec.layers.len() {
        layers.push(builder.layer(spec, index)?);
        if index == 0 {
            pcr1 = Some(pcrs.end_boot());
        }
    }

    // The production image ends here; the development image goes on with the SSH layer.
    let (prod_image, prod_app) = pcrs.snapshot();
    let ssh = spec.dev_access.as_ref().map(|dev| builder.ssh(dev)).transpose()?;

    let pcr1 = pcr1.and_then(|rx| rx.recv().ok()).unwrap_or([0; 48]);
    let dev_image = pcrs.image.finish();
    let (_, dev_app) = pcrs.split.finish();
    let pcr_hex = |image: Sha384, app: Sha384| {
        (
            Some(hex::encode(eif::pcr(&image.finish()))),
            Some(hex::encode(pcr1)),
            Some(hex::encode(eif::pcr(&app.finish()))),
        )
    };

    let kernel_sha256 = spec.kernel.sha256.to_ascii_lowercase();
    let prod_digest = manifest::prod_inputs_digest(spec);
    let metadata = String::from_utf8(eif::metadata(
        &spec.name,
        spec.source_date_epoch,
        &prod_digest,
        &kernel_sha256,
    ))
    .unwrap_or_default();
    let mut record = BuildRecord {
        inputs_digest: digest.to_owned(),
        manifest: String::new(),
        seal_proof: String::new(),
        dev: Measurements::default(),
        prod: Measurements::default(),
        cmdline: spec.cmdline.clone(),
        metadata,
        kernel,
        layers,
        ssh,
        uki: None,
    };
    let build = ImageBuild {
        dir: work.to_path_buf(),
        record: record.clone(),
    };
    let (dev_sha256, prod_sha256, ssh_sha256) = file_digests(&build).map_err(|e| BuildError::Cache {
        path: work.to_path_buf(),
        source: e,
    })?;
    let (p0, p1, p2) = pcr_hex(prod_image, prod_app);
    record.prod = Measurements {
        image_sha256: prod_sha256,
        pcr0: p0,
        pcr1: p1,
        pcr2: p2,
        ..Measurements::default()
    };
    record.dev = if record.ssh.is_some() {
        let (d0, d1, d2) = pcr_hex(dev_image, dev_app);
        Measurements {
            image_sha256: dev_sha256,
            pcr0: d0,
            pcr1: d1,
            pcr2: d2,
            ..Measurements::default()
        }
    } else {
        record.prod.clone()
    };
    let removed = record.ssh.as_ref().map(|p| RemovedLayer {
        name: "ssh".to_owned(),
        section_index: 3 + record.layers.len(),
        size: p.size,
        sha256: ssh_sha256.clone().unwrap_or_default(),
    });
    finish_record(spec, &mut record, removed);
    Ok(record)
}

/// Writes the seal proof and the manifest into `record`, whose measurements are complete.
fn finish_record(spec: &ImageSpec, record: &mut BuildRecord, removed_layer: Option<RemovedLayer>) {
    let proof = SealProof {
        schema: SEAL_PROOF_SCHEMA.to_owned(),
        dev: record.dev.recorded(),
        removed_layer,
        prod: record.prod.recorded(),
    };
    record.seal_proof = proof.document();
    let outputs = Outputs {
        dev: record.dev.recorded(),
        prod: record.prod.recorded(),
        seal_proof_sha256: hex::encode(sha2::Sha256::digest(record.seal_proof.as_bytes())),
    };
    record.manifest = manifest::manifest_document(spec, &outputs);
}

/// SHA-256 of the development and production files and of the SSH section, in one read of
/// the sections: the two files differ only in their headers and the final SSH section.
fn file_digests(build: &ImageBuild) -> io::Result<(String, String, Option<String>)> {
    let dev_sections = build.sections(Variant::Dev);
    let prod_count = build.sections(Variant::Prod).len();
    let layouts: Vec<SectionLayout> = dev_sections.iter().map(|(l, _)| *l).collect();
    let dev = Worker::spawn(Sha256::new());
    let prod = Worker::spawn(Sha256::new());
    let mut ssh = Sha256::new();
    let dev_header = eif::file_header(&layouts)?;
    let prod_header = eif::file_header(&layouts[..prod_count])?;
    dev.run(move |h| h.update(&dev_header));
    prod.run(move |h| h.update(&prod_header));
    let mut buffer = vec![0u8; CHUNK];
    for (index, (layout, source)) in dev_sections.into_iter().enumerate() {
        let in_prod = index < prod_count;
        let send = |bytes: Arc<Vec<u8>>| {
            if in_prod {
                let copy = Arc::clone(&bytes);
                prod.run(move |h| h.update(&copy));
            }
            dev.run(move |h| h.update(&bytes));
        };
        send(Arc::new(eif::section_header(layout.kind, layout.size).to_vec()));
        match source {
            Source::Bytes(bytes) => send(Arc::new(bytes.to_vec())),
            Source::File(path) => {
                let mut file = File::open(path)?;
                loop {
                    let n = file.read(&mut buffer)?;
                    if n == 0 {
                        break;
                    }
                    if !in_prod {
                        ssh.update(&buffer[..n]);
                    }
                    send(Arc::new(buffer[..n].to_vec()));
                }
            }
        }
    }
    let ssh_sha256 = (prod_count < layouts.len()).then(|| hex::encode(ssh.finish()));
    Ok((
        hex::encode(dev.finish().finish()),
        hex::encode(prod.finish().finish()),
        ssh_sha256,
    ))
}
