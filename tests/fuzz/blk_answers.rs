//! The virtio-blk target's requests and answers ([`crate::blk`]): chains
//! posted at heads of their own, what the model expects of them
//! (docs/devices.md's table), and each used element and its data checked.

use std::os::unix::fs::FileExt;

use vm_memory::{Bytes, GuestAddress};

use crate::blk::TALLY;
use crate::blk_model::{Answer, Laid, Shape, MAX_SEGS, S_OK};
use crate::blk_rig::{Rig, ID, SECTORS};

/// A chain as posted: its head and where each segment went.
#[derive(Clone, Copy, Debug)]
pub struct Posted {
    pub head: u16,
    pub laid: Laid,
    pub at: [u64; MAX_SEGS],
}

/// What the device must do with the chains of one operation.
pub struct Expected {
    pub wants: [Want; 8],
    /// `wants[..required]` must be used; the rest may be.
    pub required: usize,
    pub n: usize,
    pub reset: Option<bool>,
}

/// One used element the model expects.
#[derive(Clone, Copy, Debug)]
pub struct Want {
    pub head: u16,
    pub len: u32,
    pub status: u8,
    pub answer: Answer,
    /// Which request of the op (for its data).
    pub of: usize,
}

/// Whether two answers' ranges of the disk meet.
fn overlap(a: Answer, b: Answer) -> bool {
    let range = |x: Answer| match x {
        Answer::Read { offset, len } | Answer::Write { offset, len } => {
            Some((offset, offset + u64::from(len)))
        }
        _ => None,
    };
    match (range(a), range(b)) {
        (Some((s1, e1)), Some((s2, e2))) => s1 < e2 && s2 < e1,
        _ => false,
    }
}

impl Rig {
    /// Posts `shapes` (each at a head of its own, 16 descriptors apart;
    /// the first made available twice with `twice`), notifies once, and
    /// on a device set up properly checks every answer against the model.
    pub fn requests(&mut self, shapes: &[Shape], twice: bool) {
        if shapes.is_empty() || !self.ring_in_ram() {
            return;
        }
        let size = self.b.rings[0].size;
        let before = self.used_idx();
        let clean = self.sane && self.b.dev.is_active() && before == self.b.rings[0].avail_idx;
        let base = self.b.rings[0].avail_idx;
        let mut posted = [None; 4];
        for (j, (shape, p)) in shapes.iter().zip(posted.iter_mut()).enumerate() {
            let laid = shape.lay(SECTORS);
            let at = self.place(&laid);
            let head = base.wrapping_add(j as u16).wrapping_mul(16) % size;
            let mut descs = [(0u64, 0u32, false); MAX_SEGS];
            for ((d, s), a) in descs.iter_mut().zip(laid.segs()).zip(at) {
                *d = (a, s.len, s.write);
            }
            self.post_at(head, &descs[..laid.n]);
            *p = Some(Posted { head, laid, at });
        }
        if let (true, Some(first)) = (twice, posted[0]) {
            self.b.rings[0].publish(&self.b.mem, first.head);
        }
        let fits = match shapes.len() {
            1 => posted[0].is_some_and(|p| p.laid.n <= usize::from(size)),
            m => usize::from(size) >= 16 * m,
        };
        self.b.notify(0);
        if !(clean && fits) {
            return self.settle();
        }
        TALLY.add_n("requests modelled", shapes.len() as u64);
        let posted: Vec<Posted> = posted.iter().flatten().copied().collect();
        let mut exp = self.expect(&posted, twice);
        let n = exp.n;
        match exp.reset {
            Some(true) => assert!(self.b.needs_reset(), "no reset after {posted:?}"),
            _ => self.b.wait("the requests answered", |b| {
                b.needs_reset() || b.rings[0].used_idx(&b.mem) == before.wrapping_add(n as u16)
            }),
        }
        if exp.reset.is_none() && self.b.needs_reset() {
            // The second chain found the first in flight.
            (exp.n, exp.required) = (0, 0);
        } else if exp.reset.is_none() {
            exp.required = exp.n;
        }
        let wants = &exp.wants[..exp.n];
        if exp.reset == Some(false) {
            assert!(!self.b.needs_reset(), "a reset after {posted:?}");
        }
        let got = usize::from(self.used_idx().wrapping_sub(before));
        assert!(
            (exp.required..=exp.n).contains(&got),
            "{got} used elements for {wants:?} ({} required)",
            exp.required
        );
        self.file
            .read_exact_at(&mut self.scratch, 0)
            .expect("the disk file reads");
        let mut matched = [false; 8];
        for k in 0..got {
            let (id, len) = self.b.rings[0].used_elem(&self.b.mem, before.wrapping_add(k as u16));
            let w = (0..exp.n)
                .find(|&i| !matched[i] && u32::from(wants[i].head) == id && wants[i].len == len)
                .unwrap_or_else(|| panic!("used ({id}, {len}) for {wants:?}"));
            matched[w] = true;
            let others = posted.iter().map(|p| Answer::of(&p.laid, self.drive));
            let mixed = others.enumerate().any(|(j, a)| {
                j != wants[w].of && matches!(a, Answer::Write { .. }) && overlap(a, wants[w].answer)
            });
            self.check_answer(&posted[wants[w].of], &wants[w], !mixed);
        }
        assert!(
            matched[..exp.required].iter().all(|m| *m),
            "unanswered: {wants:?}"
        );
    }

