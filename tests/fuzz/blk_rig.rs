//! The virtio-blk target's rig ([`crate::blk`]): a disk file, the device
//! on its bench, the driver's view of the request queue, and the checks
//! made after every operation (the answers: [`crate::blk_answers`]).

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use hearth::config::{CacheMode, DriveSpec, IoEngine, RateLimiterSpec};
use hearth::share::{Grant, SharedBucket};
use hearth::virtio::block::Block;
use vm_memory::{Bytes, GuestAddress};

use crate::blk::{Case, Op, TALLY};
use crate::blk_model::{Drive, Laid, MAX_SEGS};
use crate::device::{made_up, Bench, Layout, TransportOp, REGIONS};
use crate::support::{self, Writable};

/// The disk: 64 sectors, and a partial one the guest cannot see.
pub const SECTORS: u64 = 64;
/// The drive's id (the GET_ID serial, NUL-padded to 20 bytes).
pub const ID: &[u8] = b"fuzz-disk";

/// Whether io_uring can be set up here (it cannot in some sandboxes).
pub fn uring_works() -> bool {
    static WORKS: OnceLock<bool> = OnceLock::new();
    *WORKS.get_or_init(|| {
        let path = image_path("probe");
        std::fs::write(&path, [0u8; 512]).expect("a probe image");
        let mem = support::memory(&REGIONS);
        let works = Block::new(&spec(&path, true, IoEngine::IoUring, false), &mem, share()).is_ok();
        let _ = std::fs::remove_file(&path);
        if !works {
            eprintln!(
                "fuzz blk: io_uring cannot be set up here; every case runs on the sync engine"
            );
        }
        works
    })
}

fn image_path(what: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-blk");
    std::fs::create_dir_all(&dir).expect("a scratch directory");
    dir.join(format!("{what}-{}.img", std::process::id()))
}

fn spec(path: &std::path::Path, read_only: bool, engine: IoEngine, writeback: bool) -> DriveSpec {
    DriveSpec {
        id: String::from_utf8_lossy(ID).into_owned(),
        path: path.to_path_buf(),
        read_only,
        root: false,
        partuuid: None,
        cache: if writeback {
            CacheMode::Writeback
        } else {
            CacheMode::Unsafe
        },
        engine,
        rate_limiter: RateLimiterSpec::default(),
    }
}

/// A share of the host's disk budget that never refuses.
fn share() -> Arc<SharedBucket> {
    let bucket = Arc::new(SharedBucket::new());
    bucket.fill(&Grant {
        vm: 0,
        bytes_milli: None,
        ops_milli: None,
    });
    bucket
}

pub struct Rig {
    pub b: Bench<Block>,
    pub file: File,
    pub path: PathBuf,
    pub original: Vec<u8>,
    pub scratch: Vec<u8>,
    /// The file when the device was found needing a reset.
    pub frozen: Vec<u8>,
    pub frozen_valid: bool,
    pub drive: Drive,
    pub flush_syncs: bool,
    pub uring: bool,
    /// The driver set the device up with rings in RAM and has written no
    /// register since: its view of the rings is the device's.
    pub sane: bool,
    /// Used elements looked at.
    pub seen: u16,
    /// What the driver wrote into the descriptor table.
    pub writable: Writable,
}

impl Rig {
    pub fn new(case: &Case) -> Rig {
        let uring = case.uring && uring_works();
        let path = image_path(if uring { "uring" } else { "sync" });
        let len = SECTORS * 512 + u64::from(case.tail % 512);
        let original: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
        std::fs::write(&path, &original).expect("the disk image");
        let engine = if uring {
            IoEngine::IoUring
        } else {
            IoEngine::Sync
        };
        let spec = spec(&path, case.read_only, engine, case.writeback);
        let b = Bench::build("blk0", |mem| {
            Block::new(&spec, mem, share()).expect("a block device")
        });
        let file = File::open(&path).expect("the disk image");
        Rig {
            b,
            file,
            path,
            scratch: vec![0; original.len()],
            frozen: vec![0; original.len()],
            original,
            frozen_valid: false,
            drive: Drive {
                capacity: SECTORS,
                read_only: case.read_only,
            },
            flush_syncs: case.writeback,
            uring,
            sane: false,
            seen: 0,
            writable: Writable::new(),
        }
    }
}

impl Rig {
    pub fn ring_in_ram(&self) -> bool {
        self.b.rings[0].in_ram(&REGIONS)
    }

    pub fn used_idx(&self) -> u16 {
        if self.ring_in_ram() {
            self.b.rings[0].used_idx(&self.b.mem)
        } else {
            self.seen
        }
    }

    /// Makes the chain `descs` available at `head` of the request queue.
    pub fn post_at(&mut self, head: u16, descs: &[(u64, u32, bool)]) {
        if descs.is_empty() || !self.ring_in_ram() {
            return;
        }
        self.b.rings[0].post(&self.b.mem, head, descs, Some(&mut self.writable));
    }

    /// Puts a request's segments among the driver's buffers.
    pub fn place(&mut self, laid: &Laid) -> [u64; MAX_SEGS] {
        let mut at = [0u64; MAX_SEGS];
        let mut bytes = [0u8; 16 + 4700];
        for (a, s) in at.iter_mut().zip(laid.segs()) {
            *a = self.b.buffer(u64::from(s.len.max(1)));
            let n = s.len as usize;
            for (i, byte) in bytes[..n].iter_mut().enumerate() {
                *byte = laid.byte(s, i as u32);
            }
            self.b
                .mem
                .write_slice(&bytes[..n], GuestAddress(*a))
                .expect("the driver's buffers are in RAM");
        }
        at
    }

