//! One virtio-blk request (virtio 1.2, 5.2.6), parsed from a checked chain
//! once and checked as a whole before any I/O: the 16-byte header in the
//! device-readable buffers, the status byte as the last device-writable
//! byte, the data in between in the direction its type needs.
//!
//! What cannot be answered (no whole header, no byte for the status) is a
//! malformed chain: the device then needs a reset. What can be answered
//! but not done gets a status: `UNSUPP` for an unknown type, `IOERR` for a
//! read or write past the end of the disk, a write to a read-only drive,
//! data that is not whole sectors or goes the wrong way.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::super::queue::{read_from, Buffer, Chain};

/// Request types (5.2.6).
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;

/// Status values (5.2.6).
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;

pub const SECTOR_SHIFT: u32 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;
const HEADER_LEN: usize = 16;
/// Bytes of the GET_ID answer (the drive's serial).
pub const ID_BYTES: usize = 20;

/// What the device does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Read `len` bytes at `offset` into the writable data.
    Read {
        offset: u64,
        len: u32,
    },
    /// Write the readable data, `len` bytes, at `offset`.
    Write {
        offset: u64,
        len: u32,
    },
    Flush,
    GetId,
    /// Answer with this status at once, doing nothing.
    Refuse(u8),
}

/// A parsed request: what to do, where its data is in the chain, and
/// where its status goes.
#[derive(Debug)]
pub struct Request {
    pub chain: Chain,
    pub kind: Kind,
    /// The status byte's guest address.
    pub status: GuestAddress,
}

/// The drive a request is checked against.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    /// In 512-byte sectors.
    pub capacity: u64,
    pub read_only: bool,
}

/// Why a chain is not a request at all (the device needs a reset).
pub type Malformed = String;

impl Request {
    /// Parses `chain` against the drive's geometry.
    pub fn parse(mem: &GuestMemoryMmap, chain: Chain, geo: Geometry) -> Result<Self, Malformed> {
        let readable = chain.readable_len();
        let writable = chain.writable_len();
        if readable < HEADER_LEN as u64 {
            return Err(format!(
                "a request of {readable} device-readable bytes: its header needs {HEADER_LEN}"
            ));
        }
        if writable == 0 {
            return Err("a request without a device-writable byte for its status".into());
        }
        let mut header = [0u8; HEADER_LEN];
        read_from(mem, chain.readable(), 0, &mut header)?;
        let kind = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&header[8..16]);
        let sector = u64::from_le_bytes(sector);
        let status = last_byte(chain.writable()).ok_or("no status byte")?;
        // Data bytes in each direction, the header and the status aside.
        let data_in = readable - HEADER_LEN as u64;
        let data_out = writable - 1;
        let kind = match kind {
            T_IN => rw(sector, data_out, data_in, geo, false),
            T_OUT => rw(sector, data_in, data_out, geo, true),
            T_FLUSH => Kind::Flush,
            T_GET_ID if data_in == 0 && data_out > 0 => Kind::GetId,
            T_GET_ID => Kind::Refuse(S_IOERR),
            _ => Kind::Refuse(S_UNSUPP),
        };
        Ok(Request {
            chain,
            kind,
            status,
        })
    }

    /// Bytes and ops this request costs a rate limiter or a share.
    pub fn cost(&self) -> (u64, u64) {
        match self.kind {
            Kind::Read { len, .. } | Kind::Write { len, .. } => (u64::from(len), 1),
            Kind::Flush => (0, 1),
            Kind::GetId | Kind::Refuse(_) => (0, 0),
        }
    }

    /// The data buffers: writable ones for a read, readable ones for a
    /// write (the header and status bytes excluded by the caller's offsets).
    pub fn data_in_writable(&self) -> bool {
        matches!(self.kind, Kind::Read { .. } | Kind::GetId)
    }
}

