//! Deterministic `newc` cpio archives (the format Linux unpacks as an initramfs).
//!
//! Each entry is a 110-byte ASCII header (`070701` and thirteen 8-digit hex fields), the
//! NUL-terminated name padded to 4 bytes, and the data padded to 4 bytes; the archive ends with
//! the entry `TRAILER!!!`. Every field that could carry machine state is fixed here: uid and
//! gid 0, inode numbers counted from 1 in archive order, one link, no device numbers.

use std::io::{self, Read, Write};

const MAGIC: &str = "070701";
/// The name of the entry that ends a newc archive.
pub const TRAILER: &str = "TRAILER!!!";

/// File type and permission bits (`st_mode`).
pub const MODE_DIR: u32 = 0o040_755;
/// A regular file that is not executable.
pub const MODE_FILE: u32 = 0o100_644;
/// An executable regular file.
pub const MODE_EXEC: u32 = 0o100_755;
/// A symbolic link.
pub const MODE_SYMLINK: u32 = 0o120_777;

/// Writes a newc archive to `out`, entry by entry.
pub struct CpioWriter<W: Write> {
    out: W,
    next_inode: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// An archive writing to `out`.
    pub fn new(out: W) -> Self {
        Self {
            out,
            next_inode: 1,
            written: 0,
        }
    }

    fn header(&mut self, name: &str, mode: u32, nlink: u32, mtime: u32, size: u64) -> io::Result<()> {
        let size = u32::try_from(size).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: newc entries are limited to 4 GiB"),
            )
        })?;
        let inode = if name == TRAILER { 0 } else { self.next_inode };
        self.next_inode += 1;
        let name_size = name.len() + 1;
        let header = format!(
            "{MAGIC}{inode:08X}{mode:08X}{uid:08X}{gid:08X}{nlink:08X}{mtime:08X}{size:08X}{z:08X}{z:08X}{z:08X}{z:08X}{name_size:08X}{z:08X}",
            uid = 0,
            gid = 0,
            z = 0
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.put(&[0; 3][..pad])
    }

    /// A directory.
    ///
    /// # Errors
    /// What the underlying writer returns.
    pub fn dir(&mut self, name: &str, mtime: u32) -> io::Result<()> {
        self.header(name, MODE_DIR, 2, mtime, 0)
    }

    /// A regular file of `size` bytes, whose data `data` copies into the archive.
    ///
    /// # Errors
    /// What the underlying writer or `data` return; a size mismatch is an error.
    pub fn file(&mut self, name: &str, mode: u32, mtime: u32, size: u64, data: &mut dyn io::Read) -> io::Result<()> {
        self.header(name, mode, 1, mtime, size)?;
        let copied = io::copy(&mut Read::take(data, size), &mut CountingWriter { inner: self })?;
        if copied != size {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{name}: expected {size} bytes, got {copied}"),
            ));
        }
        self.pad()
    }

    /// A symbolic link to `target`.
    ///
    /// # Errors
    /// What the underlying writer returns.
    pub fn symlink(&mut self, name: &str, target: &str, mtime: u32) -> io::Result<()> {
        self.header(name, MODE_SYMLINK, 1, mtime, target.len() as u64)?;
        self.put(target.as_bytes())?;
        self.pad()
    }

    /// Ends the archive and returns the writer.
    ///
    /// # Errors
    /// What the underlying writer returns.
    pub fn finish(mut self) -> io::Result<W> {
        self.header(TRAILER, 0, 1, 0, 0)?;
        self.out.flush()?;
        Ok(self.out)
    }
}

struct CountingWriter<'a, W: Write> {
    inner: &'a mut CpioWriter<W>,
}

impl<W: Write> Write for CountingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.put(buf)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_aligned_and_fields_fixed() {
        let mut w = CpioWriter::new(Vec::new());
        w.dir("app", 7).unwrap();
        w.file("app/x", MODE_EXEC, 7, 3, &mut &b"abc"[..]).unwrap();
        w.symlink("app/y", "x", 7).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() % 4, 0);
        let text = String::from_utf8_lossy(&bytes);
        // First header: inode 1, directory mode, uid/gid 0, 2 links, mtime 7, size 0, name "app\0".
        let fields = [
            "00000001", "000041ED", "00000000", "00000000", "00000002", "00000007", "00000000", "00000000", "00000000",
            "00000000", "00000000", "00000004", "00000000",
        ];
        assert!(text.starts_with(&format!("{MAGIC}{}app\0", fields.concat())), "{text}");
        assert_eq!(text.matches(MAGIC).count(), 4);
        assert!(text.contains("app/x\0"));
        assert!(text.contains("abc"));
        assert!(text.ends_with("TRAILER!!!\0\0\0\0"));
    }

    #[test]
    fn short_data_is_an_error() {
        let mut w = CpioWriter::new(Vec::new());
        assert!(w.file("f", MODE_FILE, 0, 10, &mut &b"abc"[..]).is_err());
    }
}
