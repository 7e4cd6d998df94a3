//! The image pipeline end to end on small inputs: reproducibility, independent PCR checks,
//! which digests each input moves, the seal proof, and every bad input.

use std::fs;
use std::path::{Path, PathBuf};

use safebox::image::build::{BuildError, BuildOptions, ImageBuild};
use safebox::image::eif::Eif;
use safebox::image::manifest::{parse_manifest, Measurements};
use safebox::image::seal::SealProof;
use safebox::image::spec::{ImageSpec, InputRef, LayerSpec};
use safebox::image::Variant;
use sha2::{Digest, Sha384};

mod common;
use common::{inputs, sha256_hex};

fn build(dir: &Path, spec: &ImageSpec) -> Result<ImageBuild, BuildError> {
    ImageBuild::load_or_build(
        spec,
        &BuildOptions {
            base_dir: dir,
            cache_dir: &dir.join("cache"),
            progress: None,
        },
    )
}

fn eif_bytes(build: &ImageBuild, variant: Variant) -> Vec<u8> {
    let mut out = Vec::new();
    build.write_eif(variant, &mut out).unwrap();
    out
}

/// PCRs recomputed here from the raw file, independently of the library's parser.
fn independent_pcrs(eif: &[u8]) -> (String, String, String) {
    let be16 = |at: usize| u16::from_be_bytes([eif[at], eif[at + 1]]) as usize;
    let be64 = |at: usize| u64::from_be_bytes(eif[at..at + 8].try_into().unwrap()) as usize;
    assert_eq!(&eif[..4], b".eif");
    let count = be16(26);
    let (mut pcr0, mut pcr1, mut pcr2) = (Vec::new(), Vec::new(), Vec::new());
    let mut ramdisks = 0;
    for i in 0..count {
        let (offset, size) = (be64(28 + i * 8), be64(284 + i * 8));
        let kind = be16(offset);
        let data = &eif[offset + 12..offset + 12 + size];
        match kind {
            1 | 2 => {
                pcr0.extend_from_slice(data);
                pcr1.extend_from_slice(data);
            }
            3 => {
                pcr0.extend_from_slice(data);
                if ramdisks == 0 {
                    pcr1.extend_from_slice(data)
                } else {
                    pcr2.extend_from_slice(data)
                }
                ramdisks += 1;
            }
            _ => {}
        }
    }
    let extend = |data: &[u8]| {
        let mut h = Sha384::new();
        h.update([0u8; 48]);
        h.update(Sha384::digest(data));
        hex::encode(h.finalize())
    };
    (extend(&pcr0), extend(&pcr1), extend(&pcr2))
}

#[test]
fn builds_are_byte_identical_whatever_the_directory_and_creation_order() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let spec_a = inputs(a.path(), false);
    let spec_b = inputs(b.path(), true);
    assert_eq!(spec_a, spec_b);
    let (build_a, build_b) = (build(a.path(), &spec_a).unwrap(), build(b.path(), &spec_b).unwrap());
    for variant in [Variant::Dev, Variant::Prod] {
        assert_eq!(eif_bytes(&build_a, variant), eif_bytes(&build_b, variant), "{variant}");
    }
    assert_eq!(build_a.manifest(), build_b.manifest());
    assert_eq!(build_a.seal_proof(), build_b.seal_proof());
}

