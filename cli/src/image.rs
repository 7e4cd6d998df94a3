//! `safebox image`: rebuild images from a manifest, and inspect built images (EIFs, UKIs and
//! the disks that carry UKIs), checking the seal proof between the two variants.

use std::fs::File;
use std::io::{BufWriter, IsTerminal as _, Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

use clap::Subcommand;
use safebox::image::build::{BuildOptions, ImageBuild};
use safebox::image::disk::read_payload_file;
use safebox::image::eif::Eif;
use safebox::image::inspect::UkiInspection;
use safebox::image::manifest::parse_manifest;
use safebox::image::seal::SealProof;
use safebox::image::spec::ImageFormat;
use safebox::image::{sha256_hex, Variant};
use serde_json::json;
use sha2::Digest as _;

/// Image commands.
#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Rebuild both images from a build manifest and its inputs, print their digests, and
    /// fail if they differ from the digests the manifest records.
    Rebuild {
        /// The manifest (manifest.json beside a published image).
        manifest: PathBuf,
        /// Write dev.eif, prod.eif, manifest.json and seal-proof.json here.
        #[arg(long)]
        out: Option<PathBuf>,
        /// Where relative input paths are resolved (default: the current folder, then the
        /// manifest's folder).
        #[arg(long)]
        inputs: Option<PathBuf>,
    },
    /// Print what a built image holds as JSON: an EIF's sections, sizes and recomputed PCR0-2;
    /// a UKI's sections and recomputed NitroTPM PCR4, PCR7 and PCR12; for a disk (dev.img,
    /// prod.img, an AMI's snapshot) the same of the UKI on it, with the manifest and seal proof
    /// it carries. Given the development and then the production image, also check the seal
    /// proof between them (--seal-proof, or the one on the disks) and fail if it does not hold.
    Inspect {
        /// One image, or the development image then the production image.
        #[arg(required = true, num_args = 1..=2, value_name = "IMAGE")]
        images: Vec<PathBuf>,
        /// The seal proof to check the two images against (seal-proof.json); disks carry
        /// their own.
        #[arg(long, value_name = "FILE")]
        seal_proof: Option<PathBuf>,
    },
}

impl ImageCommand {
    pub fn run(self) -> Result<(), String> {
        match self {
            Self::Rebuild { manifest, out, inputs } => rebuild(&manifest, out.as_deref(), inputs.as_deref()),
            Self::Inspect { images, seal_proof } => inspect(&images, seal_proof.as_deref()),
        }
    }
}

/// A built image as read: what `inspect` prints, and what the seal proof is checked against.
struct Inspected {
    /// The JSON printed.
    report: serde_json::Value,
    /// The EIF, or the UKI's bytes.
    image: Image,
    /// The seal proof a disk carries.
    seal_proof: Option<String>,
}

enum Image {
    Eif(Box<Eif>, String),
    Uki(Vec<u8>),
}

fn inspect(images: &[PathBuf], seal_proof: Option<&Path>) -> Result<(), String> {
    let read: Vec<Inspected> = images.iter().map(|path| read_image(path)).collect::<Result<_, _>>()?;
    let [dev, prod] = read.as_slice() else {
        println!("{}", pretty(&read[0].report)?);
        return Ok(());
    };
    let proof_text = match seal_proof {
        Some(path) => std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?,
        None => match (&dev.seal_proof, &prod.seal_proof) {
            (Some(a), Some(b)) if a == b => a.clone(),
            (Some(_), Some(_)) => {
                return Err(
                    "the two disks carry different seal proofs, so they are not the two variants of one image".into(),
                )
            }
            _ => {
                return Err("give the seal proof with --seal-proof seal-proof.json (only disks carry their own)".into())
            }
        },
    };
    let proof: SealProof = serde_json::from_str(&proof_text).map_err(|e| format!("the seal proof is not one: {e}"))?;
    let verified = match (&dev.image, &prod.image) {
        (Image::Eif(d, d_sha), Image::Eif(p, p_sha)) => proof.verify(d, d_sha, p, p_sha),
        (Image::Uki(d), Image::Uki(p)) => proof.verify_uki(d, p),
        _ => return Err("one image is an EIF and the other a UKI; give both variants of one image".into()),
    };
    let report = json!({
        "dev": dev.report,
        "prod": prod.report,
        "seal_proof": if verified.is_ok() { "verified".to_owned() } else { "refused".to_owned() },
    });
    println!("{}", pretty(&report)?);
    verified.map_err(|reason| {
        format!(
            "the seal proof does not hold: {reason}; the production image is not the development image minus its SSH layer"
        )
    })
}

