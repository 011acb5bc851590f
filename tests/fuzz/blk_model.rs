//! What the virtio-blk targets share: requests as a driver (or a broken
//! one) lays them out, and what the device must answer, written from the
//! table of docs/devices.md ("What is checked, and the answer") rather
//! than from `request.rs`.
//!
//! A request is a list of segments (one descriptor each): its 16-byte
//! header (whole, split, cut short, or sharing a descriptor with data),
//! its data in one to four pieces going the way its type needs (or the
//! wrong way, or both), and its status byte (alone, missing, in a wider
//! buffer, or an empty descriptor). Segments are described, not
//! allocated: a target writes each one's bytes where it places it.

use arbitrary::Arbitrary;

/// Request types and statuses (virtio 1.2, 5.2.6).
pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;
pub const SECTOR: u64 = 512;
/// Most segments a request has (2 header, 2 x 4 data, 1 status).
pub const MAX_SEGS: usize = 11;

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Type {
    In,
    Out,
    Flush,
    GetId,
    Other(u32),
}

impl Type {
    pub fn code(self) -> u32 {
        match self {
            Type::In => T_IN,
            Type::Out => T_OUT,
            Type::Flush => T_FLUSH,
            Type::GetId => T_GET_ID,
            Type::Other(t) => t,
        }
    }
}

/// The sector in the header.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Sector {
    /// Near the start of the disk.
    Start(u8),
    /// Near its end: `capacity - n % 16 + 4`, so on both sides of it.
    End(u8),
    /// Anywhere up to a little past the end.
    Any(u16),
    /// Anything (sector arithmetic that overflows).
    Raw(u64),
}

impl Sector {
    pub fn value(self, capacity: u64) -> u64 {
        match self {
            Sector::Start(n) => u64::from(n % 8),
            Sector::End(n) => (capacity + 4).saturating_sub(u64::from(n % 16)),
            Sector::Any(n) => u64::from(n) % (capacity + 8),
            Sector::Raw(n) => n,
        }
    }
}

/// How many data bytes.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Len {
    /// `n % 9` whole sectors.
    Sectors(u8),
    /// Any count up to a little over 9 sectors.
    Bytes(u16),
}

impl Len {
    pub fn value(self) -> u32 {
        match self {
            Len::Sectors(n) => u32::from(n % 9) * SECTOR as u32,
            Len::Bytes(n) => u32::from(n) % 4700,
        }
    }
}

/// Which way the data goes: as the type needs (writable for a read and
/// GET_ID, readable for a write), the other way, or both ways.
#[derive(Debug, Clone, Copy)]
pub enum Way {
    Natural,
    Wrong,
    Both,
}

impl Way {
    /// Mostly the natural way (a request that goes the wrong way is
    /// answered before anything more interesting happens).
    pub fn pick(n: u8) -> Way {
        match n {
            0..200 => Way::Natural,
            200..228 => Way::Wrong,
            228.. => Way::Both,
        }
    }
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Header {
    Whole,
    /// In two descriptors, cut after `1 + n % 15` bytes.
    Split(u8),
    /// Only `n % 16` bytes of it.
    Short(u8),
    /// In one descriptor with the first readable data piece.
    WithData,
}

#[derive(Debug, Clone, Copy, Arbitrary)]
pub enum Status {
    One,
    /// No status descriptor: the last writable byte (of the data, if
    /// any) is where the status goes.
    Missing,
    /// A writable buffer of `2 + n % 64` bytes: the status is its last;
    /// from 250 on, an empty descriptor (which the queue reader refuses).
    Wide(u8),
}

/// A request as the driver lays it out.
#[derive(Debug, Clone, Copy, Arbitrary)]
pub struct Shape {
    pub ty: Type,
    pub sector: Sector,
    pub len: Len,
    /// The [`Way`] of [`Way::pick`].
    pub way: u8,
    pub header: Header,
    pub status: Status,
    /// Data in `1 + pieces % 4` descriptors (each way).
    pub pieces: u8,
    /// From 240 on, a writable descriptor first (which the queue reader
    /// refuses).
    pub misorder: u8,
    pub fill: u8,
    /// Below 128: laid out as a driver does (a whole header, the data as
    /// the type needs, a status descriptor of its own); the type, sector,
    /// length and pieces stay as given.
    pub plain: u8,
}

/// What a segment holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Src {
    /// Header bytes `from..from + len`, then (when longer) data bytes
    /// from 0.
    Header { from: u32 },
    /// Data bytes from `from` (the pattern of [`data_byte`]).
    Data { from: u32 },
    /// Device-writable: what the driver writes there does not matter.
    Writable,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seg {
    pub len: u32,
    pub write: bool,
    pub src: Src,
}

/// A request's segments, in chain order.
#[derive(Debug, Clone, Copy)]
pub struct Laid {
    pub header: [u8; 16],
    pub segs: [Seg; MAX_SEGS],
    pub n: usize,
    /// Data bytes each way (what the model calls data is decided by the
    /// device from the totals, not from these).
    pub data: u32,
    pub fill: u8,
}

impl Laid {
    pub fn segs(&self) -> &[Seg] {
        &self.segs[..self.n]
    }