#[test]
fn measurements_match_an_independent_reading_of_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let spec = inputs(dir.path(), false);
    let build = build(dir.path(), &spec).unwrap();
    for variant in [Variant::Dev, Variant::Prod] {
        let bytes = eif_bytes(&build, variant);
        let m = build.measurements(variant);
        assert_eq!(m.image_sha256, sha256_hex(&bytes), "{variant}");
        let (p0, p1, p2) = independent_pcrs(&bytes);
        assert_eq!(
            (&m.pcr0, &m.pcr1, &m.pcr2),
            (&Some(p0.clone()), &Some(p1.clone()), &Some(p2.clone())),
            "{variant}"
        );
        assert_eq!(
            (&m.pcr4, &m.pcr7, &m.pcr12, &m.disk_sha256),
            (&None, &None, &None, &None)
        );
        let parsed = Eif::parse(std::io::Cursor::new(&bytes)).unwrap();
        assert!(parsed.crc_ok, "{variant}: CRC");
        assert_eq!(parsed.pcrs.pcr0, p0);
    }
    let (dev, prod) = (build.measurements(Variant::Dev), build.measurements(Variant::Prod));
    assert_eq!(dev.pcr1, prod.pcr1, "the boot ramdisk is shared");
    assert_ne!(dev.pcr0, prod.pcr0);
    assert_ne!(dev.pcr2, prod.pcr2);
}

#[test]
fn the_seal_proof_checks_out_and_the_manifest_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let spec = inputs(dir.path(), false);
    let build = build(dir.path(), &spec).unwrap();
    let (dev, prod) = (eif_bytes(&build, Variant::Dev), eif_bytes(&build, Variant::Prod));
    let proof: SealProof = serde_json::from_str(build.seal_proof()).unwrap();
    let (dev_eif, prod_eif) = (
        Eif::parse(std::io::Cursor::new(&dev)).unwrap(),
        Eif::parse(std::io::Cursor::new(&prod)).unwrap(),
    );
    proof
        .verify(&dev_eif, &sha256_hex(&dev), &prod_eif, &sha256_hex(&prod))
        .unwrap();
    assert_eq!(dev_eif.sections.len(), prod_eif.sections.len() + 1);
    // A production image from other inputs does not pass for this development image.
    let other_dir = tempfile::tempdir().unwrap();
    let mut other = inputs(other_dir.path(), false);
    fs::write(other_dir.path().join("server"), b"another server").unwrap();
    other.layers[2].input.sha256 = sha256_hex(b"another server");
    let other_prod = eif_bytes(&build_in(other_dir.path(), &other), Variant::Prod);
    let other_eif = Eif::parse(std::io::Cursor::new(&other_prod)).unwrap();
    assert!(proof
        .verify(&dev_eif, &sha256_hex(&dev), &other_eif, &sha256_hex(&other_prod))
        .is_err());

    let (read_spec, outputs) = parse_manifest(build.manifest()).unwrap();
    let outputs = outputs.expect("a built manifest records its outputs");
    assert_eq!(read_spec, spec);
    assert_eq!(&outputs.dev, build.measurements(Variant::Dev));
    assert_eq!(outputs.seal_proof_sha256, build.seal_proof_sha256());
}

fn build_in(dir: &Path, spec: &ImageSpec) -> ImageBuild {
    build(dir, spec).unwrap()
}

/// Which of the measurements differ between two builds.
fn moved(a: &ImageBuild, b: &ImageBuild) -> Vec<String> {
    let mut out = Vec::new();
    for variant in [Variant::Dev, Variant::Prod] {
        let (x, y): (&Measurements, &Measurements) = (a.measurements(variant), b.measurements(variant));
        for (name, l, r) in [
            ("image", &Some(x.image_sha256.clone()), &Some(y.image_sha256.clone())),
            ("pcr0", &x.pcr0, &y.pcr0),
            ("pcr1", &x.pcr1, &y.pcr1),
            ("pcr2", &x.pcr2, &y.pcr2),
        ] {
            if l != r {
                out.push(format!("{variant}.{name}"));
            }
        }
    }
    out
}