fn pretty(value: &serde_json::Value) -> Result<String, String> {
    serde_json::to_string_pretty(value).map_err(|e| e.to_string())
}

/// Reads `path`: an EIF, a UKI, or a GPT disk holding one.
fn read_image(path: &Path) -> Result<Inspected, String> {
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let mut file = File::open(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut head = Vec::with_capacity(520);
    (&mut file).take(520).read_to_end(&mut head).map_err(|e| at(&e))?;
    if head.starts_with(&safebox::image::eif::MAGIC) {
        file.rewind().map_err(|e| at(&e))?;
        let parsed = Eif::parse(&mut file).map_err(|e| at(&e))?;
        file.rewind().map_err(|e| at(&e))?;
        let sha = sha256_hex(&mut file).map_err(|e| at(&e))?;
        let mut report = serde_json::to_value(&parsed).map_err(|e| e.to_string())?;
        report["image_sha256"] = json!(sha);
        if !parsed.crc_ok {
            // What was read is shown, then why it is refused.
            println!("{}", pretty(&report)?);
            return Err(at(&"the header's CRC-32 does not match the contents"));
        }
        return Ok(Inspected {
            report,
            image: Image::Eif(Box::new(parsed), sha),
            seal_proof: None,
        });
    }
    if head.starts_with(b"MZ") {
        let bytes = std::fs::read(path).map_err(|e| at(&e))?;
        let read = UkiInspection::of(&bytes).map_err(|e| at(&e))?;
        return Ok(Inspected {
            report: serde_json::to_value(&read).map_err(|e| e.to_string())?,
            image: Image::Uki(bytes),
            seal_proof: None,
        });
    }
    if head.get(512..520) == Some(b"EFI PART") {
        let mut file_named = |name: &str| read_payload_file(&mut file, name).map_err(|e| at(&format!("{name}: {e}")));
        let uki = file_named("EFI/BOOT/BOOTX64.EFI")?;
        let manifest = file_named("manifest.json")?;
        let proof = file_named("seal-proof.json")?;
        let read = UkiInspection::of(&uki).map_err(|e| at(&format!("EFI/BOOT/BOOTX64.EFI {e}")))?;
        let disk_sha256 = file.rewind().and_then(|()| sha256_hex(&mut file)).map_err(|e| at(&e))?;
        let report = json!({
            "format": "disk",
            "disk_sha256": disk_sha256,
            "manifest_sha256": hex::encode(sha2::Sha256::digest(&manifest)),
            "seal_proof_sha256": hex::encode(sha2::Sha256::digest(&proof)),
            "uki": read,
        });
        return Ok(Inspected {
            report,
            image: Image::Uki(uki),
            seal_proof: Some(String::from_utf8_lossy(&proof).into_owned()),
        });
    }
    Err(at(
        &"is not an EIF (\".eif\"), a UKI (an EFI image, \"MZ\") or a GPT disk holding one",
    ))
}

fn rebuild(manifest_path: &Path, out: Option<&Path>, inputs: Option<&Path>) -> Result<(), String> {
    let text =
        std::fs::read_to_string(manifest_path).map_err(|e| format!("reading {}: {e}", manifest_path.display()))?;
    let (spec, recorded) = parse_manifest(&text).map_err(|e| format!("{}: {e}", manifest_path.display()))?;
    let base_dir = match inputs {
        Some(dir) => dir.to_path_buf(),
        None => {
            let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
            let in_cwd = cwd.join(&spec.kernel.source).exists();
            let manifest_dir = manifest_path.parent().map(Path::to_path_buf).unwrap_or_default();
            if in_cwd || !manifest_dir.join(&spec.kernel.source).exists() {
                cwd
            } else {
                manifest_dir
            }
        }
    };
    let cache = tempfile::tempdir().map_err(|e| format!("creating a scratch folder: {e}"))?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {bytes} read ({bytes_per_sec})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar
    });
    let progress = |n: u64| {
        if let Some(bar) = &bar {
            bar.set_position(n);
        }
    };
    let build = ImageBuild::load_or_build(
        &spec,
        &BuildOptions {
            base_dir: &base_dir,
            cache_dir: cache.path(),
            progress: Some(&progress),
        },
    )
    .map_err(|e| format!("rebuilding: {e}"))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let dev = build.measurements(Variant::Dev);
    let prod = build.measurements(Variant::Prod);
    println!(
        "{}",
        serde_json::to_string_pretty(&json!({
            "dev": dev,
            "prod": prod,
            "seal_proof_sha256": build.seal_proof_sha256(),
            "manifest_sha256": build.manifest_sha256(),
        }))
        .map_err(|e| e.to_string())?
    );
    if let Some(out) = out {
        write_outputs(&build, out)?;
    }
    let Some(recorded) = recorded else {
        eprintln!("safebox: the manifest records no outputs, so there is nothing to compare the rebuild with");
        return Ok(());
    };
    let mut differences = Vec::new();
    let shown = |v: &Option<String>| v.clone().unwrap_or_else(|| "nothing".into());
    for (variant, rebuilt, recorded) in [("dev", dev, &recorded.dev), ("prod", prod, &recorded.prod)] {
        if rebuilt.image_sha256 != recorded.image_sha256 {
            differences.push(format!(
                "{variant} image_sha256: the manifest records {}, the rebuild gives {}",
                recorded.image_sha256, rebuilt.image_sha256
            ));
        }
        // The PCRs of the image's format (PCR0 to PCR2 of an EIF, NitroTPM PCR4, PCR7, PCR12
        // of a UKI); the disk's digest is not in the manifest, which the disk holds.
        for (name, a, b) in [
            ("pcr0", &rebuilt.pcr0, &recorded.pcr0),
            ("pcr1", &rebuilt.pcr1, &recorded.pcr1),
            ("pcr2", &rebuilt.pcr2, &recorded.pcr2),
            ("pcr4", &rebuilt.pcr4, &recorded.pcr4),
            ("pcr7", &rebuilt.pcr7, &recorded.pcr7),
            ("pcr12", &rebuilt.pcr12, &recorded.pcr12),
        ] {
            if a != b {
                differences.push(format!(
                    "{variant} {name}: the manifest records {}, the rebuild gives {}",
                    shown(b),
                    shown(a)
                ));
            }
        }
    }
    if build.seal_proof_sha256() != recorded.seal_proof_sha256 {
        differences.push(format!(
            "seal_proof_sha256: the manifest records {}, the rebuild gives {}",
            recorded.seal_proof_sha256,
            build.seal_proof_sha256()
        ));
    }
    if differences.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "the rebuild does not reproduce the manifest: {}",
            differences.join("; ")
        ))
    }
}