    /// Byte `i` of segment `s` as the driver writes it (readable ones).
    pub fn byte(&self, s: &Seg, i: u32) -> u8 {
        match s.src {
            Src::Header { from } if from + i < 16 => self.header[(from + i) as usize],
            Src::Header { from } => data_byte(self.fill, from + i - 16),
            Src::Data { from } => data_byte(self.fill, from + i),
            Src::Writable => 0xee,
        }
    }

    /// Byte `pos` of the device-readable stream (the readable segments
    /// one after the other), if it is that long.
    pub fn readable_byte(&self, mut pos: u64) -> Option<u8> {
        for s in self.segs().iter().filter(|s| !s.write) {
            if pos < u64::from(s.len) {
                return Some(self.byte(s, pos as u32));
            }
            pos -= u64::from(s.len);
        }
        None
    }

    /// The type and sector the device finds: the first 16 bytes of the
    /// readable stream (a short header runs on into the data).
    pub fn found_header(&self) -> (u32, u64) {
        let mut h = [0u8; 16];
        for (i, b) in h.iter_mut().enumerate() {
            *b = self.readable_byte(i as u64).unwrap_or(0);
        }
        let mut sector = [0u8; 8];
        sector.copy_from_slice(&h[8..]);
        (
            u32::from_le_bytes([h[0], h[1], h[2], h[3]]),
            u64::from_le_bytes(sector),
        )
    }

    /// Device-readable and device-writable bytes in all.
    pub fn totals(&self) -> (u64, u64) {
        self.segs().iter().fold((0, 0), |(r, w), s| match s.write {
            false => (r + u64::from(s.len), w),
            true => (r, w + u64::from(s.len)),
        })
    }

    fn push(&mut self, len: u32, write: bool, src: Src) {
        self.segs[self.n] = Seg { len, write, src };
        self.n += 1;
    }
}

/// The data a driver writes: a pattern of `fill` and the offset.
fn data_byte(fill: u8, i: u32) -> u8 {
    (i.wrapping_mul(31) ^ (i >> 8)).wrapping_add(u32::from(fill)) as u8
}

/// `len` bytes in `pieces` pieces, the first ones the longest; none empty.
fn pieces(len: u32, pieces: u8) -> impl Iterator<Item = (u32, u32)> {
    let n = u32::from(pieces % 4) + 1;
    let per = len.div_ceil(n).max(1);
    (0..n).filter_map(move |i| {
        let from = i * per;
        (from < len).then(|| (from, per.min(len - from)))
    })
}

impl Shape {
    /// Lays the request out for a disk of `capacity` sectors.
    pub fn lay(&self, capacity: u64) -> Laid {
        if self.plain < 128 {
            let len = match self.len {
                Len::Bytes(n) => Len::Sectors(n as u8),
                sectors => sectors,
            };
            let plain = Shape {
                len,
                way: 0,
                header: Header::Whole,
                status: Status::One,
                misorder: 0,
                plain: 128,
                ..*self
            };
            return plain.lay(capacity);
        }
        let mut header = [0u8; 16];
        header[..4].copy_from_slice(&self.ty.code().to_le_bytes());
        header[8..].copy_from_slice(&self.sector.value(capacity).to_le_bytes());
        let seg = Seg {
            len: 0,
            write: false,
            src: Src::Writable,
        };
        let mut laid = Laid {
            header,
            segs: [seg; MAX_SEGS],
            n: 0,
            data: self.len.value(),
            fill: self.fill,
        };
        let len = laid.data;
        let natural_out = matches!(self.ty, Type::Out);
        let (out, inw) = match Way::pick(self.way) {
            Way::Natural => (natural_out, !natural_out),
            Way::Wrong => (!natural_out, natural_out),
            Way::Both => (true, true),
        };
        let mut data_out = pieces(if out { len } else { 0 }, self.pieces);
        match self.header {
            Header::Whole => laid.push(16, false, Src::Header { from: 0 }),
            Header::Split(at) => {
                let at = 1 + u32::from(at % 15);
                laid.push(at, false, Src::Header { from: 0 });
                laid.push(16 - at, false, Src::Header { from: at });
            }
            Header::Short(n) => laid.push(u32::from(n % 16), false, Src::Header { from: 0 }),
            Header::WithData => {
                let first = data_out.next().map_or(0, |(_, n)| n);
                laid.push(16 + first, false, Src::Header { from: 0 });
            }
        }
        for (from, n) in data_out {
            laid.push(n, false, Src::Data { from });
        }
        for (_, n) in pieces(if inw { len } else { 0 }, self.pieces) {
            laid.push(n, true, Src::Writable);
        }
        match self.status {
            Status::One => laid.push(1, true, Src::Writable),
            Status::Missing => {}
            Status::Wide(250..) => laid.push(0, true, Src::Writable),
            Status::Wide(n) => laid.push(2 + u32::from(n % 64), true, Src::Writable),
        }
        let first_writable = laid.segs().iter().position(|s| s.write);
        if let (240.., Some(w)) = (self.misorder, first_writable) {
            if w > 0 {
                laid.segs[..=w].rotate_right(1);
            }
        }
        laid
    }
}

/// What the device does with a request, per docs/devices.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The queue reader or the request check refuses the chain: the
    /// device needs a reset and answers nothing.
    Reset,
    Read {
        offset: u64,
        len: u32,
    },
    Write {
        offset: u64,
        len: u32,
    },
    Flush,
    GetId,
    /// A status at once, nothing done.
    Refuse(u8),
}