#[test]
fn a_one_byte_change_moves_exactly_the_expected_digests() {
    let dir = tempfile::tempdir().unwrap();
    let base_spec = inputs(dir.path(), false);
    let base = build(dir.path(), &base_spec).unwrap();
    let flip = |name: &str| -> (PathBuf, ImageSpec) {
        let changed = tempfile::tempdir().unwrap().keep();
        let mut spec = inputs(&changed, false);
        let path = changed.join(name);
        let mut bytes = fs::read(&path).unwrap();
        // The last byte of the file: for tars, inside the payload of the last entry's block
        // padding would not change the layer, so flip a data byte instead.
        let at = if name.ends_with(".tar") {
            512 + 3
        } else {
            bytes.len() - 1
        };
        bytes[at] ^= 1;
        fs::write(&path, &bytes).unwrap();
        let digest = sha256_hex(&bytes);
        match name {
            "bzImage" => spec.kernel.sha256 = digest,
            "sshd" => spec.dev_access.as_mut().unwrap().sshd.sha256 = digest,
            other => {
                spec.layers
                    .iter_mut()
                    .find(|l| l.input.source == other)
                    .unwrap()
                    .input
                    .sha256 = digest
            }
        }
        (changed, spec)
    };
    let all = [
        "dev.image",
        "dev.pcr0",
        "dev.pcr1",
        "dev.pcr2",
        "prod.image",
        "prod.pcr0",
        "prod.pcr1",
        "prod.pcr2",
    ];
    for (name, expected) in [
        (
            "bzImage",
            vec![
                "dev.image",
                "dev.pcr0",
                "dev.pcr1",
                "prod.image",
                "prod.pcr0",
                "prod.pcr1",
            ],
        ),
        (
            "init.tar",
            vec![
                "dev.image",
                "dev.pcr0",
                "dev.pcr1",
                "prod.image",
                "prod.pcr0",
                "prod.pcr1",
            ],
        ),
        (
            "app.tar",
            vec![
                "dev.image",
                "dev.pcr0",
                "dev.pcr2",
                "prod.image",
                "prod.pcr0",
                "prod.pcr2",
            ],
        ),
        (
            "server",
            vec![
                "dev.image",
                "dev.pcr0",
                "dev.pcr2",
                "prod.image",
                "prod.pcr0",
                "prod.pcr2",
            ],
        ),
        ("sshd", vec!["dev.image", "dev.pcr0", "dev.pcr2"]),
    ] {
        let (changed_dir, spec) = flip(name);
        let changed = build(&changed_dir, &spec).unwrap();
        assert_eq!(moved(&base, &changed), expected, "changing {name}");
        assert!(expected.iter().all(|e| all.contains(e)));
        fs::remove_dir_all(changed_dir).unwrap();
    }
    // The command line is an input too: PCR0 and PCR1 of both images.
    let mut spec = base_spec.clone();
    spec.cmdline.push(' ');
    let changed = build(dir.path(), &spec).unwrap();
    assert_eq!(
        moved(&base, &changed),
        [
            "dev.image",
            "dev.pcr0",
            "dev.pcr1",
            "prod.image",
            "prod.pcr0",
            "prod.pcr1"
        ]
    );
}

fn error_of(dir: &Path, spec: &ImageSpec) -> String {
    let err = build(dir, spec).unwrap_err();
    let fields: Vec<String> = err.fields().iter().map(ToString::to_string).collect();
    format!("{} | {err}", fields.join(","))
}