/// Writes both images into `out`: `dev.eif` and `prod.eif`, or for a UKI build `dev.efi`,
/// `prod.efi` (the UKIs) and `dev.img`, `prod.img` (the bootable disks).
fn write_outputs(build: &ImageBuild, out: &Path) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let failed = |path: &Path| {
        let path = path.display().to_string();
        move |e: std::io::Error| format!("writing {path}: {e}")
    };
    for variant in [Variant::Dev, Variant::Prod] {
        match build.format() {
            ImageFormat::Eif => {
                let path = out.join(format!("{variant}.eif"));
                let mut writer = BufWriter::new(File::create(&path).map_err(failed(&path))?);
                build.write_eif(variant, &mut writer).map_err(failed(&path))?;
                writer.flush().map_err(failed(&path))?;
            }
            ImageFormat::Uki => {
                let path = out.join(format!("{variant}.efi"));
                let mut writer = BufWriter::new(File::create(&path).map_err(failed(&path))?);
                build.write_uki(variant, &mut writer).map_err(failed(&path))?;
                writer.flush().map_err(failed(&path))?;
                let path = out.join(format!("{variant}.img"));
                let _ = std::fs::remove_file(&path);
                let mut disk = File::create(&path).map_err(failed(&path))?;
                build.write_disk(variant, &mut disk).map_err(failed(&path))?;
            }
        }
    }
    for (name, text) in [
        ("manifest.json", build.manifest()),
        ("seal-proof.json", build.seal_proof()),
    ] {
        let path = out.join(name);
        std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    }
    Ok(())
}
