//! Small host-side helpers: the terminal in raw mode, SIGINT/SIGTERM as a
//! signalfd, the process's peak RSS.

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

use vmm_sys_util::signal::create_sigset;

/// Puts a terminal in raw mode and restores its exact previous settings
/// when dropped (on every exit path, including unwinding).
pub struct RawTerminal {
    fd: RawFd,
    saved: libc::termios,
}

impl RawTerminal {
    /// Raw mode on `fd` if it is a terminal; `None` otherwise.
    pub fn enter(fd: RawFd) -> io::Result<Option<RawTerminal>> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(fd) } != 1 {
            return Ok(None);
        }
        let mut saved = MaybeUninit::<libc::termios>::uninit();
        // SAFETY: tcgetattr fills the whole termios on success, checked below.
        if unsafe { libc::tcgetattr(fd, saved.as_mut_ptr()) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: tcgetattr succeeded, so `saved` is initialised.
        let saved = unsafe { saved.assume_init() };
        let mut raw = saved;
        // SAFETY: cfmakeraw only modifies the struct it is given.
        unsafe { libc::cfmakeraw(&mut raw) };
        // Keep output post-processing so the monitor's own messages stay readable.
        raw.c_oflag |= libc::OPOST;
        // SAFETY: `raw` is a valid termios; the result is checked.
        if unsafe { libc::tcsetattr(fd, libc::TCSANOW, &raw) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Some(RawTerminal { fd, saved }))
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores settings read from this same descriptor.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// SIGINT and SIGTERM, blocked for the whole process and read from a
/// signalfd by the event loop.
pub struct Signals {
    fd: OwnedFd,
}

impl Signals {
    /// Blocks the signals in the calling thread (threads spawned later
    /// inherit the mask) and opens the signalfd. Call before any thread starts.
    pub fn block_and_open() -> io::Result<Signals> {
        let set = create_sigset(&[libc::SIGINT, libc::SIGTERM]).map_err(io::Error::from)?;
        // SAFETY: `set` is a valid sigset; a null old-set pointer is allowed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: creates a new descriptor from a valid set; checked below.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Signals { fd })
    }

    /// The next pending signal number, if any.
    pub fn read(&self) -> Option<i32> {
        let mut info = MaybeUninit::<libc::signalfd_siginfo>::uninit();
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        // SAFETY: reads at most `size` bytes into a buffer of that size.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), info.as_mut_ptr().cast(), size) };
        if n as usize != size {
            return None;
        }
        // SAFETY: the kernel wrote a whole signalfd_siginfo.
        Some(unsafe { info.assume_init() }.ssi_signo as i32)
    }
}

impl AsRawFd for Signals {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Name of a signal number, for messages.
pub fn signal_name(sig: i32) -> String {
    match sig {
        libc::SIGINT => "SIGINT".into(),
        libc::SIGTERM => "SIGTERM".into(),
        other => format!("signal {other}"),
    }
}

/// A /proc file opened once and read again from its start with `pread`:
/// no path lookup per read, and no `open` at all once the monitor runs in
/// its sandbox (whose root has no /proc of its own to open from).
pub struct ProcFile(std::fs::File);

impl ProcFile {
    pub fn open(path: &str) -> io::Result<Self> {
        std::fs::File::open(path).map(ProcFile)
    }

    /// The file's text now (its first 4 KiB), handed to `parse`.
    pub fn parse<T>(&self, parse: impl FnOnce(&str) -> Option<T>) -> Option<T> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 4096];
        let n = self.0.read_at(&mut buf, 0).ok()?;
        parse(std::str::from_utf8(&buf[..n]).ok()?)
    }
}

/// `/proc/self/status`, opened on first use (call [`open_proc`] at start-up).
static SELF_STATUS: OnceLock<Option<ProcFile>> = OnceLock::new();

/// Opens what the monitor reads of /proc for itself (before any sandbox).
pub fn open_proc() {
    self_status();
}

fn self_status() -> Option<&'static ProcFile> {
    SELF_STATUS
        .get_or_init(|| ProcFile::open("/proc/self/status").ok())
        .as_ref()
}

/// A `kB` field of /proc/self/status, in KiB.
fn status_kib(field: &str) -> Option<u64> {
    self_status()?.parse(|text| {
        text.lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    })
}

/// Peak resident set size of this process (VmHWM), in KiB.
pub fn peak_rss_kib() -> Option<u64> {
    status_kib("VmHWM:")
}

