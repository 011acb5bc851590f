//! A VM's disks (`drives`, `io`) and the rate limiters that disks and
//! network interfaces share. Each drive's file is opened (read-only or
//! read-write, as it will be) to check it, and claimed, so that no file is
//! attached writable in two places of one monitor.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::claims::{Claims, FileId};
use super::error::Errors;
use super::parse::Parsed;
use super::raw::{RawBucket, RawCache, RawDrive, RawEngine, RawRateLimiter, RawShare};
use super::spec::*;
use super::validate::{is_valid_name, ranged, resolve_path, show, Naming};

/// Validates `drives`: the root drive, if any, moves first (`/dev/vda`).
pub(crate) fn validate_drives(
    drives: Parsed<Vec<RawDrive>>,
    naming: &Naming,
    base_dir: &Path,
    claims: &mut Claims,
    errors: &mut Errors,
) -> Option<Vec<DriveSpec>> {
    let raws = match drives {
        Parsed::Absent => return Some(Vec::new()),
        Parsed::Failed => return None,
        Parsed::Ok(raws) => check_count(raws, "drives", naming, errors)?,
    };
    let before = errors.len();
    let mut ids = HashMap::new();
    let mut root: Option<usize> = None;
    let mut specs = Vec::with_capacity(raws.len());
    for (i, raw) in raws.into_iter().enumerate() {
        let at = |field: &str| naming.at(&format!("drives[{i}].{field}"));
        let id = check_id(raw.id, "drives", i, &mut ids, naming, errors);
        let read_only = raw.read_only.unwrap_or(false);
        let is_root = raw.root.unwrap_or(false);
        match root {
            Some(first) if is_root => errors.push(
                at("root"),
                format!(
                    "true, but {} is already the root drive; a VM has at most one",
                    naming.at(&format!("drives[{first}]"))
                ),
            ),
            None if is_root => root = Some(i),
            _ => {}
        }
        let partuuid = check_partuuid(raw.partuuid, is_root, &at, errors);
        let path = check_disk(raw.path, read_only, &at, base_dir, claims, errors);
        let rate_limiter = validate_rate_limiter(raw.rate_limiter, &at("rate_limiter"), errors);
        let (Some(id), Some(path), Some(rate_limiter)) = (id, path, rate_limiter) else {
            continue;
        };
        specs.push(DriveSpec {
            id,
            path,
            read_only,
            root: is_root,
            partuuid,
            cache: match raw.cache {
                None | Some(RawCache::Unsafe) => CacheMode::Unsafe,
                Some(RawCache::Writeback) => CacheMode::Writeback,
            },
            engine: match raw.engine {
                None | Some(RawEngine::Sync) => IoEngine::Sync,
                Some(RawEngine::IoUring) => IoEngine::IoUring,
            },
            rate_limiter,
        });
    }
    if errors.len() != before {
        return None;
    }
    if let Some(root) = root {
        let drive = specs.remove(root);
        specs.insert(0, drive);
    }
    Some(specs)
}

/// `list` of one kind of device, refused whole if it has more entries than
/// a VM has virtio slots (so a long list costs nothing more).
pub(crate) fn check_count<T>(
    list: Vec<T>,
    field: &str,
    naming: &Naming,
    errors: &mut Errors,
) -> Option<Vec<T>> {
    let slots = crate::layout::MMIO_IRQS.len();
    if list.len() <= slots {
        return Some(list);
    }
    errors.push(
        naming.at(field),
        format!(
            "has {} entries, more than the {slots} virtio devices a VM can have",
            list.len()
        ),
    );
    None
}

/// The `id` of entry `i` of `list`: required, a name, unique in the list.
pub(crate) fn check_id(
    id: Option<String>,
    list: &str,
    i: usize,
    seen: &mut HashMap<String, usize>,
    naming: &Naming,
    errors: &mut Errors,
) -> Option<String> {
    let field = naming.at(&format!("{list}[{i}].id"));
    let Some(id) = id else {
        errors.push(field, "required: a name for the device, unique in the VM");
        return None;
    };
    if !is_valid_name(&id) {
        errors.push(field, format!("{id:?} must match [A-Za-z0-9_-]{{1,32}}"));
        return None;
    }
    if let Some(first) = seen.insert(id.clone(), i) {
        let first = naming.at(&format!("{list}[{first}]"));
        errors.push(field, format!("{id:?} is already the id of {first}"));
        return None;
    }
    Some(id)
}

/// `partuuid`: only on the root drive, and only what a PARTUUID can be (it
/// goes on the kernel command line).
fn check_partuuid(
    uuid: Option<String>,
    root: bool,
    at: &dyn Fn(&str) -> String,
    errors: &mut Errors,
) -> Option<String> {
    let uuid = uuid?;
    let well_formed =
        (1..=36).contains(&uuid.len()) && uuid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-');
    let problem = if !root {
        format!(
            "{uuid:?} is only used by the root drive ({} true)",
            at("root")
        )
    } else if !well_formed {
        format!("{uuid:?} is not a partition UUID (hex digits and '-', at most 36)")
    } else {
        return Some(uuid);
    };
    errors.push(at("partuuid"), problem);
    None
}

