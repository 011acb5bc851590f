//! Where a VM's serial output goes when several VMs share the terminal:
//! whole lines, each prefixed with the VM's name.

use std::io::{self, Write};

/// Serial output that reaches stdout at once (unbuffered), as a single
/// VM's console does.
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

/// Longest partial line kept before it is written anyway.
const MAX_LINE: usize = 4096;

/// Writes whole lines to `out`, each starting with `prefix`, so lines of
/// different VMs never interleave mid-line.
pub struct Prefixed<W: Write> {
    prefix: Vec<u8>,
    line: Vec<u8>,
    out: W,
}

impl<W: Write> Prefixed<W> {
    pub fn new(name: &str, out: W) -> Self {
        Prefixed {
            prefix: format!("{name}| ").into_bytes(),
            line: Vec::with_capacity(128),
            out,
        }
    }

    fn emit(&mut self) -> io::Result<()> {
        let mut whole = Vec::with_capacity(self.prefix.len() + self.line.len());
        whole.extend_from_slice(&self.prefix);
        whole.append(&mut self.line);
        self.out.write_all(&whole)?;
        self.out.flush()
    }
}

impl<W: Write> Write for Prefixed<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        for &b in buf {
            if b == b'\r' {
                continue;
            }
            self.line.push(b);
            if b == b'\n' || self.line.len() >= MAX_LINE {
                self.emit()?;
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

impl<W: Write> Drop for Prefixed<W> {
    fn drop(&mut self) {
        if !self.line.is_empty() {
            self.line.push(b'\n');
            let _ = self.emit();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_prefixed_and_kept_whole() {
        let mut buf = Vec::new();
        {
            let mut p = Prefixed::new("web", &mut buf);
            p.write_all(b"hel").unwrap();
            p.write_all(b"lo\r\nwor").unwrap();
            p.write_all(b"ld\n").unwrap();
            p.write_all(b"tail").unwrap();
        }
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "web| hello\nweb| world\nweb| tail\n"
        );
    }
}