/// Resident set size of this process now (VmRSS), in KiB.
pub fn rss_kib() -> Option<u64> {
    status_kib("VmRSS:")
}

/// The calling thread's kernel id and CPU-time clock.
pub fn current_thread_ids() -> Option<(libc::pid_t, libc::clockid_t)> {
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    let mut clock: libc::clockid_t = 0;
    // SAFETY: pthread_self is always valid for the calling thread, and
    // `clock` is a valid place for the result; the return code is checked.
    let rc = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
    (rc == 0).then_some((tid, clock))
}

/// The CPU-time clock of a thread this process started and has not joined.
pub fn thread_cpu_clock<T>(thread: &std::thread::JoinHandle<T>) -> Option<libc::clockid_t> {
    use std::os::unix::thread::JoinHandleExt;
    let mut clock: libc::clockid_t = 0;
    // SAFETY: the pthread is valid until it is joined, which needs the
    // handle borrowed here; `clock` is a valid place for the result, and
    // the return code is checked.
    let rc = unsafe { libc::pthread_getcpuclockid(thread.as_pthread_t(), &mut clock) };
    (rc == 0).then_some(clock)
}

/// CPU time consumed so far on a thread CPU-time clock, in ns (`None` once
/// the thread has exited).
pub fn thread_cpu_ns(clock: libc::clockid_t) -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to fill; the result is checked.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// CPU time of the calling thread, in ns.
pub fn current_thread_cpu_ns() -> u64 {
    thread_cpu_ns(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or(0)
}

/// The calling thread's /proc stat file, for [`thread_runnable`].
pub fn own_stat() -> io::Result<ProcFile> {
    ProcFile::open("/proc/thread-self/stat")
}

/// Whether the thread whose stat file `stat` is (its [`own_stat`]) is
/// running or waiting for a CPU (state `R`), as opposed to sleeping (a
/// halted vCPU sleeps in the kernel); `None` once the kernel has reaped
/// it. A thread that is exiting (even one already joined: `join` returns
/// when the kernel clears its id, before it is reaped) may still read as
/// running or as a zombie for a moment.
pub fn thread_runnable(stat: &ProcFile) -> Option<bool> {
    stat.parse(|text| {
        // The state follows the command name, which is in parentheses and
        // may itself contain spaces or parentheses: take what follows the
        // last ')'.
        let state = text.rsplit_once(')')?.1.split_whitespace().next()?;
        Some(state == "R")
    })
}

/// The calling thread's effective and permitted capabilities, as one mask
/// (0 when it has none).
pub fn capabilities() -> io::Result<u64> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const VERSION_3: u32 = 0x2008_0522;
    let mut header = Header {
        version: VERSION_3,
        pid: 0,
    };
    let mut data = [Data::default(); 2];
    // SAFETY: capget writes two `Data` for version 3 into `data`, which
    // has room for exactly that; `header` is a valid header.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capget,
            std::ptr::addr_of_mut!(header),
            data.as_mut_ptr(),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(data.iter().enumerate().fold(0, |mask, (i, d)| {
        mask | (u64::from(d.effective | d.permitted) << (32 * i))
    }))
}

/// Pins the calling thread to `cpus`.
pub fn set_thread_affinity(cpus: &[usize]) -> io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: CPU_SET writes one bit inside `set`; `cpu` is bounded by
        // validation to the online CPUs, far below CPU_SETSIZE.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the size given.
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// How many nice levels the monitor's own threads (the event loop, the
/// life-cycle workers, the output writers) run above the vCPU threads,
/// when the host allows it. With more busy vCPUs than CPUs, a thread of
/// the monitor at the vCPUs' level gets one vCPU's share of a CPU: with
/// 200 spinning vCPUs on one CPU, 0.5 %, far less than the scheduler's
/// ticks and a burst of builds need.
pub const MONITOR_NICE_BOOST: i32 = 10;

/// The nice value VMs run at, once the monitor has raised its own threads.
static VM_NICE: std::sync::OnceLock<i32> = std::sync::OnceLock::new();

/// The calling thread's nice value.
pub fn thread_nice() -> io::Result<i32> {
    // SAFETY: errno is thread-local; clearing it tells a nice of -1 from
    // an error, as getpriority(2) documents.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: PRIO_PROCESS with 0 is the calling thread; no memory is passed.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    let err = io::Error::last_os_error();
    match (nice, err.raw_os_error()) {
        (-1, Some(errno)) if errno != 0 => Err(err),
        _ => Ok(nice),
    }
}

