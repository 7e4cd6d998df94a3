//! File and volume names: which names the disks accept, and the 8.3 short name (with VFAT
//! long-name entries) each gets, as the module documentation of [`super`] specifies.

use std::collections::HashSet;

use super::{invalid, DiskError, LFN_CHARS, MAX_NAME_UNITS, SHORT_NAME_SPECIALS};

pub(super) fn is_short_char(b: u8) -> bool {
    b.is_ascii_uppercase() || b.is_ascii_digit() || SHORT_NAME_SPECIALS.contains(&b)
}

/// The 11-byte label, space padded, or why `label` is not one.
pub(super) fn volume_label(label: &str) -> Result<[u8; 11], DiskError> {
    if label.is_empty() || label.len() > 11 {
        return Err(invalid(format!("volume label {label:?} must be 1 to 11 characters")));
    }
    if label.starts_with(' ') {
        return Err(invalid(format!("volume label {label:?} must not start with a space")));
    }
    if let Some(c) = label
        .chars()
        .find(|&c| !(c == ' ' || (c.is_ascii() && is_short_char(c as u8))))
    {
        return Err(invalid(format!(
            "volume label {label:?}: {c:?} is not allowed (upper-case ASCII letters, digits, spaces and !#$%&'()-@^_`{{}}~)"
        )));
    }
    let mut out = [b' '; 11];
    out[..label.len()].copy_from_slice(label.as_bytes());
    Ok(out)
}

pub(super) fn check_name(name: &str) -> Result<(), DiskError> {
    if name.is_empty() {
        return Err(invalid("a file name is empty"));
    }
    if name.encode_utf16().count() > MAX_NAME_UNITS {
        return Err(invalid(format!(
            "file name {name:?} is longer than {MAX_NAME_UNITS} UTF-16 units"
        )));
    }
    if let Some(c) = name.chars().find(|&c| c.is_control() || "/\\\"*:<>?|".contains(c)) {
        return Err(invalid(format!("file name {name:?} contains {c:?}")));
    }
    if name == "." || name == ".." || name.ends_with('.') || name.ends_with(' ') {
        return Err(invalid(format!(
            "file name {name:?} must not be `.`, `..` or end in a dot or space"
        )));
    }
    Ok(())
}

/// How a file appears in the directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct DirName {
    /// The 8.3 name, space padded, as stored.
    pub(super) short: [u8; 11],
    /// The long name, if the name is not its short name.
    pub(super) long: Option<Vec<u16>>,
}

impl DirName {
    pub(super) fn entry_count(&self) -> u64 {
        1 + self
            .long
            .as_ref()
            .map_or(0, |units| units.len().div_ceil(LFN_CHARS) as u64)
    }
}

pub(super) fn pack_short(base: &[u8], ext: &[u8]) -> [u8; 11] {
    let mut out = [b' '; 11];
    for (slot, &b) in out[..8].iter_mut().zip(base) {
        *slot = b;
    }
    for (slot, &b) in out[8..].iter_mut().zip(ext) {
        *slot = b;
    }
    out
}

/// The short name of `name` if it already is an upper-case 8.3 name.
pub(super) fn exact_short(name: &str) -> Option<[u8; 11]> {
    let (base, ext) = match name.split_once('.') {
        Some((base, ext)) => (base, ext),
        None => (name, ""),
    };
    let ok = (1..=8).contains(&base.len())
        && ext.len() <= 3
        && ext.is_empty() != name.contains('.')
        && base.bytes().chain(ext.bytes()).all(is_short_char);
    ok.then(|| pack_short(base.as_bytes(), ext.as_bytes()))
}

/// The short name basis of `name`: base, extension, and whether anything but the case changed.
fn short_basis(name: &str) -> (Vec<u8>, Vec<u8>, bool) {
    let trimmed = name.trim_start_matches('.');
    let mut lossy = trimmed.len() != name.len();
    let (base_part, ext_part) = match trimmed.rfind('.') {
        Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
        None => (trimmed, ""),
    };
    let mut convert = |part: &str| {
        let mut out = Vec::new();
        for c in part.chars() {
            if c == ' ' || c == '.' {
                lossy = true;
                continue;
            }
            let upper = c.to_ascii_uppercase();
            if upper.is_ascii() && is_short_char(upper as u8) {
                out.push(upper as u8);
            } else {
                out.push(b'_');
                lossy = true;
            }
        }
        out
    };
    let mut base = convert(base_part);
    let mut ext = convert(ext_part);
    if base.len() > 8 {
        base.truncate(8);
        lossy = true;
    }
    if ext.len() > 3 {
        ext.truncate(3);
        lossy = true;
    }
    if base.is_empty() {
        base.push(b'_');
        lossy = true;
    }
    (base, ext, lossy)
}

/// The short names (and long names where needed) of `names`, in order.
pub(super) fn plan_names(names: &[&str]) -> Result<Vec<DirName>, DiskError> {
    let mut seen = HashSet::new();
    for name in names {
        check_name(name)?;
        if !seen.insert(name.to_uppercase()) {
            return Err(invalid(format!("file name {name:?} appears twice (ignoring case)")));
        }
    }
    let mut used: HashSet<[u8; 11]> = names.iter().filter_map(|name| exact_short(name)).collect();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        if let Some(short) = exact_short(name) {
            out.push(DirName { short, long: None });
            continue;
        }
        let (base, ext, lossy) = short_basis(name);
        let plain = pack_short(&base, &ext);
        let short = if !lossy && !used.contains(&plain) {
            plain
        } else {
            (1..=999_999u32)
                .map(|n| {
                    let tail = format!("~{n}");
                    let keep = base.len().min(8 - tail.len());
                    let mut tailed = base[..keep].to_vec();
                    tailed.extend_from_slice(tail.as_bytes());
                    pack_short(&tailed, &ext)
                })
                .find(|candidate| !used.contains(candidate))
                .ok_or_else(|| invalid(format!("no free short name for {name:?}")))?
        };
        used.insert(short);
        out.push(DirName {
            short,
            long: Some(name.encode_utf16().collect()),
        });
    }
    Ok(out)
}
