//! A service's `logFile`, rotated by size: before a line would take the file past `logMaxBytes`,
//! `<logFile>.N-1` becomes `.N` (the oldest beyond `logKeep` is removed), the file becomes `.1`,
//! and a new file is started. Rotation happens between lines, so every line is written whole.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

pub struct RotatingLog {
    path: PathBuf,
    max_bytes: u64,
    keep: u32,
    file: BufWriter<File>,
    /// Bytes in the current file.
    written: u64,
}

impl RotatingLog {
    /// Appends to `path` (its size so far counts toward the limit).
    pub fn open(path: &Path, max_bytes: u64, keep: u32, buffer: usize) -> io::Result<Self> {
        let file = File::options().create(true).append(true).open(path)?;
        let written = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(Self { path: path.to_path_buf(), max_bytes, keep, file: BufWriter::with_capacity(buffer, file), written })
    }

    /// Writes one line (and its newline), rotating first when it would not fit. A line longer
    /// than the limit on its own gets a file to itself.
    pub fn write_line(&mut self, line: &str) -> io::Result<()> {
        let size = line.len() as u64 + 1;
        if self.written > 0 && self.written + size > self.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(line.as_bytes())?;
        self.file.write_all(b"\n")?;
        self.written += size;
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }

    fn rotated(&self, n: u32) -> PathBuf {
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{n}"));
        PathBuf::from(name)
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        if self.keep == 0 {
            self.file = BufWriter::with_capacity(self.file.capacity(), File::create(&self.path)?);
        } else {
            let _ = std::fs::remove_file(self.rotated(self.keep));
            for n in (1..self.keep).rev() {
                let from = self.rotated(n);
                if from.exists() {
                    std::fs::rename(&from, self.rotated(n + 1))?;
                }
            }
            std::fs::rename(&self.path, self.rotated(1))?;
            let file = File::options().create(true).append(true).open(&self.path)?;
            self.file = BufWriter::with_capacity(self.file.capacity(), file);
        }
        self.written = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_size_keeps_n_files_and_loses_no_line_within_them() {
        let dir = std::env::temp_dir().join(format!("gpu-sidecar-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("svc.log");
        let mut log = RotatingLog::open(&path, 100, 2, 64).unwrap();
        for n in 0..40 {
            log.write_line(&format!("line {n:04}")).unwrap(); // 10 bytes each with its newline
        }
        log.flush().unwrap();
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        let (current, one, two) = (read(&path), read(&dir.join("svc.log.1")), read(&dir.join("svc.log.2")));
        assert!(!dir.join("svc.log.3").exists());
        for text in [&current, &one, &two] {
            assert!(text.len() <= 100, "{}", text.len());
        }
        let all: Vec<String> = [two, one, current].concat().lines().map(String::from).collect();
        let expected: Vec<String> = (10..40).map(|n| format!("line {n:04}")).collect();
        assert_eq!(all, expected);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