/// Sets the calling thread's nice value (threads it starts inherit it).
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: PRIO_PROCESS with 0 is the calling thread; no memory is passed.
    let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, nice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Raises the calling thread, and every thread it starts from now on, by
/// [`MONITOR_NICE_BOOST`] levels (this needs CAP_SYS_NICE or a high
/// enough RLIMIT_NICE); vCPU and device threads go back to the VMs' level
/// with [`leave_monitor_priority`]. Returns (the VMs' nice, the monitor's).
pub fn raise_monitor_priority() -> io::Result<(i32, i32)> {
    let base = thread_nice()?;
    let raised = (base - MONITOR_NICE_BOOST).max(-20);
    set_thread_nice(raised)?;
    let vms = *VM_NICE.get_or_init(|| base);
    Ok((vms, raised))
}

/// Puts a vCPU or device thread, started by a raised monitor thread, back
/// at the VMs' nice value (lowering a priority needs no privilege).
pub fn leave_monitor_priority() -> io::Result<()> {
    match VM_NICE.get() {
        Some(&nice) => set_thread_nice(nice),
        None => Ok(()),
    }
}

/// The event loop's real-time priority.
pub const LOOP_RT_PRIORITY: i32 = 2;
/// The statistics and output writers': below the loop, which may wait for
/// a lock (malloc's) a writer holds, and above every normal thread, so that
/// the writer then runs at once and lets it go.
pub const WRITER_RT_PRIORITY: i32 = 1;

/// [`become_realtime`] for a thread of the monitor (`who`, for the debug
/// log), which keeps a normal priority where the host does not allow it.
pub fn try_realtime(priority: i32, who: &str) {
    match become_realtime(priority) {
        Ok(()) => log::debug!("{who} runs SCHED_FIFO {priority}"),
        Err(e) => log::debug!("{who} keeps a normal priority ({e})"),
    }
}