/// A read or write of `len` data bytes at `sector`; `wrong_way` bytes of
/// data go in the other direction.
fn rw(sector: u64, len: u64, wrong_way: u64, geo: Geometry, write: bool) -> Kind {
    if wrong_way != 0 || len % SECTOR_SIZE != 0 || len > u64::from(u32::MAX) {
        return Kind::Refuse(S_IOERR);
    }
    if write && geo.read_only {
        return Kind::Refuse(S_IOERR);
    }
    let end = sector.checked_add(len >> SECTOR_SHIFT);
    if end.is_none_or(|end| end > geo.capacity) {
        return Kind::Refuse(S_IOERR);
    }
    let offset = sector << SECTOR_SHIFT;
    let len = len as u32;
    if write {
        Kind::Write { offset, len }
    } else {
        Kind::Read { offset, len }
    }
}

/// The address of the last byte of `bufs`.
fn last_byte(bufs: &[Buffer]) -> Option<GuestAddress> {
    let last = bufs.last()?;
    Some(GuestAddress(last.addr.0 + u64::from(last.len) - 1))
}

/// Writes the status byte.
pub fn write_status(mem: &GuestMemoryMmap, at: GuestAddress, status: u8) -> Result<(), String> {
    mem.write_obj(status, at)
        .map_err(|e| format!("cannot write the status byte: {e}"))
}

/// The `[start, start + len)` byte range of the stream `bufs`, as a list of
/// (guest address, length) pieces, in order, passed to `f`.
pub fn for_each_piece(
    bufs: &[Buffer],
    mut start: u64,
    mut len: u64,
    mut f: impl FnMut(GuestAddress, u64) -> Result<(), String>,
) -> Result<(), String> {
    for b in bufs {
        if len == 0 {
            break;
        }
        let blen = u64::from(b.len);
        if start >= blen {
            start -= blen;
            continue;
        }
        let n = (blen - start).min(len);
        f(GuestAddress(b.addr.0 + start), n)?;
        len -= n;
        start = 0;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo() -> Geometry {
        Geometry {
            capacity: 100,
            read_only: false,
        }
    }

    #[test]
    fn reads_and_writes_are_checked_against_the_disk() {
        assert_eq!(
            rw(0, 4096, 0, geo(), false),
            Kind::Read {
                offset: 0,
                len: 4096
            }
        );
        assert_eq!(
            rw(92, 4096, 0, geo(), true),
            Kind::Write {
                offset: 92 * 512,
                len: 4096
            }
        );
        // One sector past the end, a straddle, an overflow.
        assert_eq!(rw(100, 512, 0, geo(), false), Kind::Refuse(S_IOERR));
        assert_eq!(rw(99, 1024, 0, geo(), false), Kind::Refuse(S_IOERR));
        assert_eq!(rw(u64::MAX, 512, 0, geo(), false), Kind::Refuse(S_IOERR));
        // Not whole sectors; data the wrong way; a read-only drive.
        assert_eq!(rw(0, 511, 0, geo(), false), Kind::Refuse(S_IOERR));
        assert_eq!(rw(0, 512, 1, geo(), false), Kind::Refuse(S_IOERR));
        let ro = Geometry {
            read_only: true,
            ..geo()
        };
        assert_eq!(rw(0, 512, 0, ro, true), Kind::Refuse(S_IOERR));
        assert!(matches!(rw(0, 512, 0, ro, false), Kind::Read { .. }));
    }

    #[test]
    fn pieces_cover_the_range_across_buffers() {
        let bufs = [
            Buffer {
                addr: GuestAddress(0x1000),
                len: 16,
            },
            Buffer {
                addr: GuestAddress(0x2000),
                len: 100,
            },
            Buffer {
                addr: GuestAddress(0x3000),
                len: 50,
            },
        ];
        let mut got = Vec::new();
        for_each_piece(&bufs, 16, 120, |a, n| {
            got.push((a.0, n));
            Ok(())
        })
        .unwrap();
        assert_eq!(got, vec![(0x2000, 100), (0x3000, 20)]);
        assert_eq!(last_byte(&bufs), Some(GuestAddress(0x3000 + 49)));
    }
}
