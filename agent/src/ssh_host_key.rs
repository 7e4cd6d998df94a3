//! `safebox-agent ssh-host-key PATH`: makes the SSH host key of a development box at boot.
//!
//! A disk image must not carry a host key (every box of the image would share it, and anyone
//! with the image could pose as any of them), and the image holds `sshd` but no `ssh-keygen`.
//! So the box's `/init` asks the agent for a fresh Ed25519 key before it starts `sshd`, which
//! the image's `sshd_config` points at (`HostKey /run/sshd/ssh_host_ed25519_key`).
//!
//! The file is OpenSSH's private key format, unencrypted (OpenSSH `PROTOCOL.key`): the PEM-like
//! armour `OPENSSH PRIVATE KEY` around base64 (70 columns) of
//!
//! ```text
//! "openssh-key-v1" 0x00
//! string "none" (cipher)   string "none" (kdf)   string "" (kdf options)   uint32 1 (keys)
//! string public key: string "ssh-ed25519", string pk (32 bytes)
//! string private part: uint32 check, uint32 check (equal, random),
//!        string "ssh-ed25519", string pk, string seed || pk (64 bytes), string comment,
//!        then padding bytes 1, 2, 3, ... to a multiple of 8
//! ```
//!
//! where `string` is a u32 big-endian length and the bytes (RFC 4251 §5). It is written with
//! mode 0600, and an existing file is kept (a restarted agent does not change the key).

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use base64::Engine as _;

fn string(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// The OpenSSH private key file of `key`, and its public key line.
#[must_use]
pub fn encode(key: &ed25519_dalek::SigningKey, check: u32, comment: &str) -> (String, String) {
    let public = key.verifying_key().to_bytes();
    let mut public_blob = Vec::new();
    string(&mut public_blob, b"ssh-ed25519");
    string(&mut public_blob, &public);

    let mut private = Vec::new();
    private.extend_from_slice(&check.to_be_bytes());
    private.extend_from_slice(&check.to_be_bytes());
    string(&mut private, b"ssh-ed25519");
    string(&mut private, &public);
    string(&mut private, &key.to_keypair_bytes());
    string(&mut private, comment.as_bytes());
    let mut pad = 1u8;
    while private.len() % 8 != 0 {
        private.push(pad);
        pad += 1;
    }

    let mut blob = b"openssh-key-v1\0".to_vec();
    string(&mut blob, b"none");
    string(&mut blob, b"none");
    string(&mut blob, b"");
    blob.extend_from_slice(&1u32.to_be_bytes());
    string(&mut blob, &public_blob);
    string(&mut blob, &private);

    let encoded = base64::engine::general_purpose::STANDARD.encode(&blob);
    let mut file = String::from("-----BEGIN OPENSSH PRIVATE KEY-----\n");
    for line in encoded.as_bytes().chunks(70) {
        file.push_str(&String::from_utf8_lossy(line));
        file.push('\n');
    }
    file.push_str("-----END OPENSSH PRIVATE KEY-----\n");
    let line = format!(
        "ssh-ed25519 {} {comment}",
        base64::engine::general_purpose::STANDARD.encode(&public_blob)
    );
    (file, line)
}

/// Writes a new host key to `path` unless one is there; returns its public key line.
///
/// # Errors
/// A message naming the file.
pub fn ensure(path: &Path) -> Result<String, String> {
    let key = ed25519_dalek::SigningKey::generate(&mut rand::rngs::OsRng);
    let (file, line) = encode(&key, rand::random(), "safebox-box");
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut out) => {
            out.write_all(file.as_bytes())
                .and_then(|()| out.sync_all())
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            Ok(line)
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(format!("{} exists; kept", path.display())),
        Err(e) => Err(format!("creating {}: {e}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_is_openssh_key_v1_and_ssh_keygen_reads_it() {
        let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
        let (file, line) = encode(&key, 0x0102_0304, "safebox-box");
        let body: String = file.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(file.lines().filter(|l| !l.starts_with("-----")).all(|l| l.len() <= 70));
        let blob = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
        assert!(blob.starts_with(b"openssh-key-v1\0\0\0\0\x04none\0\0\0\x04none\0\0\0\0\0\0\0\x01"));
        // The private part is a multiple of 8 bytes and starts with the check twice.
        let public_len = u32::from_be_bytes(blob[39..43].try_into().unwrap()) as usize;
        let private_at = 43 + public_len;
        let private_len = u32::from_be_bytes(blob[private_at..private_at + 4].try_into().unwrap()) as usize;
        assert_eq!(private_len % 8, 0);
        assert_eq!(&blob[private_at + 4..private_at + 12], &[1, 2, 3, 4, 1, 2, 3, 4]);
        assert_eq!(blob.len(), private_at + 4 + private_len);

        // OpenSSH's own tool derives the same public key from the file, where it is installed.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, &file).unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        match std::process::Command::new("ssh-keygen")
            .arg("-y")
            .arg("-f")
            .arg(&path)
            .output()
        {
            Ok(out) => {
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
                let derived = String::from_utf8(out.stdout).unwrap();
                assert_eq!(
                    derived.split_whitespace().take(2).collect::<Vec<_>>(),
                    line.split_whitespace().take(2).collect::<Vec<_>>()
                );
            }
            Err(_) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "ssh-keygen is missing: apt-get install openssh-client"
                );
                println!("skipped the ssh-keygen check: ssh-keygen is not installed");
            }
        }
    }

    #[test]
    fn an_existing_key_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("host");
        let line = ensure(&path).unwrap();
        assert!(line.starts_with("ssh-ed25519 "));
        let first = std::fs::read(&path).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(ensure(&path).unwrap().contains("kept"));
        assert_eq!(std::fs::read(&path).unwrap(), first);
    }
}
