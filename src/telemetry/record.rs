//! Recording samples to JSONL (one `Sample` per line) and playing them back. A recording may also
//! hold event lines (`{"at", "event": {kind, subject, label}}`): what happened beside the samples
//! (a service ready, a lease revoked), which an incident report marks on its time axes. A replay
//! checks them and skips them.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::options::ReplaySpeed;
use super::sample::{parse_sample_line, Sample};
use crate::config::file::{describe_size, open_regular_file, read_bounded_line, BoundedLine};
use crate::error::{ErrorCode, SidecarError, SidecarResult};

/// Appends samples to a JSONL file, one line each. The file is unbuffered, so each line reaches
/// the OS as soon as it is appended and a crash loses at most the sample being written.
pub struct Recorder {
    path: PathBuf,
    file: File,
}

impl Recorder {
    /// Opens `path` for appending, creating it if needed.
    pub fn open(path: &Path) -> SidecarResult<Self> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|e| io_error(format!("cannot open record file {}: {e}", path.display())))?;
        Ok(Self { path: path.to_path_buf(), file })
    }

    /// Appends one sample as one line.
    pub fn append(&mut self, sample: &Sample) -> SidecarResult<()> {
        let mut line = serde_json::to_vec(sample)
            .map_err(|e| SidecarError::new(ErrorCode::Internal, format!("cannot serialize a sample: {e}")))?;
        line.push(b'\n');
        // One write call per line keeps lines whole when another process appends too.
        self.file
            .write_all(&line)
            .map_err(|e| io_error(format!("cannot write record file {}: {e}", self.path.display())))
    }
}

/// What a recorded event line says happened. (Alerts are not recorded: a report raises them
/// again from the samples.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(inline)]
#[serde(rename_all = "kebab-case")]
pub enum RecordedEventKind {
    ServiceReady,
    ServiceFailed,
    ServiceRestarted,
    ServiceEvicted,
    /// A lease the arbiter's hold watchdog revoked.
    LeaseRevoked,
}

/// One event beside the samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordedEventMark {
    pub kind: RecordedEventKind,
    /// The service or GPU key it is about.
    pub subject: Option<String>,
    /// What happened, in words (the report shows it on hover and in its events table).
    pub label: String,
}

/// An event line of a recording: `{"at": <epoch ms>, "event": {kind, subject, label}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(rename = "RecordedEvent")]
#[serde(deny_unknown_fields)]
pub struct RecordedEvent {
    pub at: f64,
    pub event: RecordedEventMark,
}

/// The largest recording replayed. A day recorded at one sample a second on a node with a few
/// GPUs and a dozen processes is about 200 MB; the cap leaves room for more and refuses
/// something that is no recording at all.
pub const MAX_RECORDING_BYTES: u64 = 1 << 30;

/// The longest line read from a recording; a sample is a few KB.
pub const MAX_SAMPLE_LINE_BYTES: usize = 1 << 20;

/// Samples from a JSONL recording, in file order. Blank lines are skipped. A last line with no
/// newline that is not a whole sample is what a crash while recording leaves: playback ends
/// before it, and [`Replay::cut_last_line`] says so.
pub struct Replay {
    path: PathBuf,
    reader: BufReader<std::io::Take<File>>,
    buf: Vec<u8>,
    line_number: usize,
    played: usize,
    cut_last_line: Option<SidecarError>,
    events: Vec<RecordedEvent>,
}

impl Replay {
    /// Opens a recording (a regular file of at most [`MAX_RECORDING_BYTES`]) and checks every line
    /// first, so a bad file fails here, with its line number, rather than midway through playback.
    pub fn open(path: &Path) -> SidecarResult<Self> {
        let mut check = Self::open_unchecked(path)?;
        for sample in &mut check {
            sample?;
        }
        if check.played == 0 {
            return Err(SidecarError::invalid_argument(match check.cut_last_line {
                Some(cut) => format!("{}; there is no whole sample before it", cut.message),
                None => format!("{}: the replay file is empty", path.display()),
            }));
        }
        Self::open_unchecked(path)
    }

