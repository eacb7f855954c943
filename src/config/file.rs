//! Reading files a caller names (config files, telemetry recordings) without trusting them to be
//! ordinary files: `/dev/zero` never ends, a FIFO with no writer blocks `open` forever, and a
//! directory cannot be read at all. Only a regular file is read, and never past a size cap.

use std::fs::File;
use std::io::{BufRead, Read};
use std::path::Path;

use crate::error::{ErrorCode, SidecarError, SidecarResult};

/// Opens `path` for reading if it is a regular file. The open itself never blocks (on Unix it is
/// `O_NONBLOCK`, so a FIFO with no writer opens at once and is then refused), and the type check
/// is made on the opened file, so a path swapped for a FIFO after a `stat` cannot slip through.
/// Errors are `IO_ERROR` (cannot open) or `INVALID_ARGUMENT` (not a regular file).
pub fn open_regular_file(path: &Path) -> SidecarResult<File> {
    let mut options = File::options();
    options.read(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NONBLOCK);
    let file = options
        .open(path)
        .map_err(|e| SidecarError::new(ErrorCode::Io, format!("cannot open {}: {e}", path.display())))?;
    let metadata = file
        .metadata()
        .map_err(|e| SidecarError::new(ErrorCode::Io, format!("cannot stat {}: {e}", path.display())))?;
    if !metadata.is_file() {
        return Err(SidecarError::invalid_argument(format!(
            "{}: not a regular file ({})",
            path.display(),
            describe_file_type(&metadata.file_type())
        )));
    }
    Ok(file)
}

/// Reads a whole regular file of at most `max_bytes` (see [`open_regular_file`]). A bigger file
/// is `INVALID_ARGUMENT`; the cap also holds for a file that grows while it is read.
pub fn read_regular_file(path: &Path, max_bytes: u64) -> SidecarResult<Vec<u8>> {
    let file = open_regular_file(path)?;
    let too_big = |size: u64| {
        SidecarError::invalid_argument(format!(
            "{}: too large: {size} bytes, the limit is {}",
            path.display(),
            describe_size(max_bytes)
        ))
    };
    let size = file.metadata().map(|m| m.len()).unwrap_or(0);
    if size > max_bytes {
        return Err(too_big(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(max_bytes + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| SidecarError::new(ErrorCode::Io, format!("cannot read {}: {e}", path.display())))?;
    if bytes.len() as u64 > max_bytes {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}

/// What one [`read_bounded_line`] call found.
#[derive(Debug, PartialEq, Eq)]
pub enum BoundedLine {
    /// A line that ended with `\n` (not included in the buffer).
    Complete,
    /// The last line of the input, with no `\n` after it.
    Unterminated,
    /// The line reached `max_bytes` before its end; the rest of it was skipped.
    TooLong,
    /// Nothing left to read.
    End,
}

/// Reads one `\n`-terminated line into `buf` (cleared first), keeping at most `max_bytes` of it,
/// so one endless line cannot take all memory.
pub fn read_bounded_line(
    reader: &mut impl BufRead,
    buf: &mut Vec<u8>,
    max_bytes: usize,
) -> std::io::Result<BoundedLine> {
    buf.clear();
    let mut read_any = false;
    let mut too_long = false;
    loop {
        let available = reader.fill_buf()?;
        if available.is_empty() {
            return Ok(match (read_any, too_long) {
                (false, _) => BoundedLine::End,
                (true, true) => BoundedLine::TooLong,
                (true, false) => BoundedLine::Unterminated,
            });
        }
        read_any = true;
        let (chunk, found_end) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..i], true),
            None => (available, false),
        };
        let room = max_bytes.saturating_sub(buf.len());
        if chunk.len() > room {
            too_long = true;
        }
        buf.extend_from_slice(&chunk[..chunk.len().min(room)]);
        let consumed = chunk.len() + usize::from(found_end);
        reader.consume(consumed);
        if found_end {
            return Ok(if too_long { BoundedLine::TooLong } else { BoundedLine::Complete });
        }
    }
}

fn describe_file_type(file_type: &std::fs::FileType) -> &'static str {
    if file_type.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if file_type.is_fifo() {
            return "a FIFO";
        }
        if file_type.is_char_device() {
            return "a character device";
        }
        if file_type.is_block_device() {
            return "a block device";
        }
        if file_type.is_socket() {
            return "a socket";
        }
    }
    "not a plain file"
}

/// `16 MiB`, `2.5 KiB`, `300 bytes`.
pub fn describe_size(bytes: u64) -> String {
    const KIB: u64 = 1 << 10;
    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;
    let scaled = |unit: u64, name: &str| {
        let value = bytes as f64 / unit as f64;
        if value.fract() == 0.0 {
            format!("{value:.0} {name}")
        } else {
            format!("{value:.1} {name}")
        }
    };
    match bytes {
        b if b >= GIB => scaled(GIB, "GiB"),
        b if b >= MIB => scaled(MIB, "MiB"),
        b if b >= KIB => scaled(KIB, "KiB"),
        b => format!("{b} bytes"),
    }
}

/// A fresh path under the system temp dir, unique per test and per process.
#[cfg(test)]
pub(crate) fn temp_path(name: &str) -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("gpu-sidecar-{}-{n}-{name}", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;
    use std::time::{Duration, Instant};

    fn temp(name: &str) -> std::path::PathBuf {
        temp_path(name)
    }

    #[test]
    fn reads_a_regular_file_up_to_the_cap() {
        let path = temp("file-cap.txt");
        std::fs::write(&path, b"0123456789").unwrap();
        assert_eq!(read_regular_file(&path, 10).unwrap(), b"0123456789");
        let e = read_regular_file(&path, 9).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(e.message.ends_with("too large: 10 bytes, the limit is 9 bytes"), "{}", e.message);
        std::fs::remove_file(&path).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn refuses_devices_directories_and_fifos_without_blocking() {
        for (path, kind) in [("/dev/zero", "a character device"), ("/tmp", "a directory")] {
            let e = read_regular_file(Path::new(path), 1 << 20).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidArgument);
            assert_eq!(e.message, format!("{path}: not a regular file ({kind})"));
        }
        let fifo = temp("file.fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let started = Instant::now();
        let e = read_regular_file(&fifo, 1 << 20).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(e.message.ends_with("not a regular file (a FIFO)"), "{}", e.message);
        std::fs::remove_file(&fifo).unwrap();
        assert_eq!(read_regular_file(&fifo, 1).unwrap_err().code, ErrorCode::Io);
    }

    #[test]
    fn bounded_lines_keep_at_most_the_cap_and_tell_a_cut_last_line() {
        let mut input = Cursor::new(b"short\nlonger than eight\n\nend".to_vec());
        let mut buf = vec![];
        let mut got = vec![];
        loop {
            let kind = read_bounded_line(&mut input, &mut buf, 8).unwrap();
            if kind == BoundedLine::End {
                break;
            }
            got.push((String::from_utf8(buf.clone()).unwrap(), kind));
        }
        assert_eq!(
            got,
            vec![
                ("short".to_string(), BoundedLine::Complete),
                ("longer t".to_string(), BoundedLine::TooLong),
                (String::new(), BoundedLine::Complete),
                ("end".to_string(), BoundedLine::Unterminated),
            ]
        );
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(describe_size(16 << 20), "16 MiB");
        assert_eq!(describe_size(2560), "2.5 KiB");
        assert_eq!(describe_size(300), "300 bytes");
    }
}
