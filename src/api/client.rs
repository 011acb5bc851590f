//! The client side: send one request line, read one reply line
//! (`hearth ctl`).

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::Value;

/// How long the client waits for the monitor (a create or restart waits
/// for the VM to be built).
const CLIENT_TIMEOUT: Duration = Duration::from_secs(60);

/// Sends `request` to the control socket at `socket` and returns the reply.
pub fn call(socket: &Path, request: &Value) -> io::Result<Value> {
    let stream = UnixStream::connect(socket)?;
    stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    let mut line = request.to_string();
    line.push('\n');
    // A monitor that refuses the client at once (not in its access list,
    // too many connections) writes its reason and closes: the write may
    // then fail, and the reason is still there to read.
    if let Err(e) = (&stream).write_all(line.as_bytes()) {
        if !matches!(
            e.kind(),
            io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
        ) {
            return Err(e);
        }
    }
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply)?;
    if reply.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the monitor closed the connection without a reply",
        ));
    }
    serde_json::from_str(&reply).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("the reply is not JSON: {e}"),
        )
    })
}