    /// The used elements the model expects: those required first (the
    /// requests done at once, then the engine's), then those that may
    /// come (on io_uring, where the device may take the first chains of
    /// a batch on an earlier wake-up, the engine's before a chain that
    /// stops the device); and whether the device must then need a reset
    /// (`None`: the same head twice on io_uring, where the first may be
    /// done before the device sees the second).
    fn expect(&self, posted: &[Posted], twice: bool) -> Expected {
        let none = Want {
            head: 0,
            len: 0,
            status: 0,
            answer: Answer::Reset,
            of: 0,
        };
        let (mut now, mut n) = ([none; 8], 0);
        let (mut later, mut e) = ([none; 8], 0);
        let stop = |now: [Want; 8], n: usize, later: [Want; 8], e: usize, reset| {
            let mut wants = now;
            let optional = if self.uring { e } else { 0 };
            wants[n..n + optional].copy_from_slice(&later[..optional]);
            Expected {
                wants,
                required: n,
                n: n + optional,
                reset,
            }
        };
        for (of, p) in posted.iter().enumerate() {
            let answer = Answer::of(&p.laid, self.drive);
            let engine = answer.on_engine(self.flush_syncs);
            let Some((status, len)) = answer.reply(p.laid.totals().1) else {
                return stop(now, n, later, e, Some(true));
            };
            let want = Want {
                head: p.head,
                len,
                status,
                answer,
                of,
            };
            let copies = 1 + usize::from(twice && of == 0);
            if copies == 2 && engine {
                // Its head is in flight when the second chain comes.
                if !self.uring {
                    return stop(now, n, later, e, Some(true));
                }
                let wants = [want; 8];
                return Expected {
                    wants,
                    required: 0,
                    n: 2,
                    reset: None,
                };
            }
            for _ in 0..copies {
                if engine {
                    later[e] = want;
                    e += 1;
                } else {
                    now[n] = want;
                    n += 1;
                }
            }
        }
        now[n..n + e].copy_from_slice(&later[..e]);
        Expected {
            wants: now,
            required: n + e,
            n: n + e,
            reset: Some(false),
        }
    }

    /// One answer: its status byte, and the data it moved.
    fn check_answer(&mut self, p: &Posted, w: &Want, data: bool) {
        let segs = p.laid.segs();
        let last = segs
            .iter()
            .rposition(|s| s.write)
            .expect("a writable segment");
        let status_at = p.at[last] + u64::from(segs[last].len) - 1;
        let status: u8 = self
            .b
            .mem
            .read_obj(GuestAddress(status_at))
            .expect("in RAM");
        assert_eq!(status, w.status, "the status of {:?}", p.laid);
        TALLY.add(if status == S_OK {
            "answered ok"
        } else {
            "answered an error"
        });
        let (offset, len) = match w.answer {
            Answer::Read { offset, len } | Answer::Write { offset, len } if data => (offset, len),
            Answer::GetId => (0, w.len - 1),
            _ => return,
        };
        let mut serial = [0u8; 20];
        serial[..ID.len()].copy_from_slice(ID);
        let mut got = [0u8; 4700];
        let mut done = 0usize;
        match w.answer {
            Answer::Write { .. } => {
                let file = &self.scratch[offset as usize..][..len as usize];
                let want = (0..u64::from(len)).map(|i| p.laid.readable_byte(16 + i).unwrap_or(0));
                assert!(file.iter().copied().eq(want), "a write's data in the file");
                return;
            }
            _ => {
                // The writable stream, from its start.
                for (s, &a) in segs.iter().zip(&p.at).filter(|(s, _)| s.write) {
                    let n = (s.len as usize).min(len as usize - done);
                    self.b
                        .mem
                        .read_slice(&mut got[done..done + n], GuestAddress(a))
                        .expect("in RAM");
                    done += n;
                }
            }
        }
        let want: &[u8] = match w.answer {
            Answer::GetId => &serial[..len as usize],
            _ => &self.scratch[offset as usize..][..len as usize],
        };
        assert!(got[..done] == *want, "the data of {:?}", w.answer);
    }
}