#[test]
fn every_bad_input_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let good = inputs(dir.path(), false);

    let mut wrong_hash = good.clone();
    wrong_hash.layers[1].input.sha256 = "0".repeat(64);
    let message = error_of(dir.path(), &wrong_hash);
    assert!(message.starts_with("layer[1].sha256 |"), "{message}");
    assert!(
        message.contains(&"0".repeat(64)) && message.contains(&good.layers[1].input.sha256),
        "both digests: {message}"
    );

    let mut missing = good.clone();
    missing.kernel.source = "no-such-kernel".into();
    let message = error_of(dir.path(), &missing);
    assert!(
        message.starts_with("kernel.source |") && message.contains("no-such-kernel"),
        "{message}"
    );

    fs::write(dir.path().join("evil.tar"), tar_raw_path("../../etc/passwd")).unwrap();
    let mut traversal = good.clone();
    traversal.layers[1].input = InputRef {
        source: "evil.tar".into(),
        sha256: sha256_hex(&fs::read(dir.path().join("evil.tar")).unwrap()),
    };
    let message = error_of(dir.path(), &traversal);
    assert!(
        message.starts_with("layer[1].source |") && message.contains("../../etc/passwd") && message.contains("\"..\""),
        "{message}"
    );

    let mut duplicate = good.clone();
    duplicate.layers[1] = LayerSpec {
        name: "again".into(),
        input: good.layers[2].input.clone(),
        destination: Some("/app/server".into()),
    };
    let message = error_of(dir.path(), &duplicate);
    assert!(
        message.starts_with("layer[2].destination |") && message.contains("layer[1]"),
        "{message}"
    );

    fs::write(dir.path().join("empty"), b"").unwrap();
    let mut empty_kernel = good.clone();
    empty_kernel.kernel = InputRef {
        source: "empty".into(),
        sha256: sha256_hex(b""),
    };
    let message = error_of(dir.path(), &empty_kernel);
    assert!(
        message.starts_with("kernel.source |") && message.contains("empty"),
        "{message}"
    );

    let mut not_a_digest = good.clone();
    not_a_digest.kernel.sha256 = "abc".into();
    assert!(error_of(dir.path(), &not_a_digest).starts_with("kernel.sha256 |"));

    // Failed builds leave no trace in the cache.
    let cache = dir.path().join("cache");
    let left: Vec<_> = fs::read_dir(&cache)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// A tar whose single entry has exactly `path` as its name (tar writers refuse `..`).
fn tar_raw_path(path: &str) -> Vec<u8> {
    let mut header = tar::Header::new_old();
    header.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
    header.set_size(4);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut out = header.as_bytes().to_vec();
    out.extend_from_slice(b"pwn!");
    out.resize(512 * 2, 0);
    out.resize(512 * 4, 0);
    out
}

#[test]
fn the_cache_serves_a_second_build_without_reading_inputs() {
    let dir = tempfile::tempdir().unwrap();
    let spec = inputs(dir.path(), false);
    let first = build(dir.path(), &spec).unwrap();
    // With the inputs gone, the cached build still answers: it is keyed by their digests.
    for name in ["bzImage", "init.tar", "app.tar", "server", "sshd"] {
        fs::remove_file(dir.path().join(name)).unwrap();
    }
    let second = build(dir.path(), &spec).unwrap();
    assert_eq!(first.manifest(), second.manifest());
    second.discard();
    assert!(
        build(dir.path(), &spec).is_err(),
        "without cache or inputs there is nothing to build from"
    );
}

#[test]
fn a_damaged_cache_entry_is_rebuilt_not_served() {
    let dir = tempfile::tempdir().unwrap();
    let spec = inputs(dir.path(), false);
    let first = build(dir.path(), &spec).unwrap();
    let entry = fs::read_dir(dir.path().join("cache"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.is_dir())
        .unwrap();
    let mut files: Vec<_> = fs::read_dir(&entry)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().is_some_and(|n| n != "build.json"))
        .collect();
    files.sort();
    assert!(files.len() >= 4, "kernel, layers and the SSH layer: {files:?}");
    for file in &files {
        let whole = fs::read(file).unwrap();
        // One flipped byte, then the same file cut short.
        let mut flipped = whole.clone();
        flipped[whole.len() / 2] ^= 1;
        for damaged in [flipped, whole[..whole.len() - 1].to_vec()] {
            fs::write(file, &damaged).unwrap();
            let again = build(dir.path(), &spec).unwrap();
            assert_eq!(again.manifest(), first.manifest());
            assert_eq!(fs::read(file).unwrap(), whole, "{} was rebuilt", file.display());
        }
    }
    // Damaged with the inputs gone: refused rather than served.
    fs::write(&files[0], b"not the kernel").unwrap();
    for name in ["bzImage", "init.tar", "app.tar", "server", "sshd"] {
        fs::remove_file(dir.path().join(name)).unwrap();
    }
    assert!(build(dir.path(), &spec).is_err(), "a damaged entry was served");
}