    fn open_unchecked(path: &Path) -> SidecarResult<Self> {
        let file =
            open_regular_file(path).map_err(|e| SidecarError::new(e.code, format!("replay file: {}", e.message)))?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        if size > MAX_RECORDING_BYTES {
            return Err(SidecarError::invalid_argument(format!(
                "replay file: {}: too large: {size} bytes, the limit is {}",
                path.display(),
                describe_size(MAX_RECORDING_BYTES)
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            reader: BufReader::new(file.take(MAX_RECORDING_BYTES)),
            buf: Vec::new(),
            line_number: 0,
            played: 0,
            cut_last_line: None,
            events: Vec::new(),
        })
    }

    /// Set once playback reached a cut-off last line: what it was and how many samples played.
    pub fn cut_last_line(&self) -> Option<&SidecarError> {
        self.cut_last_line.as_ref()
    }

    /// The event lines read so far, in file order (a replay plays samples only).
    pub fn take_events(&mut self) -> Vec<RecordedEvent> {
        std::mem::take(&mut self.events)
    }
}

impl Iterator for Replay {
    type Item = SidecarResult<Sample>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let kind = read_bounded_line(&mut self.reader, &mut self.buf, MAX_SAMPLE_LINE_BYTES);
            self.line_number += 1;
            let where_ = format!("{}:{}", self.path.display(), self.line_number);
            let kind = match kind {
                Ok(BoundedLine::End) => return None,
                Ok(kind) => kind,
                Err(e) => return Some(Err(io_error(format!("{where_}: cannot read: {e}")))),
            };
            if kind == BoundedLine::TooLong {
                return Some(Err(SidecarError::invalid_argument(format!(
                    "{where_}: not a telemetry sample: the line is longer than {}",
                    describe_size(MAX_SAMPLE_LINE_BYTES as u64)
                ))));
            }
            let line = String::from_utf8_lossy(&self.buf);
            if line.trim().is_empty() {
                continue;
            }
            // An event line fails as an event at once on a sample's second key ("nvml").
            let event_error = match serde_json::from_str::<RecordedEvent>(&line) {
                Ok(event) => {
                    self.events.push(event);
                    continue;
                }
                Err(e) => e,
            };
            return match parse_sample_line(&line) {
                Ok(sample) => {
                    self.played += 1;
                    Some(Ok(sample))
                }
                Err(_) if kind == BoundedLine::Complete && is_event_line(&line) => {
                    Some(Err(SidecarError::invalid_argument(format!("{where_}: not a recorded event: {event_error}"))))
                }
                Err(_) if kind == BoundedLine::Unterminated => {
                    self.cut_last_line = Some(SidecarError::invalid_argument(format!(
                        "{where_}: the last line is cut off (no newline, not a whole sample: a crash while \
                         recording?); the {} samples before it were played",
                        self.played
                    )));
                    None
                }
                Err(e) => Some(Err(SidecarError::invalid_argument(format!(
                    "{where_}: not a telemetry sample: {}",
                    e.message
                )))),
            };
        }
    }
}

/// Whether a line that is no sample was meant as an event: an object whose only keys are `at`
/// and `event`.
fn is_event_line(line: &str) -> bool {
    serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(line)
        .is_ok_and(|map| map.contains_key("event") && map.keys().all(|k| k == "at" || k == "event"))
}

/// The longest recorded gap replayed as it was: longer ones (a clock jump, a machine that slept,
/// a hand-edited `at`) play as one hour, scaled by the speed like any other gap.
pub const MAX_REPLAY_GAP_MS: f64 = 3_600_000.0;

/// How long to wait between two recorded samples: their gap (never negative, at most
/// [`MAX_REPLAY_GAP_MS`]) divided by the speed.
pub fn replay_delay(previous_at: f64, next_at: f64, speed: ReplaySpeed) -> Duration {
    match speed {
        ReplaySpeed::AsFastAsPossible => Duration::ZERO,
        ReplaySpeed::Factor(factor) => {
            let gap = next_at - previous_at;
            let gap = if gap.is_nan() { 0.0 } else { gap.clamp(0.0, MAX_REPLAY_GAP_MS) };
            // The speed is validated, but the arithmetic must not panic whatever it is given.
            Duration::try_from_secs_f64(gap / factor / 1_000.0).unwrap_or(Duration::MAX)
        }
    }
}

fn io_error(message: String) -> SidecarError {
    SidecarError::new(ErrorCode::Io, message)
}