    /// Waits, on a device set up properly, until every chain posted is
    /// used or the device needs a reset (io_uring completes later).
    pub fn settle(&self) {
        if !self.sane || !self.ring_in_ram() {
            return;
        }
        let avail = self.b.rings[0].avail_idx;
        self.b.wait("every chain answered", |b| {
            !b.dev.is_active() || b.rings[0].used_idx(&b.mem) == avail
        });
    }

    /// New used elements: each within its chain's writable bytes.
    pub fn check_used(&mut self) {
        let idx = self.used_idx();
        let size = self.b.rings[0].size;
        let new = idx.wrapping_sub(self.seen);
        let published = self.b.rings[0].avail_idx.wrapping_sub(self.seen);
        // (A driver that wrote queue registers may have the device read
        // some other available ring.)
        assert!(
            !self.sane || new <= published,
            "{new} used elements of {published} chains made available"
        );
        // The ring holds the last `size` of them.
        for k in new.saturating_sub(size)..new {
            let (id, len) = self.b.rings[0].used_elem(&self.b.mem, self.seen.wrapping_add(k));
            assert!(id < u32::from(size), "a used element with id {id}");
            let writable = self.writable.most;
            assert!(
                u64::from(len) <= writable,
                "a used length of {len} for head {id}; the table never held {writable} writable bytes"
            );
        }
        self.seen = idx;
    }

    /// The file: its length, its invisible tail, and what may not change.
    pub fn check_file(&mut self) {
        let len = self.file.metadata().expect("the disk's metadata").len();
        assert_eq!(len, self.original.len() as u64, "the disk file's length");
        self.file
            .read_exact_at(&mut self.scratch, 0)
            .expect("the disk file reads");
        let visible = (SECTORS * 512) as usize;
        assert!(
            self.scratch[visible..] == self.original[visible..],
            "the partial sector past the capacity changed"
        );
        if self.drive.read_only {
            assert!(
                self.scratch == self.original,
                "a read-only drive's file changed"
            );
        }
        // On io_uring, I/O the device started before the chain that
        // stopped it may still land (it is never answered).
        if self.frozen_valid && !self.uring {
            assert!(
                self.scratch == self.frozen,
                "the file changed while the device needed a reset"
            );
        }
    }

    pub fn after_op(&mut self) {
        let frozen_used = self.seen;
        self.check_used();
        self.check_file();
        if self.frozen_valid {
            assert_eq!(
                self.seen, frozen_used,
                "used elements while needing a reset"
            );
        } else if self.sane && self.b.needs_reset() {
            self.frozen.copy_from_slice(&self.scratch);
            self.frozen_valid = true;
            TALLY.add("needs reset");
        }
    }

    pub fn init(&mut self, layout: &Layout) {
        self.b.init(layout);
        self.sane = layout.placement < 254 && layout.queues % 5 > 0;
        if layout.queues % 5 > 0 {
            // A new ring (without queues, the driver keeps its old one).
            self.writable = Writable::new();
        }
        self.seen = self.used_idx();
        self.frozen_valid = false;
    }

    pub fn transport(&mut self, op: &TransportOp) {
        use crate::device::{REG_NOTIFY, REG_STATUS};
        match op {
            TransportOp::Init(layout) => self.init(layout),
            TransportOp::Chain { descs, notify, .. } => {
                let out = made_up(descs);
                TALLY.add("made-up chains");
                let ring = &self.b.rings[0];
                let head = ring.avail_idx.wrapping_mul(4) % ring.size;
                self.post_at(head, &out[..descs.len()]);
                if *notify {
                    self.b.notify(0);
                    self.settle();
                }
            }
            TransportOp::Notify(queue) => {
                self.b.transport(op);
                if queue % 5 == 0 {
                    self.settle();
                }
            }
            TransportOp::Write { reg, value } if reg.offset() == REG_NOTIFY => {
                self.b.transport(op);
                if *value == 0 {
                    self.settle();
                }
            }
            TransportOp::Read { .. } | TransportOp::Config { write: false, .. } => {
                self.b.transport(op)
            }
            TransportOp::Reset => {
                self.b.transport(op);
                self.frozen_valid = false;
            }
            TransportOp::Write { reg, value: 0 } if reg.offset() == REG_STATUS => {
                self.b.transport(op);
                self.frozen_valid = false;
            }
            _ => {
                self.b.transport(op);
                self.sane = false;
                self.frozen_valid = false;
            }
        }
    }
}

impl Rig {
    pub fn apply(&mut self, op: &Op, calm: bool) {
        match op {
            Op::Init(layout) if calm => {
                if let Some(t) = crate::device::calm(&TransportOp::Init(*layout)) {
                    self.transport(&t)
                }
            }
            Op::Transport(t) if calm => {
                if let Some(t) = crate::device::calm(t) {
                    self.transport(&t)
                }
            }
            Op::Init(layout) => self.init(layout),
            Op::Transport(t) => self.transport(t),
            Op::Request(s) => self.requests(std::slice::from_ref(s), false),
            Op::Twice(s) => self.requests(std::slice::from_ref(s), true),
            Op::Batch(shapes) => self.requests(shapes, false),
        }
        self.after_op();
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