/// The calling thread runs SCHED_FIFO at `priority`, ahead of every normal
/// thread on its CPU; threads it starts do not inherit it
/// (SCHED_RESET_ON_FORK). Needs CAP_SYS_NICE or RLIMIT_RTPRIO.
pub fn become_realtime(priority: i32) -> io::Result<()> {
    let param = libc::sched_param {
        sched_priority: priority,
    };
    // SAFETY: pid 0 is the calling thread; `param` is a valid sched_param
    // that outlives the call.
    let rc = unsafe {
        libc::sched_setscheduler(0, libc::SCHED_FIFO | libc::SCHED_RESET_ON_FORK, &param)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Number of online host CPUs.
pub fn online_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peak_rss_is_readable() {
        let kib = peak_rss_kib().expect("VmHWM in /proc/self/status");
        assert!(kib > 100, "{kib} KiB");
    }

    #[test]
    fn a_spinning_thread_is_runnable_and_its_clock_advances() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let (tx, rx) = std::sync::mpsc::channel();
        let t = std::thread::spawn(move || {
            tx.send((current_thread_ids().unwrap(), own_stat().unwrap()))
                .unwrap();
            while !s.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        let ((_, clock), stat) = rx.recv().unwrap();
        let before = thread_cpu_ns(clock).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let after = thread_cpu_ns(clock).unwrap();
        assert!(after > before, "{before} -> {after}");
        assert_eq!(thread_runnable(&stat), Some(true));
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        // `join` returns when the kernel clears the thread's id, a little
        // before it reaps the thread: until then it may read as running or
        // as a zombie.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while thread_runnable(&stat).is_some() {
            assert!(std::time::Instant::now() < deadline, "never reaped");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn the_spawner_reads_a_threads_clock_without_waiting_for_it() {
        use std::sync::atomic::{AtomicBool, Ordering};
        use std::sync::Arc;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let t = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                std::hint::spin_loop();
            }
        });
        let clock = thread_cpu_clock(&t).expect("a clock for a live thread");
        let before = thread_cpu_ns(clock).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let after = thread_cpu_ns(clock).unwrap();
        assert!(after > before, "{before} -> {after}");
        stop.store(true, Ordering::Relaxed);
        t.join().unwrap();
        // The same clock the thread itself would report (asked while it lives).
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let own = std::thread::spawn(move || {
            tx.send(current_thread_ids().unwrap().1).unwrap();
            let _ = done_rx.recv();
        });
        assert_eq!(thread_cpu_clock(&own), Some(rx.recv().unwrap()));
        drop(done_tx);
        own.join().unwrap();
    }

    #[test]
    fn monitor_threads_are_raised_and_vcpu_threads_go_back() {
        // In a thread of its own: nice values are per thread.
        std::thread::spawn(|| {
            let base = thread_nice().unwrap();
            let (vms, raised) = match raise_monitor_priority() {
                Ok(v) => v,
                // Not allowed here (no CAP_SYS_NICE): nothing changed.
                Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                    assert_eq!(thread_nice().unwrap(), base);
                    return;
                }
                Err(e) => panic!("{e}"),
            };
            assert_eq!((vms, raised), (base, (base - MONITOR_NICE_BOOST).max(-20)));
            assert_eq!(thread_nice().unwrap(), raised);
            // A thread it starts inherits the raised value, until it leaves it.
            let child = std::thread::spawn(move || {
                let inherited = thread_nice().unwrap();
                leave_monitor_priority().unwrap();
                (inherited, thread_nice().unwrap())
            });
            assert_eq!(child.join().unwrap(), (raised, base));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_sleeping_thread_is_not_runnable() {
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            tx.send(own_stat().unwrap()).unwrap();
            let _ = done_rx.recv();
        });
        let stat = rx.recv().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(thread_runnable(&stat), Some(false));
        drop(done_tx);
        t.join().unwrap();
    }

    #[test]
    fn raw_mode_is_a_no_op_off_a_terminal() {
        let (r, _w) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(RawTerminal::enter(r.as_raw_fd()).unwrap().is_none());
    }

    #[test]
    fn sigterm_arrives_through_the_signalfd() {
        // The mask is per thread: only this test's thread blocks the signals.
        let signals = Signals::block_and_open().unwrap();
        assert_eq!(signals.read(), None, "nothing pending yet");
        // SAFETY: sends SIGTERM to this thread, which blocks it, so it stays pending.
        let rc = unsafe { libc::pthread_kill(libc::pthread_self(), libc::SIGTERM) };
        assert_eq!(rc, 0);
        assert_eq!(signals.read(), Some(libc::SIGTERM));
        assert_eq!(signal_name(libc::SIGTERM), "SIGTERM");
        assert_eq!(
            signal_name(libc::SIGHUP),
            format!("signal {}", libc::SIGHUP)
        );
    }

    /// The terminal side of a fresh pseudo-terminal.
    fn pty() -> (OwnedFd, OwnedFd) {
        // SAFETY: plain calls on descriptors this test owns; results checked.
        unsafe {
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(master >= 0);
            let master = OwnedFd::from_raw_fd(master);
            assert_eq!(libc::grantpt(master.as_raw_fd()), 0);
            assert_eq!(libc::unlockpt(master.as_raw_fd()), 0);
            let name = libc::ptsname(master.as_raw_fd());
            assert!(!name.is_null());
            let tty = libc::open(name, libc::O_RDWR | libc::O_NOCTTY);
            assert!(tty >= 0);
            (master, OwnedFd::from_raw_fd(tty))
        }
    }

    fn termios(fd: RawFd) -> libc::termios {
        let mut t = MaybeUninit::<libc::termios>::uninit();
        // SAFETY: tcgetattr fills `t` on success, asserted before use.
        unsafe {
            assert_eq!(libc::tcgetattr(fd, t.as_mut_ptr()), 0);
            t.assume_init()
        }
    }

    #[test]
    fn raw_mode_passes_every_key_and_restores_the_exact_settings() {
        let (_master, tty) = pty();
        let fd = tty.as_raw_fd();
        // A user setting that a generic "canonical mode" reset would undo.
        let mut before = termios(fd);
        before.c_lflag &= !libc::ECHO;
        // SAFETY: a valid termios for this descriptor; checked.
        assert_eq!(unsafe { libc::tcsetattr(fd, libc::TCSANOW, &before) }, 0);
        let before = termios(fd);
        {
            let _raw = RawTerminal::enter(fd)
                .unwrap()
                .expect("a pty is a terminal");
            let raw = termios(fd);
            assert_eq!(
                raw.c_lflag & (libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN),
                0
            );
            // Ctrl-S/Ctrl-Q and CR reach the guest unchanged.
            assert_eq!(raw.c_iflag & (libc::IXON | libc::ICRNL), 0);
            assert_ne!(
                raw.c_oflag & libc::OPOST,
                0,
                "monitor messages stay readable"
            );
        }
        let after = termios(fd);
        assert_eq!(
            (after.c_iflag, after.c_oflag, after.c_cflag, after.c_lflag),
            (
                before.c_iflag,
                before.c_oflag,
                before.c_cflag,
                before.c_lflag
            )
        );
    }
}