/// The drive a request goes to.
#[derive(Debug, Clone, Copy)]
pub struct Drive {
    pub capacity: u64,
    pub read_only: bool,
}

impl Answer {
    /// The answer to `segs` with `header` (type and sector) on `drive`.
    pub fn of(laid: &Laid, drive: Drive) -> Answer {
        let segs = laid.segs();
        let empty = segs.iter().any(|s| s.len == 0);
        let misordered = segs.windows(2).any(|w| w[0].write && !w[1].write);
        let (readable, writable) = laid.totals();
        if empty || misordered || readable < 16 || writable == 0 {
            return Answer::Reset;
        }
        let (ty, sector) = laid.found_header();
        Answer::of_totals(ty, sector, readable, writable, drive)
    }

    /// The answer to a chain that the queue reader took, from its totals.
    pub fn of_totals(ty: u32, sector: u64, readable: u64, writable: u64, drive: Drive) -> Answer {
        if readable < 16 || writable == 0 {
            return Answer::Reset;
        }
        // The header and the status byte aside.
        let (data_in, data_out) = (readable - 16, writable - 1);
        let within = |bytes: u64| {
            bytes % SECTOR == 0
                && u32::try_from(bytes).is_ok()
                && sector
                    .checked_add(bytes / SECTOR)
                    .is_some_and(|end| end <= drive.capacity)
        };
        match ty {
            T_IN if data_in == 0 && within(data_out) => Answer::Read {
                offset: sector * SECTOR,
                len: data_out as u32,
            },
            T_OUT if data_out == 0 && !drive.read_only && within(data_in) => Answer::Write {
                offset: sector * SECTOR,
                len: data_in as u32,
            },
            T_IN | T_OUT => Answer::Refuse(S_IOERR),
            T_FLUSH => Answer::Flush,
            T_GET_ID if data_in == 0 && data_out > 0 => Answer::GetId,
            T_GET_ID => Answer::Refuse(S_IOERR),
            _ => Answer::Refuse(S_UNSUPP),
        }
    }

    /// Whether the device hands it to its engine (so that it is done
    /// later, and a second chain with its head finds it in flight).
    pub fn on_engine(self, flush_syncs: bool) -> bool {
        match self {
            Answer::Read { .. } | Answer::Write { .. } => true,
            Answer::Flush => flush_syncs,
            _ => false,
        }
    }

    /// The status and the used length, for a chain of `writable` bytes.
    pub fn reply(self, writable: u64) -> Option<(u8, u32)> {
        Some(match self {
            Answer::Reset => return None,
            Answer::Read { len, .. } => (S_OK, len + 1),
            Answer::Write { .. } | Answer::Flush => (S_OK, 1),
            Answer::GetId => (S_OK, (writable - 1).min(20) as u32 + 1),
            Answer::Refuse(s) => (s, 1),
        })
    }
}