#[cfg(test)]
pub(crate) use crate::config::file::temp_path;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::sample::fixtures::sample;

    #[test]
    fn record_then_replay_round_trips() {
        let path = temp_path("round-trip.jsonl");
        let samples: Vec<Sample> = (0..3).map(|i| sample(1_000.0 + i as f64 * 250.0)).collect();
        {
            let mut recorder = Recorder::open(&path).unwrap();
            recorder.append(&samples[0]).unwrap();
        }
        // Reopening appends rather than truncating.
        let mut recorder = Recorder::open(&path).unwrap();
        for s in &samples[1..] {
            recorder.append(s).unwrap();
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(text.lines().all(|l| l.starts_with("{\"at\":")));
        let replayed: Vec<Sample> = Replay::open(&path).unwrap().map(Result::unwrap).collect();
        assert_eq!(replayed, samples);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn replays_a_hand_written_file_with_blank_lines_and_defaults() {
        let path = temp_path("hand.jsonl");
        let line = r#"{"at":5,"nvml":{"available":false,"reason":"DRIVER_NOT_LOADED"},"host":{"totalMb":8,"availableMb":4,"swapTotalMb":0,"swapUsedMb":0,"cpuPercent":1.5}}"#;
        std::fs::write(&path, format!("{line}\n\n{line}\n")).unwrap();
        let replayed: Vec<Sample> = Replay::open(&path).unwrap().map(Result::unwrap).collect();
        assert_eq!(replayed.len(), 2);
        assert!(replayed[0].gpus.is_empty());
        assert_eq!(replayed[0].host.zombie_children, 0);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_bad_line_is_named_by_file_and_line() {
        let path = temp_path("bad.jsonl");
        let good = serde_json::to_string(&sample(1.0)).unwrap();
        std::fs::write(&path, format!("{good}\n{good}\n{{\"at\":\"soon\"}}\n")).unwrap();
        let e = Replay::open(&path).err().unwrap();
        assert_eq!(e.code, ErrorCode::InvalidArgument);
        assert!(
            e.message
                .starts_with(&format!("{}:3: not a telemetry sample: at: expected f64, got \"soon\"", path.display())),
            "{}",
            e.message
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn event_lines_are_kept_beside_the_samples_and_skipped_by_playback() {
        let path = temp_path("events.jsonl");
        let good = serde_json::to_string(&sample(1.0)).unwrap();
        let ready = r#"{"at":2,"event":{"kind":"service-ready","subject":"asr","label":"asr ready in 1.2 s"}}"#;
        let revoked = r#"{"at":3,"event":{"kind":"lease-revoked","subject":"gpu:0","label":"ASR lease revoked"}}"#;
        std::fs::write(&path, format!("{good}\n{ready}\n{good}\n{revoked}\n")).unwrap();
        let mut replay = Replay::open(&path).unwrap();
        let played: Vec<Sample> = (&mut replay).map(Result::unwrap).collect();
        assert_eq!(played, vec![sample(1.0), sample(1.0)]);
        let events = replay.take_events();
        assert_eq!(
            events.iter().map(|e| (e.at, e.event.kind, e.event.subject.as_deref())).collect::<Vec<_>>(),
            vec![
                (2.0, RecordedEventKind::ServiceReady, Some("asr")),
                (3.0, RecordedEventKind::LeaseRevoked, Some("gpu:0"))
            ]
        );
        // A bad event line is named as one, with its line.
        std::fs::write(
            &path,
            format!("{good}\n{{\"at\":2,\"event\":{{\"kind\":\"exploded\",\"subject\":null,\"label\":\"x\"}}}}\n"),
        )
        .unwrap();
        let e = Replay::open(&path).err().unwrap();
        assert!(
            e.message.starts_with(&format!("{}:2: not a recorded event: unknown variant `exploded`", path.display())),
            "{}",
            e.message
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn missing_and_empty_files_are_errors() {
        let path = temp_path("missing.jsonl");
        assert_eq!(Replay::open(&path).err().unwrap().code, ErrorCode::Io);
        std::fs::write(&path, "\n").unwrap();
        let e = Replay::open(&path).err().unwrap();
        assert_eq!(e.message, format!("{}: the replay file is empty", path.display()));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn delays_follow_the_recorded_gaps_scaled_by_speed() {
        assert_eq!(replay_delay(1_000.0, 1_500.0, ReplaySpeed::Factor(1.0)), Duration::from_millis(500));
        assert_eq!(replay_delay(1_000.0, 1_500.0, ReplaySpeed::Factor(2.0)), Duration::from_millis(250));
        assert_eq!(replay_delay(1_500.0, 1_000.0, ReplaySpeed::Factor(1.0)), Duration::ZERO);
        assert_eq!(replay_delay(0.0, 9e9, ReplaySpeed::AsFastAsPossible), Duration::ZERO);
        // A huge recorded gap (or speed) cannot overflow the wait.
        assert_eq!(replay_delay(0.0, 1e300, ReplaySpeed::Factor(1.0)), Duration::from_secs(3_600));
        assert_eq!(replay_delay(0.0, 1e300, ReplaySpeed::Factor(0.001)), Duration::from_secs(3_600_000));
        assert_eq!(replay_delay(0.0, 1e300, ReplaySpeed::Factor(1e-300)), Duration::MAX);
    }
}