/// A drive's `path`: it exists, opens as it will be attached, and is not
/// attached writable elsewhere (or read-only elsewhere while writable here).
fn check_disk(
    given: Option<PathBuf>,
    read_only: bool,
    at: &dyn Fn(&str) -> String,
    base_dir: &Path,
    claims: &mut Claims,
    errors: &mut Errors,
) -> Option<PathBuf> {
    let field = at("path");
    let Some(given) = given else {
        errors.push(field, "required: the disk image or block device");
        return None;
    };
    let path = resolve_path(&given, base_dir, field.clone(), errors)?;
    let shown = show(&given, &path);
    let id = match open_disk(&path, read_only) {
        Ok(id) => id,
        Err(DiskError::Open(e)) if !read_only => {
            let read_only = at("read_only");
            let problem =
                format!("cannot be opened for reading and writing: {e} (or set {read_only} true)");
            errors.push(field, format!("{shown} {problem}"));
            return None;
        }
        Err(e) => {
            errors.push(field, format!("{shown} {e}"));
            return None;
        }
    };
    let mode = |writable: bool| if writable { "writable" } else { "read-only" };
    if let Err((first, writable)) = claims.file(id, !read_only, field.clone()) {
        errors.push(
            field,
            format!(
                "{shown} is attached {} here and {} at {first}; a file attached writable \
                 may not be attached anywhere else",
                mode(!read_only),
                mode(writable)
            ),
        );
        return None;
    }
    Some(path)
}

#[derive(Debug, thiserror::Error)]
enum DiskError {
    #[error("does not exist")]
    NotFound,
    #[error("is a directory, not a disk image")]
    Directory,
    #[error("is neither a regular file nor a block device")]
    NotDisk,
    #[error("is empty")]
    Empty,
    #[error("cannot be opened: {0}")]
    Open(#[source] io::Error),
}

/// Opens `path` as the device will (O_NONBLOCK, so a FIFO swapped in after
/// the check does not block) and returns the file's identity.
fn open_disk(path: &Path, read_only: bool) -> Result<FileId, DiskError> {
    let kind = |m: &std::fs::Metadata| {
        let kind = m.file_type();
        if kind.is_dir() {
            Err(DiskError::Directory)
        } else if kind.is_file() || kind.is_block_device() {
            Ok(())
        } else {
            Err(DiskError::NotDisk)
        }
    };
    let metadata = std::fs::metadata(path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => DiskError::NotFound,
        _ => DiskError::Open(e),
    })?;
    kind(&metadata)?;
    let file = OpenOptions::new()
        .read(true)
        .write(!read_only)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(DiskError::Open)?;
    let metadata = file.metadata().map_err(DiskError::Open)?;
    kind(&metadata)?;
    if metadata.is_file() && metadata.len() == 0 {
        return Err(DiskError::Empty);
    }
    Ok((metadata.dev(), metadata.ino()))
}

/// A rate limiter at `field` (absent: no limits).
pub(crate) fn validate_rate_limiter(
    raw: Option<RawRateLimiter>,
    field: &str,
    errors: &mut Errors,
) -> Option<RateLimiterSpec> {
    let Some(raw) = raw else {
        return Some(RateLimiterSpec::default());
    };
    let bandwidth = bucket(raw.bandwidth, &format!("{field}.bandwidth"), errors);
    let ops = bucket(raw.ops, &format!("{field}.ops"), errors);
    Some(RateLimiterSpec {
        bandwidth: bandwidth?,
        ops: ops?,
    })
}

fn bucket(
    raw: Option<RawBucket>,
    field: &str,
    errors: &mut Errors,
) -> Option<Option<TokenBucketSpec>> {
    let Some(raw) = raw else { return Some(None) };
    let mut positive = |value: Option<u64>, name: &str, what: &str| match value {
        Some(v) if v > 0 => Some(v),
        Some(_) => {
            let message = format!("0 must be greater than 0 ({what})");
            errors.push(format!("{field}.{name}"), message);
            None
        }
        None => {
            errors.push(format!("{field}.{name}"), format!("required: {what}"));
            None
        }
    };
    let size = positive(raw.size, "size", "the bucket's capacity");
    let refill = positive(
        raw.refill_time,
        "refill_time",
        "ms to refill an empty bucket",
    );
    Some(Some(TokenBucketSpec {
        size: size?,
        one_time_burst: raw.one_time_burst.unwrap_or(0),
        refill_time_ms: refill?,
    }))
}

/// A VM's `io` (or `net`) share: its weight.
pub(crate) fn validate_share(
    weight: Option<u64>,
    field: &str,
    naming: &Naming,
    errors: &mut Errors,
) -> Option<ShareSpec> {
    let weight = ranged(
        weight,
        DEFAULT_IO_WEIGHT,
        MIN_IO_WEIGHT..=MAX_IO_WEIGHT,
        naming.at(field),
        errors,
    )?;
    Some(ShareSpec { weight })
}

/// `io`: the VM's share of `host.io`.
pub(crate) fn validate_io(
    io: Parsed<RawShare>,
    naming: &Naming,
    errors: &mut Errors,
) -> Option<ShareSpec> {
    validate_share(io.or_default()?.weight, "io.weight", naming, errors)
}
