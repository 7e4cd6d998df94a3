//! Builds and measures both variants of a UKI image, for `scripts/bench-uki`:
//!
//!     uki_build DIR
//!
//! DIR holds `linuxx64.efi.stub`, `vmlinuz`, `init.tar`, `weights.bin` (a single-file layer)
//! and `sshd`. Prints the measurements as JSON; the build cache goes to a fresh folder in DIR.
use std::path::Path;

use safebox::image::build::{BuildOptions, ImageBuild};
use safebox::image::spec::{DevAccessSpec, ImageFormat, ImageSpec, InputRef, LayerSpec};
use safebox::image::{sha256_hex, Variant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: uki_build DIR")?;
    let dir = Path::new(&dir);
    let pin = |name: &str| -> Result<InputRef, std::io::Error> {
        Ok(InputRef {
            source: name.to_owned(),
            sha256: sha256_hex(std::fs::File::open(dir.join(name))?)?,
        })
    };
    let spec = ImageSpec {
        name: "bench".into(),
        source_date_epoch: 1_700_000_000,
        kernel: pin("vmlinuz")?,
        cmdline: "console=ttyS0".into(),
        layers: vec![
            LayerSpec {
                name: "init".into(),
                input: pin("init.tar")?,
                destination: None,
            },
            LayerSpec {
                name: "weights".into(),
                input: pin("weights.bin")?,
                destination: Some("/srv/weights.bin".into()),
            },
        ],
        dev_access: Some(DevAccessSpec {
            ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEWT bench".into()],
            sshd: pin("sshd")?,
        }),
        format: ImageFormat::Uki,
        boot_stub: Some(pin("linuxx64.efi.stub")?),
    };
    let cache = tempfile::tempdir_in(dir)?;
    let started = std::time::Instant::now();
    let build = ImageBuild::load_or_build(
        &spec,
        &BuildOptions {
            base_dir: dir,
            cache_dir: cache.path(),
            progress: None,
        },
    )?;
    let took = started.elapsed();
    for variant in [Variant::Dev, Variant::Prod] {
        let m = build.measurements(variant);
        println!(
            "{variant}: uki {} bytes, disk {} bytes, {}",
            build.uki_len(variant).unwrap_or(0),
            build.disk_len(variant).unwrap_or(0),
            serde_json::to_string(m)?
        );
    }
    println!("BUILD_SECONDS {}", took.as_secs_f64());
    Ok(())
}
