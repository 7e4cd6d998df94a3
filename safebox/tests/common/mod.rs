//! Inputs for image tests: a small kernel, two tar layers, a single-file layer and an sshd.
#![allow(dead_code)]

use std::fs;
use std::path::Path;

use safebox::image::spec::{DevAccessSpec, ImageFormat, ImageSpec, InputRef, LayerSpec};
use sha2::{Digest, Sha256};

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A tar archive of `files` (path, contents, mode), appended in the given order.
pub fn tar_of(files: &[(&str, &[u8], u32)]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_path(path).unwrap();
        header.set_size(data.len() as u64);
        header.set_mode(*mode);
        header.set_mtime(1_800_000_000);
        header.set_cksum();
        builder.append(&header, *data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// Writes the inputs of a small image into `dir` and returns its specification.
pub fn inputs(dir: &Path, reverse_creation: bool) -> ImageSpec {
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("bzImage", (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect()),
        (
            "init.tar",
            tar_of(&[
                ("init", b"#!/bin/sh\nexec /app/server\n", 0o755),
                ("etc/hostname", b"box\n", 0o644),
            ]),
        ),
        (
            "app.tar",
            tar_of(&[
                ("srv/data/model.bin", &[9u8; 70_000], 0o600),
                ("srv/README", b"weights\n", 0o644),
            ]),
        ),
        ("server", b"\x7fELF pretend server".to_vec()),
        ("sshd", b"\x7fELF pretend sshd".to_vec()),
    ];
    let order: Vec<_> = if reverse_creation {
        files.iter().rev().collect()
    } else {
        files.iter().collect()
    };
    for (name, data) in order {
        fs::write(dir.join(name), data).unwrap();
    }
    let digest = |name: &str| sha256_hex(&fs::read(dir.join(name)).unwrap());
    let input = |name: &str| InputRef {
        source: name.to_owned(),
        sha256: digest(name),
    };
    ImageSpec {
        format: ImageFormat::Eif,
        boot_stub: None,
        name: "data-box".into(),
        source_date_epoch: 1_700_000_000,
        kernel: input("bzImage"),
        cmdline: "console=ttyS0 reboot=k panic=30".into(),
        layers: vec![
            LayerSpec {
                name: "init".into(),
                input: input("init.tar"),
                destination: None,
            },
            LayerSpec {
                name: "app".into(),
                input: input("app.tar"),
                destination: None,
            },
            LayerSpec {
                name: "server".into(),
                input: input("server"),
                destination: Some("/app/server".into()),
            },
        ],
        dev_access: Some(DevAccessSpec {
            ssh_authorized_keys: vec!["ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHJl operator@laptop".into()],
            sshd: input("sshd"),
        }),
    }
}
