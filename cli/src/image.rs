//! `safebox image`: rebuild images from a manifest, and inspect EIF files.

use std::fs::File;
use std::io::{BufWriter, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use clap::Subcommand;
use safebox::image::build::{BuildOptions, ImageBuild};
use safebox::image::eif::Eif;
use safebox::image::manifest::parse_manifest;
use safebox::image::spec::ImageFormat;
use safebox::image::Variant;
use serde_json::json;

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
    /// Print an EIF's sections, sizes and recomputed PCRs as JSON.
    Inspect {
        /// The EIF file.
        eif: PathBuf,
    },
}

impl ImageCommand {
    pub fn run(self) -> Result<(), String> {
        match self {
            Self::Rebuild { manifest, out, inputs } => rebuild(&manifest, out.as_deref(), inputs.as_deref()),
            Self::Inspect { eif } => {
                let file = File::open(&eif).map_err(|e| format!("reading {}: {e}", eif.display()))?;
                let parsed = Eif::parse(file).map_err(|e| format!("{}: {e}", eif.display()))?;
                let mut sha = sha2::Sha256::default();
                let mut file = File::open(&eif).map_err(|e| format!("reading {}: {e}", eif.display()))?;
                std::io::copy(&mut file, &mut sha).map_err(|e| format!("reading {}: {e}", eif.display()))?;
                let mut value = serde_json::to_value(&parsed).map_err(|e| e.to_string())?;
                value["image_sha256"] = json!(hex::encode(sha2::Digest::finalize(sha)));
                println!("{}", serde_json::to_string_pretty(&value).map_err(|e| e.to_string())?);
                if parsed.crc_ok {
                    Ok(())
                } else {
                    Err(format!(
                        "{}: the header's CRC-32 does not match the contents",
                        eif.display()
                    ))
                }
            }
        }
    }
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
